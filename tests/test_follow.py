"""Following the leader of a manager cluster (nfvha.follow) against stand-in managers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from nfvha.errors import ConfigError
from nfvha.follow import (
    LeaderFollower,
    RedirectRefused,
    origin,
    redirect_target,
    split_urls,
)

M1, M2, M3 = "http://m1:8600", "http://m2:8600", "http://m3:8600"
AUTH = {"Authorization": "Bearer secret"}
Handler = Callable[[httpx.Request], httpx.Response]


class Cluster:
    """Stand-in managers by host; every request that reaches any host is recorded."""

    def __init__(self, **hosts: Handler) -> None:
        self.hosts = hosts
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        handler = self.hosts.get(request.url.host)
        if handler is None:
            raise httpx.ConnectError("connection refused", request=request)
        return handler(request)

    def hosts_seen(self) -> list[str]:
        return [r.url.host for r in self.seen]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def leader(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"got": request.content.decode()})


def redirect_to(url: str, code: int = 307) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers={"Location": url + request.url.raw_path.decode(),
                                             "X-Nfvha-Leader": url},
                              json={"status": code, "title": "not the leader"})
    return handler


def no_leader(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": "1"},
                          json={"status": 503, "code": "no-leader", "title": "no leader"})


async def test_a_redirect_to_a_configured_manager_is_followed_and_remembered() -> None:
    cluster = Cluster(m1=redirect_to(M2), m2=leader)
    f = LeaderFollower([M1, M2, M3])
    async with cluster.client() as c:
        r = await f.send(c, "POST", "/nfvha/v1/events", json={"e": 1}, headers=AUTH)
        assert r.status_code == 200 and r.json() == {"got": '{"e":1}'}  # body resent
        assert cluster.hosts_seen() == ["m1", "m2"]
        assert cluster.seen[1].headers["authorization"] == "Bearer secret"
        assert f.leader == M2
        await f.send(c, "POST", "/nfvha/v1/events", json={"e": 2}, headers=AUTH)
    assert cluster.hosts_seen() == ["m1", "m2", "m2"]  # straight to the leader now


async def test_a_redirect_to_a_foreign_origin_is_not_followed_and_gets_no_token() -> None:
    # m1 names a leader nobody configured (a wrong --advertise-url, or an attacker):
    # nothing goes there; the next configured manager is tried instead.
    cluster = Cluster(m1=redirect_to("http://evil:8600"), m2=leader, evil=leader)
    f = LeaderFollower([M1, M2])
    async with cluster.client() as c:
        r = await f.send(c, "POST", "/nfvha/v1/hosts/h1/heartbeat", json={}, headers=AUTH)
    assert r.status_code == 200 and f.leader == M2
    assert "evil" not in cluster.hosts_seen()
    # Another port or scheme on a configured host is another origin: refused as well.
    for elsewhere in ("http://m2:9999", "https://m2:8600"):
        cluster = Cluster(m1=redirect_to(elsewhere), m2=leader)
        async with cluster.client() as c:
            with pytest.raises(RedirectRefused, match="not one of the configured managers"):
                await LeaderFollower([M1]).send(c, "POST", "/x", headers=AUTH)
        assert cluster.hosts_seen() == ["m1"]


async def test_503_and_a_refused_connection_move_on_to_the_next_manager() -> None:
    cluster = Cluster(m1=no_leader, m3=leader)  # m2 is down
    f = LeaderFollower([M1, M2, M3])
    async with cluster.client() as c:
        r = await f.send(c, "POST", "/nfvha/v1/events", json={}, headers=AUTH)
    assert r.status_code == 200
    assert cluster.hosts_seen() == ["m1", "m2", "m3"] and f.leader == M3


async def test_when_no_member_has_a_leader_the_503_is_the_answer_after_one_round() -> None:
    # m3 is down: its refused connection comes last, but "no leader" is what is wrong.
    cluster = Cluster(m1=no_leader, m2=no_leader)
    f = LeaderFollower([M1, M2, M3])
    async with cluster.client() as c:
        r = await f.send(c, "POST", "/nfvha/v1/events", json={}, headers=AUTH)
    assert r.status_code == 503 and r.json()["code"] == "no-leader"
    assert cluster.hosts_seen() == ["m1", "m2", "m3"]  # each once, then the answer


async def test_an_operators_call_waits_out_an_election_a_reporter_does_not() -> None:
    """Every member says "no leader" (nothing done) for 0.6 s, then m2 leads: with an
    election wait the call gets m2's answer; without one, the 503 at once."""
    import time

    elected_at = time.monotonic() + 0.6

    def member(request: httpx.Request) -> httpx.Response:
        return leader(request) if time.monotonic() >= elected_at else no_leader(request)

    cluster = Cluster(m1=member, m2=member)
    async with cluster.client() as http:
        waiting = LeaderFollower([M1, M2], election_wait=3.0)
        r = await waiting.send(http, "POST", "/nfvha/v1/vnfds", json={"id": "fw"})
        assert r.status_code == 200 and time.monotonic() >= elected_at
        elected_at = time.monotonic() + 0.6
        t0 = time.monotonic()
        r = await LeaderFollower([M1, M2]).send(http, "POST", "/nfvha/v1/vnfds", json={})
        assert r.status_code == 503 and time.monotonic() - t0 < 0.3
        # Waiting is bounded: no election in 0.5 s, the 503 comes back.
        elected_at = time.monotonic() + 60
        t0 = time.monotonic()
        r = await LeaderFollower([M1, M2], election_wait=0.5).send(
            http, "POST", "/nfvha/v1/vnfds", json={})
        assert r.status_code == 503 and 0.5 <= time.monotonic() - t0 < 1.5


