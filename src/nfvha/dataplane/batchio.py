"""Batched UDP I/O for the forwarder: ``recvmmsg``/``sendmmsg`` from libc through ctypes.

Neither asyncio nor uvloop reads more than one datagram per wake-up (uvloop's UDP
transport calls ``recvfrom`` once per readiness event), and no maintained Python package
binds the two calls, so they are bound here, with every buffer allocated once: no
compiler in the set-up, and a ctypes call per batch costs less than a syscall per
datagram. Linux only (the forwarder's platform).
"""

from __future__ import annotations

import array
import asyncio
import collections
import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence

__all__ = ["Addr", "BatchSocket", "RecvBuffers", "SendBuffers", "sockaddr"]

Addr = tuple[str, int]

SLOTS = 64  # datagrams per call, each way
SLOT_SIZE = 65536  # more than the largest UDP payload: a datagram is never truncated
_NAME = 32  # bytes per address slot (a sockaddr_in6 is 28)
_READS_PER_WAKEUP = 8  # batches read before the loop runs others (the control API)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int))


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint32))


_HDR = ctypes.sizeof(_MMsgHdr)
# Called with the GIL held (PyDLL) and without argtypes (pointers are passed as prepared
# c_void_p objects): each saves about a third of a microsecond per call, and with
# MSG_DONTWAIT neither call ever blocks.
_libc = ctypes.PyDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.restype = ctypes.c_int
_MSG_DONTWAIT = socket.MSG_DONTWAIT


def _u32_index(field_offset: int) -> int:
    assert field_offset % 4 == 0 and _HDR % 4 == 0
    return field_offset // 4


# Where msg_len and msg_namelen sit in the header array, counted in 32-bit words.
_LEN_WORD = _u32_index(_MMsgHdr.len.offset)
_NAMELEN_WORD = _u32_index(_MMsgHdr.hdr.offset + _MsgHdr.namelen.offset)
_WORDS = _HDR // 4


def sockaddr(addr: Addr) -> bytes:
    """The ``struct sockaddr_in``/``sockaddr_in6`` for ``(ip, port)``."""
    ip, port = addr
    if ":" in ip:
        return struct.pack("=HHI16sI", socket.AF_INET6, socket.htons(port), 0,
                           socket.inet_pton(socket.AF_INET6, ip), 0)
    return struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(ip))


def _decode(raw: bytes) -> Addr:
    family = struct.unpack_from("=H", raw)[0]
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntoa(raw[4:8]), port


