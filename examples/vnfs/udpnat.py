#!/usr/bin/env python3
"""udpnat: a NAT-like UDP binding table, a sample VNF that knows nothing of nfvha.

State (process memory only, so only a checkpoint/restore of the process keeps it):
a binding per client (IPv4 address, port) holding the external port allocated to
it, its packet count and when it was last heard from; plus the next port to hand
out. External ports are allocated in order from --base-port up to 65535, then the
allocator wraps around, skipping ports still bound. A binding silent for more than
--idle-timeout seconds expires; this is checked lazily, when its client speaks
again, when a new client arrives, and on TABLE. Times are Unix wall-clock seconds,
which stay meaningful after the process is restored on another host.

Wire protocol, one UDP datagram per request:

Data port (default 6000)
    Any payload (empty and binary included) gets the reply
    b"<external_port> <n> <payload>", n being the binding's packet count with
    this datagram. A restored process must answer an existing client with the
    same external port and the next n. If every port is bound, the reply is
    b"ERR no free external port".

Query port (default 6001); the command is case-insensitive, surrounding
whitespace is ignored, every request gets exactly one reply:
    b"PING"   -> b"PONG"
    b"TABLE"  -> JSON {"bindings": {"ip:port": {"external_port": p, "packets": n,
                 "last_seen": t}}, "binding_count": n, "next_port": p,
                 "idle_timeout": s}; when that would exceed 60000 bytes,
                 "bindings" is left out and "truncated": true is added
    anything else -> JSON {"error": "..."}

SIGTERM and SIGINT end the process with exit status 0.
"""

import argparse
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

MAX_DATAGRAM = 65535
MAX_REPLY_BYTES = 60000
MAX_PORT = 65535
# Datagrams read per wake-up from one socket, so a flood on the data port
# cannot starve the query port.
BATCH = 64

Address = tuple[str, int]


@dataclass
class Binding:
    """One client's external port and how much it has used it."""

    external_port: int
    packets: int
    last_seen: float


class BindingTable:
    """Client bindings with lazy idle expiry and an in-order port allocator."""

    def __init__(self, base_port: int, idle_timeout: float) -> None:
        self.base_port = base_port
        self.next_port = base_port
        self.idle_timeout = idle_timeout
        self._bindings: dict[str, Binding] = {}
        self._ports_in_use: set[int] = set()

    def use(self, key: str, now: float) -> Binding | None:
        """Count one datagram from `key`, binding it first if needed; None if no port is free."""
        binding = self._bindings.get(key)
        if binding is not None and self._expired(binding, now):
            self._unbind(key)
            binding = None
        if binding is None:
            self.expire(now)
            port = self._allocate_port()
            if port is None:
                return None
            binding = self._bindings[key] = Binding(external_port=port, packets=0, last_seen=now)
        binding.packets += 1
        binding.last_seen = now
        return binding

    def expire(self, now: float) -> None:
        for key in [k for k, b in self._bindings.items() if self._expired(b, now)]:
            self._unbind(key)

    def table(self, max_bytes: int = MAX_REPLY_BYTES) -> bytes:
        summary: dict[str, Any] = {
            "binding_count": len(self._bindings),
            "next_port": self.next_port,
            "idle_timeout": self.idle_timeout,
        }
        bindings = {
            key: {"external_port": b.external_port, "packets": b.packets, "last_seen": b.last_seen}
            for key, b in self._bindings.items()
        }
        full = _to_json({"bindings": bindings, **summary})
        if len(full) <= max_bytes:
            return full
        return _to_json({**summary, "truncated": True})

    def _expired(self, binding: Binding, now: float) -> bool:
        return now - binding.last_seen > self.idle_timeout

    def _unbind(self, key: str) -> None:
        binding = self._bindings.pop(key)
        self._ports_in_use.discard(binding.external_port)

    def _allocate_port(self) -> int | None:
        for _ in range(MAX_PORT - self.base_port + 1):
            port = self.next_port
            self.next_port = port + 1 if port < MAX_PORT else self.base_port
            if port not in self._ports_in_use:
                self._ports_in_use.add(port)
                return port
        return None


