"""Leader election among managers on etcd: a leader key bound to a lease, renewed by
keepalive and by a *beat* (a rewrite of the key, which followers see), given up before
either can run out (self-demotion); a follower that sees no beat for ``hold + margin``
removes the silent leader's key and campaigns, without waiting for etcd to expire the
lease; a `Guard` fences the leader's writes. The decisions are pure (`decide`, `Tenure`)
and say why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from nfvha.errors import ConfigError
from nfvha.store.base import StoreError
from nfvha.store.etcd import EtcdClient, Guard

__all__ = [
    "Action",
    "ElectionTimings",
    "LeaderElection",
    "LeaderInfo",
    "Pending",
    "Step",
    "Tenure",
    "Transition",
    "decide",
]

logger = logging.getLogger(__name__)


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode("ascii")


@dataclass(frozen=True)
class ElectionTimings:
    """The lease's TTL and what is derived from it; `from_ttl` gives the defaults.

    **The self-demotion rule.** Leadership is valid until ``renewed_at + hold``, where
    ``renewed_at`` is when the last successful renewal was *sent*: a renewal is a
    keepalive of the lease and a beat (a rewrite of the leader key, conditional on the
    key still being this term's), both answered. etcd restarts the lease's countdown,
    and applies the beat, after we sent them, so counting from the send is never late
    whatever the network and etcd's latency were (the answer's arrival would be late by
    that latency).

    **The takeover rule.** A follower that has read the same beat (the key's
    ``mod_revision``) for ``hold + margin`` removes the key, on condition that it is still
    that beat, and campaigns. It read the beat after etcd applied it, so after the
    leader sent it: by then the leader's leadership ran out ``margin`` ago, and a later
    beat that etcd applied first makes the removal fail. Without this rule a successor
    waited for etcd to expire the lease: up to ``ttl`` after the last keepalive, plus
    etcd 3.4's half-second scan for expired leases (1.28 s median failover measured).
    etcd's expiry stays the fallback, ``ttl - hold >= margin`` after the leader's end.

    The ``margin`` is what the leader needs between its last `LeaderElection.is_leader`
    check and the effect of what it then does outside etcd: an event loop lagging behind
    its timers (a long synchronous call), a command to an agent in flight, and the
    difference between the hosts' clock rates (ppm, negligible). Writes to the store
    need no margin, the `Guard` fences them. The margin is the least time between the
    old leader's last act and the earliest moment a successor can win.

    Invariants (`ConfigError` otherwise): ``ttl`` is a whole number of seconds (etcd
    leases are), ``hold + margin <= ttl``, and ``2 * renew_interval <= hold``: a renewal
    is abandoned after one interval, and the one after it must still be answered before
    the deadline set by the last success.
    """

    ttl: int
    renew_interval: float
    margin: float
    #: How often the leader key is read: a follower sees a vacancy at most this late.
    poll_interval: float = 0.05
    #: How long a renewal keeps the leadership (None: ``ttl - margin``, no beats' gain).
    hold: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.ttl, int) and self.ttl >= 1):
            raise ConfigError(f"election: ttl must be a whole number of seconds >= 1 (etcd"
                              f" leases are), got {self.ttl!r}")
        if self.margin >= self.ttl:
            raise ConfigError(f"election: margin {self.margin:g} s must be below the ttl"
                              f" {self.ttl} s")
        for name in ("renew_interval", "margin", "poll_interval", "hold_s"):
            v = getattr(self, name)
            if not v > 0:  # NaN too
                raise ConfigError(f"election: {name.removesuffix('_s')} must be > 0, got {v}")
        if self.hold_s + self.margin > self.ttl + 1e-9:
            raise ConfigError(f"election: hold {self.hold_s:g} s plus margin {self.margin:g} s"
                              f" must not exceed the ttl {self.ttl} s")
        if 2 * self.renew_interval > self.hold_s + 1e-9:
            raise ConfigError(
                f"election: renew interval {self.renew_interval:g} s is too long for a hold"
                f" of {self.hold_s:g} s: two intervals must fit in it, or one slow renewal"
                f" demotes a healthy leader")

    @property
    def hold_s(self) -> float:
        return self.ttl - self.margin if self.hold is None else self.hold

    @property
    def takeover_after(self) -> float:
        """How long a follower must see the same beat before it may remove the key."""
        return self.hold_s + self.margin

    @classmethod
    def from_ttl(cls, ttl: float, *, poll_interval: float = 0.05) -> ElectionTimings:
        """A renewal every 0.2 ttl, held 0.55 ttl, margin 0.25 ttl: with etcd's shortest
        lease (1 s), a silent leader's key is taken over 0.8 s after its last beat was
        read, and a renewal may take 0.2 s (an etcd write with its fsync) and fail once."""
        if not (ttl >= 1 and float(ttl).is_integer()):
            raise ConfigError(f"election: ttl must be a whole number of seconds >= 1 (etcd"
                              f" leases are), got {ttl!r}")
        whole = int(ttl)
        return cls(whole, 0.2 * whole, 0.25 * whole, poll_interval, hold=0.55 * whole)


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds the leader key, as read from etcd."""

    member_id: str
    url: str  # the holder's API URL, where followers redirect writes
    since: float  # wall-clock time of its campaign (time.time()), for display
    term: int  # the key's create_revision: grows with every new holder
    lease: int
    #: The key's mod_revision: its last beat (not part of equality: the same holder).
    beat: int = field(default=0, compare=False)

    @classmethod
    def from_kv(cls, kv: dict[str, Any]) -> LeaderInfo:
        try:
            value = json.loads(base64.b64decode(kv.get("value", "")))
            member, url, since = str(value["member"]), str(value["url"]), float(value["since"])
        except (ValueError, TypeError, KeyError):
            member, url, since = "?", "", 0.0  # not ours: still a holder, still a term
        return cls(member, url, since, int(kv.get("create_revision", 0)),
                   int(kv.get("lease", 0)), int(kv.get("mod_revision", 0)))


