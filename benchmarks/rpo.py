#!/usr/bin/env python3
"""Checkpoint interval against VNF throughput and against state lost (the RPO curve).

A 2-host testbed with the HA manager and the steering forwarder (``nfvrpo``,
10.254.0.0/16, state in /run/nfvha-bench-rpo) runs the counting VNF
``examples/vnfs/flowmon.py`` under a fixed offered UDP load (``--rate``, default
5,000 datagrams/s from one paced sender), once per checkpoint interval (0.25 … 4 s, or
fewer with ``--quick``) and per mode:

- ``replay``: ``ha.replay: true``, clients reach the VNF through the forwarder's service
  address (packet log, exact checkpoint cut, replay after a restore);
- ``no-replay``: ``ha.replay: false``; the forwarder has nothing to do for such a VNF
  (the manager registers only replayed VNFs with it), so clients send to the VNF's own
  address, as they would without nfvha's data plane.

Per (mode, interval), one fresh instance:

1. **Throughput** (the cost side): a window of at least two checkpoint periods at the
   offered load, with a closed-loop ``ACK?`` probe (one in flight, at most 100 per s) on
   its own flow for the client-seen RTT.
   Delivered = what flowmon counted (its STATS total, minus the probe's datagrams) per
   second of sending, beside a no-checkpoint baseline instance of the same mode in the
   same run; plus the checkpoints' frozen time, the forwarder's hold time and drops in
   the VNF's socket (RcvbufErrors of its netns).
2. **State lost**: repeated kills. The load runs for one checkpoint period + 0.2 s + a
   seeded uniform random share of a period (so at least one checkpoint falls while it
   runs and the kill's phase within the period is uniform), stops, flowmon's total is
   read once it is settled (``live``), then ``inject kill`` (SIGKILL); after the HEAL
   (restore-local) the total is read again (``after``). Without replay the updates lost
   are ``live - after``; with replay ``sent - after`` (must be 0; > 0 lost, < 0
   duplicates). Model per run: the load's datagrams sent after the restored checkpoint's
   dump started (``createdAt - criu wall``), from the sender's own timeline; model on
   average: ``rate × interval/2`` and ``rate × (period/2 + dump wall)`` with the measured
   period. Traffic that keeps coming during the outage would add ``rate × downtime``
   without replay (reported, not sent: the load is stopped before each kill so that the
   counter compares with exactly what was sent before it).

Runs of the modes are interleaved per interval so that drift hits them alike. Host-failure
detection is relaxed as in ``dataplane.py`` (a loaded 2-CPU machine delays heartbeats;
host loss is not measured here).

Writes ``results/rpo.{json,md,png}`` and ``docs/img/rpo.png``. Needs root and CRIU. Not a
test: targets are reported as PASS/MISS. Usage::

    .venv/bin/python benchmarks/rpo.py [--quick] [--rate 5000] [--seed 1] [--out DIR]
                                       [--no-doc-img]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nfvha.demo import python_vnf
from nfvha.testbed import Testbed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
import dataplane as dp
from _common import (
    REPO,
    RESULTS,
    BenchError,
    install_signal_handlers,
    other_netns,
    percentile,
    progress,
    publish,
    signals_ignored,
    source_digest,
    testbed_down,
    testbed_machine,
    timed,
    wait_for,
)
from _common import fmt_num as _f  # short: it fills the report tables

FLOWMON = REPO / "examples" / "vnfs" / "flowmon.py"

TB_NAME = "nfvrpo"
TB_SUBNET = "10.254.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench-rpo")
N_HOSTS = 2  # a primary and a backup: checkpoints are replicated as in production

FM_PORT, FM_QUERY = dp.FM_PORT, dp.FM_QUERY
PAYLOAD = dp.PAYLOAD
DEFAULT_RATE = 5000.0
PROBE_HZ = 100.0  # client RTT probe (ACK? on its own flow) during throughput windows
PROBE_TIMEOUT_S = 1.0  # a probe without a reply by then counts as lost
NO_CHECKPOINTS = 3600.0  # the baseline's interval: only the first checkpoint, at deploy
BASE_EXTRA_S = 0.2  # load time past one period before the random share

HEAL_TIMEOUT = 20.0
SETTLE_S = 0.5  # at most this long for flowmon to count what was sent before a kill
AFTER_S = 3.0  # at most this long for a replay to bring the counter back
LOAD_MAX_S = 120.0  # a load thread ends by itself after this, whatever happens
TESTBED_TIMEOUT = 30.0

MODES = ("no-replay", "replay")
# Log warnings every kill causes (the injected kill, its alarm): left out of the report.
_EXPECTED_WARNINGS = ("injected kill", "killed by SIGKILL", "alarm raised")


@dataclass(frozen=True)
class Plan:
    quick: bool
    intervals: tuple[float, ...]
    kills_no_replay: int
    kills_replay: int
    window_s: float  # throughput window, at least two checkpoint periods

    def kills(self, mode: str) -> int:
        return self.kills_replay if mode == "replay" else self.kills_no_replay

    def window(self, interval: float | None) -> float:
        return max(self.window_s, 2 * interval) if interval else self.window_s


FULL = Plan(quick=False, intervals=(0.25, 0.5, 1.0, 2.0, 4.0), kills_no_replay=20,
            kills_replay=8, window_s=6.0)
QUICK = Plan(quick=True, intervals=(0.5, 1.0), kills_no_replay=2, kills_replay=1,
             window_s=1.5)


# -- the VNF and the API ---------------------------------------------------------------------


def vnfd(vid: str, addr: str, service: str, interval: float, replay: bool) -> dict[str, Any]:
    net: dict[str, Any] = {"address": addr}
    if replay:
        net["service"] = {"address": service, "port": FM_PORT}
    return {"id": vid, **python_vnf(FLOWMON), "network": net,
            "resources": {"memory": "128Mi"},
            "ha": {"checkpoint_interval": interval, "backups": 1, "replay": replay,
                   "probe": {"type": "udp", "port": FM_QUERY, "send": "PING",
                             "expect": "PONG", **dp.HA_PROBE_LENIENT}}}


class Api(dp.Api):
    """The dataplane client (manager and forwarder), deploying VNFs with or without replay."""

    def deploy_vnf(self, desc: dict[str, Any], iid: str, replay: bool) -> dict[str, Any]:
        if replay:  # waits until the first checkpoint committed and the log is empty
            return self.deploy(desc, iid)
        self.call("POST", "/nfvha/v1/vnfds", json=desc)
        self.call("POST", "/vnflcm/v1/vnf_instances", json={"vnfdId": desc["id"],
                                                            "vnfInstanceId": iid})
        self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})
        wait_for(lambda: self.vnf(iid)["haState"] == "ACTIVE", dp.DEPLOY_TIMEOUT,
                 f"{iid} ACTIVE after instantiate")
        wait_for(lambda: self.checkpoints(iid), dp.DEPLOY_TIMEOUT, f"first checkpoint of {iid}")
        return self.vnf(iid)


@dataclass
class Instance:
    iid: str
    mode: str
    interval: float | None  # None: the no-checkpoint baseline
    ip: str
    target: tuple[str, int]  # where clients send: the service address or the VNF's own
    netns: str

    @property
    def replay(self) -> bool:
        return self.mode == "replay"


def total(inst: Instance) -> int:
    return dp.flowmon_total(inst.ip)


# -- traffic ---------------------------------------------------------------------------------


class Load:
    """One UDP flow at a fixed rate from a thread of its own, until stopped.

    Paced in bursts of 16 against the clock (never bursting to catch up more than that);
    keeps a timeline of (wall time, datagrams sent) so that a run can tell how many
    datagrams left after a given moment (a checkpoint's cut).
    """

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.rate = rate
        self.sent = 0
        self.errors = 0
        self.timeline: list[tuple[float, int]] = []
        self.t_start = self.t_last = 0.0
        self.cpu_s = 0.0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._sock.connect(target)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        wait_for(lambda: self.t_start, 2.0, "the load thread to start", every=0.001)
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(3)
        self._sock.close()
        return self.sent

    @property
    def elapsed(self) -> float:
        return max(1e-6, self.t_last - self.t_start)

    def _run(self) -> None:
        payload = b"d" * PAYLOAD
        send = self._sock.send
        c0 = time.thread_time()
        t0 = time.perf_counter()
        w0 = time.time()
        self.t_start = w0
        self.timeline.append((w0, 0))
        n = 0
        while not self._stop.is_set():
            for _ in range(16):
                try:
                    send(payload)
                    n += 1
                except OSError:
                    self.errors += 1
            now = time.perf_counter()
            self.sent = n
            self.t_last = w0 + (now - t0)
            if n % 256 == 0:
                self.timeline.append((self.t_last, n))
            if now - t0 > LOAD_MAX_S:
                break
            ahead = (n + self.errors) / self.rate - (now - t0)
            if ahead > 0:
                self._stop.wait(ahead)
        self.timeline.append((self.t_last, n))
        self.cpu_s = time.thread_time() - c0

    def sent_after(self, t: float) -> int:
        """Datagrams sent after wall time ``t`` (interpolated on the timeline)."""
        if t <= self.t_start:
            return self.sent
        if t >= self.t_last:
            return 0
        for (ta, na), (tb, nb) in itertools.pairwise(self.timeline):
            if ta <= t <= tb:
                frac = (t - ta) / (tb - ta) if tb > ta else 1.0
                return self.sent - round(na + frac * (nb - na))
        return 0


class AckProber:
    """Client RTT: ``ACK?`` on a flow of its own, one request in flight, at most 1/hz per s.

    flowmon answers ``ACK n`` without echoing anything, so replies cannot be matched to
    requests when one is lost: hence one in flight, and after a timeout (a lost request,
    or a reply later than ``PROBE_TIMEOUT_S``) a fresh socket, i.e. a fresh flow, so a
    late reply cannot be taken for the next one's. A stall delays the next request
    (closed loop: stalls are under-sampled; the maximum still shows them).
    """

    def __init__(self, target: tuple[str, int], hz: float = PROBE_HZ) -> None:
        self.target = target
        self.period = 1.0 / hz
        self.rtt_ms: list[float] = []
        self.sent = 0
        self.lost = 0
        self.flows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ack-prober", daemon=True)

    def start(self) -> AckProber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S + 1)

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(self.target)
        sock.settimeout(PROBE_TIMEOUT_S)
        self.flows += 1
        return sock

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        sock = self._socket()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    sock.send(b"ACK?")
                    self.sent += 1
                    while not sock.recv(64).startswith(b"ACK "):
                        pass
                    self.rtt_ms.append((time.perf_counter() - t0) * 1000)
                except OSError:  # timeout, or an ICMP error: a fresh flow
                    self.lost += 1
                    sock.close()
                    sock = self._socket()
                self._stop.wait(max(0.0, self.period - (time.perf_counter() - t0)))
        finally:
            sock.close()


# -- measurements ----------------------------------------------------------------------------


def describe(values: Sequence[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"n": len(xs), "median": percentile(xs, 50), "p95": percentile(xs, 95),
            "p99": percentile(xs, 99), "min": min(xs, default=math.nan),
            "max": max(xs, default=math.nan), "mean": sum(xs) / len(xs) if xs else math.nan}


def _cp_facts(records: list[dict[str, Any]]) -> dict[str, Any]:
    created = [float(c["createdAt"]) for c in records]
    periods = [b - a for a, b in itertools.pairwise(created)]
    crit = [c.get("criuStats", {}) for c in records]
    return {"checkpoints": len(records),
            "period_s": describe(periods),
            "criu_wall_ms": describe([x.get("wall_seconds", 0) * 1000 for x in crit]),
            "frozen_ms": describe([x.get("frozen_time_us", 0) / 1000 for x in crit]),
            "hold_ms": describe([c["holdMs"] for c in records if c.get("holdMs") is not None])}


def measure_window(api: Api, inst: Instance, rate: float, duration: float) -> dict[str, Any]:
    """Offered load for ``duration`` s with the RTT probe beside it; what was delivered."""
    cl = dp.CheckpointLog(api, inst.iid)
    t0 = total(inst)
    drops0 = dp.netns_udp(inst.netns).get("RcvbufErrors", 0)
    fw0 = api.service(inst.iid)["stats"] if inst.replay else {}
    load = Load(inst.target, rate).start()
    prober = AckProber(inst.target).start()
    try:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            cl.poll()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    finally:
        sent = load.stop()
        prober.stop()
    # What is still queued (a hold, a socket buffer) reaches the VNF, then count.
    with contextlib.suppress(BenchError):
        wait_for(lambda: total(inst) - t0 >= sent + prober.sent - prober.lost, 3.0,
                 f"{inst.iid} counting the window's datagrams", every=0.05)
    time.sleep(0.1)
    cl.poll()
    counted = total(inst) - t0 - len(prober.rtt_ms)  # answered probes were counted
    drops = dp.netns_udp(inst.netns).get("RcvbufErrors", 0) - drops0
    fw1 = api.service(inst.iid)["stats"] if inst.replay else {}
    rtts = list(prober.rtt_ms)
    w: dict[str, Any] = {
        "duration_s": load.elapsed, "sent": sent, "send_errors": load.errors,
        "sent_pps": sent / load.elapsed, "counted": counted,
        "delivered_pps": counted / load.elapsed, "loss_share": 1 - counted / sent if sent else
        math.nan, "vnf_rcvbuf_drops": drops, "sender_cpu_s": load.cpu_s,
        "probe_sent": prober.sent, "probe_replies": len(rtts), "probe_lost": prober.lost,
        "rtt_ms": describe(rtts),
        **_cp_facts(cl.records()),
    }
    frozen_s = sum(c.get("criuStats", {}).get("frozen_time_us", 0) for c in cl.records()) / 1e6
    # Shares of the whole span observed (the checkpoint log and the forwarder's counters
    # include the wait for the queued datagrams after the load stopped).
    span = time.time() - cl.start
    w["observed_s"] = span
    w["frozen_share"] = frozen_s / span
    if inst.replay:
        holds = int(fw1.get("holds", 0)) - int(fw0.get("holds", 0))
        held = float(fw1.get("hold_total_s", 0)) - float(fw0.get("hold_total_s", 0))
        w.update({"holds": holds, "held_s": held, "held_share": held / span})
    return w


def _settled_total(inst: Instance, want: int) -> int:
    """flowmon's total once it counted ``want`` or stopped changing (drops: never)."""
    deadline = time.monotonic() + SETTLE_S
    last, same = -1, 0
    while True:
        t = total(inst)
        if t >= want or time.monotonic() > deadline:
            return t
        same = same + 1 if t == last else 0
        if same >= 3 and not inst.replay:  # with replay a hold may pause it: keep waiting
            return t
        last = t
        time.sleep(0.005)


def kill_once(api: Api, inst: Instance, rate: float, period: float, rng: random.Random,
              cl: dp.CheckpointLog, s: dict[str, Any]) -> None:
    """One load, stop, kill and recovery; fills ``s`` as it goes."""
    before = total(inst)
    s["total_before"] = before
    delay = period + BASE_EXTRA_S + rng.uniform(0, period)
    s["load_s_planned"] = delay
    load = Load(inst.target, rate).start()
    try:
        end = time.monotonic() + delay
        while time.monotonic() < end:
            cl.poll()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    finally:
        sent = load.stop()
    s.update({"sent": sent, "send_errors": load.errors, "load_s": load.elapsed,
              "sent_pps": sent / load.elapsed, "t_stop": load.t_last})
    live = _settled_total(inst, before + sent)
    s["live"] = live
    udp0 = dp.netns_udp(inst.netns)
    s["settle_ms"] = (time.time() - load.t_last) * 1000
    cl.poll()
    seen = {o["id"] for o in api.heals(inst.iid)}
    t_kill = time.time()
    api.call("POST", f"/nfvha/v1/vnf_instances/{inst.iid}/inject", json={"fault": "kill"})
    op = wait_for(lambda: next((o for o in api.heals(inst.iid) if o["id"] not in seen
                                and o["operationState"] in ("COMPLETED", "FAILED")), None),
                  HEAL_TIMEOUT, f"the HEAL of {inst.iid}")
    nf = op.get("nfvha", {})
    s.update({"t_kill": t_kill, "strategy": nf.get("strategy"),
              "restored_checkpoint": nf.get("checkpoint"),
              "replayed": (nf.get("replay") or {}).get("replayed")})
    if op["operationState"] != "COMPLETED":
        raise BenchError(f"HEAL of {inst.iid} {op['operationState']}: "
                         f"{op.get('error', {}).get('detail')}")
    cl.poll()  # the restored checkpoint may have committed after the last poll
    ts = {k: float(v) for k, v in nf.get("timestamps", {}).items()}
    s["downtime_ms"] = (ts["serving"] - t_kill) * 1000 if "serving" in ts else None
    s["detect_ms"] = (ts["detected"] - t_kill) * 1000 if "detected" in ts else None
    if inst.replay:
        with contextlib.suppress(BenchError):
            wait_for(lambda: total(inst) >= before + sent, AFTER_S,
                     f"{inst.iid} counting everything after the replay", every=0.02)
        time.sleep(0.15)  # a duplicate would show now
    else:
        time.sleep(0.05)
    after = total(inst)
    s["after"] = after
    # Datagrams dropped by the VNF's socket (its netns is kept by restore-local) from the
    # kill until now: with replay, a paced replay faster than the restored VNF reads.
    udp1 = dp.netns_udp(inst.netns)
    s["vnf_rcvbuf_drops_recovery"] = udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0)
    # All UDP counters of its netns over the recovery (InDatagrams includes the manager's
    # probes; NoPorts: datagrams that arrived while no socket was bound).
    s["vnf_udp_recovery"] = {k: v - udp0.get(k, 0) for k, v in udp1.items()
                             if v != udp0.get(k, 0)}
    if inst.replay and after != before + sent:
        time.sleep(1.0)  # slow rather than lost? (reported, not used)
        s["after_1s_later"] = total(inst)
    s["state_lost"] = live - after  # what the VNF had counted and no longer has
    s["lost_vs_sent"] = before + sent - after  # replay: must be 0 (< 0: duplicates)
    s["not_counted_before_kill"] = before + sent - live  # socket drops, or held by a hold
    # The model: the restored checkpoint's state is cut when CRIU freezes the VNF, between
    # the dump's start (createdAt - CRIU wall: an upper bound of the loss) and its frozen
    # time before the commit (createdAt - frozen, hashing neglected: a lower bound).
    cp = next((c for c in cl.records() if c["seq"] == s["restored_checkpoint"]), None)
    if cp is not None:
        st = cp.get("criuStats", {})
        created = float(cp["createdAt"])
        cut = created - float(st.get("wall_seconds", 0.0))
        s["restored_created_at"] = created
        s["restored_age_at_stop_s"] = load.t_last - cut
        s["model_lost"] = load.sent_after(cut)
        s["model_lost_low"] = load.sent_after(created - float(st.get("frozen_time_us", 0)) / 1e6)
    s["outage_datagrams_at_rate"] = (rate * s["downtime_ms"] / 1000
                                     if s["downtime_ms"] is not None else None)
    s["ok"] = True


