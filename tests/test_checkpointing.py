"""Checkpoint replication gives up on a backup declared lost instead of waiting it out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from nfvha.descriptor import parse_descriptor
from nfvha.errors import NfvhaError
from nfvha.vnfm.manager import Manager


class _StuckAgent:
    """An agent whose push to a crashed peer never answers (until its 60 s timeout)."""

    def __init__(self) -> None:
        self.pushes = 0

    async def push(self, *args: Any) -> None:
        self.pushes += 1
        await asyncio.sleep(60)


async def test_a_push_to_a_backup_declared_lost_is_abandoned_at_once(
        manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manager
    for h in ("h1", "h2"):
        m.heartbeat(h, {"url": f"http://{h}:9000", "instances": []})
    agent = _StuckAgent()
    monkeypatch.setattr(m, "agent", lambda host: agent)
    d = parse_descriptor({"id": "fm", "command": ["/bin/true"],
                          "network": {"address": "10.99.0.10/16"}})
    push = asyncio.ensure_future(m.checkpoints._replicate("fm", "h1", 1, "h2", d))
    await asyncio.sleep(0.3)
    assert not push.done() and agent.pushes == 1  # a slow push to a live backup waits
    m.detector.mark_down("h2")
    t0 = time.monotonic()
    with pytest.raises(NfvhaError, match="h2 is lost"):
        await asyncio.wait_for(push, 5)
    assert time.monotonic() - t0 < 0.5

