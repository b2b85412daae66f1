#!/usr/bin/env python3
"""Client-visible downtime of a stateful VNF per failure type and recovery strategy.

A 3-host testbed with the HA manager (``nfvrec``, 10.248.0.0/16) runs the sample flow
monitor (``examples/vnfs/flowmon.py``) with a checkpoint every 0.5 s. Per run:

1. a fresh VNF instance is deployed and answers PING;
2. a probing client starts: one thread sends ``PING`` to the query port every 1 ms and
   records the arrival time of every ``PONG`` (sends never wait for replies, so the probe
   keeps its 1 kHz pace while the VNF is down);
3. warm-up traffic: N datagrams on one flow to the data port, confirmed with ``ACK?``,
   then the flow goes quiet; the run waits for a checkpoint taken entirely after that
   (for standby also for the standby sandbox on the backup host), so the flow counter in
   the last checkpoint before the failure is exactly N;
4. the failure: ``inject kill`` (SIGKILL of the VNF), ``inject hang`` (SIGSTOP) or
   ``crash_host`` of the VNF's host (uplink deleted, then every process of it killed);
5. the HEAL operation occurrence gives the manager's phases; the client's replies give
   the downtime: the longest gap between consecutive replies that overlaps the interval
   from the failure to the manager's ``serving``;
6. the flow counter is read back: ``>= N`` means the state was kept (restart: 0).

Scenarios: process crash with restore-local and with restart (nfvha's own restart
strategy), hang with restore-local, host crash with restore-remote, with standby and with
restart. Process-level scenarios share one testbed; every host-crash run destroys a host,
so it gets a testbed of its own (built in ~2 s). Runs of the scenarios of a group are
interleaved so that drift hits them alike.

Host crash with restore-remote is measured twice, side by side: ``host-remote`` without a
fence driver (the manager moves the VNF once the longest lease the lost host may hold has
run out, plus a margin: the *lease wait*) and ``host-remote-fenced`` with the testbed's
fence driver (``Testbed(fencing=True)``: the manager powers the lost host off, link down
and its cgroup killed, and moves the VNF as soon as the fence is confirmed). Per fenced
run the manager's fence record (``GET /nfvha/v1/fences``: state, ``durationMs``, result)
is kept; the fence wait of a fenced run is the part of the restore phase until the fence
was confirmed (the manager's log line states the lease wait it would otherwise take).

External baseline, ``crash-supervisor``: the same flowmon, without nfvha, under a plain
restart-only supervisor (``SUPERVISOR``: a loop that restarts the program as soon as it
exits, what systemd's ``Restart=always`` with ``RestartSec=0``, or a container runtime's
restart policy, gives; PID 1 here is not systemd, so ``systemd-run`` is not available). It
runs in a netns of its own on the testbed's bridge (``<testbed>-sv``, the VNF's cgroup
limits of 128 MiB and 0.5 CPU), is probed by the same client and SIGKILLed directly
(no API call in between). Its phases come from the supervisor's own timestamps: detect =
the supervisor's ``wait`` returned, restore = the new process was spawned, redirect =
until the client's first reply. A host crash has no recovery under a single-host
supervisor (it dies with the host); the JSON's ``supervisor_baseline`` says so and cites
Kubernetes' documented default for node failures (not measured).

The testbed's bridges get their current MAC set explicitly right after ``up`` (see
``pin_bridge_macs``): otherwise a Linux bridge changes MAC whenever its lowest-MAC port
goes, e.g. the crashed host's uplink, which is a testbed artifact, not nfvha behaviour;
``--no-pin-bridge-macs`` reproduces it. Failures are injected right after a checkpoint is
recorded by the manager; when checkpoints run back to back (a loaded machine), a ``hang``
(SIGSTOP) can land inside the next dump: such runs are kept and reported, not retried.

Writes ``results/recovery.{json,md,png}`` and ``docs/img/recovery.png``. Needs root and
CRIU. Not a test: targets are reported as PASS/MISS, not asserted. Usage::

    .venv/bin/python benchmarks/recovery.py [--quick] [--runs 20] [--host-runs N]
                                            [--scenarios crash-local,host-remote,...]
                                            [--testbed-name nfvrec --subnet 10.248.0.0/16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfvha.testbed import Testbed
from nfvha.vim.cgroups import CgroupLimits
from nfvha.vnfm.metrics import iso_to_epoch

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
    program,
    progress,
    publish,
    shared_machine_note,
    signals_ignored,
    source_digest,
    testbed_down,
    testbed_machine,
    timed,
    wait_for,
)
from _common import fmt_num as _f  # short: it fills the report tables

FLOWMON = REPO / "examples" / "vnfs" / "flowmon.py"

TB_NAME = "nfvrec"
TB_SUBNET = "10.248.0.0/16"  # apart from the default testbed, e2e tests and other benchmarks
STATE_DIR = Path("/run/nfvha-bench-rec")
N_HOSTS = 3

DATA_PORT = 5000
QUERY_PORT = 5001
CHECKPOINT_INTERVAL = 0.5
# The manager's own health probe of the VNF (hang detection): as in the demo.
HA_PROBE = {"type": "udp", "port": QUERY_PORT, "send": "PING", "expect": "PONG",
            "interval": 0.05, "timeout": 0.05, "failure_threshold": 3}
PROBE_PERIOD = 0.001  # the client's probe: 1 kHz
WARM_PACKETS = 300  # warm-up datagrams of the client's flow before each failure
PRE_WINDOW = 0.5  # s before the failure in which the steady-state reply gaps are measured
OBSERVE_AFTER = 0.3  # s the client keeps probing after its first reply past `serving`

HTTP_TIMEOUT = 10.0
DEPLOY_TIMEOUT = 20.0
CHECKPOINT_TIMEOUT = 10.0
STANDBY_TIMEOUT = 10.0
HEAL_TIMEOUT = 20.0
TESTBED_TIMEOUT = 30.0
PROBE_MAX_S = 120.0  # a probe thread ends by itself after this, whatever happens

DEFAULT_RUNS = 20
QUICK_RUNS = 3
TARGET_CRASH_LOCAL_MS = 100.0
TARGET_HOST_REMOTE_MS = 500.0
TARGET_HOST_DETECT_MS = 300.0
TARGET_HOST_FENCED_MS = 280.0  # host crash, restore-remote, with the fence driver
TARGET_FENCING_GAIN_MS = 150.0  # lease wait minus fenced, medians of the same run
FENCE_RECORD_TIMEOUT = 5.0  # s for the manager's fence record to leave PROCESSING

SUPERVISOR_RESTART = "supervisor-restart"  # the "strategy" of the external baseline
RESTARTS = ("restart", SUPERVISOR_RESTART)  # baselines: the state is lost by design

_DEFAULT_RECOVERY: dict[str, list[str]] = {
    "process-exit": ["restore-local", "restore-remote", "restart"],
    "hang": ["restore-local", "restore-remote", "restart"],
    "host-loss": ["restore-remote", "restart"],
}


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    fault: str  # kill | hang | host
    override: tuple[tuple[str, tuple[str, ...]], ...]  # recovery chains that differ
    expect: str  # the strategy the policy should pick
    code: str  # instance id prefix (short: it ends up in interface and cgroup names)

    @property
    def group(self) -> str:
        return "host" if self.fault == "host" else "process"

    supervisor: bool = False  # run under the restart-only supervisor, without nfvha
    fencing: bool = False  # the testbed's manager gets the testbed fence driver per host
    #: nfvha as before issue 12: the host's file system, every capability, no seccomp, plain
    #: HTTP between the daemons (a testbed of its own, ``Testbed(tls=False)``)
    previous: bool = False

    @property
    def recovery(self) -> dict[str, list[str]]:
        if self.supervisor:
            return {}
        out = {k: list(v) for k, v in _DEFAULT_RECOVERY.items()}
        out.update({k: list(v) for k, v in self.override})
        return out

    @property
    def baseline(self) -> bool:
        return self.expect in RESTARTS


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("crash-local", "process crash → restore-local", "kill", (), "restore-local", "kl"),
    Scenario("crash-restart", "process crash → restart (baseline)", "kill",
             (("process-exit", ("restart",)),), "restart", "kr"),
    Scenario("crash-supervisor", "process crash → restart-only supervisor, no nfvha "
             "(external baseline)", "kill", (), SUPERVISOR_RESTART, "ks", supervisor=True),
    Scenario("hang-local", "hang → restore-local", "hang", (), "restore-local", "hl"),
    Scenario("host-remote", "host crash → restore-remote (lease wait)", "host", (),
             "restore-remote", "hr"),
    Scenario("host-remote-fenced", "host crash → restore-remote (fence driver)", "host", (),
             "restore-remote", "hf", fencing=True),
    Scenario("crash-local-previous", "process crash → restore-local, previous sandbox "
             "(no containment, no TLS)", "kill", (), "restore-local", "kp", previous=True),
    Scenario("host-fenced-previous", "host crash → restore-remote (fence driver), previous "
             "sandbox (no containment, no TLS)", "host", (), "restore-remote", "hp",
             fencing=True, previous=True),
    Scenario("host-standby", "host crash → standby", "host",
             (("host-loss", ("standby", "restore-remote")),), "standby", "hs"),
    Scenario("host-restart", "host crash → restart (baseline)", "host",
             (("host-loss", ("restart",)),), "restart", "hx"),
)
QUICK_SCENARIOS = tuple(s.key for s in SCENARIOS)


# -- the client ------------------------------------------------------------------------------


class Prober:
    """1 kHz PING to the VNF's query port from one thread; records when each PONG arrives.

    Sends are paced by the clock, never by replies: while the VNF is down the probe goes
    on at 1 kHz, and a reply counts at the moment it arrives (wall clock, like the
    manager's timestamps). No reply at all within ``short_timeout`` after a PING means
    that PING is lost; the downtime is measured on reply times only.
    """

    def __init__(self, ip: str, port: int = QUERY_PORT, period: float = PROBE_PERIOD) -> None:
        self.addr = (ip, port)
        self.period = period
        self.replies: list[float] = []
        self.sent = 0
        self.started = 0.0
        self.stopped = 0.0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect(self.addr)
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> Prober:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.stopped = time.time()
        self._sock.close()

    def _run(self) -> None:
        # select, not poll: poll rounds its timeout up to whole milliseconds, which would
        # stretch every 1 ms period by the loop's own overhead.
        socks = [self._sock]
        next_send = time.monotonic()
        deadline = next_send + PROBE_MAX_S
        while not self._stop.is_set():
            now = time.monotonic()
            if now > deadline:
                return
            if now >= next_send:
                try:
                    self._sock.send(b"PING")
                    self.sent += 1
                except OSError:
                    pass  # a queued ICMP error (port unreachable while the VNF is gone)
                next_send += self.period
                if next_send < now:  # fell behind (a stall): pace on, do not burst
                    next_send = now + self.period
            ready, _, _ = select.select(socks, [], [], max(0.0, next_send - time.monotonic()))
            if ready:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                continue  # ICMP error queued on the socket; later replies still count
            if data == b"PONG":
                self.replies.append(time.time())

    def last_reply(self) -> float:
        return self.replies[-1] if self.replies else 0.0


def _query(ip: str, payload: bytes, timeout: float = 0.3, tries: int = 5) -> bytes | None:
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, QUERY_PORT))
                s.send(payload)
                return s.recv(65535)
            except OSError:
                time.sleep(0.02)
    return None


def wait_pong(ip: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _query(ip, b"PING", timeout=0.1, tries=1) == b"PONG":
            return
        time.sleep(0.02)
    raise BenchError(f"VNF at {ip} does not answer PING within {timeout:.0f}s")


def send_flow(ip: str, n: int) -> tuple[str, int]:
    """n datagrams on one new flow; returns its key and the count flowmon confirmed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, DATA_PORT))
        src = s.getsockname()
        key = f"{src[0]}:{src[1]}"
        for i in range(n - 1):
            s.send(b"x" * 64)
            if i % 20 == 19:  # paced: a burst overflows the socket of a CPU-capped VNF
                time.sleep(0.001)
        s.settimeout(0.5)
        for _ in range(5):
            with contextlib.suppress(OSError):
                s.send(b"ACK?")
                reply = s.recv(64)
                if reply.startswith(b"ACK "):
                    return key, int(reply.split()[1])
        raise BenchError(f"flowmon at {ip} did not confirm the warm-up flow (ACK?)")