# -- a run -----------------------------------------------------------------------------------


def _testbed() -> Testbed:
    return Testbed(name=TB_NAME, n_hosts=N_HOSTS, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True, with_forwarder=True, manager_args=list(dp.MANAGER_ARGS),
                   agent_args=list(dp.AGENT_ARGS),
                   forwarders=1)  # as dataplane.py, whose probes it uses


def _interval_key(interval: float | None) -> str:
    return "none" if interval is None else f"{interval:g}"


def run_instance(tb: Testbed, api: Api, plan: Plan, rate: float, k: int, mode: str,
                 interval: float | None, rng: random.Random,
                 result: dict[str, Any]) -> None:
    replay = mode == "replay"
    iid = f"{'rr' if replay else 'rn'}{k}"
    addr, service = tb.vnf_address(k), tb.service_address(k)
    ip = addr.split("/")[0]
    tag = f"{mode:9s} interval {_interval_key(interval):>4s} s"
    t0 = time.perf_counter()
    try:
        vnf = api.deploy_vnf(vnfd(f"rpo-{iid}", addr, service, interval or NO_CHECKPOINTS,
                                  replay), iid, replay)
    except BenchError as exc:
        result["errors"].append(f"{tag}: deploy: {exc}")
        progress(f"{tag}: deploy FAILED: {exc}")
        with contextlib.suppress(BenchError):
            api.remove(iid)
        return
    inst = Instance(iid, mode, interval, ip, (service, FM_PORT) if replay else (ip, FM_PORT),
                    f"{tb.name}-{vnf['host']}-{iid}")
    try:
        progress(f"{tag}: deployed {iid} on {vnf['host']} "
                 f"({time.perf_counter() - t0:.1f}s)")
        try:
            w = measure_window(api, inst, rate, plan.window(interval))
            w.update({"mode": mode, "checkpoint_interval_s": interval, "offered_pps": rate,
                      "instance": iid})
            result["throughput"].append(w)
            held = f", held {w['held_share'] * 100:.1f}%" if replay else ""
            progress(f"{tag}: sent {w['sent_pps']:6.0f}/s, delivered {w['delivered_pps']:6.0f}"
                     f"/s, loss {w['loss_share'] * 100:5.2f}%, RTT p50 "
                     f"{w['rtt_ms']['median']:.2f} p99 {w['rtt_ms']['p99']:.2f} ms, "
                     f"{w['checkpoints']} checkpoints, frozen {w['frozen_share'] * 100:.1f}%"
                     f"{held}, VNF socket drops {w['vnf_rcvbuf_drops']}")
        except BenchError as exc:
            result["errors"].append(f"{tag}: throughput: {exc}")
            progress(f"{tag}: throughput FAILED: {exc}")
            w = {}
        if interval is None:
            return
        period = w.get("period_s", {}).get("median", math.nan)
        if math.isnan(period):
            period = interval
        cl = dp.CheckpointLog(api, iid)
        for run in range(plan.kills(mode)):
            s: dict[str, Any] = {"mode": mode, "checkpoint_interval_s": interval, "run": run,
                                 "instance": iid, "period_s": period, "ok": False,
                                 "load1": os.getloadavg()[0]}
            try:
                kill_once(api, inst, rate, period, rng, cl, s)
            except BenchError as exc:
                s["error"] = str(exc)[:500]
            result["kills"].append(s)
            if not s["ok"]:
                progress(f"{tag} kill {run}: FAILED: {s.get('error')}")
                try:  # carry on only with an instance that is serving again
                    wait_for(lambda: api.vnf(iid)["haState"] == "ACTIVE", 20,
                             f"{iid} ACTIVE again")
                except BenchError:
                    return
                continue
            model = s.get("model_lost")
            progress(f"{tag} kill {run:2d}: sent {s['sent']:6d}, counted "
                     f"{s['live'] - s['total_before']:6d}, state lost {s['state_lost']:6d} "
                     f"(model {model}), vs sent "
                     f"{s['lost_vs_sent']:6d}; downtime {_f(s['downtime_ms'])} ms, "
                     f"{s['strategy']} from checkpoint {s['restored_checkpoint']}")
    finally:
        try:
            api.remove(iid)
        except BenchError as exc:
            result["errors"].append(f"{tag}: remove {iid}: {exc}")


