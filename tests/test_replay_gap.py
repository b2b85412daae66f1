"""Replay from a position the forwarder already trimmed: the forwarder refuses, naming the
oldest position it still holds, and the manager falls back visibly (the heal records the
gap, an alarm is raised) while the VNF still comes back. In process: the forwarder's app
behind httpx's ASGI transport with fake upstream sockets; the manager with a fake agent
and a fake forwarder behind ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.dataplane.api import create_forwarder_app
from nfvha.dataplane.client import ReplayGapError
from nfvha.dataplane.forwarder import Forwarder, ReplayGap, Service, ServiceSpec, _Flow
from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig
from nfvha.wire import ServiceStatus

CLIENT = ("10.9.5.5", 4000)


class _Sent:
    """An upstream socket that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def _service_with_traffic(svc: Service, n: int) -> _Sent:
    up = _Sent()
    svc.flows[CLIENT] = _Flow(CLIENT, up)  # type: ignore[arg-type]
    for i in range(1, n + 1):
        svc.on_client(CLIENT, b"d%d" % i)
    return up


async def test_replay_from_a_trimmed_position_is_refused_naming_the_oldest() -> None:
    svc = Service(ServiceSpec(name="fw", listen=None, target=("10.9.1.10", 5000)))
    up = _service_with_traffic(svc, 10)
    svc.hold()
    svc.commit(6)  # a newer checkpoint committed: datagrams 1..6 are trimmed
    with pytest.raises(ReplayGap) as gap:
        await svc.replay(3)  # the older checkpoint's position
    assert (gap.value.position, gap.value.oldest) == (3, 6)
    assert "6" in str(gap.value)
    assert svc.held and len(up.sent) == 10  # nothing replayed, delivery still held
    assert await svc.replay(6) == 4  # from what it holds: 7..10
    assert up.sent[10:] == [b"d7", b"d8", b"d9", b"d10"]
    svc.reset()  # the VNF restarted without state: nothing before now can be replayed
    with pytest.raises(ReplayGap):
        await svc.replay(6)


class _NoHostNetwork:
    async def addresses(self, *, netns: str | None = None) -> list[tuple[str, str]]:
        return []


async def test_the_forwarder_api_answers_a_trimmed_replay_with_a_409() -> None:
    app = create_forwarder_app("t", net=_NoHostNetwork())  # type: ignore[arg-type]
    fwd: Forwarder = app.state.forwarder
    svc = Service(ServiceSpec(name="fw", listen=None, target=("10.9.1.10", 5000)))
    fwd.services["fw"] = svc
    _service_with_traffic(svc, 10)
    svc.hold()
    svc.commit(6)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f",
                                 headers={"Authorization": "Bearer t"}) as http:
        r = await http.post("/v1/services/fw/replay", json={"position": 3})
        assert r.status_code == 409, r.text
        body = r.json()
        assert r.headers["content-type"].startswith("application/problem+json")
        assert body["type"] == ReplayGapError.problem_type
        assert (body["position"], body["oldest"]) == (3, 6)
        assert svc.held  # refused: nothing released either
        r = await http.post("/v1/services/fw/replay", json={"position": 6})
        assert r.status_code == 200 and r.json()["replayed"] == 4
        assert not svc.held


# -- the manager's reaction ---------------------------------------------------------------

VNFD = {"id": "fw", "command": ["sleep", "1000"],
        "network": {"address": "10.9.1.10/16", "service": {"address": "10.9.2.1",
                                                           "port": 5000}},
        "ha": {"backups": 0, "replay": True}}
FORWARDER = "http://10.9.0.2:8800"


