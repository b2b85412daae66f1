"""Synchronous clients for the sample VNFs in examples/vnfs, for tests and e2e runs.

Every call has a timeout; a missing reply raises TimeoutError and a reply that does
not parse raises ValueError, each naming the address and what was expected.
"""

import json
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "LineClient",
    "NatClient",
    "UdpFlow",
    "flowmon_flow",
    "flowmon_stats",
    "nat_table",
    "udp_request",
    "wait_until",
]

Address = tuple[str, int]
T = TypeVar("T")

_MAX_DATAGRAM = 65535


class _UdpPeer:
    """A UDP socket with a fixed source port, connected to one VNF address."""

    def __init__(self, addr: Address, src: Address | None, timeout: float) -> None:
        self.addr = addr
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind(src or ("", 0))
            # Connecting filters out datagrams from anyone else and turns an ICMP
            # "port unreachable" into ConnectionRefusedError instead of a silent wait.
            self._sock.connect(addr)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)
        host, port = self._sock.getsockname()[:2]
        self.source: Address = (host, port)
        """The (ip, port) the VNF sees as this client, kept after close()."""
        self.key = f"{host}:{port}"
        """This client as the VNFs name it: "ip:port"."""

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, payload: bytes) -> None:
        self._sock.send(payload)

    def _request(self, payload: bytes) -> bytes:
        self._drain()
        self._sock.send(payload)
        try:
            return self._sock.recv(_MAX_DATAGRAM)
        except TimeoutError:
            raise TimeoutError(
                f"no reply from {_fmt(self.addr)} to {_preview(payload)} within {self.timeout}s"
            ) from None

    def _drain(self) -> None:
        """Drop late replies to earlier requests, so they are not taken for the next one."""
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(_MAX_DATAGRAM)
        except (BlockingIOError, ConnectionRefusedError):
            pass
        finally:
            self._sock.settimeout(self.timeout)


def udp_request(
    addr: Address, payload: bytes, timeout: float = 1.0, src: Address | None = None
) -> bytes:
    """Send one datagram to `addr` and return the first reply from it."""
    peer = _UdpPeer(addr, src, timeout)
    with peer:
        return peer._request(payload)


class UdpFlow(_UdpPeer):
    """One flowmon flow: data datagrams from a fixed source port."""

    def send(self, n: int, size: int = 64) -> None:
        """Send `n` datagrams of `size` payload bytes; flowmon does not answer them."""
        if n < 0 or size < 0:
            raise ValueError(f"n and size must not be negative, got n={n} size={size}")
        payload = b"d" * size
        for _ in range(n):
            self._send(payload)

    def ack(self) -> int:
        """The flow's packet count, the ACK? datagram included, once all sent before it count."""
        reply = self._request(b"ACK?")
        word, _, count = reply.partition(b" ")
        if word != b"ACK" or not count.isdigit():
            raise ValueError(f"flowmon {_fmt(self.addr)} answered ACK? with {_preview(reply)}")
        return int(count)


def flowmon_stats(addr_query: Address, timeout: float = 1.0) -> dict[str, Any]:
    """flowmon's STATS reply: flows, totals and started_at."""
    return _json_request(addr_query, b"STATS", timeout)


def flowmon_flow(addr_query: Address, key: str, timeout: float = 1.0) -> dict[str, Any]:
    """flowmon's FLOW reply for "ip:port"; an unknown flow gives {"error": ...}."""
    return _json_request(addr_query, b"FLOW " + key.encode(), timeout)


class NatClient(_UdpPeer):
    """One udpnat client, from a fixed source port."""

    def request(self, payload: bytes) -> tuple[int, int, bytes]:
        """Send `payload`; return (external_port, packets of this binding, echoed payload)."""
        reply = self._request(payload)
        parts = reply.split(b" ", 2)
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise ValueError(
                f"udpnat {_fmt(self.addr)} answered {_preview(payload)} with {_preview(reply)}"
            )
        return int(parts[0]), int(parts[1]), parts[2]


def nat_table(addr_query: Address, timeout: float = 1.0) -> dict[str, Any]:
    """udpnat's TABLE reply: bindings and next_port."""
    return _json_request(addr_query, b"TABLE", timeout)


class LineClient:
    """One tcpcounter connection."""

    def __init__(self, addr: Address, timeout: float = 1.0) -> None:
        self.addr = addr
        self.timeout = timeout
        self._sock = socket.create_connection(addr, timeout=timeout)
        self._buffer = bytearray()
        host, port = self._sock.getsockname()[:2]
        self.source: Address = (host, port)

    def call(self, line: str) -> tuple[int, int, int, str]:
        """Send one line; return (conn_no, line_no, total_lines, echoed line)."""
        if "\n" in line:
            raise ValueError(f"a line cannot contain a newline: {line!r}")
        self.send_raw(line.encode() + b"\n")
        return self.read_reply()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are: several lines, half a line, garbage."""
        self._sock.sendall(data)

    def read_reply(self) -> tuple[int, int, int, str]:
        """Read and parse the next reply line."""
        reply = self.read_line()
        parts = reply.split(b" ", 3)
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            raise ValueError(f"tcpcounter {_fmt(self.addr)} sent {_preview(reply)}")
        return int(parts[0]), int(parts[1]), int(parts[2]), parts[3].decode(errors="replace")

    def read_line(self) -> bytes:
        """The next line from the server, without its newline."""
        deadline = time.monotonic() + self.timeout
        while (end := self._buffer.find(b"\n")) < 0:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(
                    f"no line from tcpcounter {_fmt(self.addr)} within {self.timeout}s"
                ) from None
            if not chunk:
                raise ConnectionError(f"tcpcounter {_fmt(self.addr)} closed the connection")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def shutdown_write(self) -> None:
        """Tell the server we are done sending, keeping the receive side open."""
        self._sock.shutdown(socket.SHUT_WR)

    def read_until_closed(self) -> bytes:
        """Everything the server still sends, up to its close."""
        self._sock.settimeout(self.timeout)
        data = bytes(self._buffer)
        self._buffer.clear()
        while chunk := self._sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions listed in `ignore` count as "not yet". TimeoutError after `timeout`
    seconds names the predicate and its last result or error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = f"last result {result!r}"
        except ignore as exc:
            last = f"last error {exc!r}"
        if time.monotonic() >= deadline:
            name = getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"{name} not true within {timeout}s; {last}")
        time.sleep(interval)


def _json_request(addr: Address, payload: bytes, timeout: float) -> dict[str, Any]:
    reply = udp_request(addr, payload, timeout)
    try:
        value = json.loads(reply)
    except ValueError:
        raise ValueError(
            f"{_fmt(addr)} answered {_preview(payload)} with non-JSON {_preview(reply)}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{_fmt(addr)} answered {_preview(payload)} with {_preview(reply)}")
    return value


def _fmt(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


def _preview(data: bytes, limit: int = 80) -> str:
    return repr(data if len(data) <= limit else data[:limit] + b"...")
