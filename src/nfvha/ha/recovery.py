"""Recovery decisions: which strategy, on which host, from which checkpoints, and why.

Pure functions over a snapshot of the cluster, so every decision can be logged, stored
with its operation occurrence and tested without a cluster. Execution lives in the
manager; escalation walks the chain: the policy's strategies in order, then ``restart``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["RecoveryContext", "RecoveryDecision", "decide", "strategy_chain"]


@dataclass(frozen=True)
class RecoveryContext:
    """The cluster as the decision sees it."""

    failure: str  # process-exit | hang | host-loss | manual
    vnf_host: str | None  # where the failed copy ran
    hosts_up: frozenset[str]
    backups: tuple[str, ...]
    checkpoints: Mapping[str, Sequence[int]]  # host -> checkpoint seqs it holds, newest first
    standby_hosts: frozenset[str] = frozenset()
    restart_host: str | None = None  # placement's pick for a fresh instance
    failed: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (strategy, host)


@dataclass(frozen=True)
class RecoveryDecision:
    strategy: str
    target_host: str
    seqs: tuple[int, ...]  # checkpoints to try, newest first; empty for restart
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"strategy": self.strategy, "targetHost": self.target_host,
                "checkpoints": list(self.seqs), "reason": self.reason}


def strategy_chain(recovery: Mapping[str, Sequence[str]], failure: str) -> list[str]:
    """The policy's strategies for ``failure`` in order, always ending with ``restart``."""
    key = "process-exit" if failure == "manual" else failure
    chain: list[str] = []
    for s in [*recovery.get(key, ()), "restart"]:
        if s not in chain:
            chain.append(s)
    return chain


def decide(strategy: str, ctx: RecoveryContext) -> RecoveryDecision | str:
    """A decision for ``strategy``, or the reason it does not apply now."""
    if strategy == "restore-local":
        return _local(ctx)
    if strategy in ("restore-remote", "standby"):
        return _remote(strategy, ctx)
    if strategy == "restart":
        return _restart(ctx)
    return f"unknown strategy {strategy!r}"


def _local(ctx: RecoveryContext) -> RecoveryDecision | str:
    host = ctx.vnf_host
    if ctx.failure == "host-loss" or host is None or host not in ctx.hosts_up:
        return f"host {host} is not up, so nothing can be restored locally"
    if ("restore-local", host) in ctx.failed:
        return f"restore-local on {host} already failed"
    seqs = tuple(ctx.checkpoints.get(host, ()))
    if not seqs:
        return f"host {host} holds no checkpoint of this VNF"
    return RecoveryDecision("restore-local", host, seqs,
                            f"{ctx.failure} on {host}; its own checkpoint {seqs[0]} is newest "
                            "and local")


def _remote(strategy: str, ctx: RecoveryContext) -> RecoveryDecision | str:
    candidates = [h for h in ctx.hosts_up
                  if h != ctx.vnf_host and ctx.checkpoints.get(h)
                  and (strategy, h) not in ctx.failed]
    if strategy == "standby":
        candidates = [h for h in candidates if h in ctx.standby_hosts]
        if not candidates:
            return "no host holds a prepared standby of this VNF"
    if not candidates:
        return "no other live host holds a replica of a checkpoint"

    def rank(h: str) -> tuple[int, int, str]:
        newest = max(ctx.checkpoints[h])
        return (-newest, 0 if h in ctx.backups else 1, h)

    host = sorted(candidates, key=rank)[0]
    seqs = tuple(ctx.checkpoints[host])
    kind = "standby sandbox and staged images" if strategy == "standby" else "replica"
    return RecoveryDecision(strategy, host, seqs,
                            f"{ctx.failure} of {ctx.vnf_host}; {host} holds the newest {kind} "
                            f"(checkpoint {seqs[0]})")


def _restart(ctx: RecoveryContext) -> RecoveryDecision | str:
    if ctx.failure != "host-loss" and ctx.vnf_host in ctx.hosts_up \
            and ("restart", ctx.vnf_host) not in ctx.failed:
        return RecoveryDecision("restart", ctx.vnf_host, (),
                                f"fresh instance on {ctx.vnf_host}: state is lost")
    if ctx.restart_host and ("restart", ctx.restart_host) not in ctx.failed:
        return RecoveryDecision("restart", ctx.restart_host, (),
                                f"fresh instance on {ctx.restart_host}: state is lost")
    return "no live host can start a fresh instance"
