"""Steering forwarder: owns service addresses, logs what each VNF receives, replays it.

A UDP proxy per service (service address:port → the active instance's address:port).
Each client gets an upstream socket of its own, so the VNF sees one stable source per
client flow, and replies find their way back. Every datagram delivered to the VNF gets a
sequence number and stays in the log until a committed checkpoint covers it.

Around a checkpoint the manager calls ``hold`` (delivery stops; new datagrams queue; the
log position P is returned), the agent dumps, and ``commit(P)`` trims the log and
releases the queue. After a restore from a checkpoint at position P, ``replay(P)``
delivers the logged datagrams after P in order, before any queued new traffic, paced by
the restored VNF's receive queue as its agent reads it (``nfvha.dataplane.pacing``). A
replay from a position the log no longer reaches back to (trimmed by a later commit, or
discarded by a reset) is refused (``ReplayGap``, naming the oldest position it can
replay from), never served in part: the manager decides what to do and says that
datagrams were lost.

Sockets are read and written in batches (``recvmmsg``/``sendmmsg``, ``batchio``): a batch
from the front socket is delivered in runs of one client's datagrams in a row, each run
logged and sent in one call, so the order the VNF receives is the log's order. The log
keeps its datagrams in one arena (``packetlog``), not as an object each.

Replies the restored VNF sends again are suppressed per flow by count: the forwarder
counts, per flow, the replies relayed since each checkpoint's dump ended, and drops that
many replies after a replay from that checkpoint. This is exact for VNFs whose replies per
flow are a deterministic function of their inputs; ``exactly_once`` instead holds each
reply until the checkpoint covering its inputs commits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nfvha.dataplane.batchio import BatchSocket, RecvBuffers, SendBuffers
from nfvha.dataplane.pacing import PaceConfig, ProbeError, QueuePacer, QueueProbe, datagram_cost
from nfvha.dataplane.packetlog import PacketLog
from nfvha.wire import ReplayPacing, RxQueue, ServiceStatus

__all__ = ["Forwarder", "LogFull", "MirrorSink", "ReplayGap", "Service", "ServiceSpec"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]
_BATCH = 32  # datagrams sent back to back before pacing
_closing: set[asyncio.Future[None]] = set()  # probes of finished replays, being closed


_SOCKET_BUFFER = 8 * 2**20
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32


@functools.cache
def _buffers() -> tuple[RecvBuffers, SendBuffers]:
    """The batch buffers all sockets of this process share (one event loop reads them)."""
    return RecvBuffers(), SendBuffers()


def _udp_socket(local: Addr) -> socket.socket:
    """A UDP socket bound to ``local``, with large buffers."""
    sock = socket.socket(socket.AF_INET6 if ":" in local[0] else socket.AF_INET,
                         socket.SOCK_DGRAM)
    try:
        sock.bind(local)
        _big_buffers(sock)
    except OSError:
        sock.close()
        raise
    return sock


def _big_buffers(sock: socket.socket) -> None:
    """A datagram dropped by a full receive buffer before it is logged is lost for good:
    the forwarder's sockets get large buffers (forced past rmem_max: it runs as root)."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)


class MirrorSink(Protocol):
    """Where an active forwarder of a pair tells its standby what changed, in the order it
    happened (``nfvha.dataplane.mirror``): every call is cheap and never blocks; a
    payload is copied before the call returns."""

    def added(self, spec: ServiceSpec) -> None: ...
    def removed(self, name: str) -> None: ...
    def flow(self, name: str, client: Addr, port: int) -> None: ...
    def logged(self, name: str, seq: int, client: Addr,
               payloads: Sequence[bytes | memoryview]) -> None: ...
    def replies(self, name: str, client: Addr, counted: int, suppressed: int) -> None: ...
    def cut(self, name: str, position: int) -> None: ...
    def commit(self, name: str, position: int) -> None: ...
    def replayed(self, name: str, position: int) -> None: ...
    def reset(self, name: str, next_seq: int) -> None: ...


