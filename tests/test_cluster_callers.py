"""The callers of a manager cluster, against in-process members on a real etcd (1 s
leases): the client finds the leader, follows a follower's 307 and a leader change; a
follower's dashboard names the leader, shows what the leader changes (read from the
store, since no event reaches a follower) and carries on when the leadership moves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from nfvha.client import AsyncManagerClient
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.dashboard import FOLLOWER_REFRESH_S, DashboardFeed
from tests.test_manager_cluster import VNFD, Cluster, Member, until
from tests.test_manager_cluster import cluster as cluster  # a fixture


class Members(httpx.AsyncBaseTransport):
    """The network between a client and the cluster's members: a request goes to the
    member its host names; a member that is gone refuses the connection. Records where
    each request went."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.apps: dict[int, httpx.ASGITransport] = {}
        self.reached: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        member = self.cluster.members.get(request.url.host)
        self.reached.append(f"{request.url.host} {request.method} {request.url.path}"
                            + ("" if member else " (refused)"))
        if member is None:
            raise httpx.ConnectError("connection refused", request=request)
        app = self.apps.setdefault(id(member), httpx.ASGITransport(
            app=create_manager_app(member.manager, manage_lifecycle=False)))
        return await app.handle_async_request(request)


async def _two_members(cluster: Cluster) -> tuple[Member, Member]:
    a = await cluster.add("m1")
    await until(lambda: a.manager.acting, 3, "the first member leads")
    b = await cluster.add("m2")
    await until(lambda: b.manager.election is not None
                and b.manager.election.leader is not None, 3, "m2 has read the leader")
    return a, b


async def test_the_client_finds_the_leader_follows_a_redirect_and_a_leader_change(
        cluster: Cluster) -> None:
    _, b = await _two_members(cluster)
    net = Members(cluster)
    urls = "http://m2:8600,http://m1:8600"  # the follower first

    async with AsyncManagerClient(urls, "t", transport=net) as m:
        st = await m.status()
    leader = st["cluster"]["leader"]
    assert (leader["member"], leader["url"]) == ("m1", "http://m1:8600")
    assert leader["term"] > 0
    assert [(x["member"], x["answered"], x["leader"]) for x in st["managers"]] == [
        ("m2", True, False), ("m1", False, True)]
    assert net.reached[1:] == ["m1 GET /nfvha/v1/forwarders", "m1 GET /nfvha/v1/hosts",
                               "m1 GET /vnflcm/v1/vnf_instances",
                               "m1 GET /vnffm/v1/alarms"]  # read where the hosts are heard

    net.reached.clear()
    async with AsyncManagerClient(urls, "t", transport=net) as m:
        await m.onboard(VNFD)  # to m2 first, which sends it on
        # (More rounds after these two when the in-process leader lost its term meanwhile:
        # both members share this test's event loop and their stores' synchronous calls,
        # and under the whole suite's load a renewal is sometimes late. The client then
        # waits the election out.)
        assert net.reached[:2] == ["m2 POST /nfvha/v1/vnfds", "m1 POST /nfvha/v1/vnfds"]
        assert b.manager.store.find("vnfd", "fw") is not None

        await cluster.close("m1")  # the leader resigns and is gone
        await until(lambda: b.manager.acting, 3, "m2 takes over")
        net.reached.clear()
        await m.create("fw-1", "fw")
        assert net.reached[:2] == ["m1 POST /vnflcm/v1/vnf_instances (refused)",
                                   "m2 POST /vnflcm/v1/vnf_instances"]
        assert (await m.cluster())["leader"]["member"] == "m2"
    assert b.manager.store.find("vnf", "fw-1") is not None


async def _next_where(stream: AsyncGenerator[str, None],
                      cond: Callable[[str, dict[str, Any]], bool], timeout: float,
                      what: str) -> tuple[str, dict[str, Any], list[str]]:
    """The first message of the stream for which ``cond`` holds, and the kinds of those
    before it."""
    skipped: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout} s; got {skipped}")
        try:
            chunk = await asyncio.wait_for(anext(stream), left)
        except TimeoutError:
            continue
        event, data = chunk.strip().split("\n")
        kind, msg = event.removeprefix("event: "), json.loads(data.removeprefix("data: "))
        if cond(kind, msg):
            return kind, msg, skipped
        skipped.append(kind)


async def test_a_followers_dashboard_shows_the_leader_and_its_changes_across_a_change(
        cluster: Cluster) -> None:
    a, b = await _two_members(cluster)
    stream = DashboardFeed(b.manager).stream()
    reporting: asyncio.Task[None] | None = None
    try:
        kind, snap, _ = await _next_where(stream, lambda k, _: True, 2, "first message")
        assert kind == "snapshot"
        c = snap["cluster"]
        assert (c["mode"], c["member"], c["leading"]) == ("cluster", "m2", False)
        assert c["leader"]["member"] == "m1"
        term = c["leader"]["term"]
        assert snap["vnfs"] == []

        # Nothing changes: the follower's page gets ticks (with the leader), no snapshot.
        t0 = time.monotonic()
        while time.monotonic() - t0 < FOLLOWER_REFRESH_S + 0.5:
            kind, tick, _ = await _next_where(stream, lambda k, _: True, 2, "a tick")
            assert kind == "tick" and tick["cluster"]["leader"]["member"] == "m1"
            assert tick["hosts"] == []

        # The leader acts; no event reaches m2, its page shows it all the same.
        async def agent() -> None:  # h1 keeps reporting to the leader: UP there
            while True:
                a.manager.heartbeat("h1", {"url": "http://h1:9000", "instances": []})
                await asyncio.sleep(0.05)

        reporting = asyncio.create_task(agent())
        assert (await a.api.post("/nfvha/v1/vnfds", json=VNFD)).status_code == 201
        r = await a.api.post("/vnflcm/v1/vnf_instances",
                             json={"vnfdId": "fw", "vnfInstanceId": "fw-1"})
        assert r.status_code == 201, r.text
        changed = time.monotonic()
        _, snap, _ = await _next_where(stream, lambda k, m: k == "snapshot", 5,
                                       "a snapshot with the leader's changes")
        assert time.monotonic() - changed <= FOLLOWER_REFRESH_S + 1.2
        assert [v["id"] for v in snap["vnfs"]] == ["fw-1"]
        (h1,) = snap["hosts"]
        # As the leader stored it (m2 itself hears no heartbeat: its own detector would
        # say DOWN), and no silence: that is the leader's to know, not "0 ms ago".
        assert a.manager.view.host("h1").state == "UP"
        assert (h1["id"], h1["state"], h1["lastHeartbeatAgoMs"]) == ("h1", "UP", None)
        reporting.cancel()

        # The leader goes: m2's page says m2 leads now, in a later term, without reload.
        await cluster.close("m1")
        _, snap, _ = await _next_where(
            stream, lambda k, m: k == "snapshot" and m["cluster"]["leading"], 5,
            "a snapshot saying m2 leads")
        assert snap["cluster"]["leader"]["member"] == "m2"
        assert snap["cluster"]["leader"]["term"] > term
        assert [v["id"] for v in snap["vnfs"]] == ["fw-1"]
        # As the leader, its page is live again: a change arrives as an event at once.
        b.manager.heartbeat("h2", {"url": "http://h2:9000", "instances": []})
        await _next_where(
            stream, lambda k, m: k == "events" and any(
                it["kind"] == "host" and it["host"]["id"] == "h2" for it in m["items"]),
            0.5, "the event of h2 registering with the new leader")
    finally:
        if reporting is not None:
            reporting.cancel()
        await stream.aclose()