@dataclass(frozen=True)
class Tenure:
    """A leadership held: its term and lease, and the timing that bounds it.

    ``takeover_at`` (monotonic, this process's clock) is when the campaign's answer
    arrived. Every previous leader stopped acting by then: its key had to be gone before
    our create could apply, and it goes only ``margin`` after the leader's end (a lease
    expired at etcd, or a takeover after ``hold + margin`` without a beat) or when the
    leader resigns. So a lease an agent got from any previous
    leader was granted before ``takeover_at``; see `may_move_at`.
    """

    key: str
    info: LeaderInfo
    timings: ElectionTimings
    renewed_at: float  # send time of the campaign or of the last successful renewal
    takeover_at: float

    @property
    def term(self) -> int:
        return self.info.term

    @property
    def deadline(self) -> float:
        """Until when this member may act as the leader (see `ElectionTimings`)."""
        return self.renewed_at + self.timings.hold_s

    def valid(self, now: float) -> bool:
        return now < self.deadline

    def renewed(self, sent_at: float) -> Tenure:
        """After a renewal sent at ``sent_at`` was answered (a late answer to an older
        keepalive never moves the deadline back)."""
        return replace(self, renewed_at=max(self.renewed_at, sent_at))

    def next_renewal_at(self, last_sent: float, failed: bool) -> float:
        """When to send the next renewal: an interval after the last one, or a third of
        that after a failure, so that one lost answer does not cost the leadership."""
        interval = self.timings.renew_interval
        return last_sent + (interval / 3 if failed else interval)

    @property
    def guard(self) -> Guard:
        """The fencing token for `EtcdStore.guard`: writes apply only while this term's
        key, with this lease, still exists."""
        return Guard(self.key, self.info.term, self.info.lease)

    def may_move_at(self, longest_agent_lease: float, fencing_margin: float) -> float:
        """When this leader may first treat a silent host's VNFs as fenced and move
        them, whoever granted the host its lease: ``takeover_at`` plus the longest lease
        any manager grants plus the fencing margin (heartbeat latency and the agent's
        check period, as in `FaultTimings.fenced_after`). A lease granted by the
        previous leader was granted before ``takeover_at``, and one granted by this
        leader is honoured by the usual per-host rule, so the later of the two holds."""
        return self.takeover_at + longest_agent_lease + fencing_margin


@dataclass(frozen=True)
class Pending:
    """A campaign whose create may have been applied though its answer never came."""

    lease: int
    sent_at: float  # when the lease was granted (sent): its countdown began after this