class _Pace:
    """Sends at ``pps`` on average: how many are due is worked out from the time elapsed,
    since an ``asyncio.sleep`` of a fraction of a millisecond sleeps longer than asked."""

    def __init__(self, pps: float) -> None:
        self.pps = pps
        self.start = time.monotonic()
        self.sent = 0

    def due(self) -> int:
        """Datagrams to send now; never a burst of more than a few batches, which the
        VNF's socket buffer could not take after a stall."""
        behind = int((time.monotonic() - self.start) * self.pps) + _BATCH - self.sent
        if behind > 4 * _BATCH:  # a stall: do not try to catch up all at once
            self.sent += behind - 4 * _BATCH
            behind = 4 * _BATCH
        return behind

    async def wait(self) -> None:
        await asyncio.sleep(_BATCH / self.pps)


class _PacedSend:
    """Drives a ``QueuePacer`` for one replay and the drain of what queued meanwhile:
    waits before each datagram until the pacer lets it out, with the readings of the
    VNF's queue it asks for under way meanwhile (two at most, staggered, so that an
    answer arrives every half round trip while datagrams are being sent)."""

    def __init__(self, pacer: QueuePacer, probe: QueueProbe | None) -> None:
        self.pacer = pacer
        self.probe = probe
        self._readings: dict[asyncio.Future[RxQueue], tuple[int, float]] = {}
        self._since_yield = 0

    def _start_reading(self, now: float, *, long_poll: bool = False) -> None:
        if self.probe is None or self.pacer.mode != "queue":
            return
        asked = self.pacer.request(now)
        below = self.pacer.below() if long_poll else None
        wait = self.pacer.cfg.wait if below is not None else 0.0
        self._readings[asyncio.ensure_future(self.probe.read(below, wait))] = asked

    def _collect(self) -> None:
        for task in [t for t in self._readings if t.done()]:
            asked = self._readings.pop(task)
            if task.cancelled():
                continue
            now = time.monotonic()
            exc = task.exception()
            if exc is None:
                self.pacer.update(asked, task.result(), now)
            elif isinstance(exc, ProbeError) and not exc.final:
                self.pacer.failed_reading(str(exc), now)
            else:
                self.pacer.fail(str(exc) or type(exc).__name__, now)

    async def admit(self, cost: int) -> None:
        """Return once one datagram charged ``cost`` bytes may be sent."""
        while True:
            if self._readings:
                self._collect()
            now = time.monotonic()
            if self.pacer.take(cost, now):
                if self.pacer.wants_reading(now, len(self._readings)):
                    self._start_reading(now)
                self._since_yield += 1
                if self._since_yield >= _BATCH:  # let the readings' answers in
                    self._since_yield = 0
                    await asyncio.sleep(0)
                return
            if not self._readings:  # no room and nothing coming: wait for room
                self._start_reading(now, long_poll=True)
            elif self.pacer.wants_reading(now, len(self._readings)):
                self._start_reading(now)  # staggered: its answer comes sooner
            # The floor and the fixed rate send a few at a time: not before 2 ms.
            timeout = min(max(self.pacer.next_due(now) - now, 0.002),
                          max(self.pacer.next_reading(len(self._readings)) - now, 0.0002))
            if self._readings:
                await asyncio.wait(set(self._readings), timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout)

    async def settle(self) -> None:
        """Take one more reading, so that a report counts the drops up to the end (not
        waiting long for it: delivery stays held meanwhile)."""
        if self._readings:
            await asyncio.wait(set(self._readings), timeout=0.25)
            self._collect()
        if self.probe is not None and self.pacer.mode == "queue" and not self._readings:
            self._start_reading(time.monotonic())
            await asyncio.wait(set(self._readings), timeout=0.25)
            self._collect()

    def close(self) -> None:
        """No more readings (the replay and its drain are over, or were cut short)."""
        probe, self.probe = self.probe, None
        for reading in self._readings:
            reading.cancel()
        self._readings.clear()
        if probe is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (the forwarder is being torn down)
                return
            task = loop.create_task(probe.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)


class LogFull(Exception):
    """The packet log reached its bound; the datagram was not delivered."""


class ReplayGap(Exception):
    """Replay was asked from a position the log no longer holds: the datagrams between it
    and ``oldest`` (the oldest position a replay can start from) were trimmed."""

    def __init__(self, name: str, position: int, oldest: int) -> None:
        self.position = position
        self.oldest = oldest
        super().__init__(f"service {name}: cannot replay from position {position}: the log "
                         f"was trimmed up to {oldest} (datagrams {position + 1}..{oldest} are "
                         f"gone); the oldest position it can replay from is {oldest}")


