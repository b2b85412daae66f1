"""Replay pacing by the VNF's receive queue (``nfvha.dataplane.pacing``).

The pacer's decisions are pure: here a simulated socket (a buffer of ``capacity`` bytes
that drops what does not fit, a VNF reading at some rate after some delay) and a
simulated agent (answers after a network latency, long polls) drive it on a fake clock.
Then the forwarder's replay with a fake probe, its API with a fake agent, and the
agent's readers of ``/proc`` and ``ss`` on this process's own socket.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nfvha.dataplane.api import create_forwarder_app
from nfvha.dataplane.forwarder import Forwarder, Service, ServiceSpec, _Flow
from nfvha.dataplane.pacing import PaceConfig, ProbeError, QueuePacer, datagram_cost
from nfvha.dataplane.rxprobe import AgentQueueProbe
from nfvha.descriptor import parse_descriptor
from nfvha.errors import InstanceStateError
from nfvha.tls import Identity, TlsConfig, _with_tls
from nfvha.vim.agent import (
    Agent,
    AgentConfig,
    Instance,
    _rcvbuf_errors,
    _udp_sockets,
)
from nfvha.vim.api import create_app
from nfvha.vim.cgroups import CgroupDriver
from nfvha.vim.criu import CriuRunner
from nfvha.vim.sockdiag import udp_meminfo
from nfvha.wire import InstanceState, ReplayPace, RxQueue

CAPACITY = 212992  # net.core.rmem_default: a socket's receive buffer unless it asks


@dataclass
class Sim:
    """A VNF's UDP socket and its agent, on a fake clock stepped by 0.1 ms.

    ``drain_pps``: how fast the VNF reads once ``starts_at`` has passed; ``true_cost``:
    what the kernel really charges per datagram (the pacer estimates it itself);
    ``latency``: network round trip of a reading; ``send_pps``: how fast the forwarder
    can send at all.
    """

    total: int
    drain_pps: float
    starts_at: float = 0.0
    true_cost: int = 832
    latency: float = 0.001
    send_pps: float = 100_000.0
    cfg: PaceConfig = field(default_factory=PaceConfig)
    payload: int = 8
    broken_agent: str | None = None  # "final" or "flaky": every reading fails so
    capacity: int = CAPACITY

    t: float = 0.0
    queued: collections.deque[int] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    drops: int = 0
    sent: int = 0
    peak: int = 0
    done_at: float | None = None
    readings: int = 0

    def run(self, until: float = 30.0) -> QueuePacer:
        dt = 1e-4
        pacer = QueuePacer(0.0, self.total, self.cfg)
        cost = datagram_cost(self.payload)
        read_credit = send_credit = 0.0
        # Readings under way, as the forwarder's driver keeps them: what ``request``
        # gave, what the agent was asked to wait for, when, and once read, the answer
        # and when it arrives.
        under_way: list[dict[str, Any]] = []

        def ask(now: float, long_poll: bool) -> None:
            under_way.append({"asked": pacer.request(now), "at": now,
                              "below": pacer.below() if long_poll else None})

        while self.t < until and self.sent < self.total:
            now = self.t
            if now >= self.starts_at:  # the VNF reads
                read_credit = min(read_credit + self.drain_pps * dt, 64)
                while read_credit >= 1 and self.queued:
                    self.queued_bytes -= self.queued.popleft()
                    read_credit -= 1
            for r in under_way:  # the agent reads /proc once the request is there
                there = r["at"] + self.latency / 2
                if "due" not in r and now >= there and (
                        r["below"] is None or self.queued_bytes <= r["below"]
                        or now >= there + self.cfg.wait):
                    r["due"] = now + self.latency / 2
                    r["reading"] = None if self.broken_agent else RxQueue(
                        port=5000, sockets=1, queued=self.queued_bytes,
                        capacity=self.capacity, drops=self.drops, rcvbuf_errors=self.drops,
                        backlog=0, waited_ms=(now - there) * 1000)
            for r in [r for r in under_way if r.get("due", until) <= now]:
                under_way.remove(r)
                self.readings += 1
                if r["reading"] is not None:
                    pacer.update(r["asked"], r["reading"], now)
                elif self.broken_agent == "final":
                    pacer.fail("agent said 404", now)
                else:
                    pacer.failed_reading("timeout", now)
            send_credit = min(send_credit + self.send_pps * dt, 16)
            blocked = False
            while send_credit >= 1 and self.sent < self.total:
                if not pacer.take(cost, now):
                    blocked = True
                    break
                send_credit -= 1
                self.sent += 1
                if self.queued_bytes + self.true_cost > self.capacity:
                    self.drops += 1
                else:
                    self.queued.append(self.true_cost)
                    self.queued_bytes += self.true_cost
                    self.peak = max(self.peak, self.queued_bytes)
                if pacer.wants_reading(now, len(under_way)):
                    ask(now, long_poll=False)
            if blocked and not under_way and pacer.mode == "queue":
                ask(now, long_poll=True)
            elif blocked and pacer.wants_reading(now, len(under_way)):
                ask(now, long_poll=False)
            self.t += dt
        self.done_at = self.t
        if not self.broken_agent:  # the forwarder's last reading, for its report
            pacer.update(pacer.request(self.t), RxQueue(
                port=5000, sockets=1, queued=self.queued_bytes, capacity=self.capacity,
                drops=self.drops, rcvbuf_errors=self.drops), self.t)
        return pacer


def test_a_vnf_that_keeps_up_gets_the_replay_fast_and_whole() -> None:
    sim = Sim(total=20_000, drain_pps=150_000)
    pacer = sim.run()
    assert sim.sent == 20_000 and sim.drops == 0
    rate = sim.total / (sim.done_at or 1)
    assert rate >= 50_000, f"{rate:.0f}/s"  # the forwarder, not the pacing, is the limit
    r = pacer.report(sim.t)
    assert r.paced_by == "queue" and r.forced == 0 and r.drops == 0
    assert r.capacity == CAPACITY
    # About one reading per half window: not one per datagram.
    assert r.reads < sim.total / 50


def test_a_vnf_that_starts_late_and_reads_slowly_loses_nothing() -> None:
    # Just restored: nothing read for 300 ms, then 8,000/s, on a 2 ms round trip.
    sim = Sim(total=5_000, drain_pps=8_000, starts_at=0.3, latency=0.002)
    pacer = sim.run()
    r = pacer.report(sim.t)
    assert sim.sent == 5_000 and sim.drops == 0 and r.forced == 0
    assert sim.peak <= 0.75 * CAPACITY + datagram_cost(8)
    assert r.stalled_ms > 250  # it waited for the VNF rather than overflow it
    assert r.reads < 200  # by long polls, not by readings in a loop
    # Paced by the VNF's reading rate, not by a fixed one: done close to 0.3 + 5000/8000.
    assert (sim.done_at or 0) < 0.3 + 5_000 / 8_000 + 0.1


def test_two_staggered_readings_make_the_most_of_a_round_trip() -> None:
    # 2.6 ms, what a reading took on this 2-core machine under a replay.
    one = Sim(total=20_000, drain_pps=150_000, latency=0.0026, cfg=PaceConfig(readings=1))
    one.run()
    two = Sim(total=20_000, drain_pps=150_000, latency=0.0026)
    two.run()
    # One at a time: at most window / (2 round trips); staggered: window / 1.5 of them.
    assert one.total / (one.done_at or 1) < 40_000 < 45_000 < two.total / (two.done_at or 1)
    assert one.drops == two.drops == 0


def test_a_vnf_that_never_reads_costs_the_floor_rate_until_the_deadline() -> None:
    cfg = PaceConfig(floor_pps=1000, grace=0.5, deadline=4.0)
    sim = Sim(total=2_000, drain_pps=0, cfg=cfg)
    pacer = sim.run(until=20)
    r = pacer.report(sim.t)
    assert sim.sent == 2_000  # the replay is not stalled for ever ...
    assert (sim.done_at or 99) <= 4.0 + 0.01  # ... it ends by the deadline ...
    # ... what fitted was sent by room, the rest by the floor, and that is reported.
    fits = int(0.75 * CAPACITY) // datagram_cost(8)
    assert r.forced == 2_000 - fits
    assert r.drops == sim.drops > 0 and r.rcvbuf_errors == sim.drops
    assert r.paced_by == "queue"


def test_the_floor_rises_so_that_a_long_replay_still_ends_by_the_deadline() -> None:
    cfg = PaceConfig(floor_pps=1000, grace=0.5, deadline=10.0)
    pacer = QueuePacer(0.0, 95_000, cfg)
    assert pacer.next_due(0.0) == pytest.approx(0.5 + 1 / 10_000)  # 95,000 in 9.5 s


def test_drops_the_estimate_missed_halve_the_share_of_the_buffer_used() -> None:
    # The kernel charges twice what datagram_cost says (another kernel, another path).
    sim = Sim(total=3_000, drain_pps=5_000, starts_at=0.05, true_cost=2 * 832 + 512)
    pacer = sim.run()
    r = pacer.report(sim.t)
    assert sim.sent == 3_000
    assert r.fill < 0.75 and pacer.drop_events >= 1
    assert 0 < r.drops == sim.drops  # some were lost before it learned, and it says so
    assert sim.drops < 200


def test_an_agent_that_refuses_leaves_the_replay_at_the_fixed_rate() -> None:
    sim = Sim(total=1_000, drain_pps=100_000, broken_agent="final")
    pacer = sim.run()
    r = pacer.report(sim.t)
    assert r.paced_by == "rate" and r.reason == "agent said 404"
    assert sim.sent == 1_000
    assert (sim.done_at or 0) == pytest.approx(1_000 / PaceConfig().blind_pps, abs=0.01)


def test_an_agent_that_times_out_is_given_up_on_after_a_few_readings() -> None:
    sim = Sim(total=500, drain_pps=100_000, broken_agent="flaky")
    pacer = sim.run()
    assert pacer.mode == "rate" and sim.readings == PaceConfig().max_failures
    assert sim.sent == 500


def test_no_socket_on_the_port_means_the_fixed_rate_and_says_so() -> None:
    pacer = QueuePacer(0.0, 10)
    pacer.update(pacer.request(0.0), RxQueue(port=5000, sockets=0, queued=0, capacity=0,
                                             drops=0), 0.001)
    assert pacer.mode == "rate" and "port 5000" in (pacer.reason or "")


def test_room_counts_what_was_sent_since_the_reading_was_asked_for() -> None:
    pacer = QueuePacer(0.0, 1000)
    assert not pacer.take(832, 0.0)  # nothing known yet: ask first
    first = pacer.request(0.0)
    assert pacer.below() is None  # the first reading is answered at once
    pacer.update(first, RxQueue(port=1, sockets=1, queued=0, capacity=8320, drops=0), 0.001)
    assert pacer.rtt == pytest.approx(0.001)
    assert pacer.report(0.001).first_reading_ms == pytest.approx(1.0)
    assert pacer.credit == 6240  # 3/4 of the buffer
    for _ in range(7):
        assert pacer.take(832, 0.001)
    assert not pacer.take(832, 0.001)
    second = pacer.request(0.001)
    # A reading asked for before those 7 were sent says 2 are queued: any of the 7 may
    # still be on its way, so all of them count, besides what it saw queued.
    pacer.update((0, 0.0005), RxQueue(port=1, sockets=1, queued=2 * 832, capacity=8320,
                                      drops=0), 0.002)
    assert pacer.credit == 6240 - 2 * 832 - 7 * 832
    # One asked for after them: only the queue counts.
    pacer.update(second, RxQueue(port=1, sockets=1, queued=2 * 832, capacity=8320,
                                 drops=0), 0.003)
    assert pacer.credit == 6240 - 2 * 832
    # An older one overtaken by it changes nothing.
    pacer.update((0, 0.0009), RxQueue(port=1, sockets=1, queued=8000, capacity=8320,
                                      drops=0), 0.004)
    assert pacer.credit == 6240 - 2 * 832
    # No room: the agent is asked to answer when the queue is below half the window.
    pacer.credit = 0
    assert pacer.below() == 3120


def test_packets_in_the_kernel_backlog_count_as_queued() -> None:
    pacer = QueuePacer(0.0, 1000)
    pacer.update(pacer.request(0.0), RxQueue(port=1, sockets=1, queued=0, capacity=83200,
                                             drops=0, backlog=10), 0.0)
    assert pacer.credit == 62400 - 10 * 832


@pytest.mark.parametrize(("payload", "measured"), [
    (0, 832), (100, 832), (197, 832), (198, 1280), (645, 1280), (646, 2304), (1000, 2304),
    (1472, 2304), (3000, 5440)])
def test_the_cost_of_a_datagram_is_never_below_what_the_kernel_charged(
        payload: int, measured: int) -> None:
    # Measured on Linux 6.18 through a veth pair between two netns (rx_queue growth).
    assert measured <= datagram_cost(payload) <= 2 * measured


# -- the forwarder's replay, driven ---------------------------------------------------------

CLIENT = ("10.9.5.5", 4000)


class _Socket:
    """The VNF's socket behind an upstream transport: a buffer the test reads from."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.read = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


