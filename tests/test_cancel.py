"""A long action cancelled by a newer request (a manual heal, a terminate) still ends its
operation occurrence in a final state, saying what cancelled it; the newer request wins
as before. The manager runs in process behind its API, its one agent is a fake behind
``httpx.MockTransport`` that holds chosen calls until the test lets them go."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.vnfm.manager import Manager
from tests.conftest import manager_with_fake_agent

FINAL = {"COMPLETED", "FAILED", "ROLLED_BACK"}
VNFD = {"id": "fw", "command": ["sleep", "1000"], "network": {"address": "10.9.1.10/16"},
        "ha": {"backups": 0}}


@dataclass
class FakeAgent:
    """Answers every call at once, except those whose "METHOD path-suffix" is in
    ``blocked``: they wait until ``release`` (and are counted in ``waiting``)."""

    blocked: set[str] = field(default_factory=set)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    waiting: int = 0

    def _key(self, request: httpx.Request) -> str:
        return f"{request.method} {request.url.path}"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        key = self._key(request)
        self.calls.append(key)
        if any(key.startswith(method + " ") and key.endswith(suffix)
               for method, suffix in (b.split(" ") for b in self.blocked)):
            self.waiting += 1
            await self.gate.wait()
        if request.method == "POST" and request.url.path == "/v1/instances":
            iid = json.loads(request.content)["instance_id"]
            return httpx.Response(201, json={"id": iid, "state": "RUNNING", "pid": 42})
        if request.url.path.endswith("/restore"):
            return httpx.Response(200, json={"state": "RUNNING", "pid": 43})
        if request.url.path.endswith("/checkpoints") and request.method == "POST":
            return httpx.Response(201, json={"seq": 1, "created_at": time.time(),
                                             "total_bytes": 10})
        return httpx.Response(204)

    async def until_waiting(self, n: int = 1) -> None:
        for _ in range(500):
            if self.waiting >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no call was held (calls: {self.calls})")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Manager, httpx.AsyncClient, FakeAgent]]:
    agent = FakeAgent()
    try:
        async with manager_with_fake_agent(tmp_path, agent, VNFD) as (m, http):
            yield m, http, agent
    finally:
        agent.gate.set()


async def _op(http: httpx.AsyncClient, r: httpx.Response) -> str:
    assert r.status_code == 202, r.text
    return r.headers["Location"].rsplit("/", 1)[1]


async def _settled(m: Manager, op_id: str) -> dict[str, Any]:
    """The op once it is final (the tasks run meanwhile), or as it is after 5 s."""
    for _ in range(500):
        data = m.store.get("op", op_id).data
        if data["operationState"] in FINAL:
            return data
        await asyncio.sleep(0.01)
    return m.store.get("op", op_id).data


def _unfinished(m: Manager) -> list[tuple[str, str]]:
    return [(r.data["operation"], r.data["operationState"])
            for r in m.store.list("op", where={"vnfInstanceId": "fw"})
            if r.data["operationState"] not in FINAL]


async def test_terminate_during_instantiate_ends_the_instantiate(setup: Any) -> None:
    m, http, agent = setup
    agent.blocked.add("POST /v1/instances")  # the create never answers until released
    inst = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/instantiate", json={}))
    await agent.until_waiting()
    term = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/terminate", json={}))
    assert (await _settled(m, term))["operationState"] == "COMPLETED"  # the newer one wins
    data = await _settled(m, inst)
    assert data["operationState"] == "FAILED", data
    assert "cancelled by terminate" in data["error"]["detail"]
    assert term in data["error"]["detail"]
    assert data["error"]["type"] == "urn:nfvha:problem:operation-cancelled"
    assert _unfinished(m) == []
    assert m.get_vnf("fw")["haState"] == "NOT_INSTANTIATED"


async def _instantiated(m: Manager, http: httpx.AsyncClient) -> None:
    inst = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/instantiate", json={}))
    assert (await _settled(m, inst))["operationState"] == "COMPLETED"
    assert m.get_vnf("fw")["haState"] == "ACTIVE"


async def test_a_manual_heal_during_a_heal_ends_the_first(setup: Any) -> None:
    m, http, agent = setup
    await _instantiated(m, http)
    agent.blocked.add("DELETE /v1/instances/fw")  # the first heal's restart: held there
    first = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/heal", json={}))
    await agent.until_waiting()
    agent.blocked.clear()
    second = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/heal", json={}))
    assert (await _settled(m, second))["operationState"] == "COMPLETED"
    data = await _settled(m, first)
    assert data["operationState"] == "FAILED", data
    assert "cancelled by a manual heal" in data["error"]["detail"]
    assert _unfinished(m) == []
    assert m.get_vnf("fw")["haState"] == "ACTIVE"


async def test_terminate_during_an_automatic_recovery_ends_the_recovery(setup: Any) -> None:
    m, http, agent = setup
    await _instantiated(m, http)
    agent.blocked.add("DELETE /v1/instances/fw")  # the recovery's restart: held there
    m.started -= 100  # past the start-up grace ...
    alive = asyncio.create_task(_heartbeats(m))  # ... so h1 must go on heartbeating: a
    try:  # loaded machine otherwise lets it be declared lost, which ends the heal first
        m._reconciled = True
        m._rt("fw").failure = ("hang", time.time(), "probes unanswered")
        m._tick()  # the loop starts the automatic recovery
        await agent.until_waiting()
        await _terminate_ends_the_heal(m, http, agent)
    finally:
        alive.cancel()


async def _heartbeats(m: Manager) -> None:
    """Host h1's "alive, nothing changed" reports, every 50 ms, as its agent sends them."""
    while True:
        m.heartbeat("h1", {"host_id": "h1", "url": "http://10.9.0.11:8700",
                           "started_at": 1.0, "time": time.time(), "full": False})
        await asyncio.sleep(0.05)


async def _terminate_ends_the_heal(m: Manager, http: httpx.AsyncClient,
                                   agent: FakeAgent) -> None:
    heal = [r.id for r in m.store.list("op", where={"vnfInstanceId": "fw"})
            if r.data["operation"] == "HEAL"]
    assert len(heal) == 1
    agent.blocked.clear()
    term = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/terminate", json={}))
    assert (await _settled(m, term))["operationState"] == "COMPLETED"
    data = await _settled(m, heal[0])
    assert data["operationState"] == "FAILED", data
    assert "cancelled by terminate" in data["error"]["detail"]
    assert _unfinished(m) == []


async def test_a_request_cancelled_before_its_task_ran_is_ended_too(setup: Any) -> None:
    m, http, _ = setup
    await _instantiated(m, http)
    # Heal and terminate in the same instant: the heal's task never got to run.
    heal = m.start_heal("fw", None)
    term = m.start_terminate("fw")
    assert (await _settled(m, term))["operationState"] == "COMPLETED"
    data = await _settled(m, heal)
    assert data["operationState"] == "FAILED", data
    assert "cancelled by terminate" in data["error"]["detail"]
    assert _unfinished(m) == []


async def test_a_manager_stopping_during_a_heal_ends_it_for_a_retry(setup: Any) -> None:
    m, http, agent = setup
    await _instantiated(m, http)
    agent.blocked.add("DELETE /v1/instances/fw")
    heal = await _op(http, await http.post("/vnflcm/v1/vnf_instances/fw/heal", json={}))
    await agent.until_waiting()
    await m.close()
    data = m.store.get("op", heal).data
    assert data["operationState"] == "FAILED_TEMP", data
    assert "manager stopped" in data["error"]["detail"]
    assert data["error"]["type"] == "urn:nfvha:problem:manager-stopped"
