"""Batched UDP I/O (``nfvha.dataplane.batchio``) on real sockets: what ``recvmmsg`` reads
comes out whole and attributed to its sender, and what ``sendmmsg`` is given arrives, in
order, however much of it the kernel takes per call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from nfvha.dataplane.batchio import SLOTS, BatchSocket, RecvBuffers, SendBuffers

# Mixed sizes: empty, tiny, one MTU, jumbo, and the largest UDP payload over IPv4.
SIZES = [0, 1, 32, 1472, 1500, 9000, 65507, 7]


def _payload(i: int, size: int) -> bytes:
    return bytes((i + k) % 251 for k in range(size))


@contextlib.contextmanager
def _udp(n: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        yield socks
    finally:
        for s in socks:
            s.close()


def _drain(sock: socket.socket, want: int,
           timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
    sock.settimeout(timeout)
    got = []
    with contextlib.suppress(TimeoutError):
        while len(got) < want:
            got.append(sock.recvfrom(65536))
    return got


def test_a_batch_of_mixed_sizes_from_two_senders_is_read_whole_and_attributed() -> None:
    with _udp(3) as (rcv, a, b):
        sent = []
        for i, size in enumerate(SIZES):
            src = a if i % 3 else b
            data = _payload(i, size)
            src.sendto(data, rcv.getsockname())
            sent.append((src.getsockname(), data))
        rx = RecvBuffers()
        n = rx.recv(rcv.fileno())
        assert n == len(SIZES)  # one call read them all
        got = [(src, bytes(rx.payload(i, ln)))
               for i, (src, ln) in enumerate(zip(rx.sources(n), rx.lengths(n), strict=True))]
        assert got == sent
        assert rx.recv(rcv.fileno()) == 0  # nothing left: no wait, no error


def test_more_datagrams_than_slots_are_read_in_several_batches_in_order() -> None:
    with _udp(2) as (rcv, snd):
        for i in range(150):
            snd.sendto(b"%d" % i, rcv.getsockname())
        rx = RecvBuffers(slots=SLOTS)
        got: list[bytes] = []
        sizes = []
        while n := rx.recv(rcv.fileno()):
            sizes.append(n)
            got += [bytes(rx.payload(i, ln)) for i, ln in enumerate(rx.lengths(n))]
        assert sizes == [64, 64, 22]
        assert got == [b"%d" % i for i in range(150)]


async def test_send_many_delivers_mixed_sizes_in_order_in_calls_of_at_most_the_slots() -> None:
    with _udp(1) as (rcv,):
        up = BatchSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), RecvBuffers(),
                         SendBuffers(slots=4), lambda rx, n: None)
        try:
            sent = [_payload(i, SIZES[i % len(SIZES)]) for i in range(11)]
            # Pointers into the receive slots of another batch, as the forwarder sends.
            src = RecvBuffers()
            for i, data in enumerate(sent):
                src.view[i * src.slot_size:i * src.slot_size + len(data)] = data
            up.send_many(rcv.getsockname(), [src.pointer(i) for i in range(11)],
                         [len(d) for d in sent])
            got = _drain(rcv, 11)
            assert [d for d, _ in got] == sent
            assert {a for _, a in got} == {("127.0.0.1", up.sock.getsockname()[1])}
            assert up.send_errors == 0 and not up.backlog
        finally:
            up.close()


async def test_a_partial_sendmmsg_drops_only_the_refused_datagram_and_sends_the_rest() -> None:
    """A datagram too large for UDP stops ``sendmmsg`` after the ones before it (a
    partial send); it is dropped and counted, and the ones after it still go, in order."""
    with _udp(1) as (rcv,):
        up = BatchSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), RecvBuffers(),
                         SendBuffers(), lambda rx, n: None)
        try:
            src = RecvBuffers()
            lens = [10, 20, 65508, 30, 40]  # 65508: one byte over the IPv4 limit
            for i, ln in enumerate(lens):
                src.view[i * src.slot_size:i * src.slot_size + ln] = bytes([i]) * ln
            up.send_many(rcv.getsockname(), [src.pointer(i) for i in range(5)], lens)
            got = _drain(rcv, 4)
            assert [d for d, _ in got] == [bytes([i]) * ln for i, ln in enumerate(lens) if i != 2]
            assert up.send_errors == 1 and not up.backlog
        finally:
            up.close()


async def test_eagain_keeps_the_rest_in_order_and_sends_it_when_there_is_room() -> None:
    """A datagram socket whose peer does not read fills up (UDP on loopback never does,
    a Unix datagram pair does): ``sendmmsg`` takes part of a batch, then fails with EAGAIN.
    Nothing is lost or reordered: the rest waits, copied, and later sends queue behind
    it until the peer reads again."""
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    up = BatchSocket(mine, RecvBuffers(), SendBuffers(), lambda rx, n: None)
    try:
        src = RecvBuffers()
        total = 300
        for i in range(total):
            data = b"%04d" % i + bytes(200)
            src.view[i * 256:i * 256 + len(data)] = data
        ptrs = [src.base + i * 256 for i in range(total)]
        up.send_many(None, ptrs, [204] * total)
        assert up.backlog, "the peer's queue should have filled up"
        kept = len(up.backlog)
        assert 0 < kept < total
        # The batch's buffers are reused at once: the backlog holds copies.
        src.view[:total * 256] = bytes(total * 256)
        up.sendto(b"last")  # behind the backlog, not before it
        assert len(up.backlog) == kept + 1
        peer.setblocking(False)
        got: list[bytes] = []
        for _ in range(500):
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(peer.recv(4096))
            if len(got) == total + 1:
                break
            await asyncio.sleep(0.002)  # the writer callback sends what now fits
        assert [g[:4] for g in got[:total]] == [b"%04d" % i for i in range(total)]
        assert got[total] == b"last" and not up.backlog and up.send_errors == 0
    finally:
        up.close()
        peer.close()


async def test_a_wakeup_reads_batch_after_batch_and_hands_each_over() -> None:
    with _udp(1) as (snd,):
        batches: list[list[bytes]] = []
        arrived = asyncio.Event()

        def on_batch(rx: RecvBuffers, n: int) -> None:
            batches.append([bytes(rx.payload(i, ln)) for i, ln in enumerate(rx.lengths(n))])
            if sum(map(len, batches)) == 200:
                arrived.set()

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        me = BatchSocket(sock, RecvBuffers(), SendBuffers(), on_batch)
        try:
            for i in range(200):  # queued before the loop looks: one wake-up reads all
                snd.sendto(b"%d" % i, sock.getsockname())
            await asyncio.wait_for(arrived.wait(), 2)
            assert [len(b) for b in batches] == [64, 64, 64, 8]
            assert [d for b in batches for d in b] == [b"%d" % i for i in range(200)]
        finally:
            me.close()
        assert sock.fileno() == -1


@pytest.mark.skipif(not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"),
                    reason="no IPv6 here")
def test_ipv6_senders_are_attributed() -> None:
    rcv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    snd = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        try:
            rcv.bind(("::1", 0))
            snd.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1 here")
        snd.sendto(b"six", rcv.getsockname()[:2])
        rx = RecvBuffers()
        n = rx.recv(rcv.fileno())
        assert n == 1 and rx.sources(1) == [snd.getsockname()[:2]]
        assert bytes(rx.payload(0, rx.lengths(1)[0])) == b"six"
    finally:
        rcv.close()
        snd.close()