class _Probe:
    """Reads the fake socket; the VNF reads ``per_reading`` datagrams between readings."""

    def __init__(self, sock: _Socket, per_reading: int = 1000, fail: bool = False) -> None:
        self.sock = sock
        self.per_reading = per_reading
        self.fail = fail
        self.calls: list[tuple[int | None, float]] = []
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True

    async def read(self, below: int | None, wait: float) -> RxQueue:
        self.calls.append((below, wait))
        if self.fail:
            raise ProbeError("no such instance", final=True)
        self.sock.read = min(len(self.sock.sent), self.sock.read + self.per_reading)
        queued = (len(self.sock.sent) - self.sock.read) * 832
        return RxQueue(port=5000, sockets=1, queued=queued, capacity=CAPACITY, drops=0,
                       rcvbuf_errors=7)


def _service(n: int) -> tuple[Service, _Socket]:
    svc = Service(ServiceSpec(name="fw", listen=None, target=("10.9.1.10", 5000)))
    sock = _Socket()
    svc.flows[CLIENT] = _Flow(CLIENT, sock)  # type: ignore[arg-type]
    for i in range(1, n + 1):
        svc.on_client(CLIENT, b"d%d" % i)
    sock.read = n  # the VNF read them before it failed
    return svc, sock


async def test_the_replay_is_paced_by_the_queue_and_the_queued_traffic_after_it() -> None:
    svc, sock = _service(3000)
    svc.hold()
    for i in range(500):  # arrives while the VNF is being restored
        svc.on_client(CLIENT, b"n%d" % i)
    probe = _Probe(sock, per_reading=150)
    t0 = time.monotonic()
    assert await svc.replay(0, probe) == 3000
    assert time.monotonic() - t0 < 2  # no fixed 5,000/s
    assert sock.sent[3000:] == [b"d%d" % i for i in range(1, 3001)]
    p = svc.last_pacing
    assert p is not None and p.paced_by == "queue" and p.forced == 0
    assert p.reads >= 3000 // 150 and p.drops == 0 and p.rcvbuf_errors == 0
    # Never more in the (fake) buffer than the pacer allowed itself.
    assert p.peak_queued <= 0.75 * CAPACITY
    svc.release()
    for _ in range(200):
        if not svc.queue:
            break
        await _tick()
    assert not svc.queue and sock.sent[6000:] == [b"n%d" % i for i in range(500)]
    assert svc._paced is None and svc.stats["paced_by_queue"] == 1
    await _tick()
    assert probe.closed  # its connection is not kept for the next replay


