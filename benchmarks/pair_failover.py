#!/usr/bin/env python3
"""The forwarder pair: service outage, time to a new active and datagrams lost when the
active forwarder dies, under traffic.

A 3-host testbed with the HA manager and a forwarder pair (``nfvpf``, 10.233.0.0/16,
state in /run/nfvha-bench-pf; ``Testbed(forwarders=2)``: forwarders in1 and in2 on two
ingress hosts) runs a flow monitor and a UDP NAT (``examples/vnfs``), each with packet
log and replay behind a service address (checkpoint every 0.5 s, 1 backup, a UDP health
probe every 50 ms: the descriptors of ``tests/e2e/test_replay.py``).

Per fault, ``--reps`` repetitions (20; ``--quick`` 3):

- ``kill-active``: the active forwarder process is sent SIGKILL (``Testbed.kill_forwarder``
  by id); its supervisor starts it again and it rejoins as the new active's standby;
- ``crash-ingress``: the active's ingress host loses power (``crash_ingress_host``: links
  cut, then every process of it killed), and is powered on again after the takeover
  (``restore_ingress_host``).

Each repetition waits until the pair is in sync and quiet (``GET /nfvha/v1/forwarders``:
both members, one active, ``in_sync``; then 2.2 s, so that leases the active got while it
had no standby, 2 s ones, have run out), then sends 500 numbered datagrams/s to each
service from one flow each (a new flow per repetition); after 0.7 s plus a seeded random
share of a checkpoint interval, the fault (if the pair is still in sync then: a pair that
left sync under traffic is reported and the repetition tried again). Measured:

- **service back**: from the fault to the end of the silence of the NAT's replies during
  which the takeover was granted; and the longest silence of its replies around the
  fault (0.3 s before to 3 s after; it may be a checkpoint's hold of delivery right after
  the takeover, not the takeover itself: every silence, the NAT's checkpoints then and
  the longest silence in the steady state before the fault are kept to tell);
- **new active**: when the manager granted the takeover (``takeovers[].at`` of
  ``GET /nfvha/v1/forwarders``), and when polling it (every 20 ms) first named another
  active;
- **lost in flight**: NAT datagrams never answered, and whether each was sent within the
  takeover window: after the last datagram sent before the fault that was answered (the
  NAT answers in order, so those after it were still on their way, queued or held for a
  checkpoint, when the active died; how long before the fault the oldest of them was
  sent is reported) and before service back + 50 ms; the flow
  monitor, which answers nothing, loses what was sent less what it counted once quiet,
  at most what was sent from a checkpoint interval before the fault (no hold lasts
  longer) to that end; the flow must get one NAT binding (the new active keeps each
  flow's upstream port);
- **a VNF kill after the takeover**: once a checkpoint of the flow monitor was taken
  through the new active, it is killed under traffic (``inject kill``); after its
  recovery its counter must equal what it held before plus what was sent since (exact).

Then one repetition of **standby loss**: the standby is killed under traffic, and its
host's power cut a second later; nothing may be lost, the active must stay, and the time
from the power cut to the ``forwarder-standby-missing`` alarm is measured (and from the
host's restore to the alarm's clearing).

Writes ``results/pair_failover.{json,md,png}`` and ``docs/img/pair_failover.png``;
``--quick`` writes to a new temporary directory instead (or ``--out``) and never to
docs/img. Needs root and CRIU. Not a test: the targets are reported as PASS/MISS. Usage::

    .venv/bin/python benchmarks/pair_failover.py [--quick] [--reps 20] [--seed 1]
                                                 [--out DIR] [--no-doc-img]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nfvha.dataplane.pair import PairTimings
from nfvha.demo import python_vnf
from nfvha.errors import NfvhaError
from nfvha.testbed import Testbed
from nfvha.vnfm import forwarders as pair_manager

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
import dataplane as dp
from _common import (
    REPO,
    RESULTS,
    BenchError,
    fmt_num,
    install_signal_handlers,
    manager_call,
    manager_client,
    other_netns,
    percentile,
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

EXAMPLES = REPO / "examples" / "vnfs"

TB_NAME = "nfvpf"
TB_SUBNET = "10.233.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench-pf")
N_HOSTS = 3
# Host-loss detection of the compute hosts is not measured here; on a loaded 2-core
# machine the defaults may take a starved host for a lost one (dataplane.py's reason).
MANAGER_ARGS = ["--suspect-after", "2.0", "--fencing-timeout", "3.0"]
AGENT_ARGS = ["--fencing-timeout", "3.0"]

FAULTS = ("kill-active", "crash-ingress")
FAULT_LABELS = {"kill-active": "active forwarder SIGKILL",
                "crash-ingress": "active's ingress host power cut"}
RATE_HZ = 500.0  # datagrams/s per flow, to each service
CHECKPOINT_INTERVAL = 0.5
WARM_S = 0.7  # traffic before the fault, plus a random share of a checkpoint interval
UNSETTLED_TRIES = 3  # attempts of a repetition whose pair left sync before its fault
AFTER_WINDOW_S = 0.05  # past the first reply after the silence: still the takeover
OUTAGE_BEFORE_S, OUTAGE_AFTER_S = 0.3, 3.0  # where the longest silence is looked for
GAP_S = 0.04  # a silence of the replies longer than this is listed (500/s: one per 2 ms)
AFTER_ACTIVE_S = 0.5  # traffic kept after a new active is named
LAST_REPLIES_S = 0.3
POLL_S = 0.02  # GET /nfvha/v1/forwarders while waiting for a new active
QUIET_S = 2.2  # after sync: the active's lone (2 s) leases run out
SYNC_TIMEOUT = 30.0
ACTIVE_TIMEOUT = 10.0
CHECKPOINT_TIMEOUT = 10.0
HEAL_TIMEOUT = 20.0
ALARM_TIMEOUT = 15.0
SETTLE_POLLS, SETTLE_EVERY = 40, 0.15
DEPLOY_TIMEOUT = 30.0
TESTBED_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0
FLOW_MAX_S = 120.0  # a sending thread ends by itself after this, whatever happens
TARGET_BACK_S = 0.3  # issue: service back within 300 ms, median
STANDBY_ALARM = "forwarder-standby-missing"
# Warnings the faults cause on purpose (a forwarder, its host or a VNF killed, the standby
# rejoining, the manager calling a dead forwarder): left out of the report. What is left
# (a stream that broke on its own, a lease that lapsed, a checkpoint behind) is listed.
_EXPECTED_WARNINGS = (
    "refused: this forwarder is asking for the active's place",
    "mirror stream to the standby lost", "ended: [Errno 104] Connection reset by peer",
    "ended: 0 bytes read", "active in term", "injected kill", "killed by SIGKILL",
    "process-exit", "forwarder-standby-missing", "ARP socket on eth0: [Errno 100]",
    "forwarder-unavailable")


@dataclass(frozen=True)
class Plan:
    quick: bool
    reps: int  # per fault
    standby_reps: int


def make_plan(a: argparse.Namespace) -> Plan:
    q = bool(a.quick)
    return Plan(quick=q, reps=a.reps or (3 if q else 20), standby_reps=1)


# -- the VNFs and the manager's API ----------------------------------------------------------


def replayed_vnfd(kind: str, addr: str, service: str) -> dict[str, Any]:
    """tests/e2e/test_replay.py's descriptor: replayed, behind ``service``."""
    port, query = (dp.FM_PORT, dp.FM_QUERY) if kind == "flowmon" else (dp.NAT_PORT,
                                                                        dp.NAT_QUERY)
    return {"id": f"pf-{kind}", **python_vnf(EXAMPLES / f"{kind}.py"),
            "network": {"address": addr, "service": {"address": service, "port": port}},
            "resources": {"memory": "128Mi"},
            "ha": {"checkpoint_interval": CHECKPOINT_INTERVAL, "backups": 1, "replay": True,
                   "probe": {"type": "udp", "port": query, "send": "PING", "expect": "PONG",
                             "interval": 0.05, "timeout": 0.05, "failure_threshold": 3}}}