class _FakeCluster:
    """One agent (h1) and the forwarder, whose log was trimmed up to position 6."""

    def __init__(self) -> None:
        self.replays: list[int] = []
        self.paces: list[Any] = []
        self.released = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.host == "10.9.0.2":  # the forwarder
            if path.endswith("/replay"):
                position = json.loads(request.content)["position"]
                self.replays.append(position)
                self.paces.append(json.loads(request.content).get("pace"))
                if position < 6:
                    return httpx.Response(409, json={  # as the forwarder's API answers
                        "type": ReplayGapError.problem_type, "title": "Replay position trimmed",
                        "status": 409, "detail": "trimmed up to 6",
                        "position": position, "oldest": 6})
                self.released += 1
                return httpx.Response(200, json={"replayed": 4, "replay_ms": 1.0,
                                                 "held_ms": 5.0})
            if path.endswith("/release"):
                self.released += 1
                return httpx.Response(200, json={"held_ms": 5.0})
            if path.endswith("/hold"):
                return httpx.Response(200, json={"position": 10})
            return httpx.Response(200, json=ServiceStatus(
                name="fw", listen=("10.9.1.1", 7000), target=("10.9.1.2", 7000),
                position=10, committed=6, held=False, log_packets=4, log_bytes=400,
                log_age_s=1.0, log_fill=0.01).model_dump(mode="json"))
        if request.method == "POST" and path == "/v1/instances":
            return httpx.Response(201, json={"id": "fw", "state": "RUNNING", "pid": 42})
        if path.endswith("/restore"):
            return httpx.Response(200, json={"id": "fw", "state": "RUNNING", "pid": 43})
        return httpx.Response(204)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Manager, httpx.AsyncClient,
                                                          _FakeCluster]]:
    m = Manager(SqliteStore(tmp_path / "m.db"),
                ManagerConfig(token="t", base_url="http://10.9.0.1:8600",
                              forwarder_url=FORWARDER))
    fake = _FakeCluster()
    await m.http.aclose()
    m.http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    assert m.forwarder is not None
    m.forwarder.http = m.http
    m.heartbeat("h1", {"host_id": "h1", "url": "http://10.9.0.11:8700", "started_at": 1.0,
                       "time": 1.0, "instances": [], "resources": {}})
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_manager_app(m, manage_lifecycle=False)),
        base_url="http://manager", headers={"Authorization": "Bearer t"})
    try:
        yield m, http, fake
    finally:
        await http.aclose()
        await m.close()
        m.store.close()


async def _final(m: Manager, op_id: str) -> dict[str, Any]:
    for _ in range(500):
        data = m.store.get("op", op_id).data
        if data["operationState"] not in ("STARTING", "PROCESSING"):
            return data
        await asyncio.sleep(0.01)
    raise AssertionError(f"operation {op_id} still {data['operationState']}")


async def test_the_manager_falls_back_visibly_on_a_replay_gap(cluster: Any) -> None:
    m, http, fake = cluster
    assert (await http.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
    assert (await http.post("/vnflcm/v1/vnf_instances",
                            json={"vnfdId": "fw", "vnfInstanceId": "fw"})).status_code == 201
    r = await http.post("/vnflcm/v1/vnf_instances/fw/instantiate", json={})
    assert (await _final(m, r.headers["Location"].rsplit("/", 1)[1]))["operationState"] \
        == "COMPLETED"
    # The only usable checkpoint is an older one, whose log position (3) the forwarder
    # has trimmed since (a newer checkpoint committed up to 6, then proved unusable).
    m.store.put("checkpoint", "fw/1", {
        "id": "fw/1", "vnfInstanceId": "fw", "seq": 1, "createdAt": time.time(),
        "cutAt": time.time(), "host": "h1", "replicas": ["h1"], "bytes": 10,
        "generation": 1, "logPosition": 3})
    r = await http.post("/vnflcm/v1/vnf_instances/fw/heal", json={})
    op = await _final(m, r.headers["Location"].rsplit("/", 1)[1])
    assert op["operationState"] == "COMPLETED", op  # the VNF still comes back
    assert op["nfvha"]["checkpoint"] == 1
    assert op["nfvha"]["replayGap"] == {"from": 3, "oldest": 6, "lost": 3}
    assert fake.replays == [3, 6]  # refused, then replayed from what the forwarder holds
    # Both paced by the restored VNF's receive queue, which its host's agent reads.
    assert fake.paces == [{"agent_url": "http://10.9.0.11:8700", "instance_id": "fw"}] * 2
    assert m.get_vnf("fw")["haState"] == "ACTIVE"
    alarms = [a.data for a in m.store.list("alarm")
              if a.data.get("alarmClearedTime") is None]
    gaps = [a for a in alarms if a["faultType"] == "replay-gap"]
    assert len(gaps) == 1 and gaps[0]["perceivedSeverity"] == "MAJOR", alarms
    assert gaps[0]["managedObjectId"] == "fw" and "3" in gaps[0]["probableCause"]
    assert not [a for a in alarms if a["faultType"] == "forwarder-unavailable"], alarms
    # Terminated, the VNF's alarms go with it.
    r = await http.post("/vnflcm/v1/vnf_instances/fw/terminate", json={})
    await _final(m, r.headers["Location"].rsplit("/", 1)[1])
    assert not [a for a in m.store.list("alarm", where={"key": "replay-gap:fw"})
                if a.data.get("alarmClearedTime") is None]
