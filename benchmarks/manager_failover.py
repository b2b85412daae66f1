#!/usr/bin/env python3
"""The manager cluster: leader failover, and what etcd costs against SQLite.

One local etcd cluster (``--etcd-members``, default 3, on loopback, with the fast lease
timings the manager cluster needs: ``benchmarks/_etcd.py``) serves three parts, run in
this order in one run:

latency
    **State-store write latency, SQLite against etcd, interleaved.** The same sequence
    of record writes a manager makes for its VNFs (create a VNF record; then per round
    and VNF: read it, update it as ``store.update`` does (read + compare-and-set), put a
    checkpoint record, delete the oldest one beyond the retention) goes through a
    ``SqliteStore`` (WAL, ``synchronous=NORMAL``, as the manager opens it) and an
    ``EtcdStore`` whose leader ``Guard`` is set, as a leading manager's is (every write
    compares the leader key's revision and lease). Each op runs on both stores back to
    back, the order alternating. Measured per op: wall time and the calling thread's CPU
    time (what the manager's event loop pays). The SQLite file and the etcd data
    directories are on the same file system.

failover
    **Leader failover with real manager processes.** Three ``nfvha manager --store
    etcd://... --member-id mK --election-ttl 1`` processes on loopback, no agents, an
    empty store. Each member's ``GET /nfvha/v1/cluster`` is polled every 10 ms. Per
    repetition, after a random wait (a random phase of the leader's keepalive cycle):
    the leader is sent SIGKILL (series *kill*) or SIGSTOP (series *hang*: a hung
    leader); measured from the signal until a surviving member first answers
    ``leading: true`` and until a write (``POST /nfvha/v1/vnfds``, sent every 10 ms to
    the surviving members, following a 307 to the leader) is accepted. A killed member
    is started again; a stopped one is resumed (SIGCONT) after the takeover and
    watched: it must never say ``leading: true`` again and must follow the new leader.
    Over every answer of a series: never two members saying ``leading: true`` less
    than ``FRESH_S`` apart.

cpu
    **Manager CPU at N VNFs (default 100), SQLite against etcd, at the same time.**
    Two manager clusters run side by side: one manager on SQLite, and a leader with one
    follower on etcd (the follower's cost is reported too). Each has its own 5 hosts,
    played by fake agents in this process: the agents' HTTP API (a checkpoint, a push,
    a create answer at once with what a real agent returns), their status reports
    (when something changed, at most every 0.5 s, and at least every 5 s) and their
    lease guards' authenticated UDP heartbeats (20 a second per host, to every manager
    of the cluster). The VNFs are deployed through the manager's API like scale.py's
    (a flow monitor's descriptor, 1 backup, a UDP health probe every 0.2 s, a
    checkpoint every max(2, N / 2.5) s), paced so that their checkpoints are spread
    evenly, and their probes are answered by a responder in a network namespace of its
    own holding every VNF address. So each manager does all a manager does at N VNFs
    (its loop, probes, checkpoints and their records, replication, status reports,
    heartbeats), except waiting for real dumps; only the store differs. CPU is
    utime+stime of each process over the same window (% of one core); the etcd
    members' CPU is reported apart (with SQLite, the store's work is inside the
    manager).

Writes ``results/manager_failover.{json,md,png}`` and ``docs/img/manager_failover.png``.
Needs root (a network namespace for the probe responder) and etcd. Not a test. Usage::

    .venv/bin/python benchmarks/manager_failover.py [--quick] [--reps 20] [--vnfs 100]
        [--window 120] [--etcd-members 3] [--parts latency,failover,cpu] [--out DIR]
        [--no-doc-img]
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
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from nfvha.demo import python_vnf
from nfvha.ha.election import ElectionTimings
from nfvha.ha.liveness import decode, encode, host_key, liveness_key
from nfvha.store.base import StateStore
from nfvha.store.etcd import ETCD_MEMBER_FLAGS, EtcdStore, Guard, parse_store_url
from nfvha.store.sqlite import SqliteStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    REPO,
    RESULTS,
    BenchError,
    fmt_num,
    install_signal_handlers,
    machine_cpu,
    percentile,
    proc_cpu,
    proc_rss_mib,
    proc_wait,
    progress,
    publish,
    save_figure,
    shared_machine_note,
    signals_ignored,
    source_digest,
    testbed_machine,
    timed,
    wait_for,
)
from _etcd import EtcdCluster, die_with_parent, etcd_cluster, etcd_version

NAME = "nfvbmf"  # prefix of what this benchmark makes (network namespace, veth, dirs)
NETNS = f"{NAME}-vnfs"
VETH = f"{NAME}-v0"
VNF_SUBNET = "10.246"  # /16, apart from every testbed's and benchmark's range
ROOT_SIDE = f"{VNF_SUBNET}.255.254/16"
PARTS = ("latency", "failover", "cpu")
TOKEN = "bench-manager-failover-token"
FLOWMON = REPO / "examples" / "vnfs" / "flowmon.py"

# -- failover --------------------------------------------------------------------------------
ELECTION_TTL = 1  # s, the managers' --election-ttl (the testbed's)
ELECTION = ElectionTimings.from_ttl(ELECTION_TTL)  # what each manager derives from it
POLL_S = 0.01  # each member's GET /nfvha/v1/cluster
POLL_TIMEOUT_S = 0.25
WRITE_RETRY_S = 0.01
WRITE_TIMEOUT_S = 0.5  # per attempt
FRESH_S = 0.03  # two `leading: true` answers closer than this count as at once
PHASE_S = (0.3, 1.3)  # random wait before each fault: a random keepalive phase
RESUME_WATCH_S = 1.0  # a resumed leader is watched this long at least
MEMBERS = ("m1", "m2", "m3")

# -- cpu -------------------------------------------------------------------------------------
HOSTS_PER_CLUSTER = 5
PROBE_PORT = 5001
PROBE_INTERVAL = 0.2
HA_PROBE = {"type": "udp", "port": PROBE_PORT, "send": "PING", "expect": "PONG",
            "interval": PROBE_INTERVAL, "timeout": 0.1, "failure_threshold": 3}  # scale.py's
VNF_RESOURCES = {"memory": "64Mi", "cpu": 0.25}
AGGREGATE_RATE = 2.5  # checkpoints/s asked of each cluster (scale.py's policy)
MIN_INTERVAL = 2.0
GUARD_INTERVAL = 0.05  # the guards' heartbeat interval (daemon default)
STATUS_INTERVAL = 0.5  # a changed status is reported this soon (agent default)
FULL_EVERY = 5.0  # and an unchanged one this often
SAMPLE_S = 1.0

# -- latency ---------------------------------------------------------------------------------
RETAIN = 3  # checkpoints kept per VNF, as the descriptor's default retention
LATENCY_OPS = ("create", "read", "update", "put", "delete")


@dataclass(frozen=True)
class Plan:
    quick: bool
    parts: tuple[str, ...]
    reps: int
    vnfs: int
    window_s: float
    warmup_s: float
    latency_vnfs: int
    latency_rounds: int
    etcd_members: int

    @property
    def interval(self) -> float:
        """The checkpoint interval at ``vnfs`` VNFs: scale.py's policy (2.5 per second)."""
        return max(MIN_INTERVAL, self.vnfs / AGGREGATE_RATE)


def make_plan(a: argparse.Namespace) -> Plan:
    q = bool(a.quick)
    return Plan(quick=q, parts=tuple(a.parts), reps=a.reps or (5 if q else 20),
                vnfs=a.vnfs or (20 if q else 100), window_s=a.window or (10.0 if q else 120.0),
                warmup_s=4.0 if q else 20.0, latency_vnfs=20 if q else 100,
                latency_rounds=5 if q else 10, etcd_members=a.etcd_members)