class Api:
    """The manager's API as this benchmark uses it; every call bounded, a refusal a
    BenchError naming the call."""

    def __init__(self, tb: Testbed) -> None:
        self.m = manager_client(tb, HTTP_TIMEOUT)

    def close(self) -> None:
        self.m.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        return manager_call(self.m, method, path, **kw)

    def pair(self) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", "/nfvha/v1/forwarders")
        return res

    def vnf(self, iid: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", f"/vnflcm/v1/vnf_instances/{iid}")
        return res

    def checkpoints(self, iid: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", "/nfvha/v1/checkpoints",
                                              params={"vnfInstanceId": iid})
        return sorted(res, key=lambda c: int(c["seq"]))

    def heals(self, iid: str) -> list[dict[str, Any]]:
        ops = self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": iid})
        return [o for o in ops if o["operation"] == "HEAL"]

    def standby_alarm(self) -> dict[str, Any] | None:
        """The pair's standby alarm while it is raised."""
        alarms: list[dict[str, Any]] = self.call("GET", "/vnffm/v1/alarms")
        return next((a for a in alarms if a.get("faultType") == STANDBY_ALARM
                     and a.get("alarmClearedTime") is None), None)

    def deploy(self, desc: dict[str, Any], iid: str) -> None:
        self.call("POST", "/nfvha/v1/vnfds", json=desc)
        self.call("POST", "/vnflcm/v1/vnf_instances", json={"vnfdId": desc["id"],
                                                            "vnfInstanceId": iid})
        self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})
        wait_for(lambda: self.vnf(iid)["haState"] == "ACTIVE", DEPLOY_TIMEOUT,
                 f"{iid} ACTIVE after instantiate")
        wait_for(lambda: self.checkpoints(iid), DEPLOY_TIMEOUT, f"first checkpoint of {iid}")


def pair_in_sync(p: dict[str, Any]) -> bool:
    """Both members answer, one active and one standby, and the standby follows."""
    members = p.get("members") or []
    return (sorted(str(x.get("role")) for x in members) == ["active", "standby"]
            and all(x.get("in_sync") is True for x in members))


def wait_pair_quiet(api: Api) -> tuple[str, float]:
    """The active's id once the pair is in sync and its lone leases have run out, and how
    long it took to get in sync (the standby rejoining after the last fault)."""
    t0 = time.monotonic()
    wait_for(lambda: pair_in_sync(api.pair()), SYNC_TIMEOUT, "the forwarder pair in sync",
             every=0.1)
    synced = time.monotonic() - t0
    time.sleep(QUIET_S)
    p = api.pair()
    if not pair_in_sync(p) or not isinstance(p.get("active"), str):
        raise BenchError(f"the pair left sync while quiet: {_pair_line(p)}")
    return str(p["active"]), synced


def _pair_line(p: dict[str, Any]) -> str:
    return (f"active {p.get('active')} term {p.get('term')}; " + ", ".join(
        f"{x.get('id')} {x.get('role')} in_sync={x.get('in_sync')}"
        for x in p.get("members") or []))


# -- traffic ---------------------------------------------------------------------------------


