"""Leader election: the pure decisions on a fake clock, then campaigns among real
candidates on a throwaway etcd (1 s leases): who wins, self-demotion before a successor
wins, fencing of the deposed leader's writes, resignation, and etcd stopping."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from nfvha.errors import ConfigError
from nfvha.ha.election import (
    Action,
    ElectionTimings,
    LeaderElection,
    LeaderInfo,
    Pending,
    Tenure,
    Transition,
    decide,
)
from nfvha.store import EtcdStore, LeadershipLost, StoreError
from nfvha.store.etcd import EtcdClient
from tests.conftest import TEST_PREFIX
from tests.etcdmember import FAST_LEASES, etcd_process
from tests.test_store_contract import wipe_etcd_prefix

# --- pure decisions, fake clock ----------------------------------------------------------

T3 = ElectionTimings(3, renew_interval=1.0, margin=1.0)  # held 2 s (ttl - margin)


def tenure(renewed_at: float, term: int = 7, lease: int = 70) -> Tenure:
    return Tenure("/k/leader", LeaderInfo("a", "http://a", 0.0, term, lease), T3,
                  renewed_at, takeover_at=renewed_at)


def me(term: int = 7, lease: int = 70) -> LeaderInfo:
    return LeaderInfo("a", "http://a", 0.0, term, lease)


def test_timings_from_ttl_and_what_they_refuse() -> None:
    t = ElectionTimings.from_ttl(1)
    assert (t.ttl, t.renew_interval, t.margin, t.hold_s) == (
        1, pytest.approx(0.2), pytest.approx(0.25), pytest.approx(0.55))
    assert t.takeover_after == pytest.approx(0.8)  # before etcd's 1 s lease can expire
    with pytest.raises(ConfigError, match="must not exceed the ttl"):
        ElectionTimings(1, renew_interval=0.2, margin=0.5, hold=0.6)
    with pytest.raises(ConfigError, match="renew interval"):
        ElectionTimings(1, renew_interval=0.3, margin=0.25, hold=0.55)
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="whole number"):
            ElectionTimings.from_ttl(bad)
    with pytest.raises(ConfigError, match="renew interval"):
        ElectionTimings(3, renew_interval=1.5, margin=1.0)  # 2 * 1.5 > 3 - 1
    with pytest.raises(ConfigError, match="margin"):
        ElectionTimings(2, renew_interval=0.5, margin=2.0)


def test_deadline_counts_from_the_keepalive_sent_not_answered() -> None:
    t = tenure(renewed_at=10.0)
    assert t.deadline == 12.0  # 10 + ttl 3 - margin 1
    later = t.renewed(sent_at=11.0)  # answered at, say, 11.4: the send time counts
    assert later.deadline == 13.0
    assert later.renewed(sent_at=10.5).deadline == 13.0  # a late answer never moves it back
    assert t.valid(11.999) and not t.valid(12.0)


def test_keepalive_cadence_retries_sooner_after_a_failure() -> None:
    t = tenure(renewed_at=0.0)
    assert t.next_renewal_at(5.0, failed=False) == 6.0
    assert t.next_renewal_at(5.0, failed=True) == pytest.approx(5 + 1 / 3)


def test_a_leader_cut_off_from_etcd_holds_until_its_deadline_then_demotes() -> None:
    t = tenure(renewed_at=0.0)
    unreachable = StoreError("no member answered")
    steps = {now: decide(now, t, unreachable, None, T3) for now in (0.5, 1.99, 2.0, 2.5)}
    assert [s.action for s in steps.values()] == [Action.HOLD, Action.HOLD, Action.DEMOTE,
                                                  Action.DEMOTE]
    assert "still leading term 7 for 1.500 s" in steps[0.5].reason
    assert steps[2.0].reason.startswith("demoting self: no renewal")
    # Demoted, it keeps campaigning: waits while etcd is away, campaigns when it is back.
    assert decide(3.0, None, unreachable, None, T3).action is Action.WAIT
    assert decide(4.0, None, None, None, T3).action is Action.CAMPAIGN
    # Just demoted: the others get the first try.
    assert decide(4.0, None, None, None, T3, campaign_after=4.3).action is Action.WAIT
    assert decide(4.3, None, None, None, T3, campaign_after=4.3).action is Action.CAMPAIGN


def test_a_leader_demotes_when_its_key_is_gone_or_another_term() -> None:
    t = tenure(renewed_at=0.0)
    assert decide(0.5, t, me(), None, T3).action is Action.HOLD
    gone = decide(0.5, t, None, None, T3)
    assert (gone.action, gone.reason) == (
        Action.DEMOTE, "demoting self: the leader key of term 7 is gone from etcd")
    assert decide(0.5, t, LeaderInfo("b", "http://b", 0.0, 9, 90), None, T3).action \
        is Action.DEMOTE
    assert decide(0.5, t, me(lease=71), None, T3).action is Action.DEMOTE
    assert decide(2.5, t, me(), None, T3).action is Action.DEMOTE  # key still there: late


def test_a_follower_follows_and_adopts_only_a_timely_lost_answer() -> None:
    b = LeaderInfo("b", "http://b:8080", 0.0, 9, 90)
    follow = decide(1.0, None, b, None, T3)
    assert (follow.action, follow.reason) == (Action.FOLLOW,
                                              "following b (term 9) at http://b:8080")
    assert decide(1.0, None, b, Pending(lease=90, sent_at=0.5), T3).action is Action.ADOPT
    assert decide(2.5, None, b, Pending(lease=90, sent_at=0.5), T3).action is Action.FOLLOW
    assert decide(1.0, None, b, Pending(lease=91, sent_at=0.5), T3).action is Action.FOLLOW


def test_a_follower_takes_over_only_after_hold_plus_margin_without_a_beat() -> None:
    """The takeover rule: the holder's leadership ran out ``margin`` before the follower
    may remove its key (it read the last beat after the holder sent it)."""
    b = LeaderInfo("b", "http://b:8080", 0.0, 9, 90, beat=120)
    assert decide(5.0, None, b, None, T3, quiet=2.99).action is Action.FOLLOW
    step = decide(5.0, None, b, None, T3, quiet=3.0)
    assert step.action is Action.TAKE_OVER
    assert step.reason == ("b (term 9) has not beaten for 3.000 s (its leadership ran out"
                           " 1.000 s ago): taking its key over")
    # Not a member that just gave the leadership up; not over our own lost campaign.
    assert decide(5.0, None, b, None, T3, campaign_after=5.5, quiet=4.0).action \
        is Action.FOLLOW
    assert decide(5.0, None, b, Pending(lease=90, sent_at=4.9), T3, quiet=4.0).action \
        is Action.ADOPT
    # The beat is not part of who holds the key.
    assert b == LeaderInfo("b", "http://b:8080", 0.0, 9, 90, beat=121)


def test_a_new_leader_moves_vnfs_only_after_the_old_leases_ran_out() -> None:
    t = Tenure("/k", me(), T3, renewed_at=100.0, takeover_at=100.2)
    assert t.may_move_at(longest_agent_lease=2.0, fencing_margin=0.1) == pytest.approx(102.3)
    assert t.guard.key == "/k" and (t.guard.create_revision, t.guard.lease) == (7, 70)


# --- real candidates on a throwaway etcd --------------------------------------------------


@pytest.fixture
def prefix(fast_etcd: str) -> Iterator[str]:
    p = f"/{TEST_PREFIX}/{uuid.uuid4().hex}"
    yield p
    wipe_etcd_prefix(fast_etcd, p)


class Candidates:
    """Elections on one key, each with its own client, recording their transitions."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.all: list[LeaderElection] = []
        self.events: list[tuple[float, str, Transition]] = []

    async def add(self, name: str) -> LeaderElection:
        timings = ElectionTimings.from_ttl(1, poll_interval=0.02)
        client = EtcdClient([self.url], timeout=timings.renew_interval)
        e = LeaderElection(client, self.key, name, 1, url=f"http://{name}:8080",
                           timings=timings)
        e.add_listener(lambda t: self.events.append((time.monotonic(), name, t)))
        self.all.append(e)
        await e.start()
        return e

    def leaders(self) -> list[LeaderElection]:
        return [e for e in self.all if e.is_leader()]

    async def close(self) -> None:
        for e in self.all:
            await e.close()
            e.client.close()


