"""The manager: VNF lifecycle (SOL003 shapes), fault management, checkpoints, recovery.

One loop decides (``_tick``): it looks at hosts and VNFs, and starts long actions —
checkpoints, recoveries, host confirmations — as tasks beside it, one per VNF at a time.
Every decision is logged with its reason and stored with its operation occurrence.
All durable state is in the ``StateStore``; a restarted manager reloads it and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.dataplane.client import ForwarderClient, ForwarderError, ReplayGapError
from nfvha.descriptor import HaPolicy, HealthProbe, VnfDescriptor, parse_descriptor
from nfvha.errors import (
    AddressConflict,
    CheckpointCorrupt,
    CriuError,
    DescriptorError,
    InstanceNotFound,
    InstanceStateError,
    InstanceStopped,
    NfvhaError,
)
from nfvha.ha.fault import FaultTimings, HeartbeatDetector, HostState, probe_vnf
from nfvha.ha.fencing import FenceDriver, FenceResult
from nfvha.ha.lifecycle import IllegalTransition, VnfState, check_transition
from nfvha.ha.liveness import (
    HostKeys,
    decode_host,
    enable_timestamps,
    encode,
    liveness_key,
    recv_stamped,
)
from nfvha.ha.recovery import RecoveryContext, RecoveryDecision, decide, strategy_chain
from nfvha.logs import decision as log_decision
from nfvha.nfvo.placement import HostView, PlacementError, place
from nfvha.store.base import Op, StateStore, StoreError
from nfvha.tls import TlsConfig
from nfvha.vnfm.agent_client import AgentClient, AgentUnreachable
from nfvha.vnfm.events import EventBus, EventKind
from nfvha.vnfm.metrics import ManagerMetrics
from nfvha.vnfm.notify import Notifier
from nfvha.vnfm.secretbox import SecretBox
from nfvha.web import DEFAULT_MAX_BODY
from nfvha.wire import LIVE_STATES, CheckpointMeta, InstanceState, ServiceStatus

__all__ = ["Manager", "ManagerConfig", "VnfState"]

log = logging.getLogger("nfvha.manager")

_DUMPS_PER_HOST = 1
_RESTORES_PER_HOST = 2
_RETRY_MAX_S = 30.0  # longest wait between tries to recover a FAILED VNF
_BEHIND_AFTER = 3  # checkpoints in a row slower than the interval before the alarm
_CRASH_WINDOW_S = 10.0  # failing again this soon after a recovery is a crash loop
_CRASH_BACKOFF_MAX_S = 300.0  # longest wait between recoveries of a crash-looping VNF


def _now_iso(t: float | None = None) -> str:
    t = time.time() if t is None else t  # once: two reads could straddle a second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


@dataclass(frozen=True)
class ManagerConfig:
    token: str
    timings: FaultTimings = field(default_factory=FaultTimings)
    tick: float = 0.02
    base_url: str = ""
    forwarder_url: str | None = None
    #: The cluster's liveness secret: each host's heartbeat key derives from it (None:
    #: from the token, as clusters without a CA do).
    liveness_secret: bytes | None = None
    #: Mutual TLS towards agents and the forwarder (None: plain HTTP and the token).
    tls: TlsConfig | None = None
    #: UDP address the lease guards' heartbeats arrive at (None: HTTP heartbeats only).
    liveness_listen: tuple[str, int] | None = None
    #: Active fencing (STONITH): a driver per host id; a host without one is waited out.
    fencers: Mapping[str, FenceDriver] = field(default_factory=dict)
    #: Request bodies larger than this are refused (413) before they are read.
    max_body: int = DEFAULT_MAX_BODY
    #: The data network (CIDR) every VNF address must lie in; None: any.
    vnf_network: str | None = None
    #: Data network addresses nfvha's own parts hold, with who holds them: with the
    #: daemons on a separate management network, their URLs no longer name them.
    reserved_addresses: Mapping[str, str] = field(default_factory=dict)
    #: Finished operation occurrences kept per VNF, and for how long at most (s).
    ops_per_vnf: int = 100
    ops_max_age: float = 30 * 86400.0
    #: Operator and viewer credentials (`nfvha.vnfm.auth`); None: the cluster token is
    #: every role, as before operator credentials existed.
    users_file: Path | None = None
    #: Key that seals subscription passwords in the store (created 0600 if missing);
    #: None: a key held in memory only (tests).
    secret_key_file: Path | None = None
    #: Accept BASIC credentials for plain-http callback URIs (sent in clear text).
    allow_insecure_callbacks: bool = False


@dataclass
class GuardReport:
    """The last heartbeat of a host's lease guard, as received."""

    addr: tuple[str, int]
    msg: dict[str, Any]
    at: float  # monotonic receive time

    def heard(self, host_id: str) -> float | None:
        """Monotonic time at which this guard last heard ``host_id``, if it said."""
        ms = self.msg.get("p", {}).get(host_id) if isinstance(self.msg.get("p"), dict) \
            else None
        return None if not isinstance(ms, int | float) else self.at - ms / 1000.0


@dataclass
class _Runtime:
    """In-memory, per-VNF bookkeeping the loop needs between ticks (never authoritative)."""

    busy: asyncio.Task[None] | None = None
    next_checkpoint: float = 0.0
    probe_failures: int = 0
    probing: bool = False
    failure: tuple[str, float, str] | None = None  # (type, detected wall time, detail)
    failed_at: float | None = None  # best estimate of when the failure happened (wall time)
    probe_failing_since: float | None = None  # wall time of the first unanswered probe
    retries: int = 0  # recoveries of a FAILED VNF tried since it last ran
    retry_at: float | None = None  # monotonic time of the next try, while FAILED
    retry_failure: str = "process-exit"  # the failure type whose strategies are retried
    last_hold_ms: float = 0.0
    checkpointing: bool = False  # a periodic checkpoint task, from queueing to replication
    dumping: bool = False  # the part of it where the VNF is held and frozen
    thawed_at: float = 0.0  # monotonic end of the last dump
    recovered_at: float | None = None  # monotonic end of the last recovery
    crash_streak: int = 0  # failures in a row, each soon after the recovery before it
    hold_until: float | None = None  # monotonic: a crash-looping VNF waits until then
    injected_at: float | None = None  # monotonic: a fault injected on purpose (inject API)
    slow_streak: int = 0  # checkpoints in a row slower (> 0) or not (< 0) than the interval