def run(plan: Plan, rate: float, seed: int, result: dict[str, Any]) -> None:
    tb = _testbed()
    api: Api | None = None
    rng = random.Random(seed)
    try:
        with timed("testbed up"):
            with contextlib.suppress(Exception):
                asyncio.run(tb.down())  # leftovers of an interrupted run
            try:
                asyncio.run(tb.up(timeout=TESTBED_TIMEOUT))
            except Exception as exc:
                raise BenchError(f"testbed {TB_NAME} did not come up: {exc}") from exc
        api = Api(tb)
        k = 0
        for interval in (None, *plan.intervals):
            for mode in MODES:
                k += 1
                result["other_netns_seen"].update(other_netns(TB_NAME))
                run_instance(tb, api, plan, rate, k, mode, interval, rng, result)
    finally:
        if api is not None:
            api.close()
        # Warnings of the daemons (e.g. an agent dumping before the VNF read everything).
        with contextlib.suppress(Exception):
            for log in sorted(tb.log_dir.glob("*.log")):
                warn = [line for line in log.read_text(errors="replace").splitlines()
                        if (" WARNING " in line or " ERROR " in line)
                        and not any(x in line for x in _EXPECTED_WARNINGS)]
                if warn:
                    result["log_warnings"][log.stem] = {
                        "count": len(warn),
                        "dumped_with_unread_datagrams": sum(
                            1 for ln in warn if "unread datagrams" in ln),
                        "last": warn[-20:]}
        with signals_ignored():
            testbed_down(tb, "rpo")
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()


