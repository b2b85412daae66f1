"""A manager cluster in one process, on a real etcd (1 s leases): one member leads and
acts, the others serve reads and send writes to it; the leadership moves when the leader
resigns or is cut off from etcd, and a deposed leader neither acts nor writes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from nfvha.errors import NotLeader
from nfvha.ha.election import ElectionTimings, LeaderElection
from nfvha.store import EtcdStore, LeadershipLost, StoreError
from nfvha.store.etcd import EtcdClient
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig
from tests.conftest import TEST_PREFIX
from tests.test_store_contract import wipe_etcd_prefix

VNFD = {"id": "fw", "command": ["sleep", "1000"], "network": {"address": "10.9.1.10/16"},
        "ha": {"backups": 0}}


@dataclass
class Member:
    name: str
    manager: Manager
    api: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://{self.name}:8600"


class Cluster:
    def __init__(self, etcd: str, prefix: str) -> None:
        self.etcd, self.prefix = etcd, prefix
        self.members: dict[str, Member] = {}

    async def add(self, name: str) -> Member:
        store = EtcdStore([self.etcd], prefix=self.prefix)
        url = f"http://{name}:8600"
        # A 2 s lease (renewals every 0.4 s, held 1.1 s): these members share the test's
        # event loop, and each other's synchronous store calls, under the whole suite's
        # load; at 1 s a late renewal sometimes cost the leader its term mid-test.
        timings = ElectionTimings.from_ttl(2, poll_interval=0.02)
        election = LeaderElection(EtcdClient([self.etcd], timeout=timings.renew_interval),
                                  f"{self.prefix}/leader", name, 2, url=url, timings=timings)
        m = Manager(store, ManagerConfig(token="t", base_url=url), election=election)
        api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_manager_app(m, manage_lifecycle=False)),
            base_url=url, headers={"Authorization": "Bearer t"})
        await m.start()
        self.members[name] = Member(name, m, api)
        return self.members[name]

    def leaders(self) -> list[Member]:
        return [x for x in self.members.values() if x.manager.acting]

    async def close(self, name: str) -> None:
        x = self.members.pop(name)
        await x.api.aclose()
        await x.manager.close()
        assert x.manager.election is not None
        x.manager.election.client.close()
        x.manager.store.close()

    async def close_all(self) -> None:
        for name in list(self.members):
            await self.close(name)


@pytest.fixture
async def cluster(fast_etcd: str) -> AsyncIterator[Cluster]:
    prefix = f"/{TEST_PREFIX}/{uuid.uuid4().hex}"
    c = Cluster(fast_etcd, prefix)
    try:
        yield c
    finally:
        await c.close_all()
        wipe_etcd_prefix(fast_etcd, prefix)


async def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_one_member_leads_the_others_serve_reads_and_redirect_writes(
        cluster: Cluster) -> None:
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    await until(lambda: b.manager.election is not None and b.manager.election.leader
                is not None, 3, "the follower has read the leader")
    assert cluster.leaders() == [a]

    r = await a.api.post("/nfvha/v1/vnfds", json=VNFD)
    assert r.status_code == 201, r.text
    # A follower sends the write to the leader, with the method kept (307), and does
    # nothing itself.
    r = await b.api.post("/vnflcm/v1/vnf_instances?x=1", json={"vnfdId": "fw"})
    assert r.status_code == 307, r.text
    assert r.headers["location"] == "http://m1:8600/vnflcm/v1/vnf_instances?x=1"
    assert r.json()["leader"] == "http://m1:8600"
    assert (await a.api.get("/vnflcm/v1/vnf_instances")).json() == []
    # Reads are served by every member, from the shared store.
    assert [v["id"] for v in (await b.api.get("/nfvha/v1/vnfds")).json()] == ["fw"]
    view = (await b.api.get("/nfvha/v1/cluster")).json()
    assert (view["mode"], view["member"], view["leading"]) == ("cluster", "m2", False)
    assert view["leader"]["member"] == "m1" and view["leader"]["url"] == "http://m1:8600"
    assert (await a.api.get("/nfvha/v1/cluster")).json()["leading"] is True
    # Hosts as the leader stored them (a follower hears no heartbeat).
    a.manager.heartbeat("h1", {"host_id": "h1", "url": "http://10.9.0.11:8700",
                               "started_at": 1.0, "time": 1.0, "instances": [],
                               "resources": {}})
    (h1,) = (await b.api.get("/nfvha/v1/hosts")).json()
    assert (h1["id"], h1["state"], h1["lastHeartbeatAgoMs"]) == ("h1", "UP", None)
    # A follower commands no agent.
    with pytest.raises(NotLeader, match="leader is m1"):
        b.manager.check_acting()


async def test_the_leader_resigning_hands_over_and_the_successor_acts(cluster: Cluster) -> None:
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    assert (await a.api.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
    t0 = time.monotonic()
    await cluster.close("m1")  # resigns: its lease is revoked
    took = await until(lambda: b.manager.acting, 2, "the follower takes over") - t0
    assert took < 1.0, f"a resignation hands over at the next poll, took {took:.2f} s"
    r = await b.api.post("/vnflcm/v1/vnf_instances", json={"vnfdId": "fw",
                                                           "vnfInstanceId": "fw1"})
    assert r.status_code == 201, r.text
    assert b.manager._loop_task is not None and not b.manager._loop_task.done()


async def test_a_leader_cut_off_from_etcd_stops_acting_before_a_successor_and_cannot_write(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    assert (await a.api.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
    old_loop = a.manager._loop_task
    assert a.manager.election is not None and b.manager.election is not None

    def unreachable(*_: object, **__: object) -> dict[str, object]:
        raise StoreError("etcd unreachable (test)")

    # The leader's election loses etcd (its keepalives and reads fail); its store, which
    # still reaches etcd, is what a late write of the old term would go through.
    monkeypatch.setattr(a.manager.election.client, "call", unreachable)
    demoted = await until(lambda: not a.manager.acting, 2, "the cut-off leader demotes itself")
    promoted = await until(lambda: b.manager.acting, 3, "the follower takes over")
    assert demoted < promoted, "two members acted at once"
    assert old_loop is not None and old_loop.cancelled()
    with pytest.raises(NotLeader):
        a.manager.agent("h1")
    with pytest.raises(LeadershipLost):
        a.manager.store.put("vnfd", "late", {"id": "late"})
    assert b.manager.store.find("vnfd", "late") is None
    # Cut off, it serves no read either (it would wait out etcd's timeouts on each, and
    # its copy may be stale): the caller is sent elsewhere at once.
    r = await a.api.get("/nfvha/v1/vnfds")
    for _ in range(200):
        if r.status_code == 503:
            break
        await asyncio.sleep(0.01)
        r = await a.api.get("/nfvha/v1/vnfds")
    assert (r.status_code, r.json()["code"]) == (503, "store-unreachable"), r.text
    assert (await a.api.get("/nfvha/v1/cluster")).json()["leading"] is False
    # Its API now sends writes to the new leader.
    r = await a.api.post("/nfvha/v1/vnfds", json={**VNFD, "id": "fw2"})
    assert r.status_code in (307, 503), r.text
    if r.status_code == 307:
        assert r.headers["location"].startswith("http://m2:8600/")


async def test_the_audit_sees_one_writer_per_term_across_a_handover(cluster: Cluster) -> None:
    from nfvha.store.audit import audit_terms, current_revision

    start = current_revision(cluster.etcd)
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    assert (await a.api.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
    await cluster.close("m1")
    await until(lambda: b.manager.acting, 2, "the follower takes over")
    assert (await b.api.post("/nfvha/v1/vnfds", json={**VNFD, "id": "fw2"})).status_code == 201
    audit = await asyncio.to_thread(audit_terms, cluster.etcd, cluster.prefix, start)
    assert audit.ok, (audit.split_terms, audit.stale)
    assert audit.writes >= 2
    assert sorted(w for ws in audit.writers.values() for w in ws) == ["m1", "m2"]
    # And the audit does catch a term with two writers.
    store = b.manager.store
    assert isinstance(store, EtcdStore)
    store.writer = "intruder"
    store.put("vnfd", "fw3", {**VNFD, "id": "fw3"})
    audit = await asyncio.to_thread(audit_terms, cluster.etcd, cluster.prefix, start)
    assert list(audit.split_terms.values()) == [{"m2", "intruder"}]


async def test_the_leader_reads_from_memory_and_a_follower_from_etcd(cluster: Cluster) -> None:
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    assert (await a.api.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
    calls: list[str] = []

    def counting(store: EtcdStore) -> None:
        real = store.client.call

        def call(path: str, body: dict[str, object], **kw: bool) -> dict[str, object]:
            calls.append(path)
            return real(path, body, **kw)

        store.client.call = call  # type: ignore[method-assign]

    for m in (a, b):
        assert isinstance(m.manager.store, EtcdStore)
        counting(m.manager.store)
    a.manager.store.list("vnfd")
    calls.clear()
    # The leader: no etcd round trip for a read, and its own writes are what it reads.
    assert [r.id for r in a.manager.store.list("vnfd")] == ["fw"]
    assert a.manager.store.get("vnfd", "fw").data["id"] == "fw"
    assert calls == []
    a.manager.store.put("vnfd", "fw2", {**VNFD, "id": "fw2"})
    assert calls == ["/kv/txn"]
    assert [r.id for r in a.manager.store.list("vnfd")] == ["fw", "fw2"]
    # A follower reads etcd each time (linearizably), so it sees the leader's writes.
    calls.clear()
    assert [r.id for r in b.manager.store.list("vnfd")] == ["fw", "fw2"]
    assert calls == ["/kv/range"]
