"""Recovery decisions: which strategy, on which host, from which checkpoints, and why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from nfvha.descriptor import parse_descriptor
from nfvha.ha.recovery import RecoveryContext, RecoveryDecision, decide, strategy_chain

HOSTS = frozenset({"h1", "h2", "h3"})


def ctx(failure: str = "process-exit", vnf_host: str | None = "h1",
        hosts_up: frozenset[str] = HOSTS, backups: tuple[str, ...] = ("h2",),
        checkpoints: Mapping[str, Sequence[int]] | None = None, **kw: Any) -> RecoveryContext:
    if checkpoints is None:
        checkpoints = {"h1": [7, 6, 5], "h2": [6, 5], "h3": [5]}
    return RecoveryContext(failure=failure, vnf_host=vnf_host, hosts_up=hosts_up,
                           backups=backups, checkpoints=checkpoints, **kw)


def decision(strategy: str, c: RecoveryContext) -> RecoveryDecision:
    d = decide(strategy, c)
    assert isinstance(d, RecoveryDecision), d
    assert d.strategy == strategy
    assert d.reason.strip()
    return d


def not_applicable(strategy: str, c: RecoveryContext) -> str:
    d = decide(strategy, c)
    assert isinstance(d, str), d
    assert d.strip()
    return d


# -- the chain -------------------------------------------------------------------------


def test_chain_follows_the_policy_and_ends_with_restart() -> None:
    policy = {"hang": ["restore-local", "restore-remote"]}

    assert strategy_chain(policy, "hang") == ["restore-local", "restore-remote", "restart"]


def test_chain_has_no_duplicates_and_restart_stays_last() -> None:
    policy = {"hang": ["restart", "restore-local", "restore-local", "restart"]}

    assert strategy_chain(policy, "hang") == ["restart", "restore-local"]
    policy = {"hang": ["restore-local", "restore-local"]}
    assert strategy_chain(policy, "hang") == ["restore-local", "restart"]


def test_manual_heal_uses_the_process_exit_chain() -> None:
    policy = {"process-exit": ["restore-local", "standby"], "hang": ["restore-remote"]}

    assert strategy_chain(policy, "manual") == ["restore-local", "standby", "restart"]


def test_failure_without_policy_still_restarts() -> None:
    assert strategy_chain({}, "host-loss") == ["restart"]


def test_default_policy_chains_from_a_descriptor() -> None:
    d = parse_descriptor({"id": "fw", "command": ["fw"], "network": {"address": "10.0.0.2/8"}})

    assert strategy_chain(d.ha.recovery, "host-loss") == ["restore-remote", "restart"]
    assert strategy_chain(d.ha.recovery, "process-exit")[0] == "restore-local"


# -- restore-local ---------------------------------------------------------------------


def test_restore_local_uses_own_checkpoints_newest_first() -> None:
    d = decision("restore-local", ctx())

    assert d.target_host == "h1"
    assert d.seqs == (7, 6, 5)
    assert "7" in d.reason
    assert d.as_dict() == {"strategy": "restore-local", "targetHost": "h1",
                           "checkpoints": [7, 6, 5], "reason": d.reason}


def test_restore_local_does_not_apply_on_host_loss() -> None:
    reason = not_applicable("restore-local", ctx(failure="host-loss"))

    assert "not up" in reason


def test_restore_local_does_not_apply_when_host_is_down() -> None:
    assert "not up" in not_applicable("restore-local", ctx(hosts_up=frozenset({"h2", "h3"})))


def test_restore_local_needs_a_local_checkpoint() -> None:
    reason = not_applicable("restore-local", ctx(checkpoints={"h2": [4]}))

    assert "no checkpoint" in reason


def test_restore_local_is_not_retried_after_it_failed() -> None:
    reason = not_applicable("restore-local", ctx(failed=frozenset({("restore-local", "h1")})))

    assert "already failed" in reason


# -- restore-remote and standby ----------------------------------------------------------


def test_restore_remote_picks_host_with_newest_checkpoint() -> None:
    c = ctx(backups=("h2",), checkpoints={"h1": [9], "h2": [5, 4], "h3": [6, 5]})

    d = decision("restore-remote", c)

    assert d.target_host == "h3"
    assert d.seqs == (6, 5)
    assert "h3" in d.reason


def test_restore_remote_prefers_a_backup_on_ties() -> None:
    c = ctx(backups=("h3",), checkpoints={"h2": [6], "h3": [6]})

    assert decision("restore-remote", c).target_host == "h3"


def test_restore_remote_never_targets_the_failed_host() -> None:
    c = ctx(failure="hang", checkpoints={"h1": [9], "h2": [3]})

    assert decision("restore-remote", c).target_host == "h2"


def test_restore_remote_skips_hosts_that_are_down() -> None:
    c = ctx(failure="host-loss", hosts_up=frozenset({"h2"}),
            checkpoints={"h1": [9], "h2": [3], "h3": [8]})

    assert decision("restore-remote", c).target_host == "h2"


def test_restore_remote_skips_hosts_where_it_already_failed() -> None:
    c = ctx(checkpoints={"h2": [8], "h3": [5]},
            failed=frozenset({("restore-remote", "h2"), ("standby", "h3")}))

    assert decision("restore-remote", c).target_host == "h3"


def test_restore_remote_with_no_replica_elsewhere() -> None:
    reason = not_applicable("restore-remote", ctx(checkpoints={"h1": [7], "h2": []}))

    assert "no other live host" in reason


def test_standby_requires_a_standby_host() -> None:
    c = ctx(failure="host-loss", checkpoints={"h2": [8], "h3": [5]})

    assert "standby" in not_applicable("standby", c)


def test_standby_uses_the_standby_host_even_if_another_is_newer() -> None:
    c = ctx(failure="host-loss", checkpoints={"h2": [8], "h3": [5]},
            standby_hosts=frozenset({"h3"}))

    d = decision("standby", c)

    assert d.target_host == "h3"
    assert d.seqs == (5,)


def test_standby_on_the_failed_host_does_not_count() -> None:
    c = ctx(failure="host-loss", standby_hosts=frozenset({"h1"}))

    not_applicable("standby", c)


# -- restart ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["process-exit", "hang", "manual"])
def test_restart_stays_on_the_old_host_when_it_is_up(failure: str) -> None:
    d = decision("restart", ctx(failure=failure, restart_host="h3"))

    assert d.target_host == "h1"
    assert d.seqs == ()
    assert "state is lost" in d.reason


def test_restart_after_host_loss_goes_to_placements_pick() -> None:
    d = decision("restart", ctx(failure="host-loss", restart_host="h3"))

    assert d.target_host == "h3"
    assert d.seqs == ()


def test_restart_moves_when_the_old_host_failed_to_restart() -> None:
    c = ctx(restart_host="h2", failed=frozenset({("restart", "h1")}))

    assert decision("restart", c).target_host == "h2"


def test_restart_without_any_host() -> None:
    reason = not_applicable("restart", ctx(failure="host-loss", restart_host=None))

    assert "no live host" in reason


def test_unknown_strategy_is_explained() -> None:
    assert "unknown strategy" in not_applicable("reboot", ctx())


# -- walking the chain -----------------------------------------------------------------


def test_host_loss_chain_walks_to_the_first_applicable_strategy() -> None:
    c = ctx(failure="host-loss", hosts_up=frozenset({"h2", "h3"}),
            checkpoints={"h1": [9], "h2": [8, 7]}, restart_host="h3")
    chain = strategy_chain({"host-loss": ["restore-local", "standby", "restore-remote"]},
                           "host-loss")

    outcomes = [decide(s, c) for s in chain]

    assert [isinstance(o, str) for o in outcomes] == [True, True, False, False]
    first = next(o for o in outcomes if isinstance(o, RecoveryDecision))
    assert (first.strategy, first.target_host, first.seqs) == ("restore-remote", "h2", (8, 7))
