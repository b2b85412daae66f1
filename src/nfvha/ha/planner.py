"""The HA decision core: a snapshot of hosts, VNFs and facts in, decisions out.

Shaped like Patroni's ``Ha.run_cycle``: the manager's loop gathers what it knows into a
`Snapshot`, `plan` returns the decisions with the reason for each, and the manager's
executors apply them beside the loop (spawning the long actions). Nothing here reads a
clock, a store or a socket, so every decision is tested from a snapshot
(``tests/test_planner.py``) and logged with the reason that the tests assert.

Three more pure judgements live here for the same reason: what an operator's request
does to a VNF that is busy (`plan_request`), whether a suspected host is lost
(`judge_suspect`, the second path), and what a restarted manager does with each VNF it
finds in the store (`plan_reconcile`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from nfvha.ha.lifecycle import VnfState

__all__ = [
    "BackOff", "CancelCheckpoint", "Checkpoint", "Decision", "DropFailure", "EndCrashLoop",
    "Failure", "KeepHostsUp", "Phase", "Plan", "Reconcile", "ReconcileStep", "Recover", "Request",
    "RequestPlan", "Retry", "RetryLater", "Snapshot", "StartProbe", "SuspectHost",
    "SuspectVerdict", "VnfFacts", "judge_suspect", "phase", "plan", "plan_reconcile",
    "plan_request",
]

RETRY_MAX_S = 30.0  # longest wait between tries to recover a FAILED VNF
CRASH_WINDOW_S = 10.0  # failing again this soon after a recovery is a crash loop
CRASH_BACKOFF_MAX_S = 300.0  # longest wait between recoveries of a crash-looping VNF
CRASH_ALARM_AT = 3  # crash-loop streak from which the alarm is raised


class Phase(StrEnum):
    """Every state the manager acts on for a VNF: the stored ``haState`` refined by the
    in-memory facts that used to hide in flags (a failure seen but not yet acted on, a
    checkpoint under way, a FAILED VNF waiting for its next try, a crash loop backing
    off). Shown as ``nfvha.phase`` in the instance view; the stored state, not this,
    is what survives a manager restart."""

    NOT_INSTANTIATED = "NOT_INSTANTIATED"
    INSTANTIATING = "INSTANTIATING"
    ACTIVE = "ACTIVE"
    CHECKPOINTING = "CHECKPOINTING"
    FAILURE_DETECTED = "FAILURE_DETECTED"
    RECOVERING = "RECOVERING"
    CRASH_LOOP = "CRASH_LOOP"
    MOVING = "MOVING"
    RETRY_WAIT = "RETRY_WAIT"
    FAILED = "FAILED"
    TERMINATING = "TERMINATING"


@dataclass(frozen=True)
class Failure:
    """A failure seen and not yet acted on."""

    kind: str  # process-exit | hang | host-loss
    detected_at: float  # wall time
    detail: str


@dataclass(frozen=True)
class VnfFacts:
    """What the loop knows of one VNF (monotonic times unless said otherwise)."""

    id: str
    state: VnfState
    busy: bool = False  # an action (checkpoint, recovery, move, ...) runs for it
    checkpointing: bool = False  # that action is a periodic checkpoint
    dumping: bool = False  # and it is in its dump (the VNF frozen), not queued or pushing
    failure: Failure | None = None
    retry_at: float | None = None  # FAILED: when to try again
    retries: int = 0
    retry_failure: str = "process-exit"
    #: FAILED with its retry due: whether some strategy applies now (None: not asked).
    recoverable: bool | None = None
    probe_enabled: bool = True
    probing: bool = False
    probe_failures: int = 0
    next_checkpoint: float = 0.0
    checkpoint_interval: float = 1.0
    recovered_at: float | None = None
    crash_streak: int = 0
    hold_until: float | None = None  # a crash-looping VNF waits until then
    injected_at: float | None = None  # a fault injected on purpose (inject API)


@dataclass(frozen=True)
class Snapshot:
    now: float
    grace: bool = False  # just started: silence and failures are not judged yet
    reconcile_due: bool = False  # restarted, not reconciled, every live host reported
    suspects: tuple[str, ...] = ()  # UP hosts silent past their suspicion time
    up_hosts: int = 0  # UP hosts, suspects excluded
    confirming: frozenset[str] = frozenset()  # suspects whose loss is being confirmed
    vnfs: tuple[VnfFacts, ...] = ()
    idle_wake: float = 0.2  # look at the VNFs at least this often


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    reason: str


@dataclass(frozen=True)
class Reconcile(Decision):
    """Align the store with what the hosts report (see `plan_reconcile`)."""


@dataclass(frozen=True)
class KeepHostsUp(Decision):
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuspectHost(Decision):
    host: str = ""


@dataclass(frozen=True)
class Recover(Decision):
    vnf: str = ""
    failure: Failure = field(default_factory=lambda: Failure("process-exit", 0.0, ""))
    crash_streak: int = 0  # the VNF's streak from now on


@dataclass(frozen=True)
class BackOff(Decision):
    """A crash-looping VNF waits ``delay`` before its next recovery (CrashLoopBackOff)."""

    vnf: str = ""
    failure: Failure = field(default_factory=lambda: Failure("process-exit", 0.0, ""))
    streak: int = 0
    delay: float = 0.0
    until: float = 0.0
    alarm: bool = False


@dataclass(frozen=True)
class CancelCheckpoint(Decision):
    """A failure is known while the VNF's periodic checkpoint waits for its host's dump
    slot or replicates (a push to a backup that crashed meanwhile waits out its timeout):
    the recovery must not wait for it. Never during the dump itself."""

    vnf: str = ""


@dataclass(frozen=True)
class DropFailure(Decision):
    vnf: str = ""


@dataclass(frozen=True)
class Retry(Decision):
    vnf: str = ""
    failure: str = ""
    attempt: int = 1


@dataclass(frozen=True)
class RetryLater(Decision):
    vnf: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class EndCrashLoop(Decision):
    vnf: str = ""


@dataclass(frozen=True)
class StartProbe(Decision):
    vnf: str = ""


@dataclass(frozen=True)
class Checkpoint(Decision):
    vnf: str = ""
    next_at: float = 0.0


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    due: float  # when the loop must look again though nothing woke it

    def of(self, vnf: str) -> list[Decision]:
        """The decisions about one VNF (tests and logs)."""
        return [d for d in self.decisions if getattr(d, "vnf", None) == vnf]


def phase(v: VnfFacts, now: float) -> Phase:
    """The VNF's full state (see `Phase`)."""
    if v.state == VnfState.FAILED:
        return Phase.RETRY_WAIT if v.retry_at is not None else Phase.FAILED
    if v.state == VnfState.RECOVERING and v.hold_until is not None and now < v.hold_until:
        return Phase.CRASH_LOOP
    if v.state == VnfState.ACTIVE:
        if v.failure is not None:
            return Phase.FAILURE_DETECTED
        if v.busy and v.checkpointing:
            return Phase.CHECKPOINTING
        if v.busy and not v.checkpointing:
            return Phase.RECOVERING  # a manual heal runs before it writes RECOVERING
    return Phase(v.state.value)


