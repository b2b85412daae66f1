"""The decision core from snapshots: what the manager decides, and why, without a cluster."""

from __future__ import annotations

import pytest

from nfvha.ha.lifecycle import VnfState
from nfvha.ha.planner import (
    BackOff,
    CancelCheckpoint,
    Checkpoint,
    DropFailure,
    EndCrashLoop,
    Failure,
    KeepHostsUp,
    Phase,
    Reconcile,
    Recover,
    Request,
    Retry,
    RetryLater,
    Snapshot,
    StartProbe,
    SuspectHost,
    VnfFacts,
    judge_suspect,
    phase,
    plan,
    plan_reconcile,
    plan_request,
)

NOW = 1000.0
EXIT = Failure("process-exit", 5.0, "VNF process exited (code 1) on h1")
HANG = Failure("hang", 5.0, "3 probes unanswered")
LOSS = Failure("host-loss", 5.0, "host h1 lost")


def vnf(**kw: object) -> VnfFacts:
    base: dict[str, object] = {"id": "fw", "state": VnfState.ACTIVE, "probing": True,
                               "next_checkpoint": NOW + 0.5}
    return VnfFacts(**{**base, **kw})  # type: ignore[arg-type]


def snap(*vnfs: VnfFacts, **kw: object) -> Snapshot:
    return Snapshot(**{"now": NOW, "vnfs": vnfs, "up_hosts": 3, "idle_wake": 60.0,
                       **kw})  # type: ignore[arg-type]


# -- hosts ------------------------------------------------------------------------------


def test_a_silent_host_is_suspected_once() -> None:
    p = plan(snap(suspects=("h1",), up_hosts=2))
    assert [type(d) for d in p.decisions] == [SuspectHost]
    assert p.decisions[0].host == "h1"  # type: ignore[attr-defined]
    assert plan(snap(suspects=("h1",), up_hosts=2, confirming=frozenset({"h1"}))).decisions == ()


def test_every_host_silent_at_once_blames_the_manager() -> None:
    (d,) = plan(snap(suspects=("h1", "h2", "h3"), up_hosts=0)).decisions
    assert isinstance(d, KeepHostsUp) and d.hosts == ("h1", "h2", "h3")
    assert "manager" in d.reason


def test_one_of_one_host_silent_is_suspected() -> None:
    """A single host going silent is no evidence against the manager."""
    (d,) = plan(snap(suspects=("h1",), up_hosts=0)).decisions
    assert isinstance(d, SuspectHost)


def test_nothing_is_judged_during_the_start_up_grace() -> None:
    p = plan(snap(vnf(failure=EXIT), suspects=("h1",), up_hosts=2, grace=True,
                  reconcile_due=True))
    assert p.decisions == ()
    assert p.due == NOW  # looked at again as soon as the grace ends


def test_reconcile_once_every_host_reported() -> None:
    assert isinstance(plan(snap(reconcile_due=True)).decisions[0], Reconcile)


@pytest.mark.parametrize("fresh, own, down, retry", [
    ({"h2": 0.05}, 0.5, False, False),  # a peer heard it lately: the manager's path is slow
    ({"h2": 0.9}, 0.5, True, False),  # nobody heard it: lost
    ({"h2": None}, 0.5, True, False),  # the peer did not say: the manager's silence counts
    ({}, 0.5, False, True),  # peers exist but none reported lately: ask again
])
def test_host_loss_is_confirmed_on_a_second_path(
        fresh: dict[str, float | None], own: float, down: bool, retry: bool) -> None:
    v = judge_suspect("h1", own_silence=own, suspect_after=0.3, still_up=False,
                      peers=["h2"], fresh=fresh)
    assert (v.down, v.retry) == (down, retry)
    if down:
        assert v.silence == pytest.approx(min([own, *(s for s in fresh.values() if s)]))
        assert "no contact" in v.reason


def test_host_loss_without_a_second_path_rests_on_the_managers_silence() -> None:
    v = judge_suspect("h1", own_silence=0.5, suspect_after=0.3, still_up=False, peers=[],
                      fresh={})
    assert v.down and "no other host could tell" in v.reason
    v = judge_suspect("h1", own_silence=0.5, suspect_after=0.3, still_up=True, peers=[],
                      fresh={})
    assert not v.down  # a new heartbeat arrived meanwhile


# -- failures and recovery --------------------------------------------------------------


def test_a_failure_is_recovered_with_its_reason() -> None:
    p = plan(snap(vnf(failure=EXIT)))
    (d,) = p.of("fw")
    assert isinstance(d, Recover) and d.failure == EXIT and EXIT.detail in d.reason
    assert phase(vnf(failure=EXIT), NOW) == Phase.FAILURE_DETECTED


def test_a_failure_waits_for_the_running_action() -> None:
    """A dump under way ends first (the recovery would race it)."""
    p = plan(snap(vnf(failure=HANG, busy=True, checkpointing=True, dumping=True)))
    assert p.of("fw") == [] and p.due == NOW