def flow_count(ip: str, key: str) -> int | None:
    """Packets flowmon has for ``key``; 0 when it does not know the flow; None: no answer."""
    raw = _query(ip, f"FLOW {key}".encode(), timeout=0.3, tries=5)
    if raw is None:
        return None
    try:
        res = json.loads(raw)
    except ValueError:
        return None
    if "error" in res:
        return 0 if "no flow" in str(res["error"]) else None
    return int(res["packets"])


# -- the manager's API -----------------------------------------------------------------------


class Api:
    """Synchronous client of the manager; every call has a timeout."""

    def __init__(self, tb: Testbed) -> None:
        self.m = manager_client(tb, HTTP_TIMEOUT)

    def close(self) -> None:
        self.m.close()

    def call(self, method: str, path: str, ok: tuple[int, ...] = (), **kw: Any) -> Any:
        return manager_call(self.m, method, path, ok, **kw)

    def vnf(self, iid: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", f"/vnflcm/v1/vnf_instances/{iid}")
        return res

    def deploy(self, desc: dict[str, Any], iid: str) -> dict[str, Any]:
        self.call("POST", "/nfvha/v1/vnfds", json=desc)
        self.call("POST", "/vnflcm/v1/vnf_instances", json={"vnfdId": desc["id"],
                                                            "vnfInstanceId": iid})
        self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})
        vnf: dict[str, Any] = wait_for(lambda: _active(self.vnf(iid)), DEPLOY_TIMEOUT,
                                       f"{iid} ACTIVE after instantiate")
        return vnf

    def checkpoints(self, iid: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", "/nfvha/v1/checkpoints",
                                              params={"vnfInstanceId": iid})
        return sorted(res, key=lambda c: int(c["seq"]))

    def heals(self, iid: str) -> list[dict[str, Any]]:
        ops = self.call("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": iid})
        return [o for o in ops if o["operation"] == "HEAL"]

    def standby_on(self, host: str, iid: str) -> bool:
        return any(h["id"] == host and any(i["id"] == iid and i["state"] == "STANDBY"
                                           for i in h["instances"])
                   for h in self.call("GET", "/nfvha/v1/hosts"))

    def remove(self, iid: str) -> None:
        """Terminate (if instantiated) and delete an instance; bounded."""
        r = self.m.http.get(f"/vnflcm/v1/vnf_instances/{iid}")
        if r.status_code == 404:
            return
        if r.json()["haState"] != "NOT_INSTANTIATED":
            self.call("POST", f"/vnflcm/v1/vnf_instances/{iid}/terminate", json={})
            wait_for(lambda: self.vnf(iid)["haState"] == "NOT_INSTANTIATED", 15,
                     f"{iid} terminated")
        self.call("DELETE", f"/vnflcm/v1/vnf_instances/{iid}", ok=(404,))


def _active(v: dict[str, Any]) -> dict[str, Any] | None:
    return v if v["haState"] == "ACTIVE" else None


#: Containment and TLS against the previous sandbox: (contained, previous) scenario pairs.
PREVIOUS_PAIRS = (("crash-local", "crash-local-previous"),
                  ("host-remote-fenced", "host-fenced-previous"))
TARGET_CONTAINMENT_RATIO = 1.1


def descriptor(scn: Scenario, address: str) -> dict[str, Any]:
    return {"id": f"rec-{scn.key}", **program(FLOWMON, previous=scn.previous),
            "network": {"address": address}, "resources": {"memory": "128Mi", "cpu": 0.5},
            "ha": {"checkpoint_interval": CHECKPOINT_INTERVAL, "backups": 1,
                   "recovery": scn.recovery, "probe": HA_PROBE}}


# -- logs ------------------------------------------------------------------------------------


