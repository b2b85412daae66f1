"""Which unanswered health probes count towards a hang (in-process manager; the probe
itself is faked as one that times out: no address a VNF may have is safe to send
unanswered datagrams to from a test)."""

from __future__ import annotations

import asyncio
import sys

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
