"""Recovery never leaves two live copies, and never waits for a host that came back."""

from __future__ import annotations

import asyncio
import time

import pytest

from nfvha.vnfm.manager import Manager


class _Agent:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete(self, vnf_id: str) -> None:
        self.deleted.append(vnf_id)


async def test_a_lost_host_that_comes_back_during_the_fence_wait_ends_the_wait(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recovery waits for a lost host's lease to run out before moving its VNF; the host
    comes back meanwhile (a short partition). Its copy is then stopped through its agent
    at once. Before, the wait never ended (the comeback drops the fence deadline and a
    heartbeating host's lease never runs out): the campaign's recoveries stayed
    PROCESSING for good."""
    m = manager
    m.heartbeat("h1", {"url": "http://h1:9000", "instances": []})
    agent = _Agent()
    monkeypatch.setattr(m, "agent", lambda host: agent)
    m.detector.mark_down("h1")
    m.membership.fence_deadline["h1"] = time.monotonic() + 30
    wait = asyncio.ensure_future(m.healing._ensure_old_copy_stopped("fm", "h1"))
    await asyncio.sleep(0.2)
    assert not wait.done()  # lost, lease not yet run out: it waits
    m.heartbeat("h1", {"url": "http://h1:9000", "instances": []})  # back
    assert m.detector.is_up("h1")
    await asyncio.wait_for(wait, 2)
    assert agent.deleted == ["fm"]  # never two live copies: its agent stopped it