# -- summary, targets, output ----------------------------------------------------------------


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    c = result["config"]
    rate = float(c["rate_pps"])
    tput = result["throughput"]
    base = {w["mode"]: w for w in tput if w["checkpoint_interval_s"] is None}
    rows = []
    for w in tput:
        b = base.get(w["mode"])
        rows.append({
            "mode": w["mode"], "checkpoint_interval_s": w["checkpoint_interval_s"],
            "offered_pps": w["offered_pps"], "sent_pps": w["sent_pps"],
            "delivered_pps": w["delivered_pps"],
            "delivered_vs_baseline": (w["delivered_pps"] / b["delivered_pps"]
                                      if b and b["delivered_pps"] else math.nan),
            "loss_share": w["loss_share"], "vnf_rcvbuf_drops": w["vnf_rcvbuf_drops"],
            "rtt_p50_ms": w["rtt_ms"]["median"], "rtt_p99_ms": w["rtt_ms"]["p99"],
            "rtt_max_ms": w["rtt_ms"]["max"],
            "checkpoints": w["checkpoints"], "period_s": w["period_s"]["median"],
            "frozen_ms_median": w["frozen_ms"]["median"], "frozen_share": w["frozen_share"],
            "held_share": w.get("held_share"), "hold_ms_median": w["hold_ms"]["median"],
        })
    lost_rows = []
    for mode in MODES:
        for interval in c["intervals_s"]:
            mine = [s for s in result["kills"]
                    if s["mode"] == mode and s["checkpoint_interval_s"] == interval]
            if not mine:
                continue
            ok = [s for s in mine if s["ok"]]
            metric = "state_lost" if mode == "no-replay" else "lost_vs_sent"
            lost = [s[metric] for s in ok]
            tw = next((w for w in tput if w["mode"] == mode
                       and w["checkpoint_interval_s"] == interval), None)
            period = tw["period_s"]["mean"] if tw else math.nan
            wall_s = tw["criu_wall_ms"]["mean"] / 1000 if tw else math.nan
            lost_rows.append({
                "mode": mode, "checkpoint_interval_s": interval, "metric": metric,
                "runs": len(mine), "ok": len(ok),
                "lost": describe(lost),
                "lost_zero_runs": sum(1 for x in lost if x == 0),
                "duplicates_runs": sum(1 for x in lost if x < 0),
                "lost_s_at_rate": describe([x / rate for x in lost]),
                "model_lost": describe([s.get("model_lost") for s in ok]),
                "model_lost_low": describe([s.get("model_lost_low") for s in ok]),
                "theory_mean_simple": rate * interval / 2,
                "theory_mean_period": rate * (period / 2 + wall_s),
                "period_s": period, "criu_wall_s": wall_s,
                "restored_age_at_stop_s": describe([s.get("restored_age_at_stop_s")
                                                    for s in ok]),
                "not_counted_before_kill": describe([s["not_counted_before_kill"]
                                                     for s in ok]),
                "downtime_ms": describe([s["downtime_ms"] for s in ok]),
                "vnf_rcvbuf_drops_recovery": describe([s.get("vnf_rcvbuf_drops_recovery")
                                                       for s in ok]),
                "outage_datagrams_at_rate": describe([s["outage_datagrams_at_rate"]
                                                      for s in ok]),
                "strategies": {k: sum(1 for s in ok if s["strategy"] == k)
                               for k in sorted({str(s["strategy"]) for s in ok})},
            })
    rep = [s for s in result["kills"] if s["mode"] == "replay" and s["ok"]]
    return {
        "rate_pps": rate,
        "throughput": rows,
        "state_lost": lost_rows,
        "replay": {"runs": len([s for s in result["kills"] if s["mode"] == "replay"]),
                   "ok": len(rep), "exact": sum(1 for s in rep if s["lost_vs_sent"] == 0),
                   "lost_total": sum(max(0, s["lost_vs_sent"]) for s in rep),
                   "duplicates_total": sum(max(0, -s["lost_vs_sent"]) for s in rep)},
    }


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    r = summary["replay"]
    if r["runs"]:
        out.append({"target": f"with replay, 0 updates lost in every kill ({r['exact']}/"
                              f"{r['runs']} exact, {r['lost_total']} lost, "
                              f"{r['duplicates_total']} duplicated)",
                    "value": r["lost_total"] + r["duplicates_total"], "unit": "updates",
                    "pass": r["exact"] == r["runs"]})
    nr = [row for row in summary["state_lost"] if row["mode"] == "no-replay" and row["ok"]]
    if nr:
        # docs/architecture.md: without replay the loss is "at most the checkpoint interval"
        worst = max(row["lost"]["max"] / (summary["rate_pps"] * row["checkpoint_interval_s"])
                    for row in nr)
        out.append({"target": "without replay, state lost <= rate × checkpoint interval in "
                              "every kill (docs/architecture.md; value: worst ratio × 100)",
                    "value": worst * 100, "unit": "%", "pass": worst <= 1.0})
    return out


