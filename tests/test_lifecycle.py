"""The VNF state machine: every transition outside the table is refused, by the table and
by the manager's single write path, and nothing is written then."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nfvha.ha.lifecycle import TRANSITIONS, IllegalTransition, VnfState, check_transition
from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.manager import Manager, ManagerConfig

ALLOWED = {(a, b) for a, tos in TRANSITIONS.items() for b in tos}


def test_every_state_is_in_the_table_and_every_state_is_reachable() -> None:
    assert set(TRANSITIONS) == set(VnfState)
    reached = {VnfState.NOT_INSTANTIATED} | {b for _, b in ALLOWED}
    assert reached == set(VnfState)
    # ... and every state but the start can get back to NOT_INSTANTIATED (terminate).
    for s in VnfState:
        seen, todo = {s}, [s]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert VnfState.NOT_INSTANTIATED in seen, s


@pytest.mark.parametrize(("before", "after"), [
    (a, b) for a, b in itertools.product(VnfState, VnfState) if a != b])
def test_a_transition_is_allowed_exactly_when_the_table_has_it(before: VnfState,
                                                                after: VnfState) -> None:
    if (before, after) in ALLOWED:
        check_transition("v", before, after)
    else:
        with pytest.raises(IllegalTransition, match=f"{before} -> {after}"):
            check_transition("v", before, after)


def test_keeping_the_state_is_no_transition_and_a_new_record_starts_not_instantiated() -> None:
    for s in VnfState:
        check_transition("v", s, s)
        check_transition("v", s, None)
    check_transition("v", None, VnfState.NOT_INSTANTIATED)
    with pytest.raises(IllegalTransition):
        check_transition("v", None, VnfState.ACTIVE)
    with pytest.raises(IllegalTransition):
        check_transition("v", "BOGUS", VnfState.ACTIVE)


def test_the_manager_refuses_an_illegal_write_and_stores_nothing(tmp_path: Path) -> None:
    m = Manager(SqliteStore(tmp_path / "m.db"), ManagerConfig(token="t"))
    try:
        m.store.create("vnf", "v1", {"id": "v1", "haState": "TERMINATING", "host": "h1"})
        # A recovery finishing after a terminate must not bring the VNF back.
        with pytest.raises(IllegalTransition, match="TERMINATING -> ACTIVE"):
            m._update_vnf("v1", lambda d: {**d, "haState": VnfState.ACTIVE, "host": "h2"})
        assert m.store.get("vnf", "v1").data == {"id": "v1", "haState": "TERMINATING",
                                                 "host": "h1"}
        m._update_vnf("v1", lambda d: {**d, "haState": VnfState.NOT_INSTANTIATED})
        assert m.store.get("vnf", "v1").data["haState"] == "NOT_INSTANTIATED"
    finally:
        m.store.close()


def test_the_check_sees_the_state_a_concurrent_writer_left(tmp_path: Path) -> None:
    """The change is computed and checked inside the compare-and-set: when another writer
    got in first, it is judged against that writer's state, not the one first read."""
    m = Manager(SqliteStore(tmp_path / "m.db"), ManagerConfig(token="t"))
    try:
        m.store.create("vnf", "v1", {"id": "v1", "haState": "RECOVERING"})
        calls = []

        def late_recovery(d: dict[str, object]) -> dict[str, object]:
            calls.append(d["haState"])
            if len(calls) == 1:  # a terminate lands between the read and the write
                rec = m.store.get("vnf", "v1")
                m.store.cas_update("vnf", "v1", rec.version, {**rec.data,
                                                              "haState": "TERMINATING"})
            return {**d, "haState": VnfState.ACTIVE}

        with pytest.raises(IllegalTransition, match="TERMINATING -> ACTIVE"):
            m._update_vnf("v1", late_recovery)
        assert calls == ["RECOVERING", "TERMINATING"]
        assert m.store.get("vnf", "v1").data["haState"] == "TERMINATING"
    finally:
        m.store.close()