# -- processes -------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """The daemons import nfvha from this checkout, whatever the caller's path says: the
    source digest must describe what ran."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"),
                                         *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class Daemon:
    """One process this benchmark started (a manager, the probe responder)."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, *, pipes: bool = False) -> None:
        """Start it, its output appended to its log (``pipes``: stdin and stdout are
        pipes to this process, stderr goes to the log)."""
        with self.log.open("ab") as out:
            out.write(f"==== start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE if pipes else out,
                stderr=out if pipes else subprocess.STDOUT,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL, env=_env(),
                preexec_fn=die_with_parent)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None:
            self.send(signal.SIGCONT)  # a stopped process cannot die of SIGTERM
            self.send(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (a clean stop: a leader resigns), SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def warnings(self, since: int = 0, keep: int = 20) -> list[str]:
        """The last WARNING/ERROR lines of its log after byte ``since``."""
        try:
            with self.log.open("rb") as f:
                f.seek(since)
                text = f.read(20_000_000).decode(errors="replace")
        except OSError:
            return []
        lines = [ln[-300:] for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln]
        return lines[-keep:]

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 whose UDP twin is free too (a manager's liveness
    socket takes the same number)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise BenchError("no free port pair on 127.0.0.1")


def manager_daemon(run_dir: Path, name: str, port: int, *, store: str | None = None,
                   member: str | None = None) -> Daemon:
    """``nfvha manager`` on 127.0.0.1:PORT (HTTP and UDP liveness), on SQLite (``store``
    None) or as a member of a cluster on etcd."""
    d = run_dir / name
    d.mkdir(parents=True, exist_ok=True)
    token = run_dir / "token"
    if not token.exists():
        token.write_text(TOKEN)
    argv = [sys.executable, "-m", "nfvha", "--log-level", "info", "manager",
            "--listen", f"127.0.0.1:{port}", "--advertise-url", f"http://127.0.0.1:{port}",
            "--db", str(d / "manager.db"), "--token-file", str(token),
            "--secret-key-file", str(run_dir / "manager.key")]
    if store is not None:
        argv += ["--store", store]
    if member is not None:
        argv += ["--member-id", member, "--election-ttl", str(ELECTION_TTL)]
    return Daemon(name, argv, run_dir / f"{name}.log")


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def small_vnfd(vnfd_id: str) -> dict[str, Any]:
    """A valid descriptor (tests/test_manager_cluster.py's), as the failover's write."""
    return {"id": vnfd_id, "command": ["sleep", "1000"],
            "network": {"address": "10.9.1.10/16"}, "ha": {"backups": 0}}


# == part 1: failover =========================================================================


@dataclass(frozen=True)
class Sample:
    """One answer (or its absence) of a member's ``GET /nfvha/v1/cluster``."""

    member: str
    t_send: float  # monotonic
    t_recv: float
    ok: bool
    leading: bool = False
    leader: str | None = None
    term: int | None = None


@dataclass
class Member:
    id: str
    port: int
    daemon: Daemon

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Poller:
    """Each member's cluster view every POLL_S, in a loop per member (a stopped member's
    timeouts delay no other); every answer is kept."""

    def __init__(self, client: httpx.AsyncClient, members: Sequence[Member]) -> None:
        self.client = client
        self.members = members
        self.samples: list[Sample] = []
        self.latest: dict[str, Sample] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll(m)) for m in self.members]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _poll(self, m: Member) -> None:
        while True:
            t0 = time.monotonic()
            try:
                r = await self.client.get(f"{m.url}/nfvha/v1/cluster", timeout=POLL_TIMEOUT_S)
                view = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                view = None
            t1 = time.monotonic()
            if isinstance(view, dict):
                leader = view.get("leader") or {}
                s = Sample(m.id, t0, t1, True, view.get("leading") is True,
                           leader.get("member"), leader.get("term"))
            else:
                s = Sample(m.id, t0, t1, False)
            self.samples.append(s)
            self.latest[m.id] = s
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - t0)))

    def view(self, fresh: float = 0.5) -> dict[str, Sample]:
        """Each member's latest answer, if it came within ``fresh`` s."""
        now = time.monotonic()
        return {k: s for k, s in self.latest.items() if s.ok and now - s.t_recv < fresh}


class KeyWatch:
    """etcd's own account of the leader key, through a watch: when each holder's key went
    (its lease expired, or was revoked) and when the next one was created."""

    def __init__(self, client: httpx.AsyncClient, etcd_url: str, key: str) -> None:
        self.client, self.url, self.key = client, etcd_url, key
        self.deleted: list[float] = []  # monotonic arrival of each DELETE event
        self.created: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import base64

        body = {"create_request": {"key": base64.b64encode(self.key.encode()).decode()}}
        try:
            async with self.client.stream("POST", f"{self.url}/v3/watch", json=body,
                                          timeout=httpx.Timeout(None, connect=3.0)) as r:
                async for line in r.aiter_lines():
                    now = time.monotonic()
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if "result" not in msg:
                        self.error = f"watch of {self.key}: {line[:300]}"
                        continue
                    events = msg["result"].get("events") or []
                    for e in events:
                        (self.deleted if e.get("type") == "DELETE" else self.created).append(now)
        except httpx.HTTPError as exc:
            self.error = f"watch of {self.key} ended: {exc!r}"

    def first_after(self, which: list[float], t: float) -> float | None:
        return next((x for x in which if x > t), None)


