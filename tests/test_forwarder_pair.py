"""A forwarder pair in one process, on loopback: two real ``PairMember``s with real
forwarders, sockets and mirror stream, arbitrated by the manager's real ``ForwarderPair``
on a SQLite store (served over httpx's ASGI transport). What the testbed's e2e adds is
the ARP on a real segment, two hosts, and real kills (``tests/e2e/test_forwarder_pair``).

Checked: the standby holds what the active mirrors (flows and their upstream ports, the
log, reply counts); after the active dies the standby takes over only once the old
lease has run out, a client flow keeps its upstream port, and a replay from a cut taken
before the takeover suppresses exactly the replies already relayed; a standby that only
lost the stream is refused while the active beats; an active that loses every
acknowledgement stops forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nfvha.dataplane.forwarder import Forwarder, ServiceSpec
from nfvha.dataplane.pair import PairMember, PairTimings, Role
from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.events import EventBus
from nfvha.vnfm.forwarders import ForwarderPair, TakeoverRefused

Addr = tuple[str, int]
SERVICE_IP = "127.0.0.1"


class _CountingVnf(asyncio.DatagramProtocol):
    """Counts datagrams per source and answers each with the running count."""

    def __init__(self) -> None:
        self.count = 0
        self.sources: list[Addr] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.count += 1
        self.sources.append(addr)
        assert self.transport is not None
        self.transport.sendto(b"%d" % self.count, addr)


class _FakeArp:
    """Records what the pair asks of ARP (the e2e test watches real ARP)."""

    def __init__(self) -> None:
        self.floating: set[str] = set()
        self.announced = 0
        self.answered = self.refused = 0

    def start(self) -> None: ...

    def set_floating(self, addresses: Any) -> None:
        self.floating = set(addresses)

    def add_floating(self, address: str) -> None:
        self.floating.add(address)

    def announce(self) -> None:
        self.announced += 1

    def close(self) -> None: ...


class _FakeNet:
    async def addresses(self) -> list[tuple[str, str]]:
        return [("lo", "127.0.0.1/8")]

    async def add_address(self, dev: str, cidr: str) -> None:
        raise AssertionError(f"nothing to add on loopback: {cidr}")


class _FakeManager:
    """What ``ForwarderPair`` uses of a manager: its store, its term's start."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.started = time.monotonic() - 10.0  # a leader for a while
        self.forwarder = None
        self.events = EventBus()
        self._wake = asyncio.Event()
        self.refusing = False  # answer nothing (a manager out of reach)

    def check_acting(self) -> None: ...


def _manager_app(m: _FakeManager, pair: ForwarderPair) -> FastAPI:
    app = FastAPI()

    @app.post("/nfvha/v1/forwarders/{fid}/beat")
    async def beat(fid: str, request: Request) -> Any:
        if m.refusing:
            return JSONResponse({"detail": "no leader"}, status_code=503)
        return pair.beat(fid, await request.json())

    @app.post("/nfvha/v1/forwarders/{fid}/takeover")
    async def takeover(fid: str, request: Request) -> Any:
        if m.refusing:
            return JSONResponse({"detail": "no leader"}, status_code=503)
        try:
            return await pair.takeover(fid, await request.json())
        except TakeoverRefused as exc:
            return JSONResponse({"active": exc.active, "term": exc.term, "detail": str(exc)},
                                status_code=409)

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Pair:
    m: _FakeManager
    arbiter: ForwarderPair
    members: dict[str, PairMember]
    vnf: _CountingVnf
    vnf_addr: Addr
    service: Addr
    arps: dict[str, _FakeArp] = field(default_factory=dict)

    async def active(self, timeout: float = 5.0) -> PairMember:
        deadline = time.monotonic() + timeout
        while True:
            owning = [p for p in self.members.values() if p.owning()]
            assert len(owning) <= 1, "two forwarders own the addresses"
            if owning:
                return owning[0]
            assert time.monotonic() < deadline, "no forwarder became active"
            await asyncio.sleep(0.005)

    def other(self, member: PairMember) -> PairMember:
        return next(p for p in self.members.values() if p is not member)