@pytest.fixture
async def candidates(fast_etcd: str, prefix: str) -> AsyncIterator[Candidates]:
    c = Candidates(fast_etcd, f"{prefix}/leader")
    try:
        yield c
    finally:
        await c.close()


async def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic()


def freeze(e: LeaderElection) -> None:
    """What SIGSTOP does to a manager: nothing of its election runs any more."""
    for task in (e._runner, e._renewer):
        assert task is not None
        task.cancel()
    if e._timer is not None:
        e._timer.cancel()


async def leader_and_follower(c: Candidates) -> tuple[LeaderElection, LeaderElection]:
    """a leads; b started after it, and has read it."""
    a = await c.add("a")
    await until(a.is_leader, 3, "a leads")
    b = await c.add("b")
    await until(lambda: b.leader is not None, 1, "b follows")
    return a, b


async def test_one_of_three_candidates_wins_and_the_others_know_where(
        candidates: Candidates) -> None:
    for name in ("a", "b", "c"):
        await candidates.add(name)
    await until(lambda: len(candidates.leaders()) == 1, 3, "one leader")
    (leader,) = candidates.leaders()
    await until(lambda: all(e.leader is not None and e.leader.term == leader.term
                            for e in candidates.all), 1, "everyone reads the leader")
    assert {e.leader.member_id for e in candidates.all if e.leader} == {leader.member_id}
    assert {e.leader.url for e in candidates.all if e.leader} == \
        {f"http://{leader.member_id}:8080"}
    await asyncio.sleep(1.2)  # more than a TTL: the leadership holds, nobody else won
    assert candidates.leaders() == [leader]
    assert [t.leading for _, _, t in candidates.events] == [True]