def overlaps(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Answers of two members both saying ``leading: true`` less than FRESH_S apart."""
    last: dict[str, Sample] = {}
    out = []
    for s in sorted(samples, key=lambda s: s.t_recv):
        if s.ok and s.leading:
            for o in last.values():
                if o.member != s.member and o.leading and s.t_recv - o.t_recv < FRESH_S:
                    out.append({"a": o.member, "b": s.member, "gap_s": s.t_recv - o.t_recv,
                                "terms": [o.term, s.term]})
        if s.ok:
            last[s.member] = s
    return out


async def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        res = pred()
        if res:
            return res
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)


def _settled(poller: Poller, members: Sequence[Member]) -> Member | None:
    """The leader, once every member answers, exactly one leads and the others follow it."""
    v = poller.view()
    if len(v) < len(members):
        return None
    leading = [k for k, s in v.items() if s.leading]
    if len(leading) != 1 or any(s.leader != leading[0] for s in v.values()):
        return None
    return next(m for m in members if m.id == leading[0])


async def _write_until_accepted(client: httpx.AsyncClient, survivors: Sequence[Member],
                                t0: float, vnfd_id: str, deadline_s: float) -> dict[str, Any]:
    """POST the descriptor to the survivors in turn every WRITE_RETRY_S until one accepts
    it (a 307 to a survivor is followed); when, and which member took it."""
    answers: Counter[str] = Counter()
    origins = {m.url: m for m in survivors}
    for i in itertools.count():
        if time.monotonic() - t0 > deadline_s:
            raise BenchError(f"no write accepted within {deadline_s:g}s (answers: "
                             f"{dict(answers)})")
        url = survivors[i % len(survivors)].url
        for _hop in range(len(survivors) + 1):
            try:
                r = await client.post(f"{url}/nfvha/v1/vnfds", json=small_vnfd(vnfd_id),
                                      timeout=WRITE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                answers[type(exc).__name__] += 1
                break
            answers[str(r.status_code)] += 1
            if r.status_code in (201, 409):  # 409: an earlier attempt's answer was lost
                return {"write_s": time.monotonic() - t0, "accepted_by": origins[url].id,
                        "attempts": i + 1, "answers": dict(answers)}
            loc = httpx.URL(r.headers.get("location", ""))
            origin = f"{loc.scheme}://{loc.host}:{loc.port}" if loc.host else ""
            if r.status_code in (307, 308) and origin in origins:
                url = origin
                continue
            break
        await asyncio.sleep(WRITE_RETRY_S)
    raise AssertionError("unreachable")


async def _one_rep(client: httpx.AsyncClient, poller: Poller, watch: KeyWatch,
                   members: Sequence[Member], series: str, rep: int) -> dict[str, Any]:
    old = await until(lambda: _settled(poller, members), 30, "one leader, followed by all")
    await asyncio.sleep(random.uniform(*PHASE_S))
    old = _settled(poller, members) or old
    survivors = [m for m in members if m is not old]
    first = len(poller.samples)
    old_term = poller.latest[old.id].term
    sig = signal.SIGKILL if series == "kill" else signal.SIGSTOP
    t0 = time.monotonic()
    assert old.daemon.pid is not None
    os.kill(old.daemon.pid, sig)
    writer = asyncio.create_task(_write_until_accepted(client, survivors, t0,
                                                       f"fo-{series}-{rep:03d}", 10 * ELECTION_TTL))
    row: dict[str, Any] = {"series": series, "rep": rep, "old_leader": old.id,
                           "old_term": old_term, "ok": False}
    try:
        new_sample: Sample = await until(lambda: next(
            (s for s in poller.samples[first:] if s.member != old.id and s.ok and s.leading
             and s.t_recv > t0), None), 10 * ELECTION_TTL, "a surviving member leading")
        row.update(leading_s=new_sample.t_recv - t0, new_leader=new_sample.member,
                   new_term=new_sample.term)
        row.update(await writer)
    finally:
        writer.cancel()
    gone = watch.first_after(watch.deleted, t0)
    made = watch.first_after(watch.created, t0)
    # etcd's share (the lease running out, seen as the key's deletion) and the managers'
    # (a follower noticing and winning the campaign), as the watch saw them.
    row["key_deleted_s"] = None if gone is None else gone - t0
    row["key_created_s"] = None if made is None else made - t0
    before_old = [s for s in poller.samples[:first] if s.member == old.id and s.ok]
    row["old_last_leading_before_fault_s"] = (before_old[-1].t_recv - t0) if before_old \
        else None
    if series == "hang":
        t_cont = time.monotonic()
        old.daemon.send(signal.SIGCONT)
        await asyncio.sleep(RESUME_WATCH_S)
        await until(lambda: (s := poller.view().get(old.id)) is not None and not s.leading
                    and s.leader == row["new_leader"] and s.t_send > t_cont, 10,
                    f"the resumed {old.id} following {row['new_leader']}")
        after = [s for s in poller.samples if s.member == old.id and s.t_recv > t_cont]
        answered = [s for s in after if s.ok]
        row.update(
            resumed_first_answer_s=(answered[0].t_recv - t_cont) if answered else None,
            resumed_leading_answers=sum(1 for s in answered if s.leading),
            resumed_answers=len(answered),
            resumed_following_s=next((s.t_recv - t_cont for s in answered
                                      if s.leader == row["new_leader"] and not s.leading),
                                     None))
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if old.daemon.proc is not None:
                old.daemon.proc.wait(5)
        t_start = time.monotonic()
        old.daemon.start()
        await until(lambda: (s := poller.view().get(old.id)) is not None and not s.leading
                    and s.leader == row["new_leader"] and s.t_send > t_start, 60,
                    f"the restarted {old.id} following {row['new_leader']}")
        row["restart_to_following_s"] = time.monotonic() - t_start
    mine = poller.samples[first:]
    row["samples"] = len(mine)
    row["overlaps"] = overlaps(poller.samples[max(0, first - 20):])
    row["ok"] = row["accepted_by"] == row["new_leader"] and not row["overlaps"]
    if row["accepted_by"] != row["new_leader"]:
        row["error"] = (f"the write was accepted by {row['accepted_by']}, the poller saw "
                        f"{row['new_leader']} lead first")
    return row


async def _repair(members: Sequence[Member]) -> None:
    """After a failed repetition: every member running again."""
    for m in members:
        m.daemon.send(signal.SIGCONT)
        if not m.daemon.alive:
            m.daemon.start()
    await asyncio.sleep(2.0)


async def _failover(plan: Plan, etcd: EtcdCluster, run_dir: Path) -> dict[str, Any]:
    store = etcd.store_url(f"/nfvha-bench/failover-{uuid.uuid4().hex[:8]}")
    ports = {mid: free_port() for mid in MEMBERS}
    members = [Member(mid, port, manager_daemon(run_dir, f"failover-{mid}", port, store=store,
                                                member=mid)) for mid, port in ports.items()]
    out: dict[str, Any] = {"members": [m.id for m in members], "store": store, "series": {}}
    async with httpx.AsyncClient(headers=_auth(), trust_env=False,
                                 limits=httpx.Limits(max_connections=50)) as client:
        for m in members:
            m.daemon.start()
        poller = Poller(client, members)
        poller.start()
        _, prefix = parse_store_url(store)
        # Its own client: etcd would take the managers' bearer token for one of its own.
        watcher = httpx.AsyncClient(trust_env=False)
        watch = KeyWatch(watcher, etcd.url, f"{prefix}/leader")
        watch.start()
        try:
            t_up = time.monotonic()
            await until(lambda: _settled(poller, members), 60, "three members, one leading")
            out["cluster_up_s"] = time.monotonic() - t_up
            for series in ("kill", "hang"):
                rows: list[dict[str, Any]] = []
                failures = 0
                for rep in range(plan.reps):
                    try:
                        row = await _one_rep(client, poller, watch, members, series, rep)
                    except BenchError as exc:
                        row = {"series": series, "rep": rep, "ok": False, "error": str(exc)}
                        failures += 1
                        await _repair(members)
                    rows.append(row)
                    progress(f"  {series} {rep + 1}/{plan.reps}: " + (
                        f"{row['old_leader']} -> {row['new_leader']}: leading after "
                        f"{row['leading_s'] * 1000:.0f} ms, write accepted after "
                        f"{row['write_s'] * 1000:.0f} ms" if "write_s" in row
                        else f"FAILED {row.get('error')}"))
                    if failures >= 3:
                        raise BenchError(f"{series}: three repetitions failed; last: "
                                         f"{row.get('error')}")
                out["series"][series] = rows
        finally:
            await poller.stop()
            await watch.stop()
            await watcher.aclose()
            out["watch_error"] = watch.error
            out["samples_total"] = len(poller.samples)
            out["samples_answered"] = sum(1 for s in poller.samples if s.ok)
            out["overlaps_total"] = len(overlaps(poller.samples))
            out["warnings"] = {m.id: m.daemon.warnings() for m in members}
            for m in members:
                m.daemon.stop()
    return out


def failover_part(plan: Plan, etcd: EtcdCluster, run_dir: Path) -> dict[str, Any]:
    return asyncio.run(_failover(plan, etcd, run_dir))


def describe(xs: Sequence[float | None]) -> dict[str, Any]:
    vals = [float(x) for x in xs if x is not None and not math.isnan(x)]
    return {"n": len(vals), "min": min(vals, default=math.nan),
            "median": percentile(vals, 50), "p90": percentile(vals, 90),
            "p99": percentile(vals, 99), "max": max(vals, default=math.nan),
            "mean": sum(vals) / len(vals) if vals else math.nan}


def summarize_failover(part: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for series, rows in part["series"].items():
        ok = [r for r in rows if "write_s" in r]
        out[series] = {
            "reps": len(rows), "measured": len(ok), "ok": sum(1 for r in rows if r["ok"]),
            "leading_s": describe([r["leading_s"] for r in ok]),
            "write_s": describe([r["write_s"] for r in ok]),
            "key_deleted_s": describe([r.get("key_deleted_s") for r in ok]),
            "deleted_to_leading_s": describe(
                [r["leading_s"] - r["key_deleted_s"] for r in ok
                 if r.get("key_deleted_s") is not None]),
            "overlaps": sum(len(r.get("overlaps", [])) for r in rows),
            "errors": [r["error"] for r in rows if r.get("error")][:10],
        }
        if series == "hang":
            out[series]["resumed_leading_answers"] = sum(
                r.get("resumed_leading_answers", 0) for r in ok)
            out[series]["resumed_following_s"] = describe(
                [r.get("resumed_following_s") for r in ok])
        else:
            out[series]["restart_to_following_s"] = describe(
                [r.get("restart_to_following_s") for r in ok])
    out["samples_total"] = part["samples_total"]
    out["samples_answered"] = part["samples_answered"]
    out["overlaps_total"] = part["overlaps_total"]
    return out


# == part 2: store write latency ==============================================================


def vnf_record(i: int, generation: int = 1) -> dict[str, Any]:
    """A VNF record shaped as the manager stores it (scale.py's descriptor inside)."""
    iid = f"lat{i:03d}"
    vnfd = {"id": iid, **python_vnf(FLOWMON),
            "network": {"address": f"{VNF_SUBNET}.9.{i % 250 + 1}/16"},
            "resources": VNF_RESOURCES,
            "ha": {"checkpoint_interval": 40.0, "backups": 1, "probe": HA_PROBE}}
    return {"id": iid, "vnfdId": iid, "vnfdVersion": "1.0", "vnfInstanceName": iid,
            "vnfd": vnfd, "haState": "ACTIVE", "instantiationState": "INSTANTIATED",
            "host": f"h{i % 5 + 1}", "backups": [f"h{(i + 1) % 5 + 1}"],
            "generation": generation, "pid": 40000 + i,
            "placementReason": "least loaded host with enough memory (3 VNFs, 7.8 GiB free)",
            "createdAt": "2026-01-01T00:00:00Z", "metadata": {}}


def checkpoint_record(i: int, seq: int) -> dict[str, Any]:
    """A checkpoint record as ``Checkpointer.record`` writes it."""
    iid = f"lat{i:03d}"
    now = time.time()
    return {"id": f"{iid}/{seq}", "vnfInstanceId": iid, "seq": seq, "createdAt": now,
            "cutAt": now - 0.05, "host": f"h{i % 5 + 1}",
            "replicas": [f"h{i % 5 + 1}", f"h{(i + 1) % 5 + 1}"], "bytes": 2_400_000,
            "criuStats": {"frozen_time_us": 41000, "memdump_time_us": 9000,
                          "memwrite_time_us": 12000, "pages_scanned": 16000,
                          "pages_written": 600, "wall_seconds": 0.12},
            "generation": 1, "logPosition": None, "holdMs": None, "durationMs": 180.0}


def latency_ops(vnfs: int, rounds: int) -> list[tuple[str, int, int]]:
    """The sequence of (op, VNF, round) a manager's writes for ``vnfs`` VNFs over
    ``rounds`` checkpoints make: each VNF created once, then per round read, updated,
    checkpointed and its oldest checkpoint beyond the retention deleted."""
    ops = [("create", i, 0) for i in range(vnfs)]
    for r in range(1, rounds + 1):
        for i in range(vnfs):
            ops += [("read", i, r), ("update", i, r), ("put", i, r)]
            if r > RETAIN:
                ops.append(("delete", i, r))
    return ops


def run_op(s: StateStore, kind: str, i: int, r: int) -> None:
    """One op of `latency_ops` on ``s``, as the manager's code makes it."""
    iid = f"lat{i:03d}"
    if kind == "create":
        s.create("vnf", iid, vnf_record(i))
    elif kind == "read":
        s.find("vnf", iid)
    elif kind == "update":  # the manager's _update_vnf: store.update (get + cas)
        s.update("vnf", iid, lambda d: {**d, "generation": r, "pid": 40000 + r})
    elif kind == "put":  # Checkpointer.record
        s.put("checkpoint", f"{iid}/{r}", checkpoint_record(i, r))
    elif kind == "delete":  # Checkpointer._prune
        s.delete("checkpoint", f"{iid}/{r - RETAIN}")
    else:
        raise AssertionError(kind)


def _leader_guard(store: EtcdStore) -> tuple[Guard, int]:
    """A leader key bound to a lease, as `LeaderElection` makes one, and its Guard."""
    import base64

    def b64(x: str) -> str:
        return base64.b64encode(x.encode()).decode()

    key = f"{store.prefix}/leader"
    lease = int(store.client.call("/lease/grant", {"TTL": 900}, idempotent=False)["ID"])
    value = json.dumps({"member": "bench", "url": "", "since": time.time()})
    answer = store.client.call("/kv/txn", {
        "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL",
                     "create_revision": "0"}],
        "success": [{"request_put": {"key": b64(key), "value": b64(value),
                                     "lease": str(lease)}}, {"request_range": {"key": b64(key)}}],
        "failure": []}, idempotent=False)
    if not answer.get("succeeded"):
        raise BenchError(f"could not create the leader key {key}")
    kv = answer["responses"][1]["response_range"]["kvs"][0]
    return Guard(key, int(kv["create_revision"]), lease), lease