class Flow:
    """One client flow to a service address at a fixed rate, from threads of its own: each
    datagram is its number, and when each was sent and each reply arrived is kept.

    Paced against the clock (a stall of over 50 ms is not made up in a burst); each thread
    ends by itself after FLOW_MAX_S, whatever the caller does.
    """

    def __init__(self, addr: tuple[str, int], rate: float = RATE_HZ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(addr)
        self.sock.settimeout(0.05)
        self.rate = rate
        self.sent_at: list[float] = []
        self.reply_at: list[tuple[float, bytes]] = []
        self.send_errors = 0
        self._stop = threading.Event()
        self._stop_recv = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._recv, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def _send(self) -> None:
        start = time.monotonic()
        due = start
        while not self._stop.is_set() and time.monotonic() - start < FLOW_MAX_S:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.05:
                due = now
            i = len(self.sent_at)
            self.sent_at.append(time.monotonic())
            try:
                self.sock.send(b"%d" % i)
            except OSError:
                self.send_errors += 1
            due += 1.0 / self.rate

    def _recv(self) -> None:
        start = time.monotonic()
        while not self._stop_recv.is_set() and time.monotonic() - start < FLOW_MAX_S + 5:
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, OSError):
                continue
            self.reply_at.append((time.monotonic(), data))

    def stop(self) -> int:
        """Stop sending (replies are still collected until close); how many were sent."""
        self._stop.set()
        self._threads[0].join(5)
        return self.sent

    def close(self) -> None:
        self.stop()
        self._stop_recv.set()
        self._threads[1].join(5)
        self.sock.close()

    def answered(self) -> set[int]:
        """The numbers the NAT answered (its reply is ``<port> <count> <payload>``)."""
        out: set[int] = set()
        for _, d in self.reply_at:
            with contextlib.suppress(ValueError, IndexError):
                out.add(int(d.split(b" ", 2)[2]))
        return out

    def gaps(self, start: float, end: float, longer: float) -> list[tuple[float, float]]:
        """Every silence of the replies longer than ``longer`` between ``start`` and
        ``end``: when the reply before it and the one after it arrived."""
        times = [at for at, _ in self.reply_at if start <= at <= end]
        return [(a, b) for a, b in itertools.pairwise(times) if b - a > longer]

    def takeover_silence(self, t: float, granted: float) -> tuple[float, float] | None:
        """The silence of the replies during which the takeover was granted (at
        ``granted``; the fault at ``t``): no active forwards then. (Not merely the first
        after the fault: a power cut takes a few ms to stop the old active, and a
        checkpoint's hold may end just then.)"""
        gaps = [g for g in self.gaps(t - OUTAGE_BEFORE_S, t + OUTAGE_AFTER_S, 0.0)
                if g[1] >= granted]
        return gaps[0] if gaps else None

    def silence(self, t: float) -> tuple[float, float] | None:
        """The longest silence of the replies around ``t`` (from OUTAGE_BEFORE_S before
        it to OUTAGE_AFTER_S after) that ended after it: when the last reply before the
        silence and the first after it arrived."""
        gaps = [(b - a, a, b) for a, b in self.gaps(t - OUTAGE_BEFORE_S, t + OUTAGE_AFTER_S,
                                                    0.0) if b > t]
        if not gaps:
            return None
        _, start, end = max(gaps)
        return start, end

    def first_answer_after(self, t: float) -> float | None:
        """When the first reply came to a datagram sent after ``t``."""
        for at, d in self.reply_at:
            with contextlib.suppress(ValueError, IndexError):
                i = int(d.split(b" ", 2)[2])
                if i < len(self.sent_at) and self.sent_at[i] > t:
                    return at
        return None


def flowmon_settled(ip: str) -> int:
    """The flow monitor's total once it stops changing (its traffic stopped)."""
    last = -1
    for _ in range(SETTLE_POLLS):
        now = dp.flowmon_total(ip)
        if now == last:
            return now
        last = now
        time.sleep(SETTLE_EVERY)
    return last


def nat_bindings(ip: str) -> dict[str, Any]:
    res = json.loads(dp.query((ip, dp.NAT_QUERY), b"TABLE"))
    if res.get("truncated"):
        raise BenchError("the NAT's table was truncated")
    bindings: dict[str, Any] = res["bindings"]
    return bindings


# -- one repetition --------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """The two replayed VNFs, where clients send to them and where the VNFs answer."""

    fm_iid: str
    nat_iid: str
    fm_ip: str
    nat_ip: str
    fm_addr: tuple[str, int]
    nat_addr: tuple[str, int]
    upstream: str  # the pair's upstream address: the source every flow reaches a VNF from
    nat_netns: str


@dataclass(frozen=True)
class Counts:
    """What the VNFs had counted, their traffic stopped: each repetition stands on its
    own, compared with its own counts before."""

    fm_total: int
    nat_sources: tuple[str, ...]  # the NAT's bindings: the address:port each flow came from
    nat_packets: int
    nat_drops: int  # datagrams its socket dropped (RcvbufErrors of its network namespace)

    @classmethod
    def read(cls, svc: Service) -> Counts:
        bindings = nat_bindings(svc.nat_ip)
        return cls(flowmon_settled(svc.fm_ip), tuple(bindings),
                   sum(int(b["packets"]) for b in bindings.values()),
                   dp.netns_udp(svc.nat_netns).get("RcvbufErrors", 0))


def _grant(api: Api, old: str, after_wall: float) -> dict[str, Any] | None:
    """The manager's record of the takeover from ``old`` granted after ``after_wall``."""
    for t in reversed(api.pair().get("takeovers") or []):
        if t.get("from") == old and float(t.get("at", 0)) >= after_wall:
            return dict(t)
    return None


class PairUnsettled(BenchError):
    """The pair was no longer in sync when the fault was due (nothing injected): the
    repetition is tried again, and the event reported."""


def inject_fault(tb: Testbed, fault: str, active: str) -> None:
    if fault == "kill-active":
        fid, _pid = asyncio.run(tb.kill_forwarder(active))  # by id: no question first
        if fid != active:
            raise BenchError(f"killed forwarder {fid}, not the active {active}")
    else:
        asyncio.run(tb.crash_ingress_host(active))