async def test_a_probe_that_fails_leaves_the_replay_at_the_fixed_rate() -> None:
    svc, sock = _service(100)
    svc.hold()
    probe = _Probe(sock, fail=True)
    assert await svc.replay(0, probe) == 100
    p = svc.last_pacing
    assert p is not None and p.paced_by == "rate" and p.reason == "no such instance"
    assert len(probe.calls) == 1  # a refusal is not asked again


async def test_without_a_probe_the_replay_runs_at_the_fixed_rate() -> None:
    svc, _ = _service(10)
    svc.hold()
    assert await svc.replay(0) == 10
    p = svc.last_pacing
    assert p is not None and p.paced_by == "rate" and p.reads == 0
    assert p.reason == "no agent was named to read the VNF's queue from"


async def test_a_reset_during_a_replay_ends_it() -> None:
    svc, sock = _service(2000)
    svc.hold()
    probe = _Probe(sock, per_reading=0)  # a VNF that reads nothing: the replay waits
    replay = asyncio.ensure_future(svc.replay(0, probe))
    await asyncio.sleep(0.05)
    svc.reset()  # the VNF was restarted without state meanwhile
    n = await asyncio.wait_for(replay, 2)
    assert n == len(sock.sent) - 2000 < 300  # what fitted in its buffer, no more
    assert svc._paced is None


