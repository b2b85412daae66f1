"""Heartbeats: a full status when something changed, "alive" otherwise (in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.errors import ConfigError
from nfvha.vim.agent import Agent, AgentConfig
from nfvha.vnfm.manager import Manager
from nfvha.wire import AgentEvent, InstanceState, InstanceView


def _full(started: float, instances: list[dict[str, Any]]) -> dict[str, Any]:
    return {"host_id": "h1", "url": "http://h1:9000", "started_at": started, "time": 1.0,
            "instances": instances, "resources": {"load1": 0.5}}


def _light(started: float, t: float) -> dict[str, Any]:
    return {"host_id": "h1", "url": "http://h1:9000", "started_at": started, "time": t,
            "full": False}


async def test_light_heartbeat_keeps_the_last_full_view(manager: Manager) -> None:
    inst = {"id": "fm", "state": "RUNNING", "pid": 42}
    assert manager.heartbeat("h1", _full(100.0, [inst]))["need_full"] is False
    assert manager.heartbeat("h1", _light(100.0, 2.0))["need_full"] is False
    st = manager.membership.host_status["h1"]
    assert st["instances"] == [inst] and st["time"] == 2.0
    assert manager.detector.state_of("h1") == "UP"


async def test_a_manager_without_a_full_view_asks_for_one(manager: Manager) -> None:
    # A manager that restarted hears "alive" first: the host is alive, but what it runs
    # is unknown until the agent sends everything; reconciliation must wait for it.
    answer = manager.heartbeat("h1", _light(100.0, 2.0))
    assert answer["need_full"] is True
    assert "h1" not in manager.membership.host_status
    assert manager.detector.state_of("h1") == "UP"
    assert manager.heartbeat("h1", _full(100.0, []))["need_full"] is False
    assert manager.membership.host_status["h1"]["instances"] == []


async def test_an_agent_that_restarted_must_resend_everything(manager: Manager) -> None:
    manager.heartbeat("h1", _full(100.0, [{"id": "fm", "state": "RUNNING", "pid": 42}]))
    answer = manager.heartbeat("h1", _light(200.0, 3.0))  # a new run of the agent
    assert answer["need_full"] is True
    assert manager.membership.host_status["h1"]["started_at"] == 100.0  # not mixed with the new run


@contextlib.asynccontextmanager
async def _heartbeating(agent: Agent, manager: Callable[[httpx.Request], httpx.Response]
                        ) -> AsyncIterator[None]:
    """The agent's heartbeat loop runs, against a stand-in manager, inside the block."""
    agent._http = httpx.AsyncClient(transport=httpx.MockTransport(manager))
    task = asyncio.create_task(agent._heartbeat_loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await agent._http.aclose()


async def test_agent_reports_on_change_on_request_and_each_period(tmp_path: Path) -> None:
    """The agent's side against a stand-in manager: nothing in between (liveness is the
    guard's), a full status on a change, on the manager's request, and once a period."""
    bodies: list[dict[str, Any]] = []
    ask_full = [False]

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        need, ask_full[0] = ask_full[0], False
        return httpx.Response(200, json={"peers": [], "need_full": need})

    agent = Agent(AgentConfig(host_id="h1", state_dir=tmp_path, manager_url="http://m",
                              status_interval=0.01, full_status_every=0.5))
    signature: list[Any] = [("fm", "RUNNING", 42, 1)]
    agent._signature = lambda: tuple(signature)  # type: ignore[method-assign]

    async def wait_for(n: int) -> None:
        for _ in range(300):
            if len(bodies) >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"only {len(bodies)} reports")

    async with _heartbeating(agent, handler):
        await wait_for(1)
        assert "instances" in bodies[0]  # always full
        await asyncio.sleep(0.2)
        assert len(bodies) == 1  # nothing changed: nothing sent
        signature[0] = ("fm", "EXITED", 42, 1)  # a VNF exited: reported at once
        await wait_for(2)
        ask_full[0] = True  # a restarted manager asks in its answer
        signature[0] = ("fm", "RUNNING", 43, 1)
        await wait_for(4)
        n = len(bodies)
        await asyncio.sleep(0.7)  # and at least once per full_status_every
        assert len(bodies) > n


async def test_a_fresh_manager_learns_the_held_lease_from_the_heartbeat(
        manager: Manager) -> None:
    """Right after a (re)start the manager assumes the longest lease, but only for hosts
    that have not yet said which lease they hold: a crash then is moved without the 2 s
    wait."""
    timings = manager.cfg.timings
    manager.heartbeat("h1", {**_full(100.0, []), "lease": timings.fencing_timeout})
    assert manager.detector.fenced_in("h1") == pytest.approx(timings.fenced_after(), abs=0.05)
    manager.heartbeat("h2", _full(100.0, []))  # an agent that does not say
    assert manager.detector.fenced_in("h2") > timings.max_lease