def latency_part(plan: Plan, etcd: EtcdCluster, run_dir: Path) -> dict[str, Any]:
    (run_dir / "latency").mkdir(exist_ok=True)
    sq = SqliteStore(run_dir / "latency" / "state.db")
    et = EtcdStore(etcd.urls, prefix=f"/nfvha-bench/latency-{uuid.uuid4().hex[:8]}")
    guard, lease = _leader_guard(et)
    et.guard, et.writer = guard, "bench"
    stores: dict[str, StateStore] = {"sqlite": sq, "etcd": et}
    wall: dict[str, dict[str, list[float]]] = {n: {o: [] for o in LATENCY_OPS} for n in stores}
    cpu: dict[str, dict[str, list[float]]] = {n: {o: [] for o in LATENCY_OPS} for n in stores}
    ops = latency_ops(plan.latency_vnfs, plan.latency_rounds)
    try:
        for j, (kind, i, r) in enumerate(ops):
            for name in (("sqlite", "etcd") if j % 2 == 0 else ("etcd", "sqlite")):
                c0, t0 = time.thread_time(), time.perf_counter()
                run_op(stores[name], kind, i, r)
                t1, c1 = time.perf_counter(), time.thread_time()
                wall[name][kind].append((t1 - t0) * 1000)
                cpu[name][kind].append((c1 - c0) * 1000)
    finally:
        with contextlib.suppress(Exception):
            et.client.call("/lease/revoke", {"ID": str(lease)}, idempotent=False)
        sq.close()
        et.close()
    return {"ops_per_store": len(ops), "vnfs": plan.latency_vnfs,
            "rounds": plan.latency_rounds, "retain": RETAIN,
            "record_bytes": {"vnf": len(json.dumps(vnf_record(0))),
                             "checkpoint": len(json.dumps(checkpoint_record(0, 1)))},
            "wall_ms": {n: {o: [round(x, 4) for x in v] for o, v in d.items()}
                        for n, d in wall.items()},
            "cpu_ms": {n: {o: [round(x, 4) for x in v] for o, v in d.items()}
                       for n, d in cpu.items()}}


def summarize_latency(part: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in LATENCY_OPS:
        row: dict[str, Any] = {}
        for store in ("sqlite", "etcd"):
            w = part["wall_ms"][store][kind]
            c = part["cpu_ms"][store][kind]
            row[store] = {"n": len(w), "p50": percentile(w, 50), "p90": percentile(w, 90),
                          "p99": percentile(w, 99), "max": max(w, default=math.nan),
                          "mean": sum(w) / len(w) if w else math.nan,
                          "cpu_ms_mean": sum(c) / len(c) if c else math.nan}
        s, e = row["sqlite"], row["etcd"]
        row["ratio_p50"] = e["p50"] / s["p50"] if s["p50"] else math.nan
        row["ratio_p99"] = e["p99"] / s["p99"] if s["p99"] else math.nan
        row["cpu_ratio"] = (e["cpu_ms_mean"] / s["cpu_ms_mean"] if s["cpu_ms_mean"]
                            else math.nan)
        out[kind] = row
    return out


# == part 3: manager CPU at N VNFs ============================================================


def _ip(*args: str, input_text: str | None = None, check: bool = True) -> str:
    try:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                           input=input_text)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"ip {' '.join(args)}: {exc}") from exc
    if check and p.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def vnf_addresses(cluster: int, n: int) -> list[str]:
    return [f"{VNF_SUBNET}.{cluster}.{i + 1}" for i in range(n)]


def netns_down() -> None:
    _ip("link", "del", VETH, check=False)
    _ip("netns", "del", NETNS, check=False)