def takeover_rep(tb: Testbed, api: Api, svc: Service, fault: str, rng: random.Random,
                 row: dict[str, Any]) -> None:
    """One fault under traffic and what it cost; then a VNF kill replayed through the new
    active. Fills ``row``; raises BenchError if a step failed (``row`` keeps what was
    measured until then)."""
    active, synced = wait_pair_quiet(api)
    row.update({"from": active, "sync_wait_s": synced})
    before = Counts.read(svc)
    fm, nat = Flow(svc.fm_addr), Flow(svc.nat_addr)
    t_fault = wall = math.nan
    try:
        time.sleep(WARM_S + rng.uniform(0.0, CHECKPOINT_INTERVAL))
        p = api.pair()
        if not pair_in_sync(p) or p.get("active") != active:
            raise PairUnsettled(f"the pair left sync under traffic before the fault: "
                                f"{_pair_line(p)}")
        wall = time.time()
        t_fault = time.monotonic()
        row["fault_started"] = True  # healed even if the fault itself fails half-way
        inject_fault(tb, fault, active)
        row["fault_call_s"] = time.monotonic() - t_fault
        # A new active, as the manager says it (polled), and its record of the grant.
        polled: list[float] = []

        def new_active() -> bool:
            now_active = api.pair().get("active")
            if now_active not in (None, active):
                polled.append(time.monotonic())
                row["to"] = now_active
                return True
            return False

        wait_for(new_active, ACTIVE_TIMEOUT, f"a new active after {fault} of {active}",
                 every=POLL_S)
        row["to_active_polled_s"] = polled[0] - t_fault
        grant = _grant(api, active, wall)
        if grant is None:
            raise BenchError(f"the manager names {row['to']} active but records no "
                             f"takeover from {active}")
        row["to_active_s"] = float(grant["at"]) - wall
        row["grant_waited_s"] = float(grant.get("waited_s", math.nan))
        row["term"] = grant.get("term")
        row["grant_at_wall"] = float(grant["at"])
        wait_for(lambda: nat.first_answer_after(t_fault) is not None, OUTAGE_AFTER_S,
                 "a NAT reply to a datagram sent after the fault", every=0.01)
        time.sleep(AFTER_ACTIVE_S)
    finally:
        sent_fm, sent_nat = fm.stop(), nat.stop()
        time.sleep(LAST_REPLIES_S)
        fm.close()
        nat.close()
        row.update({"sent_fm": sent_fm, "sent_nat": sent_nat,
                    "send_errors": fm.send_errors + nat.send_errors})
    # Service back: the end of the takeover's silence. The longest silence around the
    # fault may be another: a checkpoint's hold right after the takeover.
    granted = t_fault + float(row["to_active_s"])  # the manager's clock is this one's
    gap, longest = nat.takeover_silence(t_fault, granted), nat.silence(t_fault)
    if gap is None or longest is None or nat.first_answer_after(t_fault) is None:
        raise BenchError("no NAT reply to a datagram sent after the fault")
    row["back_s"] = gap[1] - t_fault
    row["silence_s"] = gap[1] - gap[0]
    row["silence_at_s"] = [gap[0] - t_fault, gap[1] - t_fault]
    row["longest_silence_s"] = longest[1] - longest[0]
    row["longest_silence_at_s"] = [longest[0] - t_fault, longest[1] - t_fault]
    # What else kept the replies back: every silence around the fault, the longest one
    # before it (the checkpoints' holds, in steady state), and the NAT's checkpoints then
    # (the manager checkpoints every replayed VNF shortly after it grants a takeover).
    row["reply_gaps_s"] = [[a - t_fault, b - t_fault] for a, b in nat.gaps(
        t_fault - OUTAGE_BEFORE_S, t_fault + OUTAGE_AFTER_S, GAP_S)]
    steady = nat.gaps(t_fault - WARM_S, t_fault - 0.01, 0.0)
    row["steady_max_gap_s"] = max((b - a for a, b in steady), default=math.nan)
    row["nat_checkpoints"] = [
        {"cut_s": float(c["cutAt"]) - wall, "hold_ms": c.get("holdMs"),
         "frozen_ms": (c.get("criuStats") or {}).get("frozen_time_us", 0) / 1000}
        for c in api.checkpoints(svc.nat_iid)
        if -OUTAGE_BEFORE_S <= float(c["cutAt"]) - wall <= OUTAGE_AFTER_S]
    # Lost in flight: every unanswered NAT datagram must have left within the takeover,
    # that is after the last one answered that was sent before the fault (the NAT answers
    # in order: those after it were still on their way, queued or held for a checkpoint,
    # when the active died) and before service was back. The NAT's socket drops are
    # counted too (a burst released after a long hold can overflow it).
    answered = nat.answered()
    unanswered = sorted(set(range(sent_nat)) - answered)
    last_ok = max((i for i in answered if nat.sent_at[i] < t_fault), default=None)
    start = nat.sent_at[last_ok] if last_ok is not None else t_fault - OUTAGE_BEFORE_S
    window = (start, gap[1] + AFTER_WINDOW_S)
    row["in_flight_s"] = t_fault - start  # age of the oldest datagram in flight at the fault
    outside = [i for i in unanswered if not window[0] <= nat.sent_at[i] <= window[1]]
    row.update({"nat_unanswered": len(unanswered), "nat_unanswered_outside": len(outside),
                "window_s": [window[0] - t_fault, window[1] - t_fault],
                "unanswered_sent_s": ([nat.sent_at[unanswered[0]] - t_fault,
                                       nat.sent_at[unanswered[-1]] - t_fault]
                                      if unanswered else None)})
    if outside:
        row["outside_sent_s"] = [round(nat.sent_at[i] - t_fault, 4) for i in outside[:10]]
    # The flow monitor answers nothing: which of its datagrams were lost is not known, and
    # its own checkpoints' holds are not the NAT's. Its loss is bounded by what was sent
    # from a checkpoint interval before the fault (no hold lasts longer) to service back.
    after = Counts.read(svc)
    lost_fm = before.fm_total + sent_fm - after.fm_total
    bound = RATE_HZ * (CHECKPOINT_INTERVAL + window[1] - t_fault) + 5
    row.update({"fm_lost": lost_fm, "fm_lost_bound": bound,
                "fm_lost_within_window": 0 <= lost_fm <= bound})
    # The NAT: this flow got one binding, from the pair's upstream address (the new
    # active kept its upstream port); datagrams counted but unanswered are replies lost
    # on their way back.
    new = set(after.nat_sources) - set(before.nat_sources)
    row["nat_new_bindings"] = sorted(new)
    row["nat_one_binding_per_flow"] = len(new) == 1 and all(
        b.startswith(svc.upstream + ":") for b in new)
    row["nat_lost_counted"] = before.nat_packets + sent_nat - after.nat_packets
    row["nat_socket_drops"] = after.nat_drops - before.nat_drops
    row["measured"] = True
    after_kill(api, svc, float(row["grant_at_wall"]), row)


def after_kill(api: Api, svc: Service, grant_wall: float, row: dict[str, Any]) -> None:
    """Once a checkpoint of the flow monitor was taken through the new active, kill it
    under traffic: its counter must come back exact."""
    def cut_after() -> float | None:
        cuts = [float(c["cutAt"]) for c in api.checkpoints(svc.fm_iid)
                if float(c["cutAt"]) > grant_wall]
        return min(cuts) if cuts else None

    # The manager checkpoints every replayed VNF after it grants a takeover: until
    # then a VNF failure is replayed across the takeover (``acrossTakeover``).
    cut = wait_for(cut_after, CHECKPOINT_TIMEOUT,
                   "a checkpoint of the flow monitor through the new active")
    row["recheckpoint_s"] = cut - grant_wall
    heals = len(api.heals(svc.fm_iid))
    before = flowmon_settled(svc.fm_ip)
    fm = Flow(svc.fm_addr)
    try:
        time.sleep(0.5)
        api.call("POST", f"/nfvha/v1/vnf_instances/{svc.fm_iid}/inject",
                 json={"fault": "kill"})

        def done() -> list[dict[str, Any]]:
            return [o for o in api.heals(svc.fm_iid)
                    if o["operationState"] in ("COMPLETED", "FAILED")]

        wait_for(lambda: len(done()) > heals, HEAL_TIMEOUT, "the flow monitor's recovery")
        op = done()[-1]
        time.sleep(LAST_REPLIES_S)
    finally:
        sent = fm.stop()
        fm.close()
    replay = (op.get("nfvha") or {}).get("replay") or {}
    row.update({"kill_heal": op["operationState"],
                "kill_strategy": (op.get("nfvha") or {}).get("strategy"),
                "kill_replayed": replay.get("replayed"),
                "kill_across_takeover": "acrossTakeover" in replay})
    # Restored from a checkpoint taken through the new active and replayed from its log,
    # the counter holds what it held before plus everything sent since.
    row["kill_counter_diff"] = flowmon_settled(svc.fm_ip) - (before + sent)
    row["exact_after_kill"] = (op["operationState"] == "COMPLETED"
                               and row["kill_counter_diff"] == 0)