class Action(enum.StrEnum):
    CAMPAIGN = "campaign"  # the key is absent: grant a lease and create it
    ADOPT = "adopt"  # the key holds our pending lease: our create did apply
    HOLD = "hold"  # leading, and may still act
    DEMOTE = "demote"  # stop acting now
    FOLLOW = "follow"  # someone else holds the key
    TAKE_OVER = "take-over"  # its holder's beats stopped: remove the key, then campaign
    WAIT = "wait"  # etcd did not answer, and we do not lead: retry


@dataclass(frozen=True)
class Step:
    action: Action
    reason: str


def decide(
    now: float,
    tenure: Tenure | None,
    observed: LeaderInfo | StoreError | None,
    pending: Pending | None,
    timings: ElectionTimings,
    campaign_after: float = 0.0,
    quiet: float = 0.0,
) -> Step:
    """One election cycle's decision from the leader key as read (``observed``: the
    holder, None if absent, or the read's error) and what this member holds. ``quiet``
    is how long this member has read the holder's current beat unchanged (see
    `ElectionTimings`). A member that just demoted itself campaigns again only from
    ``campaign_after``: what made it fail may still be there, and the healthy followers
    get the first try."""
    if tenure is not None:
        left = tenure.deadline - now
        if left <= 0:
            return Step(Action.DEMOTE, f"demoting self: no renewal of lease"
                        f" {tenure.info.lease} answered in time, leadership of term"
                        f" {tenure.term} ran out {max(0.0, -left):.3f} s ago (before a"
                        " successor can take over)")
        if isinstance(observed, StoreError):
            return Step(Action.HOLD, f"etcd unreadable ({observed}); still leading term"
                        f" {tenure.term} for {left:.3f} s unless a renewal gets through")
        if observed is None:
            return Step(Action.DEMOTE, f"demoting self: the leader key of term"
                        f" {tenure.term} is gone from etcd")
        if observed.term != tenure.term or observed.lease != tenure.info.lease:
            return Step(Action.DEMOTE, f"demoting self: the leader key is now term"
                        f" {observed.term} of {observed.member_id}, not our term"
                        f" {tenure.term}")
        return Step(Action.HOLD, f"leading term {tenure.term}, valid for {left:.3f} s")
    if isinstance(observed, StoreError):
        return Step(Action.WAIT, f"etcd unreadable ({observed}); not leading, will campaign"
                    " when it answers")
    if observed is None:
        if now < campaign_after:
            return Step(Action.WAIT, f"no leader; we just gave up the leadership, so the"
                        f" others get {campaign_after - now:.3f} s to campaign first")
        return Step(Action.CAMPAIGN, "no leader: campaigning")
    if pending is not None and observed.lease == pending.lease:
        if now < pending.sent_at + timings.hold_s:
            return Step(Action.ADOPT, f"our campaign's create did apply (term"
                        f" {observed.term}) though its answer was lost: leading")
        return Step(Action.FOLLOW, f"our campaign's create applied (term {observed.term})"
                    " but too late to act on it; waiting for its lease to expire")
    if quiet >= timings.takeover_after and now >= campaign_after:
        return Step(Action.TAKE_OVER, f"{observed.member_id} (term {observed.term}) has"
                    f" not beaten for {quiet:.3f} s (its leadership ran out"
                    f" {quiet - timings.hold_s:.3f} s ago): taking its key over")
    return Step(Action.FOLLOW, f"following {observed.member_id} (term {observed.term}) at"
                f" {observed.url or 'no URL'}")


@dataclass(frozen=True)
class Transition:
    """This member became the leader (``tenure`` set) or stopped being it."""

    leading: bool
    term: int
    reason: str
    tenure: Tenure | None


Listener = Callable[[Transition], None]


