"""The dashboard's data endpoints, on an in-process manager (no hosts, no browser)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import uvicorn

from nfvha.ha.fault import HostState
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.dashboard import DashboardFeed
from nfvha.vnfm.events import EventKind
from nfvha.vnfm.manager import Manager


def _client(m: Manager, token: str | None = "t") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_manager_app(m, manage_lifecycle=False)), base_url="http://m", headers=headers)


def _message(chunk: str) -> tuple[str, dict[str, Any]]:
    event, data = chunk.strip().split("\n")
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_page_is_public_but_its_data_needs_the_token(manager: Manager) -> None:
    async with _client(manager, token=None) as anon:
        page = await anon.get("/")
        assert page.status_code == 200 and "/dashboard/app.js" in page.text
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert (await anon.get("/dashboard/app.js")).status_code == 200
        assert (await anon.get("/dashboard/app.css")).status_code == 200
        assert (await anon.get("/dashboard/other.js")).status_code == 404
        for path in ("/dashboard/v1/state", "/dashboard/v1/stream"):
            r = await anon.get(path)
            assert r.status_code == 401, path
    async with _client(manager, token="wrong") as bad:
        assert (await bad.get("/dashboard/v1/state")).status_code == 401


async def test_snapshot_shows_hosts_and_checkpoints(manager: Manager) -> None:
    async with _client(manager) as c:  # the dashboard follows events from here on
        manager.heartbeat("h1", {"url": "http://h1:9000", "instances": [],
                                 "resources": {"mem_available_bytes": 2 << 30}})
        cp = {"id": "fm/1", "vnfInstanceId": "fm", "seq": 1, "createdAt": time.time(),
              "bytes": 1234, "durationMs": 42.0, "host": "h1", "replicas": ["h1"]}
        manager.events.publish(EventKind.CHECKPOINT, cp)
        state = (await c.get("/dashboard/v1/state")).json()
    (host,) = state["hosts"]
    assert host["id"] == "h1" and host["state"] == "UP" and host["fenced"] is False
    assert host["memAvailableBytes"] == 2 << 30
    assert state["checkpoints"]["fm"][0][1:] == [1234, 42.0]
    assert [e["state"] for e in state["timeline"] if e["type"] == "host"] == ["UP"]
    assert state["vnfs"] == [] and state["alarms"] == []


async def test_stream_sends_snapshot_then_coalesced_batches_and_ticks(
        manager: Manager) -> None:
    feed = DashboardFeed(manager)
    others = len(manager.events._queues)
    stream = feed.stream()
    event, snap = _message(await anext(stream))
    assert event == "snapshot" and snap["hosts"] == []
    # A burst: the host registers then changes twice, and two checkpoints land.
    manager.heartbeat("h2", {"url": "http://h2:9000", "instances": []})
    for state in ("SUSPECTED", "DOWN"):
        manager.detector.restore_state("h2", HostState(state))
        manager.events.publish(EventKind.HOST, {"id": "h2", "state": state,
                                                "previous": None, "reason": "test"})
    for seq in (1, 2):
        manager.events.publish(EventKind.CHECKPOINT, {
            "id": f"fm/{seq}", "vnfInstanceId": "fm", "seq": seq, "createdAt": time.time(),
            "bytes": 10, "durationMs": 1.0})
    event, batch = _message(await anext(stream))
    assert event == "events"
    kinds = [it["kind"] for it in batch["items"]]
    assert kinds == ["host-change", "host-change", "host", "checkpoint", "checkpoint"]
    assert batch["items"][2]["host"]["state"] == "DOWN"
    started = time.monotonic()
    event, tick = _message(await anext(stream))
    assert event == "tick" and [h["id"] for h in tick["hosts"]] == ["h2"]
    assert time.monotonic() - started < 1.5
    feed.closing.set()
    event, _ = _message(await anext(stream))
    assert event == "closing"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert len(manager.events._queues) == others  # the subscription ended with it


async def test_stream_ends_when_the_client_leaves_and_when_the_server_stops(
        manager: Manager) -> None:
    app = create_manager_app(manager, manage_lifecycle=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    others = len(manager.events._queues)

    async def open_stream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /dashboard/v1/stream HTTP/1.1\r\nHost: m\r\n"
                b"Authorization: Bearer t\r\n\r\n")
        assert b"event: snapshot" in await r.readuntil(b"}\n\n")
        return r, w

    _, w = await open_stream()
    assert len(manager.events._queues) == others + 1
    w.close()
    await asyncio.sleep(0.3)
    assert len(manager.events._queues) == others  # the client left: subscription gone

    r, w = await open_stream()
    for stop in app.state.on_stop:  # what `nfvha manager` does when asked to stop
        stop()
    # The server ends the response: the last chunk of a chunked body.
    rest = await asyncio.wait_for(r.readuntil(b"\r\n0\r\n\r\n"), 3)
    assert b"event: closing" in rest
    w.close()
    server.should_exit = True
    await asyncio.wait_for(serving, 5)
    assert len(manager.events._queues) == others


async def test_snapshot_and_ticks_say_who_leads(manager: Manager) -> None:
    """One manager: it leads, and the page says so (the cluster view of every member)."""
    feed = DashboardFeed(manager)
    async with _client(manager) as c:
        state = (await c.get("/dashboard/v1/state")).json()
        assert state["cluster"] == (await c.get("/nfvha/v1/cluster")).json()
    assert state["cluster"]["mode"] == "single" and state["cluster"]["leading"] is True
    assert state["cluster"]["leader"]["member"] == "manager"
    assert state["cluster"]["leader"]["term"] == 0
    assert feed.tick()["cluster"] == state["cluster"]