@dataclass(frozen=True)
class ServiceSpec:
    """One VNF behind the forwarder: at the head of a chain (``listen`` set), or after
    another service (``after``), whose outputs it then receives as its inputs."""

    name: str  # the VNF instance id
    listen: Addr | None  # service address and port, owned by the forwarder (chain head)
    target: Addr  # the VNF's address and port
    exactly_once: bool = False
    max_log_bytes: int = 64 * 2**20
    max_log_age: float = 60.0
    pace_pps: float = 50000.0  # queue drain rate towards a running VNF after a hold
    # Replay, and the drain of traffic queued meanwhile, go to a VNF that was just
    # restored and may not read for a while: its socket buffer (208 KiB by default) holds
    # only about 250 small datagrams. Any fixed rate was wrong for some VNF (at 5,000/s a
    # restored Python VNF on a loaded 2-core host still lost 20-150 datagrams of a
    # host-crash recovery in its buffer), so these are paced by its receive queue as its
    # agent reads it, falling back to ``pace.blind_pps`` when it cannot be read.
    pace: PaceConfig = field(default_factory=PaceConfig)
    after: str | None = None  # the service whose VNF's outputs feed this one
    # The address upstream sockets are bound to (None: any). A forwarder pair binds them
    # to its floating upstream address, so that a client flow keeps its source address
    # and port towards the VNF whichever forwarder is active.
    upstream_ip: str | None = None


@dataclass
class _Flow:
    """One client's upstream socket towards the VNF."""

    client: Addr
    transport: BatchSocket | None = None
    suppress: int = 0  # replies still to drop after a replay
    port: int = 0  # its upstream socket's port (0: none bound yet)