async def test_a_stalled_leader_demotes_itself_before_a_successor_wins_its_writes_fail(
        candidates: Candidates, fast_etcd: str, prefix: str) -> None:
    a, b = await leader_and_follower(candidates)
    old = a.tenure
    assert old is not None
    freeze(a)
    stalled_at = time.monotonic()
    await until(b.is_leader, 3, "b takes over")
    new = b.tenure
    assert new is not None and new.term > old.term
    deadline = a.tenure.deadline if a.tenure else 0.0
    assert not a.is_leader(new.takeover_at), "two leaders at once"
    # Its own rule stopped it a margin before etcd could let anyone else in.
    assert deadline <= new.takeover_at - a.timings.margin
    assert deadline <= stalled_at + a.timings.hold_s
    # Taken over on the beats' silence, not after etcd expired the lease.
    assert b.takeovers == 1
    assert new.takeover_at - stalled_at < a.timings.takeover_after + 0.3
    with EtcdStore(fast_etcd, prefix=prefix, guard=old.guard) as store, \
            pytest.raises(LeadershipLost, match="no longer the one"):
        store.put("vnf", "v1", {"by": "a"})
    with EtcdStore(fast_etcd, prefix=prefix, guard=b.guard) as store:
        assert store.put("vnf", "v1", {"by": "b"}).data == {"by": "b"}


async def test_a_leader_whose_keepalives_stop_demotes_at_its_deadline(
        candidates: Candidates) -> None:
    a = await candidates.add("a")
    await until(a.is_leader, 3, "a leads")
    b = await candidates.add("b")
    assert a._renewer is not None
    a._renewer.cancel()  # its loop runs on; only renewals stop
    deadline = a.leadership_deadline
    assert deadline is not None
    demoted = await until(lambda: not a.leading.is_set(), 2, "a demotes itself")
    assert deadline <= demoted < deadline + 0.1
    await until(b.is_leader, 2, "b takes over")
    (a_down,) = [t for t, name, tr in candidates.events if name == "a" and not tr.leading]
    (b_up,) = [t for t, name, tr in candidates.events if name == "b" and tr.leading]
    assert a_down < b_up
    assert "demoting self" in [tr.reason for _, n, tr in candidates.events if n == "a"][-1]


async def test_a_takeover_fails_when_the_holder_beat_meanwhile(
        candidates: Candidates) -> None:
    """A follower removes the key only if it still shows the beat it read: a leader that
    beat in between keeps it, and keeps leading."""
    a, b = await leader_and_follower(candidates)
    seen = b.leader
    assert seen is not None
    await until(lambda: b.leader is not None and b.leader.beat > seen.beat, 1, "a beats")
    assert await b._remove_silent(seen) is False
    assert a.is_leader() and not b.is_leader()
    current = b.leader
    assert current is not None and await b._read() == current  # the key untouched


async def test_resigning_hands_over_at_once(candidates: Candidates) -> None:
    a, b = await leader_and_follower(candidates)
    start = time.monotonic()
    await a.close()
    took = await until(b.is_leader, 1, "b takes over") - start
    print(f"handover after resign: {took * 1000:.0f} ms")
    assert took < 0.25  # poll 20 ms, a revoke, a grant and a txn; slack for busy cores


async def test_etcd_stopped_the_leader_demotes_by_its_deadline_and_wins_again_after(
        prefix: str) -> None:
    with etcd_process(extra_args=FAST_LEASES) as member:
        c = Candidates(member.url, f"{prefix}/leader")
        try:
            a = await c.add("a")
            await until(a.is_leader, 3, "a leads")
            first = a.term
            os.kill(member.pid, signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                demoted = await until(lambda: not a.leading.is_set(), 2, "a demotes")
                assert demoted < stopped + a.timings.hold_s + 0.1
                assert demoted < stopped + a.timings.ttl  # before etcd could expire it
                await asyncio.sleep(0.5)  # well past the lease
                assert not a.is_leader()
            finally:
                os.kill(member.pid, signal.SIGCONT)
            await until(a.is_leader, 4, "a leads again")
            assert a.term is not None and first is not None and a.term > first
        finally:
            await c.close()
