"""The forwarder's batched data path on real loopback sockets, under bursts: each client
keeps its own upstream source port, the VNF receives exactly what was logged in the log's
order, every reply reaches its own client, and after a replay exactly the replies already
relayed are suppressed, per flow."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from nfvha.dataplane.forwarder import Forwarder, Service, ServiceSpec
from nfvha.dataplane.packetlog import PacketLog

Addr = tuple[str, int]
CLIENTS = 4


class _EchoVnf(asyncio.DatagramProtocol):
    """A VNF that answers every datagram with the same bytes, and remembers who sent what."""

    def __init__(self) -> None:
        self.seen: list[tuple[Addr, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.seen.append((addr, data))
        assert self.transport is not None
        self.transport.sendto(data, addr)


@dataclass
class _Bed:
    svc: Service
    vnf: _EchoVnf
    front: Addr
    clients: list[socket.socket]
    replies: dict[int, list[bytes]] = field(
        default_factory=lambda: collections.defaultdict(list))

    def collect(self) -> None:
        for i, c in enumerate(self.clients):
            with contextlib.suppress(BlockingIOError):
                while True:
                    self.replies[i].append(c.recv(65536))

    async def until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.002)
            self.collect()


@pytest.fixture
async def bed() -> AsyncIterator[_Bed]:
    loop = asyncio.get_running_loop()
    vnf_transport, vnf = await loop.create_datagram_endpoint(
        _EchoVnf, local_addr=("127.0.0.1", 0))
    fwd = Forwarder()
    clients: list[socket.socket] = []
    try:
        target = vnf_transport.get_extra_info("sockname")
        svc = await fwd.add(ServiceSpec(name="echo", listen=("127.0.0.1", 0),
                                        target=target))
        assert svc.front is not None
        for _ in range(CLIENTS):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            c.bind(("127.0.0.1", 0))
            c.setblocking(False)
        yield _Bed(svc, vnf, svc.front.sock.getsockname(), clients)
    finally:
        for c in clients:
            c.close()
        await fwd.close()
        vnf_transport.close()


def _burst(bed: _Bed, tag: bytes, per_client: int, *, runs: bool) -> list[bytes]:
    """Send without yielding to the loop, so the forwarder finds it all queued: with
    ``runs``, each client's datagrams in a row; without, interleaved client by client."""
    order = ([(c, k) for c in range(CLIENTS) for k in range(per_client)] if runs
             else [(c, k) for k in range(per_client) for c in range(CLIENTS)])
    sent = []
    for c, k in order:
        data = b"%s:%d:%d" % (tag, c, k)
        bed.clients[c].sendto(data, bed.front)
        sent.append(data)
    return sent


def _client_of(payload: bytes) -> int:
    return int(payload.split(b":")[1])


async def test_a_burst_keeps_each_clients_port_and_the_logs_order_with_exact_counts(
        bed: _Bed) -> None:
    sent: list[bytes] = []
    for r in range(8):  # rounds of 64: interleaved (runs of one) and in runs of 16
        sent += _burst(bed, b"r%d" % r, 16, runs=bool(r % 2))
        want = len(sent)
        await bed.until(lambda: len(bed.vnf.seen) == want)  # noqa: B023 (used at once)
    await bed.until(lambda: sum(map(len, bed.replies.values())) == len(sent))

    # The VNF received exactly what was sent and logged, in the log's order.
    assert [d for _, d in bed.vnf.seen] == sent
    assert [d for _, d in bed.svc.log.after(0)] == sent
    # One upstream source port per client, its own, the whole time.
    ports: dict[int, set[int]] = collections.defaultdict(set)
    for (_, port), data in bed.vnf.seen:
        ports[_client_of(data)].add(port)
    assert all(len(p) == 1 for p in ports.values()) and len(set.union(*ports.values())) == 4
    # Every reply reached its own client, once.
    for c in range(CLIENTS):
        assert bed.replies[c] == [d for d in sent if _client_of(d) == c]
    st = bed.svc.stats
    assert st["rx"] == st["delivered"] == st["replies"] == len(sent) == bed.svc.position
    assert bed.svc.log_bytes == sum(map(len, sent))
    # And it was read in batches, not a datagram per wake-up.
    assert bed.svc.front is not None and bed.svc.front.batches <= len(sent) / 8