async def _until(cond: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[_Pair]:
    loop = asyncio.get_running_loop()
    vnf_transport, vnf = await loop.create_datagram_endpoint(
        _CountingVnf, local_addr=("127.0.0.1", 0))
    store = SqliteStore(tmp_path / "state.db")
    m = _FakeManager(store)
    arbiter = ForwarderPair(m, {"a": "http://fa", "b": "http://fb"})  # type: ignore[arg-type]
    app = _manager_app(m, arbiter)
    ports = {"a": _free_port(), "b": _free_port()}
    members: dict[str, PairMember] = {}
    arps: dict[str, _FakeArp] = {}
    for me, peer in (("a", "b"), ("b", "a")):
        arps[me] = _FakeArp()
        members[me] = PairMember(
            me, Forwarder(), peer=("127.0.0.1", ports[peer]),
            mirror_listen=("127.0.0.1", ports[me]), managers=["http://manager"],
            upstream_ip="127.0.0.1", interface="lo", prefixlen=8,
            net=_FakeNet(), token="t", arp=arps[me],  # type: ignore[arg-type]
            http=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
            timings=PairTimings())
    try:
        for p in members.values():
            await p.start()
        yield _Pair(m, arbiter, members, vnf, vnf_transport.get_extra_info("sockname"),
                    (SERVICE_IP, _free_port()), arps)
    finally:
        for p in members.values():
            with contextlib.suppress(Exception):
                await p.close()
            await p.fwd.close()
        vnf_transport.close()
        store.close()


async def _in_sync(active: PairMember, standby: PairMember) -> None:
    """The standby follows, and the active's leases are the short ones again: those it
    got while it had no standby (``lone_lease``) have run out."""
    await _until(lambda: standby.receiver.synced, what="the standby's snapshot")
    await _until(lambda: active.lease_until - time.monotonic() <= active.t.lease + 0.01,
                 timeout=active.t.lone_lease + 2, what="the lone lease to run out")


async def _exchange(sock: socket.socket, service: Addr, n: int,
                    timeout: float = 3.0) -> list[int]:
    """Send ``n`` datagrams one after the other, each answered before the next."""
    got = []
    loop = asyncio.get_running_loop()
    for _ in range(n):
        sock.sendto(b"x", service)
        data = await asyncio.wait_for(loop.sock_recv(sock, 100), timeout)
        got.append(int(data))
    return got


async def test_the_standby_takes_over_with_the_flows_ports_log_and_reply_counts(
        pair: _Pair) -> None:
    first = await pair.active()
    standby = pair.other(first)
    await _in_sync(first, standby)
    svc = await first.fwd.add(ServiceSpec(name="v", listen=pair.service,
                                          target=pair.vnf_addr))
    first.service_added(svc.spec)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        assert await _exchange(client, pair.service, 20) == list(range(1, 21))
        cut = svc.hold()  # a checkpoint: its cut at 20, replies counted from its release
        # The cut is answered once the standby holds everything up to it.
        assert await first.barrier() is True
        assert standby.fwd.services["v"].next_seq == cut + 1
        svc.release()
        assert await _exchange(client, pair.service, 5) == list(range(21, 26))
        mirrored = standby.fwd.services["v"]
        await _until(lambda: mirrored.next_seq == svc.next_seq
                     and mirrored.cuts == svc.cuts, what="the mirror")
        assert [(c, f.port) for c, f in mirrored.flows.items()] == \
            [(c, f.port) for c, f in svc.flows.items()]
        assert len(mirrored.log) == len(svc.log) == 25
        assert mirrored.cuts == {cut: {client.getsockname(): 5}}
        upstream_port = pair.vnf.sources[-1][1]

        # The active dies: its stream closes, its beats stop.
        died = time.monotonic()
        await first.close()
        await first.fwd.close()
        new = await pair.active()
        took = time.monotonic() - died
        assert new is standby and new.term == first.term + 1
        # Not before the old lease could have run out (lease + margin after its last
        # acknowledgement, which came before the death).
        assert new.last_takeover is not None
        assert pair.arps[new.id].announced >= 1
        assert {pair.service[0], "127.0.0.1"} <= pair.arps[new.id].floating

        # The client's flow goes on, from the same upstream port, counted on.
        assert await _exchange(client, pair.service, 5) == list(range(26, 31))
        assert {s[1] for s in pair.vnf.sources[-5:]} == {upstream_port}

        # A replay from before the takeover's position is flagged until a checkpoint is
        # committed through the new active (its log may lack the old one's last ones).
        assert new.fwd.services["v"].takeover_at == 25

        # The VNF fails and is restored from the cut: the replay brings it to 30 again,
        # and the 10 replies it sends again (already relayed, 5 by each forwarder) are
        # suppressed: the client sees none of them.
        pair.vnf.count = cut
        n = await new.fwd.services["v"].replay(cut)
        assert n == 10
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            client.recv(100)
        assert pair.vnf.count == 30
        assert await _exchange(client, pair.service, 1) == [31]
        new.fwd.services["v"].commit(31)
        assert new.fwd.services["v"].takeover_at is None
        print(f"\ntakeover in {took * 1000:.0f} ms: {new.last_takeover}")
    finally:
        client.close()


async def test_a_standby_that_lost_only_the_stream_is_refused_while_the_active_beats(
        pair: _Pair) -> None:
    first = await pair.active()
    standby = pair.other(first)
    await _in_sync(first, standby)
    term = first.term
    assert standby._incoming is not None
    standby._incoming.transport.abort()  # the stream breaks; both forwarders live
    await asyncio.sleep(1.0)
    assert first.owning() and first.term == term and standby.role is not Role.ACTIVE
    assert pair.arbiter.record()[:2] == (first.id, term)
    # The active opens its stream again and the standby follows it.
    await _until(lambda: standby.receiver.synced and standby._stream_alive,
                 what="the stream again")


async def test_an_active_that_loses_every_acknowledgement_stops_forwarding(
        pair: _Pair) -> None:
    first = await pair.active()
    standby = pair.other(first)
    await _in_sync(first, standby)
    pair.m.refusing = True  # the managers out of reach ...
    assert standby._server is not None and standby._incoming is not None
    standby._server.close()  # ... and the standby too: no stream, no acknowledgement
    standby._incoming.transport.abort()
    t0 = time.monotonic()
    await _until(lambda: not first.owning(), timeout=2.0, what="the demotion")
    # The gate closes within the lease (what is acknowledged counts from its sending).
    assert time.monotonic() - t0 <= first.t.lease + 0.1
    assert not standby.owning()
    # Reachable again: exactly one of them takes the addresses.
    pair.m.refusing = False
    owner = await pair.active()
    assert sum(p.owning() for p in pair.members.values()) == 1
    assert owner.term > 0


async def test_a_lapsed_lease_renewed_in_time_costs_delay_not_datagrams(
        pair: _Pair) -> None:
    """The active's lease lapses (as when its loop stalls or its acknowledgements come
    late): it reads and sends nothing until a beat is acknowledged again, the kernel
    keeping what arrives; then every datagram is delivered, in order, and it stays active."""
    first = await pair.active()
    standby = pair.other(first)
    await _in_sync(first, standby)
    svc = await first.fwd.add(ServiceSpec(name="v", listen=pair.service,
                                          target=pair.vnf_addr))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        term = first.term
        first.lease_until = time.monotonic() - 0.001  # lapsed: as after a stall
        for i in range(200):
            client.sendto(b"%d" % i, pair.service)
        await _until(lambda: first.renewals >= 1 and first.owning(), timeout=2.0,
                     what="the renewal")
        await _until(lambda: pair.vnf.count == 200, timeout=3.0, what="all 200 delivered")
        assert svc.stats["dropped_not_owner"] == 0 and first.demotions == 0
        assert first.term == term and first.role is Role.ACTIVE
        assert svc.position == 200
    finally:
        client.close()


async def test_a_call_under_way_to_the_old_active_ends_at_the_takeover() -> None:
    """A checkpoint's call to an active whose host lost power would wait its whole
    timeout; the manager's switch to the new active ends it at once, as an error."""
    from nfvha.dataplane.client import ForwarderClient, ForwarderError

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "old":
            await asyncio.sleep(30)  # a host that lost power: no answer
        return httpx.Response(200, json={"position": 7})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        fc = ForwarderClient("http://old:8800", "", http,
                             members={"a": "http://old:8800", "b": "http://new:8800"})
        call = asyncio.ensure_future(fc.hold("v"))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        fc.switch("http://new:8800")
        with pytest.raises(ForwarderError, match="replaced by its pair's standby"):
            await asyncio.wait_for(call, 2.0)
        assert time.monotonic() - t0 < 0.5
        assert await fc.hold("v") == 7  # the new active answers