@dataclass
class Service:
    """One protected service: front socket, flows, log, hold queue, reply counters."""

    spec: ServiceSpec
    front: BatchSocket | None = None  # the chain head's: replies leave by it
    downstream: Service | None = None  # next VNF of the chain, fed with this one's outputs
    flows: dict[Addr, _Flow] = field(default_factory=dict)
    log: PacketLog = field(default_factory=PacketLog)
    next_seq: int = 1
    committed: int = 0  # log position covered by the last committed checkpoint
    held: bool = False
    _after_replay: bool = False  # the next queue drain goes to a just-restored VNF
    _paced: _PacedSend | None = None  # the last replay's pacing, kept for that drain
    _replaying: bool = False
    last_pacing: ReplayPacing | None = None  # how the last replay was paced
    hold_started: float = 0.0
    queue: collections.deque[tuple[Addr, bytes]] = field(default_factory=collections.deque)
    cuts: dict[int, dict[Addr, int]] = field(default_factory=dict)  # P -> replies since cut
    pending_replies: collections.deque[tuple[int, _Flow, bytes]] = field(
        default_factory=collections.deque)
    stats: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    _pump: asyncio.Future[None] | None = None
    _cut_pending: int | None = None  # position of a hold whose dump is under way
    # In a forwarder pair: the standby's mirror (on the active), and whether this
    # forwarder may forward now (its lease; a standby's services have no sockets at all).
    sink: MirrorSink | None = None
    # True: forward; False: drop (not the owner); None: hold on (the pair's active
    # renewing a lapsed lease: what was read is kept, the sockets are paused).
    gate: Callable[[], bool | None] | None = None
    # The position at which this forwarder took over from its pair's old active (None:
    # none since the last commit past it): a replay from before it may lack what the old
    # one delivered last without mirroring it.
    takeover_at: int | None = None
    # Nothing read or sent while set (``Forwarder.pause``): the pair's active renewing a
    # lapsed lease; the kernel's socket buffers keep what arrives meanwhile.
    paused: bool = False
    _paused_replies: list[tuple[_Flow, list[bytes]]] = field(default_factory=list)

    @property
    def log_bytes(self) -> int:
        """Payload bytes in the log."""
        return self.log.nbytes

    # -- data path ----------------------------------------------------------------------

    def on_client(self, client: Addr, data: bytes) -> None:
        """One datagram from a client (or, in a chain, from the previous VNF)."""
        self.stats["rx"] += 1
        gate = True if self.gate is None else self.gate()
        if gate is False:
            self.stats["dropped_not_owner"] += 1
            return
        if self.held or self.queue or gate is None:
            self.queue.append((client, data))
            return
        self._deliver(client, data)

    def on_front_batch(self, rx: RecvBuffers, n: int) -> None:
        """A batch of datagrams from clients, in ``rx``'s first ``n`` slots: each run of
        one client's datagrams in a row is logged and sent in one call, runs in arrival
        order, so that the VNF receives them in the log's order."""
        self.stats["rx"] += n
        gate = True if self.gate is None else self.gate()
        if gate is False:
            self.stats["dropped_not_owner"] += n
            return
        lens = rx.lengths(n)
        sources = rx.sources(n)
        if self.held or self.queue or gate is None:
            self.queue.extend(zip(sources, [bytes(rx.payload(i, ln))
                                            for i, ln in enumerate(lens)], strict=True))
            return
        if sources.count(sources[0]) == n:  # one client: one run
            self._deliver_run(sources[0], rx, 0, n, lens)
            return
        i = 0
        while i < n:
            client = sources[i]
            j = i + 1
            while j < n and sources[j] == client:
                j += 1
            self._deliver_run(client, rx, i, j, lens)
            i = j

    def _deliver_run(self, client: Addr, rx: RecvBuffers, i: int, j: int,
                     lens: list[int]) -> None:
        """Log and send datagrams ``i`` to ``j - 1`` of a batch, all from ``client``."""
        flow = self._upstream(client)
        if flow is None or flow.transport is None:
            self.stats["dropped_no_socket"] += j - i
            return
        run = lens[i:j]
        if self.log.nbytes + sum(run) > self.spec.max_log_bytes:
            for k in range(i, j):  # some may still fit: each is judged alone
                self._deliver(client, bytes(rx.payload(k, lens[k])))
            return
        size, view = rx.slot_size, rx.view
        payloads = [view[k * size:k * size + lens[k]] for k in range(i, j)]
        self.log.extend(self.next_seq, self.log.client_id(client), payloads,
                        time.monotonic())
        if self.sink is not None:
            self.sink.logged(self.spec.name, self.next_seq, client, payloads)
        self.next_seq += j - i
        transport = flow.transport
        if isinstance(transport, BatchSocket):
            base = rx.base
            transport.send_many(self.spec.target, [base + k * size for k in range(i, j)], run)
        else:
            for p in payloads:
                transport.sendto(bytes(p), self.spec.target)
        self.stats["delivered"] += j - i

    def _deliver(self, client: Addr, data: bytes) -> None:
        flow = self._upstream(client)
        if flow is None or flow.transport is None:
            self.stats["dropped_no_socket"] += 1
            return
        if self.log.nbytes + len(data) > self.spec.max_log_bytes:
            self.stats["dropped_log_full"] += 1  # the manager alarms well before this
            return
        self.log.append(self.next_seq, self.log.client_id(client), data, time.monotonic())
        if self.sink is not None:
            self.sink.logged(self.spec.name, self.next_seq, client, (data,))
        self.next_seq += 1
        flow.transport.sendto(data, self.spec.target)
        self.stats["delivered"] += 1

    def _upstream(self, client: Addr) -> _Flow | None:
        """The client's flow, its upstream socket opened if it has none yet (None if that
        failed: the datagram is dropped and counted, and the next one tries again)."""
        flow = self.flows.get(client)
        if flow is not None and flow.transport is not None:
            return flow
        if flow is None:
            flow = self.flows[client] = _Flow(client)
        target = self.spec.target
        local = self.spec.upstream_ip or ("::" if ":" in target[0] else "0.0.0.0")
        try:
            sock = _udp_socket((local, flow.port))
        except OSError as exc:
            log.warning("service %s: no upstream socket for client %s:%d: %s",
                        self.spec.name, *client, exc)
            return None
        if not flow.port:
            flow.port = sock.getsockname()[1]
            if self.sink is not None:
                self.sink.flow(self.spec.name, client, flow.port)
        rx, tx = _buffers()
        opened = flow

        def on_batch(rx: RecvBuffers, n: int) -> None:
            self.on_reply_batch(opened, rx, n)

        flow.transport = BatchSocket(sock, rx, tx, on_batch)
        return flow

    def on_reply_batch(self, flow: _Flow, rx: RecvBuffers, n: int) -> None:
        """Replies of the VNF to one flow, in ``rx``'s first ``n`` slots."""
        gate = True if self.gate is None else self.gate()
        if gate is False:
            self.stats["dropped_not_owner"] += n
            return
        if gate is None:  # kept for the resume, handled then as they arrived
            lens = rx.lengths(n)
            self._paused_replies.append((flow, [bytes(rx.payload(i, lens[i]))
                                                for i in range(n)]))
            return
        self.stats["replies"] += n
        skip = min(flow.suppress, n)
        if self.sink is not None:
            self.sink.replies(self.spec.name, flow.client, n - skip, skip)
        if skip:
            flow.suppress -= skip
            self.stats["replies_suppressed"] += skip
            if skip == n:
                return
        for counts in self.cuts.values():
            counts[flow.client] = counts.get(flow.client, 0) + n - skip
        lens = rx.lengths(n)
        if self.spec.exactly_once:
            at = self.next_seq - 1
            self.pending_replies.extend((at, flow, bytes(rx.payload(i, lens[i])))
                                        for i in range(skip, n))
            return
        front = self.front
        if self.downstream is None and isinstance(front, BatchSocket):
            front.send_many(flow.client,
                            [rx.base + i * rx.slot_size for i in range(skip, n)], lens[skip:])
            return
        for i in range(skip, n):
            self._send_reply(flow, bytes(rx.payload(i, lens[i])))

    def on_replies(self, flow: _Flow, datas: list[bytes]) -> None:
        """Replies of the VNF to one flow, as bytes (those kept while paused): counted,
        suppressed and relayed as ``on_reply_batch`` does."""
        n = len(datas)
        self.stats["replies"] += n
        skip = min(flow.suppress, n)
        if self.sink is not None:
            self.sink.replies(self.spec.name, flow.client, n - skip, skip)
        if skip:
            flow.suppress -= skip
            self.stats["replies_suppressed"] += skip
        for counts in self.cuts.values():
            counts[flow.client] = counts.get(flow.client, 0) + n - skip
        if self.spec.exactly_once:
            at = self.next_seq - 1
            self.pending_replies.extend((at, flow, d) for d in datas[skip:])
            return
        for d in datas[skip:]:
            self._send_reply(flow, d)

    def _send_reply(self, flow: _Flow, data: bytes) -> None:
        if self.downstream is not None:
            self.downstream.on_client(flow.client, data)  # the next VNF logs it as input
        elif self.front is not None:
            self.front.sendto(data, flow.client)

    def _drain_queue(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._pump_queue())

    async def _pump_queue(self) -> None:
        """Deliver queued datagrams in order, paced: a burst larger than the VNF's socket
        buffer would be dropped there, after it was logged as delivered. After a replay,
        the replay's pacer paces them too (the VNF is still just restored)."""
        pace = _Pace(self.spec.pace_pps)
        while self.queue and not self.held and not self.paused:
            paced = self._paced if self._after_replay else None
            if paced is not None:
                await paced.admit(datagram_cost(len(self.queue[0][1])))
                # Only this pump takes from the queue; a hold (or a new replay, which
                # comes after one) may have begun meanwhile: then it is kept.
                if self.queue and not self.held and not self.paused \
                        and self._paced is paced:
                    client, data = self.queue.popleft()
                    self._deliver(client, data)
                continue
            for _ in range(pace.due()):
                if not self.queue or self.held or self.paused:
                    break
                client, data = self.queue.popleft()
                self._deliver(client, data)
                pace.sent += 1
            if self.queue:
                await pace.wait()
        if not self.queue and not self.held and not self.paused and not self._replaying:
            self._after_replay = False
            self._end_pacing()

    def _end_pacing(self) -> None:
        """The replay and the drain after it are done: count how they were paced."""
        paced, self._paced = self._paced, None
        if paced is None:
            return
        paced.close()
        r = paced.pacer.report(time.monotonic())
        self.stats["paced_by_queue" if r.paced_by == "queue" else "paced_by_rate"] += 1
        self.stats["paced_reads"] += r.reads
        self.stats["paced_forced"] += r.forced
        self.stats["paced_stalled_s"] += r.stalled_ms / 1000
        self.stats["paced_drops"] += r.drops or 0

    # -- control --------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Sequence number of the last datagram delivered to the VNF."""
        return self.next_seq - 1

    def hold(self) -> int:
        """Stop delivery (new datagrams queue); the returned position is the cut."""
        self.held = True
        self.hold_started = time.monotonic()
        self._cut_pending = self.position
        return self.position

    def release(self) -> float:
        """Resume delivery; returns how long delivery was held, in seconds."""
        held_for = time.monotonic() - self.hold_started if self.held else 0.0
        self.held = False
        if self._cut_pending is not None:
            # Replies are counted from here: the dump is done and, with inputs held, the
            # VNF sent nothing new since it froze. What arrived between hold and now was
            # sent before the freeze, and a restored copy will not send it again.
            self.cuts[self._cut_pending] = {}
            if self.sink is not None:
                self.sink.cut(self.spec.name, self._cut_pending)
            self._cut_pending = None
        if held_for:
            self.stats["hold_total_s"] += held_for
            self.stats["holds"] += 1
            self.stats["hold_max_s"] = max(self.stats["hold_max_s"], held_for)
        self._drain_queue()
        return held_for

    def commit(self, position: int) -> int:
        """A checkpoint at ``position`` committed: trim the log up to it."""
        trimmed = self.apply_commit(position)
        if self.sink is not None:
            self.sink.commit(self.spec.name, position)
        while self.pending_replies and self.pending_replies[0][0] <= position:
            _, flow, data = self.pending_replies.popleft()
            self._send_reply(flow, data)
        return trimmed

    def apply_commit(self, position: int) -> int:
        """The log and reply counts' part of a commit (a standby applies it alone)."""
        if self.takeover_at is not None and position >= self.takeover_at:
            self.takeover_at = None  # a checkpoint taken through this forwarder
        trimmed = self.log.trim(position)
        self.committed = max(self.committed, position)
        for p in [p for p in self.cuts if p < position]:
            del self.cuts[p]
        return trimmed

    def apply_replay(self, position: int) -> None:
        """The reply counts' part of a replay from ``position``: what the restored copy
        sends again is suppressed per flow (a standby applies it alone)."""
        counts = self.cuts.get(position, {})
        for flow in self.flows.values():
            flow.suppress = 0 if self.spec.exactly_once else counts.get(flow.client, 0)
        # The cut keeps its counts: the restored copy's replies suppressed now are not
        # counted again and its new ones are added, so a second restore from the same
        # checkpoint suppresses every reply ever relayed since that cut, not only those
        # relayed since this replay (which left duplicates downstream).
        self.cuts = {position: dict(counts)}
        self._cut_pending = None

    def apply_replies(self, client: Addr, counted: int, suppressed: int) -> None:
        """Replies relayed (``counted``) and dropped (``suppressed``) to one flow, as the
        active counted them (a standby applies them)."""
        flow = self.flows.get(client)
        if flow is not None and suppressed:
            flow.suppress = max(flow.suppress - suppressed, 0)
        if counted:
            for counts in self.cuts.values():
                counts[client] = counts.get(client, 0) + counted

    async def replay(self, position: int, probe: QueueProbe | None = None) -> int:
        """Deliver the logged datagrams after ``position`` in order, then queued traffic.

        Paced by the VNF's receive queue, read by ``probe`` (``nfvha.dataplane.pacing``),
        or at the fixed ``spec.pace.blind_pps`` without one; how is in ``last_pacing``.
        Replies the old copy already relayed since that cut are dropped per flow. Refused
        (``ReplayGap``, nothing changed, delivery still held) if the log was trimmed past
        ``position``: a partial replay would lose datagrams without anyone knowing.
        """
        if position < self.committed:
            raise ReplayGap(self.spec.name, position, self.committed)
        self.apply_replay(position)
        if self.sink is not None:
            self.sink.replayed(self.spec.name, position)
        # Replies held for exactly-once that the failed copy produced are regenerated.
        self.pending_replies.clear()
        n = 0
        self._after_replay = True
        entries = self.log.after(position)
        self._end_pacing()
        pacer = QueuePacer(time.monotonic(), len(entries), self.spec.pace,
                           queue=probe is not None,
                           reason=None if probe is not None
                           else "no agent was named to read the VNF's queue from")
        paced = self._paced = _PacedSend(pacer, probe)
        self._replaying = True
        try:
            for client, payload in entries:
                target = self.flows.get(client)
                if target is not None and target.transport is not None:
                    await paced.admit(datagram_cost(len(payload)))
                    while self.paused and self._paced is paced:
                        await asyncio.sleep(0.005)  # its lease renewing: send nothing
                    if self._paced is not paced:
                        break  # reset or removed meanwhile: the log is no longer wanted
                    target.transport.sendto(payload, self.spec.target)
                    n += 1
            await paced.settle()
        finally:
            self._replaying = False
        self.last_pacing = pacer.report(time.monotonic())
        pacer.restart_floor(time.monotonic())
        self.stats["replayed"] += n
        return n

    def reset(self) -> None:
        """The VNF restarted without state: the log cannot help it; start over."""
        self._end_pacing()
        self.apply_reset(self.next_seq)
        self.pending_replies.clear()
        if self.sink is not None:
            self.sink.reset(self.spec.name, self.next_seq)

    def apply_reset(self, next_seq: int) -> None:
        """The log and reply counts' part of a reset (a standby applies it alone)."""
        self.next_seq = next_seq
        self.log.clear(next_seq)
        self.cuts.clear()
        self.committed = self.position
        for flow in self.flows.values():
            flow.suppress = 0

    def status(self) -> ServiceStatus:
        oldest = self.log.oldest_at()
        return ServiceStatus(
            name=self.spec.name, listen=self.spec.listen, after=self.spec.after,
            target=self.spec.target, exactly_once=self.spec.exactly_once,
            position=self.position, committed=self.committed, held=self.held,
            log_packets=len(self.log), log_bytes=self.log_bytes,
            log_age_s=0.0 if oldest is None else time.monotonic() - oldest,
            log_fill=self.log_bytes / self.spec.max_log_bytes, log_memory=self.log.memory(),
            queued=len(self.queue), flows=len(self.flows),
            pending_replies=len(self.pending_replies), stats=dict(self.stats))


