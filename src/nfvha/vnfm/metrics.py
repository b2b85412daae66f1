"""Prometheus metrics of the manager, fed by its event bus and read from its state at scrape.

Counters and histograms follow events as they happen (a recovery finished, a checkpoint
was taken), so nothing is lost between scrapes; gauges that change continuously (the age
of each VNF's last checkpoint, host states, the forwarder's log depth) are computed when
Prometheus scrapes, from the manager's own view. Each manager has its own registry, so
several managers in one process (tests) never share series.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nfvha.vnfm.events import Event, EventKind

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

__all__ = ["CONTENT_TYPE", "ManagerMetrics", "iso_to_epoch"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Failover is measured in tens to hundreds of milliseconds; a slow one takes seconds.
_RECOVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                     5.0, 10.0, 30.0)
_CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_FROZEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)
_SIZE_BUCKETS = tuple(float(2 ** k) for k in range(20, 34))  # 1 MiB .. 8 GiB


def iso_to_epoch(text: str) -> float | None:
    """The manager's ``YYYY-mm-ddTHH:MM:SS.mmmZ`` timestamps as Unix time (UTC)."""
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return base + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except (ValueError, AttributeError):
        return None


def _epoch(value: Any) -> float | None:
    """Checkpoint times are Unix seconds; ISO strings are accepted too."""
    if isinstance(value, int | float):
        return float(value)
    return iso_to_epoch(value) if isinstance(value, str) else None