async def test_after_a_replay_exactly_the_replies_already_relayed_are_suppressed(
        bed: _Bed) -> None:
    warmup = _burst(bed, b"w", 4, runs=False)
    await bed.until(lambda: sum(map(len, bed.replies.values())) == len(warmup))
    cut = bed.svc.hold()  # a checkpoint: its dump ends, delivery resumes
    bed.svc.release()
    since = _burst(bed, b"a", 24, runs=False) + _burst(bed, b"b", 10, runs=True)
    total = len(warmup) + len(since)
    await bed.until(lambda: sum(map(len, bed.replies.values())) == total)
    before = {c: list(r) for c, r in bed.replies.items()}

    # The VNF is restored from the checkpoint at ``cut``: what came since is replayed,
    # and the restored VNF answers all of it again.
    bed.svc.hold()
    assert await bed.svc.replay(cut) == len(since)
    await bed.until(lambda: bed.svc.stats["replies"] == total + len(since))
    bed.svc.release()
    await asyncio.sleep(0.05)
    bed.collect()
    assert bed.replies == before  # not one duplicate reached a client
    assert bed.svc.stats["replies_suppressed"] == len(since)
    assert all(f.suppress == 0 for f in bed.svc.flows.values())
    # New traffic is answered again: nothing more was suppressed than was relayed.
    after = _burst(bed, b"n", 3, runs=True)
    await bed.until(lambda: sum(map(len, bed.replies.values())) == total + len(after))
    for c in range(CLIENTS):
        assert bed.replies[c][-3:] == [d for d in after if _client_of(d) == c]
    assert [d for _, d in bed.vnf.seen] == warmup + since + since + after


async def test_the_log_costs_little_memory_per_datagram(bed: _Bed) -> None:
    """What logging a small datagram allocates, all in all (arena, index, and whatever
    the batched path creates and keeps), well below one Python object per datagram."""
    n = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for r in range(40):
            n += len(_burst(bed, b"%02d" % r, 64, runs=True))  # 13-byte payloads
            await bed.until(lambda: bed.svc.stats["delivered"] == n)  # noqa: B023
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    per = kept / n
    assert len(bed.svc.log) == n
    assert per < 13 + 32, f"{per:.0f} bytes per logged 13-byte datagram"
    assert bed.svc.status().log_memory >= bed.svc.log_bytes


def test_the_log_trims_clears_and_replays_by_position() -> None:
    log = PacketLog()
    a, b = log.client_id(("10.0.0.1", 1)), log.client_id(("10.0.0.2", 2))
    for seq in range(1, 10001):
        log.append(seq, a if seq % 3 else b, b"%d" % seq, float(seq))
    assert log.trim(9000) == 9000 and len(log) == 1000 and log.first_seq == 9001
    assert log.oldest_at() == 9001.0
    assert [p for _, p in log.after(9990)] == [b"%d" % s for s in range(9991, 10001)]
    assert [c for c, _ in log.after(9996)] == [("10.0.0.1", 1), ("10.0.0.1", 1),
                                              ("10.0.0.2", 2), ("10.0.0.1", 1)]
    assert log.nbytes == sum(len(b"%d" % s) for s in range(9001, 10001))
    snap = log.after(9000)
    log.clear(10001)  # a snapshot outlives a clear
    assert len(snap) == 1000 and list(snap)[-1] == (("10.0.0.1", 1), b"10000")
    assert len(log) == 0 and log.nbytes == 0 and log.oldest_at() is None
    log.append(10001, a, b"x", 1.0)
    assert log.trim(10000) == 0 and [p for _, p in log.after(10000)] == [b"x"]