def test_a_failure_of_a_vnf_being_terminated_is_dropped() -> None:
    (d,) = plan(snap(vnf(state=VnfState.TERMINATING, failure=EXIT))).of("fw")
    assert isinstance(d, DropFailure)


def test_a_second_quick_failure_backs_off_and_the_third_raises_the_alarm() -> None:
    recently = NOW - 2.0
    (first,) = plan(snap(vnf(failure=EXIT, recovered_at=recently))).of("fw")
    assert isinstance(first, Recover) and first.crash_streak == 1  # once may be bad luck
    (second,) = plan(snap(vnf(failure=EXIT, recovered_at=recently, crash_streak=1))).of("fw")
    assert isinstance(second, BackOff) and (second.delay, second.alarm) == (1.0, False)
    (third,) = plan(snap(vnf(failure=EXIT, recovered_at=recently, crash_streak=2))).of("fw")
    assert isinstance(third, BackOff) and (third.delay, third.alarm) == (2.0, True)
    (late,) = plan(snap(vnf(failure=EXIT, recovered_at=recently, crash_streak=20))).of("fw")
    assert isinstance(late, BackOff) and late.delay == 300.0


def test_a_backing_off_vnf_waits_then_recovers() -> None:
    held = vnf(state=VnfState.RECOVERING, failure=EXIT, crash_streak=3, hold_until=NOW + 4,
               recovered_at=NOW - 2)
    p = plan(snap(held))
    assert p.of("fw") == [] and p.due == NOW + 4
    assert phase(held, NOW) == Phase.CRASH_LOOP
    (d,) = plan(snap(held, now=NOW + 4)).of("fw")
    assert isinstance(d, Recover) and d.crash_streak == 3


@pytest.mark.parametrize("kw", [
    {"failure": LOSS, "recovered_at": NOW - 2},  # a host loss is no crash loop
    {"failure": EXIT, "recovered_at": NOW - 60},  # it ran long enough in between
    {"failure": EXIT, "recovered_at": NOW - 2, "injected_at": NOW - 1},  # injected on purpose
])
def test_not_a_crash_loop(kw: dict[str, object]) -> None:
    (d,) = plan(snap(vnf(crash_streak=1, **kw))).of("fw")
    assert isinstance(d, Recover) and d.crash_streak == 1


def test_a_crash_loop_ends_once_the_vnf_ran_long_enough() -> None:
    ds = plan(snap(vnf(crash_streak=3, recovered_at=NOW - 11))).of("fw")
    assert any(isinstance(d, EndCrashLoop) for d in ds)
    assert not any(isinstance(d, EndCrashLoop)
                   for d in plan(snap(vnf(crash_streak=3, recovered_at=NOW - 9))).of("fw"))


def test_a_failed_vnf_is_retried_when_due_with_growing_waits_while_nothing_applies() -> None:
    failed = vnf(state=VnfState.FAILED, retry_at=NOW + 3, retries=2)
    p = plan(snap(failed))
    assert p.of("fw") == [] and p.due == NOW + 3
    assert phase(failed, NOW) == Phase.RETRY_WAIT
    (later,) = plan(snap(vnf(state=VnfState.FAILED, retry_at=NOW, retries=2,
                             recoverable=False))).of("fw")
    assert isinstance(later, RetryLater) and later.at == NOW + 4.0
    (capped,) = plan(snap(vnf(state=VnfState.FAILED, retry_at=NOW, retries=9,
                              recoverable=False))).of("fw")
    assert isinstance(capped, RetryLater) and capped.at == NOW + 30.0
    (retry,) = plan(snap(vnf(state=VnfState.FAILED, retry_at=NOW, retries=2, recoverable=True,
                             retry_failure="host-loss"))).of("fw")
    assert isinstance(retry, Retry) and (retry.failure, retry.attempt) == ("host-loss", 3)


def test_a_failed_vnf_without_a_retry_waits_for_the_operator() -> None:
    failed = vnf(state=VnfState.FAILED, retry_at=None)
    assert plan(snap(failed)).of("fw") == [] and phase(failed, NOW) == Phase.FAILED


# -- the steady state -------------------------------------------------------------------


def test_a_healthy_vnf_is_probed_and_checkpointed_on_time() -> None:
    p = plan(snap(vnf(probing=False)))
    assert [type(d) for d in p.of("fw")] == [StartProbe]
    assert p.due == NOW + 0.5  # its next checkpoint
    (d,) = plan(snap(vnf(next_checkpoint=NOW, checkpoint_interval=2.0))).of("fw")
    assert isinstance(d, Checkpoint) and d.next_at == NOW + 2.0
    assert plan(snap(vnf(probe_enabled=False, probing=False))).of("fw") == []


def test_a_vnf_failing_its_probes_is_not_checkpointed() -> None:
    """It may be hung: a checkpoint now would save the hang."""
    p = plan(snap(vnf(next_checkpoint=NOW, probe_failures=1)))
    assert p.of("fw") == [] and p.due == NOW