@contextlib.contextmanager
def vnf_network(addresses: Sequence[str]) -> Iterator[None]:
    """A network namespace holding every VNF address, reached from here over a veth."""
    netns_down()  # leftovers of an interrupted run
    try:
        _ip("netns", "add", NETNS)
        _ip("link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _ip("addr", "add", ROOT_SIDE, "dev", VETH)
        _ip("link", "set", VETH, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")
        _ip("-n", NETNS, "-batch", "-", input_text="".join(
            f"addr add {a}/16 dev eth0\n" for a in addresses))
        _ip("-n", NETNS, "link", "set", "eth0", "up")
        yield
    finally:
        netns_down()


RESPONDER = r"""
import json, select, socket, sys
port, addrs = int(sys.argv[1]), sys.argv[2:]
socks, counts = {}, dict.fromkeys(addrs, 0)
ep = select.epoll()
for a in addrs:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, port))
    s.setblocking(False)
    socks[s.fileno()] = (s, a)
    ep.register(s.fileno(), select.EPOLLIN)
ep.register(0, select.EPOLLIN)
print("ready", flush=True)
while True:
    for fd, _ in ep.poll():
        if fd == 0:
            if not sys.stdin.readline():
                sys.exit(0)
            print(json.dumps(counts), flush=True)
            continue
        s, a = socks[fd]
        while True:
            try:
                data, peer = s.recvfrom(512)
            except BlockingIOError:
                break
            if data == b"PING":
                counts[a] += 1
                s.sendto(b"PONG", peer)
"""


class Responder:
    """Answers every VNF's UDP health probe (PING -> PONG) from inside the namespace,
    from the VNF's own address; counts the probes per address."""

    def __init__(self, run_dir: Path, addresses: Sequence[str]) -> None:
        self.daemon = Daemon("responder", ["ip", "netns", "exec", NETNS, sys.executable, "-c",
                                           RESPONDER, str(PROBE_PORT), *addresses],
                             run_dir / "responder.log")

    def start(self) -> None:
        self.daemon.start(pipes=True)
        assert self.daemon.proc is not None and self.daemon.proc.stdout is not None
        if self.daemon.proc.stdout.readline().strip() != b"ready":
            raise BenchError(f"probe responder did not start (see {self.daemon.log})")

    def counts(self) -> dict[str, int]:
        p = self.daemon.proc
        assert p is not None and p.stdin is not None and p.stdout is not None
        p.stdin.write(b"dump\n")
        p.stdin.flush()
        got: dict[str, int] = json.loads(p.stdout.readline())
        return got

    def stop(self) -> None:
        p = self.daemon.proc
        if p is not None and p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()
        self.daemon.stop(2)


class FakeHost:
    """A host of a manager cluster without a real agent: its API answers at once with
    what an agent answers, and its status reports and guard heartbeats go out at the
    daemons' rates (driven by `Agents`)."""

    def __init__(self, host_id: str, cluster: ManagerCluster, secret: bytes) -> None:
        self.id = host_id
        self.cluster = cluster
        self.lock = threading.Lock()
        self.instances: dict[str, dict[str, Any]] = {}
        self.seqs: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.changed = True
        self.need_full = True
        self.last_report = -1e9
        self.started_at = time.time()
        self.agent_pid = 100000 + random.randrange(100000)
        self.key = host_key(secret, host_id)
        self.incarnation = time.time()
        self.hb_seq = 0
        self.lease = 0.25
        self.pv: Any = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.server = _QuietServer(("127.0.0.1", 0), _AgentHandler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"agent-{host_id}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.sock.close()

    # -- the agent's API --

    def _view(self, iid: str) -> dict[str, Any]:
        return dict(self.instances[iid])

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("?")[0].split("/") if p]
        self.counts["api"] += 1
        with self.lock:
            if parts == ["v1", "instances"] and method == "POST":
                d = body["descriptor"]
                iid = body["instance_id"]
                self.instances[iid] = {"id": iid, "state": "RUNNING",
                                       "pid": 20000 + len(self.instances), "vnfd_id": d["id"],
                                       "address": d["network"]["address"],
                                       "started_at": time.time()}
                self.changed = True
                return 201, self._view(iid)
            if parts[:2] == ["v1", "instances"] and len(parts) >= 3:
                iid = parts[2]
                if len(parts) == 3:
                    if method == "DELETE":
                        self.instances.pop(iid, None)
                        self.changed = True
                        return 204, None
                    return (200, self._view(iid)) if iid in self.instances else \
                        (404, {"type": "https://nfvha.dev/problems/instance-not-found",
                               "title": "not found", "status": 404,
                               "detail": f"no instance {iid}"})
                action = parts[3]
                if action == "checkpoints" and method == "POST":
                    self.counts["checkpoint"] += 1
                    seq = self.seqs[iid] = self.seqs.get(iid, 0) + 1
                    now = time.time()
                    meta = {"instance_id": iid, "vnf_name": iid, "seq": seq,
                            "created_at": now, "cut_at": now - 0.05, "host_id": self.id,
                            "files": {"pages-1.img": {"size": 2_400_000, "sha256": "0" * 64}},
                            "total_bytes": 2_400_000,
                            "criu_stats": {"frozen_time_us": 41000, "wall_seconds": 0.12}}
                    if iid in self.instances:
                        self.instances[iid]["last_checkpoint"] = {
                            "seq": seq, "created_at": now, "cut_at": now - 0.05,
                            "total_bytes": 2_400_000}
                        self.changed = True
                    return 201, meta
                if action == "checkpoints":
                    return 200, []
                if action in ("restore", "standby", "stop", "inject"):
                    return 200, {"id": iid, "state": "RUNNING", "pid": 30000}
                if action == "exec-probe":
                    return 200, {"ok": True}
            if parts == ["v1", "checkpoints"]:
                return 200, []
            if parts[:2] == ["v1", "checkpoints"] and parts[-1] == "push":
                self.counts["push"] += 1
                return 200, {"instance_id": parts[2], "seq": int(parts[3]),
                             "bytes": 2_400_000, "seconds": 0.05, "peer": body["peer_url"]}
        return 404, {"type": "about:blank", "title": "not found", "status": 404,
                     "detail": f"{method} {path}: not served by the fake agent"}

    # -- what it sends --

    def status(self) -> dict[str, Any]:
        with self.lock:
            instances = [{**v, "usage": {"memory_bytes": 30_000_000, "cpu_seconds": 1.0,
                                         "pids": 1}} for v in self.instances.values()]
            self.changed = False
        return {"host_id": self.id, "url": self.url, "started_at": self.started_at,
                "time": time.time(), "lease": self.lease, "agent_pid": self.agent_pid,
                "instances": instances,
                "resources": {"load1": os.getloadavg()[0], "mem_available_bytes": 8 << 30,
                              "cpus": 2, "checkpoint_bytes": 2_400_000 * len(instances)}}

    def heartbeat(self, peers: Sequence[str]) -> bytes:
        """A lease guard's heartbeat (`nfvha.vim.guard`'s fields)."""
        self.hb_seq += 1
        return encode(self.key, {
            "k": "hb", "h": self.id, "i": self.incarnation, "s": self.hb_seq,
            "t": time.time(), "l": self.lease, "a": 2.9, "g": 3.0, "ap": self.agent_pid,
            "f": 0, "fr": None, "fa": None, "pv": self.pv, "w": 0,
            "p": {p: 40 for p in peers if p != self.id}})

    def read_answers(self) -> None:
        while True:
            try:
                data = self.sock.recv(8192)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            msg = decode(self.key, data)
            if msg is None or msg.get("k") != "hb-ack":
                continue
            self.counts["hb-ack"] += 1
            if "pv" in msg:
                self.pv = msg["pv"]
            if isinstance(msg.get("l"), int | float):
                self.lease = float(msg["l"])
            if msg.get("nf"):
                self.need_full = True


class _QuietServer(ThreadingHTTPServer):
    """A manager that gives up on a slow answer (its timeout) resets the connection:
    not an error of the stand-in agent's, and no traceback on the run's output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _AgentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fake: FakeHost = self.server.fake  # type: ignore[attr-defined]
        try:
            status, answer = fake.handle(self.command, self.path, body)
        except Exception as exc:  # a bug here must show, not hang the manager's call
            status, answer = 500, {"type": "about:blank", "title": "fake agent error",
                                   "status": 500, "detail": repr(exc)}
        out = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        if answer is not None:
            self.send_header("content-type", "application/json" if status < 300
                             else "application/problem+json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _serve


@dataclass
class ManagerCluster:
    """The managers of one configuration (``sqlite``: one; ``etcd``: a leader and a
    follower), their fake hosts and VNFs."""

    name: str
    subnet_index: int
    managers: list[Daemon]
    ports: list[int]
    hosts: list[FakeHost] = field(default_factory=list)
    vnfs: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        """The leader's URL (the first manager is started first and waited for)."""
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def liveness(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]


class Agents:
    """Drives every fake host: the guards' heartbeats every GUARD_INTERVAL, the status
    reports when due. Two threads; the HTTP servers have their own."""

    def __init__(self, clusters: Sequence[ManagerCluster]) -> None:
        self.clusters = clusters
        self.stop = threading.Event()
        self.http = httpx.Client(headers=_auth(), trust_env=False, timeout=2.0)
        self.errors: Counter[str] = Counter()
        self._threads = [threading.Thread(target=self._guards, daemon=True, name="guards"),
                         threading.Thread(target=self._reports, daemon=True, name="reports")]

    def start(self) -> None:
        for c in self.clusters:
            for h in c.hosts:
                h.thread.start()
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(5)
        for c in self.clusters:
            for h in c.hosts:
                h.close()
        self.http.close()

    def report(self, c: ManagerCluster, h: FakeHost) -> None:
        url = f"{c.api}/nfvha/v1/hosts/{h.id}/heartbeat"
        try:
            r = self.http.post(url, json=h.status())
            if r.status_code in (307, 308):
                r = self.http.post(r.headers["location"], json=h.status())
            h.counts["report"] += 1
            if r.status_code >= 300:
                self.errors[f"report {r.status_code}"] += 1
            else:
                h.need_full = bool(r.json().get("need_full"))
        except (httpx.HTTPError, ValueError) as exc:
            self.errors[f"report {type(exc).__name__}"] += 1
        h.last_report = time.monotonic()

    def _reports(self) -> None:
        while not self.stop.wait(0.05):
            now = time.monotonic()
            for c in self.clusters:
                for h in c.hosts:
                    since = now - h.last_report
                    if since >= FULL_EVERY or h.need_full or (h.changed and
                                                              since >= STATUS_INTERVAL):
                        self.report(c, h)

    def _guards(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            for c in self.clusters:
                ids = [h.id for h in c.hosts]
                for h in c.hosts:
                    h.read_answers()
                    if h.last_report < 0:
                        continue  # registered by its agent's first report
                    datagram = h.heartbeat(ids[:4])
                    for addr in c.liveness:
                        with contextlib.suppress(OSError):
                            h.sock.sendto(datagram, addr)
            due += GUARD_INTERVAL
            self.stop.wait(max(0.0, due - time.monotonic()))


def _api(http: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    """One call to a manager; a 307 to the leader is followed by hand (httpx would drop
    the token on the way: another port is another origin)."""
    try:
        r = http.request(method, url, **kw)
        if r.status_code in (307, 308) and r.headers.get("location"):
            r = http.request(method, r.headers["location"], **kw)
    except httpx.HTTPError as exc:
        raise BenchError(f"{method} {url}: {exc!r}") from exc
    if r.status_code >= 300:
        raise BenchError(f"{method} {url}: HTTP {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


def _deploy(http: httpx.Client, c: ManagerCluster, i: int, interval: float) -> str:
    iid = f"{c.name[:2]}{i:03d}"
    addr = vnf_addresses(c.subnet_index, i + 1)[-1]
    desc = {"id": iid, **python_vnf(FLOWMON), "network": {"address": f"{addr}/16"},
            "resources": VNF_RESOURCES,
            "ha": {"checkpoint_interval": interval, "backups": 1, "probe": HA_PROBE}}
    _api(http, "POST", f"{c.api}/nfvha/v1/vnfds", json=desc)
    _api(http, "POST", f"{c.api}/vnflcm/v1/vnf_instances",
         json={"vnfdId": iid, "vnfInstanceId": iid})
    _api(http, "POST", f"{c.api}/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})

    def active() -> bool:
        v = _api(http, "GET", f"{c.api}/vnflcm/v1/vnf_instances/{iid}")
        if v["haState"] in ("FAILED", "NOT_INSTANTIATED"):
            raise BenchError(f"{c.name}: {iid} is {v['haState']} after instantiate")
        return bool(v["haState"] == "ACTIVE")

    wait_for(active, 30, f"{c.name}: {iid} ACTIVE", every=0.01)
    c.vnfs.append(iid)
    return iid


def _heals(http: httpx.Client, c: ManagerCluster) -> int:
    ops = _api(http, "GET", f"{c.api}/vnflcm/v1/vnf_lcm_op_occs")
    return sum(1 for o in ops if o["operation"] == "HEAL")


def _states(http: httpx.Client, c: ManagerCluster) -> dict[str, int]:
    return dict(Counter(v["haState"] for v in
                        _api(http, "GET", f"{c.api}/vnflcm/v1/vnf_instances")))


def _cpu_sample(pids: dict[str, list[int]]) -> dict[str, Any]:
    busy, total = machine_cpu()
    return {"t": time.monotonic(), "machine_busy_s": busy, "machine_total_s": total,
            "cpu_s": {k: sum(proc_cpu(p) for p in v) for k, v in pids.items()},
            "wait_s": {k: sum(proc_wait(p) for p in v) for k, v in pids.items()},
            "rss_mib": {k: sum(proc_rss_mib(p) for p in v) for k, v in pids.items()}}


def _counts(clusters: Sequence[ManagerCluster]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for c in clusters:
        total: Counter[str] = Counter()
        for h in c.hosts:
            total.update(h.counts)
        out[c.name] = total
    return out


def cpu_part(plan: Plan, etcd: EtcdCluster, run_dir: Path) -> dict[str, Any]:
    n = plan.vnfs
    if n > 250:
        raise BenchError("--vnfs: at most 250 (one /24 of addresses per configuration)")
    secret = liveness_key(TOKEN)
    sq_port, et_ports = free_port(), [free_port(), free_port()]
    store = etcd.store_url(f"/nfvha-bench/cpu-{uuid.uuid4().hex[:8]}")
    sq = ManagerCluster("sqlite", 1, [manager_daemon(run_dir, "cpu-sqlite", sq_port)],
                        [sq_port])
    et = ManagerCluster("etcd", 2, [
        manager_daemon(run_dir, f"cpu-etcd-{mid}", port, store=store, member=mid)
        for mid, port in zip(("l1", "f2"), et_ports, strict=True)], et_ports)
    clusters = [sq, et]
    for c in clusters:
        c.hosts = [FakeHost(f"{c.name[0]}{k + 1}", c, secret)
                   for k in range(HOSTS_PER_CLUSTER)]
    addresses = vnf_addresses(1, n) + vnf_addresses(2, n)
    out: dict[str, Any] = {"vnfs": n, "hosts_per_cluster": HOSTS_PER_CLUSTER,
                           "checkpoint_interval_s": plan.interval, "store": store}
    agents = Agents(clusters)
    responder = Responder(run_dir, addresses)
    http = httpx.Client(headers=_auth(), trust_env=False, timeout=15.0)
    try:
        with vnf_network(addresses):
            responder.start()
            with timed("cpu: managers up"):
                sq.managers[0].start()
                et.managers[0].start()
                wait_for(lambda: _cluster_view(http, sq.api), 60, "the SQLite manager")
                wait_for(lambda: (_cluster_view(http, et.api) or {}).get("leading"), 60,
                         "the etcd leader leading")
                et.managers[1].start()
                wait_for(lambda: (v := _cluster_view(http, f"http://127.0.0.1:{et.ports[1]}"))
                         and v.get("leader") and v["leader"]["member"] == "l1", 60,
                         "the etcd follower following")
            agents.start()
            wait_for(lambda: all(len(_api(http, "GET", f"{c.api}/nfvha/v1/hosts"))
                                 == HOSTS_PER_CLUSTER for c in clusters), 30,
                     "every fake host registered")
            time.sleep(1.0)  # the guards' heartbeats flowing
            pace = plan.interval / n
            with timed(f"cpu: {n} VNFs deployed on each, one every {pace:.2f} s"):
                t_next = time.monotonic()
                deploy_s: dict[str, list[float]] = {c.name: [] for c in clusters}
                for i in range(n):
                    for c in clusters:
                        t0 = time.monotonic()
                        _deploy(http, c, i, plan.interval)
                        deploy_s[c.name].append(time.monotonic() - t0)
                    t_next += pace
                    time.sleep(max(0.0, t_next - time.monotonic()))
            out["deploy_s"] = {k: describe(v) for k, v in deploy_s.items()}
            progress(f"cpu: warm-up {plan.warmup_s:g} s, then a {plan.window_s:g} s window")
            time.sleep(plan.warmup_s)
            pids = {"manager_sqlite": [sq.managers[0].pid or 0],
                    "manager_etcd_leader": [et.managers[0].pid or 0],
                    "manager_etcd_follower": [et.managers[1].pid or 0],
                    "etcd_members": etcd.pids, "benchmark": [os.getpid()],
                    "responder": [responder.daemon.pid or 0]}
            heals0 = {c.name: _heals(http, c) for c in clusters}
            counts0, probes0 = _counts(clusters), responder.counts()
            logs0 = {d.name: d.log_size() for c in clusters for d in c.managers}
            etcd0 = etcd_requests(etcd)
            leader0 = (_cluster_view(http, et.api) or {}).get("leader")
            samples = [_cpu_sample(pids)]
            end = time.monotonic() + plan.window_s
            while time.monotonic() < end:
                time.sleep(max(0.0, min(SAMPLE_S, end - time.monotonic())))
                samples.append(_cpu_sample(pids))
            counts1, probes1 = _counts(clusters), responder.counts()
            etcd1 = etcd_requests(etcd)
            leader1 = (_cluster_view(http, et.api) or {}).get("leader")
            # The etcd columns are per process: they are leader and follower only if the
            # leadership stayed where it was (a loop too busy to renew would lose it).
            out["etcd_leader"] = {"at_start": leader0, "at_end": leader1}
            span = samples[-1]["t"] - samples[0]["t"]
            out["window_s"] = span
            out["samples"] = samples
            out["cpu_pct"] = cpu_summary(samples)
            out["etcd_requests_per_s"] = {k: (v - etcd0.get(k, 0.0)) / span
                                          for k, v in etcd1.items()
                                          if v - etcd0.get(k, 0.0) > 0}
            work: dict[str, Any] = {}
            for c in clusters:
                d = counts1[c.name] - counts0[c.name]
                probes = sum(probes1[a] - probes0[a] for a in vnf_addresses(c.subnet_index, n))
                work[c.name] = {
                    "checkpoints_per_s": d["checkpoint"] / span,
                    "checkpoints_needed_per_s": n / plan.interval,
                    "pushes_per_s": d["push"] / span, "probes_per_s": probes / span,
                    "probes_needed_per_s": n / PROBE_INTERVAL,
                    "status_reports_per_s": d["report"] / span,
                    "heartbeat_acks_per_s": d["hb-ack"] / span,
                    "heals_in_window": _heals(http, c) - heals0[c.name],
                    "vnf_states_at_end": _states(http, c),
                    "manager_warnings": {m.name: m.warnings(logs0[m.name]) for m in c.managers},
                }
            out["work"] = work
            out["agent_errors"] = dict(agents.errors)
    finally:
        agents.close()
        http.close()
        for c in clusters:
            for daemon in reversed(c.managers):
                daemon.stop()
        responder.stop()
    return out


def _cluster_view(http: httpx.Client, url: str) -> dict[str, Any] | None:
    try:
        r = http.get(f"{url}/nfvha/v1/cluster", timeout=1.0)
        got: dict[str, Any] = r.json()
        return got if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def etcd_requests(etcd: EtcdCluster) -> dict[str, float]:
    """gRPC requests the etcd members have handled, per method, summed over members."""
    out: dict[str, float] = {}
    for url in etcd.urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{"):
                labels, _, value = line.rpartition(" ")
                method = labels.split('grpc_method="', 1)[-1].split('"', 1)[0]
                out[method] = out.get(method, 0.0) + float(value)
    return out


def cpu_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """% of one core per process group: over the whole window, and the per-second p50
    and p90."""
    a, b = samples[0], samples[-1]
    span = b["t"] - a["t"]
    out: dict[str, Any] = {}
    for k in a["cpu_s"]:
        per_s = [(y["cpu_s"][k] - x["cpu_s"][k]) / (y["t"] - x["t"]) * 100
                 for x, y in itertools.pairwise(samples) if y["t"] > x["t"]]
        out[k] = {"mean": (b["cpu_s"][k] - a["cpu_s"][k]) / span * 100 if span else math.nan,
                  "p50": percentile(per_s, 50), "p90": percentile(per_s, 90),
                  # runnable but waiting for a CPU: how much the others crowded it
                  "runqueue_wait_pct": ((b["wait_s"][k] - a["wait_s"][k]) / span * 100
                                        if span else math.nan),
                  "rss_mib": b["rss_mib"][k]}
    out["machine_busy_pct"] = ((b["machine_busy_s"] - a["machine_busy_s"])
                               / max(1e-9, b["machine_total_s"] - a["machine_total_s"]) * 100)
    return out


# == report ===================================================================================


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    p = result["parts"]
    out: dict[str, Any] = {}
    if "failover" in p and "series" in p["failover"]:
        out["failover"] = summarize_failover(p["failover"])
    if "latency" in p and "wall_ms" in p["latency"]:
        out["latency"] = summarize_latency(p["latency"])
    if "cpu" in p and "cpu_pct" in p["cpu"]:
        c = p["cpu"]
        cpu = c["cpu_pct"]
        out["cpu"] = {
            "vnfs": c["vnfs"], "checkpoint_interval_s": c["checkpoint_interval_s"],
            "window_s": c["window_s"],
            "manager_pct": {"sqlite": cpu["manager_sqlite"]["mean"],
                            "etcd_leader": cpu["manager_etcd_leader"]["mean"],
                            "etcd_follower": cpu["manager_etcd_follower"]["mean"]},
            "etcd_members_pct": cpu["etcd_members"]["mean"],
            "benchmark_pct": cpu["benchmark"]["mean"],
            "machine_busy_pct": cpu["machine_busy_pct"],
            "ratio_leader_vs_sqlite": (cpu["manager_etcd_leader"]["mean"]
                                       / cpu["manager_sqlite"]["mean"]
                                       if cpu["manager_sqlite"]["mean"] else math.nan),
            "ratio_leader_plus_etcd_vs_sqlite": (
                (cpu["manager_etcd_leader"]["mean"] + cpu["etcd_members"]["mean"])
                / cpu["manager_sqlite"]["mean"] if cpu["manager_sqlite"]["mean"]
                else math.nan),
            "work": {k: {x: v[x] for x in ("checkpoints_per_s", "checkpoints_needed_per_s",
                                           "probes_per_s", "probes_needed_per_s",
                                           "status_reports_per_s", "heals_in_window",
                                           "vnf_states_at_end")}
                     for k, v in c["work"].items()},
            "etcd_requests_per_s": c["etcd_requests_per_s"],
            "processes": {k: v for k, v in cpu.items() if isinstance(v, dict)},
        }
    return out


def evaluate_targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    t: list[dict[str, Any]] = []
    f = s.get("failover")
    if f and "kill" in f:
        med = f["kill"]["write_s"]["median"]
        t.append({"target": "leader SIGKILL: a new leader acts (accepts a write) within 1 s, "
                            "median", "value": med, "unit": "s",
                  "pass": not math.isnan(med) and med <= 1.0})
        t.append({"target": "leader SIGKILL: a new leader acts within 0.5 s, median (goal)",
                  "value": med, "unit": "s", "pass": not math.isnan(med) and med <= 0.5})
    if f:
        bad = f["overlaps_total"] + f.get("hang", {}).get("resumed_leading_answers", 0)
        t.append({"target": "never two members answering `leading: true` at once (and a "
                            "resumed hung leader never again)", "value": bad, "unit": "answers",
                  "pass": bad == 0})
    return t


def anomalies(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    out = list(shared_machine_note(m))
    if m.get("source_digest_at_end") and m["source_digest_at_end"] != m["source_digest_at_start"]:
        out.append(f"nfvha's sources changed during the run ({m['source_digest_at_start']} -> "
                   f"{m['source_digest_at_end']}): the daemons started later ran other code")
    for name, part in result["parts"].items():
        if part.get("error"):
            out.append(f"part {name} failed: {part['error']}")
    s = result.get("summary", {})
    for series, row in s.get("failover", {}).items():
        if isinstance(row, dict) and row.get("errors"):
            out.append(f"failover {series}: {row['reps'] - row['ok']} of {row['reps']} "
                       f"repetitions failed: {'; '.join(row['errors'][:3])}")
    lead = result["parts"].get("cpu", {}).get("etcd_leader")
    if lead and ((lead["at_start"] or {}).get("term") != (lead["at_end"] or {}).get("term")
                 or (lead["at_start"] or {}).get("member") != "l1"):
        out.append(f"cpu etcd: the leadership moved during the window ({lead['at_start']} -> "
                   f"{lead['at_end']}): the 'leader' and 'follower' columns mix both roles")
    for name, w in s.get("cpu", {}).get("work", {}).items():
        if w["heals_in_window"]:
            out.append(f"cpu {name}: {w['heals_in_window']} recoveries without a fault in the "
                       "window (the manager fell behind its probes or heartbeats)")
        if w["checkpoints_per_s"] < 0.8 * w["checkpoints_needed_per_s"]:
            out.append(f"cpu {name}: {w['checkpoints_per_s']:.2f} checkpoints/s against "
                       f"{w['checkpoints_needed_per_s']:.2f} needed")
        warned = result["parts"]["cpu"]["work"][name]["manager_warnings"]
        lines = [ln for v in warned.values() for ln in v]
        if lines:
            out.append(f"cpu {name}: {len(lines)} warnings in the managers' logs during the "
                       f"window, the last: {lines[-1][-200:]}")
        if w["probes_per_s"] < 0.8 * w["probes_needed_per_s"]:
            out.append(f"cpu {name}: {w['probes_per_s']:.0f} probes/s against "
                       f"{w['probes_needed_per_s']:.0f} due (the manager's loop fell behind)")
    return out


def _ms(x: float | None) -> str:
    return fmt_num(None if x is None else x * 1000, 0)


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    cfg = r["config"]
    lines = [f"# Manager cluster: failover and the cost of etcd ({r['run']['name']})", "",
             f"etcd {r['machine']['etcd_version']}: {cfg['etcd_members']} member(s) on "
             f"loopback (heartbeat 50 ms, election timeout 500 ms), data on "
             f"{cfg['filesystem']}.", ""]
    f = s.get("failover")
    if f:
        lines += ["## Failover (3 manager processes, election TTL 1 s)", "",
                  "| Fault | Reps OK | Key gone (etcd) p50 / max ms | Gone → leading p50 / max "
                  "ms | New leader p50 / p90 / max ms | Write accepted p50 / p90 / max ms |",
                  "|---|--:|--:|--:|--:|--:|"]
        for series, label in (("kill", "SIGKILL"), ("hang", "SIGSTOP (hung)")):
            if series not in f:
                continue
            x = f[series]
            lines.append(
                f"| {label} | {x['ok']}/{x['reps']} | {_ms(x['key_deleted_s']['median'])} / "
                f"{_ms(x['key_deleted_s']['max'])} | "
                f"{_ms(x['deleted_to_leading_s']['median'])} / "
                f"{_ms(x['deleted_to_leading_s']['max'])} | {_ms(x['leading_s']['median'])} / "
                f"{_ms(x['leading_s']['p90'])} / {_ms(x['leading_s']['max'])} | "
                f"{_ms(x['write_s']['median'])} / {_ms(x['write_s']['p90'])} / "
                f"{_ms(x['write_s']['max'])} |")
        lines += ["", f"Cluster views polled: {f['samples_answered']:,} answers of "
                      f"{f['samples_total']:,} requests; two members leading at once: "
                      f"{f['overlaps_total']}; a resumed hung leader answering leading: "
                      f"{f.get('hang', {}).get('resumed_leading_answers', '–')}.", ""]
    lat = s.get("latency")
    if lat:
        lines += ["## Store latency (ms), SQLite against etcd, interleaved", "",
                  "| Op | SQLite p50 / p99 | etcd p50 / p99 | etcd/SQLite p50 | CPU ms SQLite / "
                  "etcd |", "|---|--:|--:|--:|--:|"]
        for kind, x in lat.items():
            lines.append(f"| {kind} | {fmt_num(x['sqlite']['p50'], 2)} / "
                         f"{fmt_num(x['sqlite']['p99'], 2)} | {fmt_num(x['etcd']['p50'], 2)} / "
                         f"{fmt_num(x['etcd']['p99'], 2)} | {fmt_num(x['ratio_p50'], 1)}× | "
                         f"{fmt_num(x['sqlite']['cpu_ms_mean'], 2)} / "
                         f"{fmt_num(x['etcd']['cpu_ms_mean'], 2)} |")
        lines.append("")
    c = s.get("cpu")
    if c:
        cpu = r["parts"]["cpu"]["cpu_pct"]
        keys = ("manager_sqlite", "manager_etcd_leader", "manager_etcd_follower",
                "etcd_members")
        lines += [f"## Manager CPU at {c['vnfs']} VNFs (% of one core, "
                  f"{c['window_s']:.0f} s window, side by side)", "",
                  "| | Manager, SQLite | Manager, etcd leader | Manager, etcd follower | "
                  "etcd members |", "|---|--:|--:|--:|--:|"]
        for key, label, digits in (("mean", "CPU % (window)", 1),
                                   ("p90", "CPU % (per-second p90)", 1),
                                   ("runqueue_wait_pct", "waiting for a CPU %", 1),
                                   ("rss_mib", "RSS MiB", 0)):
            lines.append(f"| {label} | " + " | ".join(fmt_num(cpu[k][key], digits)
                                                      for k in keys) + " |")
        lines += ["", f"Machine busy: {fmt_num(c['machine_busy_pct'], 0)} % of its "
                      f"{r['machine']['nproc']} CPUs; etcd requests/s: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(
                      c["etcd_requests_per_s"].items(), key=lambda kv: -kv[1])) + ".", ""]
        lines += ["| Work in the window | SQLite | etcd |", "|---|--:|--:|"]
        w = c["work"]
        for key, label in (("checkpoints_per_s", "checkpoints/s"),
                           ("probes_per_s", "probes/s"),
                           ("status_reports_per_s", "status reports/s"),
                           ("heals_in_window", "recoveries without a fault")):
            lines.append(f"| {label} | {fmt_num(w['sqlite'][key], 1)} | "
                         f"{fmt_num(w['etcd'][key], 1)} |")
        lines.append("")
    lines += ["## Targets", ""]
    lines += [f"- {'PASS' if t['pass'] else 'MISS'}: {t['target']}: "
              f"{fmt_num(t['value'], 3 if t['unit'] == 's' else 0)} {t['unit']}"
              for t in r["targets"]] or ["- none"]
    lines += ["", "## Anomalies", ""]
    lines += [f"- {a}" for a in r["anomalies"]] or ["- none"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    rows = r["parts"].get("failover", {}).get("series", {})
    data, labels = [], []
    for series, label in (("kill", "SIGKILL"), ("hang", "SIGSTOP")):
        for key, what in (("key_deleted_s", "etcd drops\nits key"),
                          ("leading_s", "new leader"), ("write_s", "write ok")):
            data.append([x[key] for x in rows.get(series, []) if x.get(key) is not None])
            labels.append(f"{label}:\n{what}")
    if any(data):
        ax.boxplot([d or [math.nan] for d in data], tick_labels=labels, whis=(0, 100))
        for i, d in enumerate(data, 1):
            ax.scatter([i + random.uniform(-0.08, 0.08) for _ in d], d, s=8, alpha=0.6)
    ax.axhline(1.0, color="tab:red", ls="--", lw=1, label="target 1 s (median)")
    ax.axhline(0.5, color="tab:green", ls=":", lw=1, label="goal 0.5 s")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("s after the fault")
    ax.set_title("Leader failover, 3 managers, TTL 1 s")
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="x", labelsize=6)

    ax = axes[1]
    lat = s.get("latency", {})
    kinds = list(lat)
    x = range(len(kinds))
    for k, (store, color) in enumerate((("sqlite", "tab:blue"), ("etcd", "tab:orange"))):
        p50 = [lat[o][store]["p50"] for o in kinds]
        p99 = [lat[o][store]["p99"] for o in kinds]
        ax.bar([i + (k - 0.5) * 0.4 for i in x], p50, 0.4, color=color, label=f"{store} p50")
        ax.scatter([i + (k - 0.5) * 0.4 for i in x], p99, color=color, marker="_", s=200,
                   label=f"{store} p99")
    ax.set_xticks(list(x), kinds)
    if kinds:
        ax.set_yscale("log")
    ax.set_ylabel("ms per op")
    ax.set_title("State store latency, interleaved")
    ax.legend(fontsize=7)

    ax = axes[2]
    cpu = r["parts"].get("cpu", {})
    if "samples" in cpu:
        smp = cpu["samples"]
        t0 = smp[0]["t"]
        for key, label in (("manager_sqlite", "manager, SQLite"),
                           ("manager_etcd_leader", "manager, etcd leader"),
                           ("manager_etcd_follower", "manager, etcd follower"),
                           ("etcd_members", "etcd members")):
            ts = [y["t"] - t0 for y in smp[1:]]
            vs = [(y["cpu_s"][key] - xx["cpu_s"][key]) / (y["t"] - xx["t"]) * 100
                  for xx, y in itertools.pairwise(smp)]
            ax.plot(ts, vs, label=label, lw=1)
        ax.set_xlabel("s into the window")
        ax.set_ylabel("% of one core")
        ax.set_title(f"CPU at {cpu['vnfs']} VNFs each, side by side")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, paths)


def filesystem_of(path: Path) -> str:
    """The mount point and type of the file system holding ``path``."""
    best = ("?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(path).startswith(mnt) and len(mnt) >= len(best[0]):
                best = (mnt, f"{fstype} ({dev})")
    return f"{best[1]} at {best[0]}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help="5 repetitions per fault, 20 VNFs, a 10 s window, fewer store ops")
    ap.add_argument("--reps", type=int, default=None, help="failovers per fault (20)")
    ap.add_argument("--vnfs", type=int, default=None, help="VNFs per store in the CPU part (100)")
    ap.add_argument("--window", type=float, default=None, help="CPU window, s (120)")
    ap.add_argument("--etcd-members", type=int, default=3, choices=(1, 3))
    ap.add_argument("--parts", type=lambda v: [p for p in v.split(",") if p],
                    default=list(PARTS), help=f"comma separated subset of {','.join(PARTS)}")
    ap.add_argument("--data-dir", type=Path, default=Path("/var/tmp"),
                    help="where the SQLite file and the etcd data go (one file system)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    if any(p not in PARTS for p in a.parts):
        ap.error(f"--parts: choose from {','.join(PARTS)}")
    plan = make_plan(a)
    if os.geteuid() != 0:
        print("manager_failover: needs root (a network namespace for the probe responder)",
              file=sys.stderr)
        return 2
    install_signal_handlers()
    started = time.time()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{NAME}-", dir=a.data_dir))
    result: dict[str, Any] = {
        "benchmark": "manager_failover",
        "run": {"name": "manager_failover-" + time.strftime("%Y%m%d-%H%M%S",
                                                           time.localtime(started)),
                "started": started},
        "machine": {**testbed_machine(NAME), "etcd_version": etcd_version()},
        "config": {"quick": plan.quick, "parts": list(plan.parts), "reps": plan.reps,
                   "etcd_members": plan.etcd_members,
                   "etcd_flags": " ".join(ETCD_MEMBER_FLAGS) + ", GOMAXPROCS=1",
                   "election_ttl_s": ELECTION_TTL, "poll_s": POLL_S, "fresh_s": FRESH_S,
                   "renew_s": ELECTION.renew_interval, "takeover_s": ELECTION.takeover_after,
                   "write_retry_s": WRITE_RETRY_S, "phase_s": list(PHASE_S),
                   "vnfs": plan.vnfs, "hosts_per_cluster": HOSTS_PER_CLUSTER,
                   "checkpoint_interval_s": plan.interval, "window_s": plan.window_s,
                   "warmup_s": plan.warmup_s, "ha_probe": HA_PROBE, "backups": 1,
                   "guard_interval_s": GUARD_INTERVAL, "status_interval_s": STATUS_INTERVAL,
                   "full_status_every_s": FULL_EVERY,
                   "latency_vnfs": plan.latency_vnfs, "latency_rounds": plan.latency_rounds,
                   "data_dir": str(a.data_dir), "filesystem": filesystem_of(run_dir),
                   "sqlite": "WAL, synchronous=NORMAL (the manager's settings)"},
        "parts": {},
    }
    t0 = time.perf_counter()
    interrupted: BaseException | None = None
    runners = {"latency": latency_part, "failover": failover_part, "cpu": cpu_part}
    try:
        with contextlib.ExitStack() as stack:
            with timed(f"etcd: {plan.etcd_members} member(s) up"):
                etcd = stack.enter_context(etcd_cluster(plan.etcd_members, parent=run_dir))
            for name in PARTS:
                if name not in plan.parts:
                    continue
                progress(f"== {name}")
                try:
                    with timed(f"{name} done"):
                        result["parts"][name] = runners[name](plan, etcd, run_dir)
                except BenchError as exc:
                    print(f"manager_failover: {name}: {exc}", file=sys.stderr)
                    result["parts"][name] = {"error": str(exc)}
    except (KeyboardInterrupt, BenchError, RuntimeError) as exc:
        interrupted = exc
        print(f"manager_failover: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored():
            netns_down()
            if interrupted is None and not any(p.get("error")
                                               for p in result["parts"].values()):
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                print(f"manager_failover: logs kept in {run_dir}", file=sys.stderr)
    result["elapsed_s"] = time.perf_counter() - t0
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["machine"]["source_digest_at_end"] = source_digest()
    failed = [n for n, p in result["parts"].items() if p.get("error")]
    result["complete"] = (interrupted is None and not failed
                          and set(result["parts"]) == set(PARTS))
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    if not result["parts"]:
        print("manager_failover: nothing measured; nothing written", file=sys.stderr)
        return 1
    result["summary"] = summarize(result)
    result["targets"] = evaluate_targets(result["summary"])
    result["anomalies"] = anomalies(result)
    publish(result, "manager_failover", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{fmt_num(t['value'], 3)} {t['unit']}",
            doc_img=not a.no_doc_img)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