def heal(tb: Testbed, fault: str, old: str | None, row: dict[str, Any]) -> None:
    """Power the crashed ingress host back on (a killed forwarder is restarted by its
    supervisor); its forwarder rejoins as the standby, awaited by the next repetition."""
    if fault != "crash-ingress" or old is None:
        return
    t0 = time.monotonic()
    try:
        asyncio.run(tb.restore_ingress_host(old))
    except Exception as exc:
        raise BenchError(f"restore ingress host {old}: {exc}") from exc
    row["restore_s"] = time.monotonic() - t0


def _forwarder_pid(tb: Testbed, ingress_id: str) -> int | None:
    try:
        return int(tb.forwarder_process(ingress_id))
    except NfvhaError:
        return None


def standby_rep(tb: Testbed, api: Api, svc: Service, row: dict[str, Any]) -> None:
    """The standby killed under traffic, then its host's power cut: nothing lost, the
    active stays, and the alarm is raised (and cleared once it is back)."""
    active, synced = wait_pair_quiet(api)
    standby = next(str(x["id"]) for x in api.pair()["members"] if x["id"] != active)
    row.update({"active": active, "standby": standby, "sync_wait_s": synced})
    before = Counts.read(svc)
    fm, nat = Flow(svc.fm_addr), Flow(svc.nat_addr)
    crashed = False
    try:
        time.sleep(WARM_S)
        t_kill = time.monotonic()
        fid, pid = asyncio.run(tb.kill_forwarder(standby))
        if fid != standby:
            raise BenchError(f"killed {fid}, not the standby {standby}")
        # Restarted by its supervisor, it rejoins; then its host's power is cut, so that
        # the alarm's delay is counted from a pair that was whole. (The active reports its
        # standby out of sync within a beat of the stream's end.)
        wait_for(lambda: _forwarder_pid(tb, standby) not in (None, pid), SYNC_TIMEOUT,
                 f"forwarder {standby} restarted by its supervisor")
        time.sleep(0.3)
        wait_for(lambda: pair_in_sync(api.pair()), SYNC_TIMEOUT,
                 "the killed standby back in sync", every=0.05)
        row["standby_resync_s"] = time.monotonic() - t_kill
        time.sleep(0.2)
        t_crash = time.monotonic()
        asyncio.run(tb.crash_ingress_host(standby))
        crashed = True
        alarm: list[dict[str, Any]] = []

        def raised() -> bool:
            a = api.standby_alarm()
            if a is not None:
                alarm.append(a)
            return a is not None

        wait_for(raised, ALARM_TIMEOUT, f"the {STANDBY_ALARM} alarm", every=0.05)
        row["alarm_s"] = time.monotonic() - t_crash
        row["alarm_names_standby"] = standby in str(alarm[0].get("probableCause"))
        row["active_after"] = api.pair().get("active")
        time.sleep(0.5)
    finally:
        sent_fm, sent_nat = fm.stop(), nat.stop()
        time.sleep(LAST_REPLIES_S)
        fm.close()
        nat.close()
        row.update({"sent_fm": sent_fm, "sent_nat": sent_nat})
        if crashed:
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                asyncio.run(tb.restore_ingress_host(standby))
            row["restore_s"] = time.monotonic() - t0
    after = Counts.read(svc)
    row["fm_lost"] = before.fm_total + sent_fm - after.fm_total
    row["nat_unanswered"] = len(set(range(sent_nat)) - nat.answered())
    row["nat_lost_counted"] = before.nat_packets + sent_nat - after.nat_packets
    row["nat_socket_drops"] = after.nat_drops - before.nat_drops
    row["active_stayed"] = row.get("active_after") == active
    t0 = time.monotonic()
    wait_pair_quiet(api)
    wait_for(lambda: api.standby_alarm() is None, ALARM_TIMEOUT, "the alarm cleared")
    row["alarm_cleared_s"] = time.monotonic() - t0
    row["measured"] = True


# -- a run -----------------------------------------------------------------------------------


def one_takeover(tb: Testbed, api: Api, svc: Service, fault: str, rep: int,
                 rng: random.Random, result: dict[str, Any]) -> dict[str, Any]:
    """One repetition's row; tried again (up to UNSETTLED_TRIES) while the pair leaves
    sync before the fault, each such attempt kept in ``result["unsettled"]``."""
    for attempt in range(UNSETTLED_TRIES):
        row: dict[str, Any] = {"fault": fault, "rep": rep, "attempt": attempt,
                               "measured": False, "load1": os.getloadavg()[0]}
        try:
            try:
                takeover_rep(tb, api, svc, fault, rng, row)
            finally:
                if row.get("fault_started"):
                    heal(tb, fault, row.get("from"), row)
        except PairUnsettled as exc:
            row["error"] = str(exc)[:500]
            result["unsettled"].append(row)
            progress(f"{fault} {rep}: {exc}; trying again")
            continue
        except BenchError as exc:
            row["error"] = str(exc)[:500]
        return row
    return row


def _testbed() -> Testbed:
    return Testbed(name=TB_NAME, n_hosts=N_HOSTS, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True, with_forwarder=True, forwarders=2,
                   manager_args=list(MANAGER_ARGS), agent_args=list(AGENT_ARGS))