class RecvBuffers:
    """Preallocated headers, address slots and payload slots for one ``recvmmsg`` call.

    One set serves every socket of a forwarder: a batch is used up (relayed, copied into
    the log or a queue) before the event loop reads the next one. The slots' memory is
    virtual until a datagram of that size lands in it.
    """

    def __init__(self, slots: int = SLOTS, slot_size: int = SLOT_SIZE) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self._data = (ctypes.c_char * (slots * slot_size))()
        self._names = (ctypes.c_char * (slots * _NAME))()
        self._iov = (_IoVec * slots)()
        self._hdrs = (_MMsgHdr * slots)()
        self.base = ctypes.addressof(self._data)
        names = ctypes.addressof(self._names)
        for i in range(slots):
            self._iov[i].base = self.base + i * slot_size
            self._iov[i].len = slot_size
            h = self._hdrs[i].hdr
            h.name = names + i * _NAME
            h.namelen = _NAME
            h.iov = ctypes.addressof(self._iov[i])
            h.iovlen = 1
        self._hdrs_ptr = ctypes.c_void_p(ctypes.addressof(self._hdrs))
        self.view = memoryview(self._data).cast("B")
        self._words = memoryview(self._hdrs).cast("B").cast("I")
        # The kernel overwrites each used header's namelen (len and flags are outputs
        # only): set back before the next call.
        self._namelens = array.array("I", [_NAME]) * slots
        self._used = 0
        self._name_keys = memoryview(self._names).cast("B").cast("Q")
        self._name_view = memoryview(self._names).cast("B")
        self._addr_cache: dict[int, Addr] = {}

    def recv(self, fd: int) -> int:
        """Datagrams read from ``fd`` without waiting: 0 if none was there."""
        used = self._used
        if used:
            self._words[_NAMELEN_WORD:used * _WORDS:_WORDS] = self._namelens[:used]
        while True:
            n: int = _recvmmsg(fd, self._hdrs_ptr, self.slots, _MSG_DONTWAIT, None)
            if n >= 0:
                self._used = n
                return n
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            self._used = 0
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise OSError(err, os.strerror(err))

    def lengths(self, n: int) -> list[int]:
        """Payload length of each of the first ``n`` datagrams."""
        return self._words[_LEN_WORD:_LEN_WORD + n * _WORDS:_WORDS].tolist()

    def sources(self, n: int) -> list[Addr]:
        """Sender of each of the first ``n`` datagrams. IPv4 addresses are looked up by
        the first 8 bytes of their sockaddr (family, port, address) in a cache."""
        keys = self._name_keys[0:n * (_NAME // 8):_NAME // 8].tolist()
        out: list[Addr | None] = list(map(self._addr_cache.get, keys))
        if None in out:
            for i, addr in enumerate(out):
                if addr is None:
                    out[i] = self._source(i, keys[i])
        return out  # type: ignore[return-value]

    def _source(self, i: int, key: int) -> Addr:
        namelen = self._words[i * _WORDS + _NAMELEN_WORD]
        raw = bytes(self._name_view[i * _NAME:i * _NAME + min(namelen, _NAME)])
        addr = _decode(raw)
        if struct.unpack_from("=H", raw)[0] == socket.AF_INET:
            if len(self._addr_cache) >= 65536:  # bounded: a spoofed flood cannot grow it
                self._addr_cache.clear()
            self._addr_cache[key] = addr
        return addr

    def payload(self, i: int, length: int) -> memoryview:
        """Datagram ``i`` in its slot: valid until the next ``recv``."""
        off = i * self.slot_size
        return self.view[off:off + length]

    def pointer(self, i: int) -> int:
        return self.base + i * self.slot_size


class SendBuffers:
    """Preallocated headers and iovecs for one ``sendmmsg`` call to one destination."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._name = (ctypes.c_char * _NAME)()
        self._iov = (_IoVec * slots)()
        self._hdrs = (_MMsgHdr * slots)()
        name = ctypes.addressof(self._name)
        for i in range(slots):
            h = self._hdrs[i].hdr
            h.name = name
            h.iov = ctypes.addressof(self._iov[i])
            h.iovlen = 1
        self._name_addr = name
        self._hdrs_ptr = ctypes.c_void_p(ctypes.addressof(self._hdrs))
        self._iov_words = memoryview(self._iov).cast("B").cast("Q")
        self._words = memoryview(self._hdrs).cast("B").cast("I")
        self._namelen = 0
        self._last_name: bytes | None = None

    def send(self, fd: int, name: bytes | None, ptrs: Sequence[int],
             lens: Sequence[int]) -> int:
        """One ``sendmmsg`` of up to ``slots`` datagrams (given as pointer and length) to
        the sockaddr ``name`` (None: the socket's connected peer). Returns how many the
        kernel took, or ``-errno`` if it took none."""
        n = len(ptrs)
        assert 0 < n <= self.slots and len(lens) == n
        namelen = len(name) if name is not None else 0
        if name is not None and name is not self._last_name:
            ctypes.memmove(self._name_addr, name, namelen)
            self._last_name = name
        if namelen != self._namelen:
            for i in range(self.slots):
                self._hdrs[i].hdr.name = self._name_addr if namelen else None
            self._words[_NAMELEN_WORD::_WORDS] = array.array("I", [namelen]) * self.slots
            self._namelen = namelen
        if n == 1:
            self._iov_words[0] = ptrs[0]
            self._iov_words[1] = lens[0]
        else:
            self._iov_words[0:2 * n:2] = array.array("Q", ptrs)
            self._iov_words[1:2 * n:2] = array.array("Q", lens)
        while True:
            k: int = _sendmmsg(fd, self._hdrs_ptr, n, _MSG_DONTWAIT)
            if k >= 0:
                return k
            err = ctypes.get_errno()
            if err != errno.EINTR:
                return -err


class BatchSocket:
    """A non-blocking UDP socket on the running loop, read and written in batches.

    ``on_batch(rx, n)`` is called with the first ``n`` datagrams in ``rx``'s slots, at most
    ``_READS_PER_WAKEUP`` batches per wake-up. Writes keep their order and are never
    dropped for want of room: what the kernel does not take (``EAGAIN``, or the rest of a
    partial ``sendmmsg``) waits in a backlog, copied out of the caller's buffers, and is
    sent when the socket is writable again (asyncio's datagram transports do the same).
    A datagram the kernel refuses with another error is dropped and counted in
    ``send_errors``, as asyncio's transports drop it after ``error_received``.
    """

    def __init__(self, sock: socket.socket, rx: RecvBuffers, tx: SendBuffers,
                 on_batch: Callable[[RecvBuffers, int], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.rx = rx
        self.tx = tx
        self.on_batch = on_batch
        self.loop = loop or asyncio.get_running_loop()
        self.backlog: collections.deque[tuple[bytes, Addr | None]] = collections.deque()
        self.send_errors = 0
        self.recv_errors = 0
        self.batches = 0  # recvmmsg calls that returned datagrams
        self._names: dict[Addr, bytes] = {}
        self._closed = False
        self.loop.add_reader(self.fd, self._readable)

    # -- reading ------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Leave datagrams in the kernel's buffer (the socket is not read) until
        ``resume_reading``."""
        if not self._closed:
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        rx = self.rx
        for _ in range(_READS_PER_WAKEUP):
            try:
                n = rx.recv(self.fd)
            except OSError:  # e.g. a queued ICMP error; the next read goes on
                self.recv_errors += 1
                continue
            if n == 0:
                return
            self.batches += 1
            self.on_batch(rx, n)
            if n < rx.slots or self._closed:
                return

    # -- writing ------------------------------------------------------------------------

    def name(self, addr: Addr) -> bytes:
        """The sockaddr of ``addr``, built once."""
        raw = self._names.get(addr)
        if raw is None:
            if len(self._names) >= 4096:
                self._names.clear()
            raw = self._names[addr] = sockaddr(addr)
        return raw

    def send_many(self, addr: Addr | None, ptrs: Sequence[int], lens: Sequence[int]) -> None:
        """Send datagrams given as pointer and length (valid for this call only) to
        ``addr`` (None: the connected peer), in order, in calls of up to ``tx.slots``."""
        if self.backlog:
            self._to_backlog(addr, ptrs, lens, 0)
            return
        name = None if addr is None else self.name(addr)
        i, n, slots = 0, len(ptrs), self.tx.slots
        while i < n:
            j = min(n, i + slots)
            k = self.tx.send(self.fd, name, ptrs[i:j], lens[i:j])
            if k > 0:
                i += k
            elif k == 0 or k in (-errno.EAGAIN, -errno.EWOULDBLOCK, -errno.ENOBUFS):
                self._to_backlog(addr, ptrs, lens, i)
                return
            else:  # the kernel refused datagram i (k == -errno): drop it, go on
                self.send_errors += 1
                i += 1

    def sendto(self, data: bytes, addr: Addr | None = None) -> None:
        """Send one datagram (after whatever waits in the backlog)."""
        if self.backlog:
            self.backlog.append((bytes(data), addr))
        elif not self._send_one(data, addr):
            self.backlog.append((bytes(data), addr))
            self.loop.add_writer(self.fd, self._writable)

    def _send_one(self, data: bytes, addr: Addr | None) -> bool:
        """Send one datagram now; False if the socket would block (it is kept then). A
        datagram the kernel refuses otherwise is dropped and counted, as asyncio does."""
        try:
            if addr is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.send_errors += 1
        return True

    def _to_backlog(self, addr: Addr | None, ptrs: Sequence[int], lens: Sequence[int],
                    start: int) -> None:
        was_empty = not self.backlog
        for p, ln in zip(ptrs[start:], lens[start:], strict=True):
            self.backlog.append((ctypes.string_at(p, ln), addr))
        if was_empty and self.backlog and not self._closed:
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        while self.backlog:
            if not self._send_one(*self.backlog[0]):
                return
            self.backlog.popleft()
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.backlog.clear()
        self.sock.close()