async def _tick() -> None:
    await asyncio.sleep(0.005)


class _NoHostNetwork:
    async def addresses(self, *, netns: str | None = None) -> list[tuple[str, str]]:
        return []


async def test_the_forwarder_reads_the_queue_from_the_agent_it_is_given() -> None:
    probes: list[tuple[ReplayPace, int, _Probe]] = []

    def new_probe(pace: ReplayPace, port: int) -> _Probe:
        probes.append((pace, port, _Probe(sock, per_reading=10**6)))
        return probes[-1][2]

    app = create_forwarder_app("t", net=_NoHostNetwork(),  # type: ignore[arg-type]
                               probes=new_probe)
    fwd: Forwarder = app.state.forwarder
    svc, sock = _service(400)
    fwd.services["fw"] = svc
    svc.hold()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f",
                                 headers={"Authorization": "Bearer t"}) as http:
        r = await http.post("/v1/services/fw/replay", json={
            "position": 0, "pace": {"agent_url": "http://10.9.0.11:8700",
                                    "instance_id": "fw"}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["replayed"] == 400
        assert body["pacing"]["paced_by"] == "queue" and body["pacing"]["drops"] == 0
        r = await http.post("/v1/services/fw/replay", json={
            "position": 0, "pace": {"agent_url": "file:///etc/passwd", "instance_id": "fw"}})
        assert r.status_code == 422  # only an agent's http(s) URL is called
        await _tick()
    assert len(probes) == 1  # one per replay ...
    pace, port, probe = probes[0]
    assert (pace.agent_url, pace.instance_id, port) == ("http://10.9.0.11:8700", "fw", 5000)
    assert probe.calls and probe.closed  # ... closed when it and its drain are done


# -- the probe: HTTP/1.1 to an agent ----------------------------------------------------------


@pytest.fixture
def agent_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A uvicorn server that answers like an agent's rx-queue route (instance "gone": 404,
    "slow": after 2 s, "closing": with ``Connection: close``), noting each request."""
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.get("/v1/instances/{iid}/rx-queue")
    async def rxq(iid: str, request: Request, port: int) -> Any:
        seen.append({"iid": iid, "query": dict(request.query_params),
                     "auth": request.headers.get("authorization"),
                     "client": request.client.port if request.client else None})
        if iid == "gone":
            return JSONResponse({"type": "x", "title": "Not found", "status": 404,
                                 "detail": "no instance gone"}, status_code=404)
        if iid == "slow":
            await asyncio.sleep(2)
        q = RxQueue(port=port, sockets=1, queued=1664, capacity=CAPACITY, drops=0)
        return JSONResponse(q.model_dump(mode="json"),
                            headers={"Connection": "close"} if iid == "closing" else {})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tcp_port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=tcp_port,
                                           lifespan="off", log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{tcp_port}", seen
    finally:
        server.should_exit = True
        t.join(5)


async def test_the_probe_reads_over_one_kept_connection(
        agent_server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = agent_server
    probe = AgentQueueProbe(url, "v", 5000, token="t")
    q = await probe.read(None, 0.0)
    assert (q.queued, q.capacity) == (1664, CAPACITY)
    q = await probe.read(4096, 0.05)
    assert seen[0]["query"] == {"port": "5000"}
    assert seen[1]["query"] == {"port": "5000", "below": "4096", "wait_ms": "50.0"}
    assert seen[0]["auth"] == "Bearer t" and seen[0]["client"] == seen[1]["client"]
    await probe.aclose()


async def test_the_probe_says_what_failed_and_whether_to_ask_again(
        agent_server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = agent_server
    with pytest.raises(ProbeError) as refused:
        await AgentQueueProbe(url, "gone", 5000).read(None, 0.0)
    assert refused.value.final and "404 no instance gone" in str(refused.value)
    slow = AgentQueueProbe(url, "slow", 5000)
    t0 = time.monotonic()
    with pytest.raises(ProbeError) as late:
        await slow.read(None, 0.0)
    assert not late.value.final and time.monotonic() - t0 < 1.5
    closing = AgentQueueProbe(url, "closing", 5000)
    for _ in range(3):  # the agent closes after each answer: a new connection each time
        assert (await closing.read(None, 0.0)).queued == 1664
    assert len({r["client"] for r in seen if r["iid"] == "closing"}) == 3
    with socket.socket() as s:  # nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ProbeError) as unreachable:
        await AgentQueueProbe(dead, "v", 5000).read(None, 0.0)
    assert not unreachable.value.final


# -- the agent's side: /proc and ss -----------------------------------------------------------


def test_the_agent_reads_a_sockets_queue_and_drops_from_proc() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel doubles it
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        socks = _udp_sockets(os.getpid(), port)
        assert socks is not None and len(socks) == 1 and socks[0][:2] == (0, 0)
        for _ in range(40):
            tx.sendto(b"x" * 8, ("127.0.0.1", port))
        socks = _udp_sockets(os.getpid(), port)
        assert socks is not None
        queued, drops, inode = socks[0]
        assert queued > 0 and drops > 0 and inode == os.fstat(rx.fileno()).st_ino
        assert _udp_sockets(os.getpid(), 1) == []  # nothing bound there
        assert _udp_sockets(2**22 + 12345, port) is None  # no such process
        assert isinstance(_rcvbuf_errors(os.getpid()), int)
    finally:
        rx.close()
        tx.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="sock_diag in a netns needs CAP_SYS_ADMIN")
def test_sock_diag_gives_what_ss_prints() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rx.bind(("127.0.0.1", 0))
        rx6.bind(("::1", 0))
        for _ in range(20):
            tx.sendto(b"x", rx.getsockname())
        mem = udp_meminfo(f"/proc/{os.getpid()}/ns/net")
        m = mem[os.fstat(rx.fileno()).st_ino]
        assert m.port == rx.getsockname()[1]
        assert m.rcvbuf == rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert m.rmem_alloc > 0 and m.drops > 0  # a small buffer, overflowed
        m6 = mem[os.fstat(rx6.fileno()).st_ino]
        assert (m6.port, m6.rmem_alloc, m6.drops) == (rx6.getsockname()[1], 0, 0)
        assert m6.rcvbuf == rx6.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        for s in (rx, rx6, tx):
            s.close()
    with pytest.raises(OSError):
        udp_meminfo("/proc/0/ns/net")


def _agent(tmp_path: Path, tls: TlsConfig | None = None) -> Agent:
    cfg = AgentConfig(host_id="h1", state_dir=tmp_path / "agent", token="t",
                      log_dir=tmp_path / "log", work_root=tmp_path / "work", tls=tls)
    return Agent(cfg, criu=CriuRunner(str(tmp_path / "no-criu")),
                 cgroups=CgroupDriver(version=2, hierarchies=[]))


def _running(agent: Agent, pid: int) -> None:
    """An instance whose 'VNF' is this test process (its netns is the test's)."""
    d = parse_descriptor({"id": "v", "command": ["/bin/true"],
                          "network": {"address": "10.9.1.5/16"}})
    agent.instances["v"] = Instance("v", d, sandbox=None,  # type: ignore[arg-type]
                                    state=InstanceState.RUNNING, pid=pid)


async def test_the_agent_lets_the_forwarder_read_a_queue_and_nothing_else(
        tmp_path: Path) -> None:
    fake = TlsConfig(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    agent = _agent(tmp_path, tls=fake)
    for ident, queue_status, fence_status in ((Identity("forwarder"), 404, 403),
                                              (Identity("manager"), 404, 200),
                                              (Identity("agent", "h2"), 403, 403)):
        app = _with_tls(create_app(agent, manage_lifecycle=False),  # type: ignore[arg-type]
                        {"nfvha_identity": ident})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://a") as http:
            r = await http.get("/v1/instances/nope/rx-queue", params={"port": 5000})
            assert r.status_code == queue_status, (ident, r.text)
            r = await http.post("/v1/fence")
            assert r.status_code == fence_status, (ident, r.text)
            if ident.role == "forwarder":
                assert (await http.get("/v1/instances")).status_code == 403


@pytest.mark.skipif(os.geteuid() != 0, reason="sock_diag in a netns needs CAP_SYS_ADMIN")
async def test_the_agent_answers_a_vnfs_queue_and_waits_for_it_to_fall(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    _running(agent, os.getpid())
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        port = rx.getsockname()[1]
        q = await agent.rx_queue("v", port)
        assert (q.sockets, q.queued, q.drops) == (1, 0, 0)
        assert q.capacity == rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert q.rcvbuf_errors is not None
        for _ in range(10):
            tx.sendto(b"x", ("127.0.0.1", port))
        q = await agent.rx_queue("v", port)
        assert q.queued >= 10 * 768
        # Asked to wait until it falls below 1 datagram: it does not within 30 ms ...
        q = await agent.rx_queue("v", port, below=0, wait=0.03)
        assert q.queued > 0 and q.waited_ms >= 25
        # ... and does once the "VNF" reads.
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, lambda: [rx.recv(10) for _ in range(10)])
        q = await agent.rx_queue("v", port, below=0, wait=0.2)
        assert q.queued == 0 and q.waited_ms < 150
        assert (await agent.rx_queue("v", 1)).sockets == 0
    finally:
        rx.close()
        tx.close()
    agent.instances["v"].pid = 2**22 + 12345  # its process is gone
    with pytest.raises(InstanceStateError):
        await agent.rx_queue("v", port)
