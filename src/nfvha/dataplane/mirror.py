"""The mirror stream: what the active forwarder of a pair tells its standby.

One TCP connection (TLS between the two forwarders' certificates, or the daemons' token
in its first frame without TLS), opened by the active to the standby's
``--mirror-listen``. It carries, in the order they happened:

* a **snapshot** when it opens: every service (its spec, log position, committed
  position, flows with their upstream ports, reply counts per cut) and its whole log;
* then every change: a service added or removed, a flow opened (its upstream port), each
  run of datagrams logged, replies relayed and suppressed per flow, a cut (a checkpoint's
  release), a commit (log trim), a replay, a reset;
* **heartbeats** (``H``, every ``beat``) that the standby acknowledges (``A``) at once:
  each acknowledgement renews the active's lease, as the managers' answers do.

Mirroring is asynchronous: the active never waits for the standby. What is gathered is
written together ``FLUSH_DELAY`` (1 ms) later, or at once past ``FLUSH_BYTES``, so a
takeover leaves at most that unmirrored (the windows are in ``docs/architecture.md``). A
standby that falls more than ``MAX_BACKLOG`` bytes behind is dropped and sent a new
snapshot.

Frames: a type byte, a 4-byte big-endian length, the body. ``J`` is a JSON object (an
``op``); ``L`` a run of one client's datagrams (binary, the hot path); ``H``/``A`` a
heartbeat and its acknowledgement; ``B``/``b`` a barrier and the standby's word that it
applied everything before it (a checkpoint's cut waits for it: see ``PairMember.barrier``).
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from nfvha.dataplane.forwarder import Forwarder, Service, ServiceSpec, _Flow
from nfvha.dataplane.pacing import PaceConfig

__all__ = ["MAX_BACKLOG", "MirrorReceiver", "MirrorSender", "read_frame", "snapshot_frames"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]
_HEAD = struct.Struct("!cI")
_LOG = struct.Struct("!QHBI")  # first seq, client port, client ip length, count
_BEAT = struct.Struct("!QI")  # heartbeat number, lease in ms the active counts per ack
_ACK = struct.Struct("!Q")
#: A standby this far behind (bytes not yet written to its socket) is dropped and sent a
#: new snapshot: the active must not buffer without bound for a slow peer.
MAX_BACKLOG = 64 * 2**20
MAX_FRAME = 256 * 2**20
#: What is gathered is written after this long, or at once past ``FLUSH_BYTES``: one
#: write (and one wake-up of the standby) per millisecond rather than per datagram, at a
#: cost of at most that much more left unmirrored at a takeover.
FLUSH_DELAY = 0.001
FLUSH_BYTES = 64 * 2**10
_LITTLE = sys.byteorder == "little"


def _frame(kind: bytes, body: bytes | bytearray) -> bytes:
    return _HEAD.pack(kind, len(body)) + body


def json_frame(msg: dict[str, Any]) -> bytes:
    return _frame(b"J", json.dumps(msg, separators=(",", ":")).encode())


def _lens(payloads: Sequence[bytes | memoryview]) -> bytes:
    lens = array.array("H", [len(p) for p in payloads])
    if not _LITTLE:
        lens.byteswap()
    return lens.tobytes()


def log_frame(name: str, seq: int, client: Addr, payloads: Sequence[bytes | memoryview]) -> bytes:
    nb = name.encode()
    ip = socket.inet_pton(socket.AF_INET6 if ":" in client[0] else socket.AF_INET, client[0])
    body = b"".join((bytes((len(nb),)), nb, _LOG.pack(seq, client[1], len(ip), len(payloads)),
                     ip, _lens(payloads), *payloads))
    return _frame(b"L", body)


def parse_log(body: bytes) -> tuple[str, int, Addr, list[memoryview]]:
    view = memoryview(body)
    k = body[0]
    name = bytes(view[1:1 + k]).decode()
    at = 1 + k
    seq, port, iplen, n = _LOG.unpack_from(body, at)
    at += _LOG.size
    ip = socket.inet_ntop(socket.AF_INET6 if iplen == 16 else socket.AF_INET,
                          bytes(view[at:at + iplen]))
    at += iplen
    lens = array.array("H")
    lens.frombytes(bytes(view[at:at + 2 * n]))
    if not _LITTLE:
        lens.byteswap()
    at += 2 * n
    payloads = []
    for ln in lens:
        payloads.append(view[at:at + ln])
        at += ln
    return name, seq, (ip, port), payloads


def beat_frame(number: int, lease: float) -> bytes:
    return _frame(b"H", _BEAT.pack(number, int(lease * 1000)))


def ack_frame(number: int) -> bytes:
    return _frame(b"A", _ACK.pack(number))


def barrier_frame(number: int) -> bytes:
    """Asks the standby to say (``b``) once it has applied everything before it."""
    return _frame(b"B", _ACK.pack(number))


def barrier_ack_frame(number: int) -> bytes:
    return _frame(b"b", _ACK.pack(number))


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(_HEAD.size)
    kind, n = _HEAD.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"mirror frame of {n} bytes: more than any the active sends")
    return kind, await reader.readexactly(n)


def spec_to_json(spec: ServiceSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_json(d: dict[str, Any]) -> ServiceSpec:
    d = dict(d)
    d["pace"] = PaceConfig(**d.get("pace") or {})
    d["listen"] = tuple(d["listen"]) if d.get("listen") else None
    d["target"] = tuple(d["target"])
    return ServiceSpec(**d)


def _addr_key(client: Addr) -> list[Any]:
    return [client[0], client[1]]


def snapshot_frames(fwd: Forwarder) -> list[bytes]:
    """Every service's state and log, heads of chains first (a service that follows
    another is added after it)."""
    frames = [json_frame({"op": "snapshot"})]
    done: set[str] = set()
    pending = list(fwd.services.values())
    while pending:
        ready = [s for s in pending if s.spec.after is None or s.spec.after in done]
        if not ready:  # a chain whose head is missing: send them anyway
            ready = pending
        for svc in ready:
            frames.extend(_service_frames(svc))
            done.add(svc.spec.name)
        pending = [s for s in pending if s.spec.name not in done]
    frames.append(json_frame({"op": "synced"}))
    return frames


def _service_frames(svc: Service) -> list[bytes]:
    name = svc.spec.name
    out = [json_frame({
        "op": "service", "spec": spec_to_json(svc.spec),
        # The log's frames follow, from its first datagram on, and bring next_seq along.
        "log_first": svc.log.first_seq if len(svc.log) else svc.next_seq,
        "committed": svc.committed,
        "flows": [[*_addr_key(c), f.port, f.suppress] for c, f in svc.flows.items()],
        "cuts": [[p, [[*_addr_key(c), n] for c, n in counts.items()]]
                 for p, counts in svc.cuts.items()]})]
    seq = svc.log.first_seq
    run: list[bytes] = []
    run_client: Addr | None = None
    run_seq = seq
    for client, payload in svc.log.after(svc.log.first_seq - 1):
        if client != run_client or len(run) >= 256:
            if run and run_client is not None:
                out.append(log_frame(name, run_seq, run_client, run))
            run, run_client, run_seq = [], client, seq
        run.append(payload)
        seq += 1
    if run and run_client is not None:
        out.append(log_frame(name, run_seq, run_client, run))
    return out


class MirrorSender:
    """The active's side (a ``MirrorSink``): frames are gathered in a buffer and written
    once the event loop's turn ends; replies are counted per flow and written before any
    other change, so the standby adds them to the cuts they were counted in."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.buf = bytearray()
        self._replies: dict[tuple[str, Addr], list[int]] = {}
        self._scheduled = False
        self.broken: str | None = None  # why the stream was given up
        self.sent_bytes = 0

    # -- MirrorSink -----------------------------------------------------------------------

    def added(self, spec: ServiceSpec) -> None:
        self._control({"op": "added", "spec": spec_to_json(spec)})

    def removed(self, name: str) -> None:
        self._control({"op": "removed", "name": name})

    def flow(self, name: str, client: Addr, port: int) -> None:
        self._control({"op": "flow", "name": name, "client": _addr_key(client), "port": port})

    def logged(self, name: str, seq: int, client: Addr,
               payloads: Sequence[bytes | memoryview]) -> None:
        self.buf += log_frame(name, seq, client, payloads)
        self._schedule()

    def replies(self, name: str, client: Addr, counted: int, suppressed: int) -> None:
        c = self._replies.get((name, client))
        if c is None:
            self._replies[(name, client)] = [counted, suppressed]
            self._schedule()
        else:
            c[0] += counted
            c[1] += suppressed

    def cut(self, name: str, position: int) -> None:
        self._control({"op": "cut", "name": name, "position": position})

    def commit(self, name: str, position: int) -> None:
        self._control({"op": "commit", "name": name, "position": position})

    def replayed(self, name: str, position: int) -> None:
        self._control({"op": "replayed", "name": name, "position": position})

    def reset(self, name: str, next_seq: int) -> None:
        self._control({"op": "reset", "name": name, "next_seq": next_seq})

    # -- writing ----------------------------------------------------------------------------

    def beat(self, number: int, lease: float) -> None:
        """A heartbeat, written at once (with whatever is gathered before it)."""
        self.buf += beat_frame(number, lease)
        self.flush()

    def barrier(self, number: int) -> None:
        """A barrier, written at once after everything gathered (see ``PairMember``)."""
        self.buf += barrier_frame(number)
        self.flush()

    def _control(self, msg: dict[str, Any]) -> None:
        self._flush_replies()
        self.buf += json_frame(msg)
        self._schedule()

    def _flush_replies(self) -> None:
        if self._replies:
            counts = [[name, *_addr_key(c), n, s] for (name, c), (n, s) in self._replies.items()]
            self._replies.clear()
            self.buf += json_frame({"op": "replies", "counts": counts})

    def _schedule(self) -> None:
        if len(self.buf) >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self.broken is not None:
            self.buf.clear()
            self._replies.clear()
            return
        self._flush_replies()
        if not self.buf:
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.broken = "the connection to the standby closed"
            self.buf.clear()
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            self.broken = (f"the standby fell more than {MAX_BACKLOG // 2**20} MiB behind; it "
                           "gets a new snapshot")
            self.buf.clear()
            transport.abort()
            return
        self.sent_bytes += len(self.buf)
        self.writer.write(bytes(self.buf))
        self.buf.clear()