def run(plan: Plan, seed: int, result: dict[str, Any], keep_logs: Path) -> None:
    """Everything measured, on one testbed; its logs go to ``keep_logs`` after a failure (a
    quick run: always)."""
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
        fm_addr, nat_addr = tb.vnf_address(11), tb.vnf_address(12)
        fm_svc, nat_svc = tb.service_address(1), tb.service_address(2)
        with timed("VNFs deployed"):
            api.deploy(replayed_vnfd("flowmon", fm_addr, fm_svc), "pf-fm")
            api.deploy(replayed_vnfd("udpnat", nat_addr, nat_svc), "pf-nat")
        svc = Service("pf-fm", "pf-nat", fm_addr.split("/")[0], nat_addr.split("/")[0],
                      (fm_svc, dp.FM_PORT), (nat_svc, dp.NAT_PORT), tb.upstream_address,
                      f"{tb.name}-{api.vnf('pf-nat')['host']}-pf-nat")
        for fault in FAULTS:
            for rep in range(plan.reps):
                result["other_netns_seen"].update(other_netns(TB_NAME))
                row = one_takeover(tb, api, svc, fault, rep, rng, result)
                result["reps"].append(row)
                progress(_rep_line(row))
        for rep in range(plan.standby_reps):
            row = {"fault": "standby-loss", "rep": rep, "measured": False,
                   "load1": os.getloadavg()[0]}
            try:
                standby_rep(tb, api, svc, row)
            except BenchError as exc:
                row["error"] = str(exc)[:500]
            result["standby"].append(row)
            progress(f"standby loss {rep}: " + (
                f"ERROR {row['error']}" if "error" in row else
                f"lost fm {row['fm_lost']} nat {row['nat_unanswered']}, alarm after "
                f"{row['alarm_s']:.2f} s, active stayed {row['active_stayed']}"))
    finally:
        if api is not None:
            api.close()
        collect_logs(tb, result, keep_logs, always=plan.quick)
        with signals_ignored():
            testbed_down(tb, "pair_failover")
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()


def _rep_line(row: dict[str, Any]) -> str:
    head = f"{row['fault']:13s} {row['rep']:2d}: {row.get('from')} -> {row.get('to')}"
    if not row.get("measured"):
        return f"{head}: ERROR {row.get('error')}"
    return (f"{head}: back {row['back_s'] * 1000:5.0f} ms (longest silence "
            f"{row['longest_silence_s'] * 1000:4.0f}), new active "
            f"{row['to_active_s'] * 1000:5.0f} ms "
            f"(polled {row['to_active_polled_s'] * 1000:4.0f}); lost nat "
            f"{row['nat_unanswered']} ({row['nat_unanswered_outside']} outside), fm "
            f"{row['fm_lost']}, NAT socket drops {row['nat_socket_drops']}; kill after: "
            + ("exact" if row.get("exact_after_kill") else
               f"NOT exact ({row.get('kill_counter_diff')}; {row.get('error', '')})"))


def collect_logs(tb: Testbed, result: dict[str, Any], keep: Path, always: bool) -> None:
    """The daemons' unexpected warnings into the result; the whole log directory copied to
    ``keep`` when a repetition failed, or ``always`` (the testbed's own is removed with
    it)."""
    with contextlib.suppress(OSError):
        for log in sorted(tb.log_dir.glob("*.log")):
            warn = [line[-300:] for line in log.read_text(errors="replace").splitlines()
                    if (" WARNING " in line or " ERROR " in line)
                    and not any(x in line for x in _EXPECTED_WARNINGS)]
            if warn:
                result["log_warnings"][log.stem] = {"count": len(warn), "last": warn[-10:]}
    failed = any("error" in r for r in result["reps"] + result["standby"]
                 + result["unsettled"])
    if (failed or always) and tb.log_dir.is_dir():
        with contextlib.suppress(OSError):
            shutil.copytree(tb.log_dir, keep, ignore=shutil.ignore_patterns("vnf"),
                            dirs_exist_ok=True)
            result["logs_kept"] = str(keep)


# -- summary, targets, output ----------------------------------------------------------------


def _stats(values: Sequence[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"n": len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90),
            "max": max(xs) if xs else math.nan, "min": min(xs) if xs else math.nan}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"faults": {}}
    for fault in FAULTS:
        rows = [r for r in result["reps"] if r["fault"] == fault]
        ok = [r for r in rows if r.get("measured")]
        killed = [r for r in ok if "exact_after_kill" in r]
        out["faults"][fault] = {
            "label": FAULT_LABELS[fault], "reps": len(rows), "measured": len(ok),
            "errors": [r["error"] for r in rows if "error" in r],
            "back_s": _stats([r["back_s"] for r in ok]),
            "silence_s": _stats([r["silence_s"] for r in ok]),
            "longest_silence_s": _stats([r["longest_silence_s"] for r in ok]),
            "nat_socket_drops_total": sum(r["nat_socket_drops"] for r in ok),
            "to_active_s": _stats([r["to_active_s"] for r in ok]),
            "to_active_polled_s": _stats([r["to_active_polled_s"] for r in ok]),
            "nat_lost": _stats([r["nat_unanswered"] for r in ok]),
            "nat_lost_total": sum(r["nat_unanswered"] for r in ok),
            "nat_lost_outside_window": sum(r["nat_unanswered_outside"] for r in ok),
            "in_flight_s": _stats([r["in_flight_s"] for r in ok]),
            "nat_never_counted_total": sum(r["nat_lost_counted"] for r in ok),
            "fm_lost": _stats([r["fm_lost"] for r in ok]),
            "fm_lost_total": sum(r["fm_lost"] for r in ok),
            "fm_lost_beyond_window": sum(1 for r in ok if not r["fm_lost_within_window"]),
            "nat_one_binding_per_flow": all(r["nat_one_binding_per_flow"] for r in ok),
            "kills_after": len(killed),
            "exact_after_kill": sum(1 for r in killed if r["exact_after_kill"]),
            "kill_across_takeover": sum(1 for r in killed if r.get("kill_across_takeover")),
            "sync_wait_s": _stats([r.get("sync_wait_s") for r in rows]),
            "steady_max_gap_s": _stats([r.get("steady_max_gap_s") for r in ok]),
            "recheckpoint_s": _stats([r.get("recheckpoint_s") for r in killed]),
        }
    sb = [r for r in result["standby"] if r.get("measured")]
    out["standby"] = {
        "reps": len(result["standby"]), "measured": len(sb),
        "errors": [r["error"] for r in result["standby"] if "error" in r],
        "lost_total": sum(r["fm_lost"] + r["nat_unanswered"] for r in sb),
        "active_stayed": sum(1 for r in sb if r["active_stayed"]),
        "alarm_s": _stats([r["alarm_s"] for r in sb]),
        "alarm_cleared_s": _stats([r["alarm_cleared_s"] for r in sb]),
    }
    out["unsettled"] = len(result["unsettled"])
    allrows = [r for r in result["reps"] if r.get("measured")]
    out["all"] = {"back_s": _stats([r["back_s"] for r in allrows]),
                  "within_target": sum(1 for r in allrows if r["back_s"] <= TARGET_BACK_S),
                  "measured": len(allrows)}
    return out