async def test_reports_and_events_go_to_the_leader_of_several_managers(
        tmp_path: Path) -> None:
    """m1 is down, m2 a follower that redirects to m3, the leader: the status report and
    an exit event both reach m3, with the token, and later reports go straight there."""
    seen: list[tuple[str, str, str | None]] = []

    def cluster(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.url.path, request.headers.get("authorization")))
        if request.url.host == "m1":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "m2":
            return httpx.Response(307, headers={"Location": f"http://m3:8600{request.url.path}"})
        return httpx.Response(200, json={"peers": [], "need_full": False})

    agent = Agent(AgentConfig(host_id="h1", state_dir=tmp_path, token="t",
                              manager_url="http://m1:8600,http://m2:8600,http://m3:8600",
                              status_interval=0.01, full_status_every=0.05))
    async with _heartbeating(agent, cluster):
        events = asyncio.create_task(agent._event_loop())
        agent._emit(AgentEvent(type="instance-exit", host_id="h1",
                               instance=InstanceView(id="fm", state=InstanceState.EXITED)))
        for _ in range(300):
            if [s for s in seen if s[0] == "m3" and s[1] == "/nfvha/v1/events"] and \
                    len([s for s in seen if s[0] == "m3"]) >= 3:
                break
            await asyncio.sleep(0.005)
        events.cancel()
        await asyncio.gather(events, return_exceptions=True)
    at_leader = {path for host, path, _ in seen if host == "m3"}
    assert at_leader == {"/nfvha/v1/hosts/h1/heartbeat", "/nfvha/v1/events"}
    assert all(auth == "Bearer t" for _, _, auth in seen)
    assert agent.last_manager_ok is not None
    # Once found, the leader is asked first: m1 and m2 were each tried at most twice
    # (the report and the event may have set out together before either knew).
    assert sum(host != "m3" for host, _, _ in seen) <= 4


def test_the_guard_heartbeats_to_every_manager(tmp_path: Path) -> None:
    (tmp_path / "guard").mkdir()  # made by the lease file at start
    cfg = AgentConfig(host_id="h1", state_dir=tmp_path, token="t",
                      manager_url="https://m1:8600,https://m2,http://10.0.0.3:9000")
    args = Agent(cfg)._guard_args()
    assert args[args.index("--manager") + 1] == "m1:8600,m2:443,10.0.0.3:9000"
    cfg = AgentConfig(host_id="h1", state_dir=tmp_path, token="t",
                      manager_url="https://m1:8600,https://m2:8600",
                      manager_liveness="10.1.0.1:8601, 10.1.0.2:8601")
    args = Agent(cfg)._guard_args()
    assert args[args.index("--manager") + 1] == "10.1.0.1:8601,10.1.0.2:8601"


def test_a_mistyped_manager_url_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="m2:8600"):
        AgentConfig(host_id="h1", state_dir=tmp_path, manager_url="http://m1:8600,m2:8600")


def _exited(agent: Agent, started_at: float) -> AgentEvent:
    """An instance of ``agent`` whose process exited, and the event the agent emits."""
    from nfvha.descriptor import parse_descriptor
    from nfvha.vim.agent import Instance

    d = parse_descriptor({"id": "fm", "command": ["/bin/true"],
                          "network": {"address": "10.99.0.10/16"}})
    inst = Instance(id="fm", descriptor=d, sandbox=None,  # type: ignore[arg-type]
                    state=InstanceState.EXITED, pid=42, started_at=started_at)
    agent.instances["fm"] = inst
    return AgentEvent(type="instance-exit", host_id="h1", instance=InstanceView(
        id="fm", state=InstanceState.EXITED, pid=42, started_at=started_at))


@contextlib.asynccontextmanager
async def _reporting_an_exit(tmp_path: Path, managers: Callable[[httpx.Request], httpx.Response]
                             ) -> AsyncIterator[Agent]:
    """An agent whose VNF exited, its event loop reporting to stand-in managers."""
    agent = Agent(AgentConfig(host_id="h1", state_dir=tmp_path, token="t",
                              manager_url="http://m1:8600,http://m2:8600"))
    agent._http = httpx.AsyncClient(transport=httpx.MockTransport(managers))
    agent._emit(_exited(agent, 100.0))
    events = asyncio.create_task(agent._event_loop())
    try:
        yield agent
    finally:
        events.cancel()
        await asyncio.gather(events, return_exceptions=True)
        await agent._http.aclose()


async def test_an_exit_event_outlasts_a_leader_change(tmp_path: Path) -> None:
    """While no manager leads (every one answers 503 for longer than the agent's old five
    tries took, 0.75 s), the exit event is kept and delivered to the new leader; it was
    dropped, and the new leader learnt of the exit only later, from a status report."""
    t0 = asyncio.get_running_loop().time()
    delivered: list[float] = []

    def cluster(request: httpx.Request) -> httpx.Response:
        now = asyncio.get_running_loop().time()
        if now - t0 < 1.5:
            return httpx.Response(503, json={"code": "no-leader"})
        delivered.append(now - t0)
        return httpx.Response(204)

    async with _reporting_an_exit(tmp_path, cluster):
        for _ in range(300):
            if delivered:
                break
            await asyncio.sleep(0.01)
    assert delivered and delivered[0] < 2.0


async def test_a_stale_exit_event_is_dropped_not_retried(tmp_path: Path) -> None:
    """Once the VNF runs again (restored here, with its old pid as CRIU keeps it), its
    old exit is no longer news: the agent stops retrying it."""
    calls: list[float] = []

    def cluster(request: httpx.Request) -> httpx.Response:
        calls.append(asyncio.get_running_loop().time())
        return httpx.Response(503, json={"code": "no-leader"})

    async with _reporting_an_exit(tmp_path, cluster) as agent:
        await asyncio.sleep(0.3)
        inst = agent.instances["fm"]
        inst.state, inst.started_at = InstanceState.RUNNING, 200.0  # restored, same pid
        await asyncio.sleep(0.6)
        n = len(calls)
        await asyncio.sleep(0.6)
        assert len(calls) == n  # given up
        assert agent._events.empty()
