"""Which unanswered health probes count towards a hang (in-process manager; the probe
itself is faked as one that times out: no address a VNF may have is safe to send
unanswered datagrams to from a test)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest

from nfvha.descriptor import HealthProbe
from nfvha.vnfm import probing as probing_module
from nfvha.vnfm.manager import Manager
from tests.conftest import EXAMPLES


@pytest.fixture
def manager(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> Manager:
    """The shared in-process manager, with host h1 and an ACTIVE VNF no probe can reach."""
    m = manager
    m.heartbeat("h1", {"url": "http://h1:9000", "instances": []})

    async def unanswered(probe: HealthProbe, ip: str) -> bool:
        await asyncio.sleep(probe.timeout)
        return False

    monkeypatch.setattr(probing_module, "probe_vnf", unanswered)
    vnfd = {"id": "fm", "command": [sys.executable, str(EXAMPLES / "flowmon.py")],
            "network": {"address": "10.99.0.10/16"},
            "ha": {"checkpoint_interval": 1.0,
                   "probe": {"type": "udp", "port": 9, "send": "PING", "expect": "PONG",
                             "interval": 0.01, "timeout": 0.05, "failure_threshold": 3}}}
    m.store.put("vnf", "fm", {"id": "fm", "vnfd": vnfd, "haState": "ACTIVE", "host": "h1"})
    return m


async def _probe_times(m: Manager, n: int) -> None:
    for _ in range(n):
        m.detector.heard("h1")  # the host keeps heartbeating: the VNF is the one silent
        await m.probes.probe("fm")


async def test_queued_for_the_hosts_dump_slot_still_counts(manager: Manager) -> None:
    """A VNF waiting its turn to be checkpointed runs meanwhile: a hang must be seen."""
    rt = manager._rt("fm")
    rt.busy = asyncio.ensure_future(asyncio.sleep(10))
    rt.checkpointing = True
    try:
        await _probe_times(manager, 3)
        assert rt.failure is not None and rt.failure[0] == "hang"
    finally:
        rt.busy.cancel()


async def test_frozen_by_its_dump_does_not_count(manager: Manager) -> None:
    rt = manager._rt("fm")
    rt.busy = asyncio.ensure_future(asyncio.sleep(10))
    rt.checkpointing = rt.dumping = True
    try:
        await _probe_times(manager, 5)
        assert rt.failure is None and rt.probe_failures == 0
    finally:
        rt.busy.cancel()


async def test_unanswered_probes_of_an_idle_vnf_make_a_hang(manager: Manager) -> None:
    await _probe_times(manager, 3)
    rt = manager._rt("fm")
    assert rt.failure is not None and rt.failure[0] == "hang"


async def _run_loop(m: Manager, seconds: float, until: Callable[[], bool]) -> None:
    """The manager's loop by hand: the host heartbeats, ``_tick`` runs every 10 ms."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        m.detector.heard("h1")
        m._tick()
        await asyncio.sleep(0.01)


async def test_a_hang_during_a_stuck_replication_is_seen_and_recovered(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A periodic checkpoint whose dump is over but whose replication does not end (a push
    to a backup host that crashed meanwhile waits out its 60 s timeout) holds neither the
    probes nor the recovery: the hung VNF is found and recovered within a second. Before,
    the loop started no probe of a VNF with a checkpoint task in flight, and a hang found
    would have waited for that task: the campaign's 15 s+ undetected hangs."""
    m = manager
    m.started -= 10.0  # past the start-up grace
    m._reconciled = True
    rt = m._rt("fm")
    replicating = asyncio.Event()

    async def dumped_then_stuck_replicating(vnf_id: str) -> None:
        rt.thawed_at = time.monotonic()
        replicating.set()
        await asyncio.sleep(60)

    recovered: list[str] = []

    async def recover(vnf_id: str, failure: str, detected_at: float, detail: str, *,
                      auto: bool, op_id: str | None = None) -> None:
        recovered.append(failure)

    monkeypatch.setattr(m.checkpoints, "_checkpoint_now", dumped_then_stuck_replicating)
    monkeypatch.setattr(m.healing, "recover", recover)
    await _run_loop(m, 0.5, replicating.is_set)  # probes go unanswered from here on
    assert replicating.is_set() and rt.checkpointing
    t0 = time.monotonic()
    await _run_loop(m, 3.0, lambda: bool(recovered))
    assert recovered == ["hang"], f"no recovery {time.monotonic() - t0:.1f} s into the hang"
    assert time.monotonic() - t0 < 1.0


async def test_a_dump_in_progress_is_not_cancelled_for_a_hang(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recovery of a hang found while the VNF's dump runs waits for the dump to end
    (a stopped VNF's dump is refused at once): it is not cut off in the middle."""
    m = manager
    m.started -= 10.0
    m._reconciled = True
    rt = m._rt("fm")
    dump_ended = asyncio.Event()

    async def slow_dump(vnf_id: str) -> None:
        rt.dumping = True
        await asyncio.sleep(0.3)
        rt.dumping = False
        rt.thawed_at = time.monotonic()
        dump_ended.set()

    recovered: list[float] = []

    async def recover(vnf_id: str, failure: str, detected_at: float, detail: str, *,
                      auto: bool, op_id: str | None = None) -> None:
        recovered.append(time.monotonic())

    monkeypatch.setattr(m.checkpoints, "_checkpoint_now", slow_dump)
    monkeypatch.setattr(m.healing, "recover", recover)
    await _run_loop(m, 0.5, lambda: rt.dumping)
    assert rt.dumping
    rt.failure = ("hang", time.time(), "found by a test")
    await _run_loop(m, 2.0, lambda: bool(recovered))
    assert dump_ended.is_set() and recovered


async def test_an_exit_reported_twice_does_not_cancel_the_heal_it_started(
        manager: Manager) -> None:
    """An agent reports a VNF's exit twice, in a status report and in its event; the first
    starts the heal. The second must leave that heal alone: cancelling it failed its
    operation (FAILED, "cancelled by the exit of the VNF's process") and started another
    (e2e replay chain test, under full-suite load)."""
    m = manager
    exit_ev = {"type": "instance-exit", "host_id": "h1",
               "instance": {"id": "fm", "state": "EXITED", "exit": {"reason": "killed"}}}
    m.event(exit_ev)
    rt = m._rt("fm")
    assert rt.failure is not None and rt.failure[0] == "process-exit"
    heal = asyncio.ensure_future(asyncio.sleep(5))  # the heal the loop started for it
    rt.failure, rt.busy = None, heal
    try:
        m.event(exit_ev)
        await asyncio.sleep(0)
        assert not heal.cancelled() and rt.failure is None
        rt.checkpointing = True  # but a checkpoint under way is moot: recovery takes over
        m.event(exit_ev)
        await asyncio.sleep(0)
        assert heal.cancelled() and rt.failure is not None
    finally:
        heal.cancel()