class Forwarder:
    """All services of one forwarder process.

    Alone, it forwards from the start. In a pair (``nfvha.dataplane.pair``) it is
    ``passive`` while standby: its services keep the state the active mirrors to it
    (flows and their upstream ports, log, reply counts) and open no socket, until
    ``activate`` opens them all, each flow's upstream socket on its old port; ``gate`` then
    says whether it may forward (its lease), and ``sink`` takes what it must mirror."""

    def __init__(self, *, passive: bool = False, upstream_ip: str | None = None,
                 gate: Callable[[], bool | None] | None = None) -> None:
        self.services: dict[str, Service] = {}
        self.passive = passive
        self.upstream_ip = upstream_ip
        self.gate = gate
        self.sink: MirrorSink | None = None

    async def add(self, spec: ServiceSpec) -> Service:
        if self.upstream_ip is not None and spec.upstream_ip != self.upstream_ip:
            spec = dataclasses.replace(spec, upstream_ip=self.upstream_ip)
        old = self.services.get(spec.name)
        if old is not None:
            if old.spec.listen == spec.listen:
                old.spec = spec  # retarget (same service address)
                if self.sink is not None:
                    self.sink.added(spec)
                return old
            await self.remove(spec.name)
        svc = Service(spec, gate=self.gate)
        if spec.after is not None:
            prev = self.get(spec.after)
            prev.downstream = svc
            svc.front = prev.front
            self._propagate_front(prev)
        elif spec.listen is None:
            raise ValueError(f"service {spec.name} needs a listen address or a service to "
                             "follow")
        elif not self.passive:
            self._open_front(svc)
        self.services[spec.name] = svc
        svc.sink = self.sink
        if self.sink is not None:
            self.sink.added(spec)
        source = f"after {spec.after}" if spec.after else f"{spec.listen}"
        log.info("service %s: %s -> %s:%d%s%s", spec.name, source, *spec.target,
                 " (exactly-once)" if spec.exactly_once else "",
                 " (standby: no socket until a takeover)" if self.passive else "")
        return svc

    @staticmethod
    def _open_front(svc: Service) -> None:
        assert svc.spec.listen is not None
        rx, tx = _buffers()
        svc.front = BatchSocket(_udp_socket(svc.spec.listen), rx, tx, svc.on_front_batch)

    def activate(self) -> int:
        """A standby takes over: every service's front socket and every flow's upstream
        socket (on the port the flow had, so the VNF sees the same source) are opened.
        Returns how many flows were opened; a flow whose port cannot be had is counted in
        its service's ``stats`` and opened anew on its next datagram."""
        self.passive = False
        flows = 0
        for svc in self.services.values():
            if svc.spec.after is None:
                self._open_front(svc)
                self._propagate_front(svc)
        for svc in self.services.values():
            svc.takeover_at = svc.position
            for client, flow in svc.flows.items():
                if flow.transport is None and svc._upstream(client) is not None:
                    flows += 1
                elif flow.transport is None:
                    svc.stats["flows_not_reopened"] += 1
        return flows

    def _sockets(self) -> list[BatchSocket]:
        socks = []
        for svc in self.services.values():
            if svc.front is not None and svc.spec.after is None:
                socks.append(svc.front)
            socks.extend(f.transport for f in svc.flows.values() if f.transport is not None)
        return socks

    @property
    def paused(self) -> bool:
        return any(svc.paused for svc in self.services.values())

    def pause(self) -> None:
        """Stop reading and sending, keeping everything: what arrives waits in the
        kernel's socket buffers (8 MiB each) until ``resume``. A pair's active does so
        while it renews a lease that lapsed (its event loop stalled, its acknowledgements
        late), so a stall costs delay, not datagrams."""
        for svc in self.services.values():
            svc.paused = True
        for sock in self._sockets():
            sock.pause_reading()

    def resume(self) -> None:
        for svc in self.services.values():
            svc.paused = False
        for svc in self.services.values():
            kept, svc._paused_replies = svc._paused_replies, []
            for flow, datas in kept:
                svc.on_replies(flow, datas)
        for sock in self._sockets():
            sock.resume_reading()
        for svc in self.services.values():
            if svc.queue and not svc.held:
                svc._drain_queue()

    def deactivate(self) -> None:
        """Stop forwarding (a demotion): every socket closed, the state kept, so that the
        forwarder can be activated again if no other took over meanwhile."""
        self.passive = True
        for svc in self.services.values():
            svc._end_pacing()
            svc.held = svc.paused = False
            svc._paused_replies.clear()
            svc.queue.clear()
            if svc.front is not None and svc.spec.after is None:
                svc.front.close()
            svc.front = None
            for flow in svc.flows.values():
                if flow.transport is not None:
                    flow.transport.close()
                    flow.transport = None

    def set_sink(self, sink: MirrorSink | None) -> None:
        self.sink = sink
        for svc in self.services.values():
            svc.sink = sink

    @staticmethod
    def _propagate_front(head: Service) -> None:
        svc: Service | None = head
        while svc is not None:
            svc.front = head.front
            svc = svc.downstream

    async def remove(self, name: str) -> None:
        svc = self.services.pop(name, None)
        if svc is None:
            return
        for other in self.services.values():
            if other.downstream is svc:
                other.downstream = svc.downstream
        svc._end_pacing()
        if svc.front is not None and svc.spec.after is None:
            svc.front.close()
        for flow in svc.flows.values():
            if flow.transport is not None:
                flow.transport.close()
        if self.sink is not None:
            self.sink.removed(name)

    def get(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"no service {name!r} on this forwarder "
                           f"(services: {', '.join(self.services) or 'none'})") from None

    async def close(self) -> None:
        sink, self.sink = self.sink, None  # what closing removes is not the standby's
        for svc in self.services.values():
            svc.sink = None
        for name in list(self.services):
            with contextlib.suppress(Exception):
                await self.remove(name)
        self.sink = sink