# -- the cycle -----------------------------------------------------------------------------


def plan(s: Snapshot) -> Plan:
    """One turn of the loop: host suspicions, then each VNF's next step."""
    out: list[Decision] = []
    due = s.now + s.idle_wake
    if s.reconcile_due and not s.grace:
        out.append(Reconcile("every live host has reported since the manager started"))
    if not s.grace:
        suspects = s.suspects
        if len(suspects) >= 2 and len(suspects) == s.up_hosts + len(suspects):
            out.append(KeepHostsUp(
                f"{len(suspects)} of {len(suspects)} hosts silent at once: the manager's "
                "own network or load is the likelier culprit, and there is nowhere to move "
                "VNFs to", hosts=tuple(sorted(suspects))))
        else:
            out += [SuspectHost("no heartbeat within its suspicion time", host=h)
                    for h in suspects if h not in s.confirming]
    for v in s.vnfs:
        step, wake = _vnf_step(v, s)
        out += step
        if wake is not None:
            due = min(due, wake)
    return Plan(tuple(out), due)


def _vnf_step(v: VnfFacts, s: Snapshot) -> tuple[list[Decision], float | None]:
    """The decisions for one VNF and when it next needs a look (None: nothing due)."""
    now = s.now
    if v.failure is not None:
        if v.busy and v.checkpointing and not v.dumping:
            return [CancelCheckpoint(f"a {v.failure.kind} is known: its recovery does not "
                                     "wait for a checkpoint that is queued or replicating",
                                     vnf=v.id)], now
        if v.busy or s.grace:
            return [], now  # handled once the running action or the start-up grace ends
        if v.state not in (VnfState.ACTIVE, VnfState.RECOVERING, VnfState.INSTANTIATING):
            return [DropFailure(f"a {v.failure.kind} of a {v.state} VNF needs no recovery",
                                vnf=v.id)], None
        return _on_failure(v, v.failure, now)
    if v.state == VnfState.FAILED:
        if v.busy or v.retry_at is None:
            return [], None
        if s.grace or now < v.retry_at:
            return [], v.retry_at
        if v.recoverable is False:
            at = now + min(RETRY_MAX_S, 2.0 ** v.retries)
            return [RetryLater("no strategy applies yet (no live host, no replica): look "
                               "again later without recording a failed operation",
                               vnf=v.id, at=at)], at
        return [Retry("every strategy failed last time; a transient cause (overload, a host "
                      "coming back) may have passed", vnf=v.id, failure=v.retry_failure,
                      attempt=v.retries + 1)], None
    if v.state != VnfState.ACTIVE:
        return [], None
    if v.busy:
        # A periodic checkpoint queued for its host's dump slot or replicating leaves the
        # VNF running, and it may hang meanwhile: it is probed all the same (a probe
        # missed during the dump itself is excused by the probe). Any other action (a
        # recovery, a move) decides about the VNF itself.
        if v.checkpointing and v.probe_enabled and not v.probing:
            return [StartProbe("probed while its checkpoint is queued or replicating",
                               vnf=v.id)], None
        return [], None
    out: list[Decision] = []
    if v.crash_streak and v.recovered_at is not None and \
            now - v.recovered_at > CRASH_WINDOW_S:
        out.append(EndCrashLoop(f"it ran {CRASH_WINDOW_S:g} s since its last recovery",
                                vnf=v.id))
    if v.probe_enabled and not v.probing:
        out.append(StartProbe("its health probe is not running", vnf=v.id))
    if now >= v.next_checkpoint:
        if v.probe_failures == 0:
            out.append(Checkpoint("its checkpoint interval has passed", vnf=v.id,
                                  next_at=now + v.checkpoint_interval))
            return out, None
        # A VNF failing its probes may be hung, and a checkpoint now would save the hang:
        # the probe decides first; look again each turn meanwhile.
        return out, now
    return out, v.next_checkpoint