def anomalies(result: dict[str, Any]) -> list[str]:
    out = list(result["errors"])
    m = result["machine"]
    if result["other_netns_seen"]:
        names = sorted({n.rsplit("-", 1)[0] for n in result["other_netns_seen"]})
        out.append(f"other testbeds' network namespaces existed during the run "
                   f"({', '.join(names[:8])}): they shared the CPUs; load1 at start "
                   f"{m['loadavg_at_start'][0]:.2f}, at end {m['loadavg_at_end'][0]:.2f}")
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append(f"nfvha's sources changed during the run ({m['source_digest_at_start']} -> "
                   f"{m['source_digest_at_end']})")
    for s in result["kills"]:
        tag = f"{s['mode']} interval {s['checkpoint_interval_s']} s kill {s['run']}"
        if not s["ok"]:
            continue
        if s["strategy"] != "restore-local":
            out.append(f"{tag}: strategy {s['strategy']}")
        if s["mode"] == "replay" and s["lost_vs_sent"] != 0:
            later = s.get("after_1s_later")
            out.append(f"{tag}: replay left {s['lost_vs_sent']} lost (< 0: duplicates) of "
                       f"{s['replayed']} replayed; the VNF's socket dropped "
                       f"{s.get('vnf_rcvbuf_drops_recovery')} datagrams meanwhile; counter "
                       f"1 s later {later - s['total_before'] if later else later} of "
                       f"{s['sent']} sent")
        if s["mode"] == "no-replay" and s["state_lost"] < 0:
            out.append(f"{tag}: the counter grew across the kill ({-s['state_lost']})?")
    for name, lw in result["log_warnings"].items():
        unread = lw.get("dumped_with_unread_datagrams", 0)
        out.append(f"{lw['count']} unexpected warnings in {name}.log"
                   + (f" ({unread}: a checkpoint dumped while the VNF still had unread "
                      "datagrams, which neither that checkpoint nor a replay from it holds)"
                      if unread else "") + f"; last: {lw['last'][-1][:160]}")
    for w in result["throughput"]:
        if w["loss_share"] > 0.001:
            out.append(f"{w['mode']} interval {w['checkpoint_interval_s']}: "
                       f"{w['loss_share'] * 100:.2f}% of the offered load not counted "
                       f"(VNF socket drops {w['vnf_rcvbuf_drops']})")
    return out


