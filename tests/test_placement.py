"""Placement: the least-loaded host with room runs the VNF, other hosts hold its backups."""

from __future__ import annotations

import pytest

from nfvha.errors import NfvhaError
from nfvha.nfvo.placement import HostView, PlacementError, place

MIB = 2**20


def hosts(*views: HostView) -> dict[str, HostView]:
    return {v.host_id: v for v in views}


def host(host_id: str, instances: int = 0, *, up: bool = True,
         mem: int = 4096 * MIB) -> HostView:
    return HostView(host_id, up, instances, mem)


CLUSTER = hosts(host("h1", 3), host("h2", 1), host("h3", 2), host("h4", 0, up=False))


def test_least_loaded_live_host_is_primary() -> None:
    p = place(CLUSTER, memory=128 * MIB, backups=1)

    assert p.primary == "h2"
    assert "h2" in p.reason
    assert "fewest instances" in p.reason


def test_ties_are_broken_by_host_id() -> None:
    p = place(hosts(host("hb", 1), host("ha", 1)), memory=MIB, backups=0)

    assert p.primary == "ha"


def test_backups_are_next_least_loaded_and_never_the_primary() -> None:
    p = place(CLUSTER, memory=128 * MIB, backups=2)

    assert p.backups == ("h3", "h1")
    assert p.primary not in p.backups
    assert "h4" not in p.backups  # down hosts hold nothing


def test_no_backups_asked() -> None:
    p = place(CLUSTER, memory=128 * MIB, backups=0)

    assert p.backups == ()
    assert "backup" not in p.reason


def test_fewer_backups_than_asked_is_reported() -> None:
    p = place(hosts(host("h1"), host("h2")), memory=MIB, backups=3)

    assert p.backups == ("h2",)
    assert "only 1 of 3 backup host(s) available" in p.reason


def test_single_host_gets_no_backup_on_itself() -> None:
    p = place(hosts(host("h1")), memory=MIB, backups=1)

    assert p.primary == "h1"
    assert p.backups == ()
    assert "only 0 of 1" in p.reason


def test_hosts_without_memory_are_skipped() -> None:
    cluster = hosts(host("small", 0, mem=64 * MIB), host("big", 5, mem=1024 * MIB))

    p = place(cluster, memory=128 * MIB, backups=1)

    assert p.primary == "big"
    assert p.backups == ()  # not even as a backup: it could not take the VNF over


def test_host_with_exactly_enough_memory_fits() -> None:
    assert place(hosts(host("h1", mem=128 * MIB)), memory=128 * MIB, backups=0).primary == "h1"


def test_host_with_unknown_memory_is_not_filtered_out() -> None:
    # An agent that has not reported its memory yet shows 0 available.
    assert place(hosts(host("h1", mem=0)), memory=128 * MIB, backups=0).primary == "h1"


def test_excluded_hosts_are_neither_primary_nor_backup() -> None:
    p = place(CLUSTER, memory=MIB, backups=2, exclude=["h2"])

    assert p.primary == "h3"
    assert p.backups == ("h1",)


def test_preferred_host_wins_over_load() -> None:
    p = place(CLUSTER, memory=MIB, backups=1, prefer="h1")

    assert p.primary == "h1"
    assert p.backups == ("h2",)
    assert p.reason.startswith("h1 was asked for")


def test_preferred_host_that_cannot_take_it_is_ignored() -> None:
    p = place(CLUSTER, memory=MIB, backups=1, prefer="h4")

    assert p.primary == "h2"
    assert "asked for" not in p.reason


def test_nothing_fits_names_memory_and_exclusions() -> None:
    cluster = hosts(host("h1", mem=64 * MIB), host("h2", up=False), host("h3"))

    with pytest.raises(PlacementError) as exc_info:
        place(cluster, memory=256 * MIB, backups=1, exclude=["h3"])

    msg = str(exc_info.value)
    assert "256 MiB" in msg
    assert "excluded: h3" in msg
    assert "add a host or lower resources.memory" in msg
    assert isinstance(exc_info.value, NfvhaError)


def test_empty_cluster_cannot_place() -> None:
    with pytest.raises(PlacementError, match="excluded: none"):
        place({}, memory=MIB, backups=0)