class ManagerMetrics:
    """The manager's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.recoveries = Counter(
            "nfvha_recoveries", "Recoveries finished, by failure type, strategy and result",
            ["failure", "strategy", "result"], registry=r)
        self.detection = Histogram(
            "nfvha_detection_seconds", "From the failure (exit, last heartbeat heard, first "
            "unanswered probe) to the manager knowing it", ["failure"],
            buckets=_RECOVERY_BUCKETS, registry=r)
        self.restore = Histogram(
            "nfvha_restore_seconds", "From the recovery decision to the VNF restored",
            ["strategy"], buckets=_RECOVERY_BUCKETS, registry=r)
        self.downtime = Histogram(
            "nfvha_downtime_seconds", "From the failure to the VNF answering its probe again",
            ["failure", "strategy"], buckets=_RECOVERY_BUCKETS, registry=r)
        self.checkpoint_duration = Histogram(
            "nfvha_checkpoint_duration_seconds", "Periodic checkpoint, hold to replicated",
            buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_frozen = Histogram(
            "nfvha_checkpoint_frozen_seconds", "Time the VNF was frozen by CRIU per checkpoint",
            buckets=_FROZEN_BUCKETS, registry=r)
        self.checkpoint_size = Histogram(
            "nfvha_checkpoint_size_bytes", "Checkpoint image size", buckets=_SIZE_BUCKETS,
            registry=r)
        self.checkpoint_failures = Counter(
            "nfvha_checkpoint_failures", "Periodic checkpoints that failed", registry=r)
        self.host_transitions = Counter(
            "nfvha_host_state_changes", "Host state changes seen by the manager", ["state"],
            registry=r)
        self.fences = Counter(
            "nfvha_fences", "Active fencing (STONITH) attempts by result", ["result"],
            registry=self.registry)
        self.fence_duration = Histogram(
            "nfvha_fence_duration_seconds", "Time a fence driver took to confirm power-off",
            registry=self.registry)
        self.alarms = Counter(
            "nfvha_alarms_raised", "Alarms raised, by fault type and severity",
            ["fault_type", "severity"], registry=r)
        r.register(_ViewCollector(manager))
        manager.events.listen(self.on_event)

    def on_event(self, ev: Event) -> None:
        if ev.kind == EventKind.OP:
            self._on_op(ev.data)
        elif ev.kind == EventKind.CHECKPOINT:
            d = ev.data
            if isinstance(d.get("durationMs"), int | float):
                self.checkpoint_duration.observe(d["durationMs"] / 1000)
            frozen_us = (d.get("criuStats") or {}).get("frozen_time_us")
            if isinstance(frozen_us, int | float):
                self.checkpoint_frozen.observe(frozen_us / 1e6)
            if isinstance(d.get("bytes"), int | float):
                self.checkpoint_size.observe(d["bytes"])
        elif ev.kind == EventKind.CHECKPOINT_FAILED:
            self.checkpoint_failures.inc()
        elif ev.kind == EventKind.HOST:
            self.host_transitions.labels(ev.data["state"]).inc()
        elif ev.kind == EventKind.ALARM_RAISED:
            self.alarms.labels(str(ev.data.get("faultType")),
                               str(ev.data.get("perceivedSeverity"))).inc()

    def _on_op(self, op: dict[str, Any]) -> None:
        if op.get("operation") != "HEAL" or not op.get("stateChanged"):
            return
        state = op.get("operationState")
        if state not in ("COMPLETED", "FAILED"):
            return
        n = op.get("nfvha") or {}
        failure = str(n.get("failureType", "unknown"))
        strategy = str(n.get("strategy", "none"))
        result = "failure" if state != "COMPLETED" else \
            "state-lost" if n.get("stateLost") else "success"  # a restart is no recovery
        self.recoveries.labels(failure, strategy, result).inc()
        if state != "COMPLETED":
            return
        phases = n.get("phases") or {}
        if isinstance(phases.get("detectMs"), int | float):
            self.detection.labels(failure).observe(phases["detectMs"] / 1000)
        if isinstance(phases.get("restoreMs"), int | float):
            self.restore.labels(strategy).observe(phases["restoreMs"] / 1000)
        if isinstance(phases.get("downtimeMs"), int | float):
            self.downtime.labels(failure, strategy).observe(phases["downtimeMs"] / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ViewCollector(Collector):
    """Gauges read from the manager's current view at each scrape."""

    def __init__(self, manager: Manager) -> None:
        self.m = manager

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets: let the registry call collect() instead

    def collect(self) -> Iterator[Metric]:
        view = self.m.view
        now = time.time()
        hosts = GaugeMetricFamily("nfvha_host_up", "1 if the manager sees the host UP",
                                  labels=["host"])
        host_state = GaugeMetricFamily("nfvha_host_state", "1 for the host's current state",
                                       labels=["host", "state"])
        silence = GaugeMetricFamily("nfvha_host_heartbeat_silence_seconds",
                                    "Time since the host's last heartbeat", labels=["host"])
        missed = CounterMetricFamily("nfvha_heartbeats_missed",
                                     "Heartbeats that did not arrive when due",
                                     labels=["host"])
        lease = GaugeMetricFamily("nfvha_host_lease_seconds",
                                  "Lease granted with the host's heartbeats: its agent fences "
                                  "after this long without contact (stretched under strain)",
                                  labels=["host"])
        for h in view.hosts():
            lease.add_metric([h.id], h.lease_s)
            st = h.state
            if st == "DOWN" and h.fenced_in_s is not None and h.fenced_in_s <= 0:
                st = "FENCED"
            hosts.add_metric([h.id], 1.0 if st == "UP" else 0.0)
            for s in ("UP", "SUSPECTED", "DOWN", "FENCED"):
                host_state.add_metric([h.id, s], 1.0 if s == st else 0.0)
            silence.add_metric([h.id], h.silence_s)
            missed.add_metric([h.id], float(h.heartbeats_missed))
        yield from (hosts, host_state, silence, missed, lease)

        vnf_state = GaugeMetricFamily("nfvha_vnf_state", "1 for the VNF's current HA state",
                                      labels=["vnf", "state", "host"])
        age = GaugeMetricFamily("nfvha_checkpoint_age_seconds",
                                "Age of the VNF's newest checkpoint", labels=["vnf"])
        last_size = GaugeMetricFamily("nfvha_checkpoint_last_size_bytes",
                                      "Size of the VNF's newest checkpoint", labels=["vnf"])
        newest: dict[str, dict[str, Any]] = {}
        for c in view.checkpoints():
            of = str(c.get("vnfInstanceId"))
            if of not in newest or c.get("seq", 0) > newest[of].get("seq", 0):
                newest[of] = c
        for vnf in view.vnfs():
            vnf_state.add_metric([vnf["id"], str(vnf.get("haState")),
                                  str(vnf.get("host") or "")], 1.0)
            cp = newest.get(vnf["id"])
            # Age of the protected state: from the freeze (cutAt), not the commit.
            created = _epoch(cp.get("cutAt") or cp.get("createdAt")) if cp else None
            if cp is not None and created is not None:
                age.add_metric([vnf["id"]], max(0.0, now - created))
                last_size.add_metric([vnf["id"]], float(cp.get("bytes", 0)))
        yield from (vnf_state, age, last_size)

        active = GaugeMetricFamily("nfvha_alarms_active", "Alarms not yet cleared",
                                   labels=["severity"])
        counts: dict[str, int] = {}
        for a in view.alarms():
            if a.get("alarmClearedTime") is None:
                sev = str(a.get("perceivedSeverity"))
                counts[sev] = counts.get(sev, 0) + 1
        for sev in ("CRITICAL", "MAJOR", "MINOR", "WARNING"):
            active.add_metric([sev], float(counts.get(sev, 0)))
        yield active

        packets = GaugeMetricFamily("nfvha_forwarder_log_packets",
                                    "Datagrams in the forwarder's packet log", labels=["vnf"])
        size = GaugeMetricFamily("nfvha_forwarder_log_bytes",
                                 "Bytes in the forwarder's packet log", labels=["vnf"])
        fill = GaugeMetricFamily("nfvha_forwarder_log_fill_ratio",
                                 "Packet log use against its byte bound (0..1)", labels=["vnf"])
        dropped = CounterMetricFamily("nfvha_forwarder_log_dropped",
                                      "Datagrams dropped because the packet log was full",
                                      labels=["vnf"])
        for vnf_id, fs in view.forwarder_logs().items():
            packets.add_metric([vnf_id], float(fs.log_packets))
            size.add_metric([vnf_id], float(fs.log_bytes))
            fill.add_metric([vnf_id], fs.log_fill)
            d = fs.stats.get("dropped_log_full")
            if d is not None:
                dropped.add_metric([vnf_id], float(d))
        yield from (packets, size, fill, dropped)

        events_dropped = CounterMetricFamily(
            "nfvha_events_dropped", "Events a slow observer (dashboard, notifier) missed")
        events_dropped.add_metric([], float(view.events_dropped))
        yield events_dropped
