"""ManagerView: what the API, metrics and dashboard read, as plain data (in-process)."""

from __future__ import annotations

import pytest

from nfvha.ha.fault import HostState
from nfvha.vnfm.manager import Manager


async def test_a_reporting_host_is_a_row_with_its_report(manager: Manager) -> None:
    inst = {"id": "fm", "state": "RUNNING", "pid": 42}
    manager.heartbeat("h1", {"url": "http://h1:9000", "instances": [inst],
                             "resources": {"mem_available_bytes": 123}})
    row = manager.view.host("h1")
    assert row.state == HostState.UP and not row.fenced and row.fenced_in_s is None
    assert row.record["url"] == "http://h1:9000"
    assert row.instances == [inst] and row.resources["mem_available_bytes"] == 123
    assert row.lease_s == pytest.approx(manager.cfg.timings.fencing_timeout)
    assert [h.id for h in manager.view.hosts()] == ["h1"]


async def test_an_unknown_host_reads_as_down(manager: Manager) -> None:
    row = manager.view.host("nowhere")
    assert row.state == "DOWN" and row.record == {} and row.instances == []


async def test_rows_are_copies(manager: Manager) -> None:
    """A reader changing what it got changes nothing in the manager."""
    inst = {"id": "a", "state": "RUNNING"}
    manager.heartbeat("h1", {"url": "http://h1:9000", "instances": [inst]})
    manager.view.host("h1").instances.clear()
    assert manager.view.host("h1").instances == [inst]


async def test_a_down_host_counts_down_to_fenced(manager: Manager) -> None:
    manager.heartbeat("h1", {"url": "http://h1:9000", "instances": []})
    heard = manager.detector.last_heard("h1")
    assert heard is not None
    manager.detector.heard("h1", now=heard - 1.0)  # silent for a second
    manager.detector.restore_state("h1", HostState.SUSPECTED)
    await manager.membership.confirm_host_loss("h1")
    row = manager.view.host("h1")
    assert row.state == "DOWN"
    assert row.fenced_in_s is not None and row.fenced_in_s > 0  # its lease is running out