def _mode_interval(x: float | None) -> str:
    return "none (baseline)" if x is None else f"{x:g} s"


def markdown(result: dict[str, Any]) -> str:
    m, c, sm = result["machine"], result["config"], result["summary"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    rate = sm["rate_pps"]
    lines = [
        "# RPO: checkpoint interval against throughput and state lost",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · CRIU {version} · {N_HOSTS} emulated hosts with manager "
        f"and forwarder · flowmon at {rate:.0f} datagrams/s offered · "
        f"{'quick' if c['quick'] else 'full'} run, {_f(result['elapsed_s'])} s · load average "
        f"at start {m['loadavg_at_start'][0]:.2f}, at end {m['loadavg_at_end'][0]:.2f}.",
        "",
        "*Modes*: `replay` = `ha.replay: true`, clients send to the forwarder's service "
        "address; `no-replay` = `ha.replay: false`, clients send to the VNF's own address "
        "(the forwarder handles only replayed VNFs). One fresh instance per mode and "
        "interval; the baseline has no checkpoint after the first one.",
        "",
        "## Throughput at a fixed offered load",
        "",
        f"Window ≥ 2 checkpoint periods ({c['window_s']} s at least); delivered = counted by "
        "the VNF per second of sending; RTT of a closed-loop `ACK?` probe on its own flow (one "
        "in flight, at most 100 per s; a reply later than 1 s counts as lost). "
        "*Frozen*: CRIU's frozen time of the window's checkpoints, and *held*: time the "
        "forwarder held delivery, both as a share of the time observed (the window and the "
        "wait for its last datagrams).",
        "",
        "| Mode | Interval | Period s | Sent/s | Delivered/s | vs baseline | Not counted | "
        "VNF socket drops | RTT p50 ms | RTT p99 ms | RTT max ms | Frozen | Held |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(sm["throughput"], key=lambda r: (r["mode"], r["checkpoint_interval_s"]
                                                     or 0)):
        held = "–" if r["held_share"] is None else f"{r['held_share'] * 100:.1f}%"
        lines.append(
            f"| {r['mode']} | {_mode_interval(r['checkpoint_interval_s'])} "
            f"| {_f(r['period_s'], 2)} | {_f(r['sent_pps'])} | {_f(r['delivered_pps'])} "
            f"| {_f(r['delivered_vs_baseline'], 3)} | {r['loss_share'] * 100:.2f}% "
            f"| {r['vnf_rcvbuf_drops']} | {_f(r['rtt_p50_ms'], 2)} | {_f(r['rtt_p99_ms'], 1)} "
            f"| {_f(r['rtt_max_ms'], 1)} | {r['frozen_share'] * 100:.1f}% | {held} |")
    lines += [
        "", "## State lost on a process kill", "",
        "Per kill: the load runs one checkpoint period + 0.2 s + a seeded uniform share of a "
        "period, stops; flowmon's total is read once settled, then SIGKILL (`inject kill`), "
        "restore-local, total read again. *Lost* without replay = counted before the kill − "
        "counted after; with replay = sent − counted after (0 expected; negative would be "
        "duplicates). *Model per run*: datagrams sent after the restored checkpoint's dump "
        "began (an upper bound; the lower one counts from CRIU's frozen time before the "
        "commit; for replay: what would have been lost without it). *Theory* (mean): "
        "rate × interval/2, and rate × (measured period/2 + CRIU dump wall). *Outage at "
        "rate*: what traffic continuing through the outage would add "
        "without replay (rate × downtime); with replay the forwarder holds and delivers it.",
        "",
        "| Mode | Interval | Runs ok | Lost median | p95 | max | mean | Theory rate×I/2 "
        "| Theory rate×(P/2+dump) | Model median (low–up) | Lost as s of traffic (median) "
        "| Downtime ms (median) | Outage at rate (median) |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sm["state_lost"]:
        lines.append(
            f"| {r['mode']} | {r['checkpoint_interval_s']:g} s | {r['ok']}/{r['runs']} "
            f"| **{_f(r['lost']['median'])}** | {_f(r['lost']['p95'])} | {_f(r['lost']['max'])} "
            f"| {_f(r['lost']['mean'])} | {_f(r['theory_mean_simple'])} "
            f"| {_f(r['theory_mean_period'])} | {_f(r['model_lost_low']['median'])}–"
            f"{_f(r['model_lost']['median'])} "
            f"| {_f(r['lost_s_at_rate']['median'], 3)} | {_f(r['downtime_ms']['median'])} "
            f"| {_f(r['outage_datagrams_at_rate']['median'])} |")
    rp = sm["replay"]
    lines += ["", f"**With replay: {rp['exact']}/{rp['runs']} kills exact** "
              f"({rp['lost_total']} updates lost, {rp['duplicates_total']} duplicated in all).",
              "", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: "
                     f"{t['value']:.0f} {t['unit']}")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in result["anomalies"]] or ["- none"]
    lines += ["", "Settings: " + ", ".join(f"{k} {v}" for k, v in c.items()
                                           if k not in ("testbed",)), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    sm, m, c = result["summary"], result["machine"], result["config"]
    rate = sm["rate_pps"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.5))
    colors = {"no-replay": "tab:orange", "replay": "tab:blue"}
    ax1b = ax1.twinx()
    for mode in MODES:
        rows = sorted((r for r in sm["throughput"] if r["mode"] == mode
                       and r["checkpoint_interval_s"] is not None),
                      key=lambda r: r["checkpoint_interval_s"])
        base = next((r for r in sm["throughput"] if r["mode"] == mode
                     and r["checkpoint_interval_s"] is None), None)
        xs = [r["checkpoint_interval_s"] for r in rows]
        ax1.plot(xs, [r["delivered_pps"] for r in rows], "o-", color=colors[mode],
                 label=f"{mode}: delivered")
        ax1b.plot(xs, [r["frozen_share"] * 100 for r in rows], "^:", color=colors[mode],
                  alpha=0.6, label=f"{mode}: time frozen (CRIU)")
        if mode == "replay":
            ax1b.plot(xs, [(r["held_share"] or 0) * 100 for r in rows], "v:", color="navy",
                      alpha=0.6, label="replay: time delivery held")
        if base is not None:
            ax1.axhline(base["delivered_pps"], color=colors[mode], ls=":", lw=1,
                        label=f"{mode}: no-checkpoint baseline")
        ax2.plot(xs, [r["rtt_p50_ms"] for r in rows], "o-", color=colors[mode],
                 label=f"{mode}: p50")
        ax2.plot(xs, [r["rtt_p99_ms"] for r in rows], "s--", color=colors[mode],
                 label=f"{mode}: p99")
        if base is not None:
            ax2.axhline(base["rtt_p99_ms"], color=colors[mode], ls=":", lw=1,
                        label=f"{mode}: p99, baseline")
    ax1.axhline(rate, color="gray", lw=0.8, label="offered")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("checkpoint interval (s)")
    ax1.set_ylabel("datagrams/s counted by the VNF")
    ax1.set_title("Throughput at a fixed offered load", fontsize=10)
    ax1.set_ylim(0, rate * 1.25)
    ax1b.set_ylim(0, 100)
    ax1b.set_ylabel("% of the time (dotted)")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="center left")
    ax1.grid(True, alpha=0.3)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("checkpoint interval (s)")
    ax2.set_ylabel("client RTT (ms)")
    ax2.set_title("RTT of an ACK? probe on the data path (closed loop)", fontsize=10)
    ax2.legend(fontsize=7, loc="center right")
    ax2.grid(True, alpha=0.3, which="both")

    nr = [r for r in sm["state_lost"] if r["mode"] == "no-replay" and r["ok"]]
    if nr:
        xs = [r["checkpoint_interval_s"] for r in nr]
        med = [r["lost"]["median"] for r in nr]
        ax3.errorbar(xs, med, yerr=[[0] * len(nr),
                                    [max(0.0, r["lost"]["p95"] - r["lost"]["median"])
                                     for r in nr]],
                     fmt="o-", color=colors["no-replay"], capsize=4,
                     label="no replay: measured median (whisker p95)")
        ax3.plot(xs, [r["lost"]["max"] for r in nr], "v", color=colors["no-replay"],
                 alpha=0.6, label="no replay: max")
        ax3.plot(xs, [r["lost"]["mean"] for r in nr], "x", color="black",
                 label="no replay: measured mean")
        ax3.plot(xs, [r["theory_mean_simple"] for r in nr], "--", color="gray",
                 label="theory: rate × interval / 2")
        ax3.plot(xs, [r["theory_mean_period"] for r in nr], ":", color="black",
                 label="theory: rate × (period/2 + dump time)")
        ax3.plot(xs, [r["theory_mean_simple"] + r["outage_datagrams_at_rate"]["median"]
                      for r in nr], "-.", color="tab:red", lw=1,
                 label="rate × interval / 2 + rate × downtime (traffic kept coming)")
    rp = [r for r in sm["state_lost"] if r["mode"] == "replay" and r["ok"]]
    if rp:
        ax3.plot([r["checkpoint_interval_s"] for r in rp], [r["lost"]["max"] for r in rp],
                 "D", color=colors["replay"], ms=7,
                 label=f"replay: max lost ({sm['replay']['exact']}/{sm['replay']['runs']} "
                       "exact)")
    ax3.set_xscale("log", base=2)
    ax3.set_xlabel("checkpoint interval (s)")
    ax3.set_ylabel(f"updates lost per process kill (at {rate:.0f}/s)")
    ax3.set_title("State lost (RPO): without and with replay", fontsize=10)
    ax3.legend(fontsize=7, loc="upper left")
    ax3.grid(True, alpha=0.3)
    ticks = list(c["intervals_s"])
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    fig.suptitle(f"nfvha RPO — flowmon at {rate:.0f} datagrams/s; kernel {m['kernel']}, "
                 f"{m['nproc']} vCPU, CRIU {version}; kills per interval: "
                 f"{c['kills_no_replay']} without, {c['kills_replay']} with replay"
                 + (" (quick)" if c["quick"] else ""), fontsize=10)
    fig.tight_layout()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------