class UdpNat:
    """Answers clients on the data socket and table queries on the query socket."""

    def __init__(
        self, data_sock: socket.socket, query_sock: socket.socket, table: BindingTable
    ) -> None:
        self.data_sock = data_sock
        self.query_sock = query_sock
        self.table = table

    def serve_forever(self) -> NoReturn:
        # poll rather than epoll: it leaves no kernel object behind for CRIU to dump.
        with selectors.PollSelector() as selector:
            selector.register(self.data_sock, selectors.EVENT_READ, self._on_data)
            selector.register(self.query_sock, selectors.EVENT_READ, self._on_query)
            while True:
                for key, _ in selector.select():
                    handler: Callable[[], None] = key.data
                    handler()

    def translate(self, payload: bytes, sender: Address) -> bytes:
        """The reply to one data datagram from `sender`."""
        binding = self.table.use(f"{sender[0]}:{sender[1]}", time.time())
        if binding is None:
            return b"ERR no free external port"
        return b"%d %d " % (binding.external_port, binding.packets) + payload

    def answer(self, request: bytes) -> bytes:
        """The reply to one query datagram; never raises, whatever the bytes."""
        text = request.decode("utf-8", errors="replace").strip()
        command = text.upper()
        if command == "PING":
            return b"PONG"
        if command == "TABLE":
            self.table.expire(time.time())
            return self.table.table()
        return _to_json({"error": f"unknown request {text[:60]!r}; expected PING or TABLE"})

    def _on_data(self) -> None:
        for payload, sender in _receive_batch(self.data_sock):
            _send_reply(self.data_sock, self.translate(payload, sender), sender)

    def _on_query(self) -> None:
        for request, sender in _receive_batch(self.query_sock):
            _send_reply(self.query_sock, self.answer(request), sender)


def _receive_batch(sock: socket.socket) -> list[tuple[bytes, Address]]:
    received: list[tuple[bytes, Address]] = []
    for _ in range(BATCH):
        try:
            payload, sender = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            break
        except OSError:
            # A queued ICMP error for an earlier reply; later datagrams are still good.
            continue
        received.append((payload, sender))
    return received


def _send_reply(sock: socket.socket, reply: bytes, destination: Address) -> None:
    try:
        sock.sendto(reply, destination)
    except OSError:
        # Best effort, as UDP itself is: the client may be gone, or a near-64 KiB
        # payload plus our prefix may no longer fit in one datagram.
        return


def _to_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _bind_udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-{MAX_PORT}")
    return port


def _external_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"base port {port} is not in 1-{MAX_PORT}")
    return port


def _seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"idle timeout must be positive, got {text}")
    return seconds


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="NAT-like UDP binding table (sample VNF).")
    parser.add_argument(
        "--host", default="0.0.0.0", help="IPv4 address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--data-port", type=_port, default=6000, help="client traffic (default: %(default)s)"
    )
    parser.add_argument(
        "--query-port", type=_port, default=6001, help="PING/TABLE (default: %(default)s)"
    )
    parser.add_argument(
        "--base-port",
        type=_external_port,
        default=20000,
        help="first external port handed out (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=3600.0,
        help="seconds of silence before a binding expires (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    try:
        data_sock = _bind_udp(args.host, args.data_port)
        query_sock = _bind_udp(args.host, args.query_port)
    except OSError as exc:
        print(f"udpnat: cannot bind {args.host}: {exc}", file=sys.stderr)
        return 1
    with data_sock, query_sock:
        data_port = data_sock.getsockname()[1]
        query_port = query_sock.getsockname()[1]
        print(f"udpnat listening on {args.host}:{data_port}, queries on {query_port}", flush=True)
        table = BindingTable(base_port=args.base_port, idle_timeout=args.idle_timeout)
        UdpNat(data_sock, query_sock, table).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