def test_a_busy_vnf_gets_no_new_action() -> None:
    busy = vnf(next_checkpoint=NOW, probing=True, busy=True, checkpointing=True)
    assert plan(snap(busy)).of("fw") == []
    assert phase(busy, NOW) == Phase.CHECKPOINTING


def test_every_decision_says_why() -> None:
    p = plan(snap(vnf(id="a", failure=EXIT), vnf(id="b", probing=False, next_checkpoint=NOW),
                  vnf(id="c", state=VnfState.FAILED, retry_at=NOW, recoverable=False),
                  suspects=("h1",), up_hosts=2, reconcile_due=True))
    assert len(p.decisions) == 6
    assert all(d.reason for d in p.decisions)


# -- operator requests ------------------------------------------------------------------


def test_a_manual_heal_during_an_automatic_one_supersedes_it() -> None:
    p = plan_request(Request.HEAL, vnf(state=VnfState.RECOVERING, busy=True))
    assert p.refusal is None and p.cancel_running


def test_terminate_during_instantiate_cancels_the_instantiate() -> None:
    p = plan_request(Request.TERMINATE, vnf(state=VnfState.INSTANTIATING, busy=True))
    assert p.refusal is None and p.cancel_running


@pytest.mark.parametrize("req, kw, refused", [
    (Request.HEAL, {"state": VnfState.NOT_INSTANTIATED}, "nothing to heal"),
    (Request.HEAL, {"state": VnfState.TERMINATING}, "nothing to heal"),
    (Request.TERMINATE, {"state": VnfState.NOT_INSTANTIATED}, "not instantiated"),
    (Request.MOVE, {"state": VnfState.RECOVERING}, "only an ACTIVE"),
    (Request.MOVE, {"failure": HANG}, "being handled (hang)"),
])
def test_requests_that_cannot_work_are_refused(req: Request, kw: dict[str, object],
                                               refused: str) -> None:
    p = plan_request(req, vnf(**kw))
    assert p.refusal is not None and refused in p.refusal
    assert not p.cancel_running


def test_a_move_waits_for_a_checkpoint_under_way() -> None:
    p = plan_request(Request.MOVE, vnf(busy=True, checkpointing=True))
    assert p.refusal is None and p.wait_running and not p.cancel_running


# -- reconcile after a manager restart --------------------------------------------------


def test_reconcile_keeps_one_copy_on_its_recorded_host() -> None:
    step = plan_reconcile("fw", VnfState.ACTIVE, "h1", ["h2", "h1"], 7.0)
    assert step is not None and step.remove_from == ("h2",) and step.adopt_on is None


def test_reconcile_adopts_a_copy_found_elsewhere() -> None:
    step = plan_reconcile("fw", VnfState.RECOVERING, "h1", ["h3"], 7.0)
    assert step is not None and step.adopt_on == "h3" and step.recover is None


def test_reconcile_recovers_a_vnf_that_runs_nowhere() -> None:
    step = plan_reconcile("fw", VnfState.MOVING, "h1", [], 7.0)
    assert step is not None and step.was_moving
    assert step.recover is not None and step.recover.kind == "process-exit"
    assert "was on h1" in step.recover.detail


@pytest.mark.parametrize("state, host, running", [
    (VnfState.ACTIVE, "h1", ["h1"]),  # all as recorded
    (VnfState.FAILED, "h1", []),  # FAILED VNFs are retried, not reconciled
    (VnfState.TERMINATING, "h1", []),  # the terminate finishes on its own
    (VnfState.INSTANTIATING, None, []),  # never placed
])
def test_reconcile_leaves_alone(state: VnfState, host: str | None, running: list[str]) -> None:
    assert plan_reconcile("fw", state, host, running, 7.0) is None


# -- hangs around checkpoints (the campaign's undetected hangs) ---------------------------


def test_a_vnf_is_probed_while_its_checkpoint_is_queued_or_replicating() -> None:
    """The VNF runs meanwhile and may hang: before, no probe started until the checkpoint
    task ended, which a push to a crashed backup could hold for 60 s."""
    (d,) = plan(snap(vnf(busy=True, checkpointing=True, probing=False))).of("fw")
    assert isinstance(d, StartProbe)
    assert plan(snap(vnf(busy=True, checkpointing=False, probing=False))).of("fw") == []


def test_a_known_failure_cancels_a_queued_or_replicating_checkpoint_but_not_a_dump() -> None:
    (d,) = plan(snap(vnf(failure=HANG, busy=True, checkpointing=True))).of("fw")
    assert isinstance(d, CancelCheckpoint) and "hang" in d.reason
    assert plan(snap(vnf(failure=HANG, busy=True, checkpointing=True, dumping=True))
                ).of("fw") == []
    assert plan(snap(vnf(failure=HANG, busy=True))).of("fw") == []  # a recovery, a move