class Manager:
    def __init__(self, store: StateStore, cfg: ManagerConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.detector = HeartbeatDetector(cfg.timings)
        # With TLS, agents and the forwarder know the manager by its certificate and
        # never see the operators' token (a host that holds it could act as an operator).
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200),
                                      verify=cfg.tls.client_context() if cfg.tls else True)
        self._daemon_token = "" if cfg.tls else cfg.token
        self.host_status: dict[str, dict[str, Any]] = {}  # last heartbeat body per host
        self.runtime: dict[str, _Runtime] = {}
        self._confirming: set[str] = set()
        self._reconciled = False
        self._to_reconcile: set[str] = set()  # VNFs found in the store at start-up
        self._dump_slots: dict[str, asyncio.Semaphore] = {}
        self._restore_slots: dict[str, asyncio.Semaphore] = {}
        self._vnfd_cache: dict[tuple[Any, ...], VnfDescriptor] = {}
        self.fence_deadline: dict[str, float] = {}  # host -> monotonic time it is fenced by
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = time.monotonic()
        self.forwarder = (ForwarderClient(cfg.forwarder_url, self._daemon_token, self.http)
                          if cfg.forwarder_url else None)
        self.events = EventBus()
        self.notifier = Notifier(  # SOL003
            store, self.events, base_url=cfg.base_url,
            box=SecretBox.from_file(cfg.secret_key_file) if cfg.secret_key_file else None,
            allow_insecure_callbacks=cfg.allow_insecure_callbacks)
        self.metrics = ManagerMetrics(self)
        self.heartbeats_missed: dict[str, int] = {}  # host -> heartbeats not received
        # Each guard's datagrams are checked against its own host's key.
        self.liveness_keys = HostKeys(cfg.liveness_secret or liveness_key(cfg.token))
        self.liveness_rejected = 0  # datagrams dropped: not authentic, or malformed
        self.guards: dict[str, GuardReport] = {}  # host -> its guard's last heartbeat
        self._guard_seq: dict[str, tuple[float, int]] = {}  # host -> (incarnation, seq)
        self._guard_fence_seen: dict[str, int] = {}  # host -> the last fence it reported
        self._agents_overdue: set[str] = set()  # hosts whose agent-unresponsive alarm is up
        # host -> monotonic time from which its VNFs are known stopped (a confirmed
        # STONITH, or its guard reporting a fence); moves need not wait for its lease.
        self.fenced_hosts: dict[str, float] = {}
        self._fencing: dict[str, asyncio.Task[FenceResult | None]] = {}
        self._stale_deletes: dict[tuple[str, str], float] = {}
        self._liveness: socket.socket | None = None
        self._stonith_off: set[str] = set()  # hosts a fence driver powered off
        self._due = 0.0  # when the loop must next look at the VNFs (see _tick)
        self._down_at: dict[str, float] = {}  # host -> monotonic time it was declared DOWN
        self._host_known: dict[str, tuple[str, str | None]] = {}  # host -> (state, url) stored
        self._peers_cache: tuple[float, list[list[Any]], str] = (-1.0, [], "")
        self.forwarder_logs: dict[str, ServiceStatus] = {}  # last forwarder log stats

    # -- start / stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Reload state: every known host gets a full timeout, interrupted work resumes."""
        self.started = time.monotonic()
        self.notifier.start()  # first: subscribers hear of ops failed by the restart
        for rec in self.store.list("host"):
            self.detector.grace(rec.id)
            if rec.data.get("state") == HostState.DOWN:
                self.detector.state[rec.id] = HostState.DOWN
        for rec in self.store.list("vnf"):
            self._to_reconcile.add(rec.id)
            rt = self._rt(rec.id)
            rt.next_checkpoint = time.monotonic() + self._policy(rec.data).checkpoint_interval
            if rec.data["haState"] == VnfState.FAILED:
                rt.retry_at = time.monotonic()  # after the start-up grace, like the others
        for rec in self.store.list("alarm"):  # raised by an earlier run: cleared by this one
            key = str(rec.data.get("key", ""))
            if key.startswith("agent:") and rec.data.get("alarmClearedTime") is None:
                self._agents_overdue.add(key.removeprefix("agent:"))
        for rec in self.store.list("op"):
            if rec.data["operationState"] in ("STARTING", "PROCESSING"):
                self._op_update(rec.id, operationState="FAILED_TEMP",
                                error=_problem(500, "manager restarted during the operation; "
                                                    "it is retried automatically"))
        if self.cfg.liveness_listen is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            enable_timestamps(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(self.cfg.liveness_listen)
            sock.setblocking(False)
            self._liveness = sock
        self._loop_task = asyncio.create_task(self._loop())
        if self.forwarder is not None:
            self._spawn(self._watch_forwarder())
        log.info("manager started with %d VNF(s), %d host(s)", len(self.store.list("vnf")),
                 len(self.store.list("host")))

    async def close(self) -> None:
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None
        if self._loop_task:
            self._loop_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        pending: list[asyncio.Task[Any]] = list(self._tasks)
        if self._loop_task is not None:
            pending.append(self._loop_task)
        for t in pending:
            with contextlib.suppress(BaseException):
                await t
        await self.notifier.close()
        await self.http.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        self._wake.set()  # what it finished may let the loop act (a VNF no longer busy)

    def _spawn_op(self, op_id: str, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """A long action with an operation occurrence: however the task ends (done,
        cancelled by a newer request or by the manager stopping, or failed on an error
        nobody caught), its occurrence ends in a final state. Done from the task's
        callback, not inside it: a task cancelled before its first step never runs a
        line of its coroutine, and left its occurrence STARTING."""
        t = self._spawn(coro)
        t.add_done_callback(lambda task: self._op_task_done(op_id, task))
        return t

    @staticmethod
    def _cancel(task: asyncio.Task[Any] | None, by: str) -> None:
        """Cancel a VNF's running action, saying what cancelled it (``by`` ends up in its
        operation occurrence's error)."""
        if task is not None and not task.done():
            task.cancel(msg=by)

    def _op_task_done(self, op_id: str, t: asyncio.Task[Any]) -> None:
        state, detail = "FAILED", None
        if t.cancelled():
            try:
                t.result()
            except asyncio.CancelledError as exc:
                detail = str(exc.args[0]) if exc.args and exc.args[0] else None
            if detail is None:  # only close() cancels without saying why
                state, detail = "FAILED_TEMP", "manager stopped during the operation"
        elif t.exception() is not None:
            exc2 = t.exception()
            log.error("operation %s failed on an unexpected error", op_id, exc_info=exc2)
            detail = f"internal error: {type(exc2).__name__}: {exc2}"
        if detail is None:
            return
        try:
            rec = self.store.find("op", op_id)
            if rec is None or rec.data["operationState"] not in ("STARTING", "PROCESSING"):
                return  # it ended itself
            log.info("operation %s (%s of %s) ends %s: %s", op_id, rec.data["operation"],
                     rec.data["vnfInstanceId"], state, detail)
            self._op_update(op_id, operationState=state, error=_problem(
                409 if t.cancelled() else 500, detail))
        except Exception:  # the store closed under a stopping manager: start() ends it
            log.exception("could not end operation %s", op_id)

    def _rt(self, vnf_id: str) -> _Runtime:
        return self.runtime.setdefault(vnf_id, _Runtime())

    def _update_vnf(self, vnf_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
                    ) -> None:
        """Every write of a VNF record goes through here, so that observers see it and
        every state change is checked against the transition table (``ha/lifecycle.py``)
        against the state it actually leaves (the check runs inside the store's
        compare-and-set, again on each retry). An illegal one raises and writes nothing."""

        def checked(d: dict[str, Any]) -> dict[str, Any]:
            new = change(d)
            check_transition(vnf_id, d.get("haState"), new.get("haState"))
            return new

        try:
            rec = self.store.update("vnf", vnf_id, checked)
        except IllegalTransition as exc:
            log.error("%s; refused", exc)
            raise
        self.events.publish(EventKind.VNF, rec.data)

    def _host_state(self, host_id: str, state: str, previous: str | None,
                    reason: str) -> None:
        self.events.publish(EventKind.HOST, {"id": host_id, "state": state,
                                             "previous": previous, "reason": reason})

    # -- hosts ----------------------------------------------------------------------------

    def _host_heard(self, host_id: str, url: str | None, *, at: float | None = None) -> None:
        """Any sign of life from a host (a guard's datagram, an agent's report). Twenty
        a second per host: the store is read only when something may have changed."""
        if self.detector.state.get(host_id) == HostState.DOWN and at is not None \
                and at <= self._down_at.get(host_id, -1.0):
            return  # sent before it was declared lost (read late): no sign it is back
        if host_id in self.detector.state:
            # Heartbeats that should have come in the silence that just ended.
            gap = self.detector.silence(host_id, at) / self.cfg.timings.heartbeat_interval
            if gap >= 2:
                self.heartbeats_missed[host_id] = (self.heartbeats_missed.get(host_id, 0)
                                                   + int(gap) - 1)
        known = self._host_known.get(host_id)
        if known is not None and known[0] == HostState.UP and (not url or url == known[1]) \
                and self.detector.state.get(host_id) == HostState.UP:
            self.detector.heard(host_id, at)
            return
        before = self.detector.heard(host_id, at)
        rec = self.store.find("host", host_id)
        if rec is None or rec.data.get("state") != HostState.UP or before != HostState.UP \
                or (url and rec.data.get("url") != url):
            if rec is not None and rec.data.get("state") == HostState.DOWN:
                log.info("host %s is back; its stale VNF copies are removed", host_id)
                self.fence_deadline.pop(host_id, None)
                self.fenced_hosts.pop(host_id, None)
                self._stonith_off.discard(host_id)
                self._spawn(self._cleanup_rejoined(host_id))
            url = url or (rec.data.get("url") if rec else None)
            self.store.put("host", host_id, {
                "id": host_id, "url": url,
                "state": HostState.UP,
                "registeredAt": (rec.data.get("registeredAt") if rec else None) or _now_iso(),
                "stateChangedAt": _now_iso()})
            previous = rec.data.get("state") if rec is not None else None
            if before != HostState.UP and previous == HostState.UP:
                previous = str(before)
            if previous != HostState.UP:
                self._host_state(host_id, HostState.UP, previous,
                                 "registered" if rec is None else "heartbeat received")
        self._host_known[host_id] = (HostState.UP, url or (rec.data.get("url") if rec else None))

    def heartbeat(self, host_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """An agent's status report (HTTP): what runs there. Liveness is the guard's
        (``liveness``), but a report is a sign of life too."""
        # The guards' datagrams that arrived before this report count first: otherwise
        # the silence since the last one read looks like a gap in the host's heartbeats.
        self.drain_liveness()
        held = body.get("lease")
        if isinstance(held, int | float) and not isinstance(held, bool):
            self.detector.held(host_id, float(held))
        need_full = False
        if body.get("full", True):
            self.host_status[host_id] = body
            self._remove_stale_copies(host_id, body)
        else:
            # "Alive, nothing changed": the last full status still holds, unless this
            # manager has none or it came from an earlier run of the agent.
            prev = self.host_status.get(host_id)
            if prev is None or prev.get("started_at") != body.get("started_at"):
                need_full = True
            else:
                prev["time"] = body.get("time")
        self._host_heard(host_id, body.get("url"))
        # An exit the agent's event did not deliver is still seen here.
        for inst in body.get("instances", []):
            if inst["state"] == InstanceState.EXITED:
                self._instance_exited(host_id, inst)
        lease = self.detector.lease(host_id)
        self.detector.granted(host_id, lease)
        return {"peers": [], "need_full": need_full, "lease": lease}

    def drain_liveness(self) -> None:
        """The guards' heartbeats, read once per loop tick rather than each as it arrives:
        a wake-up per datagram (20 a second per host) is most of what idling costs. Each
        counts at its kernel arrival time, so reading late delays detection by nothing."""
        sock = self._liveness
        if sock is None:
            return
        for _ in range(4096):
            try:
                got = recv_stamped(sock)
            except OSError as exc:
                log.warning("liveness socket: %s", exc)
                return
            if got is None:
                return
            data, addr, at = got
            msg = decode_host(self.liveness_keys, data)
            if msg is None or msg.get("k") != "hb":
                self.liveness_rejected += 1
                continue
            try:
                answer = self.liveness(msg["h"], msg, addr, at=at)
            except Exception:
                log.exception("liveness datagram from %s", addr)
                continue
            if answer is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(encode(self.liveness_keys.get(msg["h"]), answer), addr)

    def liveness(self, host_id: str, msg: dict[str, Any], addr: tuple[str, int],
                 *, at: float | None = None) -> dict[str, Any] | None:
        """A lease guard's heartbeat (UDP): the host is alive; the answer grants its lease
        and, when the guard's list is out of date, names the peers it should ping."""
        inc, seq = msg.get("i"), msg.get("s")
        if not isinstance(inc, int | float) or not isinstance(seq, int):
            self.liveness_rejected += 1
            return None
        last = self._guard_seq.get(host_id)
        if last is not None and (inc < last[0] or (inc == last[0] and seq <= last[1])):
            return None  # late or replayed: only the newest counts
        self._guard_seq[host_id] = (float(inc), seq)
        answer: dict[str, Any] = {"k": "hb-ack", "s": seq}
        if host_id not in self._host_known and self.store.find("host", host_id) is None:
            # Registered by its agent's first report (which brings the agent's URL).
            answer["l"] = self.cfg.timings.fencing_timeout
            return answer
        prev = self.guards.get(host_id)
        if prev is None or prev.addr != addr:
            self._peers_cache = (-1.0, [], "")  # a new guard, or one that moved
        at = time.monotonic() if at is None else at
        if prev is not None:
            self.detector.came_back(host_id, at - prev.at, at)
        self.guards[host_id] = GuardReport(addr, msg, at)
        held = msg.get("l")
        if isinstance(held, int | float) and not isinstance(held, bool):
            self.detector.held(host_id, float(held))
        self._host_heard(host_id, None, at=at)
        fence = msg.get("f")
        if isinstance(fence, int) and fence > 0:
            if self._guard_fence_seen.get(host_id) != fence:
                self._guard_fence_seen[host_id] = fence
                self._guard_fenced(host_id, str(msg.get("fr") or "fenced"), msg.get("fa"))
        elif host_id in self.fenced_hosts and self.detector.state.get(host_id) == HostState.UP \
                and host_id not in self._stonith_off:
            del self.fenced_hosts[host_id]  # the guard lifted its fence: the agent is back
        self._agent_alarm(host_id, msg.get("a"), msg.get("g"))
        status = self.host_status.get(host_id)
        if msg.get("ap") and (status is None or status.get("agent_pid") != msg.get("ap")):
            # What runs there is unknown to this manager, or was told by an earlier run of
            # the agent: the guard passes the request on through the lease file.
            answer["nf"] = 1
        peers, version = self._guard_peers()
        if msg.get("pv") != version:
            answer["peers"], answer["pv"] = peers, version
        lease = self.detector.lease(host_id)
        self.detector.granted(host_id, lease)
        answer["l"] = lease
        return answer

    def guard_view(self, host_id: str) -> dict[str, Any] | None:
        """What the host's guard said last: the agent's remaining grace, its fence."""
        r = self.guards.get(host_id)
        if r is None:
            return None
        return {"lastHeardAgoMs": round((time.monotonic() - r.at) * 1000),
                "agentGraceLeftS": r.msg.get("a"), "fence": r.msg.get("f") or 0,
                "fenceReason": r.msg.get("fr") or None,
                "watchdogS": r.msg.get("w") or 0}

    def _guard_peers(self) -> tuple[list[list[Any]], str]:
        """The guards' peer list and its version; recomputed at most twice a second."""
        now = time.monotonic()
        if now - self._peers_cache[0] < 0.5:
            return self._peers_cache[1], self._peers_cache[2]
        peers = sorted([h, r.addr[0], r.addr[1]] for h, r in self.guards.items()
                       if self.detector.state.get(h) != HostState.DOWN)
        version = hashlib.sha1(repr(peers).encode()).hexdigest()[:12]
        self._peers_cache = (now, peers, version)
        return peers, version

    def _agent_alarm(self, host_id: str, left: Any, grace: Any) -> None:
        """The guard says how long its agent may still be silent: an alarm while the agent
        is overdue (dead, stopped or starved), before the guard has to fence."""
        if not isinstance(left, int | float) or not isinstance(grace, int | float):
            return
        silent = float(grace) - float(left)
        # Only a change of state touches the store: this runs for every heartbeat.
        if silent > max(1.0, float(grace) / 3) and host_id not in self._agents_overdue:
            self._agents_overdue.add(host_id)
            self._raise_alarm(f"agent:{host_id}", None, "PROCESSING_ERROR_ALARM", "MAJOR",
                              "agent-unresponsive", f"the agent of host {host_id} has not fed "
                              f"its lease guard for {silent:.1f} s (grace {float(grace):g} s): "
                              "dead, stopped or starved; its VNFs keep running until then",
                              {"host": host_id})
        elif silent < 1.0 and host_id in self._agents_overdue:
            self._agents_overdue.discard(host_id)
            self._clear_alarm(f"agent:{host_id}")

    def _guard_fenced(self, host_id: str, reason: str, fenced_at: Any) -> None:
        """The host's guard killed every VNF there: they are known stopped, so they move
        now, with no lease to wait out."""
        self.fenced_hosts[host_id] = time.monotonic()
        log_decision(log, "host-fenced-by-guard", f"host {host_id}'s lease guard fenced its "
                     f"VNFs: {reason}", level=logging.WARNING, reason=reason, host=host_id)
        at = float(fenced_at) if isinstance(fenced_at, int | float) and fenced_at \
            else time.time()
        self._fail_host_vnfs(host_id, f"fenced on {host_id} by its lease guard: {reason}", at)

    def _fail_host_vnfs(self, host_id: str, detail: str, failed_at: float) -> None:
        """Every ACTIVE VNF of a lost or fenced host fails as a host loss (a checkpoint
        under way is moot and cancelled); the loop recovers them."""
        detected = time.time()
        for v in self.store.list("vnf"):
            if v.data.get("host") == host_id and v.data["haState"] == VnfState.ACTIVE:
                rt = self._rt(v.id)
                self._cancel(rt.busy, f"cancelled by the loss of host {host_id}")
                rt.failure = ("host-loss", detected, detail)
                rt.failed_at = min(failed_at, detected)
        self._wake.set()

    def _remove_stale_copies(self, host_id: str, status: dict[str, Any]) -> None:
        """A copy of a VNF that lives elsewhere (a host back from a fence or a partition,
        a restore the stopped agent finished late) is removed as soon as it is reported."""
        now = time.monotonic()
        for inst in status.get("instances", []):
            if inst.get("state") in (InstanceState.STANDBY, InstanceState.STOPPED):
                continue
            rec = self.store.find("vnf", str(inst.get("id")))
            if rec is None or rec.data["haState"] != VnfState.ACTIVE or \
                    rec.data.get("host") in (None, host_id):
                continue
            key = (host_id, rec.id)
            if now - self._stale_deletes.get(key, -1e9) < 2.0:
                continue
            self._stale_deletes[key] = now
            log_decision(log, "remove-stale-copy", f"remove the stale copy of {rec.id} on "
                         f"{host_id} ({inst.get('state')}); it lives on {rec.data['host']}",
                         level=logging.WARNING, vnf=rec.id, host=host_id,
                         reason="never two copies: the VNF was moved while this host could "
                                "not be told")

            async def delete(h: str = host_id, vnf: str = rec.id) -> None:
                with contextlib.suppress(NfvhaError):
                    await self.agent(h).delete(vnf)

            self._spawn(delete())

    def remove_host(self, host_id: str) -> dict[str, Any]:
        """Take a host out of the cluster: its record, its alarms and what the detector
        and the liveness path know of it. Refused (409) while it is UP and VNFs or
        replicas are placed on it: move them first, or let it go DOWN (its VNFs are then
        recovered elsewhere). An agent still running there registers the host again with
        its next report, so stop it first."""
        rec = self.store.find("host", host_id)
        if rec is None:
            raise InstanceNotFound(f"no host {host_id!r}; GET /nfvha/v1/hosts lists them")
        up = self.detector.state.get(host_id) == HostState.UP
        placed = sorted(v.id for v in self.store.list("vnf")
                        if host_id in (v.data.get("host"), v.data.get("placedOn"))
                        or host_id in (v.data.get("backups") or []))
        if up and placed:
            raise InstanceStateError(
                f"host {host_id} is UP and holds VNFs or replicas of {', '.join(placed)}: "
                "move them to other hosts first (nfvha move ID --to HOST), or stop the host "
                "and remove it once it is DOWN")
        alarms = [a for a in self.store.list("alarm")
                  if a.data.get("key") in (f"host:{host_id}", f"agent:{host_id}",
                                           f"fence:{host_id}")]
        self.store.transaction([Op.delete("host", host_id)]
                               + [Op.delete("alarm", a.id) for a in alarms])
        self.detector.forget(host_id)
        for d in (self.host_status, self.guards, self._guard_seq, self._guard_fence_seen,
                  self.fenced_hosts, self.fence_deadline, self._host_known, self._down_at,
                  self.heartbeats_missed):
            d.pop(host_id, None)
        self._agents_overdue.discard(host_id)
        self._peers_cache = (-1.0, [], "")  # the other guards stop pinging it
        log_decision(log, "host-removed", f"host {host_id} removed from the cluster "
                     f"({'UP' if up else 'not UP'}; VNFs placed there: "
                     f"{', '.join(placed) or 'none'})", host=host_id, reason="operator request")
        return {"id": host_id, "removed": True, "wasUp": up, "placed": placed}

    def event(self, ev: dict[str, Any]) -> None:
        if ev.get("type") == "instance-exit":
            self._instance_exited(ev["host_id"], ev["instance"])

    def _instance_exited(self, host_id: str, inst: dict[str, Any]) -> None:
        rec = self.store.find("vnf", inst["id"])
        if rec is None or rec.data["haState"] != VnfState.ACTIVE or rec.data["host"] != host_id:
            return
        if rec.data.get("pid") is not None and inst.get("pid") != rec.data["pid"]:
            return  # a report about an earlier incarnation, already recovered
        rt = self._rt(rec.id)
        if rt.failure is None:
            # An ACTIVE VNF is busy with a checkpoint (moot now), or with a heal that has
            # not started yet (recovery takes over).
            self._cancel(rt.busy, f"cancelled by the exit of the VNF's process on {host_id}")
            reason = (inst.get("exit") or {}).get("reason", "exited")
            rt.failure = ("process-exit", time.time(), f"VNF process {reason} on {host_id}")
            at = (inst.get("exit") or {}).get("at")
            rt.failed_at = float(at) if isinstance(at, int | float) else None
            self._wake.set()

    def hosts_view(self) -> dict[str, HostView]:
        load: dict[str, int] = {}
        for v in self.store.list("vnf"):
            # An instance still being created counts where it was placed, so that
            # instantiations running side by side do not all pick the same host.
            where = v.data.get("host") or (v.data.get("placedOn") if v.data["haState"] ==
                                           VnfState.INSTANTIATING else None)
            if where and v.data["haState"] != VnfState.FAILED:
                load[where] = load.get(where, 0) + 1
        out = {}
        for rec in self.store.list("host"):
            st = self.host_status.get(rec.id, {})
            up = self.detector.state.get(rec.id) == HostState.UP
            out[rec.id] = HostView(rec.id, up, load.get(rec.id, 0),
                                   int(st.get("resources", {}).get("mem_available_bytes", 0)))
        return out

    def agent(self, host_id: str) -> AgentClient:
        rec = self.store.get("host", host_id)
        return AgentClient(host_id, rec.data["url"], self._daemon_token, self.http)

    def _up_hosts(self) -> frozenset[str]:
        return frozenset(h for h, s in self.detector.state.items() if s == HostState.UP)

    async def _confirm_host_loss(self, host_id: str) -> None:
        """Second path: did any other host hear the suspected one lately?

        A host some peer heard within the suspicion time is alive and not isolated (and
        would not fence itself): it stays UP. Otherwise it is DOWN, and its VNFs may move
        once it is fenced (STONITH confirmed) or, failing that, once the longest lease it
        may hold (+ margin) has passed since anyone last heard it.
        """
        try:
            helpers = [h for h, st in self.detector.state.items()
                       if h != host_id and st != HostState.DOWN and h in self.guards]
            now = time.monotonic()
            # The second path costs no round trip: every guard's heartbeat says when it
            # last heard its ring neighbours. Only fresh reports count.
            fresh = {h: self.guards[h] for h in helpers
                     if now - self.guards[h].at < self.detector.suspect_after(h)}
            if helpers and not fresh:
                # Nobody could be asked: this manager may be the one cut off. Ask again
                # on the next tick rather than move VNFs on a guess.
                log.info("host %s: no other host reported lately; second path retried",
                         host_id)
                if self.detector.state.get(host_id) == HostState.SUSPECTED:
                    self.detector.state[host_id] = HostState.UP
                return
            heard = {h: now - t for h, r in fresh.items()
                     if (t := r.heard(host_id)) is not None}
            recent = min([self.detector.silence(host_id), *heard.values()])
            suspect_after = self.detector.suspect_after(host_id)
            if recent < suspect_after or self.detector.state.get(host_id) == HostState.UP:
                who = ", ".join(f"{h} ({s * 1000:.0f} ms ago)" for h, s in heard.items()
                                if s < suspect_after) or "a new heartbeat"
                log_decision(log, "host-stays-up", f"host {host_id} stays UP: heard by {who}",
                             reason="a peer or a new heartbeat heard it within the suspicion time:"
                                    " the manager's path is slow, the host is not lost",
                             host=host_id)
                if self.detector.state.get(host_id) == HostState.SUSPECTED:
                    self.detector.state[host_id] = HostState.UP
                    self._host_state(host_id, HostState.UP, HostState.SUSPECTED,
                                     f"heard by {who}")
                return
            self.detector.state[host_id] = HostState.DOWN
            self._down_at[host_id] = time.monotonic()
            self.fence_deadline[host_id] = (time.monotonic() - recent
                                            + self.detector.fenced_after(host_id))
            self._host_known.pop(host_id, None)
            self.store.update("host", host_id, lambda d: {**d, "state": HostState.DOWN,
                                                          "stateChangedAt": _now_iso()})
            how = (f"{len(heard)} other host(s) last heard it {min(heard.values()) * 1000:.0f}"
                   " ms ago" if heard else "no other host could tell")
            log_decision(log, "host-down", f"host {host_id} DOWN after {recent * 1000:.0f} ms "
                         f"without heartbeats; {how}", level=logging.WARNING,
                         reason=f"no contact for {recent * 1000:.0f} ms, over the suspicion time "
                                f"of {suspect_after * 1000:.0f} ms; {how}",
                         host=host_id, silence_ms=round(recent * 1000),
                         lease_ms=round(self.detector.lease_granted(host_id) * 1000))
            self._host_state(host_id, HostState.DOWN, HostState.SUSPECTED,
                             f"no contact for {recent * 1000:.0f} ms; {how}")
            self._raise_alarm(f"host:{host_id}", None, "EQUIPMENT_ALARM", "CRITICAL",
                              "host-loss", f"host {host_id} lost: no contact for "
                              f"{recent * 1000:.0f} ms; {how}", {"host": host_id})
            # Confirmed: the loss is known from now on; it happened when last heard.
            self._fail_host_vnfs(host_id, f"host {host_id} lost", time.time() - recent)
            if host_id in self.cfg.fencers:
                self.start_fence(host_id, "host-loss")
        finally:
            self._confirming.discard(host_id)

    async def _cleanup_rejoined(self, host_id: str) -> None:
        """A host that comes back must not run copies of VNFs that now live elsewhere."""
        for v in self.store.list("vnf"):
            if v.data.get("host") != host_id:
                for inst in self.host_status.get(host_id, {}).get("instances", []):
                    if inst["id"] == v.id and inst["state"] != InstanceState.STANDBY:
                        with contextlib.suppress(NfvhaError):
                            await self.agent(host_id).delete(v.id)
        await self._collect_orphans(host_id)
        self._clear_alarm(f"host:{host_id}")

    async def _collect_orphans(self, host_id: str) -> None:
        """Checkpoints on a host of VNFs that no longer exist (terminated while the host
        was away) are removed when it comes back."""
        try:
            held = {c.instance_id for c in await self.agent(host_id).all_checkpoints()}
        except NfvhaError as exc:
            log.warning("cannot list the checkpoints on %s: %s", host_id, exc)
            return
        for iid in sorted(held):
            rec = self.store.find("vnf", iid)
            if rec is None or rec.data["haState"] == VnfState.NOT_INSTANTIATED:
                log_decision(log, "collect-orphans", f"remove the checkpoints of {iid} on "
                             f"{host_id}", reason="its VNF was terminated or deleted",
                             vnf=iid, host=host_id)
                with contextlib.suppress(NfvhaError):
                    await self.agent(host_id).delete(iid, purge=True)

    # -- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Run ``_tick`` when something happened (``_wake``) or is due (``_next_wake``):
        not on a fixed beat, since wake-ups are most of what an idle manager costs."""
        intended = time.monotonic()
        while True:
            now = time.monotonic()
            late = now - intended
            if late > self.cfg.timings.suspect_after / 2:
                # This loop itself was stalled (a blocked event loop, a paused machine):
                # silence measured meanwhile says nothing about the hosts.
                log.warning("manager loop stalled for %.0f ms; hosts get a fresh timeout",
                            late * 1000)
                self.detector.stalled(late)
                for h in list(self.detector.state):
                    if self.detector.state[h] == HostState.UP:
                        self.detector.grace(h)
            try:
                self.drain_liveness()
                self._tick()
            except Exception:
                log.exception("manager loop error (continuing)")
            self._wake.clear()
            intended = self._next_wake(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, intended - time.monotonic()))
            intended = min(intended, time.monotonic())  # woken early: not late

    def _next_wake(self, now: float) -> float:
        """When the loop must look again though nothing woke it: the first moment a host
        could become suspect (the guards' heartbeats are read then, each at its arrival
        time), a checkpoint or a retry falls due; at least every ``tick`` and at most
        every 10 ticks (the guards' fence reports and alarms are read then too)."""
        t = min(now + 10 * self.cfg.tick, self._due)
        for h, st in self.detector.state.items():
            if st == HostState.UP:
                t = min(t, self.detector.last_seen.get(h, now)
                        + self.detector.suspect_after(h, now) + 0.001)
        if now - self.started < self.cfg.timings.suspect_after * 2 or self._confirming \
                or not self._reconciled:
            t = now + self.cfg.tick
        return max(t, now + self.cfg.tick)

    def _tick(self) -> None:
        grace = time.monotonic() - self.started < self.cfg.timings.suspect_after * 2
        if not grace and not self._reconciled and self._all_hosts_reported():
            self._reconciled = True
            self._reconcile()
        if not grace:
            suspects = self.detector.to_suspect()
            up_before = len(self._up_hosts()) + len(suspects)
            if len(suspects) >= 2 and len(suspects) == up_before:
                # Every host silent at once: the manager's side is the likelier culprit,
                # and there would be nowhere to move VNFs to anyway.
                log_decision(log, "suspect-manager",
                             f"{len(suspects)} of {up_before} hosts silent at once "
                             f"({', '.join(sorted(suspects))}); hosts kept UP",
                             level=logging.WARNING,
                             reason="every host silent at once points at the manager's own "
                                    "network or load, and there is nowhere to move VNFs to",
                             hosts=sorted(suspects))
                for h in suspects:
                    self.detector.state[h] = HostState.UP
                    self.detector.grace(h)
                suspects = []
            for h in suspects:
                if h not in self._confirming:
                    self._confirming.add(h)
                    log.info("host %s suspected: %.0f ms without heartbeat", h,
                             self.detector.silence(h) * 1000)
                    self._host_state(h, HostState.SUSPECTED, HostState.UP,
                                     f"{self.detector.silence(h) * 1000:.0f} ms without "
                                     "heartbeat")
                    self._spawn(self._confirm_host_loss(h))
        now = time.monotonic()
        self._due = now + 10 * self.cfg.tick
        for rec in self.store.list("vnf"):
            rt = self._rt(rec.id)
            busy = rt.busy is not None and not rt.busy.done()
            state = rec.data["haState"]
            if rt.failure is not None:
                self._due = now  # handled below, or once the grace or the busy task ends
            elif state == VnfState.FAILED and rt.retry_at is not None:
                self._due = min(self._due, rt.retry_at)
            elif state == VnfState.ACTIVE and not busy:
                self._due = min(self._due, rt.next_checkpoint)
            if rt.failure is not None and not busy and not grace:
                if state in (VnfState.ACTIVE, VnfState.RECOVERING, VnfState.INSTANTIATING):
                    if self._crash_loop_wait(rec.id, rt, now):
                        self._due = min(self._due, rt.hold_until or now)
                        continue
                    ftype, at, detail = rt.failure
                    rt.failure = None
                    op_id = self._new_op(rec.id, "HEAL", True)
                    rt.busy = self._spawn_op(op_id, self._recover(rec.id, ftype, at, detail,
                                                                  auto=True, op_id=op_id))
                else:
                    rt.failure = None
                continue
            if state == VnfState.FAILED and not busy and not grace and \
                    rt.retry_at is not None and now >= rt.retry_at:
                if not self._recoverable(rec.data, rt.retry_failure):
                    # Nothing could work yet (no live host, no replica): look again later
                    # without recording a failed operation each time.
                    rt.retry_at = now + min(_RETRY_MAX_S, 2.0 ** rt.retries)
                    continue
                rt.retry_at = None
                log_decision(log, "retry", f"retry recovering {rec.id} (try {rt.retries + 1})",
                             reason="every strategy failed last time; a transient cause "
                                    "(overload, a host coming back) may have passed",
                             vnf=rec.id, failure=rt.retry_failure)
                op_id = self._new_op(rec.id, "HEAL", True)
                rt.busy = self._spawn_op(op_id, self._recover(
                    rec.id, rt.retry_failure, time.time(),
                    f"retry {rt.retries + 1} after every strategy failed", auto=True,
                    op_id=op_id))
                continue
            if state != VnfState.ACTIVE or busy:
                continue
            if rt.crash_streak and rt.recovered_at is not None and \
                    now - rt.recovered_at > _CRASH_WINDOW_S:
                rt.crash_streak = 0  # it ran long enough: the loop is over
                self._clear_alarm(f"crash-loop:{rec.id}")
                self._update_vnf(rec.id, _set(crashLoop=None))
            policy = self._policy(rec.data)
            if policy.probe.type != "none" and not rt.probing:
                rt.probing = True
                self._spawn(self._probe(rec.id))
            if now >= rt.next_checkpoint and rt.probe_failures == 0:
                # A VNF failing its probes may be hung: a checkpoint now would save the hang.
                rt.next_checkpoint = now + policy.checkpoint_interval
                rt.busy = self._spawn(self._checkpoint(rec.id))

    def _crash_loop_wait(self, vnf_id: str, rt: _Runtime, now: float) -> bool:
        """Whether the VNF's failure must wait (CrashLoopBackOff): a VNF that fails again
        within ``_CRASH_WINDOW_S`` of its last recovery, twice or more in a row, is
        recovered after 1, 2, 4, ... up to 300 s, with a ``crash-loop`` alarm from the
        third time on. A command that exits at once was otherwise restarted hundreds of
        times a minute."""
        if rt.hold_until is not None:
            if now < rt.hold_until:
                return True
            rt.hold_until = None
            return False
        assert rt.failure is not None
        ftype, _, detail = rt.failure
        injected = rt.injected_at is not None and now - rt.injected_at < _CRASH_WINDOW_S
        if ftype not in ("process-exit", "hang") or rt.recovered_at is None or \
                now - rt.recovered_at > _CRASH_WINDOW_S or injected:
            # Not a loop of its own: a first failure, a host loss, or a fault a test or an
            # operator injected on purpose (fault campaigns inject back to back).
            return False
        rt.crash_streak += 1
        if rt.crash_streak < 2:
            return False  # once may be bad luck (two unrelated faults): recovered at once
        delay = min(_CRASH_BACKOFF_MAX_S, 2.0 ** (rt.crash_streak - 2))
        rt.hold_until = now + delay
        log_decision(log, "crash-loop-backoff", f"{vnf_id} failed again "
                     f"{now - rt.recovered_at:.1f} s after its last recovery ({detail}); next "
                     f"recovery in {delay:g} s", level=logging.WARNING, vnf=vnf_id,
                     reason=detail, streak=rt.crash_streak, delay_s=delay)
        self._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.RECOVERING,
                                            "crashLoop": {"streak": rt.crash_streak,
                                                          "backoffS": delay,
                                                          "reason": detail}})
        if rt.crash_streak >= 3:
            self._raise_alarm(f"crash-loop:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM",
                              "MAJOR", "crash-loop",
                              f"{vnf_id} keeps failing right after each recovery "
                              f"({rt.crash_streak} times; last: {detail}); recoveries back off "
                              f"up to {_CRASH_BACKOFF_MAX_S:g} s. Check its command, its "
                              "configuration and resources.memory", {})
        return True

    def _recoverable(self, data: dict[str, Any], failure: str) -> bool:
        """Whether some strategy of the VNF's policy applies now (a pure check)."""
        d = self._vnfd(data)
        ctx = self._context(data["id"], failure, data.get("host"), data.get("backups", []), d,
                            frozenset())
        return any(not isinstance(decide(s, ctx), str)
                   for s in strategy_chain(d.ha.recovery, failure))

    def _all_hosts_reported(self) -> bool:
        """Reconcile only once every live host has told what it runs (bounded wait: a host
        that stays silent is handled by the heartbeat detector)."""
        waited = time.monotonic() - self.started
        known = [h for h, st in self.detector.state.items() if st != HostState.DOWN]
        return waited > 4 * self.cfg.timings.fenced_after() or \
            all(h in self.host_status for h in known)

    def _reconcile(self) -> None:
        """After a (re)start, once every live host has reported: align the store with what
        really runs. Extra copies are removed; a VNF that runs nowhere is recovered;
        checkpoints of VNFs terminated meanwhile are collected from every live host."""
        for h in self._up_hosts():
            self._spawn(self._collect_orphans(h))
        for rec in self.store.list("vnf"):
            if rec.id not in self._to_reconcile:
                continue  # instantiated by this manager: nothing to find out
            if rec.data["haState"] in (VnfState.NOT_INSTANTIATED, VnfState.FAILED):
                continue
            running = [h for h, st in self.host_status.items()
                       if self.detector.state.get(h) == HostState.UP
                       and any(i["id"] == rec.id and i["state"] in LIVE_STATES
                               for i in st.get("instances", []))]
            host = rec.data.get("host")
            keep = host if host in running else (running[0] if running else None)
            for h in running:
                if h != keep:
                    log_decision(log, "remove-duplicate", f"remove duplicate copy of {rec.id} on "
                                 f"{h} (it lives on {keep})", level=logging.WARNING,
                                 reason="found running on two hosts after a manager restart",
                                 vnf=rec.id, host=h, keep=keep)
                    self._spawn(self.agent(h).delete(rec.id))
            if keep is not None:
                if rec.data["haState"] != VnfState.ACTIVE or keep != host:
                    log_decision(log, "adopt", f"{rec.id} runs on {keep}: ACTIVE there",
                                 reason="found running there after a manager restart",
                                 vnf=rec.id, host=keep)
                    self._update_vnf(rec.id, _set(haState=VnfState.ACTIVE, host=keep,
                                                  instantiationState="INSTANTIATED"))
            elif rec.data["haState"] != VnfState.TERMINATING and host is not None:
                if rec.data["haState"] == VnfState.MOVING:
                    # A move cut short by the restart: recovered like any VNF that died.
                    self._update_vnf(rec.id, _set(haState=VnfState.ACTIVE))
                self._rt(rec.id).failure = ("process-exit", time.time(),
                                            f"runs nowhere after a manager restart (was on "
                                            f"{host})")

    def _vnfd(self, data: dict[str, Any]) -> VnfDescriptor:
        """The VNF's validated descriptor; cached, as the loop reads it every tick."""
        key = (data["id"], data.get("vnfdId"), data.get("vnfdVersion"))
        d = self._vnfd_cache.get(key)
        if d is None:
            d = self._vnfd_cache[key] = parse_descriptor(data["vnfd"])
        return d

    def _policy(self, data: dict[str, Any]) -> HaPolicy:
        return self._vnfd(data).ha

    async def _probe(self, vnf_id: str) -> None:
        rt = self._rt(vnf_id)
        try:
            rec = self.store.find("vnf", vnf_id)
            if rec is None:
                return
            d = self._vnfd(rec.data)
            t0 = time.monotonic()
            ok = await self._probe_once(vnf_id, d, d.ha.probe, rec.data.get("host"))
            # Excused: frozen by a dump, or being recovered. Not merely queued for the
            # host's dump slot (at 20 VNFs a host that is most of the time) or replicating:
            # the VNF runs meanwhile, and a hang must still be seen.
            busy = rt.dumping or rt.thawed_at >= t0 or (
                rt.busy is not None and not rt.busy.done() and not rt.checkpointing)
            host = rec.data.get("host")
            self.drain_liveness()  # silence is measured to the last heartbeat read
            host_silent = host is not None and (
                self.detector.state.get(host) != HostState.UP
                or self.detector.silence(host) > 2 * self.cfg.timings.heartbeat_interval)
            if ok or host_silent:
                # A silent host is the heartbeat detector's to judge: a VNF that does not
                # answer because its host is gone is a host loss, not a hang.
                rt.probe_failures = 0
                rt.probe_failing_since = None
            elif busy:
                # Frozen by a checkpoint, or being recovered: this probe proves nothing
                # either way. Not a reset: a hung VNF whose checkpoints keep failing must
                # still reach the threshold.
                pass
            else:
                rt.probe_failures += 1
                if rt.probe_failing_since is None:
                    rt.probe_failing_since = time.time() - d.ha.probe.timeout
                if rt.probe_failures >= d.ha.probe.failure_threshold and rt.failure is None:
                    rt.probe_failures = 0
                    cur = self.store.find("vnf", vnf_id)
                    if cur is not None and cur.data["haState"] == VnfState.ACTIVE:
                        rt.failure = ("hang", time.time(),
                                      f"{d.ha.probe.failure_threshold} {d.ha.probe.type} probes "
                                      "unanswered")
                        rt.failed_at = rt.probe_failing_since
                        self._wake.set()
            await asyncio.sleep(max(0.0, d.ha.probe.interval - (time.monotonic() - t0)))
        finally:
            rt.probing = False
            self._wake.set()  # the next probe is due now

    # -- checkpoints ----------------------------------------------------------------------

    async def _checkpoint(self, vnf_id: str) -> None:
        """One periodic checkpoint; at most ``_DUMPS_PER_HOST`` run at once on a host, so
        that checkpointing many VNFs cannot starve the host (and its heartbeats)."""
        host = self.store.get("vnf", vnf_id).data["host"]
        sem = self._dump_slots.setdefault(host, asyncio.Semaphore(_DUMPS_PER_HOST))
        rt = self._rt(vnf_id)
        rt.checkpointing = True
        try:
            async with sem:
                if rt.probe_failures > 0:
                    # It stopped answering while it waited for the host's dump slot: a
                    # checkpoint now might save a hang.
                    return
                await self._checkpoint_now(vnf_id)
        finally:
            rt.checkpointing = rt.dumping = False

    async def _checkpoint_now(self, vnf_id: str) -> None:
        started = time.monotonic()
        rec = self.store.get("vnf", vnf_id)
        host = rec.data["host"]
        d = self._vnfd(rec.data)
        position: int | None = None
        rt = self._rt(vnf_id)
        rt.dumping = True
        if d.ha.replay and self.forwarder is not None:
            try:
                position = await self.forwarder.hold(vnf_id)
            except ForwarderError as exc:
                self._forwarder_alarm(str(exc))
        try:
            try:
                extra = {} if position is None else {"log_position": position}
                meta = await self.agent(host).checkpoint(vnf_id, drain=position is not None,
                                                         extra=extra)
            finally:
                if position is not None and self.forwarder is not None:
                    with contextlib.suppress(ForwarderError):
                        held_ms = await self.forwarder.release(vnf_id)
                        self._rt(vnf_id).last_hold_ms = held_ms
                rt.dumping = False
                rt.thawed_at = time.monotonic()
            replicas = [host]
            backups = [b for b in rec.data.get("backups", []) if b in self._up_hosts()]
            pushes = [self._replicate(vnf_id, host, meta.seq, b, d) for b in backups]
            for b, res in zip(backups, await asyncio.gather(*pushes, return_exceptions=True),
                              strict=True):
                if isinstance(res, Exception):
                    log.warning("replicating %s/%s to %s failed: %s", vnf_id, meta.seq, b,
                                res)
                else:
                    replicas.append(b)
        except NfvhaError as exc:  # the agent's refusal or failure, typed (agent_client)
            criu_tail = " | ".join(exc.log_lines[-4:]) if isinstance(exc, CriuError) else ""
            log.warning("checkpoint of %s on %s failed: %s%s", vnf_id, host, exc,
                        f" (CRIU: {criu_tail})" if criu_tail else "")
            rt = self._rt(vnf_id)
            if isinstance(exc, InstanceStopped) and rt.failure is None:
                # The agent found the VNF stopped (SIGSTOP, a debugger): a hang, known now
                # rather than after the probes' threshold.
                rt.failure = ("hang", time.time(), f"VNF found stopped by a checkpoint on "
                              f"{host}")
                rt.failed_at = rt.probe_failing_since
                self._wake.set()
            self._raise_alarm(f"checkpoint:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "MAJOR",
                              "checkpoint-failed", str(exc), {"host": host})
            self.events.publish(EventKind.CHECKPOINT_FAILED, {
                "vnfInstanceId": vnf_id, "host": host, "detail": str(exc)})
            return
        self._record_checkpoint(vnf_id, meta, host, replicas, position, rec.data,
                                time.monotonic() - started)
        if position is not None and self.forwarder is not None and \
                (len(replicas) > 1 or d.ha.backups == 0):
            # Once this checkpoint has a replica, the log may forget what the *previous* one
            # covers, not more (and exactly-once replies go out up to there): a restore
            # that finds this one unusable (the VNF stopped during its dump, a corrupt
            # image) falls back to the previous checkpoint, and replay must still reach
            # back to that one's cut. Trimming to this one lost a checkpoint interval of
            # datagrams on such a fallback (replay e2e, a SIGSTOP during a dump).
            older = [int(c.data["logPosition"]) for c in
                     self.store.list("checkpoint", where={"vnfInstanceId": vnf_id})
                     if int(c.data["seq"]) < meta.seq
                     and c.data.get("logPosition") is not None]
            if older:
                with contextlib.suppress(ForwarderError):
                    await self.forwarder.commit(vnf_id, max(older))
        self._prune_checkpoints(vnf_id, d.ha.retention)
        self._clear_alarm(f"checkpoint:{vnf_id}")
        took = time.monotonic() - started
        rt = self._rt(vnf_id)
        # Three in a row, either way, so that one slow checkpoint on a busy host does not
        # make the alarm flap.
        rt.slow_streak = (max(rt.slow_streak, 0) + 1 if took > d.ha.checkpoint_interval
                          else min(rt.slow_streak, 0) - 1)
        if rt.slow_streak >= _BEHIND_AFTER:
            # Each checkpoint takes longer than the interval: they run back to back, the
            # VNF is frozen far more often than planned, and what a failure loses grows.
            self._raise_alarm(f"checkpoint-behind:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM",
                              "WARNING", "checkpoints-behind",
                              f"a checkpoint of {vnf_id} took {took * 1000:.0f} ms, longer "
                              f"than its interval ({d.ha.checkpoint_interval * 1000:.0f} ms): "
                              "raise ha.checkpoint_interval or lower the VNF's memory",
                              {"host": host, "checkpointMs": round(took * 1000)})
        elif rt.slow_streak <= -_BEHIND_AFTER:
            self._clear_alarm(f"checkpoint-behind:{vnf_id}")

    def _record_checkpoint(self, vnf_id: str, meta: CheckpointMeta, host: str,
                           replicas: list[str], position: int | None, vnf: dict[str, Any],
                           seconds: float) -> None:
        cp = {"id": f"{vnf_id}/{meta.seq}", "vnfInstanceId": vnf_id, "seq": meta.seq,
              "createdAt": meta.created_at,
              # The state it holds is as of cutAt (the freeze), not createdAt (the commit).
              "cutAt": meta.cut_at or meta.created_at, "host": host, "replicas": replicas,
              "bytes": meta.total_bytes, "criuStats": meta.criu_stats,
              "generation": vnf.get("generation", 0), "logPosition": position,
              "holdMs": self._rt(vnf_id).last_hold_ms if position is not None else None,
              "durationMs": seconds * 1000}
        self.store.put("checkpoint", cp["id"], cp)
        self.events.publish(EventKind.CHECKPOINT, cp)

    async def _replicate(self, vnf_id: str, host: str, seq: int, backup: str,
                         d: VnfDescriptor) -> None:
        await self.agent(host).push(vnf_id, seq, self.store.get("host", backup).data["url"])
        if "standby" in {s for chain in d.ha.recovery.values() for s in chain}:
            await self.agent(backup).standby(vnf_id, seq)

    def _prune_checkpoints(self, vnf_id: str, keep: int) -> None:
        cps = sorted(self.store.list("checkpoint", where={"vnfInstanceId": vnf_id}),
                     key=lambda r: r.data["seq"])
        for old in cps[:-keep] if len(cps) > keep else []:
            self.store.delete("checkpoint", old.id)

    def checkpoint_hosts(self, vnf_id: str, generation: int | None = None) -> dict[str, list[int]]:
        """Which live host holds which checkpoints of a VNF, newest first."""
        out: dict[str, list[int]] = {}
        for cp in self.store.list("checkpoint", where={"vnfInstanceId": vnf_id}):
            for h in cp.data.get("replicas", []):
                out.setdefault(h, []).append(int(cp.data["seq"]))
        return {h: sorted(s, reverse=True) for h, s in out.items()}

    # -- recovery -------------------------------------------------------------------------

    async def _recover(self, vnf_id: str, failure: str, detected_at: float, detail: str,
                       *, auto: bool, op_id: str | None = None) -> None:
        rec = self.store.get("vnf", vnf_id)
        old_host = rec.data.get("host")
        op_id = op_id or self._new_op(vnf_id, "HEAL", auto)
        rt = self._rt(vnf_id)
        failed_at = rt.failed_at if failure != "manual" and rt.failed_at is not None and \
            rt.failed_at <= detected_at else None
        rt.failed_at = None
        self._op_update(op_id, operationState="PROCESSING", nfvha={
            "failureType": failure, "detail": detail, "detectedAt": detected_at,
            "failedAt": failed_at, "timestamps": {"detected": detected_at}, "attempts": []})
        if failure != "manual":
            self._raise_alarm(f"vnf:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "CRITICAL",
                              failure, detail, {"host": old_host})
        self._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.RECOVERING})
        d = self._vnfd(rec.data)
        replaying = d.ha.replay and self.forwarder is not None
        if replaying and self.forwarder is not None:
            try:
                await self.forwarder.hold(vnf_id)  # new traffic waits until replay is done
            except ForwarderError as exc:
                replaying = False
                self._forwarder_alarm(f"{exc}; {vnf_id} is restored without replay")
        failed: set[tuple[str, str]] = set()
        retried: set[tuple[str, str]] = set()
        attempts: list[dict[str, Any]] = []
        for strategy in strategy_chain(d.ha.recovery, failure):
            while True:
                ctx = self._context(vnf_id, failure, old_host, rec.data.get("backups", []),
                                    d, frozenset(failed))
                decision = decide(strategy, ctx)
                if isinstance(decision, str):
                    log_decision(log, "strategy-skipped",
                                 f"{strategy} for {vnf_id} not applicable: {decision}",
                                 reason=decision, vnf=vnf_id, strategy=strategy,
                                 failure=failure)
                    attempts.append({"strategy": strategy, "applicable": False,
                                     "reason": decision})
                    break
                decided = time.time()
                log_decision(log, "recover", f"{failure} {vnf_id} -> {strategy} on "
                             f"{decision.target_host} ({decision.reason})",
                             reason=decision.reason, vnf=vnf_id, failure=failure,
                             strategy=strategy, host=decision.target_host, op=op_id)
                self._op_update(op_id, nfvha_merge={"decision": decision.as_dict(),
                                                    "timestamps": {"decided": decided}})
                try:
                    result = await self._execute(vnf_id, d, decision, failure, old_host)
                except NfvhaError as exc:
                    log.warning("recovery of %s by %s on %s failed: %s", vnf_id, strategy,
                                decision.target_host, exc)
                    key = (strategy, decision.target_host)
                    if isinstance(exc, AgentUnreachable) and \
                            key not in retried and \
                            self.detector.state.get(decision.target_host) == HostState.UP:
                        # Unreachable although it heartbeats: typically a pooled connection
                        # to the agent's previous process (a host that just came back). Try
                        # the same once more before falling back to a strategy that may
                        # lose the state.
                        retried.add(key)
                        await asyncio.sleep(0.05)
                        continue
                    failed.add(key)
                    attempts.append({"strategy": strategy, "host": decision.target_host,
                                     "decidedAt": decided, "error": str(exc)})
                    self._op_update(op_id, nfvha_merge={"attempts": attempts})
                    continue
                restored = time.time()
                if failure == "host-loss" and old_host is not None \
                        and decision.target_host != old_host \
                        and self.detector.state.get(old_host) == HostState.UP:
                    # The old host came back during the restore: its rejoin clean-up still
                    # saw the VNF as living there, so its copy is removed now.
                    try:
                        await self.agent(old_host).delete(vnf_id)
                    except NfvhaError as exc:
                        log.warning("could not remove the old copy of %s on %s after moving "
                                    "it: %s", vnf_id, old_host, exc)
                replay_info = await self._replay(vnf_id, result.get("seq")) if replaying \
                    else None
                answered = await self._wait_serving(vnf_id, decision.target_host, d,
                                                    restored)
                if answered is None:
                    err = (f"restored by {strategy} on {decision.target_host} but it did not "
                           "answer its health probe within 3 s")
                    log.warning("recovery of %s: %s", vnf_id, err)
                    failed.add((strategy, decision.target_host))
                    attempts.append({"strategy": strategy, "host": decision.target_host,
                                     "decidedAt": decided, "error": err})
                    self._op_update(op_id, nfvha_merge={"attempts": attempts})
                    with contextlib.suppress(NfvhaError):
                        await self.agent(decision.target_host).delete(vnf_id)
                    continue
                serving = answered
                attempts.append({"strategy": strategy, "host": decision.target_host,
                                 "decidedAt": decided, "checkpoint": result.get("seq"),
                                 "ok": True})
                self._finish_recovery(vnf_id, decision, result, old_host)
                rt.retries, rt.retry_at = 0, None
                ts = {"detected": detected_at, "decided": decided, "restored": restored,
                      "serving": serving}
                self._op_update(op_id, operationState="COMPLETED", nfvha_merge={
                    "stateLost": strategy == "restart",
                    "attempts": attempts, "timestamps": ts, "strategy": strategy,
                    "replay": replay_info,
                    **({"replayGap": replay_info["gap"]} if replay_info and
                       replay_info.get("gap") else {}),
                    "targetHost": decision.target_host, "checkpoint": result.get("seq"),
                    "phases": {"detect": detected_at,
                               "detectMs": None if failed_at is None
                               else (detected_at - failed_at) * 1e3,
                               "decideMs": (decided - detected_at) * 1e3,
                               "restoreMs": (restored - decided) * 1e3,
                               "redirectMs": (serving - restored) * 1e3,
                               "totalMs": (serving - detected_at) * 1e3,
                               "downtimeMs": None if failed_at is None
                               else (serving - failed_at) * 1e3}})
                self._clear_alarm(f"vnf:{vnf_id}")
                log.info("recovered %s by %s on %s in %.0f ms (detect->serving)%s", vnf_id,
                         strategy, decision.target_host, (serving - detected_at) * 1000,
                         "; its state is lost (restarted from scratch)"
                         if strategy == "restart" else "")
                return
        if replaying and self.forwarder is not None:
            with contextlib.suppress(ForwarderError):
                await self.forwarder.release(vnf_id)
        self._update_vnf(vnf_id, lambda dd: {**dd, "haState": VnfState.FAILED})
        if failure != "manual":
            # Not forever: overload or a host on its way back can make every strategy fail
            # once. Try again with back-off (2, 4, 8, 16, then every 30 s).
            rt.retries += 1
            rt.retry_failure = failure
            rt.retry_at = time.monotonic() + min(_RETRY_MAX_S, 2.0 ** rt.retries)
        self._op_update(op_id, operationState="FAILED", nfvha_merge={"attempts": attempts},
                        error=_problem(500, f"every recovery strategy failed for {vnf_id}: "
                                            + "; ".join(a.get("error") or a.get("reason", "")
                                                        for a in attempts)))
        log_decision(log, "give-up", f"{vnf_id} FAILED: no strategy could recover it",
                     level=logging.ERROR, vnf=vnf_id, failure=failure, op=op_id,
                     reason="; ".join(str(a.get("error") or a.get("reason", "")) for a in attempts))

    async def _replay(self, vnf_id: str, seq: int | None) -> dict[str, Any] | None:
        """Replay what the restored checkpoint missed, then release held traffic."""
        assert self.forwarder is not None
        try:
            if seq is None:  # restarted without state: the log cannot help
                await self.forwarder.reset(vnf_id)
                return {"replayed": 0, "reason": "restart: state lost, log discarded"}
            cp = self.store.find("checkpoint", f"{vnf_id}/{seq}")
            position = None if cp is None else cp.data.get("logPosition")
            if position is None:
                await self.forwarder.release(vnf_id)
                return {"replayed": 0, "reason": f"checkpoint {seq} has no log position"}
            try:
                res = await self.forwarder.replay(vnf_id, int(position))
            except ReplayGapError as gap:
                return await self._replay_gap(vnf_id, seq, int(position), gap)
            log.info("replayed %d datagram(s) to %s after checkpoint %s (position %s) in "
                     "%.1f ms", res.replayed, vnf_id, seq, position, res.replay_ms)
            return {**res.model_dump(), "fromPosition": position}
        except ForwarderError as exc:
            self._forwarder_alarm(str(exc))
            return {"replayed": 0, "error": str(exc)}

    async def _replay_gap(self, vnf_id: str, seq: int, position: int,
                          gap: ReplayGapError) -> dict[str, Any]:
        """The forwarder no longer holds the log from the restored checkpoint's position
        (trimmed after a newer checkpoint that proved unusable): the datagrams in between
        are lost. Replay what it holds, so the VNF comes back with the least loss, and say
        so: in the heal's occurrence (``replayGap``) and by an alarm."""
        assert self.forwarder is not None
        info = {"from": position, "oldest": gap.oldest, "lost": gap.oldest - position}
        log_decision(log, "replay-gap", f"{vnf_id}: checkpoint {seq} is at log position "
                     f"{position}, but the forwarder holds the log from {gap.oldest} only: "
                     f"{gap.oldest - position} datagram(s) are lost; replaying from "
                     f"{gap.oldest}", level=logging.WARNING, vnf=vnf_id, seq=seq,
                     reason="the log was trimmed past the restored checkpoint (a newer one "
                            "was unusable)", **info)
        self._raise_alarm(f"replay-gap:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "MAJOR",
                          "replay-gap", f"{vnf_id} was restored from checkpoint {seq} (log "
                          f"position {position}) but the forwarder's log starts at "
                          f"{gap.oldest}: {gap.oldest - position} datagram(s) received in "
                          "between are lost to it", {"host": None, **info})
        res = await self.forwarder.replay(vnf_id, gap.oldest)
        log.info("replayed %d datagram(s) to %s from position %s (checkpoint %s was at %s)",
                 res.replayed, vnf_id, gap.oldest, seq, position)
        return {**res.model_dump(), "fromPosition": gap.oldest, "gap": info}

    async def _watch_forwarder(self) -> None:
        """Force a checkpoint before a log fills; alarm when one would be lost."""
        assert self.forwarder is not None
        while True:
            await asyncio.sleep(0.1)
            for rec in self.store.list("vnf"):
                d = self._vnfd(rec.data)
                if not d.ha.replay or rec.data["haState"] != VnfState.ACTIVE:
                    continue
                try:
                    st = await self.forwarder.status(rec.id)
                except ForwarderError as exc:
                    self._forwarder_alarm(str(exc))
                    continue
                self._clear_alarm("forwarder")
                self.forwarder_logs[rec.id] = st
                fill = max(st.log_fill, st.log_age_s / 60.0)
                if fill > 0.8:
                    rt = self._rt(rec.id)
                    if rt.next_checkpoint > time.monotonic():
                        log_decision(log, "checkpoint-now", f"checkpoint {rec.id} now",
                                     reason=f"its packet log is {fill * 100:.0f}% full",
                                     vnf=rec.id)
                        rt.next_checkpoint = time.monotonic()
                if fill > 0.9:
                    self._raise_alarm(f"log:{rec.id}", rec.id, "PROCESSING_ERROR_ALARM",
                                      "MAJOR", "packet-log-nearly-full",
                                      f"packet log of {rec.id} is {fill * 100:.0f}% full; "
                                      "checkpoints are not keeping up", {"host": None})
                elif fill < 0.5:
                    self._clear_alarm(f"log:{rec.id}")

    def _forwarder_alarm(self, detail: str) -> None:
        self._raise_alarm("forwarder", None, "COMMUNICATIONS_ALARM", "MAJOR",
                          "forwarder-unavailable", detail, {"host": "forwarder"})

    def _context(self, vnf_id: str, failure: str, old_host: str | None, backups: list[str],
                 d: VnfDescriptor, failed: frozenset[tuple[str, str]]) -> RecoveryContext:
        # A merely suspected host is alive until confirmed lost: a backup being checked
        # must not be ruled out (if it is really gone, the attempt fails and escalates).
        up = frozenset(h for h, st in self.detector.state.items()
                       if st in (HostState.UP, HostState.SUSPECTED) and
                       not (h == old_host and failure == "host-loss"))
        standby = frozenset(
            h for h in up
            for i in self.host_status.get(h, {}).get("instances", [])
            if i["id"] == vnf_id and i["state"] == InstanceState.STANDBY)
        try:
            restart_host = place(self.hosts_view(), memory=d.resources.memory, backups=0,
                                 exclude=[old_host] if failure == "host-loss" and old_host
                                 else []).primary
        except PlacementError:
            restart_host = None
        return RecoveryContext(failure=failure, vnf_host=old_host, hosts_up=up,
                               backups=tuple(backups),
                               checkpoints=self.checkpoint_hosts(vnf_id),
                               standby_hosts=standby, restart_host=restart_host, failed=failed)

    async def _execute(self, vnf_id: str, d: VnfDescriptor, decision: RecoveryDecision,
                       failure: str, old_host: str | None) -> dict[str, Any]:
        target = self.agent(decision.target_host)
        if decision.target_host != old_host and old_host is not None:
            await self._ensure_old_copy_stopped(vnf_id, old_host)
        elif decision.strategy == "restart":
            await target.delete(vnf_id)
        elif failure in ("hang", "manual"):
            await target.kill(vnf_id)  # the hung copy dies; its sandbox is reused
        async with self._restore_slot(decision.target_host):
            return await self._restore_on(target, vnf_id, d, decision)

    @contextlib.asynccontextmanager
    async def _restore_slot(self, host: str) -> AsyncIterator[None]:
        """At most ``_RESTORES_PER_HOST`` restores at once on a host, and the host counted
        as strained meanwhile. A lost host's VNFs all land on its backup at once: twenty
        CRIU restores starved that host's agent, whose silence then had it declared lost
        too (scale benchmark, 100 VNFs on 2 vCPUs). Queued, the first VNFs serve sooner."""
        sem = self._restore_slots.setdefault(host, asyncio.Semaphore(_RESTORES_PER_HOST))
        self.detector.loading(host, +1)
        try:
            async with sem:
                yield
        finally:
            self.detector.loading(host, -1)

    async def _restore_on(self, target: AgentClient, vnf_id: str, d: VnfDescriptor,
                          decision: RecoveryDecision) -> dict[str, Any]:
        if decision.strategy == "restart":
            res = await target.create(d.model_dump(mode="json"), vnf_id)
            return {"instance": res, "seq": None}
        last_error: CheckpointCorrupt | None = None
        for seq in decision.seqs:
            try:
                res = await target.restore(vnf_id, seq)
                return {"instance": res, "seq": seq}
            except CheckpointCorrupt as exc:
                log_decision(log, "skip-checkpoint", f"checkpoint {vnf_id}/{seq} on "
                             f"{decision.target_host} is corrupt; trying the previous one",
                             level=logging.WARNING, vnf=vnf_id, seq=seq,
                             host=decision.target_host,
                             reason=f"verification failed on {exc.file}")
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _ensure_old_copy_stopped(self, vnf_id: str, old_host: str) -> None:
        """Never two live copies. The old copy is known stopped when its host was fenced
        (STONITH confirmed off, or its guard reported a fence); or it is stopped through
        its agent; or, for a lost host, the longest lease it may hold has run out (its
        guard, or its agent if the guard is dead, stops the VNFs by then)."""
        if old_host in self.fenced_hosts:
            return
        if self.detector.state.get(old_host) == HostState.UP:
            try:
                await self.agent(old_host).delete(vnf_id)
                return
            except AgentUnreachable as exc:
                # Alive (its guard beats) but its agent does not answer: the guard stops
                # the VNFs when the agent grace runs out, and says so.
                await self._wait_guard_fence(old_host, vnf_id, exc)
                return
        logged = False
        while old_host not in self.fenced_hosts:
            deadline = self.fence_deadline.get(old_host)
            wait = (deadline - time.monotonic() if deadline is not None
                    else self.detector.fenced_in(old_host))
            if wait <= 0:
                break
            if not logged:
                logged = True
                how = ("or until its fence is confirmed" if old_host in self._fencing
                       and not self._fencing[old_host].done() else "(no fence confirmed)")
                log_decision(log, "wait-fenced", f"waiting {wait * 1000:.0f} ms until {old_host}"
                             f" is known fenced before moving {vnf_id} {how}",
                             reason="never two live copies: the longest lease the old host may "
                                    "hold has not run out since it was last heard",
                             vnf=vnf_id, host=old_host)
            await asyncio.sleep(min(wait, 0.005))  # a confirmed fence ends the wait early
        if old_host not in self.fenced_hosts and \
                self.detector.state.get(old_host) == HostState.UP:
            # It came back meanwhile (e.g. a partition shorter than its fencing timeout), so
            # it may not have fenced itself: its copy is stopped through its agent.
            await self.agent(old_host).delete(vnf_id)

    async def _wait_guard_fence(self, host_id: str, vnf_id: str,
                                exc: AgentUnreachable) -> None:
        report = self.guards.get(host_id)
        left = report.msg.get("a") if report is not None else None
        if not isinstance(left, int | float):
            raise exc
        deadline = time.monotonic() + max(0.0, float(left)) + 1.0
        log_decision(log, "wait-guard-fence", f"agent of {host_id} unreachable; waiting up to "
                     f"{deadline - time.monotonic():.1f} s for its guard to fence before moving "
                     f"{vnf_id}", reason="never two live copies: the host is alive, so the old "
                     "copy is stopped only by its guard once the agent grace runs out",
                     vnf=vnf_id, host=host_id)
        while time.monotonic() < deadline:
            if host_id in self.fenced_hosts:
                return
            with contextlib.suppress(AgentUnreachable):
                await self.agent(host_id).delete(vnf_id)  # the agent may be back
                return
            await asyncio.sleep(0.05)
        raise exc

    # -- active fencing (STONITH) ----------------------------------------------------------

    def start_fence(self, host_id: str, trigger: str) -> asyncio.Task[FenceResult | None]:
        """Fence the host through its driver, once at a time per host."""
        t = self._fencing.get(host_id)
        if t is None or t.done():
            t = self._fencing[host_id] = self._spawn(self._fence(host_id, trigger))
        return t

    async def _fence(self, host_id: str, trigger: str) -> FenceResult | None:
        """Power the host off through its fence driver and record the attempt. Confirmed
        off, its VNFs move at once; otherwise the lease wait still covers them."""
        driver = self.cfg.fencers.get(host_id)
        if driver is None:
            return None
        rec_id = f"{host_id}-{uuid.uuid4().hex[:8]}"
        started = time.time()
        base = {"id": rec_id, "host": host_id, "trigger": trigger, "driver": driver.name,
                "startedAt": _now_iso(started)}
        self.store.put("fence", rec_id, {**base, "state": "PROCESSING"})
        log_decision(log, "fence", f"fencing {host_id} through {driver.name} ({trigger})",
                     reason="make the host safe without trusting it, before its VNFs move",
                     host=host_id, driver=driver.name)
        try:
            result = await driver.off()
        except Exception as exc:  # a driver bug must not stop failover: the lease covers it
            log.exception("fence driver %s for %s", driver.name, host_id)
            result = FenceResult(host=host_id, action="off", ok=False, status="unknown",
                                 detail=f"driver error: {exc}", driver=driver.name,
                                 duration_s=time.time() - started)
        self.store.put("fence", rec_id, {
            **base, "state": "COMPLETED" if result.ok else "FAILED", "result": result.as_dict(),
            "finishedAt": _now_iso(), "durationMs": round(result.duration_s * 1000, 1)})
        self.metrics.fences.labels("confirmed" if result.ok else "failed").inc()
        self.metrics.fence_duration.observe(result.duration_s)
        if result.ok:
            self._stonith_off.add(host_id)
            self.fenced_hosts[host_id] = time.monotonic()
            self._clear_alarm(f"fence:{host_id}")
            log_decision(log, "fenced", f"host {host_id} fenced ({result.detail}) in "
                         f"{result.duration_s * 1000:.0f} ms", reason="fence confirmed off",
                         host=host_id)
            self._wake.set()
        else:
            self._raise_alarm(f"fence:{host_id}", None, "EQUIPMENT_ALARM", "MAJOR",
                              "fence-failed", f"fencing {host_id} through {driver.name} "
                              f"failed: {result.detail}; its VNFs move once the longest lease "
                              "it may hold has run out", {"host": host_id})
        return result

    async def fence_host(self, host_id: str) -> dict[str, Any]:
        """Operator's fence (``nfvha inject fence``): through the configured driver; a
        host confirmed off is DOWN at once and its VNFs are recovered elsewhere."""
        if self.store.find("host", host_id) is None:
            raise InstanceNotFound(f"no host {host_id!r} (see GET /nfvha/v1/hosts)")
        if host_id not in self.cfg.fencers:
            raise InstanceStateError(f"no fence driver is configured for host {host_id}; give "
                                     "the manager one with --fence-config")
        result = await self.start_fence(host_id, "manual")
        assert result is not None
        if result.ok and self.detector.state.get(host_id) != HostState.DOWN:
            self.detector.state[host_id] = HostState.DOWN
            self._down_at[host_id] = time.monotonic()
            self.fence_deadline[host_id] = time.monotonic()
            previous = self.store.get("host", host_id).data.get("state")
            self._host_known.pop(host_id, None)
            self.store.update("host", host_id, lambda d: {**d, "state": HostState.DOWN,
                                                          "stateChangedAt": _now_iso()})
            self._host_state(host_id, HostState.DOWN, previous, "fenced by the operator")
            self._fail_host_vnfs(host_id, f"host {host_id} fenced by the operator",
                                 time.time())
        return result.as_dict()

    async def _probe_once(self, vnf_id: str, d: VnfDescriptor, probe: HealthProbe,
                          host: str | None) -> bool:
        """One probe. An exec probe is run by the VNF's agent inside its sandbox, never
        here: a command from a VNFD must not run as root beside the manager."""
        if probe.type != "exec":
            return await probe_vnf(probe, d.network.ip)
        if host is None:
            rec = self.store.find("vnf", vnf_id)
            host = rec.data.get("host") if rec is not None else None
        if host is None:
            return False
        try:
            return await self.agent(host).exec_probe(vnf_id, probe.timeout)
        except NfvhaError:
            return False

    async def _wait_serving(self, vnf_id: str, host: str, d: VnfDescriptor,
                            restored: float) -> float | None:
        """When the restored VNF first answered its probe; None if not within 3 s."""
        if d.ha.probe.type == "none":
            return restored
        # Short probes, often: the first answer is the moment service is back.
        fast = d.ha.probe if d.ha.probe.type == "exec" else \
            d.ha.probe.model_copy(update={"timeout": min(d.ha.probe.timeout, 0.01)})
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if await self._probe_once(vnf_id, d, fast, host):
                return time.time()
            await asyncio.sleep(0.002)
        return None

    def _finish_recovery(self, vnf_id: str, decision: RecoveryDecision, result: dict[str, Any],
                         old_host: str | None, *, moved: bool = False) -> None:
        rec = self.store.get("vnf", vnf_id)
        d = self._vnfd(rec.data)
        try:
            backups = list(place(self.hosts_view(), memory=d.resources.memory,
                                 backups=d.ha.backups, prefer=decision.target_host).backups)
        except PlacementError:
            backups = []
        rt = self._rt(vnf_id)
        rt.next_checkpoint = time.monotonic()  # re-protect at once: new replicas, new standby
        rt.recovered_at = time.monotonic()
        rt.probe_failures = 0
        self._update_vnf(vnf_id, lambda dd: {
            **dd, "haState": VnfState.ACTIVE, "host": decision.target_host, "backups": backups,
            "generation": dd.get("generation", 0) + 1, "restoredFrom": result.get("seq"),
            "pid": result["instance"].pid,
            ("lastMove" if moved else "lastRecovery"): {
                "strategy": decision.strategy, "at": _now_iso(), "fromHost": old_host}})

    # -- lifecycle (SOL003) ---------------------------------------------------------------

    def onboard(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        d = parse_descriptor(descriptor)
        data = {"id": d.id, "vnfdId": d.id, "descriptor": d.model_dump(mode="json")}
        self.store.put("vnfd", d.id, data)
        return data

    def create_vnf(self, vnfd_id: str, name: str | None, description: str | None,
                   instance_id: str | None = None) -> dict[str, Any]:
        vnfd = self.store.find("vnfd", vnfd_id)
        if vnfd is None:
            known = ", ".join(r.id for r in self.store.list("vnfd")) or "none"
            raise InstanceNotFound(f"no VNFD {vnfd_id!r} is onboarded (known: {known}); POST it "
                                   "to /nfvha/v1/vnfds first")
        iid = instance_id or f"{vnfd_id}-{uuid.uuid4().hex[:6]}"
        data = {"id": iid, "vnfInstanceName": name or iid, "vnfInstanceDescription":
                description or "", "vnfdId": vnfd_id, "vnfProvider": "nfvha",
                "vnfProductName": vnfd_id, "vnfSoftwareVersion": vnfd.data["descriptor"]
                ["version"], "vnfdVersion": vnfd.data["descriptor"]["version"],
                "instantiationState": "NOT_INSTANTIATED", "haState": VnfState.NOT_INSTANTIATED,
                "vnfd": vnfd.data["descriptor"], "host": None, "backups": [], "generation": 0,
                "createdAt": _now_iso()}
        self.store.create("vnf", iid, data)
        return data

    def get_vnf(self, vnf_id: str) -> dict[str, Any]:
        rec = self.store.find("vnf", vnf_id)
        if rec is None:
            raise InstanceNotFound(f"no VNF instance {vnf_id!r}")
        return rec.data

    def start_instantiate(self, vnf_id: str) -> str:
        data = self.get_vnf(vnf_id)
        if data["haState"] != VnfState.NOT_INSTANTIATED:
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: only a "
                                     "NOT_INSTANTIATED instance can be instantiated")
        self._admit_addresses(vnf_id, self._vnfd(data))
        self._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.INSTANTIATING})
        op_id = self._new_op(vnf_id, "INSTANTIATE", False)
        self._rt(vnf_id).busy = self._spawn_op(op_id, self._instantiate(vnf_id, op_id))
        return op_id

    def _admit_addresses(self, vnf_id: str, d: VnfDescriptor) -> None:
        """Cluster-wide address management, before anything is stored or started: a VNF's
        address and service address must lie in the data network and be held by nobody
        else, neither another instantiated VNF nor nfvha itself (manager, forwarder,
        hosts). Two VNFs with one address would each see the other's traffic, and the
        one that lost it would be taken for hung and rolled back."""
        ip = ipaddress.IPv4Address(d.network.ip)
        mine = {ip: "its address"}
        if d.network.service is not None and d.network.service.address is not None:
            mine[ipaddress.IPv4Address(d.network.service.address)] = "its service address"
        if self.cfg.vnf_network is not None:
            net = ipaddress.ip_network(self.cfg.vnf_network, strict=False)
            if ip not in net:
                raise DescriptorError(f"invalid VNF descriptor: network.address {ip} is outside "
                                      f"the data network {net}; pick an address in it")
        if d.network.gateway is not None and ipaddress.IPv4Address(d.network.gateway) == ip:
            raise DescriptorError(f"invalid VNF descriptor: network.gateway {ip} is the VNF's "
                                  "own address")
        held: dict[ipaddress.IPv4Address, str] = {}
        for url, what in [(self.cfg.base_url, "the manager"),
                          (self.cfg.forwarder_url, "the steering forwarder")]:
            if url:
                with contextlib.suppress(ValueError):
                    held[ipaddress.IPv4Address(httpx.URL(url).host)] = what
        if self.cfg.liveness_listen is not None:
            with contextlib.suppress(ValueError):
                held[ipaddress.IPv4Address(self.cfg.liveness_listen[0])] = "the manager"
        for reserved, holder in self.cfg.reserved_addresses.items():
            held[ipaddress.IPv4Address(reserved)] = holder
        for h in self.store.list("host"):
            with contextlib.suppress(ValueError, TypeError):
                held[ipaddress.IPv4Address(httpx.URL(str(h.data.get("url"))).host)] = \
                    f"host {h.id} (its agent)"
        for rec in self.store.list("vnf"):
            if rec.id == vnf_id or rec.data["haState"] == VnfState.NOT_INSTANTIATED:
                continue
            other = self._vnfd(rec.data)
            held.setdefault(ipaddress.IPv4Address(other.network.ip),
                            f"VNF instance {rec.id} ({rec.data['haState']})")
            if other.network.service is not None and other.network.service.address:
                held.setdefault(ipaddress.IPv4Address(other.network.service.address),
                                f"VNF instance {rec.id} (its service address)")
        for addr, what in mine.items():
            if addr in held:
                raise AddressConflict(f"{what} {addr} is held by {held[addr]}; give {vnf_id}'s "
                                      "VNFD another address, or terminate the holder first")

    async def _instantiate(self, vnf_id: str, op_id: str) -> None:
        self._op_update(op_id, operationState="PROCESSING")
        data = self.get_vnf(vnf_id)
        d = self._vnfd(data)
        try:
            p = place(self.hosts_view(), memory=d.resources.memory, backups=d.ha.backups)
            self._update_vnf(vnf_id, _set(placedOn=p.primary))  # no await since place()
            log_decision(log, "place", f"place {vnf_id} on {p.primary}, backups "
                         f"{list(p.backups)}", reason=p.reason, vnf=vnf_id, host=p.primary,
                         backups=list(p.backups))
            if d.ha.replay:
                if self.forwarder is None or d.network.service is None:
                    raise NfvhaError("ha.replay needs a steering forwarder: start the manager "
                                     "with --forwarder URL (nfvha up does)")
                await self.forwarder.add(vnf_id, d.network.service.address,
                                         d.network.service.port, d.network.ip,
                                         d.network.service.exactly_once,
                                         after=d.network.service.after)
            created = await self.agent(p.primary).create(d.model_dump(mode="json"), vnf_id)
            await self._wait_serving(vnf_id, p.primary, d, time.time())  # it answers
        except NfvhaError as exc:
            self._update_vnf(vnf_id, lambda dd: {**dd, "haState": VnfState.NOT_INSTANTIATED})
            self._op_update(op_id, operationState="FAILED", error=_problem(409, str(exc)))
            return
        self._update_vnf(vnf_id, lambda dd: {
            **dd, "haState": VnfState.ACTIVE, "instantiationState": "INSTANTIATED",
            "host": p.primary, "backups": list(p.backups), "generation": 1,
            "pid": created.pid,
            "placementReason": p.reason})
        self._rt(vnf_id).next_checkpoint = time.monotonic()  # first checkpoint right away
        self._op_update(op_id, operationState="COMPLETED")

    def start_heal(self, vnf_id: str, cause: str | None) -> str:
        data = self.get_vnf(vnf_id)
        if data["haState"] in (VnfState.NOT_INSTANTIATED, VnfState.TERMINATING):
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: there is "
                                     "nothing to heal; instantiate it first")
        rt = self._rt(vnf_id)
        op_id = self._new_op(vnf_id, "HEAL", False)
        self._cancel(rt.busy, f"cancelled by a manual heal (operation {op_id})")
        rt.busy = self._spawn_op(op_id, self._recover(vnf_id, "manual", time.time(),
                                                      cause or "heal requested", auto=False,
                                                      op_id=op_id))
        return op_id

    def start_move(self, vnf_id: str, to_host: str | None) -> str:
        """A planned move (maintenance, rebalancing) of an ACTIVE VNF to another host.

        Unlike a recovery nothing is lost: the VNF is dumped a last time and stopped with
        its network still locked (TCP peers see neither a FIN nor a RST), the images go
        to the target, and it is restored there with every established connection. Its
        clients see one pause: the dump, the transfer and the restore. Checked here, so a
        move that cannot work is refused before anything is touched.
        """
        data = self.get_vnf(vnf_id)
        if data["haState"] != VnfState.ACTIVE:
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: only an "
                                     "ACTIVE instance can be moved; try again once it is")
        rt = self._rt(vnf_id)
        if rt.failure is not None:
            raise InstanceStateError(f"a failure of {vnf_id} is being handled ({rt.failure[0]});"
                                     " move it once it is ACTIVE again")
        source = data["host"]
        d = self._vnfd(data)
        views = self.hosts_view()
        if to_host is not None:
            if to_host not in views:
                raise InstanceNotFound(f"no host {to_host!r} (hosts: {', '.join(sorted(views))})")
            if to_host == source:
                raise InstanceStateError(f"{vnf_id} already runs on {to_host}; name another "
                                         "host, or none to let placement choose")
            if self.detector.state.get(to_host) != HostState.UP:
                raise InstanceStateError(f"host {to_host} is "
                                         f"{self.detector.state.get(to_host, 'DOWN')}: a VNF "
                                         "can only be moved to a host that is UP")
        try:
            target = place(views, memory=d.resources.memory, backups=0,
                           exclude=[source], prefer=to_host).primary
        except PlacementError as exc:
            raise InstanceStateError(f"cannot move {vnf_id}: {exc}") from None
        if to_host is not None and target != to_host:
            raise InstanceStateError(f"host {to_host} has no room for {vnf_id} "
                                     f"({d.resources.memory // 2**20} MiB)")
        self._update_vnf(vnf_id, _set(haState=VnfState.MOVING))
        op_id = self._new_op(vnf_id, "MOVE", False)
        previous = rt.busy if rt.busy is not None and not rt.busy.done() else None
        rt.busy = self._spawn_op(op_id, self._move(vnf_id, source, target, op_id, previous))
        return op_id

    async def _move(self, vnf_id: str, source: str, target: str, op_id: str,
                    previous: asyncio.Task[None] | None) -> None:
        """The steps of a planned move. Every way out leaves the VNF ACTIVE on one host,
        or, if it could be brought back nowhere, failed and handed to recovery."""
        if previous is not None:  # a periodic checkpoint under way finishes first
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the move itself was cancelled (a heal, a terminate)
            except BaseException:  # how the checkpoint ended does not matter here
                pass
        self._op_update(op_id, operationState="PROCESSING", nfvha={
            "sourceHost": source, "targetHost": target})
        rec = self.store.get("vnf", vnf_id)
        d = self._vnfd(rec.data)
        replaying = d.ha.replay and self.forwarder is not None
        position: int | None = None
        t0 = time.time()
        stopped = False
        meta: CheckpointMeta | None = None
        try:
            if replaying and self.forwarder is not None:
                try:
                    position = await self.forwarder.hold(vnf_id)
                except ForwarderError as exc:
                    self._forwarder_alarm(str(exc))
            extra = {} if position is None else {"log_position": position}
            meta = await self.agent(source).checkpoint(vnf_id, drain=position is not None,
                                                       extra=extra, stop=True)
            stopped = True
            dumped = time.time()
            self._record_checkpoint(vnf_id, meta, source, [source], position, rec.data,
                                    dumped - t0)
            await self.agent(source).push(vnf_id, meta.seq,
                                          self.store.get("host", target).data["url"])
            pushed = time.time()
            await self.agent(source).delete(vnf_id)  # same address and MAC: one copy at a time
            async with self._restore_slot(target):
                res = await self.agent(target).restore(vnf_id, meta.seq)
            restored = time.time()
        except NfvhaError as exc:
            await self._move_failed(vnf_id, source, op_id, exc, stopped, meta, position)
            return
        finally:
            if position is not None and self.forwarder is not None:
                with contextlib.suppress(ForwarderError):
                    await self.forwarder.release(vnf_id)
        cp_id = f"{vnf_id}/{meta.seq}"
        with contextlib.suppress(StoreError):
            self.store.update("checkpoint", cp_id,
                              lambda c: {**c, "replicas": sorted({*c["replicas"], target})})
        answered = await self._wait_serving(vnf_id, target, d, restored)
        decision = RecoveryDecision(strategy="move", target_host=target, seqs=(meta.seq,),
                                    reason=f"planned move from {source}")
        self._finish_recovery(vnf_id, decision, {"instance": res, "seq": meta.seq}, source,
                              moved=True)
        log.info("moved %s from %s to %s: paused %.0f ms (dump %.0f, transfer %.0f, restore "
                 "%.0f)", vnf_id, source, target, ((answered or restored) - t0) * 1e3,
                 (dumped - t0) * 1e3, (pushed - dumped) * 1e3, (restored - pushed) * 1e3)
        self._op_update(op_id, operationState="COMPLETED", nfvha_merge={
            "checkpoint": meta.seq,
            "phases": {"dumpMs": (dumped - t0) * 1e3, "transferMs": (pushed - dumped) * 1e3,
                       "restoreMs": (restored - pushed) * 1e3,
                       "pauseMs": ((answered or restored) - t0) * 1e3}})

    async def _move_failed(self, vnf_id: str, source: str, op_id: str, exc: Exception,
                           stopped: bool, meta: CheckpointMeta | None,
                           position: int | None) -> None:
        """A move that failed half-way: the VNF goes back to its source, as it was."""
        log.warning("moving %s from %s failed: %s", vnf_id, source, exc)
        back = "still running on its source host"
        if stopped and meta is not None:
            try:
                with contextlib.suppress(NfvhaError):
                    await self.agent(source).delete(vnf_id)
                async with self._restore_slot(source):
                    res = await self.agent(source).restore(vnf_id, meta.seq)
                self._update_vnf(vnf_id, _set(pid=res.pid))
                back = f"restored on {source} from its final checkpoint {meta.seq}"
            except NfvhaError as exc2:
                back = f"could not be restored on {source} ({exc2}): recovery takes over"
                rt = self._rt(vnf_id)
                rt.failure = ("process-exit", time.time(), f"planned move failed and the VNF "
                              f"could not be brought back on {source}: {exc2}")
                rt.failed_at = time.time()
        self._update_vnf(vnf_id, _set(haState=VnfState.ACTIVE, host=source))
        self._rt(vnf_id).next_checkpoint = time.monotonic()
        self._op_update(op_id, operationState="FAILED", error=_problem(
            409, f"moving {vnf_id} failed: {exc}; the VNF is {back}"))
        self._wake.set()

    def start_terminate(self, vnf_id: str) -> str:
        data = self.get_vnf(vnf_id)
        if data["haState"] == VnfState.NOT_INSTANTIATED:
            raise InstanceStateError(f"VNF instance {vnf_id} is not instantiated")
        rt = self._rt(vnf_id)
        self._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.TERMINATING})
        op_id = self._new_op(vnf_id, "TERMINATE", False)
        self._cancel(rt.busy, f"cancelled by terminate (operation {op_id})")
        rt.busy = self._spawn_op(op_id, self._terminate(vnf_id, op_id))
        return op_id

    async def _terminate(self, vnf_id: str, op_id: str) -> None:
        self._op_update(op_id, operationState="PROCESSING")
        hosts = {h for h in self._up_hosts()}
        for h in hosts:
            with contextlib.suppress(NfvhaError):
                await self.agent(h).delete(vnf_id, purge=True)
        for cp in self.store.list("checkpoint", where={"vnfInstanceId": vnf_id}):
            self.store.delete("checkpoint", cp.id)
        if self.forwarder is not None and self._vnfd(self.get_vnf(vnf_id)).ha.replay:
            with contextlib.suppress(ForwarderError):
                await self.forwarder.remove(vnf_id)
        self._update_vnf(vnf_id, lambda d: {
            **d, "haState": VnfState.NOT_INSTANTIATED, "instantiationState": "NOT_INSTANTIATED",
            "host": None, "backups": []})
        self._clear_alarm(f"vnf:{vnf_id}")
        self._clear_alarm(f"checkpoint:{vnf_id}")
        self._clear_alarm(f"replay-gap:{vnf_id}")
        self._op_update(op_id, operationState="COMPLETED")

    def delete_vnf(self, vnf_id: str) -> None:
        data = self.get_vnf(vnf_id)
        if data["haState"] != VnfState.NOT_INSTANTIATED:
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: terminate "
                                     "it before deleting it")
        self.store.delete("vnf", vnf_id)
        self.events.publish(EventKind.VNF_DELETED, {"id": vnf_id})
        self.runtime.pop(vnf_id, None)
        for key in [k for k in self._vnfd_cache if k[0] == vnf_id]:
            del self._vnfd_cache[key]

    async def inject(self, vnf_id: str, fault: str) -> dict[str, Any]:
        data = self.get_vnf(vnf_id)
        if not data.get("host"):
            raise InstanceStateError(f"VNF instance {vnf_id} runs nowhere")
        self._rt(vnf_id).injected_at = time.monotonic()
        view = await self.agent(data["host"]).inject(vnf_id, fault)
        return view.model_dump(mode="json", exclude_unset=True)

    # -- op occurrences and alarms --------------------------------------------------------

    def _new_op(self, vnf_id: str, operation: str, auto: bool) -> str:
        op_id = uuid.uuid4().hex
        now = _now_iso()
        rec = self.store.create("op", op_id, {
            "id": op_id, "operationState": "STARTING", "stateEnteredTime": now,
            "startTime": now, "vnfInstanceId": vnf_id, "operation": operation,
            "isAutomaticInvocation": auto, "isCancelPending": False, "nfvha": {},
            "_links": {"self": {"href": f"{self.cfg.base_url}/vnflcm/v1/vnf_lcm_op_occs/{op_id}"},
                       "vnfInstance": {"href":
                                       f"{self.cfg.base_url}/vnflcm/v1/vnf_instances/{vnf_id}"}}})
        self.events.publish(EventKind.OP, {**rec.data, "stateChanged": True})
        self._prune_ops(vnf_id)
        return op_id

    def _prune_ops(self, vnf_id: str) -> None:
        """Operation occurrences are kept bounded: per VNF the newest ``ops_per_vnf``
        finished ones, and none finished longer ago than ``ops_max_age`` (a VNF healed
        every few seconds for months would otherwise fill the store)."""
        finished = sorted((r for r in self.store.list("op", where={"vnfInstanceId": vnf_id})
                           if r.data["operationState"] in ("COMPLETED", "FAILED",
                                                            "ROLLED_BACK")),
                          key=lambda r: str(r.data.get("stateEnteredTime")))
        cutoff = _now_iso(time.time() - self.cfg.ops_max_age)
        doomed = finished[:max(0, len(finished) - self.cfg.ops_per_vnf)]
        doomed += [r for r in finished[len(doomed):]
                   if str(r.data.get("stateEnteredTime")) < cutoff]
        for r in doomed:
            with contextlib.suppress(StoreError):
                self.store.delete("op", r.id)

    def _op_update(self, op_id: str, *, operationState: str | None = None,
                   error: dict[str, Any] | None = None, nfvha: dict[str, Any] | None = None,
                   nfvha_merge: dict[str, Any] | None = None) -> None:
        before: list[str] = []

        def change(d: dict[str, Any]) -> dict[str, Any]:
            before[:] = [d["operationState"]]
            d = dict(d)
            if operationState is not None and operationState != d["operationState"]:
                d["operationState"] = operationState
                d["stateEnteredTime"] = _now_iso()
            if error is not None:
                d["error"] = error
            if nfvha is not None:
                d["nfvha"] = nfvha
            if nfvha_merge:
                n = dict(d.get("nfvha", {}))
                for k, v in nfvha_merge.items():
                    n[k] = {**n.get(k, {}), **v} if isinstance(v, dict) and \
                        isinstance(n.get(k), dict) else v
                d["nfvha"] = n
            return d

        rec = self.store.update("op", op_id, change)
        self.events.publish(EventKind.OP, {**rec.data, "stateChanged":
                                           before[:1] != [rec.data["operationState"]]})

    def _raise_alarm(self, key: str, vnf_id: str | None, event_type: str, severity: str,
                     cause: str, detail: str, resource: dict[str, Any]) -> None:
        existing = [a for a in self.store.list("alarm", where={"key": key})
                    if a.data.get("alarmClearedTime") is None]
        if existing:
            return
        aid = uuid.uuid4().hex
        now = _now_iso()
        rec = self.store.create("alarm", aid, {
            "id": aid, "key": key, "managedObjectId": vnf_id or resource.get("host"),
            "alarmRaisedTime": now, "eventTime": now, "ackState": "UNACKNOWLEDGED",
            "perceivedSeverity": severity, "eventType": event_type, "faultType": cause,
            "probableCause": detail, "isRootCause": True,
            "faultyResource": {"resourceType": "COMPUTE" if "host" in key else "VNFC",
                               **resource},
            "alarmClearedTime": None,
            "_links": {"self": {"href": f"{self.cfg.base_url}/vnffm/v1/alarms/{aid}"}}})
        log.warning("alarm raised: %s %s: %s", severity, cause, detail)
        self.events.publish(EventKind.ALARM_RAISED, rec.data)

    def _clear_alarm(self, key: str) -> None:
        for a in self.store.list("alarm", where={"key": key}):
            if a.data.get("alarmClearedTime") is None:
                rec = self.store.update("alarm", a.id, lambda d: {
                    **d, "alarmClearedTime": _now_iso(), "perceivedSeverity": "CLEARED"})
                log.info("alarm cleared: %s", key)
                self.events.publish(EventKind.ALARM_CLEARED, rec.data)


def _set(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A store update that sets top-level fields."""
    return lambda d: {**d, **changes}


def _problem(status: int, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "Operation failed", "status": status,
            "detail": detail}