def evaluate_targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for fault in FAULTS:
        f = s["faults"][fault]
        v = f["back_s"]["p50"]
        out.append({"target": f"service back ≤ {TARGET_BACK_S * 1000:.0f} ms median: "
                              f"{FAULT_LABELS[fault]}",
                    "value": v * 1000, "unit": "ms",
                    "pass": not math.isnan(v) and v <= TARGET_BACK_S})
    lost_outside = sum(s["faults"][f]["nat_lost_outside_window"]
                       + s["faults"][f]["fm_lost_beyond_window"] for f in FAULTS)
    out.append({"target": "datagrams lost only in flight (outside the takeover window: 0)",
                "value": lost_outside, "unit": "lost", "pass": lost_outside == 0})
    kills = sum(s["faults"][f]["kills_after"] for f in FAULTS)
    inexact = kills - sum(s["faults"][f]["exact_after_kill"] for f in FAULTS)
    out.append({"target": "VNF kills after a takeover not replayed exactly: 0",
                "value": inexact, "unit": f"of {kills}", "pass": kills > 0 and inexact == 0})
    sb = s["standby"]
    out.append({"target": "standby loss under traffic: nothing lost",
                "value": sb["lost_total"], "unit": "lost",
                "pass": sb["measured"] > 0 and sb["lost_total"] == 0})
    return out


def anomalies(result: dict[str, Any]) -> list[str]:
    out: list[str] = []
    s = result["summary"]
    for fault in FAULTS:
        f = s["faults"][fault]
        out += [f"{fault}: {e}" for e in f["errors"]]
        if not f["nat_one_binding_per_flow"]:
            out.append(f"{fault}: the NAT saw a flow from a new upstream address or port "
                       "after a takeover")
        if f["nat_lost_outside_window"]:
            out.append(f"{fault}: {f['nat_lost_outside_window']} NAT datagrams lost outside "
                       "the takeover window")
        if f["nat_socket_drops_total"]:
            out.append(f"{fault}: the NAT's socket dropped {f['nat_socket_drops_total']} "
                       "datagrams (RcvbufErrors)")
        if f["kill_across_takeover"]:
            out.append(f"{fault}: {f['kill_across_takeover']} VNF kills replayed from a "
                       "checkpoint taken before the takeover (acrossTakeover)")
    out += [f"standby loss: {e}" for e in s["standby"]["errors"]]
    if result["unsettled"]:
        out.append(f"the pair left sync under traffic, no fault injected, "
                   f"{len(result['unsettled'])} time(s) (those repetitions were tried "
                   f"again): {result['unsettled'][0]['error']}")
    for r in result["reps"]:
        if r.get("measured") and not r.get("exact_after_kill", True):
            out.append(f"{r['fault']} {r['rep']}: after the VNF kill the flow monitor is "
                       f"off by {r.get('kill_counter_diff')}")
    for name, w in result["log_warnings"].items():
        out.append(f"{w['count']} unexpected warnings in {name}.log, the last: "
                   f"{w['last'][-1][-200:]}")
    m = result["machine"]
    out += shared_machine_note(m)
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append("nfvha's sources changed during the run")
    if result.get("logs_kept") and not result["config"]["quick"]:
        out.append(f"the testbed's logs were kept in {result['logs_kept']}")
    return out