def _compact(kills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
            for s in kills]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help="under a minute: intervals 0.5 and 1 s, 2+1 kills each")
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE,
                    help="offered load, datagrams/s (default %(default).0f)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill times")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    if a.rate <= 0:
        ap.error("--rate must be > 0")
    if os.geteuid() != 0:
        print("rpo: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    plan = QUICK if a.quick else FULL
    install_signal_handlers()
    machine = testbed_machine(TB_NAME)
    machine["other_netns_at_start"] = other_netns(TB_NAME)
    with contextlib.suppress(OSError):
        machine["rmem_default"] = int(Path("/proc/sys/net/core/rmem_default").read_text())
    result: dict[str, Any] = {
        "benchmark": "rpo",
        "machine": machine,
        "config": {**{k: v for k, v in asdict(plan).items() if k != "intervals"},
                   "intervals_s": list(plan.intervals), "rate_pps": a.rate, "seed": a.seed,
                   "payload_bytes": PAYLOAD, "probe_hz": PROBE_HZ, "backups": 1,
                   "no_checkpoint_interval_s": NO_CHECKPOINTS, "recovery": "restore-local",
                   "ha_probe": dp.HA_PROBE_LENIENT, "manager_args": dp.MANAGER_ARGS,
                   "agent_args": dp.AGENT_ARGS,
                   "testbed": {"name": TB_NAME, "subnet": TB_SUBNET,
                               "state_dir": str(STATE_DIR), "hosts": N_HOSTS}},
        "throughput": [], "kills": [], "errors": [], "other_netns_seen": set(),
        "log_warnings": {},
    }
    t_start = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        run(plan, a.rate, a.seed, result)
    except (KeyboardInterrupt, BenchError) as exc:
        interrupted = exc
        print(f"rpo: stopped: {exc!r}", file=sys.stderr)
    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    result["other_netns_seen"] = sorted(result["other_netns_seen"])
    result["complete"] = interrupted is None and not result["errors"]
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    if not result["throughput"] and not result["kills"]:
        print("rpo: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["summary"] = summarize(result)
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(result)
    if interrupted is not None:
        result["anomalies"].insert(0, f"run incomplete: {interrupted!r}")
    result["kills"] = _compact(result["kills"])
    publish(result, "rpo", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']:.0f} {t['unit']}", doc_img=not a.no_doc_img)
    return 0 if interrupted is None else 1


if __name__ == "__main__":
    sys.exit(main())