class LogMark:
    """Where the manager's and agents' logs end now, to read what a run added to them."""

    def __init__(self, tb: Testbed) -> None:
        self.paths = [tb.log_dir / "manager.log",
                      *(tb.log_dir / f"agent-{h}.log" for h in tb.hosts)]
        self.offsets = {p: _size(p) for p in self.paths}

    def since(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.paths:
            with contextlib.suppress(OSError), p.open("rb") as f:
                f.seek(self.offsets[p])
                out[p.stem] = f.read(400_000).decode(errors="replace").splitlines()
        return out


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


_FENCE_RE = re.compile(r"waiting (\d+) ms until \S+ is known fenced")
_RESTORE_RE = re.compile(r"restored from \S+ as pid \d+ \(criu ([\d.]+) ms, wall ([\d.]+) ms"
                         r"(, sandbox reused)?")


def log_facts(logs: dict[str, list[str]], iid: str, target: str | None) -> dict[str, Any]:
    """What the logs say about a run: fencing wait, CRIU restore time, warnings."""
    facts: dict[str, Any] = {"fence_wait_ms": None, "criu_restore_ms": None,
                             "criu_restore_wall_ms": None}
    for line in logs.get("manager", []):
        m = _FENCE_RE.search(line)
        if m and iid in line:
            facts["fence_wait_ms"] = float(m.group(1))
    for line in logs.get(f"agent-{target}", []):
        m = _RESTORE_RE.search(line)
        if m and iid in line:
            facts["criu_restore_ms"] = float(m.group(1))
            facts["criu_restore_wall_ms"] = float(m.group(2))
            facts["sandbox_reused"] = m.group(3) is not None
    facts["suspected"] = [m.group(1) for ln in logs.get("manager", [])
                          if (m := re.search(r"host (\S+) suspected", ln))]
    facts["warnings"] = [ln for name, lines in logs.items() for ln in lines
                         if (" WARNING " in ln or " ERROR " in ln) and "alarm raised" not in ln
                         and "without heartbeats" not in ln
                         and not ln.startswith("  ")][:20]
    facts["excerpt"] = {name: lines[-60:] for name, lines in logs.items() if lines}
    return facts


# -- one run ---------------------------------------------------------------------------------


def _gaps(times: Sequence[float], lo: float, hi: float) -> list[tuple[float, float]]:
    """(start, end) between consecutive replies, with lo and hi as virtual replies."""
    return list(itertools.pairwise([lo, *(t for t in times if lo < t < hi), hi]))


def new_sample(scn: Scenario, run: int) -> dict[str, Any]:
    return {"scenario": scn.key, "run": run, "instance": f"{scn.code}{run}", "ok": False,
            "expected_strategy": scn.expect, "load1_start": os.getloadavg()[0]}


def run_once(tb: Testbed, api: Api, scn: Scenario, address: str, s: dict[str, Any],
             mark: LogMark) -> None:
    """One deploy, warm-up, failure and recovery; fills ``s`` as it goes."""
    iid = s["instance"]
    ip = address.split("/")[0]
    t_deploy = time.perf_counter()
    vnf = api.deploy(descriptor(scn, address), iid)
    s["host"], s["backups"] = vnf["host"], vnf["backups"]
    wait_pong(ip)
    s["deploy_s"] = time.perf_counter() - t_deploy
    prober = Prober(ip).start()
    try:
        key, n = send_flow(ip, WARM_PACKETS)
        s["flow"], s["counter_at_checkpoint"] = key, n
        # The checkpoint in progress now may have been dumped before the flow went quiet:
        # the one after it certainly was not (one checkpoint at a time per VNF).
        seen = max((int(c["seq"]) for c in api.checkpoints(iid)), default=0)
        cp = wait_for(lambda: next((c for c in api.checkpoints(iid)
                                    if int(c["seq"]) >= seen + 2), None),
                      CHECKPOINT_TIMEOUT, f"a checkpoint of {iid} after the warm-up")
        s["checkpoint_before"] = int(cp["seq"])
        if scn.expect == "standby":
            backup = vnf["backups"][0] if vnf["backups"] else None
            if backup is None:
                raise BenchError(f"{iid} has no backup host, so no standby")
            wait_for(lambda: api.standby_on(backup, iid), STANDBY_TIMEOUT,
                     f"a standby of {iid} on {backup}")
        # Steady state before the failure, then the failure itself.
        time.sleep(max(0.0, PRE_WINDOW - (time.time() - prober.replies[0]))
                   if prober.replies else PRE_WINDOW)
        before = api.heals(iid)
        if before:  # recovered already: the agent fenced it, or its probes failed under load
            s["heals_before_failure"] = [
                {"failureType": o.get("nfvha", {}).get("failureType"),
                 "strategy": o.get("nfvha", {}).get("strategy"),
                 "detail": o.get("nfvha", {}).get("detail")} for o in before]
        seen_ops = {o["id"] for o in before}
        t_fail = time.time()
        if scn.fault == "host":
            asyncio.run(tb.crash_host(vnf["host"]))
        else:
            api.call("POST", f"/nfvha/v1/vnf_instances/{iid}/inject", json={"fault": scn.fault})
        s["inject_call_ms"] = (time.time() - t_fail) * 1000
        try:
            op = wait_for(lambda: next((o for o in api.heals(iid) if o["id"] not in seen_ops
                                        and o["operationState"] in ("COMPLETED", "FAILED")),
                                       None), HEAL_TIMEOUT, f"the HEAL of {iid}")
        except BenchError as exc:
            recent = sum(1 for t in prober.replies if t > time.time() - 1.0)
            if recent:
                raise BenchError(f"{exc}; the VNF kept answering ({recent} replies in the "
                                 f"last second): the injected {scn.fault} did not take "
                                 "effect") from exc
            raise
        n_op = op.get("nfvha", {})
        s["operation_state"] = op["operationState"]
        s["strategy"] = n_op.get("strategy")
        s["target_host"] = n_op.get("targetHost")
        s["failure_type"] = n_op.get("failureType")
        s["restored_checkpoint"] = n_op.get("checkpoint")
        s["decision_reason"] = n_op.get("decision", {}).get("reason")
        s["attempts"] = n_op.get("attempts", [])
        tried = [a for a in s["attempts"] if "decidedAt" in a]
        s["fallback"] = len(tried) > 1 or s["strategy"] != scn.expect
        if op["operationState"] != "COMPLETED":
            raise BenchError(f"HEAL of {iid} {op['operationState']}: "
                             f"{op.get('error', {}).get('detail')}")
        ts = n_op["timestamps"]
        serving = float(ts["serving"])
        try:
            wait_for(lambda: prober.last_reply() > serving, 5.0,
                     f"a client reply from {iid} after it was serving again", every=0.01)
        except BenchError as exc:
            heals = api.heals(iid)
            raise BenchError(
                f"{exc}; {len(heals)} HEAL operations so far, from checkpoints "
                f"{[h.get('nfvha', {}).get('checkpoint') for h in heals]}: the recovered "
                "VNF fails again") from exc
        time.sleep(OBSERVE_AFTER)
    finally:
        t_end = time.time()
        prober.stop()
    replies = list(prober.replies)
    s["counter_after"] = flow_count(ip, key)
    if scn.fault == "host":
        s.update(fence_facts(api, s["host"], t_fail))
    s["ok"] = True
    s["load1_end"] = os.getloadavg()[0]

    detected, decided = float(ts["detected"]), float(ts["decided"])
    restored = float(ts["restored"])
    s["detect_ms"] = (detected - t_fail) * 1000
    s["decide_ms"] = (decided - detected) * 1000
    if tried:  # a failed attempt before the last one: its decision was the first one
        s["first_decision_ms"] = (float(tried[0]["decidedAt"]) - detected) * 1000
    s["restore_ms"] = (restored - decided) * 1000
    s["redirect_ms"] = (serving - restored) * 1000
    s["total_ms"] = (serving - t_fail) * 1000
    client_view(s, prober, replies, t_fail, restored, serving, t_end, f"HEAL of {iid}")
    after = s["counter_after"]
    s["state_kept"] = None if after is None else after >= n
    s["t_fail"] = t_fail
    s["timestamps_rel_ms"] = {k: (float(v) - t_fail) * 1000 for k, v in ts.items()}
    s.update(log_facts(mark.since(), iid, s["target_host"]))
    s["fence_wait_logged_ms"] = s["fence_wait_ms"]
    if s.get("fence_state") == "COMPLETED" and s.get("fence_done_ms") is not None:
        # The manager logs the lease wait it would take; a confirmed fence ends it early.
        # Its wait starts as the restore does (decided), so this is the part of `restore`
        # spent until the fence was confirmed (0: confirmed before the restore began).
        waited = max(0.0, s["fence_done_ms"] - s["detect_ms"] - s["decide_ms"])
        logged = s["fence_wait_logged_ms"]
        s["fence_wait_ms"] = 0.0 if logged is None else min(logged, waited)


def fence_facts(api: Api, host: str, t_fail: float) -> dict[str, Any]:
    """The manager's fence records of ``host`` since the failure (none without a driver).

    Times from the record's ``startedAt`` (one clock read) plus the driver's own
    ``durationMs``; the wait is bounded: a fence still in progress is recorded as such.
    """
    def records() -> list[dict[str, Any]]:
        res = api.call("GET", "/nfvha/v1/fences", params={"host": host})
        return [r for r in res if (iso_to_epoch(str(r.get("startedAt"))) or 0) >= t_fail - 1]

    recs: list[dict[str, Any]] = []

    def finished() -> list[dict[str, Any]] | None:
        nonlocal recs
        recs = records()
        return None if any(r.get("state") == "PROCESSING" for r in recs) else recs

    with contextlib.suppress(BenchError):
        wait_for(lambda: finished() is not None, FENCE_RECORD_TIMEOUT,
                 f"the fence of {host} to finish", every=0.05)
    out: dict[str, Any] = {"fences": [
        {"state": r.get("state"), "trigger": r.get("trigger"), "driver": r.get("driver"),
         "duration_ms": r.get("durationMs"),
         "started_ms": ((iso_to_epoch(str(r.get("startedAt"))) or math.nan) - t_fail) * 1000,
         "result": {k: (r.get("result") or {}).get(k) for k in ("ok", "status", "detail")}}
        for r in recs]}
    if out["fences"]:
        first = out["fences"][0]
        out["fence_state"] = first["state"]
        out["fence_ms"] = first["duration_ms"]
        out["fence_started_ms"] = first["started_ms"]
        if isinstance(first["duration_ms"], int | float):
            out["fence_done_ms"] = first["started_ms"] + first["duration_ms"]
    return out


def client_view(s: dict[str, Any], prober: Prober, replies: list[float], t_fail: float,
                restored: float, serving: float, t_end: float, what: str) -> None:
    """What the client saw: the outage (longest reply gap overlapping failure..serving),
    the first reply after ``restored``, and the steady-state gaps before the failure."""
    first = next((t for t in replies if t > restored), None)
    s["client_first_reply_after_restored_ms"] = (first - restored) * 1000 if first else None
    outage = [g for g in _gaps(replies, t_fail - PRE_WINDOW, t_end)
              if g[1] >= t_fail and g[0] <= serving]
    if not outage:
        raise BenchError(f"{what} says serving at {serving - t_fail:+.3f} s, before the "
                         "failure: not this failure's recovery")
    start, end = max(outage, key=lambda g: g[1] - g[0])
    s["downtime_ms"] = (end - start) * 1000
    s["gap_start_ms"] = (start - t_fail) * 1000  # last reply before the outage
    s["gap_end_ms"] = (end - t_fail) * 1000  # first reply after it
    s["censored"] = end >= t_end  # no reply after the outage within the observation
    pre = _gaps(replies, t_fail - PRE_WINDOW, t_fail)
    s["pre_failure_max_gap_ms"] = max((b - a for a, b in pre[1:-1]), default=math.nan) * 1000
    window = _gaps(replies, t_fail - PRE_WINDOW, t_end)
    s["window_max_gap_ms"] = max(b - a for a, b in window) * 1000
    s["probe_sent"], s["probe_replies"] = prober.sent, len(replies)
    s["probe_rate_hz"] = prober.sent / max(1e-3, prober.stopped - prober.started)


# -- the external baseline: a restart-only supervisor, without nfvha -------------------------

# Restart the program whenever it exits, at once (systemd Restart=always, RestartSec=0),
# printing one JSON line per event with its wall-clock time; SIGTERM ends it and the
# program. Bounded: a program that cannot start is not restarted forever.
SUPERVISOR = r'''
import json, signal, subprocess, sys, time
child = None
stopping = False
def say(**kw):
    print(json.dumps({"t": time.time(), **kw}), flush=True)
def term(signum, frame):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.kill()
signal.signal(signal.SIGTERM, term)
for n in range(1000):
    if stopping:
        break
    child = subprocess.Popen(sys.argv[1:])
    say(event="start", pid=child.pid, n=n)
    status = child.wait()
    say(event="exit", pid=child.pid, status=status)
'''
SUPERVISOR_NOTE: dict[str, Any] = {
    "what": "flowmon without nfvha under a restart-only supervisor loop (restart at once on "
            "every exit: systemd Restart=always with RestartSec=0; systemd's default "
            "RestartSec is 100 ms), in a netns of its own on the testbed bridge, with the "
            "VNF's cgroup limits; SIGKILLed directly, probed by the same client. Phases from "
            "the supervisor's timestamps: detect = its wait() returned, restore = the new "
            "process spawned, redirect = until the client's first reply.",
    "restart_sec": 0.0,
    "host_crash": "Not measured: a host crash has no recovery under a single-host "
                  "supervisor (it dies with the host; the VNF is down until the host is back, "
                  "with its state lost). Kubernetes (documented default, not measured): pods "
                  "on a failed node are evicted only when the node's "
                  "node.kubernetes.io/unreachable or not-ready NoExecute taint outlasts the "
                  "toleration the DefaultTolerationSeconds admission plugin adds to every "
                  "pod, tolerationSeconds=300 (kube-apiserver "
                  "--default-unreachable-toleration-seconds, --default-not-ready-toleration-"
                  "seconds), counted from when the node controller taints the node; then "
                  "the pod is recreated elsewhere, with its in-memory state lost.",
    "citations": [
        "https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/"
        "#taint-based-evictions",
        "https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/"
        "#defaulttolerationseconds",
        "https://pkg.go.dev/k8s.io/kubernetes/plugin/pkg/admission/defaulttolerationseconds",
        "https://www.freedesktop.org/software/systemd/man/latest/systemd.service.html"
        "#RestartSec=",
    ],
}
SUPERVISOR_LIMITS = CgroupLimits(memory_bytes=128 << 20, cpu_cores=0.5)  # as descriptor()


class Supervised:
    """flowmon under ``SUPERVISOR`` in a netns of its own on the testbed's bridge.

    Every name starts with the testbed's, so ``Testbed.down`` removes whatever an
    interrupted run left (netns, veth, cgroup).
    """

    def __init__(self, tb: Testbed, address: str) -> None:
        self.tb = tb
        self.address = address
        self.ip = address.split("/")[0]
        self.netns = f"{tb.name}-sv"
        self.link = f"{tb.name}-sv0"
        self.cgroup = f"{tb.name}/supervised"
        self.proc: subprocess.Popen[bytes] | None = None
        self.events_path = tb.log_dir / "supervisor.log"

    def setup(self) -> None:
        async def build() -> None:
            await self.tb.net.create_netns(self.netns)
            await self.tb.net.create_veth(self.link, f"{self.tb.name}-sv1",
                                          peer_netns=self.netns, peer_name_after_move="eth0",
                                          master=self.tb.bridge, peer_address=self.address)
        try:
            asyncio.run(build())
            self.tb.cgroups.cgroup(self.cgroup).create(SUPERVISOR_LIMITS)
        except Exception as exc:  # NfvhaError, OSError: the run stops cleanly
            raise BenchError(f"supervised netns {self.netns}: {exc}") from exc

    def teardown(self) -> None:
        self.stop()
        async def remove() -> None:
            await self.tb.net.delete_netns(self.netns)
            await self.tb.net.delete_link(self.link)
        try:
            asyncio.run(remove())
            self.tb.cgroups.cgroup(self.cgroup).delete()
        except Exception as exc:  # Testbed.down removes it by name anyway
            print(f"recovery: supervisor teardown: {exc}", file=sys.stderr)

    def start(self) -> None:
        """A fresh supervisor (and flowmon) in the netns and the cgroup."""
        procs = [str(p) for p in self.tb.cgroups.cgroup(self.cgroup).procs_paths()]

        def enter() -> None:  # in the child: join the cgroup; `ip netns exec` does the netns
            me = str(os.getpid()).encode()
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, me)
                os.close(fd)

        self.events_path.write_bytes(b"")
        with self.events_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", SUPERVISOR,
                 sys.executable, str(FLOWMON)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=enter, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM (the supervisor kills flowmon), bounded; then whatever is left."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
            self.proc = None
        with contextlib.suppress(Exception):
            self.tb.cgroups.cgroup(self.cgroup).kill_all()

    def events(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(OSError):
            for line in self.events_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def child(self) -> int:
        starts = [e for e in self.events() if e.get("event") == "start"]
        if not starts:
            raise BenchError("the supervisor has not started flowmon")
        return int(starts[-1]["pid"])


def run_supervised(sv: Supervised, s: dict[str, Any]) -> None:
    """run_once for the external baseline: same client, warm-up and SIGKILL; no nfvha."""
    ip = sv.ip
    t_deploy = time.perf_counter()
    sv.start()
    s["host"], s["backups"] = "supervisor", []
    wait_pong(ip)
    s["deploy_s"] = time.perf_counter() - t_deploy
    prober = Prober(ip).start()
    try:
        key, n = send_flow(ip, WARM_PACKETS)
        s["flow"], s["counter_at_checkpoint"] = key, n
        time.sleep(max(0.0, PRE_WINDOW - (time.time() - prober.replies[0]))
                   if prober.replies else PRE_WINDOW)
        child = sv.child()
        t_fail = time.time()
        os.kill(child, signal.SIGKILL)
        s["inject_call_ms"] = (time.time() - t_fail) * 1000
        start = wait_for(lambda: next((e for e in sv.events() if e.get("event") == "start"
                                       and float(e["t"]) > t_fail), None),
                         HEAL_TIMEOUT, "the supervisor's restart of flowmon")
        exited = next((e for e in sv.events() if e.get("event") == "exit"
                       and e.get("pid") == child), None)
        detected = float(exited["t"]) if exited else math.nan
        restored = float(start["t"])
        wait_for(lambda: prober.last_reply() > restored, 5.0,
                 "a client reply from the restarted flowmon", every=0.01)
        serving = next(t for t in prober.replies if t > restored)
        time.sleep(OBSERVE_AFTER)
    finally:
        t_end = time.time()
        prober.stop()
    replies = list(prober.replies)
    s["counter_after"] = flow_count(ip, key)
    s["ok"] = True
    s["load1_end"] = os.getloadavg()[0]
    s.update({"operation_state": "COMPLETED", "strategy": SUPERVISOR_RESTART,
              "target_host": "supervisor", "failure_type": "process-exit",
              "restored_checkpoint": None, "decision_reason": "restart-only supervisor",
              "attempts": [], "fallback": False, "exit_status": exited and exited["status"]})
    # Phases as the HEAL's: no decision to make (0), restore = until the new process ran,
    # redirect = until the client's first reply (the supervisor has no probe of its own).
    s["detect_ms"] = (detected - t_fail) * 1000
    s["decide_ms"] = 0.0
    s["restore_ms"] = (restored - detected) * 1000
    s["redirect_ms"] = (serving - restored) * 1000
    s["total_ms"] = (serving - t_fail) * 1000
    client_view(s, prober, replies, t_fail, restored, serving, t_end, "the supervisor")
    after = s["counter_after"]
    s["state_kept"] = None if after is None else after >= n
    s["t_fail"] = t_fail
    ts = {"detected": detected, "decided": detected, "restored": restored, "serving": serving}
    s["timestamps_rel_ms"] = {k: (v - t_fail) * 1000 for k, v in ts.items()}
    s.update({"fence_wait_ms": None, "criu_restore_ms": None, "criu_restore_wall_ms": None,
              "suspected": [], "warnings": []})


def attempt(tb: Testbed, api: Api, scn: Scenario, run: int, address: str,
            sv: Supervised | None = None) -> dict[str, Any]:
    """run_once, turning any failure of the run into a sample that says what went wrong."""
    s = new_sample(scn, run)
    s["other_netns"] = other_netns(TB_NAME)
    # What a testbed built now imports (process-group runs share the testbed of the group).
    s["source_digest"] = source_digest()
    mark = LogMark(tb)
    t0 = time.perf_counter()
    try:
        if scn.supervisor:
            if sv is None:
                raise BenchError("no supervised netns for the supervisor baseline")
            try:
                run_supervised(sv, s)
            finally:
                sv.stop()
        else:
            run_once(tb, api, scn, address, s, mark)
    except Exception as exc:
        s["ok"] = False
        s["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
        if not scn.supervisor:
            with contextlib.suppress(Exception):
                s.update(log_facts(mark.since(), s["instance"], s.get("target_host")))
    s["elapsed_s"] = time.perf_counter() - t0
    return s


# -- groups of runs --------------------------------------------------------------------------


def _sample_line(s: dict[str, Any]) -> str:
    if not s["ok"]:
        return f"{s['scenario']:13} run {s['run']:2}: FAILED: {s.get('error')}"
    kept = {True: "kept", False: "LOST", None: "?"}[s["state_kept"]]
    first = s["client_first_reply_after_restored_ms"]
    return (f"{s['scenario']:13} run {s['run']:2}: downtime {s['downtime_ms']:6.1f} ms | "
            f"detect {s['detect_ms']:6.1f} decide {s['decide_ms']:5.1f} restore "
            f"{s['restore_ms']:6.1f} redirect {s['redirect_ms']:5.1f} (client "
            f"{first if first is None else round(first, 1)}) | {s['strategy']} "
            f"{s['host']}->{s['target_host']} | state {kept} "
            f"({s['counter_at_checkpoint']}->{s['counter_after']})"
            + (f" | fence {s['fence_state']} {s['fence_ms']} ms, done at "
               f"{_f(s.get('fence_done_ms'))} ms, waited {_f(s.get('fence_wait_ms'))} ms"
               if s.get("fence_state") else ""))


def _failed(scn: Scenario, run: int, exc: BaseException, t0: float) -> dict[str, Any]:
    return {**new_sample(scn, run), "error": f"{type(exc).__name__}: {str(exc)[:600]}",
            "elapsed_s": time.perf_counter() - t0}


PIN_BRIDGE_MACS = True  # see pin_bridge_macs(); --no-pin-bridge-macs turns it off


def _up(tb: Testbed) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(tb.down())  # leftovers of an interrupted run
    asyncio.run(tb.up(timeout=TESTBED_TIMEOUT))
    if PIN_BRIDGE_MACS:
        pin_bridge_macs(tb)


def _down(tb: Testbed) -> None:
    testbed_down(tb, "recovery")


def _testbed(fencing: bool = False, previous: bool = False) -> Testbed:
    """The testbed of a scenario; a previous-sandbox one (no TLS) has a name and subnet of
    its own, so that both can be up at once and runs interleave."""
    if previous:
        net = ipaddress.ip_network(TB_SUBNET)
        subnet = str(ipaddress.ip_network((int(net.network_address) + (1 << 16), 16)))
        return Testbed(name=f"{TB_NAME}p", n_hosts=N_HOSTS, subnet=subnet,
                       state_dir=STATE_DIR, with_manager=True, fencing=fencing, tls=False)
    return Testbed(name=TB_NAME, n_hosts=N_HOSTS, subnet=TB_SUBNET, state_dir=STATE_DIR,
                   with_manager=True, fencing=fencing)


def run_process_group(scns: Sequence[Scenario], runs: int,
                      record: Callable[[dict[str, Any]], None]) -> None:
    """One testbed for every process-level run (and one more, up at the same time, for
    previous-sandbox scenarios); rebuilt only if a run leaves it broken."""
    if not scns or runs < 1:
        return
    kinds = sorted({s.previous for s in scns})
    tbs = {prev: _testbed(previous=prev) for prev in kinds}
    apis: dict[bool, Api] = {}
    sv: Supervised | None = None
    want_sv = any(s.supervisor for s in scns)
    try:
        with timed("process group: testbed up"):
            for prev, tb in tbs.items():
                _up(tb)
                apis[prev] = Api(tb)
            if want_sv:  # an address of its own: no ARP entry of an nfvha VNF to go stale
                sv = Supervised(tbs[False], tbs[False].vnf_address(2))
                sv.setup()
        for run in range(runs):
            for scn in scns:
                tb, api = tbs[scn.previous], apis[scn.previous]
                s = attempt(tb, api, scn, run, tb.vnf_address(1), sv)
                record(s)
                progress(_sample_line(s))
                try:
                    api.remove(f"{scn.code}{run}")
                except BenchError as exc:
                    progress(f"cleanup of {scn.code}{run} failed ({exc}); rebuilding testbed")
                    api.close()
                    if sv is not None and not scn.previous:
                        sv.teardown()
                        sv = None
                    _down(tb)
                    tbs[scn.previous] = tb = _testbed(previous=scn.previous)
                    _up(tb)
                    apis[scn.previous] = Api(tb)
                    if want_sv and not scn.previous:
                        sv = Supervised(tb, tb.vnf_address(2))
                        sv.setup()
    finally:
        for api in apis.values():
            api.close()
        with timed("process group: testbed down"):
            if sv is not None:
                sv.teardown()
            for tb in tbs.values():
                _down(tb)


def run_host_group(scns: Sequence[Scenario], runs: int,
                   record: Callable[[dict[str, Any]], None]) -> None:
    """A host crash destroys a host: a fresh testbed for every run (with the testbed fence
    driver for the scenarios that measure fencing)."""
    for run in range(runs):
        for scn in scns:
            t0 = time.perf_counter()
            tb = _testbed(fencing=scn.fencing, previous=scn.previous)
            api: Api | None = None
            try:
                _up(tb)
                up_s = time.perf_counter() - t0
                api = Api(tb)
                s = attempt(tb, api, scn, run, tb.vnf_address(1))
                s["testbed_up_s"] = up_s
            except Exception as exc:  # the testbed did not come up
                s = _failed(scn, run, exc, t0)
            finally:
                if api is not None:
                    api.close()
                _down(tb)
            record(s)
            progress(_sample_line(s))


# -- statistics ------------------------------------------------------------------------------


def describe(values: Sequence[float | None]) -> dict[str, float]:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"median": percentile(xs, 50), "p95": percentile(xs, 95),
            "min": min(xs, default=math.nan), "max": max(xs, default=math.nan),
            "mean": sum(xs) / len(xs) if xs else math.nan, "n": len(xs)}


METRICS = ("downtime_ms", "detect_ms", "decide_ms", "restore_ms", "redirect_ms", "total_ms",
           "client_first_reply_after_restored_ms", "pre_failure_max_gap_ms",
           "fence_wait_ms", "fence_wait_logged_ms", "fence_ms", "fence_started_ms",
           "fence_done_ms", "criu_restore_wall_ms", "inject_call_ms")


def summarize(scns: Sequence[Scenario], samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scn in scns:
        mine = [s for s in samples if s["scenario"] == scn.key]
        ok = [s for s in mine if s["ok"]]
        if not mine:
            continue
        strategies: dict[str, int] = {}
        for s in ok:
            strategies[str(s["strategy"])] = strategies.get(str(s["strategy"]), 0) + 1
        out[scn.key] = {
            "label": scn.label, "fault": scn.fault, "recovery": scn.recovery,
            "expected_strategy": scn.expect, "runs": len(mine), "ok": len(ok),
            "baseline": scn.baseline, "external_baseline": scn.supervisor,
            "fencing": scn.fencing,
            "fences": _counts(str(s.get("fence_state") or "none") for s in ok),
            "strategies": strategies,
            "state_kept": sum(1 for s in ok if s["state_kept"]),
            "counter_at_checkpoint": describe([s["counter_at_checkpoint"] for s in ok]),
            "counter_after": describe([s["counter_after"] for s in ok]),
            **{m: describe([s.get(m) for s in ok]) for m in METRICS},
        }
    return out


def find_outliers(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose downtime is far above the rest of their scenario (Tukey, > +20 ms)."""
    out = []
    by: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        if s["ok"]:
            by.setdefault(s["scenario"], []).append(s)
    for key, ss in by.items():
        xs = [s["downtime_ms"] for s in ss]
        q1, q3, med = percentile(xs, 25), percentile(xs, 75), percentile(xs, 50)
        limit = max(q3 + 1.5 * (q3 - q1), med + 20)
        for s in ss:
            if s["downtime_ms"] > limit:
                phases = {p: s[p] - percentile([x[p] for x in ss], 50)
                          for p in ("detect_ms", "decide_ms", "restore_ms", "redirect_ms")}
                out.append({"scenario": key, "run": s["run"], "downtime_ms": s["downtime_ms"],
                            "scenario_median_ms": med, "limit_ms": limit,
                            "excess_by_phase_ms": phases,
                            "dominant_phase": max(phases, key=lambda p: phases[p]),
                            "warnings": s.get("warnings", [])})
    return out


def evaluate_targets(summary: dict[str, Any], samples: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    out = []
    if "crash-local" in summary:
        v = summary["crash-local"]["downtime_ms"]["median"]
        out.append({"target": f"process crash, restore-local: median downtime <= "
                              f"{TARGET_CRASH_LOCAL_MS:.0f} ms", "value": v, "unit": "ms",
                    "pass": v <= TARGET_CRASH_LOCAL_MS})
    if "host-remote" in summary:
        v = summary["host-remote"]["downtime_ms"]["median"]
        out.append({"target": f"host crash, restore-remote: median downtime <= "
                              f"{TARGET_HOST_REMOTE_MS:.0f} ms", "value": v, "unit": "ms",
                    "pass": v <= TARGET_HOST_REMOTE_MS})
    if "host-remote-fenced" in summary:
        v = summary["host-remote-fenced"]["downtime_ms"]["median"]
        out.append({"target": f"host crash with fencing, restore-remote: median downtime <= "
                              f"{TARGET_HOST_FENCED_MS:.0f} ms", "value": v, "unit": "ms",
                    "pass": v <= TARGET_HOST_FENCED_MS})
        if "host-remote" in summary:
            lease = summary["host-remote"]["downtime_ms"]["median"]
            v = lease - v
            out.append({"target": f"fencing lowers the host-crash median downtime by >= "
                                  f"{TARGET_FENCING_GAIN_MS:.0f} ms vs the lease wait, same run "
                                  f"({lease:.0f} ms without a fence driver)",
                        "value": v, "unit": "ms", "pass": v >= TARGET_FENCING_GAIN_MS})
    for new, old in PREVIOUS_PAIRS:
        if new in summary and old in summary:
            for metric, what in (("restore_ms", "restore phase"), ("downtime_ms", "downtime")):
                a, b = summary[new][metric]["median"], summary[old][metric]["median"]
                v = a / b if b else math.nan
                out.append({"target": f"containment and TLS: {summary[new]['label']}, {what} "
                                      f"<= {TARGET_CONTAINMENT_RATIO}x the previous sandbox's, "
                                      f"same run ({a:.0f} vs {b:.0f} ms, medians)",
                            "value": v, "unit": "x", "pass": v <= TARGET_CONTAINMENT_RATIO})
    host = [s["detect_ms"] for s in samples if s["ok"] and s["scenario"].startswith("host-")]
    if host:
        v = percentile(host, 50)
        p95 = percentile(host, 95)
        out.append({"target": f"host crash detection <= {TARGET_HOST_DETECT_MS:.0f} ms "
                              f"(median of all {len(host)} host-crash runs; p95 {p95:.0f} ms)",
                    "value": v, "unit": "ms", "pass": v <= TARGET_HOST_DETECT_MS})
    return out


# -- machine ---------------------------------------------------------------------------------


def _target_value(t: dict[str, Any]) -> str:
    """Ratios with two decimals, times in whole ms."""
    return f"{t['value']:.2f}x" if t["unit"] == "x" else f"{t['value']:.0f} {t['unit']}"


def machine_description() -> dict[str, Any]:
    return testbed_machine(TB_NAME)


# -- output ----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    summary: dict[str, Any] = result["summary"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    lines = [
        "# Recovery: client-visible downtime per failure and strategy",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · CRIU {version} · {N_HOSTS} emulated hosts with the "
        f"manager · flowmon, checkpoint every {c['checkpoint_interval_s']} s, 1 backup · "
        f"{_f(result['elapsed_s'])} s in all.",
        "",
        "*Method*: per run a fresh instance, 1 kHz PING probe from the root netns, "
        f"{c['warm_packets']} datagrams on one flow, then the failure right after the "
        "manager has recorded a checkpoint taken wholly after that traffic. Process-level "
        "runs share one testbed; each host-crash run gets a fresh one. "
        + ("The testbed's bridges get their current MAC set explicitly after `up` (a Linux "
           "bridge otherwise changes MAC when its lowest-MAC port is deleted, e.g. the "
           "crashed host's uplink, which flushes ARP entries and misroutes the surviving "
           "agents' heartbeats; see `pin_bridge_macs` in the script)."
           if c.get("pin_bridge_macs") else
           "The testbed's bridges are left as `Testbed.up` makes them (MAC not pinned)."),
        "",
        "*Downtime*: the longest gap between consecutive replies seen by a client probing "
        "the VNF at 1 kHz (UDP PING→PONG), among the gaps overlapping the interval from the "
        "failure to the manager's `serving`. Phases are medians from the HEAL operation "
        "occurrence: *detect* = detected − failure injected, *decide* = decided − detected, "
        "*restore* = restored − decided (includes waiting until a lost host is known fenced), "
        "*redirect* = serving − restored (the manager's probe); *client* = the client's "
        "first reply after `restored`. *State*: runs whose flow counter after recovery is "
        "≥ its value in the last checkpoint before the failure "
        f"({c['warm_packets']} datagrams; counter before → after, medians). Times in ms.",
        "",
        "| Scenario | Strategy used | Runs ok | Downtime median | p95 | max | Detect | Decide "
        "| Restore | Redirect | Client after restored | State kept | Counter |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    sb = result.get("supervisor_baseline")
    if sb and any(v.get("external_baseline") for v in summary.values()):
        lines[-3:-3] = ["", "*External baseline* (`crash-supervisor`): " + sb["what"] + " "
                        + sb["host_crash"]]
    for v in summary.values():
        strat = ", ".join(f"{k} ×{n}" if len(v["strategies"]) > 1 else k
                          for k, n in v["strategies"].items()) or "–"
        lines.append(
            f"| {v['label']} | {strat} | {v['ok']}/{v['runs']} "
            f"| **{_f(v['downtime_ms']['median'])}** | {_f(v['downtime_ms']['p95'])} "
            f"| {_f(v['downtime_ms']['max'])} "
            f"| {_f(v['detect_ms']['median'])} | {_f(v['decide_ms']['median'], 1)} "
            f"| {_f(v['restore_ms']['median'])} | {_f(v['redirect_ms']['median'], 1)} "
            f"| {_f(v['client_first_reply_after_restored_ms']['median'], 1)} "
            f"| {v['state_kept']}/{v['ok']} "
            f"| {_f(v['counter_at_checkpoint']['median'])} → "
            f"{_f(v['counter_after']['median'])} |")
    lines += ["", "p95 of the phases:", "",
              "| Scenario | Detect | Decide | Restore | Redirect | Fencing wait (median) "
              "| CRIU restore wall (median) | Steady-state max gap (median) |",
              "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in summary.values():
        lines.append(
            f"| {v['label']} | {_f(v['detect_ms']['p95'])} | {_f(v['decide_ms']['p95'], 1)} "
            f"| {_f(v['restore_ms']['p95'])} | {_f(v['redirect_ms']['p95'], 1)} "
            f"| {_f(v['fence_wait_ms']['median'])} | {_f(v['criu_restore_wall_ms']['median'])} "
            f"| {_f(v['pre_failure_max_gap_ms']['median'])} |")
    lines += ["", "*Steady-state max gap*: the longest reply gap in the "
              f"{PRE_WINDOW:.1f} s before the failure (a checkpoint's freeze falls there).",
              *fencing_lines(summary), "", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: "
                     f"{_target_value(t)}")
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in result["anomalies"]] or ["- none"]
    lines += ["", "Settings: " + ", ".join(
        f"{k} {v}" for k, v in c.items() if k not in ("scenarios", "ha_probe")),
        f"manager HA probe {json.dumps(c['ha_probe'])}.", ""]
    return "\n".join(lines)


def fencing_lines(summary: dict[str, Any]) -> list[str]:
    """Host crashes with and without the fence driver, side by side (medians, ms)."""
    host = {k: v for k, v in summary.items() if v["fault"] == "host"
            and v["expected_strategy"] == "restore-remote"}
    if not any(v.get("fencing") for v in host.values()):
        return []
    lines = ["", "*Fencing*: host crash with restore-remote, with the testbed fence driver "
             "(the manager powers the lost host off and moves the VNF once that is "
             "confirmed) and without (it waits until the longest lease the host may hold "
             "has run out, plus a margin). *Fence* = the driver's own duration "
             "(`durationMs`), *confirmed at* = from the failure, *fence wait* = the part of "
             "*restore* spent before the VNF could move: until the fence was confirmed or "
             "the lease ran out, whichever came first (*logged* = the lease wait the "
             "manager's log states). Medians, ms.", "",
             "| Scenario | Runs ok | Downtime | Detect | Restore | Fence | Fence confirmed at "
             "| Fence wait | Logged wait | Fence records |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for v in host.values():
        fences = ", ".join(f"{k} ×{n}" for k, n in v.get("fences", {}).items()) or "–"
        lines.append(
            f"| {v['label']} | {v['ok']}/{v['runs']} | **{_f(v['downtime_ms']['median'])}** "
            f"| {_f(v['detect_ms']['median'])} | {_f(v['restore_ms']['median'])} "
            f"| {_f(v['fence_ms']['median'])} | {_f(v['fence_done_ms']['median'])} "
            f"| {_f(v['fence_wait_ms']['median'])} | {_f(v['fence_wait_logged_ms']['median'])} "
            f"| {fences} |")
    return lines


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary: dict[str, Any] = result["summary"]
    if not summary:
        return
    keys = list(summary)
    labels = [summary[k]["label"].replace(" → ", "\n→ ").replace(" (", "\n(") for k in keys]
    xs = list(range(len(keys)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    med = [summary[k]["downtime_ms"]["median"] for k in keys]
    p95 = [summary[k]["downtime_ms"]["p95"] for k in keys]
    colors = ["tab:brown" if summary[k].get("external_baseline") else
              "tab:gray" if summary[k]["expected_strategy"] in RESTARTS else "tab:blue"
              for k in keys]
    ax1.bar(xs, med, color=colors, alpha=0.85, width=0.7)
    ax1.errorbar(xs, med, yerr=[[0] * len(xs), [max(0.0, p - m) for p, m in
                                                zip(p95, med, strict=True)]],
                 fmt="none", ecolor="black", capsize=5)
    for x, mv, pv in zip(xs, med, p95, strict=True):
        ax1.annotate(f"{mv:.0f}", (x, mv / 2), ha="center", va="center", fontsize=9,
                     color="white", fontweight="bold")
        ax1.annotate(f"p95 {pv:.0f}", (x, pv), ha="center", va="bottom", fontsize=7,
                     color="dimgray", xytext=(0, 3), textcoords="offset points")
    labelled = False
    for key, target in (("crash-local", TARGET_CRASH_LOCAL_MS),
                        ("host-remote", TARGET_HOST_REMOTE_MS),
                        ("host-remote-fenced", TARGET_HOST_FENCED_MS)):
        if key in keys:
            i = keys.index(key)
            ax1.hlines(target, i - 0.45, i + 0.45, colors="red", linestyles="--", lw=1.2,
                       label=None if labelled else "target (median)")
            labelled = True
    if labelled:
        ax1.legend(fontsize=7, loc="upper left")
    ax1.set_xticks(xs, labels, fontsize=8)
    ax1.set_ylabel("client downtime (ms)")
    ax1.set_title("Downtime seen by a 1 kHz probing client (bar median, whisker p95; "
                  "gray: restart baselines, brown: external)", fontsize=9)
    ax1.grid(True, axis="y", alpha=0.3)

    def phase(k: str, metric: str) -> float:
        v = summary[k][metric]["median"]
        return 0.0 if math.isnan(v) else max(0.0, v)

    fence = [phase(k, "fence_wait_ms") for k in keys]
    parts = [("detect", [phase(k, "detect_ms") for k in keys], "tab:red", None),
             ("decide", [phase(k, "decide_ms") for k in keys], "tab:orange", None),
             ("restore: wait until the lost host is fenced (lease or fence driver)", fence,
              "tab:olive", "//"),
             ("restore: the agent restores/starts the VNF",
              [max(0.0, phase(k, "restore_ms") - f) for k, f in zip(keys, fence, strict=True)],
              "tab:green", None),
             ("redirect (until the manager's probe answers)",
              [phase(k, "redirect_ms") for k in keys], "tab:purple", None)]
    bottom = [0.0] * len(keys)
    for name, vals, color, hatch in parts:
        if not any(vals):
            continue
        ax2.bar(xs, vals, bottom=bottom, color=color, label=name, alpha=0.85, width=0.7,
                hatch=hatch)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.plot(xs, med, "k_", markersize=30, mew=2, label="client downtime (median)")
    ax2.set_ylim(0, max([*bottom, *med]) * 1.4)  # room for the legend
    ax2.set_xticks(xs, labels, fontsize=8)
    ax2.set_ylabel("ms after the failure")
    ax2.set_title("Where the time goes (medians of the HEAL phases)", fontsize=9)
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(True, axis="y", alpha=0.3)
    m, c = result["machine"], result["config"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    fig.suptitle(f"nfvha recovery — flowmon, checkpoint every {c['checkpoint_interval_s']} s, "
                 f"{N_HOSTS} emulated hosts; kernel {m['kernel']}, {m['nproc']} vCPU, "
                 f"CRIU {version}; runs per scenario: "
                 + ", ".join(f"{summary[k]['ok']}" for k in keys), fontsize=10)
    fig.tight_layout()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
    plt.close(fig)


def anomalies(result: dict[str, Any], samples: list[dict[str, Any]]) -> list[str]:
    m = result["machine"]
    out: list[str] = shared_machine_note(m)
    if m["source_digest_at_start"] != m["source_digest_at_end"]:
        out.append("nfvha's sources changed during the run (digest "
                   f"{m['source_digest_at_start']} -> {m['source_digest_at_end']}): later "
                   "testbeds ran other code than earlier ones; runs per digest: "
                   + ", ".join(f"{d} ×{n}" for d, n in _counts(
                       s.get("source_digest", "?") for s in samples).items()))
    busy = [s for s in samples if s.get("other_netns")]
    if busy:
        names = sorted({n.rsplit("-", 1)[0] for s in busy for n in s["other_netns"]})
        out.append(f"other testbeds' network namespaces existed during {len(busy)} of "
                   f"{len(samples)} runs ({', '.join(names[:6])}): they shared the 2 CPUs")
    for s in samples:
        tag = f"{s['scenario']} run {s['run']}"
        if not s["ok"]:
            out.append(f"{tag} failed: {s.get('error')}")
            continue
        if s["strategy"] != s["expected_strategy"]:
            out.append(f"{tag}: strategy {s['strategy']} instead of {s['expected_strategy']} "
                       f"(attempts: {s.get('attempts')})")
        if s["expected_strategy"] not in RESTARTS and s["state_kept"] is not True:
            out.append(f"{tag}: state not kept (counter {s['counter_at_checkpoint']} -> "
                       f"{s['counter_after']})")
        if s["expected_strategy"] in RESTARTS and s["counter_after"] not in (0, None):
            out.append(f"{tag}: restart kept a counter of {s['counter_after']}?")
        if s.get("fences") is not None:
            want = next((x.fencing for x in SCENARIOS if x.key == s["scenario"]), False)
            if want and s.get("fence_state") != "COMPLETED":
                out.append(f"{tag}: fence driver did not confirm: "
                           + ("; ".join(f"{f['state']} ({f['result'].get('detail')})"
                                        for f in s["fences"]) or "no fence record"))
            late = (s.get("fence_done_ms") or 0) - (s["detect_ms"] + s["decide_ms"]
                                                    + (s.get("fence_wait_logged_ms") or 0))
            if want and s.get("fence_state") == "COMPLETED" and late > 0:
                out.append(f"{tag}: the fence was confirmed {late:.0f} ms after the lease wait "
                           f"had run out (fence {_f(s.get('fence_ms'))} ms from "
                           f"{_f(s.get('fence_started_ms'))} ms): it did not shorten the wait")
            if not want and s["fences"]:
                out.append(f"{tag}: fenced although no fence driver was configured: "
                           f"{s['fences']}")
        if s.get("heals_before_failure"):
            out.append(f"{tag}: recovered before the injected failure already: "
                       f"{s['heals_before_failure']}")
        if s["censored"]:
            out.append(f"{tag}: the client saw no reply after the outage while observed")
        if s["window_max_gap_ms"] > s["downtime_ms"] + 5:
            out.append(f"{tag}: a longer reply gap ({s['window_max_gap_ms']:.0f} ms) than the "
                       f"outage ({s['downtime_ms']:.0f} ms) outside it, around the failure")
    for o in result["outliers"]:
        w = f"; log warnings: {' | '.join(o['warnings'][:3])}" if o["warnings"] else ""
        out.append(f"outlier {o['scenario']} run {o['run']}: downtime {o['downtime_ms']:.0f} ms "
                   f"(median {o['scenario_median_ms']:.0f}); mostly {o['dominant_phase']} "
                   f"(+{o['excess_by_phase_ms'][o['dominant_phase']]:.0f} ms over its median)"
                   + w)
    return out


def _counts(xs: Iterator[str] | Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def _compact(samples: list[dict[str, Any]], outliers: list[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """Samples for the JSON: log excerpts only where something needs explaining."""
    keep = {(o["scenario"], o["run"]) for o in outliers}
    out = []
    for s in samples:
        s = dict(s)
        odd = (not s["ok"] or (s["scenario"], s["run"]) in keep
               or s.get("strategy") != s["expected_strategy"])
        if not odd:
            s.pop("excerpt", None)
        out.append(s)
    return out


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    global PIN_BRIDGE_MACS, TB_NAME, TB_SUBNET
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=None,
                    help=f"runs per scenario (default {DEFAULT_RUNS}; {QUICK_RUNS} with --quick)")
    ap.add_argument("--host-runs", type=int, default=None,
                    help="runs per host-crash scenario (default: --runs)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs per scenario")
    ap.add_argument("--scenarios", default=None,
                    help="comma-separated subset of: " + ", ".join(s.key for s in SCENARIOS))
    ap.add_argument("--no-pin-bridge-macs", action="store_true",
                    help="leave the testbed's bridges free to change MAC when a port goes "
                         "away (reproduces the testbed artifact described in the report)")
    ap.add_argument("--testbed-name", default=TB_NAME,
                    help=f"testbed name, 1-8 letters/digits (default {TB_NAME}): another one "
                         "lets two runs share a machine")
    ap.add_argument("--subnet", default=TB_SUBNET,
                    help=f"the testbed's subnet, a /16 (default {TB_SUBNET})")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,7}", a.testbed_name):
        ap.error(f"--testbed-name {a.testbed_name!r}: use 1-8 letters/digits")
    try:
        if ipaddress.ip_network(a.subnet).prefixlen > 16:
            ap.error(f"--subnet {a.subnet}: give a /16 or larger")
    except ValueError as exc:
        ap.error(f"--subnet {a.subnet}: {exc}")
    runs = a.runs if a.runs is not None else (QUICK_RUNS if a.quick else DEFAULT_RUNS)
    host_runs = a.host_runs if a.host_runs is not None else runs
    wanted = [k.strip() for k in a.scenarios.split(",")] if a.scenarios else \
        list(QUICK_SCENARIOS if a.quick else (s.key for s in SCENARIOS))
    unknown = set(wanted) - {s.key for s in SCENARIOS}
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}")
    if runs < 1 or host_runs < 0:
        ap.error("need --runs >= 1 and --host-runs >= 0")
    if os.geteuid() != 0:
        print("recovery: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    scns = [s for s in SCENARIOS if s.key in wanted]
    PIN_BRIDGE_MACS = not a.no_pin_bridge_macs
    TB_NAME, TB_SUBNET = a.testbed_name, a.subnet
    install_signal_handlers()

    result: dict[str, Any] = {
        "benchmark": "recovery",
        "machine": machine_description(),
        "config": {
            "runs": runs, "host_runs": host_runs, "quick": a.quick,
            "checkpoint_interval_s": CHECKPOINT_INTERVAL, "backups": 1,
            "probe_period_ms": PROBE_PERIOD * 1000, "warm_packets": WARM_PACKETS,
            "pre_window_s": PRE_WINDOW, "observe_after_s": OBSERVE_AFTER,
            "pin_bridge_macs": PIN_BRIDGE_MACS,
            "ha_probe": HA_PROBE,
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR),
                        "hosts": N_HOSTS},
            "scenarios": {s.key: {"label": s.label, "fault": s.fault, "recovery": s.recovery,
                                  "expected_strategy": s.expect, "fencing": s.fencing}
                          for s in scns},
        },
    }
    if any(s.supervisor for s in scns):
        result["supervisor_baseline"] = SUPERVISOR_NOTE
    samples: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        run_process_group([s for s in scns if s.group == "process"], runs, samples.append)
        with timed("host group"):
            run_host_group([s for s in scns if s.group == "host"], host_runs, samples.append)
    except (KeyboardInterrupt, BenchError) as exc:
        interrupted = exc
        print(f"recovery: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored():
            _down(_testbed())  # whatever an interrupt left behind
            with contextlib.suppress(OSError):
                STATE_DIR.rmdir()  # empty by now: each testbed removes its own directory

    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    result["complete"] = interrupted is None
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    result["summary"] = summarize(scns, samples)
    if not result["summary"]:
        print("recovery: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["targets"] = evaluate_targets(result["summary"], samples)
    result["outliers"] = find_outliers(samples)
    result["anomalies"] = anomalies(result, samples)
    result["samples"] = _compact(samples, result["outliers"])
    publish(result, "recovery", a.out, markdown=markdown, plot=plot,
            target_value=_target_value, doc_img=not a.no_doc_img)
    return 0 if interrupted is None else 1


if __name__ == "__main__":
    sys.exit(main())