def _on_failure(v: VnfFacts, f: Failure, now: float) -> tuple[list[Decision], float | None]:
    """Recover a failed VNF now, or make a crash-looping one wait (CrashLoopBackOff): a
    VNF that fails again within ``CRASH_WINDOW_S`` of its last recovery, twice or more in
    a row, is recovered after 1, 2, 4, ... up to 300 s, with a ``crash-loop`` alarm from
    the third time on. A command that exits at once was otherwise restarted hundreds of
    times a minute."""
    if v.hold_until is not None:
        if now < v.hold_until:
            return [], v.hold_until
        return [Recover(f"its crash-loop back-off is over ({f.detail})", vnf=v.id,
                        failure=f, crash_streak=v.crash_streak)], None
    injected = v.injected_at is not None and now - v.injected_at < CRASH_WINDOW_S
    if f.kind not in ("process-exit", "hang") or v.recovered_at is None or \
            now - v.recovered_at > CRASH_WINDOW_S or injected:
        why = ("a fault injected on purpose" if injected and f.kind in ("process-exit", "hang")
               else f"{f.kind}: {f.detail}")
        return [Recover(why, vnf=v.id, failure=f, crash_streak=v.crash_streak)], None
    streak = v.crash_streak + 1
    if streak < 2:  # once may be bad luck (two unrelated faults): recovered at once
        return [Recover(f"failed again {now - v.recovered_at:.1f} s after its last recovery,"
                        f" once: {f.detail}", vnf=v.id, failure=f, crash_streak=streak)], None
    delay = min(CRASH_BACKOFF_MAX_S, 2.0 ** (streak - 2))
    return [BackOff(f"failed again {now - v.recovered_at:.1f} s after its last recovery "
                    f"({f.detail}); next recovery in {delay:g} s", vnf=v.id, failure=f,
                    streak=streak, delay=delay, until=now + delay,
                    alarm=streak >= CRASH_ALARM_AT)], now + delay


# -- operator requests ---------------------------------------------------------------------


class Request(StrEnum):
    HEAL = "heal"
    TERMINATE = "terminate"
    MOVE = "move"


@dataclass(frozen=True)
class RequestPlan:
    """What an operator's request does: refused (``refusal`` says why, nothing changes),
    or run after cancelling the VNF's running action or after waiting for it."""

    refusal: str | None = None
    cancel_running: bool = False
    wait_running: bool = False
    reason: str = ""