async def test_every_manager_down_raises_the_connection_error() -> None:
    cluster = Cluster()
    f = LeaderFollower([M1, M2])
    async with cluster.client() as c:
        with pytest.raises(httpx.ConnectError):
            await f.send(c, "GET", "/nfvha/v1/cluster")
    assert cluster.hosts_seen() == ["m1", "m2"]


async def test_redirects_are_bounded_per_request() -> None:
    # Two members that each think the other leads (a stale view right after a change).
    cluster = Cluster(m1=redirect_to(M2), m2=redirect_to(M1))
    f = LeaderFollower([M1, M2])
    async with cluster.client() as c:
        with pytest.raises(httpx.TooManyRedirects):
            await f.send(c, "POST", "/nfvha/v1/events", json={}, headers=AUTH)
    assert len(cluster.seen) == len(f.urls) + 2  # the first send and len(urls) + 1 hops


async def test_a_post_that_may_have_arrived_is_resent_only_when_idempotent() -> None:
    def hung(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    cluster = Cluster(m1=hung, m2=leader)
    f = LeaderFollower([M1, M2])
    async with cluster.client() as c:
        # An instantiate that timed out may be under way on m1: not started again on m2.
        with pytest.raises(httpx.ReadTimeout):
            await f.send(c, "POST", "/vnflcm/v1/vnf_instances/x/instantiate", json={})
        assert cluster.hosts_seen() == ["m1"]
        assert f.leader == M2  # but the next request starts elsewhere
        f.current = 0
        r = await f.send(c, "POST", "/nfvha/v1/hosts/h1/heartbeat", json={},
                         idempotent=True)
    assert r.status_code == 200 and cluster.hosts_seen() == ["m1", "m1", "m2"]


async def test_a_503_after_part_of_the_work_is_resent_only_when_idempotent() -> None:
    def lost_term(request: httpx.Request) -> httpx.Response:
        # A leader that lost its term mid-request: perhaps done in part, so not a
        # member's "no leader" (which comes before anything is done).
        return httpx.Response(503, json={"status": 503, "title": "Leadership changed"})

    cluster = Cluster(m1=lost_term, m2=leader)
    f = LeaderFollower([M1, M2])
    async with cluster.client() as c:
        r = await f.send(c, "POST", "/vnflcm/v1/vnf_instances/x/heal", json={})
        assert r.status_code == 503 and cluster.hosts_seen() == ["m1"]
        f.current = 0
        r = await f.send(c, "POST", "/nfvha/v1/events", json={}, idempotent=True)
    assert r.status_code == 200 and cluster.hosts_seen() == ["m1", "m1", "m2"]


def test_the_sync_variant_makes_the_same_decisions() -> None:
    cluster = Cluster(m1=no_leader, m2=redirect_to(M3, 308), m3=leader)
    f = LeaderFollower([M1, M2, M3])
    with httpx.Client(transport=httpx.MockTransport(cluster)) as c:
        r = f.send_sync(c, "PUT", "/x", json={"a": 1}, headers=AUTH)
    assert r.status_code == 200 and cluster.hosts_seen() == ["m1", "m2", "m3"]
    assert f.leader == M3


async def test_the_query_goes_to_the_leader_once() -> None:
    cluster = Cluster(m1=redirect_to(M2), m2=leader)
    async with cluster.client() as c:
        await LeaderFollower([M1, M2]).send(c, "DELETE", "/x", params={"force": "1"})
    assert [str(r.url) for r in cluster.seen] == [f"{M1}/x?force=1", f"{M2}/x?force=1"]


# -- the pure parts ----------------------------------------------------------------------


def test_origins_compare_scheme_host_and_effective_port() -> None:
    assert origin("https://m") == origin("https://m:443/some/path")
    assert origin("http://m:8600") != origin("https://m:8600")
    assert origin("http://M1:8600") == origin("http://m1:8600")


def test_redirect_targets_resolve_relative_locations_and_refuse_credentials() -> None:
    bases = [httpx.URL(M1), httpx.URL(M2)]
    sent = httpx.URL(f"{M1}/nfvha/v1/events")
    assert redirect_target("/other", sent, bases) == (httpx.URL(f"{M1}/other"), 0)
    assert redirect_target(f"{M2}/nfvha/v1/events?x=1", sent, bases) == (
        httpx.URL(f"{M2}/nfvha/v1/events?x=1"), 1)
    assert redirect_target("http://user:pw@m2:8600/x", sent, bases) is None
    assert redirect_target(None, sent, bases) is None
    assert redirect_target("http://m9:8600/x", sent, bases) is None


def test_split_urls_reads_a_command_line_list() -> None:
    assert split_urls(f"{M1}/, {M2},{M1}") == (M1, M2)
    for bad in ("", "m1:8600", "ftp://m1", f"{M1},http://"):
        with pytest.raises(ConfigError):
            split_urls(bad)


async def test_a_leader_change_is_logged_once_and_members_tried_in_vain_not_at_all(
        caplog: pytest.LogCaptureFixture) -> None:
    now_leading = ["m1"]

    def member(name: str) -> Handler:
        def handler(request: httpx.Request) -> httpx.Response:
            if now_leading[0] == name:
                return leader(request)
            return redirect_to(f"http://{now_leading[0]}:8600")(request)
        return handler

    cluster = Cluster(m1=member("m1"), m2=member("m2"))
    f = LeaderFollower([M1, M2])
    with caplog.at_level(logging.INFO, logger="nfvha.follow"):
        async with cluster.client() as c:
            await f.send(c, "POST", "/x")
            now_leading[0] = "m2"
            for _ in range(3):
                await f.send(c, "POST", "/x")
        assert [r.getMessage() for r in caplog.records] == [
            f"manager requests are answered by {M2} now (before: {M1})"]
        caplog.clear()
        async with Cluster().client() as c:  # every manager down, reports go on failing
            for _ in range(5):
                with pytest.raises(httpx.ConnectError):
                    await f.send(c, "POST", "/x", idempotent=True)
        assert caplog.records == []
