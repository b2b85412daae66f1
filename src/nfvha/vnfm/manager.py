"""The manager: the loop that decides, and the parts it composes.

One loop decides (``_tick``): it looks at hosts and VNFs, and starts long actions —
checkpoints, recoveries, host confirmations — as tasks beside it, one per VNF at a time.
Every decision is logged with its reason and stored with its operation occurrence.
All durable state is in the ``StateStore``; a restarted manager reloads it and carries on.

The work itself is done by parts, each a class with one job, composed here: hosts and
fencing (``membership``), checkpoints (``checkpointing``), health probes (``probing``),
recovery (``healing``), the SOL003 lifecycle and its operation occurrences
(``lifecycle``); readers outside (API, metrics, dashboard) use ``views.ManagerView``.

Design: composition, not mixins. Each part is a class that holds the manager as its
host and calls back only through the shared services listed here: ``store``, ``cfg``,
``detector``, ``events``, ``forwarder``, ``metrics``, ``agent()``, ``hosts_view()``,
``_up_hosts()``, ``_rt()`` (the per-VNF runtime, owned here), ``_vnfd()``, ``_spawn()``,
``_spawn_op()``, ``_cancel()``, ``_update_vnf()``, ``_raise_alarm()``/``_clear_alarm()``
and ``_wake``; it reaches a sibling part through the manager (``m.membership``...).
Why the manager and not a separate context object: the parts call each other both ways
(recovery waits on fencing, a lost host starts recoveries), so a context would be the
manager under another name; and agent clients must be made at call time from
``manager.http``, which tests replace after construction. ``Operations`` needs no more
than the store, the event bus and the configuration, and gets only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.dataplane.client import ForwarderClient
from nfvha.descriptor import HaPolicy, VnfDescriptor, parse_descriptor
from nfvha.errors import NotLeader
from nfvha.ha.election import LeaderElection, Transition
from nfvha.ha.etcdleader import keep_leader_away
from nfvha.ha.fault import FaultTimings, HeartbeatDetector, HostState
from nfvha.ha.fencing import FenceDriver
from nfvha.ha.lifecycle import IllegalTransition, VnfState, check_transition
from nfvha.ha.planner import (
    CRASH_BACKOFF_MAX_S,
    BackOff,
    CancelCheckpoint,
    Checkpoint,
    Decision,
    DropFailure,
    EndCrashLoop,
    Failure,
    KeepHostsUp,
    Reconcile,
    Recover,
    Retry,
    RetryLater,
    Snapshot,
    StartProbe,
    SuspectHost,
    VnfFacts,
    phase,
    plan,
    plan_reconcile,
)
from nfvha.ha.recovery import decide, strategy_chain
from nfvha.logs import decision as log_decision
from nfvha.nfvo.placement import HostView
from nfvha.store.base import StateStore, StoreError
from nfvha.store.etcd import EtcdStore
from nfvha.tls import TlsConfig
from nfvha.vnfm.agent_client import AgentClient
from nfvha.vnfm.checkpointing import Checkpointer
from nfvha.vnfm.events import EventBus, EventKind
from nfvha.vnfm.forwarders import ForwarderPair
from nfvha.vnfm.healing import Healer
from nfvha.vnfm.lifecycle import Lifecycle, Operations
from nfvha.vnfm.membership import GuardReport, Membership
from nfvha.vnfm.metrics import ManagerMetrics
from nfvha.vnfm.notify import Notifier
from nfvha.vnfm.probing import Prober
from nfvha.vnfm.records import OpChange
from nfvha.vnfm.records import now_iso as _now_iso
from nfvha.vnfm.records import problem as _problem
from nfvha.vnfm.records import set_fields as _set
from nfvha.vnfm.secretbox import SecretBox
from nfvha.vnfm.views import ManagerView
from nfvha.web import DEFAULT_MAX_BODY
from nfvha.wire import LIVE_STATES

__all__ = ["GuardReport", "Manager", "ManagerConfig", "VnfState"]

log = logging.getLogger("nfvha.manager")


@dataclass(frozen=True)
class ManagerConfig:
    token: str
    timings: FaultTimings = field(default_factory=FaultTimings)
    tick: float = 0.02
    base_url: str = ""
    forwarder_url: str | None = None
    #: A forwarder pair (id -> control URL); then ``forwarder_url`` is not used: the
    #: manager calls whichever the pair's record names active (``vnfm.forwarders``).
    forwarders: Mapping[str, str] = field(default_factory=dict)
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
    """The VNF manager: owns the loop, the per-VNF runtime state and the shared services
    its parts call back through; its public methods are what the API calls."""

    def __init__(self, store: StateStore, cfg: ManagerConfig, *,
                 election: LeaderElection | None = None) -> None:
        self.store = store
        self.cfg = cfg
        #: With an election (a manager cluster), this member acts only while it leads;
        #: it serves reads from the shared store all along. None: it always acts.
        self.election = election
        # With TLS, agents and the forwarder know the manager by its certificate and
        # never see the operators' token (a host that holds it could act as an operator).
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200),
                                      verify=cfg.tls.client_context() if cfg.tls else True)
        self._daemon_token = "" if cfg.tls else cfg.token
        self._vnfd_cache: dict[tuple[Any, ...], VnfDescriptor] = {}
        first = next(iter(cfg.forwarders.values()), None) or cfg.forwarder_url
        self.forwarder = (ForwarderClient(first, self._daemon_token, self.http,
                                          members=cfg.forwarders) if first else None)
        self.pair = ForwarderPair(self, dict(cfg.forwarders)) if cfg.forwarders else None
        self.events = EventBus()
        self.ops = Operations(store, self.events, cfg)
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: list[asyncio.Task[Any]] = []  # a past term's tasks, winding down
        self._acting = False
        self._notifier_started = False
        if election is not None and isinstance(store, EtcdStore):
            store.follow("this manager is not the leader")
        self._fresh_term()
        self.view = ManagerView(self)
        self.metrics = ManagerMetrics(self)

    def _fresh_term(self, takeover_at: float | None = None) -> None:
        """Everything that lives for one term of acting, new: what a restarted manager
        would have. A new leader knows nothing of the hosts but what the store says, so
        it starts as a restarted manager does (every host gets a full timeout, and a
        lease any earlier leader granted is honoured: ``HeartbeatDetector`` assumes the
        longest one for a host not heard since ``takeover_at``)."""
        cfg = self.cfg
        self.detector = HeartbeatDetector(cfg.timings, started=takeover_at)
        self.runtime: dict[str, _Runtime] = {}
        self._confirming: set[str] = set()
        self._reconciled = False
        self._to_reconcile: set[str] = set()  # VNFs found in the store at start-up
        self._wake = asyncio.Event()
        self.started = time.monotonic()
        old = getattr(self, "notifier", None)
        if old is not None and not self._notifier_started:  # a follower's: never sent
            self._stopping.append(asyncio.ensure_future(old.close(drain=0)))
        self.notifier = Notifier(  # SOL003
            self.store, self.events, base_url=cfg.base_url,
            box=SecretBox.from_file(cfg.secret_key_file) if cfg.secret_key_file else None,
            allow_insecure_callbacks=cfg.allow_insecure_callbacks)
        self._notifier_started = False
        self._due = 0.0  # when the loop must next look at the VNFs (see _tick)
        # The parts, each with one job (see the module docstring).
        self.membership = Membership(self)
        self.checkpoints = Checkpointer(self)
        self.probes = Prober(self)
        self.healing = Healer(self)
        self.lifecycle = Lifecycle(self)

    # -- start / stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Alone: act at once. In a cluster: campaign; act only while leading."""
        if self.election is None:
            self._start_acting()
            return
        self.election.add_listener(self._on_transition)
        await self.election.start()
        log.info("manager member %s started; campaigning for the leadership",
                 self.election.member_id)

    @property
    def acting(self) -> bool:
        """Whether this manager may act now: alone, always; in a cluster, while it leads
        (checked before every act outside the store; the store's writes are fenced by the
        election's guard)."""
        if self.election is None:
            return True
        return self._acting and self.election.is_leader()

    def check_acting(self) -> None:
        """Raise `NotLeader` unless this manager may act now."""
        if not self.acting:
            leader = self.election.leader if self.election is not None else None
            raise NotLeader("this manager is not the leader"
                            + (f"; the leader is {leader.member_id} at {leader.url}"
                               if leader is not None and leader.url else
                               "; no leader is elected at the moment, retry shortly"),
                            leader_url=leader.url if leader is not None else None)

    def _on_transition(self, t: Transition) -> None:
        """Called by the election, in the loop, before anything else runs: a promotion
        starts a fresh term; a demotion cancels all acting at once (synchronously: no
        task of the old term runs another step as the leader)."""
        if t.leading and t.tenure is not None:
            if self._acting:
                self._stop_acting(f"new term {t.term}")
            if isinstance(self.store, EtcdStore):
                self.store.lead(t.tenure.guard,
                                self.election.member_id if self.election else None)
            self._fresh_term(takeover_at=t.tenure.takeover_at)
            self._start_acting()
            log.info("leading term %d (%s)", t.term, t.reason)
        elif not t.leading and self._acting:
            # Fenced first: nothing the term's tasks write while they stop goes out.
            if isinstance(self.store, EtcdStore):
                self.store.follow(f"leadership of term {t.term} lost")
            self._stop_acting(f"leadership of term {t.term} lost: {t.reason}")

    def _start_acting(self) -> None:
        """Reload state: every known host gets a full timeout, interrupted work resumes."""
        self._acting = True
        self.started = time.monotonic()
        self.notifier.start()  # first: subscribers hear of ops failed by the restart
        self._notifier_started = True
        self.membership.start()
        newest: dict[str, float] = {}  # VNF -> wall time of its newest checkpoint
        for cp in self.store.list("checkpoint"):
            at = cp.data.get("createdAt")
            if isinstance(at, int | float):
                vnf = str(cp.data.get("vnfInstanceId"))
                newest[vnf] = max(newest.get(vnf, 0.0), float(at))
        for rec in self.store.list("vnf"):
            self._to_reconcile.add(rec.id)
            rt = self._rt(rec.id)
            # The checkpoint rhythm carries on from the last one taken (by this manager's
            # previous run or by the previous leader): a takeover adds no interval to the
            # gap. The first ones wait for the reconcile anyway (the loop does).
            interval = self._policy(rec.data).checkpoint_interval
            due_in = (newest[rec.id] + interval - time.time()) if rec.id in newest \
                else interval
            rt.next_checkpoint = time.monotonic() + min(max(due_in, 0.0), interval)
            if rec.data["haState"] == VnfState.FAILED:
                rt.retry_at = time.monotonic()  # after the start-up grace, like the others
        for rec in self.store.list("op"):
            if rec.data["operationState"] in ("STARTING", "PROCESSING"):
                self.ops.update(rec.id, operationState="FAILED_TEMP",
                                error=_problem(500, "manager restarted during the operation; "
                                                    "it is retried automatically",
                                               code="manager-restarted"))
        self._loop_task = asyncio.create_task(self._loop())
        if self.pair is not None:
            self.pair.reset()  # what an earlier term answered is waited out, not known
            url = self.pair.url_of_active()
            if url is not None and self.forwarder is not None:
                self.forwarder.switch(url)
            self._spawn(self.pair.watch())
        if self.forwarder is not None:
            self._spawn(self.healing.watch_forwarder())
        if self.election is not None and isinstance(self.store, EtcdStore):
            self._spawn(self._keep_etcd_leader_away(self.store))
        log.info("manager started with %d VNF(s), %d host(s)", len(self.store.list("vnf")),
                 len(self.store.list("host")))

    def _stop_acting(self, why: str) -> None:
        """Stop every act of this term now; the cancelled tasks wind down beside."""
        self._acting = False
        self.membership.close()
        tasks = list(self._tasks)
        if self._loop_task is not None:
            tasks.append(self._loop_task)
            self._loop_task = None
        for t in tasks:
            t.cancel(msg=why)
        self._tasks.clear()
        notifier = self.notifier

        async def wind_down() -> None:
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            await notifier.close(drain=0)

        self._stopping.append(asyncio.ensure_future(wind_down()))
        log.warning("stopped acting: %s", why)

    async def _keep_etcd_leader_away(self, store: EtcdStore, every: float = 5.0) -> None:
        """While leading: etcd's raft leader is kept on another host than this manager's
        (`nfvha.ha.etcdleader`: a power cut of this host then costs a manager crash).
        First after ``every`` seconds of leading: a leadership that changes hands while
        etcd is unsteady must not move etcd's as well."""
        while True:
            await asyncio.sleep(every)
            try:
                done = await asyncio.to_thread(keep_leader_away, store.client,
                                               self.cfg.base_url)
                if done:
                    log.info("%s (this manager leads: a power cut here must not also "
                             "cost an etcd election)", done)
            except StoreError as exc:
                log.debug("etcd leader placement: %s", exc)

    async def close(self) -> None:
        if self.election is not None:
            await self.election.close()  # resigns (a follower takes over at once)
        self._acting = False
        self.membership.close()
        if self._loop_task:
            self._loop_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        pending: list[asyncio.Task[Any]] = list(self._tasks)
        if self._loop_task is not None:
            pending.append(self._loop_task)
        for t in pending + self._stopping:
            with contextlib.suppress(BaseException):
                await t
        await self.notifier.close(drain=1.0 if self._notifier_started else 0)
        await self.http.aclose()

    # -- the public surface (the API's calls), carried out by the parts --------------------

    def heartbeat(self, host_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.membership.heartbeat(host_id, body)

    def liveness(self, host_id: str, msg: dict[str, Any], addr: tuple[str, int],
                 *, at: float | None = None) -> dict[str, Any] | None:
        return self.membership.liveness(host_id, msg, addr, at=at)

    def drain_liveness(self) -> None:
        self.membership.drain_liveness()

    def event(self, ev: dict[str, Any]) -> None:
        self.membership.event(ev)

    def guard_view(self, host_id: str) -> dict[str, Any] | None:
        return self.membership.guard_view(host_id)

    def remove_host(self, host_id: str) -> dict[str, Any]:
        return self.membership.remove_host(host_id)

    async def fence_host(self, host_id: str) -> dict[str, Any]:
        return await self.membership.fence_host(host_id)

    def onboard(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        return self.lifecycle.onboard(descriptor)

    def create_vnf(self, vnfd_id: str, name: str | None, description: str | None,
                   instance_id: str | None = None) -> dict[str, Any]:
        return self.lifecycle.create_vnf(vnfd_id, name, description, instance_id)

    def get_vnf(self, vnf_id: str) -> dict[str, Any]:
        return self.lifecycle.get_vnf(vnf_id)

    def phase_of(self, data: dict[str, Any]) -> str:
        """The VNF's full state (`nfvha.ha.planner.Phase`): ``haState`` refined by what
        the manager is doing with it right now."""
        return phase(self._facts(data, self._rt(data["id"])), time.monotonic())

    def start_instantiate(self, vnf_id: str) -> str:
        return self.lifecycle.start_instantiate(vnf_id)

    def start_heal(self, vnf_id: str, cause: str | None) -> str:
        return self.lifecycle.start_heal(vnf_id, cause)

    def start_move(self, vnf_id: str, to_host: str | None) -> str:
        return self.lifecycle.start_move(vnf_id, to_host)

    def start_terminate(self, vnf_id: str) -> str:
        return self.lifecycle.start_terminate(vnf_id)

    def delete_vnf(self, vnf_id: str) -> None:
        self.lifecycle.delete_vnf(vnf_id)

    async def inject(self, vnf_id: str, fault: str) -> dict[str, Any]:
        return await self.lifecycle.inject(vnf_id, fault)

    # -- shared services the parts call back through: tasks beside the loop ---------------

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
        if self.election is not None and not self.acting:
            return  # a past term's: the next leader ends it (manager-restarted)
        try:
            rec = self.store.find("op", op_id)
            if rec is None or rec.data["operationState"] not in ("STARTING", "PROCESSING"):
                return  # it ended itself
            log.info("operation %s (%s of %s) ends %s: %s", op_id, rec.data["operation"],
                     rec.data["vnfInstanceId"], state, detail)
            self.ops.update(op_id, operationState=state, error=_problem(
                409 if t.cancelled() else 500, detail,
                code=("manager-stopped" if state == "FAILED_TEMP" else "operation-cancelled")
                if t.cancelled() else "internal-error"))
        except Exception:  # the store closed under a stopping manager: start() ends it
            log.exception("could not end operation %s", op_id)

    # -- per-VNF state, hosts, agents ------------------------------------------------------

    def _rt(self, vnf_id: str) -> _Runtime:
        return self.runtime.setdefault(vnf_id, _Runtime())

    def _forget_vnf(self, vnf_id: str) -> None:
        """A deleted VNF: its runtime bookkeeping and cached descriptors go with it."""
        self.runtime.pop(vnf_id, None)
        for key in [k for k in self._vnfd_cache if k[0] == vnf_id]:
            del self._vnfd_cache[key]

    def _update_vnf(self, vnf_id: str, change: Callable[[dict[str, Any]], dict[str, Any]],
                    *, op: tuple[str, OpChange] | None = None) -> None:
        """Every write of a VNF record goes through here, so that observers see it and
        every state change is checked against the transition table (``ha/lifecycle.py``)
        against the state it actually leaves (the check runs inside the store's
        compare-and-set, again on each retry). An illegal one raises and writes nothing.

        With ``op`` (an operation occurrence and its change) both are one transaction:
        the VNF's new state and the end of the operation that made it are seen together
        or not at all."""

        def checked(d: dict[str, Any]) -> dict[str, Any]:
            new = change(d)
            check_transition(vnf_id, d.get("haState"), new.get("haState"))
            return new

        try:
            if op is None:
                rec = self.store.update("vnf", vnf_id, checked)
            else:
                op_id, op_change = op
                rec, op_rec = self.store.update_together(
                    [("vnf", vnf_id, checked), ("op", op_id, op_change)])
        except IllegalTransition as exc:
            log.error("%s; refused", exc)
            raise
        self.events.publish(EventKind.VNF, rec.data)
        if op is not None:
            self.events.publish(EventKind.OP, {**op_rec.data,
                                               "stateChanged": op[1].state_changed})

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
            st = self.membership.host_status.get(rec.id, {})
            up = self.detector.is_up(rec.id)
            out[rec.id] = HostView(rec.id, up, load.get(rec.id, 0),
                                   int(st.get("resources", {}).get("mem_available_bytes", 0)))
        return out

    def agent(self, host_id: str) -> AgentClient:
        """A client for a host's agent: every command to an agent is made through one, so
        a manager that may not act (a follower, a demoted leader) is stopped here."""
        self.check_acting()
        rec = self.store.get("host", host_id)
        return AgentClient(host_id, rec.data["url"], self._daemon_token, self.http)

    def _up_hosts(self) -> frozenset[str]:
        return frozenset(self.detector.hosts(HostState.UP))

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Run ``_tick`` when something happened (``_wake``) or is due (``_next_wake``):
        not on a fixed beat, since wake-ups are most of what an idle manager costs."""
        intended = time.monotonic()
        me = asyncio.current_task()
        # Ends when this loop is no longer the term's (a demotion sets _loop_task to None
        # or to the next term's), not only by its cancellation: on Python 3.11
        # asyncio.wait_for can swallow a cancel that comes as its wait completes, and a
        # demoted leader's loop then ran on (its agent commands and writes were refused,
        # by check_acting and the store's fence, but it kept trying).
        while self._loop_task is me:
            now = time.monotonic()
            late = now - intended
            if late > self.cfg.timings.suspect_after / 2:
                # This loop itself was stalled (a blocked event loop, a paused machine):
                # silence measured meanwhile says nothing about the hosts.
                log.warning("manager loop stalled for %.0f ms; hosts get a fresh timeout",
                            late * 1000)
                self.detector.stalled(late)
                for h in self.detector.hosts(HostState.UP):
                    self.detector.grace(h)
            try:
                self.membership.drain_liveness()
                self._tick()
            except Exception:
                log.exception("manager loop error (continuing)")
            self._wake.clear()
            intended = self._next_wake(time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, intended - time.monotonic())):
                    await self._wake.wait()
            intended = min(intended, time.monotonic())  # woken early: not late

    def _next_wake(self, now: float) -> float:
        """When the loop must look again though nothing woke it: the first moment a host
        could become suspect (the guards' heartbeats are read then, each at its arrival
        time), a checkpoint or a retry falls due; at least every ``tick`` and at most
        every 10 ticks (the guards' fence reports and alarms are read then too)."""
        t = min(now + 10 * self.cfg.tick, self._due)
        for h in self.detector.hosts(HostState.UP):
            t = min(t, self.detector.suspect_at(h, now) + 0.001)
        if now - self.started < self.cfg.timings.suspect_after * 2 or self._confirming \
                or not self._reconciled:
            t = now + self.cfg.tick
        return max(t, now + self.cfg.tick)

    def _snapshot(self, now: float, grace: bool) -> Snapshot:
        """What the planner needs, gathered from the store, the runtime and the detector."""
        suspects = tuple(self.detector.to_suspect()) if not grace else ()
        facts = tuple(self._facts(rec.data, self._rt(rec.id), now, grace)
                      for rec in self.store.list("vnf"))
        return Snapshot(now=now, grace=grace,
                        reconcile_due=not self._reconciled and self._all_hosts_reported(),
                        suspects=suspects, up_hosts=len(self._up_hosts()),
                        confirming=frozenset(self._confirming), vnfs=facts,
                        idle_wake=10 * self.cfg.tick)

    def _facts(self, data: dict[str, Any], rt: _Runtime, now: float | None = None,
               grace: bool = False) -> VnfFacts:
        """One VNF as the planner sees it: its record and its runtime bookkeeping."""
        now = time.monotonic() if now is None else now
        busy = rt.busy is not None and not rt.busy.done()
        state = VnfState(data["haState"])
        policy = self._policy(data)
        recoverable = None
        if state == VnfState.FAILED and not busy and not grace and \
                rt.retry_at is not None and now >= rt.retry_at:
            recoverable = self._recoverable(data, rt.retry_failure)  # only when it counts
        return VnfFacts(
            id=data["id"], state=state, busy=busy, checkpointing=rt.checkpointing,
            dumping=rt.dumping,
            failure=Failure(*rt.failure) if rt.failure is not None else None,
            retry_at=rt.retry_at, retries=rt.retries, retry_failure=rt.retry_failure,
            recoverable=recoverable, probe_enabled=policy.probe.type != "none",
            probing=rt.probing, probe_failures=rt.probe_failures,
            next_checkpoint=rt.next_checkpoint, checkpoint_interval=policy.checkpoint_interval,
            recovered_at=rt.recovered_at, crash_streak=rt.crash_streak,
            hold_until=rt.hold_until, injected_at=rt.injected_at)

    def _tick(self) -> None:
        """One turn: gather a snapshot, let the planner decide, apply its decisions."""
        now = time.monotonic()
        grace = now - self.started < self.cfg.timings.suspect_after * 2
        p = plan(self._snapshot(now, grace))
        self._due = p.due
        for d in p.decisions:
            self._apply(d, now)

    def _apply(self, d: Decision, now: float) -> None:
        """Carry out one decision: quick ones here, long ones as tasks beside the loop."""
        match d:
            case Reconcile():
                self._reconciled = True
                self._reconcile()
            case KeepHostsUp(hosts=hosts):
                log_decision(log, "suspect-manager", f"{len(hosts)} hosts silent at once "
                             f"({', '.join(hosts)}); hosts kept UP", level=logging.WARNING,
                             reason=d.reason, hosts=list(hosts))
                for h in hosts:
                    self.detector.keep_up(h)
                    self.detector.grace(h)
            case SuspectHost(host=h):
                self._confirming.add(h)
                silence = self.detector.silence(h) * 1000
                log.info("host %s suspected: %.0f ms without heartbeat", h, silence)
                self.membership.host_state(h, HostState.SUSPECTED, HostState.UP,
                                 f"{silence:.0f} ms without heartbeat")
                self._spawn(self.membership.confirm_host_loss(h))
            case Recover(vnf=vnf, failure=f, crash_streak=streak):
                rt = self._rt(vnf)
                rt.failure, rt.hold_until, rt.crash_streak = None, None, streak
                op_id = self.ops.new(vnf, "HEAL", True)
                rt.busy = self._spawn_op(op_id, self.healing.recover(
                    vnf, f.kind, f.detected_at, f.detail, auto=True, op_id=op_id))
            case BackOff(vnf=vnf, failure=f, streak=streak, delay=delay):
                rt = self._rt(vnf)
                rt.crash_streak, rt.hold_until = streak, d.until
                log_decision(log, "crash-loop-backoff", f"{vnf}: {d.reason}",
                             level=logging.WARNING, vnf=vnf, reason=f.detail, streak=streak,
                             delay_s=delay)
                self._update_vnf(vnf, lambda data: {
                    **data, "haState": VnfState.RECOVERING,
                    "crashLoop": {"streak": streak, "backoffS": delay, "reason": f.detail}})
                if d.alarm:
                    self._raise_alarm(
                        f"crash-loop:{vnf}", vnf, "PROCESSING_ERROR_ALARM", "MAJOR",
                        "crash-loop", f"{vnf} keeps failing right after each recovery "
                        f"({streak} times; last: {f.detail}); recoveries back off up to "
                        f"{CRASH_BACKOFF_MAX_S:g} s. Check its command, its configuration "
                        "and resources.memory", {})
            case CancelCheckpoint(vnf=vnf):
                self._cancel(self._rt(vnf).busy, d.reason)
            case DropFailure(vnf=vnf):
                self._rt(vnf).failure = None
            case RetryLater(vnf=vnf, at=at):
                self._rt(vnf).retry_at = at
            case Retry(vnf=vnf, failure=failure, attempt=attempt):
                rt = self._rt(vnf)
                rt.retry_at = None
                log_decision(log, "retry", f"retry recovering {vnf} (try {attempt})",
                             reason=d.reason, vnf=vnf, failure=failure)
                op_id = self.ops.new(vnf, "HEAL", True)
                rt.busy = self._spawn_op(op_id, self.healing.recover(
                    vnf, failure, time.time(), f"retry {attempt} after every strategy failed",
                    auto=True, op_id=op_id))
            case EndCrashLoop(vnf=vnf):
                self._rt(vnf).crash_streak = 0
                self._clear_alarm(f"crash-loop:{vnf}")
                self._update_vnf(vnf, _set(crashLoop=None))
            case StartProbe(vnf=vnf):
                self._rt(vnf).probing = True
                self._spawn(self.probes.probe(vnf))
            case Checkpoint(vnf=vnf, next_at=next_at):
                rt = self._rt(vnf)
                rt.next_checkpoint = next_at
                rt.busy = self._spawn(self.checkpoints.checkpoint(vnf))
            case _:
                raise AssertionError(f"no executor for {d!r}")

    def _recoverable(self, data: dict[str, Any], failure: str) -> bool:
        """Whether some strategy of the VNF's policy applies now (a pure check)."""
        d = self._vnfd(data)
        ctx = self.healing.context(data["id"], failure, data.get("host"),
                                   data.get("backups", []), d, frozenset())
        return any(not isinstance(decide(s, ctx), str)
                   for s in strategy_chain(d.ha.recovery, failure))

    def _all_hosts_reported(self) -> bool:
        """Reconcile only once every live host has told what it runs (bounded wait: a host
        that stays silent is handled by the heartbeat detector)."""
        waited = time.monotonic() - self.started
        known = self.detector.hosts(HostState.UP, HostState.SUSPECTED)
        return waited > 4 * self.cfg.timings.fenced_after() or \
            all(h in self.membership.host_status for h in known)

    def _reconcile(self) -> None:
        """After a (re)start, once every live host has reported: align the store with what
        really runs. Extra copies are removed; a VNF that runs nowhere is recovered;
        checkpoints of VNFs terminated meanwhile are collected from every live host."""
        for h in self._up_hosts():
            self._spawn(self.membership.collect_orphans(h))
        for rec in self.store.list("vnf"):
            if rec.id not in self._to_reconcile:
                continue  # instantiated by this manager: nothing to find out
            running = [h for h, st in self.membership.host_status.items()
                       if self.detector.is_up(h)
                       and any(i["id"] == rec.id and i["state"] in LIVE_STATES
                               for i in st.get("instances", []))]
            step = plan_reconcile(rec.id, VnfState(rec.data["haState"]), rec.data.get("host"),
                                  running, time.time())
            if step is None:
                continue
            for h in step.remove_from:
                log_decision(log, "remove-duplicate", f"remove duplicate copy of {rec.id} on "
                             f"{h}", level=logging.WARNING, reason=step.reason, vnf=rec.id,
                             host=h)
                self._spawn(self.agent(h).delete(rec.id))
            if step.adopt_on is not None:
                log_decision(log, "adopt", f"{rec.id} runs on {step.adopt_on}: ACTIVE there",
                             reason=step.reason, vnf=rec.id, host=step.adopt_on)
                there = self.membership.host_status[step.adopt_on].get("instances", [])
                seen: dict[str, Any] = next((i for i in there if i["id"] == rec.id), {})
                self._update_vnf(rec.id, _set(haState=VnfState.ACTIVE, host=step.adopt_on,
                                              instantiationState="INSTANTIATED",
                                              pid=seen.get("pid"),
                                              incarnation=seen.get("started_at")))
            if step.recover is not None:
                if step.was_moving:  # a move cut short: recovered like any VNF that died
                    self._update_vnf(rec.id, _set(haState=VnfState.ACTIVE))
                f = step.recover
                self._rt(rec.id).failure = (f.kind, f.detected_at, f.detail)

    def _vnfd(self, data: dict[str, Any]) -> VnfDescriptor:
        """The VNF's validated descriptor; cached, as the loop reads it every tick."""
        key = (data["id"], data.get("vnfdId"), data.get("vnfdVersion"))
        d = self._vnfd_cache.get(key)
        if d is None:
            d = self._vnfd_cache[key] = parse_descriptor(data["vnfd"])
        return d

    def _policy(self, data: dict[str, Any]) -> HaPolicy:
        return self._vnfd(data).ha

    # -- alarms ----------------------------------------------------------------------------

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