def plan_request(req: Request, v: VnfFacts) -> RequestPlan:
    """An operator's heal, terminate or move, given what the VNF is doing. A heal or a
    terminate supersedes whatever runs (the operator's word is newer than the
    automatic decision; the superseded operation ends FAILED saying so); a move waits
    for a periodic checkpoint under way and is refused during anything else."""
    running = v.busy
    if req == Request.HEAL:
        if v.state in (VnfState.NOT_INSTANTIATED, VnfState.TERMINATING):
            return RequestPlan(refusal=f"VNF instance {v.id} is {v.state}: there is nothing "
                                       "to heal; instantiate it first")
        return RequestPlan(cancel_running=running, reason="a manual heal supersedes the "
                           "running action" if running else "heal requested")
    if req == Request.TERMINATE:
        if v.state == VnfState.NOT_INSTANTIATED:
            return RequestPlan(refusal=f"VNF instance {v.id} is not instantiated")
        return RequestPlan(cancel_running=running, reason="terminate supersedes the running "
                           "action" if running else "terminate requested")
    if v.state != VnfState.ACTIVE:
        return RequestPlan(refusal=f"VNF instance {v.id} is {v.state}: only an ACTIVE "
                                   "instance can be moved; try again once it is")
    if v.failure is not None:
        return RequestPlan(refusal=f"a failure of {v.id} is being handled ({v.failure.kind});"
                                   " move it once it is ACTIVE again")
    return RequestPlan(wait_running=running, reason="a checkpoint under way finishes first"
                       if running else "move requested")


# -- host loss: the second path ------------------------------------------------------------


@dataclass(frozen=True)
class SuspectVerdict:
    """``down``: the host is lost; ``retry``: nobody could tell, ask again next turn;
    neither: it stays UP. ``silence`` is the shortest time since anyone heard it."""

    down: bool
    retry: bool
    silence: float
    heard_by: Mapping[str, float]  # peer -> seconds since it last heard the host
    reason: str


def judge_suspect(host: str, *, own_silence: float, suspect_after: float, still_up: bool,
                  peers: Sequence[str], fresh: Mapping[str, float | None]) -> SuspectVerdict:
    """Whether a suspected host is lost: the manager's own silence and what the other
    hosts' guards last said of it (``fresh``: peer -> seconds since it heard ``host``,
    None if it did not say; only peers whose reports are fresh). A host some peer heard
    within the suspicion time is alive and not isolated, and stays UP. With peers but no
    fresh report, this manager may be the one cut off: ask again rather than move VNFs on
    a guess."""
    if peers and not fresh:
        return SuspectVerdict(False, True, own_silence, {},
                              f"host {host}: no other host reported lately; second path "
                              "retried")
    heard = {p: s for p, s in fresh.items() if s is not None}
    recent = min([own_silence, *heard.values()])
    if recent < suspect_after or still_up:
        who = ", ".join(f"{p} ({s * 1000:.0f} ms ago)" for p, s in heard.items()
                        if s < suspect_after) or "a new heartbeat"
        return SuspectVerdict(False, False, recent, heard,
                              f"heard by {who}: the manager's path is slow, the host is not "
                              "lost")
    how = (f"{len(heard)} other host(s) last heard it {min(heard.values()) * 1000:.0f} ms ago"
           if heard else "no other host could tell")
    return SuspectVerdict(True, False, recent, heard,
                          f"no contact for {recent * 1000:.0f} ms, over the suspicion time "
                          f"of {suspect_after * 1000:.0f} ms; {how}")


# -- reconcile after a manager restart -----------------------------------------------------


@dataclass(frozen=True)
class ReconcileStep:
    vnf: str
    remove_from: tuple[str, ...] = ()  # hosts running a duplicate copy
    adopt_on: str | None = None  # the copy kept: ACTIVE there
    was_moving: bool = False  # a move cut short: back to ACTIVE before recovery
    recover: Failure | None = None
    reason: str = ""


def plan_reconcile(vnf: str, state: VnfState, host: str | None, running_on: Sequence[str],
                   now_wall: float) -> ReconcileStep | None:
    """What a restarted manager does with one VNF it found in the store, once every live
    host has reported what it runs (``running_on``: UP hosts running a live copy). One
    copy is kept (on its recorded host if it runs there), others are removed; a VNF that
    runs nowhere is recovered like one that died. None: nothing to do."""
    if state in (VnfState.NOT_INSTANTIATED, VnfState.FAILED):
        return None
    keep = host if host in running_on else (running_on[0] if running_on else None)
    extra = tuple(h for h in running_on if h != keep)
    if keep is not None:
        adopt = keep if (state != VnfState.ACTIVE or keep != host) else None
        if not extra and adopt is None:
            return None
        return ReconcileStep(vnf, remove_from=extra, adopt_on=adopt,
                             reason=f"found running on {keep} after a manager restart"
                                    + (f"; duplicates on {', '.join(extra)}" if extra else ""))
    if state == VnfState.TERMINATING or host is None:
        return None
    return ReconcileStep(vnf, was_moving=state == VnfState.MOVING,
                         recover=Failure("process-exit", now_wall,
                                         f"runs nowhere after a manager restart (was on "
                                         f"{host})"),
                         reason="runs nowhere after a manager restart")
