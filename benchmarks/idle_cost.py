#!/usr/bin/env python3
"""Idle CPU cost of nfvha's membership, and how fast a crashed host is declared DOWN.

Testbeds of N = 3, 10, 20 and 40 emulated hosts (``nfvic``, 10.231.0.0/16) with the
manager and no VNF at all. Each host runs its agent (under the testbed's restart
supervisor) and the agent's lease guard: the guard sends the manager 20 UDP heartbeats a
second and pings up to 3 ring peers (10 a second); the agent sends an HTTP status report
when something changed and otherwise every 5 s.
Per N:

1. the testbed comes up (timed), every host is UP in ``GET /nfvha/v1/hosts``, then it
   settles for ``SETTLE_S``;
2. **idle window** (20 s; 8 s with ``--quick``): utime+stime from ``/proc/<pid>/stat`` of
   every agent, guard and supervisor and of the manager, at the start and the end and
   once a second in between (nothing but ``/proc`` and the cgroup files is read meanwhile:
   no request to the manager, so the measurement adds nothing to what it measures). The
   cgroups' own CPU accounting (µs, includes any child process) is read alongside as a
   cross-check. CPU is given as % of one core;
3. **stability**: the manager's counters of host state changes and missed heartbeats
   (``/metrics``, before and after the window: counters miss nothing between reads) and
   its log (``suspected``, ``DOWN``, ``loop stalled`` lines). Any host state change in
   an idle window is a *false suspicion*;
4. **host-crash detection** (N = 3, and 10 in full mode): ``crash_host`` (uplink deleted,
   every process of the host killed), timed from the call to the manager's ``host-down``
   decision line in its log (its own timestamp, ms); the log is tailed every 5 ms, so the
   benchmark adds no request to the manager either; the host record's ``stateChangedAt``
   is kept as a cross-check. The host is revived and UP again before the next run.

Writes ``results/idle_cost.{json,md,png}`` and ``docs/img/idle_cost.png``. Needs root.
Not a test: targets are reported as PASS/MISS, not asserted. Usage::

    .venv/bin/python benchmarks/idle_cost.py [--quick] [--hosts 3,10,20,40] [--window 20]
                                             [--runs 10] [--detect-hosts 3,10] [--fencing]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nfvha.testbed import Testbed
from nfvha.vnfm.metrics import iso_to_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    RESULTS,
    BenchError,
    api_result,
    install_signal_handlers,
    machine_cpu,
    manager_client,
    other_netns,
    percentile,
    pin_bridge_macs,
    proc_cpu,
    proc_rss_mib,
    progress,
    publish,
    save_figure,
    shared_machine_note,
    signals_ignored,
    source_digest,
    testbed_down,
    testbed_machine,
    timed,
    wait_for,
)
from _common import fmt_num as _f  # short: it fills the report tables

TB_NAME = "nfvic"
TB_SUBNET = "10.231.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench")

FULL_COUNTS = (3, 10, 20, 40)
QUICK_COUNTS = (3, 10)
FULL_DETECT_COUNTS = (3, 10)
QUICK_DETECT_COUNTS = (3,)
WINDOW_S = 20.0
QUICK_WINDOW_S = 8.0
SETTLE_S = 5.0
DETECT_RUNS = 10
QUICK_DETECT_RUNS = 3
SAMPLE_PERIOD = 1.0  # s between the CPU samples inside a window
LOG_POLL = 0.005  # s between reads of the manager's log while waiting for `host-down`

HTTP_TIMEOUT = 10.0
DETECT_TIMEOUT = 10.0  # crash -> DOWN; the default timings aim at 300 ms
REVIVE_UP_TIMEOUT = 30.0
FENCE_TIMEOUT = 15.0  # with --fencing: for the manager's fence of a crashed host to end


def up_timeout(n: int) -> float:
    """Starting n Python agents (each imports FastAPI, ~60 MB) on 2 vCPUs takes a while."""
    return 60.0 + 5.0 * n


TARGET_AGENT_PCT = 1.0  # 3 hosts, no VNF: each agent (and separately: agent + guard)
TARGET_MANAGER_PCT = 2.0  # 3 hosts, no VNF
TARGET_DETECT_MS = 150.0  # host crash -> DOWN, median at N=3
TARGET_TLS_RATIO = 1.2  # heartbeat CPU with TLS and per-host keys / without (issue 12)


@dataclass(frozen=True)
class Plan:
    counts: tuple[int, ...]
    window_s: float
    settle_s: float
    detect_counts: tuple[int, ...]
    detect_runs: int
    fencing: bool
    quick: bool
    tls_compare: int | None = None  # N at which the same idle window runs without TLS too


# -- the manager -----------------------------------------------------------------------------


class Api:
    """The two reads this benchmark needs from the manager; every call has a timeout."""

    def __init__(self, tb: Testbed) -> None:
        self.m = manager_client(tb, HTTP_TIMEOUT)

    def close(self) -> None:
        self.m.close()

    def _get(self, path: str) -> httpx.Response:
        try:
            return self.m.http.get(path)
        except httpx.HTTPError as exc:
            raise BenchError(f"GET {path}: {exc!r}") from exc

    def hosts(self) -> dict[str, dict[str, Any]]:
        res = api_result("GET", "/nfvha/v1/hosts", self._get("/nfvha/v1/hosts"))
        return {h["id"]: h for h in res}

    def fences(self, host: str) -> list[dict[str, Any]]:
        path = f"/nfvha/v1/fences?host={host}"
        res: list[dict[str, Any]] = api_result("GET", path, self._get(path))
        return res

    def metrics(self) -> dict[str, float]:
        """The counters this benchmark reads, as ``name{labels}`` -> value."""
        r = self._get("/metrics")
        if r.status_code != 200:
            raise BenchError(f"GET /metrics: HTTP {r.status_code} {r.text[:200]}")
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith(("nfvha_host_state_changes_total", "nfvha_heartbeats_missed_total",
                                "nfvha_fences_total")):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out


def all_up(api: Api, n: int) -> dict[str, dict[str, Any]] | None:
    hosts = api.hosts()
    return hosts if len(hosts) == n and all(h["state"] == "UP" for h in hosts.values()) \
        else None


def _delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, int]:
    """Counter increases over a window, per label set, for the series named ``prefix``."""
    out: dict[str, int] = {}
    for key in set(before) | set(after):
        if key.startswith(prefix):
            d = after.get(key, 0.0) - before.get(key, 0.0)
            if d:
                label = key[len(prefix):].strip("{}") or "all"
                out[label] = int(d)
    return out


# -- the manager's log -----------------------------------------------------------------------

_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_DOWN_RE = re.compile(r"decision: host (\S+) DOWN after (\d+) ms")
_SUSPECT_RE = re.compile(r"host (\S+) suspected: (\d+) ms")
LOG_COUNTS = {"suspected": " suspected: ", "down": " DOWN after ", "stays_up": " stays UP",
              "all_silent": "hosts silent at once", "loop_stalled": "manager loop stalled"}


def log_time(line: str) -> float | None:
    """The Unix time of a daemon log line (``%(asctime)s``: local time, ms)."""
    m = _TS_RE.match(line)
    if m is None:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


class LogTail:
    """New lines of a log file since the last read (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = _size(path)
        self._partial = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(4_000_000)
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        head, _, self._partial = data.rpartition(b"\n")
        return head.decode(errors="replace").splitlines() if head else []


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def log_counts(lines: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(1 for ln in lines if needle in ln)
                           for k, needle in LOG_COUNTS.items()}
    out["examples"] = [ln[-300:] for ln in lines
                       if any(needle in ln for needle in LOG_COUNTS.values())][:10]
    return out


# -- processes -------------------------------------------------------------------------------


ROLES = ("agent", "guard", "supervisor")


def host_pids(tb: Testbed) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for hid, h in tb.hosts.items():
        agent: int | None
        try:
            agent = tb.agent_process(hid)
        except Exception:
            agent = None
        out[hid] = {"agent": agent, "guard": tb.guard_process(hid), "supervisor": h.agent_pid}
    return out


def _cgroup_cpu(tb: Testbed, path: str) -> float:
    try:
        return float(tb.cgroups.cgroup(path).usage().cpu_seconds)
    except Exception:  # gone or not readable: not measured
        return math.nan


def cpu_sample(tb: Testbed, pids: dict[str, dict[str, int | None]]) -> dict[str, Any]:
    busy, total = machine_cpu()
    return {
        "t": time.monotonic(),
        "manager": proc_cpu(tb.manager_pid),
        "hosts": {h: {r: proc_cpu(p[r]) for r in ROLES} for h, p in pids.items()},
        "cgroup": {h: _cgroup_cpu(tb, f"{tb.hosts[h].cgroup}/agent") for h in pids},
        "manager_cgroup": _cgroup_cpu(tb, f"{tb.name}/manager"),
        "machine_busy": busy, "machine_total": total,
    }


def _pct(a: float, b: float, dt: float) -> float:
    return (b - a) / dt * 100 if dt > 0 else math.nan


def stats(values: Sequence[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"mean": sum(xs) / len(xs) if xs else math.nan, "median": percentile(xs, 50),
            "p95": percentile(xs, 95), "min": min(xs, default=math.nan),
            "max": max(xs, default=math.nan), "n": len(xs)}


def window_cpu(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """% of one core per process and per host between two samples."""
    dt = b["t"] - a["t"]
    per_host: dict[str, dict[str, float]] = {}
    for h, roles in a["hosts"].items():
        row = {r: _pct(roles[r], b["hosts"][h][r], dt) for r in ROLES}
        row["host"] = row["agent"] + row["guard"]
        row["cgroup"] = _pct(a["cgroup"][h], b["cgroup"][h], dt)
        per_host[h] = row
    busy = b["machine_busy"] - a["machine_busy"]
    total = b["machine_total"] - a["machine_total"]
    return {
        "seconds": dt,
        "agent": stats([r["agent"] for r in per_host.values()]),
        "guard": stats([r["guard"] for r in per_host.values()]),
        "host": stats([r["host"] for r in per_host.values()]),
        "supervisor": stats([r["supervisor"] for r in per_host.values()]),
        "host_cgroup": stats([r["cgroup"] for r in per_host.values()]),
        "manager": _pct(a["manager"], b["manager"], dt),
        "manager_cgroup": _pct(a["manager_cgroup"], b["manager_cgroup"], dt),
        "all_hosts_sum": sum(r["host"] for r in per_host.values()),
        "machine_busy_pct_of_all_cpus": busy / total * 100 if total > 0 else math.nan,
        "per_host": per_host,
    }


def _step(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """One second of the window, summed over hosts (bursts show here)."""
    dt = b["t"] - a["t"]

    def total(s: dict[str, Any], role: str) -> float:
        return float(sum(v[role] for v in s["hosts"].values()))

    return {"t_s": b["t"], "agents": _pct(total(a, "agent"), total(b, "agent"), dt),
            "guards": _pct(total(a, "guard"), total(b, "guard"), dt),
            "manager": _pct(a["manager"], b["manager"], dt)}


# -- the testbed -----------------------------------------------------------------------------


def _testbed(n: int, fencing: bool, tls: bool = True) -> Testbed:
    return Testbed(name=TB_NAME, n_hosts=n, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True, fencing=fencing, tls=tls)


def _up(tb: Testbed, n: int) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(tb.down())  # leftovers of an interrupted run
    asyncio.run(tb.up(timeout=up_timeout(n)))
    pin_bridge_macs(tb)  # a crashed host's uplink must not change the bridge's MAC


def _down(tb: Testbed) -> None:
    testbed_down(tb, "idle_cost")


# -- one N -----------------------------------------------------------------------------------


def idle_window(tb: Testbed, api: Api, window_s: float) -> dict[str, Any]:
    pids = host_pids(tb)
    missing = [f"{h} {r}" for h, p in pids.items() for r in ROLES if p[r] is None]
    if missing or tb.manager_pid is None:
        raise BenchError(f"no pid for: {', '.join(missing) or 'the manager'}")
    metrics_before = api.metrics()
    hosts_before = api.hosts()
    tail = LogTail(tb.log_dir / "manager.log")
    load_before = os.getloadavg()
    samples = [cpu_sample(tb, pids)]
    rss: dict[str, list[float]] = {"agent": [], "guard": [], "manager": []}
    end = samples[0]["t"] + window_s
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(SAMPLE_PERIOD, left))
        samples.append(cpu_sample(tb, pids))
    for p in pids.values():
        rss["agent"].append(proc_rss_mib(p["agent"]))
        rss["guard"].append(proc_rss_mib(p["guard"]))
    rss["manager"].append(proc_rss_mib(tb.manager_pid))
    lines = tail.lines()
    metrics_after = api.metrics()
    hosts_after = api.hosts()
    pids_after = host_pids(tb)
    cpu = window_cpu(samples[0], samples[-1])
    changes = _delta(metrics_before, metrics_after, "nfvha_host_state_changes_total")
    missed = _delta(metrics_before, metrics_after, "nfvha_heartbeats_missed_total")
    return {
        "cpu_pct": cpu,
        "timeline_pct": [{**_step(a, b), "t_s": b["t"] - samples[0]["t"]}
                         for a, b in itertools.pairwise(samples)],
        "rss_mib": {"agent": stats(rss["agent"]), "guard": stats(rss["guard"]),
                    "manager": rss["manager"][0]},
        "stability": {
            "state_changes": changes,
            "false_suspicions": sum(changes.values()),
            "heartbeats_missed": missed,
            "heartbeats_missed_total": sum(missed.values()),
            "all_up_before": all(h["state"] == "UP" for h in hosts_before.values()),
            "all_up_after": all(h["state"] == "UP" for h in hosts_after.values()),
            "not_up_after": {h: v["state"] for h, v in hosts_after.items() if v["state"] != "UP"},
            "lease_ms_after": stats([v.get("leaseMs") for v in hosts_after.values()]),
            "suspect_after_ms_after": stats([v.get("suspectAfterMs")
                                             for v in hosts_after.values()]),
            "manager_log": log_counts(lines),
            "processes_replaced": sorted(f"{h} {r}" for h, p in pids.items() for r in ROLES
                                         if pids_after[h][r] != p[r]),
        },
        "load_before": load_before, "load_after": os.getloadavg(),
    }


def detect_once(tb: Testbed, api: Api, host: str) -> dict[str, Any]:
    """Crash ``host``; the time from the call until the manager's ``host-down`` line."""
    row: dict[str, Any] = {"host": host, "ok": False, "load1": os.getloadavg()[0]}
    before = api.hosts()
    if not all(h["state"] == "UP" for h in before.values()):
        raise BenchError(f"not every host is UP before the crash: "
                         f"{ {h: v['state'] for h, v in before.items()} }")
    row["lease_ms"] = before[host].get("leaseMs")
    row["suspect_after_ms"] = before[host].get("suspectAfterMs")
    tail = LogTail(tb.log_dir / "manager.log")
    t0 = row["t_crash"] = time.time()
    asyncio.run(tb.crash_host(host))
    row["crash_call_ms"] = (time.time() - t0) * 1000
    deadline = time.monotonic() + DETECT_TIMEOUT
    lines: list[str] = []
    down: str | None = None
    while down is None and time.monotonic() < deadline:
        new = tail.lines()
        lines += new
        down = next((ln for ln in new if (m := _DOWN_RE.search(ln)) and m.group(1) == host),
                    None)
        if down is None:
            time.sleep(LOG_POLL)
    suspected = next((ln for ln in lines if (m := _SUSPECT_RE.search(ln))
                      and m.group(1) == host), None)
    # The manager's lines about this host until DOWN: a `stays UP` among them means its
    # second path (the peers) still vouched for it, which delays the decision.
    row["manager_log"] = [ln[-240:] for ln in lines if f"host {host} " in ln][:10]
    row["kept_up_by_peers"] = sum(1 for ln in row["manager_log"] if " stays UP" in ln)
    rec = api.hosts().get(host, {})
    changed = iso_to_epoch(str(rec.get("stateChangedAt"))) if rec.get("state") == "DOWN" \
        else None
    row["state_changed_ms"] = (changed - t0) * 1000 if changed is not None else None
    if down is None:
        row["error"] = (f"no `host {host} DOWN` decision in the manager's log within "
                        f"{DETECT_TIMEOUT:.0f} s (manager says {rec.get('state')})")
        row["log"] = [ln[-300:] for ln in lines[-20:]]
        return row
    t_down = log_time(down)
    m = _DOWN_RE.search(down)
    row["detect_ms"] = (t_down - t0) * 1000 if t_down is not None else None
    row["silence_ms"] = int(m.group(2)) if m else None
    t_sus = log_time(suspected) if suspected else None
    row["suspect_ms"] = (t_sus - t0) * 1000 if t_sus is not None else None
    row["other_hosts_not_up"] = {h: v["state"] for h, v in api.hosts().items()
                                 if h != host and v["state"] != "UP"}
    row["ok"] = row["detect_ms"] is not None
    return row


def detection_runs(tb: Testbed, api: Api, runs: int) -> list[dict[str, Any]]:
    hosts = sorted(tb.hosts, key=lambda h: int(h[1:]))
    out: list[dict[str, Any]] = []
    for i in range(runs):
        host = hosts[i % len(hosts)]
        try:
            row = detect_once(tb, api, host)
        except BenchError as exc:
            row = {"host": host, "ok": False, "error": str(exc)[:600]}
        row["run"] = i
        out.append(row)
        if row["ok"]:
            progress(f"  crash {host}: DOWN after {row['detect_ms']:.0f} ms (suspected "
                     f"{_f(row['suspect_ms'])} ms, silence {row['silence_ms']} ms, "
                     f"stateChangedAt {_f(row['state_changed_ms'])} ms, crash call "
                     f"{row['crash_call_ms']:.0f} ms)")
        else:
            progress(f"  crash {host}: FAILED {row.get('error')}")
        if tb.hosts[host].state == "crashed":
            try:
                if tb.fencing:  # power on only once the manager's fence of it is over
                    row["fences"] = wait_for(
                        lambda: fences_done(api, host, row.get("t_crash", 0.0)),  # noqa: B023
                        FENCE_TIMEOUT, f"the fence of {host} to end")
                asyncio.run(tb.revive_host(host))
                pin_bridge_macs(tb)
                wait_for(lambda: api.hosts().get(host, {}).get("state") == "UP",  # noqa: B023
                         REVIVE_UP_TIMEOUT, f"{host} UP again after its revival", every=0.1)
                # Every other host UP too, and a moment for the revived one's heartbeats
                # to settle (its first grant after a rejoin).
                wait_for(lambda: all_up(api, len(hosts)), REVIVE_UP_TIMEOUT, "all hosts UP")
                time.sleep(1.0)
            except Exception as exc:
                raise BenchError(f"reviving {host} failed: {exc}") from exc
    return out


def fences_done(api: Api, host: str, since: float) -> list[dict[str, Any]] | None:
    """The host's fence records since ``since``, once none is in progress (and there is
    one: the fence starts just after the `host-down` decision)."""
    recs = [r for r in api.fences(host)
            if (iso_to_epoch(str(r.get("startedAt"))) or 0.0) >= since - 0.5]
    if not recs or any(r.get("state") == "PROCESSING" for r in recs):
        return None
    return [{k: r.get(k) for k in ("state", "durationMs", "startedAt", "trigger")}
            for r in recs]


def run_point(plan: Plan, n: int, tls: bool = True) -> dict[str, Any]:
    point: dict[str, Any] = {"hosts": n, "tls": tls, "ok": False,
                             "other_netns": other_netns(TB_NAME), "source_digest": source_digest()}
    tb = _testbed(n, plan.fencing, tls)
    api: Api | None = None
    try:
        t0 = time.perf_counter()
        with timed(f"N={n}: testbed up"):
            _up(tb, n)
        api = Api(tb)
        wait_for(lambda: all_up(api, n), 30.0 + n, f"all {n} hosts UP at the manager",
                 every=0.2)
        point["up_s"] = time.perf_counter() - t0
        time.sleep(plan.settle_s)
        with timed(f"N={n}: idle window of {plan.window_s:.0f} s"):
            point.update(idle_window(tb, api, plan.window_s))
        c, st = point["cpu_pct"], point["stability"]
        progress(f"N={n}: agent {c['agent']['mean']:.2f} % (max {c['agent']['max']:.2f}), "
                 f"guard {c['guard']['mean']:.2f} % (max {c['guard']['max']:.2f}), host "
                 f"{c['host']['mean']:.2f} % (cgroup {c['host_cgroup']['mean']:.2f}), manager "
                 f"{c['manager']:.2f} %; false suspicions {st['false_suspicions']}, "
                 f"heartbeats missed {st['heartbeats_missed_total']}")
        point["ok"] = True
        if tls and n in plan.detect_counts and plan.detect_runs > 0:
            with timed(f"N={n}: {plan.detect_runs} host crashes"):
                point["detection"] = detection_runs(tb, api, plan.detect_runs)
    except BenchError as exc:
        point["error"] = str(exc)[:800]
        progress(f"N={n}: FAILED {point['error']}")
        point["log_warnings"] = log_warnings(tb)
    finally:
        if api is not None:
            api.close()
        with timed(f"N={n}: testbed down"):
            _down(tb)
    return point


def log_warnings(tb: Testbed, keep: int = 30) -> dict[str, list[str]]:
    """The last WARNING/ERROR lines of each daemon's log, kept before the testbed goes."""
    out: dict[str, list[str]] = {}
    for p in sorted(tb.log_dir.glob("*.log")):
        with contextlib.suppress(OSError):
            lines = [ln[-400:] for ln in p.read_text(errors="replace").splitlines()
                     if " WARNING " in ln or " ERROR " in ln]
            if lines:
                out[p.stem] = lines[-keep:]
    return out


# -- summary ---------------------------------------------------------------------------------


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"counts": [p["hosts"] for p in points if p.get("tls", True)],
                           "points": {}, "detection": {}}
    plain = [p for p in points if not p.get("tls", True) and "cpu_pct" in p]
    for q in plain:
        t = next((p for p in points if p.get("tls", True) and p["hosts"] == q["hosts"]
                  and "cpu_pct" in p), None)
        if t is None:
            continue
        row: dict[str, Any] = {"hosts": q["hosts"]}
        for key in ("guard", "agent", "host", "manager"):
            a, b = (float(c[key] if key == "manager" else c[key]["mean"])
                    for c in (t["cpu_pct"], q["cpu_pct"]))
            row[key] = {"tls": a, "plain": b, "ratio": a / b if b > 0 else math.nan}
        hb = (t["cpu_pct"]["guard"]["mean"] * q["hosts"] + t["cpu_pct"]["manager"],
              q["cpu_pct"]["guard"]["mean"] * q["hosts"] + q["cpu_pct"]["manager"])
        row["heartbeats"] = {"tls": hb[0], "plain": hb[1],
                             "ratio": hb[0] / hb[1] if hb[1] > 0 else math.nan}
        out["tls_compare"] = row
    for p in points:
        if not p.get("tls", True):
            continue
        key = str(p["hosts"])
        if "cpu_pct" not in p:
            out["points"][key] = {"hosts": p["hosts"], "error": p.get("error", "not measured")}
            continue
        c, st = p["cpu_pct"], p["stability"]
        out["points"][key] = {
            "hosts": p["hosts"], "up_s": p.get("up_s"), "window_s": c["seconds"],
            "cpu_pct": {k: c[k] for k in ("agent", "guard", "host", "supervisor",
                                          "host_cgroup", "manager", "manager_cgroup",
                                          "all_hosts_sum", "machine_busy_pct_of_all_cpus")},
            "rss_mib": p["rss_mib"],
            "false_suspicions": st["false_suspicions"],
            "heartbeats_missed": st["heartbeats_missed_total"],
            "all_up": bool(st["all_up_before"] and st["all_up_after"]),
            "load1": [p["load_before"][0], p["load_after"][0]],
        }
        if p.get("error"):
            out["points"][key]["error"] = p["error"]
        det = p.get("detection")
        if det:
            ok = [r for r in det if r["ok"]]
            out["detection"][key] = {
                "runs": len(det), "ok": len(ok),
                "detect_ms": stats([r["detect_ms"] for r in ok]),
                "suspect_ms": stats([r.get("suspect_ms") for r in ok]),
                "silence_ms": stats([r.get("silence_ms") for r in ok]),
                "state_changed_ms": stats([r.get("state_changed_ms") for r in ok]),
                "crash_call_ms": stats([r.get("crash_call_ms") for r in ok]),
                "kept_up_by_peers": sum(1 for r in ok if r.get("kept_up_by_peers")),
                "fence_ms": stats([f.get("durationMs") for r in ok for f in r.get("fences", [])]),
            }
    return out


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    p3 = summary["points"].get("3", {})
    if "cpu_pct" in p3:
        c = p3["cpu_pct"]
        for what, key in (("each agent", "agent"), ("each host (agent + its guard)", "host")):
            v = c[key]["max"]
            out.append({"target": f"3 hosts, no VNF: {what} <= {TARGET_AGENT_PCT:g} % of a "
                                  f"core (the busiest; mean {c[key]['mean']:.2f} %)",
                        "value": v, "unit": "% of a core", "pass": v <= TARGET_AGENT_PCT})
        v = c["manager"]
        out.append({"target": f"3 hosts, no VNF: manager <= {TARGET_MANAGER_PCT:g} % of a core",
                    "value": v, "unit": "% of a core", "pass": v <= TARGET_MANAGER_PCT})
    measured = [p for p in summary["points"].values() if "cpu_pct" in p]
    if measured:
        v = sum(p["false_suspicions"] for p in measured)
        out.append({"target": "no host state change in any idle window (false suspicions), "
                              "N = " + ", ".join(str(p["hosts"]) for p in measured),
                    "value": v, "unit": "changes", "pass": v == 0})
    tc = summary.get("tls_compare")
    if tc:
        v = tc["heartbeats"]["ratio"]
        out.append({"target": f"{tc['hosts']} hosts: heartbeat CPU (every guard + the manager) "
                              f"with TLS and per-host keys <= {TARGET_TLS_RATIO:g}x without "
                              f"({_f(tc['heartbeats']['tls'], 2)} % vs "
                              f"{_f(tc['heartbeats']['plain'], 2)} % of a core)",
                    "value": v, "unit": "x", "pass": v <= TARGET_TLS_RATIO})
    d3 = summary["detection"].get("3")
    if d3 and d3["ok"]:
        v = d3["detect_ms"]["median"]
        out.append({"target": f"3 hosts: host crash -> DOWN, median <= {TARGET_DETECT_MS:.0f} ms "
                              f"({d3['ok']} crashes; p95 {d3['detect_ms']['p95']:.0f} ms)",
                    "value": v, "unit": "ms", "pass": v <= TARGET_DETECT_MS})
    return out


def anomalies(result: dict[str, Any], points: list[dict[str, Any]]) -> list[str]:
    m = result["machine"]
    out: list[str] = shared_machine_note(m)
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append("nfvha's sources changed during the run (digest "
                   f"{m['source_digest_at_start']} -> {m['source_digest_at_end']})")
    for p in points:
        tag = f"N={p['hosts']}"
        if p.get("error"):
            out.append(f"{tag} failed: {p['error']}")
        st = p.get("stability")
        if st:
            if st["false_suspicions"]:
                out.append(f"{tag}: {st['false_suspicions']} host state changes while idle "
                           f"({st['state_changes']}); manager log: "
                           + " | ".join(st["manager_log"]["examples"][:3]))
            if st["processes_replaced"]:
                out.append(f"{tag}: processes replaced during the window: "
                           f"{', '.join(st['processes_replaced'])}")
            if st["manager_log"]["loop_stalled"]:
                out.append(f"{tag}: the manager's loop stalled {st['manager_log']['loop_stalled']}"
                           " times in the window")
            if p["load_before"][0] > 1.0:
                out.append(f"{tag}: load1 {p['load_before'][0]:.2f} at the window's start "
                           f"(machine {p['cpu_pct']['machine_busy_pct_of_all_cpus']:.0f} % busy "
                           "during it): the figures include waiting for other work")
        for r in p.get("detection", []):
            if not r["ok"]:
                out.append(f"{tag} crash run {r['run']} ({r['host']}) failed: {r.get('error')}")
            elif r.get("other_hosts_not_up"):
                out.append(f"{tag} crash run {r['run']}: other hosts not UP right after: "
                           f"{r['other_hosts_not_up']}")
            if r.get("suspect_after_ms") and r["suspect_after_ms"] > 150:
                out.append(f"{tag} crash run {r['run']}: {r['host']}'s suspicion time was "
                           f"stretched to {r['suspect_after_ms']} ms before the crash (strain)")
    return out


# -- output ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    m, c, s = result["machine"], result["config"], result["summary"]
    lines = [
        "# Idle cost of membership, and host-crash detection",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · load at start {m['loadavg_at_start'][0]:.2f} · "
        f"{'quick' if c['quick'] else 'full'} run `{result['run']['name']}` · "
        f"{_f(result['elapsed_s'])} s in all.",
        "",
        f"*Method*: N emulated hosts with the manager and no VNF; after all are UP and "
        f"{c['settle_s']:g} s of settling, CPU (utime+stime, `/proc/<pid>/stat`) over an idle "
        f"window of {c['window_s']:g} s, as % of one core. *Host* = agent + its lease guard "
        "(the supervisor is listed apart); *host cgroup* = the cgroup's own accounting of the "
        "agent, guard, supervisor and any child they ran. Mean over the hosts / the busiest "
        "host. *False suspicions*: host state changes the manager counted in the window.",
        "",
        "| Hosts | Agent mean / max | Guard mean / max | Host (agent + guard) mean / max "
        "| Supervisor mean | Host cgroup mean | Manager | Manager RSS MiB | Agent RSS MiB "
        "| False suspicions | Heartbeats missed | Up s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, p in s["points"].items():
        if "cpu_pct" not in p:
            lines.append(f"| {key} | failed: {str(p.get('error'))[:80]} |" + " |" * 11)
            continue
        cp = p["cpu_pct"]
        lines.append(
            f"| {key} | {_f(cp['agent']['mean'], 2)} / {_f(cp['agent']['max'], 2)} "
            f"| {_f(cp['guard']['mean'], 2)} / {_f(cp['guard']['max'], 2)} "
            f"| **{_f(cp['host']['mean'], 2)}** / {_f(cp['host']['max'], 2)} "
            f"| {_f(cp['supervisor']['mean'], 2)} | {_f(cp['host_cgroup']['mean'], 2)} "
            f"| **{_f(cp['manager'], 2)}** | {_f(p['rss_mib']['manager'])} "
            f"| {_f(p['rss_mib']['agent']['mean'])} | {p['false_suspicions']} "
            f"| {p['heartbeats_missed']} | {_f(p['up_s'])} |")
    tc = s.get("tls_compare")
    if tc:
        lines += ["", f"*The cost of TLS and per-host heartbeat keys* (issue 12): the same "
                  f"idle window at N = {tc['hosts']} on a testbed without TLS (one heartbeat "
                  "key from the cluster token, plain HTTP), in the same run. Mean % of a core; "
                  "*heartbeats* = every guard plus the manager.", "",
                  "| | Guard | Agent | Host | Manager | Heartbeats |",
                  "|---|---:|---:|---:|---:|---:|"]
        for side in ("tls", "plain"):
            lines.append(f"| {'TLS' if side == 'tls' else 'no TLS'} "
                         + "".join(f"| {_f(tc[k][side], 3)} " for k in
                                   ("guard", "agent", "host", "manager", "heartbeats")) + "|")
        lines.append("| ratio " + "".join(f"| {_f(tc[k]['ratio'], 2)}x " for k in
                                          ("guard", "agent", "host", "manager", "heartbeats"))
                     + "|")
    if s["detection"]:
        lines += ["", "*Host-crash detection*: from `crash_host` (uplink deleted, every process "
                  "of the host killed) to the manager's `host-down` decision (its log's "
                  "timestamp); *suspected*: its first `suspected` line; *silence*: what the "
                  "manager says it waited; *peers vouched*: crashes where the second path "
                  "(a peer had heard the host within the suspicion time) kept it UP once "
                  "before DOWN. Times in ms.", "",
                  "| Hosts | Crashes ok | DOWN median | p95 | max | Suspected median "
                  "| Silence median | stateChangedAt median | Peers vouched |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, d in s["detection"].items():
            lines.append(
                f"| {key} | {d['ok']}/{d['runs']} | **{_f(d['detect_ms']['median'])}** "
                f"| {_f(d['detect_ms']['p95'])} | {_f(d['detect_ms']['max'])} "
                f"| {_f(d['suspect_ms']['median'])} | {_f(d['silence_ms']['median'])} "
                f"| {_f(d['state_changed_ms']['median'])} | {d['kept_up_by_peers']} |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: "
                     f"{t['value']:.2f} {t['unit']}")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in result["anomalies"]] or ["- none"]
    lines += ["", "Settings: " + ", ".join(f"{k} {v}" for k, v in c.items()
                                           if k not in ("testbed",)) + ".", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    pts = [p for p in s["points"].values() if "cpu_pct" in p]
    if not pts:
        return
    ns = [p["hosts"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5),
                                   gridspec_kw={"width_ratios": [3, 2]})
    for key, label, color in (("agent", "agent", "tab:blue"), ("guard", "lease guard",
                                                               "tab:green"),
                              ("host", "per host (agent + guard)", "tab:purple")):
        mean = [p["cpu_pct"][key]["mean"] for p in pts]
        hi = [p["cpu_pct"][key]["max"] for p in pts]
        ax1.plot(ns, mean, "o-", color=color, label=f"{label}: mean")
        ax1.plot(ns, hi, "v:", color=color, alpha=0.6, label=f"{label}: busiest host")
    ax1.plot(ns, [p["cpu_pct"]["manager"] for p in pts], "s-", color="tab:red",
             label="manager")
    ax1.axhline(TARGET_AGENT_PCT, color="tab:blue", ls="--", lw=0.8,
                label=f"target per agent at 3 hosts ({TARGET_AGENT_PCT:g} %)")
    ax1.axhline(TARGET_MANAGER_PCT, color="tab:red", ls="--", lw=0.8,
                label=f"target manager at 3 hosts ({TARGET_MANAGER_PCT:g} %)")
    for p in pts:
        if p["false_suspicions"]:
            ax1.annotate(f"{p['false_suspicions']} false\nsuspicions", (p["hosts"],
                         p["cpu_pct"]["manager"]), fontsize=7, color="tab:red",
                         xytext=(4, 4), textcoords="offset points")
    ax1.set_xticks(ns)
    ax1.set_xlabel("emulated hosts (no VNF)")
    ax1.set_ylabel("CPU, % of one core")
    ax1.set_title(f"Idle CPU over a {pts[0]['window_s']:.0f} s window", fontsize=10)
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, loc="upper left")

    det = s["detection"]
    if det:
        keys = list(det)
        runs = {k: [r["detect_ms"] for p in result["points"] if str(p["hosts"]) == k
                    for r in p.get("detection", []) if r["ok"]] for k in keys}
        for i, k in enumerate(keys):
            xs = runs[k]
            ax2.plot([i] * len(xs), xs, "o", color="tab:gray", alpha=0.5)
            med = det[k]["detect_ms"]["median"]
            ax2.hlines(med, i - 0.3, i + 0.3, color="black", lw=2)
            ax2.annotate(f"median {med:.0f}", (i + 0.32, med), fontsize=8, va="center")
        ax2.axhline(TARGET_DETECT_MS, color="tab:red", ls="--", lw=0.8,
                    label=f"target, median at 3 hosts ({TARGET_DETECT_MS:.0f} ms)")
        ax2.set_xticks(range(len(keys)), [f"{k} hosts" for k in keys])
        ax2.set_xlim(-0.6, len(keys) - 0.2)
        ax2.set_ylim(0, max([TARGET_DETECT_MS, *(x for xs in runs.values() for x in xs)]) * 1.2)
        ax2.set_ylabel("crash → manager's DOWN (ms)")
        ax2.legend(fontsize=7, loc="lower right")
        ax2.grid(True, axis="y", alpha=0.3)
    ax2.set_title("Host-crash detection", fontsize=10)
    m = result["machine"]
    fig.suptitle(f"nfvha membership cost — kernel {m['kernel']}, {m['nproc']} vCPU, load at "
                 f"start {m['loadavg_at_start'][0]:.2f}"
                 + (" (quick run)" if result["config"]["quick"] else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)


# -- main ------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not out or any(n < 1 or n > 200 for n in out):
        raise argparse.ArgumentTypeError(f"host counts must be 1..200: {text!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help=f"N={','.join(map(str, QUICK_COUNTS))}, {QUICK_WINDOW_S:g} s windows, "
                         f"{QUICK_DETECT_RUNS} crashes at N=3")
    ap.add_argument("--hosts", type=_ints, default=None,
                    help=f"host counts (default {','.join(map(str, FULL_COUNTS))})")
    ap.add_argument("--window", type=float, default=None,
                    help=f"idle window, s (default {WINDOW_S:g})")
    ap.add_argument("--settle", type=float, default=SETTLE_S,
                    help="wait after all hosts are UP, s")
    ap.add_argument("--runs", type=int, default=None,
                    help=f"host crashes per detection point (default {DETECT_RUNS})")
    ap.add_argument("--detect-hosts", type=_ints, default=None,
                    help="host counts at which crashes are timed (default "
                         f"{','.join(map(str, FULL_DETECT_COUNTS))}; quick: 3)")
    ap.add_argument("--fencing", action="store_true",
                    help="give the manager the testbed fence driver (not needed to detect)")
    ap.add_argument("--tls-compare", type=int, default=None, metavar="N",
                    help="also run the idle window at N hosts without TLS (default 10; "
                         "quick: 3; 0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    plan = Plan(
        counts=a.hosts or (QUICK_COUNTS if a.quick else FULL_COUNTS),
        window_s=a.window or (QUICK_WINDOW_S if a.quick else WINDOW_S),
        settle_s=max(0.0, a.settle),
        detect_counts=a.detect_hosts or (QUICK_DETECT_COUNTS if a.quick else FULL_DETECT_COUNTS),
        detect_runs=a.runs if a.runs is not None else (QUICK_DETECT_RUNS if a.quick
                                                       else DETECT_RUNS),
        fencing=a.fencing, quick=a.quick,
        tls_compare=(a.tls_compare if a.tls_compare is not None else (3 if a.quick else 10))
        or None)
    if plan.window_s < 2 or plan.detect_runs < 0:
        ap.error("need --window >= 2 and --runs >= 0")
    if os.geteuid() != 0:
        print("idle_cost: needs root (namespaces, cgroups)", file=sys.stderr)
        return 2
    install_signal_handlers()
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "idle_cost",
        "run": {"name": "idle_cost-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(started)),
                "started": started},
        "machine": testbed_machine(TB_NAME),
        "config": {
            "quick": plan.quick, "counts": list(plan.counts), "window_s": plan.window_s,
            "settle_s": plan.settle_s, "sample_period_s": SAMPLE_PERIOD,
            "detect_counts": [n for n in plan.detect_counts if n in plan.counts],
            "detect_runs": plan.detect_runs, "fencing": plan.fencing, "vnfs": 0,
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR)},
        },
    }
    points: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        for n in plan.counts:
            points.append(run_point(plan, n))
        if plan.tls_compare:
            if plan.tls_compare not in plan.counts:
                points.append(run_point(plan, plan.tls_compare))
            points.append(run_point(plan, plan.tls_compare, tls=False))
    except (KeyboardInterrupt, BenchError) as exc:
        interrupted = exc
        print(f"idle_cost: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored():
            _down(_testbed(1, False))  # whatever an interrupt left behind
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()  # only if empty: other benchmarks may use it

    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    result["complete"] = interrupted is None  # failed points are recorded with their reason
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    if not any("cpu_pct" in p for p in points):
        print("idle_cost: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["summary"] = summarize(points)
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(result, points)
    result["points"] = points
    publish(result, "idle_cost", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']:.2f} {t['unit']}", doc_img=not a.no_doc_img)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