class MirrorReceiver:
    """The standby's side: applies what the active sends to its passive ``Forwarder``.

    ``on_service`` is called (and awaited) with each service spec it learns, so that its
    service address is configured here before a takeover needs it."""

    def __init__(self, fwd: Forwarder,
                 on_service: Callable[[ServiceSpec], Any] | None = None) -> None:
        self.fwd = fwd
        self.on_service = on_service
        self.synced = False
        self.frames = 0
        self.datagrams = 0
        self.last_position: dict[str, int] = {}

    async def apply(self, kind: bytes, body: bytes) -> None:
        self.frames += 1
        if kind == b"L":
            name, seq, client, payloads = parse_log(body)
            svc = self.fwd.services.get(name)
            if svc is None:
                return
            if seq != svc.next_seq:  # cannot happen on one ordered stream; say so if it does
                log.warning("mirror of %s: datagram %d follows %d", name, seq, svc.next_seq - 1)
            svc.log.extend(seq, svc.log.client_id(client), payloads, time.monotonic())
            svc.next_seq = seq + len(payloads)
            self.datagrams += len(payloads)
            return
        if kind != b"J":
            raise ValueError(f"unknown mirror frame {kind!r}")
        msg = json.loads(body)
        op = msg.get("op")
        if op == "snapshot":
            self.synced = False
            await self.fwd.close()
            self.fwd.services.clear()
        elif op == "synced":
            self.synced = True
        elif op in ("service", "added"):
            spec = spec_from_json(msg["spec"])
            if self.on_service is not None:
                await self.on_service(spec)
            svc = await self.fwd.add(spec)
            if op == "service":
                self._restore(svc, msg)
        elif op == "removed":
            await self.fwd.remove(msg["name"])
        elif op == "replies":
            for name, ip, port, counted, suppressed in msg["counts"]:
                svc = self.fwd.services.get(name)
                if svc is not None:
                    svc.apply_replies((ip, port), counted, suppressed)
        else:
            svc = self.fwd.services.get(msg.get("name", ""))
            if svc is None:
                return
            if op == "flow":
                client = (msg["client"][0], msg["client"][1])
                flow = svc.flows.get(client)
                if flow is None:
                    svc.flows[client] = _Flow(client, port=msg["port"])
                else:
                    flow.port = msg["port"]
            elif op == "cut":
                svc.cuts[msg["position"]] = {}
            elif op == "commit":
                svc.apply_commit(msg["position"])
            elif op == "replayed":
                svc.apply_replay(msg["position"])
            elif op == "reset":
                svc.apply_reset(msg["next_seq"])

    @staticmethod
    def _restore(svc: Service, msg: dict[str, Any]) -> None:
        svc.next_seq = msg["log_first"]
        svc.committed = msg["committed"]
        svc.log.clear(svc.next_seq)
        for ip, port, uport, suppress in msg["flows"]:
            svc.flows[(ip, port)] = _Flow((ip, port), port=uport, suppress=suppress)
        svc.cuts = {p: {(ip, port): n for ip, port, n in counts} for p, counts in msg["cuts"]}
