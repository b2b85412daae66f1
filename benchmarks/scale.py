#!/usr/bin/env python3
"""Scale: detection time, checkpoint lag and manager cost with 10, 50 and 100 protected VNFs.

A 5-host testbed with the HA manager (``nfvscale``, 10.253.0.0/16), fresh for each VNF
count N, runs N sample flow monitors (``examples/vnfs/flowmon.py``), each deployed through
the manager's SOL003 API with 1 backup, a checkpoint every ``--interval`` s (default 2.0,
the descriptor's default) and a UDP health probe at the descriptor's default timings. The
manager and agents run with their default fault-detection timings (heartbeat 50 ms,
suspicion 150 ms, fencing 250 ms). Per N:

1. **deploy**: the VNFs are instantiated one after the other (the placement counts only
   VNFs already placed, so concurrent instantiations would all land on one host), each
   until ACTIVE; the time per VNF is recorded;
2. **warm-up**: until every VNF has a checkpoint (bounded);
3. **steady window**: every second the manager's and agents' CPU (utime+stime from
   /proc/<pid>/stat, and their cgroups, which include the CRIU children), the manager's RSS
   and run-queue wait, and every checkpoint the manager records (``GET
   /nfvha/v1/checkpoints``; retention 3 and a 1 s poll see every one). Checkpoint lag is
   the actual time between consecutive checkpoints of a VNF against the configured
   interval, and the age of each VNF's newest checkpoint sampled every second (what a
   failure at that moment would lose). The manager allows one dump per host at a time
   (dump, hashing, commit and push to the backup), so each host has a dump-rate ceiling:
   the report sets the rate each host achieved against the rate its VNFs need;
4. **process-exit detection**: SIGKILL of single VNF processes (from the root pid
   namespace, as a crash would), spread over the hosts, one at a time; detection is the
   HEAL occurrence's ``detected`` minus the kill;
5. **host-loss detection**: a host with about N/5 VNFs crashes (``Testbed.crash_host``:
   uplink cut, every process killed); detection is ``detected`` minus the crash; *all
   serving* is the last VNF's ``serving`` and *all answering* the last first PONG that a
   client pinging each of them every 10 ms saw. The host is revived (same disk) and the
   next repetition crashes another one.

Manager and agents log lines about suspected hosts, loop stalls, fencing and failed
checkpoints are counted per phase: at scale they are the first signs of trouble.

Writes ``results/scale.{json,md,png}`` and ``docs/img/scale.png``. Needs root and CRIU.
Not a test. Usage::

    .venv/bin/python benchmarks/scale.py [--quick] [--counts 10,50,100] [--interval 2.0]
                                         [--out DIR] [--no-doc-img]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nfvha.demo import python_vnf
from nfvha.ha.fault import FaultTimings
from nfvha.testbed import Testbed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    REPO,
    RESULTS,
    BenchError,
    install_signal_handlers,
    manager_call,
    manager_client,
    other_netns,
    percentile,
    pin_bridge_macs,
    proc_cpu,
    proc_rss_mib,
    progress,
    publish,
    save_figure,
    signals_ignored,
    source_digest,
    testbed_down,
    testbed_machine,
    timed,
    wait_for,
)
from _common import fmt_num as _f  # short: it fills the report tables

FLOWMON = REPO / "examples" / "vnfs" / "flowmon.py"

TB_NAME = "nfvscale"
TB_SUBNET = "10.253.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench-scale")
N_HOSTS = 5

QUERY_PORT = 5001
MIN_INTERVAL = 2.0  # the descriptor's default checkpoint_interval
AGGREGATE_RATE = 2.5  # checkpoints/s asked of the whole testbed (0.5 per host) by default
WINDOW_INTERVALS = 2.5  # the steady window covers at least this many intervals
# The manager's health probe of each VNF: UDP PING/PONG at the descriptor's default timings.
HA_PROBE = {"type": "udp", "port": QUERY_PORT, "send": "PING", "expect": "PONG",
            "interval": 0.2, "timeout": 0.1, "failure_threshold": 3}
VNF_RESOURCES = {"memory": "64Mi", "cpu": 0.25}

SAMPLE_PERIOD = 1.0  # s between samples of CPU, memory and checkpoints
PING_PERIOD = 0.01  # the client's ping of each VNF of a crashed host
HTTP_TIMEOUT = 15.0
DEPLOY_TIMEOUT = 30.0  # per VNF
HEAL_TIMEOUT = 30.0  # per killed VNF
HOST_HEAL_TIMEOUT = 90.0  # for every VNF of a crashed host
TESTBED_TIMEOUT = 60.0

MIB = 1024 * 1024
_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...]
    fixed_interval: float | None  # None: scaled with N (see interval_for)
    warmup_max_s: float
    window_s: float
    kills: int
    host_crashes: int
    settle_max_s: float  # after a revived host, until moved VNFs are checkpointed again
    quiet_wait_s: float  # before each N: wait (at most this) for the load to drop
    quick: bool

    def interval_for(self, n: int) -> float:
        """The configured checkpoint interval at N VNFs.

        Scaled by default so that the checkpoint work asked of the machine is the same at
        every N (N / interval = AGGREGATE_RATE checkpoints/s): each checkpoint of a flowmon
        costs about 0.3 CPU-seconds here (mostly the agents' own Python), so a fixed 2 s
        at 20+ VNFs asks more than the 2 vCPUs that the 5 emulated hosts share, and the
        starved daemons then fence each other (seen in development; `--interval 2` shows it).
        """
        if self.fixed_interval is not None:
            return self.fixed_interval
        return max(MIN_INTERVAL, n / AGGREGATE_RATE)

    def window_for(self, n: int) -> float:
        """At least WINDOW_INTERVALS checkpoint intervals, so every VNF shows some."""
        if self.quick:
            return self.window_s
        return max(self.window_s, WINDOW_INTERVALS * self.interval_for(n))


def interval_policy(plan: Plan) -> str:
    if plan.fixed_interval is not None:
        return f"fixed {plan.fixed_interval} s"
    return (f"scaled: max({MIN_INTERVAL} s, N / {AGGREGATE_RATE}) (the same checkpoint "
            f"demand, {AGGREGATE_RATE}/s, at every N)")


def make_plan(quick: bool, counts: tuple[int, ...] | None, interval: float | None) -> Plan:
    if quick:
        return Plan(counts or (5, 10), interval, warmup_max_s=8, window_s=8, kills=2,
                    host_crashes=1, settle_max_s=0, quiet_wait_s=0, quick=True)
    return Plan(counts or (10, 50, 100), interval, warmup_max_s=90, window_s=60, kills=8,
                host_crashes=3, settle_max_s=30, quiet_wait_s=120, quick=False)


# -- the manager's API -----------------------------------------------------------------------


class Api:
    """Synchronous client of the manager; every call has a timeout."""

    def __init__(self, tb: Testbed) -> None:
        self.manager = manager_client(tb, HTTP_TIMEOUT)

    def close(self) -> None:
        self.manager.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        return manager_call(self.manager, method, path, **kw)

    def vnf(self, iid: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", f"/vnflcm/v1/vnf_instances/{iid}")
        return res

    def vnfs(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", "/vnflcm/v1/vnf_instances")
        return res

    def checkpoints(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", "/nfvha/v1/checkpoints")
        return res

    def heals(self, iid: str | None = None) -> list[dict[str, Any]]:
        ops = self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs",
                        params={"vnfInstanceId": iid} if iid else None)
        return [o for o in ops if o["operation"] == "HEAL"]

    def host_states(self) -> dict[str, str]:
        return {h["id"]: h["state"] for h in self.call("GET", "/nfvha/v1/hosts")}

    def deploy(self, desc: dict[str, Any], iid: str) -> dict[str, Any]:
        self.call("POST", "/nfvha/v1/vnfds", json=desc)
        self.call("POST", "/vnflcm/v1/vnf_instances", json={"vnfdId": desc["id"],
                                                            "vnfInstanceId": iid})
        self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})
        try:
            vnf: dict[str, Any] = wait_for(lambda: _active(self.vnf(iid)), DEPLOY_TIMEOUT,
                                           f"{iid} ACTIVE after instantiate", every=0.02)
        except BenchError as exc:
            ops = self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": iid})
            why = [o.get("error", {}).get("detail") for o in ops
                   if o["operation"] == "INSTANTIATE" and o.get("error")]
            raise BenchError(f"{exc}: {why[-1] if why else 'no error recorded'}") from exc
        return vnf


def _active(v: dict[str, Any]) -> dict[str, Any] | None:
    if v["haState"] in ("FAILED", "NOT_INSTANTIATED"):
        raise BenchError(f"{v['id']} is {v['haState']} after instantiate")
    return v if v["haState"] == "ACTIVE" else None


def descriptor(i: int, address: str, interval: float) -> dict[str, Any]:
    return {"id": f"scale-{i:03d}", **python_vnf(FLOWMON),
            "network": {"address": address}, "resources": VNF_RESOURCES,
            "ha": {"checkpoint_interval": interval, "backups": 1, "probe": HA_PROBE}}


def _iid(i: int) -> str:
    return f"sc{i:03d}"


def _ts(op: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in op.get("nfvha", {}).get("timestamps", {}).items()}


# -- process and cgroup figures --------------------------------------------------------------






def proc_wait(pid: int | None) -> float:
    """Seconds the threads of a process spent runnable but waiting for a CPU (schedstat)."""
    if pid is None:
        return math.nan
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return math.nan
    for t in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[1]) / 1e9
    return total


def cgroup_cpu(tb: Testbed, path: str) -> float:
    try:
        return float(tb.cgroups.cgroup(path).usage().cpu_seconds)
    except Exception:  # gone (a crashed host) or not readable: not measured
        return math.nan


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(f[:8])
    return (total - f[3] - f[4]) / _TCK, total / _TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def check_manager_pid(tb: Testbed) -> int:
    pid = tb.manager_pid
    if pid is None or "nfvha manager" not in _cmdline(pid):
        raise BenchError(f"manager pid {pid} is not the manager ({_cmdline(pid or 0)!r})")
    return int(pid)


# -- logs ------------------------------------------------------------------------------------


LOG_PATTERNS = {
    "host_suspected": ("manager", " suspected: "),
    "host_declared_down": ("manager", "DOWN after"),
    "host_stays_up": ("manager", "stays UP"),
    "all_hosts_silent": ("manager", "hosts silent at once"),
    "manager_loop_stall": ("manager", "manager loop stalled"),
    "checkpoint_failed": ("manager", "checkpoint of "),
    "replication_failed": ("manager", "replicating "),
    "recovery_attempt_failed": ("manager", "recovery of "),
    "agent_fenced": ("agent", "fenced: "),
}


class LogMark:
    """Where the manager's and agents' logs end now, to count what a phase added."""

    def __init__(self, tb: Testbed) -> None:
        self.paths = [tb.log_dir / "manager.log",
                      *(tb.log_dir / f"agent-{h}.log" for h in tb.hosts)]
        self.offsets = {p: _size(p) for p in self.paths}

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(LOG_PATTERNS, 0)
        examples: dict[str, str] = {}
        for p in self.paths:
            who = "manager" if p.stem == "manager" else "agent"
            with contextlib.suppress(OSError), p.open("rb") as f:
                f.seek(self.offsets[p])
                for line in f.read(20_000_000).decode(errors="replace").splitlines():
                    for key, (src, needle) in LOG_PATTERNS.items():
                        if src == who and needle in line and (
                                key not in ("checkpoint_failed", "recovery_attempt_failed")
                                or " failed" in line):
                            out[key] += 1
                            examples.setdefault(key, f"{p.stem}: {line[-300:]}")
        out["examples"] = examples
        return out


def log_warnings(tb: Testbed, keep: int = 40) -> dict[str, list[str]]:
    """The last WARNING/ERROR lines of each daemon's log, kept before the testbed (and its
    logs) go: what explains a failure or an anomaly."""
    out: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for p in sorted(tb.log_dir.glob("*.log")):
            lines = [ln[-400:] for ln in p.read_text(errors="replace").splitlines()
                     if " WARNING " in ln or " ERROR " in ln]
            if lines:
                out[p.stem] = lines[-keep:]
    return out


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


# -- the testbed -----------------------------------------------------------------------------


def _testbed() -> Testbed:
    return Testbed(name=TB_NAME, n_hosts=N_HOSTS, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True)


def _up(tb: Testbed) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(tb.down())  # leftovers of an interrupted run
    asyncio.run(tb.up(timeout=TESTBED_TIMEOUT))
    pin_bridge_macs(tb)  # a crashed host's uplink must not change the bridge's MAC


def _down(tb: Testbed) -> None:
    testbed_down(tb, "scale")


# -- the steady window -----------------------------------------------------------------------


class CheckpointLog:
    """Every checkpoint the manager has recorded, from repeated polls of its API."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, int], dict[str, Any]] = {}  # (vnf, host, seq)
        self.poll_ms: list[float] = []

    def poll(self, api: Api) -> None:
        t0 = time.perf_counter()
        cps = api.checkpoints()
        self.poll_ms.append((time.perf_counter() - t0) * 1000)
        for c in cps:
            key = (c["vnfInstanceId"], c["host"], int(c["seq"]))
            if key not in self.seen:
                stats = c.get("criuStats") or {}
                self.seen[key] = {"vnf": key[0], "host": key[1], "seq": key[2],
                                  "at": float(c["createdAt"]), "bytes": c.get("bytes"),
                                  "replicas": len(c.get("replicas", [])),
                                  "dump_wall_ms": float(stats.get("wall_seconds", math.nan))
                                  * 1000,
                                  "frozen_ms": float(stats.get("frozen_time_us", math.nan))
                                  / 1000}

    def by_vnf(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.seen.values():
            out.setdefault(c["vnf"], []).append(c)
        for cs in out.values():
            cs.sort(key=lambda c: c["at"])
        return out

    def newest(self) -> dict[str, float]:
        return {v: cs[-1]["at"] for v, cs in self.by_vnf().items()}


def cpu_sample(tb: Testbed, mgr_pid: int) -> dict[str, Any]:
    busy, total = machine_cpu()
    hosts = [h for h in tb.hosts.values() if h.state == "up"]
    return {
        "t": time.time(),
        "manager_cpu_s": proc_cpu(mgr_pid),
        "manager_wait_s": proc_wait(mgr_pid),
        "manager_rss_mib": proc_rss_mib(mgr_pid),
        "manager_cgroup_cpu_s": cgroup_cpu(tb, f"{TB_NAME}/manager"),
        "agent_cpu_s": {h.host_id: proc_cpu(tb.agent_process(h.host_id)) for h in hosts},
        "agent_rss_mib": {h.host_id: proc_rss_mib(tb.agent_process(h.host_id))
                          for h in hosts},
        "agent_cgroup_cpu_s": {h.host_id: cgroup_cpu(tb, f"{h.cgroup}/agent") for h in hosts},
        "vnf_cgroup_cpu_s": {h.host_id: cgroup_cpu(tb, f"{h.cgroup}/vnf") for h in hosts},
        "machine_busy_s": busy, "machine_total_s": total,
        "load1": os.getloadavg()[0],
    }


def _rate_pct(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """CPU use between two samples as % of one core (sums per-host dicts)."""
    dt = b["t"] - a["t"]
    va, vb = a[key], b[key]
    if isinstance(va, dict):
        common = set(va) & set(vb)
        va = sum(va[h] for h in common)
        vb = sum(vb[h] for h in common)
    return (vb - va) / dt * 100 if dt > 0 else math.nan


def steady_window(tb: Testbed, api: Api, window_s: float, interval: float, mgr_pid: int,
                  cps: CheckpointLog, placement: dict[str, str]) -> dict[str, Any]:
    """CPU, memory and checkpoint lag over ``window_s`` of undisturbed operation."""
    mark = LogMark(tb)
    heals_before = len(api.heals())
    polls_before = len(cps.poll_ms)
    samples = [cpu_sample(tb, mgr_pid)]
    ages: list[float] = []
    t0 = samples[0]["t"]
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        time.sleep(max(0.0, min(SAMPLE_PERIOD, end - time.monotonic())))
        cps.poll(api)
        now = time.time()
        newest = cps.newest()
        ages += [now - newest[v] if v in newest else now - t0 for v in placement]
        samples.append(cpu_sample(tb, mgr_pid))
    t1 = samples[-1]["t"]
    a, b = samples[0], samples[-1]
    n_cpu = os.cpu_count() or 1
    cpu = {
        "manager_pct": _rate_pct(a, b, "manager_cpu_s"),
        "manager_cgroup_pct": _rate_pct(a, b, "manager_cgroup_cpu_s"),
        "manager_runqueue_wait_pct": _rate_pct(a, b, "manager_wait_s"),
        "agents_pct": _rate_pct(a, b, "agent_cpu_s"),
        "agents_cgroup_pct": _rate_pct(a, b, "agent_cgroup_cpu_s"),
        "vnfs_pct": _rate_pct(a, b, "vnf_cgroup_cpu_s"),
        "machine_busy_pct": (b["machine_busy_s"] - a["machine_busy_s"])
        / max(1e-9, b["machine_total_s"] - a["machine_total_s"]) * 100,
        "agent_pct_per_host": {h: (b["agent_cpu_s"][h] - a["agent_cpu_s"][h]) / (t1 - t0) * 100
                               for h in a["agent_cpu_s"]},
        "cores": n_cpu,
    }
    rss = [s["manager_rss_mib"] for s in samples]
    mem = {"manager_rss_mib": {"median": percentile(rss, 50), "max": max(rss),
                               "start": rss[0], "end": rss[-1]},
           "agents_rss_mib_sum": sum(b["agent_rss_mib"].values())}
    lag = checkpoint_lag(cps, placement, interval, t0, t1, ages)
    # CPU per checkpoint: the agents' cgroups hold CRIU and the transfers, nothing else.
    lag["agents_cpu_ms_per_checkpoint"] = (
        cpu["agents_cgroup_pct"] * 10 / lag["achieved_total_per_s"]
        if lag["achieved_total_per_s"] else math.nan)
    lag["machine_ceiling_per_s"] = (
        (os.cpu_count() or 1) * 1000 / lag["agents_cpu_ms_per_checkpoint"]
        if lag["agents_cpu_ms_per_checkpoint"] else math.nan)
    heals = api.heals()
    return {"t0": t0, "t1": t1, "window_s": t1 - t0, "cpu": cpu, "memory": mem,
            "checkpoint": lag, "load1": [s["load1"] for s in samples],
            "spurious_heals": len(heals) - heals_before,
            "spurious_heal_detail": [o.get("nfvha", {}).get("detail") for o in heals
                                     [heals_before:]][:10],
            "api_poll_ms": describe(cps.poll_ms[polls_before:]),
            "log": mark.counts(), "samples": samples}


def checkpoint_lag(cps: CheckpointLog, placement: dict[str, str], interval: float,
                   t0: float, t1: float, ages: list[float]) -> dict[str, Any]:
    """Actual intervals between a VNF's consecutive checkpoints that ended in [t0, t1],
    their ratio to the configured interval, the newest checkpoint's age, and each host's
    achieved checkpoint rate against the rate its VNFs need (the one-dump-per-host slot)."""
    intervals: list[float] = []
    missed = 0
    without = 0
    by = cps.by_vnf()
    for v in placement:
        cs = by.get(v, [])
        if not any(t0 <= c["at"] <= t1 for c in cs):
            without += 1
        for prev, cur in itertools.pairwise(cs):
            if not t0 <= cur["at"] <= t1:
                continue
            if prev["host"] == cur["host"] and cur["seq"] != prev["seq"] + 1:
                missed += 1  # a checkpoint came and went between two polls: not an interval
                continue
            intervals.append(cur["at"] - prev["at"])
    in_window = [c for c in cps.seen.values() if t0 <= c["at"] <= t1]
    span = t1 - t0
    per_host: dict[str, dict[str, Any]] = {}
    for h in sorted(set(placement.values())):
        mine = sorted(c["at"] for c in in_window if c["host"] == h)
        n_vnfs = sum(1 for x in placement.values() if x == h)
        achieved = len(mine) / span if span > 0 else math.nan
        required = n_vnfs / interval
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(mine)]
        per_host[h] = {"vnfs": n_vnfs, "achieved_per_s": achieved, "required_per_s": required,
                       "keeps_up": achieved >= 0.9 * required,
                       "commit_gap_ms_median": percentile(gaps, 50)}
    saturated = [h for h, v in per_host.items() if not v["keeps_up"]]
    ceilings = [per_host[h]["achieved_per_s"] for h in saturated]
    return {
        "interval_s": describe(intervals),
        "ratio": describe([x / interval for x in intervals]),
        "excess_s": describe([x - interval for x in intervals]),
        "age_s": describe(ages),
        "age_ratio": describe([x / interval for x in ages]),
        "intervals": len(intervals),
        "missed_between_polls": missed,
        "vnfs_without_checkpoint_in_window": without,
        "checkpoints_in_window": len(in_window),
        "achieved_total_per_s": len(in_window) / span if span > 0 else math.nan,
        "required_total_per_s": len(placement) / interval,
        "per_host": per_host,
        "saturated_hosts": len(saturated),
        "per_host_ceiling_per_s": percentile(ceilings, 50),
        "host_commit_gap_ms": describe([v["commit_gap_ms_median"] for v in per_host.values()]),
        "dump_wall_ms": describe([c["dump_wall_ms"] for c in in_window]),
        "frozen_ms": describe([c["frozen_ms"] for c in in_window]),
        "image_mib": percentile([c["bytes"] / MIB for c in in_window if c["bytes"]], 50),
        "single_replica": sum(1 for c in in_window if c["replicas"] < 2),
    }


# -- faults ----------------------------------------------------------------------------------


def _heal_row(op: dict[str, Any], t_fail: float) -> dict[str, Any]:
    n = op.get("nfvha", {})
    ts = _ts(op)
    row: dict[str, Any] = {"vnf": op["vnfInstanceId"], "state": op["operationState"],
                           "failure_type": n.get("failureType"), "strategy": n.get("strategy"),
                           "target": n.get("targetHost"), "checkpoint": n.get("checkpoint")}
    for k in ("detected", "decided", "restored", "serving"):
        row[f"{k}_ms"] = (ts[k] - t_fail) * 1000 if k in ts else None
    return row


def _new_heal(api: Api, iid: str, seen: set[str]) -> dict[str, Any] | None:
    return next((o for o in api.heals(iid) if o["id"] not in seen
                 and o["operationState"] in ("COMPLETED", "FAILED")), None)


def kill_processes(api: Api, plan: Plan, placement: dict[str, str]) -> list[dict[str, Any]]:
    """SIGKILL single VNF processes, one at a time, spread over the hosts."""
    by_host: dict[str, list[str]] = {}
    for v, h in sorted(placement.items()):
        by_host.setdefault(h, []).append(v)
    order = [vs[i] for i in range(max(map(len, by_host.values()), default=0))
             for vs in by_host.values() if i < len(vs)]
    out: list[dict[str, Any]] = []
    skipped: list[str] = []
    for iid in order:
        if len(out) >= plan.kills:
            break
        row: dict[str, Any] = {"rep": len(out), "vnf": iid, "ok": False}
        try:
            vnf = api.vnf(iid)
            pid = vnf.get("pid")
            row["host"] = vnf["host"]
            if vnf["haState"] != "ACTIVE" or not pid or "flowmon" not in _cmdline(int(pid)):
                # Not a live flowmon now (recovering from something else): take the next.
                skipped.append(f"{iid} {vnf['haState']}")
                continue
            seen = {o["id"] for o in api.heals(iid)}
            t_fail = time.time()
            os.kill(int(pid), signal.SIGKILL)
            op = wait_for(partial(_new_heal, api, iid, seen), HEAL_TIMEOUT,
                          f"the HEAL of {iid}", every=0.02)
            row.update(_heal_row(op, t_fail))
            row["ok"] = op["operationState"] == "COMPLETED"
        except (BenchError, OSError) as exc:
            row["error"] = str(exc)[:400]
        out.append(row)
        progress(f"  kill {iid} on {row.get('host')}: " + (
            f"detect {row['detected_ms']:.0f} ms, serving {row['serving_ms']:.0f} ms "
            f"({row['strategy']})" if row["ok"] else f"FAILED {row.get('error')}"))
        time.sleep(0.3)
    if skipped:
        progress(f"  skipped (not ACTIVE when their turn came): {', '.join(skipped)}")
        if out:
            out[0]["skipped_not_active"] = skipped
    return out


class Pinger:
    """PING each VNF every 10 ms from the root netns; the first PONG each one sends back."""

    def __init__(self, ips: dict[str, str]) -> None:
        self.socks: dict[str, socket.socket] = {}
        for vnf, ip in ips.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((ip, QUERY_PORT))
            self.socks[vnf] = s
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self.socks.values():
            s.close()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        deadline = time.monotonic() + HOST_HEAL_TIMEOUT
        fd_vnf = {s.fileno(): v for v, s in self.socks.items()}
        while not self._stop.is_set() and time.monotonic() < deadline:
            pending = [v for v in self.socks if v not in self.first]
            if not pending:
                return
            for v in pending:
                with contextlib.suppress(OSError):  # ICMP errors while the VNF is gone
                    self.socks[v].send(b"PING")
            end = time.monotonic() + PING_PERIOD
            while (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([self.socks[v] for v in pending], [], [], left)
                for s in ready:
                    v = fd_vnf[s.fileno()]
                    with contextlib.suppress(OSError):
                        while True:
                            if s.recv(64) == b"PONG" and v not in self.first:
                                self.first[v] = time.time()
                if not ready:
                    break


def first_heals(ops: list[dict[str, Any]], mine: dict[str, Any]
                ) -> dict[str, dict[str, Any]]:
    """The first HEAL occurrence of each VNF in ``mine`` among ``ops`` (later ones are
    repeat failures, counted apart)."""
    out: dict[str, dict[str, Any]] = {}
    for o in sorted(ops, key=lambda o: str(o.get("startTime"))):
        if o["vnfInstanceId"] in mine:
            out.setdefault(o["vnfInstanceId"], o)
    return out


def crash_hosts(tb: Testbed, api: Api, plan: Plan, n: int) -> list[dict[str, Any]]:
    """Crash a host with about n/5 VNFs, wait until they all serve again, revive it."""
    out: list[dict[str, Any]] = []
    crashed: list[str] = []
    for rep in range(plan.host_crashes):
        row: dict[str, Any] = {"rep": rep, "ok": False}
        try:
            vnfs = {v["id"]: v for v in api.vnfs() if v["haState"] == "ACTIVE"}
            load: dict[str, int] = {}
            for v in vnfs.values():
                load[v["host"]] = load.get(v["host"], 0) + 1
            if not load:
                raise BenchError("no VNF is ACTIVE: no host crash to measure")
            # The host whose load is nearest n/5, preferring one not crashed before.
            host = min(load, key=lambda h: (h in crashed, abs(load[h] - n / N_HOSTS), h))
            mine = {v: rec for v, rec in vnfs.items() if rec["host"] == host}
            row.update(host=host, vnfs=len(mine))
            ips = {v: rec["vnfd"]["network"]["address"].split("/")[0] for v, rec in mine.items()}
            pinger = Pinger(ips)
            seen = {o["id"] for o in api.heals()}
            mark = LogMark(tb)
            t_fail = time.time()
            asyncio.run(tb.crash_host(host))
            row["crash_call_ms"] = (time.time() - t_fail) * 1000
            pinger.start()
            crashed.append(host)

            def done(seen: set[str] = seen, mine: dict[str, Any] = mine
                     ) -> dict[str, dict[str, Any]] | None:
                first = first_heals([o for o in api.heals() if o["id"] not in seen], mine)
                finished = all(o["operationState"] in ("COMPLETED", "FAILED")
                               for o in first.values())
                return first if set(first) == set(mine) and finished else None

            try:
                first = wait_for(done, HOST_HEAL_TIMEOUT, f"every HEAL after {host} crashed",
                                 every=0.2)
            finally:
                pinger.wait(10.0)
                pinger.stop()
            new = [o for o in api.heals() if o["id"] not in seen]
            heals = [_heal_row(o, t_fail) for o in first.values()]
            row["heals"] = heals
            row["repeat_heals"] = sum(1 for o in new if o["vnfInstanceId"] in mine) - len(first)
            row["other_heals"] = [_heal_row(o, t_fail) for o in new
                                  if o["vnfInstanceId"] not in mine]
            ok = [h for h in heals if h["state"] == "COMPLETED"]
            detected = [h["detected_ms"] for h in heals
                        if h["detected_ms"] is not None and h["failure_type"] == "host-loss"]
            row["not_host_loss"] = sum(1 for h in heals if h["failure_type"] != "host-loss")
            serving = [h["serving_ms"] for h in ok]
            answered = [(t - t_fail) * 1000 for t in pinger.first.values()]
            row.update(
                detect_ms=min(detected, default=math.nan),
                detect_ms_per_vnf=describe(detected),
                all_serving_ms=max(serving) if len(ok) == len(mine) else math.nan,
                serving_ms_per_vnf=describe(serving),
                all_answering_ms=max(answered) if len(answered) == len(mine) else math.nan,
                answered=len(answered), recovered=len(ok),
                strategies=_counts(str(h["strategy"]) for h in ok),
                log=mark.counts())
            row["ok"] = len(ok) == len(mine)
            progress(f"  crash {host} ({len(mine)} VNFs): detect {row['detect_ms']:.0f} ms, "
                     f"all serving {row['all_serving_ms']:.0f} ms, all answering "
                     f"{row['all_answering_ms']:.0f} ms, {row['strategies']}")
        except BenchError as exc:
            row["error"] = str(exc)[:600]
            progress(f"  crash rep {rep}: FAILED {row['error']}")
        out.append(row)
        if rep + 1 < plan.host_crashes and row.get("host"):
            revive(tb, api, row["host"], plan)
    return out


def revive(tb: Testbed, api: Api, host: str, plan: Plan) -> None:
    """Power the host back on, then give moved VNFs time to be checkpointed again."""
    with timed(f"  revive {host}"):
        asyncio.run(tb.revive_host(host))
        pin_bridge_macs(tb)
        wait_for(lambda: api.host_states().get(host) == "UP", 20, f"{host} UP again")
    t0 = time.time()

    def protected() -> bool:
        newest: dict[str, dict[str, Any]] = {}
        for c in api.checkpoints():
            if c["vnfInstanceId"] not in newest or \
                    c["createdAt"] > newest[c["vnfInstanceId"]]["createdAt"]:
                newest[c["vnfInstanceId"]] = c
        vnfs = api.vnfs()
        return all(v["haState"] == "ACTIVE" for v in vnfs) and all(
            v["id"] in newest and newest[v["id"]]["createdAt"] > t0
            and len(newest[v["id"]]["replicas"]) >= 2 for v in vnfs
            if (v.get("lastRecovery") or {}).get("fromHost"))

    with contextlib.suppress(BenchError):
        wait_for(protected, plan.settle_max_s, "moved VNFs checkpointed again", every=0.5)


QUIET_LOAD1 = 2.0


def wait_quiet(limit: float) -> tuple[float, float]:
    """Wait up to ``limit`` s for the 1-minute load to drop below QUIET_LOAD1 (other
    helpers' benchmarks share the 2 vCPUs); returns (waited s, load1 then)."""
    t0 = time.monotonic()
    said = False
    while os.getloadavg()[0] >= QUIET_LOAD1 and time.monotonic() - t0 < limit:
        if not said:
            progress(f"  load1 {os.getloadavg()[0]:.1f}: waiting up to {limit:.0f} s for it "
                     f"to drop below {QUIET_LOAD1}")
            said = True
        time.sleep(2)
    return time.monotonic() - t0, os.getloadavg()[0]


# -- one VNF count ---------------------------------------------------------------------------


def run_point(plan: Plan, n: int) -> dict[str, Any]:
    """Everything for one N on a fresh testbed; raises BenchError only if nothing works."""
    interval = plan.interval_for(n)
    point: dict[str, Any] = {"vnfs": n, "ok": False, "load1_start": os.getloadavg()[0],
                             "interval_s": interval, "window_planned_s": plan.window_for(n),
                             "other_netns": other_netns(TB_NAME),
                             "source_digest": source_digest()}
    point["quiet_wait_s"], point["load1_after_wait"] = wait_quiet(plan.quiet_wait_s)
    tb = _testbed()
    api: Api | None = None
    t_point = time.perf_counter()
    try:
        with timed(f"N={n}: testbed up"):
            t0 = time.perf_counter()
            _up(tb)
            point["testbed_up_s"] = time.perf_counter() - t0
        api = Api(tb)
        mgr_pid = check_manager_pid(tb)
        point["manager_rss_mib_empty"] = proc_rss_mib(mgr_pid)
        placement: dict[str, str] = {}
        deploy_ms: list[float] = []
        mark = LogMark(tb)
        with timed(f"N={n}: deployed {n} VNFs"):
            for i in range(1, n + 1):
                t0 = time.perf_counter()
                v = api.deploy(descriptor(i, tb.vnf_address(i), interval), _iid(i))
                deploy_ms.append((time.perf_counter() - t0) * 1000)
                placement[v["id"]] = v["host"]
                if i % 25 == 0 and i < n:
                    progress(f"  {i}/{n} deployed")
        point["deploy_ms"] = describe(deploy_ms)
        point["deploy_ms_first_last"] = [deploy_ms[0], deploy_ms[-1]]
        point["primaries_per_host"] = _counts(placement.values())
        point["deploy_log"] = mark.counts()
        cps = CheckpointLog()
        t0 = time.perf_counter()
        def all_checkpointed() -> bool:
            cps.poll(api)
            return set(placement) <= set(cps.newest())

        try:
            wait_for(all_checkpointed, plan.warmup_max_s, "a first checkpoint of every VNF",
                     every=SAMPLE_PERIOD)
        except BenchError as exc:
            point["warmup_incomplete"] = str(exc)
        point["warmup_s"] = time.perf_counter() - t0
        with timed(f"N={n}: steady window"):
            point["window"] = steady_window(tb, api, plan.window_for(n), interval, mgr_pid,
                                            cps, placement)
        w = point["window"]
        progress(f"  manager {w['cpu']['manager_pct']:.1f}% CPU, "
                 f"{w['memory']['manager_rss_mib']['median']:.0f} MiB; agents "
                 f"{w['cpu']['agents_cgroup_pct']:.0f}% (with CRIU); checkpoint interval "
                 f"median {w['checkpoint']['interval_s']['median']:.2f} s, p95 "
                 f"{w['checkpoint']['interval_s']['p95']:.2f} s (configured "
                 f"{interval} s); {w['checkpoint']['saturated_hosts']} host(s) saturated; "
                 f"{w['checkpoint']['agents_cpu_ms_per_checkpoint']:.0f} CPU-ms per checkpoint")
        point["cpu_rss_samples"] = w.pop("samples")
        with timed(f"N={n}: process kills"):
            point["kills"] = kill_processes(api, plan, placement)
        with timed(f"N={n}: host crashes"):
            point["crashes"] = crash_hosts(tb, api, plan, n)
        point["ok"] = True
    except Exception as exc:  # any failure of this N: recorded, the testbed still goes
        point["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        progress(f"N={n}: FAILED: {point['error']}")
    finally:
        if api is not None:
            api.close()
        point["log_warnings"] = log_warnings(tb)
        t0 = time.perf_counter()
        with timed(f"N={n}: testbed down"):
            _down(tb)
        point["testbed_down_s"] = time.perf_counter() - t0
    point["elapsed_s"] = time.perf_counter() - t_point
    point["load1_end"] = os.getloadavg()[0]
    return point


# -- statistics ------------------------------------------------------------------------------


def describe(values: Sequence[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"median": percentile(xs, 50), "p95": percentile(xs, 95),
            "min": min(xs, default=math.nan), "max": max(xs, default=math.nan),
            "mean": sum(xs) / len(xs) if xs else math.nan, "n": len(xs)}


def _counts(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def summarize(points: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in points:
        w = p.get("window")
        kills = p.get("kills", [])
        crashes = p.get("crashes", [])
        ok_k = [k for k in kills if k["ok"]]
        ok_c = [c for c in crashes if "detect_ms" in c]
        all_heals = [h for c in crashes for h in c.get("heals", [])]
        s: dict[str, Any] = {
            "vnfs": p["vnfs"], "ok": p["ok"], "error": p.get("error"),
            "checkpoint_interval_s": p["interval_s"],
            "primaries_per_host": p.get("primaries_per_host", {}),
            "deploy_ms": p.get("deploy_ms"),
            "window_s": w["window_s"] if w else math.nan,
            "process_exit": {
                "runs": len(kills), "ok": len(ok_k),
                "detect_ms": describe([k["detected_ms"] for k in ok_k]),
                "serving_ms": describe([k["serving_ms"] for k in ok_k]),
                "strategies": _counts(k["strategy"] for k in ok_k)},
            "host_loss": {
                "runs": len(crashes), "ok": sum(1 for c in crashes if c["ok"]),
                "vnfs_on_host": [c.get("vnfs") for c in crashes],
                "detect_ms": describe([c["detect_ms"] for c in ok_c]),
                "detect_ms_per_vnf": describe([h["detected_ms"] for h in all_heals]),
                "all_serving_ms": describe([c["all_serving_ms"] for c in ok_c]),
                "all_answering_ms": describe([c["all_answering_ms"] for c in ok_c]),
                "serving_ms_per_vnf": describe([h["serving_ms"] for h in all_heals
                                                if h["state"] == "COMPLETED"]),
                "strategies": _counts(h["strategy"] for h in all_heals
                                      if h["state"] == "COMPLETED"),
                "state_lost": sum(1 for h in all_heals if h["strategy"] == "restart"),
                "other_vnfs_healed": sum(len(c.get("other_heals", [])) for c in crashes)},
        }
        if w:
            ck = w["checkpoint"]
            s["checkpoint"] = {k: ck[k] for k in (
                "interval_s", "ratio", "excess_s", "age_s", "age_ratio", "intervals",
                "vnfs_without_checkpoint_in_window", "achieved_total_per_s",
                "required_total_per_s", "saturated_hosts", "per_host_ceiling_per_s",
                "host_commit_gap_ms", "dump_wall_ms", "frozen_ms", "image_mib",
                "single_replica", "missed_between_polls", "agents_cpu_ms_per_checkpoint",
                "machine_ceiling_per_s")}
            s["checkpoint"]["per_host"] = ck["per_host"]
            s["cpu_pct"] = {k: v for k, v in w["cpu"].items()
                            if k not in ("agent_pct_per_host", "cores")}
            s["memory_mib"] = {"manager_rss_median": w["memory"]["manager_rss_mib"]["median"],
                               "manager_rss_max": w["memory"]["manager_rss_mib"]["max"],
                               "manager_rss_empty": p.get("manager_rss_mib_empty"),
                               "agents_rss_sum": w["memory"]["agents_rss_mib_sum"]}
            s["api_poll_ms"] = w["api_poll_ms"]
            log = w["log"]
            s["health"] = {"spurious_heals": w["spurious_heals"],
                           **{k: log[k] for k in LOG_PATTERNS}}
            s["load1_window_median"] = percentile(w["load1"], 50)
        out[str(p["vnfs"])] = s
    return {"counts": [p["vnfs"] for p in points], "interval_policy": interval_policy(plan),
            "points": out}


TARGET_HOST_DETECT_MS = 300.0  # the project's host-crash detection target (docs/benchmarks.md)
TARGET_LAG_RATIO = 1.5  # this benchmark's own: checkpoints keep up (p95 interval / configured)


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for n, s in summary["points"].items():
        v = s["host_loss"]["detect_ms"]["median"]
        if not math.isnan(v):
            out.append({"target": f"N={n}: host-crash detection median <= "
                                  f"{TARGET_HOST_DETECT_MS:.0f} ms", "value": v, "unit": "ms",
                        "pass": v <= TARGET_HOST_DETECT_MS})
        if "checkpoint" in s:
            v = s["checkpoint"]["ratio"]["p95"]
            out.append({"target": f"N={n}: checkpoints keep up, p95 of actual interval <= "
                                  f"{TARGET_LAG_RATIO}x configured", "value": v, "unit": "x",
                        "pass": v <= TARGET_LAG_RATIO})
    return out


def anomalies(result: dict[str, Any], points: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    m = result["machine"]
    if m["other_netns_at_start"]:
        out.append(f"{len(m['other_netns_at_start'])} other network namespaces existed at start "
                   f"({', '.join(m['other_netns_at_start'][:6])}): other testbeds may have "
                   f"shared the CPUs; load1 at start {m['loadavg_at_start'][0]:.2f}, at end "
                   f"{m['loadavg_at_end'][0]:.2f}")
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append(f"nfvha's sources changed during the run ({m['source_digest_at_start']} -> "
                   f"{m['source_digest_at_end']}); per N: "
                   + ", ".join(f"{p['vnfs']}: {p['source_digest']}" for p in points))
    for p in points:
        tag = f"N={p['vnfs']}"
        if p.get("error"):
            out.append(f"{tag}: stopped: {p['error']}")
        if p.get("other_netns"):
            names = sorted({x.rsplit("-", 1)[0] for x in p["other_netns"]})
            out.append(f"{tag}: other testbeds' namespaces existed ({', '.join(names[:6])}); "
                       f"load1 {p['load1_start']:.2f} -> {p['load1_end']:.2f}")
        if p.get("warmup_incomplete"):
            out.append(f"{tag}: warm-up: {p['warmup_incomplete']}")
        w = p.get("window")
        if w:
            log = w["log"]
            noisy = {k: log[k] for k in LOG_PATTERNS if log[k]}
            if noisy or w["spurious_heals"]:
                out.append(f"{tag}, steady window without injected faults: "
                           f"{w['spurious_heals']} HEAL(s) "
                           f"{w['spurious_heal_detail'][:3]}; log: {noisy}; e.g. "
                           + " | ".join(list(log["examples"].values())[:3]))
        for k in p.get("kills", []):
            if not k["ok"]:
                out.append(f"{tag}: kill of {k['vnf']} failed: {k.get('error') or k['state']}")
            elif k["strategy"] != "restore-local":
                out.append(f"{tag}: kill of {k['vnf']} recovered by {k['strategy']}")
        for c in p.get("crashes", []):
            if not c["ok"]:
                what = c.get("error") or f"{c.get('recovered')} of {c.get('vnfs')} recovered"
                out.append(f"{tag}: crash of {c.get('host')} (rep {c['rep']}): {what}")
            if c.get("other_heals"):
                out.append(f"{tag}: crash of {c['host']} also healed "
                           f"{len(c['other_heals'])} VNF(s) on other hosts: "
                           f"{[(h['vnf'], h['failure_type']) for h in c['other_heals'][:5]]}")
            if c.get("strategies", {}).get("restart"):
                out.append(f"{tag}: crash of {c['host']}: {c['strategies']['restart']} VNF(s) "
                           "restarted without state (no usable checkpoint on a live host)")
    return out


# -- machine ---------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    return testbed_machine(TB_NAME)


# -- output ----------------------------------------------------------------------------------


def _window_text(w: Any) -> str:
    """The steady window: one number, or one per N (it grows with the interval)."""
    if isinstance(w, dict):
        return " / ".join(f"{float(v):.0f}" for v in w.values()) + " (per N)"
    return f"{float(w):.0f}"


def markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    summ: dict[str, Any] = result["summary"]
    pts: dict[str, Any] = summ["points"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    iv = summ["interval_policy"]
    lines = [
        "# Scale: detection time, checkpoint lag and manager cost vs number of VNFs",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · Python {m['python']} · CRIU {version} · "
        f"{N_HOSTS} emulated hosts with the manager · {'quick' if c['quick'] else 'full'} run, "
        f"{_f(result['elapsed_s'])} s · load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_end'])}.",
        "",
        f"*Method*: per N a fresh testbed; N flowmon VNFs (Python, {VNF_RESOURCES['memory']}, "
        f"{VNF_RESOURCES['cpu']} CPU), 1 backup each, checkpoint interval {iv}, UDP probe every "
        f"{HA_PROBE['interval']} s; default daemon timings (heartbeat "
        f"{c['timings']['heartbeat_interval'] * 1000:.0f} ms, suspicion "
        f"{c['timings']['suspect_after'] * 1000:.0f} ms, fencing "
        f"{c['timings']['fencing_timeout'] * 1000:.0f} ms). A "
        f"{_window_text(c['window_s'])} s steady window without faults, then "
        f"{c['kills']} single SIGKILLs and {c['host_crashes']} "
        "host crash(es). Detection = the HEAL occurrence's `detected` − the fault. CPU in % of "
        "one core over the window (utime+stime from /proc; *with CRIU* = the agents' cgroups, "
        "which hold the CRIU and tar children). Times in ms unless stated.",
        "",
        "## Detection and recovery",
        "",
        "| N | Kill: detect median | p95 | Kill→serving median | Host crash: VNFs on host "
        "| detect median | p95 | all serving median | max | all answering (client) median "
        "| max | strategies |",
        "|---:|---:|---:|---:|:---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for n, s in pts.items():
        pe, hl = s["process_exit"], s["host_loss"]
        strat = ", ".join(f"{k} ×{v}" for k, v in hl["strategies"].items()) or "–"
        lines.append(
            f"| {n} | {_f(pe['detect_ms']['median'], 1)} | {_f(pe['detect_ms']['p95'], 1)} "
            f"| {_f(pe['serving_ms']['median'])} "
            f"| {', '.join(str(x) for x in hl['vnfs_on_host'])} "
            f"| {_f(hl['detect_ms']['median'])} | {_f(hl['detect_ms']['p95'])} "
            f"| {_f(hl['all_serving_ms']['median'])} | {_f(hl['all_serving_ms']['max'])} "
            f"| {_f(hl['all_answering_ms']['median'])} | {_f(hl['all_answering_ms']['max'])} "
            f"| {strat} |")
    lines += [
        "",
        "## Checkpoint lag",
        "",
        "| N | Configured s | Intervals | Actual interval median s | p95 | max "
        "| Ratio median | p95 | Age median s | p95 | max "
        "| VNFs without a checkpoint in window | Checkpoints/s achieved / needed "
        "| Hosts saturated | Per-host ceiling /s | Dump wall ms | Frozen ms "
        "| Agents CPU-ms per checkpoint |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|",
    ]
    for n, s in pts.items():
        ck = s.get("checkpoint")
        if not ck:
            continue
        lines.append(
            f"| {n} | {_f(s['checkpoint_interval_s'], 1)} | {ck['intervals']} "
            f"| {_f(ck['interval_s']['median'], 2)} "
            f"| {_f(ck['interval_s']['p95'], 2)} | {_f(ck['interval_s']['max'], 2)} "
            f"| {_f(ck['ratio']['median'], 2)} | {_f(ck['ratio']['p95'], 2)} "
            f"| {_f(ck['age_s']['median'], 2)} | {_f(ck['age_s']['p95'], 2)} "
            f"| {_f(ck['age_s']['max'], 2)} | {ck['vnfs_without_checkpoint_in_window']} "
            f"| {_f(ck['achieved_total_per_s'], 1)} / {_f(ck['required_total_per_s'], 1)} "
            f"| {ck['saturated_hosts']}/{len(ck['per_host'])} "
            f"| {_f(ck['per_host_ceiling_per_s'], 2)} | {_f(ck['dump_wall_ms']['median'])} "
            f"| {_f(ck['frozen_ms']['median'])} | {_f(ck['agents_cpu_ms_per_checkpoint'])} |")
    lines += [
        "",
        "*Ratio* = actual interval between consecutive checkpoints of a VNF / configured. "
        "*Age* = time since a VNF's newest checkpoint, sampled every second for every VNF "
        "(what a failure then would lose; committed checkpoints, so a dump's own duration is "
        "in it). The manager runs one checkpoint per host at a time (dump + hash + commit + "
        "push to the backup): a host is *saturated* when it achieves < 90 % of the "
        "checkpoints/s its VNFs need, and its achieved rate is then its ceiling.",
        "",
        "## Cost",
        "",
        "| N | Manager CPU % | Manager run-queue wait % | Manager RSS MiB (median / max; "
        "empty) | Agents CPU % (5 procs) | Agents with CRIU % | VNFs % | Machine busy % "
        "| API poll ms median / p95 | load1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, s in pts.items():
        if "cpu_pct" not in s:
            continue
        cp, mm = s["cpu_pct"], s["memory_mib"]
        lines.append(
            f"| {n} | {_f(cp['manager_pct'], 1)} | {_f(cp['manager_runqueue_wait_pct'], 1)} "
            f"| {_f(mm['manager_rss_median'])} / {_f(mm['manager_rss_max'])}; "
            f"{_f(mm['manager_rss_empty'])} "
            f"| {_f(cp['agents_pct'], 1)} | {_f(cp['agents_cgroup_pct'], 1)} "
            f"| {_f(cp['vnfs_pct'], 1)} | {_f(cp['machine_busy_pct'])} "
            f"| {_f(s['api_poll_ms']['median'], 1)} / {_f(s['api_poll_ms']['p95'], 1)} "
            f"| {_f(s['load1_window_median'], 2)} |")
    lines += ["", "*Machine busy* is % of all cores; the others are % of one core. The "
              "API poll is `GET /nfvha/v1/checkpoints` (all VNFs) once a second, the "
              "benchmark's own load on the manager.", "", "## Health in the steady window", "",
              "| N | spurious HEALs | " + " | ".join(k.replace("_", " ")
                                                    for k in LOG_PATTERNS) + " |",
              "|---:|---:|" + "---:|" * len(LOG_PATTERNS)]
    for n, s in pts.items():
        if "health" in s:
            h = s["health"]
            lines.append(f"| {n} | {h['spurious_heals']} | "
                         + " | ".join(str(h[k]) for k in LOG_PATTERNS) + " |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: "
                     f"{_f(t['value'], 2 if t['unit'] == 'x' else 0)} {t['unit']}")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in result["anomalies"]] or ["- none"]
    lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts: dict[str, Any] = result["summary"]["points"]
    if not pts:
        return
    ns = [int(n) for n in pts]

    def col(path: Sequence[str]) -> list[float]:
        out = []
        for s in pts.values():
            v: Any = s
            for k in path:
                v = v.get(k, {}) if isinstance(v, dict) else math.nan
            out.append(float(v) if isinstance(v, (int, float)) else math.nan)
        return out

    def band(ax: Any, base: Sequence[str], label: str, color: str, marker: str) -> None:
        med = col([*base, "median"])
        p95 = col([*base, "p95"])
        ax.plot(ns, med, marker=marker, color=color, label=f"{label} (median)")
        ax.plot(ns, p95, marker=marker, color=color, ls="--", alpha=0.6, label="p95")

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    band(ax, ["process_exit", "detect_ms"], "process exit: detect", "tab:blue", "o")
    band(ax, ["host_loss", "detect_ms"], "host crash: detect", "tab:red", "s")
    ax.plot(ns, col(["host_loss", "all_serving_ms", "median"]), marker="^", color="tab:purple",
            label="host crash: all its VNFs serving (median)")
    ax.plot(ns, col(["host_loss", "all_answering_ms", "median"]), marker="v",
            color="tab:green", label="… all answering a client (median)")
    ax.axhline(TARGET_HOST_DETECT_MS, color="red", ls=":", lw=1,
               label=f"host detection target {TARGET_HOST_DETECT_MS:.0f} ms")
    ax.set_yscale("log")
    ax.set_ylabel("ms after the fault")
    ax.set_title("Detection and recovery", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[0][1]
    band(ax, ["checkpoint", "ratio"], "actual / configured interval", "tab:orange", "o")
    ax.plot(ns, col(["checkpoint", "ratio", "max"]), marker="x", color="tab:orange", ls=":",
            label="max")
    ax.plot(ns, col(["checkpoint", "age_ratio", "p95"]), marker="d",
            color="tab:brown", label="checkpoint age p95 / interval")
    ax.axhline(1.0, color="gray", lw=1)
    ax.axhline(TARGET_LAG_RATIO, color="red", ls=":", lw=1, label=f"{TARGET_LAG_RATIO}×")
    ax.set_ylabel("× configured interval")
    ax.set_title("Checkpoint lag", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[1][0]
    ax.plot(ns, col(["cpu_pct", "manager_pct"]), marker="o", color="tab:blue",
            label="manager CPU %")
    ax.plot(ns, col(["cpu_pct", "agents_pct"]), marker="s", color="tab:green",
            label="5 agents CPU %")
    ax.plot(ns, col(["cpu_pct", "agents_cgroup_pct"]), marker="s", color="tab:olive",
            label="5 agents with CRIU %")
    ax.set_ylabel("% of one core")
    ax2 = ax.twinx()
    ax2.plot(ns, col(["memory_mib", "manager_rss_median"]), marker="^", color="tab:red",
             ls="--", label="manager RSS MiB")
    ax2.set_ylabel("MiB")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.set_title("Cost (steady window)", fontsize=10)

    ax = axes[1][1]
    ax.plot(ns, col(["checkpoint", "required_total_per_s"]), marker="o", color="gray",
            label="checkpoints/s needed (N / interval)")
    ax.plot(ns, col(["checkpoint", "achieved_total_per_s"]), marker="s", color="tab:orange",
            label="checkpoints/s achieved (5 hosts)")
    ax.set_ylabel("checkpoints per second")
    ax.set_title("Checkpoint rate: one dump at a time per host", fontsize=10)
    ax.legend(fontsize=7)
    for a in axes.flat:
        a.set_xlabel("protected VNFs (N)")
        a.set_xticks(ns)
        a.grid(True, alpha=0.3)
    m = result["machine"]
    ivs = ", ".join(f"{n}: {s.get('checkpoint_interval_s')} s" for n, s in pts.items())
    fig.suptitle(f"nfvha scale — {N_HOSTS} emulated hosts, flowmon VNFs, checkpoint interval "
                 f"({ivs}); kernel {m['kernel']}, {m['nproc']} vCPU, load1 at start "
                 f"{m['loadavg_at_start'][0]:.2f}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)


# -- main ------------------------------------------------------------------------------------


def _parse_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,50,100: {exc}") from exc
    if not counts or any(not 1 <= n <= 250 for n in counts):
        raise argparse.ArgumentTypeError("each count must be 1..250")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help="5 and 10 VNFs, short windows, one host crash (under a minute)")
    ap.add_argument("--counts", type=_parse_counts, default=None,
                    help="comma-separated VNF counts (default 10,50,100; 5,10 with --quick)")
    ap.add_argument("--interval", type=float, default=None,
                    help=f"a fixed checkpoint interval, s (default: N/{AGGREGATE_RATE} s, at "
                         f"least {MIN_INTERVAL} s: the same checkpoint load at every N)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    if a.interval is not None and a.interval <= 0:
        ap.error("--interval must be > 0")
    if os.geteuid() != 0:
        print("scale: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    plan = make_plan(a.quick, a.counts, a.interval)
    install_signal_handlers()
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine_description(),
        "config": {
            "quick": plan.quick, "counts": list(plan.counts), "hosts": N_HOSTS,
            "interval_policy": interval_policy(plan),
            "checkpoint_interval_s": {str(n): plan.interval_for(n) for n in plan.counts},
            "window_s": {str(n): plan.window_for(n) for n in plan.counts},
            "backups": 1, "retention": 3, "warmup_max_s": plan.warmup_max_s,
            "kills": plan.kills, "host_crashes": plan.host_crashes,
            "settle_max_s": plan.settle_max_s, "sample_period_s": SAMPLE_PERIOD,
            "ping_period_ms": PING_PERIOD * 1000, "ha_probe": HA_PROBE,
            "vnf": {"program": "examples/vnfs/flowmon.py", "resources": VNF_RESOURCES},
            "timings": asdict(FaultTimings()),
            "timings_note": "daemon defaults: agent heartbeat 50 ms, fencing 250 ms; manager "
                            "suspicion 150 ms (nothing passed on the command lines)",
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR)},
        },
    }
    points: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        for n in plan.counts:
            progress(f"N={n}: start")
            points.append(run_point(plan, n))
    except KeyboardInterrupt as exc:
        interrupted = exc
        print(f"scale: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored():
            _down(_testbed())  # whatever an interrupt left behind
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()
    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    result["complete"] = interrupted is None and all(p["ok"] for p in points) and \
        len(points) == len(plan.counts)
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    result["summary"] = summarize(points, plan)
    if not result["summary"]["points"]:
        print("scale: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(result, points)
    result["points"] = points
    publish(result, "scale", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']:.2f} {t['unit']}", doc_img=not a.no_doc_img)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
