"""Prometheus metrics of a compute-node agent: what CRIU costs here, and how healthy it is.

The agent sees checkpoint and restore costs first-hand (the manager only sees the round
trip), so it exports CRIU's own frozen time and the image sizes; its contact with the
manager and its peers is what decides fencing, so that is exported too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nfvha.vim.agent import Agent

__all__ = ["AgentMetrics"]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_FROZEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)
_SIZE_BUCKETS = tuple(float(2 ** k) for k in range(20, 34))  # 1 MiB .. 8 GiB


class AgentMetrics:
    """One agent's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self, agent: Agent) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.checkpoint_duration = Histogram(
            "nfvha_agent_checkpoint_duration_seconds",
            "Checkpoint on this host: drain, CRIU dump, hashing and commit",
            buckets=_DURATION_BUCKETS, registry=r)
        self.checkpoint_frozen = Histogram(
            "nfvha_agent_checkpoint_frozen_seconds", "CRIU frozen time per checkpoint",
            buckets=_FROZEN_BUCKETS, registry=r)
        self.checkpoint_size = Histogram(
            "nfvha_agent_checkpoint_size_bytes", "Checkpoint image size",
            buckets=_SIZE_BUCKETS, registry=r)
        self.checkpoint_failures = Counter(
            "nfvha_agent_checkpoint_failures", "Checkpoints that failed on this host",
            registry=r)
        self.restore_duration = Histogram(
            "nfvha_agent_restore_seconds", "Restore on this host: verification, sandbox and "
            "CRIU restore", ["result"], buckets=_DURATION_BUCKETS, registry=r)
        self.heartbeats = Counter(
            "nfvha_agent_heartbeats", "Heartbeats sent to the manager, by result", ["result"],
            registry=r)
        self.fencings = Counter(
            "nfvha_agent_fencings", "Times this agent fenced itself (killed its VNFs)",
            registry=r)
        r.register(_AgentView(agent))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AgentView(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        states = GaugeMetricFamily("nfvha_agent_instances", "VNF instances here, by state",
                                   labels=["state"])
        counts: dict[str, int] = {}
        for inst in a.instances.values():
            counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], float(n))
        yield states
        lease = GaugeMetricFamily("nfvha_agent_host_lease_left_seconds",
                                  "Time until the host lease the guard holds runs out")
        guard_restarts = CounterMetricFamily("nfvha_agent_guard_restarts",
                                             "Lease guards this agent restarted after they died")
        guard_restarts.add_metric([], float(a.guard_restarts))
        if a.lease_file is not None:
            g = a.lease_file.guard()
            if g.host_until > 0:
                lease.add_metric([], g.host_until - time.monotonic())
        yield lease
        yield guard_restarts
        fenced = GaugeMetricFamily("nfvha_agent_fenced", "1 while this agent is fenced")
        fenced.add_metric([], 1.0 if a.fenced_at is not None else 0.0)
        yield fenced
        contact = GaugeMetricFamily("nfvha_agent_manager_silence_seconds",
                                    "Time since a heartbeat last reached the manager")
        last = a.last_manager_ok
        if last is not None:
            contact.add_metric([], time.monotonic() - last)
        yield contact