class LeaderElection:
    """Campaign for ``key`` among managers and keep it while this member is healthy.

    One task reads the key every ``poll_interval`` and acts on `decide`; while leading,
    another sends keepalives and a timer demotes at the deadline, so self-demotion does
    not wait for a poll or an etcd answer. Listeners (`add_listener`) are called in the
    loop at each change, before anything else runs: the manager cancels all its acting
    there. Before each act outside etcd, check `is_leader`; the store's writes are
    fenced by `guard` (set it on the `EtcdStore` on promotion and leave it after a
    demotion: a stale guard makes late writes fail, none would make them pass).

    ``client`` should time out within ``renew_interval`` (an unanswered keepalive is
    abandoned then; its thread runs until the client's timeout). Closing resigns: the
    lease is revoked, so the key goes at once and a follower takes over at its next
    poll.
    """

    def __init__(
        self,
        client: EtcdClient,
        key: str,
        member_id: str,
        ttl: float,
        *,
        url: str = "",
        timings: ElectionTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = key
        self.member_id = member_id
        self.url = url
        self.timings = timings or ElectionTimings.from_ttl(ttl)
        if self.timings.ttl != ttl:
            raise ConfigError(f"election: ttl {ttl} and timings.ttl {self.timings.ttl}"
                              " differ")
        self._clock = clock
        #: The holder as last read (us included); None if absent or not read yet.
        self.leader: LeaderInfo | None = None
        #: Why the last cycle did what it did.
        self.last_reason = "not started"
        #: When (the clock's) the leader key was last read from etcd (a linearizable
        #: read, so etcd's quorum answered then); None: never.
        self.read_ok_at: float | None = None
        #: Set while leading (cleared at demotion, before the listeners run).
        self.leading = asyncio.Event()
        self._tenure: Tenure | None = None
        self._pending: Pending | None = None
        self._listeners: list[Listener] = []
        self._executor = ThreadPoolExecutor(max_workers=4,
                                            thread_name_prefix=f"election-{member_id}")
        self._runner: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._warned_ttl = False
        self._closed = False
        self._campaign_after = 0.0
        #: The holder's beat as last read: (term, mod_revision, when first read).
        self._beat: tuple[int, int, float] | None = None
        #: Takeovers this member made (a holder silent past ``hold + margin``).
        self.takeovers = 0

    # --- public surface ----------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def is_leader(self, now: float | None = None) -> bool:
        """Whether this member may act as the leader at ``now`` (default: the clock's)."""
        tenure = self._tenure
        return tenure is not None and tenure.valid(self._clock() if now is None else now)

    @property
    def tenure(self) -> Tenure | None:
        return self._tenure

    @property
    def leadership_deadline(self) -> float | None:
        return None if self._tenure is None else self._tenure.deadline

    @property
    def term(self) -> int | None:
        """Our term (the key's create_revision) while leading."""
        return None if self._tenure is None else self._tenure.term

    @property
    def guard(self) -> Guard | None:
        return None if self._tenure is None else self._tenure.guard

    @property
    def takeover_at(self) -> float | None:
        """See `Tenure`: no previous leader acted after this (monotonic) moment."""
        return None if self._tenure is None else self._tenure.takeover_at

    async def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"election-{self.member_id}")

    async def close(self) -> None:
        """Stop campaigning and resign: demote (listeners run), then revoke the lease."""
        self._closed = True
        for task in (self._runner, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        lease = self._demote("resigning: closing")
        if lease is not None:
            await self._revoke(lease)
        pending, self._pending = self._pending, None
        if pending is not None and pending.lease != lease:
            await self._revoke(pending.lease)
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run_cycle(self) -> str:
        """Read the key, decide, act; returns the reason."""
        observed = await self._read()
        quiet = 0.0
        if not isinstance(observed, StoreError):
            read_at = self._clock()  # after etcd applied what it shows: never early
            self.leader = observed
            self.read_ok_at = read_at
            if observed is None:
                self._beat = None
            else:
                beat = (observed.term, observed.beat)
                if self._beat is None or self._beat[:2] != beat:
                    self._beat = (*beat, read_at)
                quiet = read_at - self._beat[2]
        step = decide(self._clock(), self._tenure, observed, self._pending, self.timings,
                      self._campaign_after, quiet)
        if step.action is Action.CAMPAIGN:
            return await self._campaign()
        if step.action is Action.TAKE_OVER and isinstance(observed, LeaderInfo):
            if await self._remove_silent(observed):
                self.takeovers += 1
                logger.warning("election %s: %s", self.member_id, step.reason)
                return await self._campaign()
            return f"{step.reason}; but it beat meanwhile: following it"
        if step.action is Action.ADOPT and self._pending is not None \
                and isinstance(observed, LeaderInfo):
            pending, self._pending = self._pending, None
            self._promote(observed, pending.sent_at, step.reason)
        elif step.action is Action.DEMOTE:
            self._demote(step.reason)
        return step.reason

    # --- the loops ---------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                reason = await self.run_cycle()
            except StoreError as exc:  # an answer we could not read: next cycle
                reason = f"election cycle failed: {exc}"
            if reason.split(",")[0] != self.last_reason.split(",")[0]:
                logger.info("election %s: %s", self.member_id, reason)
            self.last_reason = reason
            await asyncio.sleep(self.timings.poll_interval)

    async def _renew(self, tenure: Tenure) -> None:
        """Every ``renew_interval``: a keepalive and a beat at once; the leadership is
        extended (from their send time) only when both were answered and the beat
        applied. A beat refused means the key is no longer this term's: demote."""
        last_sent, failed, beats = tenure.renewed_at, False, 0
        while not self._closed and self._tenure is not None \
                and self._tenure.term == tenure.term:
            current = self._tenure
            await asyncio.sleep(max(0.0, current.next_renewal_at(last_sent, failed)
                                    - self._clock()))
            last_sent = self._clock()
            beats += 1
            keepalive, beat = await asyncio.gather(
                self._call("/lease/keepalive", {"ID": str(tenure.info.lease)},
                           idempotent=True, timeout=self.timings.renew_interval),
                self._beat_once(tenure, beats), return_exceptions=True)
            errors = [r for r in (keepalive, beat) if isinstance(r, BaseException)]
            for r in errors:
                if not isinstance(r, StoreError):
                    raise r
            if errors:
                failed = True
                logger.warning("election %s: renewal of term %d failed: %s",
                               self.member_id, tenure.term, errors[0])
                continue
            failed = False
            if self._tenure is None or self._tenure.term != tenure.term:
                return
            assert isinstance(keepalive, dict)
            if int((keepalive.get("result") or {}).get("TTL", 0)) <= 0:
                self._demote(f"demoting self: lease {tenure.info.lease} of term"
                             f" {tenure.term} is gone at etcd")
                return
            if beat is not True:
                self._demote(f"demoting self: the leader key is no longer term"
                             f" {tenure.term}'s (a follower took it over, or it expired)")
                return
            self._tenure = self._tenure.renewed(last_sent)
            self._arm_timer()

    async def _beat_once(self, tenure: Tenure, n: int) -> bool:
        """Rewrite the leader key, only while it is still this term's with our lease;
        followers read each beat as a new mod_revision. False: the key is not ours."""
        key = _b64(self.key)
        value = json.dumps({"member": self.member_id, "url": self.url,
                            "since": tenure.info.since, "beat": n})
        answer = await self._call("/kv/txn", {
            "compare": Guard(self.key, tenure.term, tenure.info.lease).compares(),
            "success": [{"request_put": {"key": key, "value": _b64(value),
                                         "lease": str(tenure.info.lease)}}],
        }, idempotent=False, timeout=self.timings.renew_interval)
        return bool(answer.get("succeeded"))

    async def _remove_silent(self, holder: LeaderInfo) -> bool:
        """Delete the leader key if it still shows the beat we read (same term, same
        mod_revision); True if we did. A beat applied first makes this fail."""
        key = _b64(self.key)
        answer = await self._call("/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(holder.term)},
                        {"key": key, "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(holder.beat)}],
            "success": [{"request_delete_range": {"key": key}}],
        }, idempotent=False, timeout=self.timings.hold_s)
        if answer.get("succeeded"):
            self._beat = None
            self._revoke_later(holder.lease)  # its lease holds nothing now; tidy
            return True
        return False

    # --- transitions -------------------------------------------------------------------

    def _promote(self, info: LeaderInfo, renewed_at: float, reason: str) -> None:
        tenure = Tenure(self.key, info, self.timings, renewed_at, self._clock())
        self._tenure = tenure
        self.leader = info
        self.leading.set()
        self._arm_timer()
        self._renewer = asyncio.create_task(self._renew(tenure),
                                            name=f"election-keepalive-{self.member_id}")
        logger.info("election %s: elected, term %d: %s", self.member_id, info.term, reason)
        self._notify(Transition(True, info.term, reason, tenure))

    def _demote(self, reason: str) -> int | None:
        """Stop leading at once; returns the lease, which is revoked in the background
        unless closing (close awaits it)."""
        tenure, self._tenure = self._tenure, None
        if tenure is None:
            return None
        self.leading.clear()
        self._campaign_after = self._clock() + self.timings.renew_interval
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
        logger.warning("election %s: no longer leading term %d: %s", self.member_id,
                       tenure.term, reason)
        self._notify(Transition(False, tenure.term, reason, None))
        if not self._closed:
            # Hands over before the lease would expire, when etcd answers; harmless if not.
            self._revoke_later(tenure.info.lease)
        return tenure.info.lease

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        tenure = self._tenure
        if tenure is None:
            return
        delay = max(0.0, tenure.deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        tenure = self._tenure
        if tenure is None:
            return
        if tenure.valid(self._clock()):  # woke a hair early: again
            self._arm_timer()
            return
        self._demote(decide(self._clock(), tenure, None, None, self.timings).reason)

    def _notify(self, transition: Transition) -> None:
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:  # one listener's bug must not keep the others from stopping
                logger.exception("election %s: listener %r failed", self.member_id,
                                 listener)

    # --- etcd --------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], *, idempotent: bool,
                    timeout: float | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, lambda: self.client.call(path, body, idempotent=idempotent))
        try:
            # Not wait_for: on 3.11 it swallows a cancel that comes as the call completes,
            # and close() would wait forever for the loop it cancelled.
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise StoreError(f"etcd {path}: no answer in {timeout:g} s") from None

    async def _read(self) -> LeaderInfo | StoreError | None:
        try:
            answer = await self._call("/kv/range", {"key": _b64(self.key)}, idempotent=True,
                                      timeout=self.timings.hold_s)
        except StoreError as exc:
            return exc
        kvs = answer.get("kvs") or []
        return LeaderInfo.from_kv(kvs[0]) if kvs else None

    async def _campaign(self) -> str:
        sent = self._clock()
        grant = await self._call("/lease/grant", {"TTL": self.timings.ttl},
                                 idempotent=False, timeout=self.timings.renew_interval)
        lease, granted = int(grant["ID"]), int(grant.get("TTL", 0))
        if granted > self.timings.ttl and not self._warned_ttl:
            self._warned_ttl = True
            logger.warning(
                "election %s: etcd raised the lease TTL from %d s to %d s (its minimum is"
                " 1.5 election timeouts, rounded up): a dead leader is replaced only after"
                " %d s; lower etcd's --election-timeout", self.member_id, self.timings.ttl,
                granted, granted)
        if self._pending is not None:
            await self._revoke(self._pending.lease)
        self._pending = Pending(lease, sent)
        key = _b64(self.key)
        value = json.dumps({"member": self.member_id, "url": self.url, "since": time.time()})
        answer = await self._call("/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(value),
                                         "lease": str(lease)}},
                        {"request_range": {"key": key}}],
            "failure": [{"request_range": {"key": key}}],
        }, idempotent=False, timeout=self.timings.hold_s)
        ranges = [(r.get("response_range") or {}).get("kvs") or []
                  for r in answer.get("responses") or []]
        kvs = next((k for k in ranges if k), [])
        holder = LeaderInfo.from_kv(kvs[0]) if kvs else None
        self.leader = holder
        if answer.get("succeeded") and holder is not None and holder.lease == lease:
            self._pending = None
            if not self._clock() < sent + self.timings.hold_s:
                self._revoke_later(lease)
                return f"won term {holder.term} too late to act on it (etcd answered after" \
                       " the deadline); giving it up"
            self._promote(holder, sent, f"won the campaign for {self.key}")
            return f"leading term {holder.term}: won the campaign"
        self._pending = None
        await self._revoke(lease)
        who = f"{holder.member_id} (term {holder.term})" if holder else "someone"
        return f"following {who}: lost the campaign"

    def _revoke_later(self, lease: int) -> None:
        task = asyncio.create_task(self._revoke(lease))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _revoke(self, lease: int) -> None:
        try:
            await self._call("/lease/revoke", {"ID": str(lease)}, idempotent=False,
                             timeout=self.timings.renew_interval)
        except StoreError as exc:  # already expired, or etcd away: it expires on its own
            logger.info("election %s: lease %d not revoked: %s", self.member_id, lease, exc)