def _ms(x: float | None) -> str:
    return fmt_num(None if x is None else x * 1000, 0)


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [f"# The forwarder pair: takeover under traffic ({r['run']['name']})", "",
             f"{r['config']['rate_hz']:.0f} numbered datagrams/s to each of two replayed "
             "services (flow monitor, NAT); times in ms after the fault.", "",
             "| Fault | Measured | Service back p50 / p90 / max | Longest silence p50 / max | New "
             "active (manager) p50 / p90 / max | Oldest in flight p50 / max | Lost NAT p50 / "
             "max (outside window) | Lost flow monitor p50 / max | Exact after a VNF kill |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for fault in FAULTS:
        f = s["faults"][fault]
        lines.append(
            f"| {f['label']} | {f['measured']}/{f['reps']} | {_ms(f['back_s']['p50'])} / "
            f"{_ms(f['back_s']['p90'])} / {_ms(f['back_s']['max'])} | "
            f"{_ms(f['longest_silence_s']['p50'])} / {_ms(f['longest_silence_s']['max'])} | "
            f"{_ms(f['to_active_s']['p50'])} / {_ms(f['to_active_s']['p90'])} / "
            f"{_ms(f['to_active_s']['max'])} | {_ms(f['in_flight_s']['p50'])} / "
            f"{_ms(f['in_flight_s']['max'])} | {fmt_num(f['nat_lost']['p50'])} / "
            f"{fmt_num(f['nat_lost']['max'])} ({f['nat_lost_outside_window']}) | "
            f"{fmt_num(f['fm_lost']['p50'])} / {fmt_num(f['fm_lost']['max'])} | "
            f"{f['exact_after_kill']}/{f['kills_after']} |")
    lines += ["", "First checkpoint through the new active, s after the grant (p50 / max): "
              + "; ".join(f"{s['faults'][f]['label']} "
                          f"{fmt_num(s['faults'][f]['recheckpoint_s']['p50'], 2)} / "
                          f"{fmt_num(s['faults'][f]['recheckpoint_s']['max'], 2)}"
                          for f in FAULTS) + "."]
    sb = s["standby"]
    lines += ["", f"Standby loss ({sb['measured']}/{sb['reps']}): lost {sb['lost_total']}, "
                  f"active stayed {sb['active_stayed']}, alarm `{STANDBY_ALARM}` "
                  f"{fmt_num(sb['alarm_s']['p50'], 2)} s after the power cut, cleared "
                  f"{fmt_num(sb['alarm_cleared_s']['p50'], 2)} s after the restore.", "",
              "## Targets", ""]
    lines += [f"- {'PASS' if t['pass'] else 'MISS'}: {t['target']}: "
              f"{fmt_num(t['value'], 0)} {t['unit']}" for t in r["targets"]]
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in r["anomalies"]] or ["- none"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cdf) = plt.subplots(1, 2, figsize=(12, 4.2))
    rows = [x for x in r["reps"] if x.get("measured")]
    jitter = random.Random(0)
    ticks, labels = [], []
    for i, fault in enumerate(FAULTS):
        mine = [x for x in rows if x["fault"] == fault]
        for j, (key, what, color) in enumerate((
                ("back_s", "service back", "tab:blue"),
                ("to_active_s", "new active\n(manager)", "tab:orange"),
                ("longest_silence_s", "longest\nsilence", "tab:gray"))):
            pos = i * 4 + j
            ys = [x[key] * 1000 for x in mine]
            ax.scatter([pos + jitter.uniform(-0.15, 0.15) for _ in ys], ys, s=12, alpha=0.7,
                       color=color)
            if ys:
                ax.hlines(percentile(ys, 50), pos - 0.3, pos + 0.3, color="black", lw=1.5)
            ticks.append(pos)
            labels.append(f"{fault}:\n{what}")
    ax.axhline(TARGET_BACK_S * 1000, color="tab:red", ls="--", lw=1,
               label=f"target {TARGET_BACK_S * 1000:.0f} ms (median)")
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ms (a silence: its length)")
    ax.set_title("Forwarder pair takeover (bars: medians)")
    ax.legend(fontsize=7, loc="lower left")
    for fault, color in zip(FAULTS, ("tab:blue", "tab:purple"), strict=True):
        ys = sorted(x["back_s"] * 1000 for x in rows if x["fault"] == fault)
        if ys:
            cdf.step([ys[0], *ys], [0.0] + [(k + 1) / len(ys) for k in range(len(ys))],
                     where="post",
                     color=color, label=f"{FAULT_LABELS[fault]} (n={len(ys)})")
    cdf.axvline(TARGET_BACK_S * 1000, color="tab:red", ls="--", lw=1, label="target 300 ms")
    cdf.set_xlim(left=0)
    cdf.set_ylim(0, 1.02)
    cdf.set_xlabel("service back, ms after the fault (end of the takeover's silence)")
    cdf.set_ylabel("share of takeovers")
    cdf.set_title("Service back: CDF per fault")
    cdf.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, paths)


def _compact(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def one(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, list):
            return [one(x) for x in v]
        return v
    return [{k: one(v) for k, v in row.items()} for row in rows]


def run_config(plan: Plan, seed: int) -> dict[str, Any]:
    """What a run was asked to do and the timings it ran with, for its JSON."""
    return {**asdict(plan), "faults": list(FAULTS), "seed": seed,
            "rate_hz": RATE_HZ, "checkpoint_interval_s": CHECKPOINT_INTERVAL,
            "warm_s": WARM_S, "after_window_s": AFTER_WINDOW_S,
            "unsettled_tries": UNSETTLED_TRIES,
            "quiet_s": QUIET_S, "poll_s": POLL_S, "gap_s": GAP_S,
            "target_back_s": TARGET_BACK_S, "pair_timings": asdict(PairTimings()),
            "manager": {"max_lease_s": pair_manager.MAX_LEASE,
                        "margin_s": pair_manager.MARGIN,
                        "reanchor_after_s": pair_manager.REANCHOR_AFTER,
                        "gone_after_s": pair_manager.GONE_AFTER,
                        "alarm_after_s": pair_manager.ALARM_AFTER},
            "manager_args": MANAGER_ARGS, "agent_args": AGENT_ARGS,
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR),
                        "hosts": N_HOSTS, "forwarders": 2}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help="3 repetitions per fault, written to a temporary directory")
    ap.add_argument("--reps", type=int, default=None, help="takeovers per fault (20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the faults' phases")
    ap.add_argument("--out", type=Path, default=None,
                    help="results directory (default: results/, or a new temporary "
                         "directory with --quick)")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    if a.reps is not None and a.reps < 1:
        ap.error("--reps must be at least 1")
    if os.geteuid() != 0:
        print("pair_failover: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    plan = make_plan(a)
    # A quick run never replaces the committed results nor the documentation's plot.
    out: Path = a.out or (Path(tempfile.mkdtemp(prefix="nfvpf-quick-")) if plan.quick
                          else RESULTS)
    doc_img = not (a.no_doc_img or plan.quick)
    install_signal_handlers()
    started = time.time()
    run_name = "pair_failover-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    result: dict[str, Any] = {
        "benchmark": "pair_failover",
        "run": {"name": run_name, "started": started},
        "machine": testbed_machine(TB_NAME),
        "config": run_config(plan, a.seed),
        "reps": [], "standby": [], "unsettled": [], "other_netns_seen": set(),
        "log_warnings": {},
    }
    keep_logs = (out / "logs" if plan.quick
                 else Path(tempfile.gettempdir()) / f"nfvpf-logs-{run_name}")
    t0 = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        run(plan, a.seed, result, keep_logs)
    except (KeyboardInterrupt, BenchError) as exc:
        interrupted = exc
        print(f"pair_failover: stopped: {exc!r}", file=sys.stderr)
    result["elapsed_s"] = time.perf_counter() - t0
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    result["other_netns_seen"] = sorted(result["other_netns_seen"])
    errors = [r for r in result["reps"] + result["standby"] if "error" in r]
    result["complete"] = (interrupted is None and not errors
                          and len(result["reps"]) == plan.reps * len(FAULTS)
                          and len(result["standby"]) == plan.standby_reps)
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    if not any(r.get("measured") for r in result["reps"]):
        print("pair_failover: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["summary"] = summarize(result)
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(result)
    if interrupted is not None:
        result["anomalies"].insert(0, f"run incomplete: {interrupted!r}")
    result["reps"] = _compact(result["reps"])
    result["standby"] = _compact(result["standby"])
    result["unsettled"] = _compact(result["unsettled"])
    publish(result, "pair_failover", out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{fmt_num(t['value'], 0)} {t['unit']}", doc_img=doc_img)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
