#!/usr/bin/env python3
"""flowmon: a stateful UDP flow monitor, a sample VNF that knows nothing of nfvha.

State (process memory only, so only a checkpoint/restore of the process keeps it):
one record per flow, keyed by the sender's (IPv4 address, port), holding packets,
bytes (UDP payload bytes), first_seen and last_seen; plus totals and started_at.
Times are Unix wall-clock seconds: unlike a monotonic clock they stay meaningful
after the process is restored on another host.

Wire protocol, one UDP datagram per request:

Data port (default 5000)
    Every datagram, whatever its content, is counted against its sender's flow.
    No reply is sent, except when the payload starts with b"ACK?": that datagram
    is counted too, then the sender gets b"ACK <packets of its flow>". Since a
    socket's datagrams are handled in order, the answer to ACK? also confirms
    that everything the client sent before it has been counted.

Query port (default 5001); the command is case-insensitive, surrounding
whitespace is ignored, every request gets exactly one reply:
    b"PING"          -> b"PONG"
    b"STATS"         -> JSON {"flows": {"ip:port": {"packets": n, "bytes": n}},
                        "flow_count": n, "total_packets": n, "total_bytes": n,
                        "started_at": t}; when that would exceed 60000 bytes,
                        "flows" is left out and "truncated": true is added
    b"FLOW ip:port"  -> JSON {"flow": "ip:port", "packets": n, "bytes": n,
                        "first_seen": t, "last_seen": t} or {"error": "..."}
    anything else    -> JSON {"error": "..."}

SIGTERM and SIGINT end the process with exit status 0.
"""

import argparse
import ipaddress
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
# Datagrams read per wake-up from one socket, so a flood on the data port
# cannot starve the query port.
BATCH = 64

Address = tuple[str, int]


@dataclass
class Flow:
    """Counters for one (source address, source port) flow."""

    packets: int
    bytes: int
    first_seen: float
    last_seen: float


class FlowTable:
    """All flows seen since start, with running totals."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.total_packets = 0
        self.total_bytes = 0
        self._flows: dict[str, Flow] = {}

    def count(self, key: str, size: int, now: float) -> Flow:
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = Flow(packets=0, bytes=0, first_seen=now, last_seen=now)
        flow.packets += 1
        flow.bytes += size
        flow.last_seen = now
        self.total_packets += 1
        self.total_bytes += size
        return flow

    def get(self, key: str) -> Flow | None:
        return self._flows.get(key)

    def stats(self, max_bytes: int = MAX_REPLY_BYTES) -> bytes:
        totals: dict[str, Any] = {
            "flow_count": len(self._flows),
            "total_packets": self.total_packets,
            "total_bytes": self.total_bytes,
            "started_at": self.started_at,
        }
        flows = {k: {"packets": f.packets, "bytes": f.bytes} for k, f in self._flows.items()}
        full = _to_json({"flows": flows, **totals})
        if len(full) <= max_bytes:
            return full
        return _to_json({**totals, "truncated": True})


class FlowMonitor:
    """Counts datagrams on the data socket and answers queries on the query socket."""

    def __init__(self, data_sock: socket.socket, query_sock: socket.socket) -> None:
        self.data_sock = data_sock
        self.query_sock = query_sock
        self.table = FlowTable(started_at=time.time())

    def serve_forever(self) -> NoReturn:
        # poll rather than epoll: it leaves no kernel object behind for CRIU to dump.
        with selectors.PollSelector() as selector:
            selector.register(self.data_sock, selectors.EVENT_READ, self._on_data)
            selector.register(self.query_sock, selectors.EVENT_READ, self._on_query)
            while True:
                for key, _ in selector.select():
                    handler: Callable[[], None] = key.data
                    handler()

    def answer(self, request: bytes) -> bytes:
        """The reply to one query datagram; never raises, whatever the bytes."""
        text = request.decode("utf-8", errors="replace").strip()
        command, _, argument = text.partition(" ")
        command = command.upper()
        argument = argument.strip()
        if command == "PING" and not argument:
            return b"PONG"
        if command == "STATS" and not argument:
            return self.table.stats()
        if command == "FLOW":
            return self._answer_flow(argument)
        return _error(f"unknown request {text[:60]!r}; expected PING, STATS or FLOW ip:port")

    def _answer_flow(self, argument: str) -> bytes:
        try:
            key = parse_flow_key(argument)
        except ValueError as exc:
            return _error(str(exc))
        flow = self.table.get(key)
        if flow is None:
            return _error(f"no flow {key}")
        return _to_json(
            {
                "flow": key,
                "packets": flow.packets,
                "bytes": flow.bytes,
                "first_seen": flow.first_seen,
                "last_seen": flow.last_seen,
            }
        )

    def _on_data(self) -> None:
        for payload, sender in _receive_batch(self.data_sock):
            flow = self.table.count(flow_key(sender), len(payload), time.time())
            if payload.startswith(b"ACK?"):
                _send_reply(self.data_sock, b"ACK %d" % flow.packets, sender)

    def _on_query(self) -> None:
        for request, sender in _receive_batch(self.query_sock):
            _send_reply(self.query_sock, self.answer(request), sender)


def flow_key(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def parse_flow_key(text: str) -> str:
    """Normalise "ip:port" to the key flowmon stores; ValueError says what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bad flow key {text[:60]!r}; expected FLOW ip:port")
    try:
        ip = ipaddress.IPv4Address(host)
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad flow key {text[:60]!r}; expected FLOW ip:port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port {port} in flow key; expected 0-65535")
    return f"{ip}:{port}"


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
        # Replies are best effort, as UDP itself is: a vanished client is not our failure.
        return


def _to_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error(message: str) -> bytes:
    return _to_json({"error": message})


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
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stateful UDP flow monitor (sample VNF).")
    parser.add_argument(
        "--host", default="0.0.0.0", help="IPv4 address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--data-port", type=_port, default=5000, help="counted traffic (default: %(default)s)"
    )
    parser.add_argument(
        "--query-port", type=_port, default=5001, help="PING/STATS/FLOW (default: %(default)s)"
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
        print(f"flowmon: cannot bind {args.host}: {exc}", file=sys.stderr)
        return 1
    with data_sock, query_sock:
        data_port = data_sock.getsockname()[1]
        query_port = query_sock.getsockname()[1]
        print(f"flowmon listening on {args.host}:{data_port}, queries on {query_port}", flush=True)
        FlowMonitor(data_sock, query_sock).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
