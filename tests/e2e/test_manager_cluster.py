"""A manager cluster for real: three managers and a three-member etcd cluster, each pair on
its own emulated management host, three compute hosts, client traffic to a VNF.

The leader is killed or its host loses power, or it is cut off from etcd, or etcd loses a
member or its quorum; throughout, a watcher polls every member's ``/nfvha/v1/cluster``
and fails the test if two say they lead at once, and etcd's history is audited for two
writers in one term. What a user cares about: the VNF is not disturbed by a change of
leader (no recovery, no fence, its checkpoints continue, its counter is exact), and a
VNF failure right after the leader's loss is recovered by the new leader.

``NFVHA_CLUSTER_REPS`` repetitions of each leader fault (2 in `make test`, 20 in
`make soak`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nfvha.demo import python_vnf
from nfvha.errors import NotLeader
from nfvha.store.audit import audit_terms, current_revision
from nfvha.store.etcd import DEFAULT_PREFIX
from tests.conftest import EXAMPLES
from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.vnfclient import flowmon_stats, wait_until


def etcd_at(m: Mgr, i: int = 0) -> str:
    return f"http://{m.tb.etcd_endpoints[i]}"


# The usual recovery, at the testbed's timings (TOLERANT_MANAGER; max_lease and the
# fencing margin at their defaults): detection and restore of a killed VNF, and what a
# host crash adds.
RESTORE_S = 1.5
SUSPECT_S, MAX_LEASE_S, FENCING_MARGIN_S = 0.3, 2.0, 0.1

REPS = int(os.environ.get("NFVHA_CLUSTER_REPS", "2"))
INTERVAL = 2.0  # the VNF's checkpoint interval (the descriptor's default)
RATE_HZ = 300


@pytest.fixture(scope="module")
def cm() -> Iterator[Mgr]:
    """One testbed for the module: members and hosts are brought back after each fault."""
    with manager_bed("c", 140, 20, n_hosts=3, managers=3, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


# -- watching the cluster ------------------------------------------------------------------


def views(m: Mgr, timeout: float = 0.3, *, but: str | None = None
          ) -> dict[str, dict[str, Any] | None]:
    """Every member's ``/nfvha/v1/cluster`` (None: it did not answer), ``but`` one."""
    def ask(url: str) -> dict[str, Any] | None:
        try:
            r = m.http.get(f"{url}/nfvha/v1/cluster", timeout=timeout)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    # Side by side: a member whose host lost power answers nothing until the timeout,
    # which must not delay what the others say.
    members = {k: v for k, v in m.tb.manager_members.items() if k != but}
    with concurrent.futures.ThreadPoolExecutor(len(members)) as pool:
        return dict(zip(members, pool.map(ask, members.values()), strict=True))


def leader(m: Mgr, *, but: str | None = None) -> str | None:
    leading = [k for k, v in views(m, but=but).items() if v is not None and v["leading"]]
    assert len(leading) <= 1, f"two members lead at once: {leading}"
    return leading[0] if leading else None


class LeaderWatch:
    """Polls every member every 10 ms in a thread; ``overlaps`` are the rounds in which
    two members said they lead (never expected: the old leader stops acting a quarter of
    the lease before a successor can win, far more than a polling round)."""

    def __init__(self, m: Mgr) -> None:
        self.m = m
        self.http = httpx.Client(verify=m.verify, headers=dict(m.http.headers), timeout=0.2)
        self.overlaps: list[tuple[float, list[str]]] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        members = self.m.tb.manager_members
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            leading = []
            for member, url in members.items():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = self.http.get(f"{url}/nfvha/v1/cluster")
                    if r.status_code == 200 and r.json()["leading"]:
                        leading.append(member)
            self.rounds += 1
            if len(leading) > 1:
                self.overlaps.append((time.monotonic(), leading))
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.http.close()


# -- traffic -------------------------------------------------------------------------------


class Client:
    """Datagrams to a flow monitor at a steady rate (counted), and a PING every 10 ms on
    its query port whose PONGs are timed: the longest silence is the client's outage."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.started = time.monotonic()
        self.sent = 0
        self.pongs: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._ping, daemon=True)]
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            deadline = time.monotonic() + 900
            while not self._stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    s.sendto(b"x" * 64, (self.ip, 5000))
                    self.sent += 1
                time.sleep(1 / RATE_HZ)

    def _ping(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.01)
            deadline = time.monotonic() + 900
            while not self._stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    s.sendto(b"PING", (self.ip, 5001))
                with contextlib.suppress(OSError):
                    while True:
                        if s.recv(64) == b"PONG":
                            self.pongs.append(time.monotonic())

    def longest_silence(self, since: float, until: float) -> float:
        since = max(since, self.pongs[0] if self.pongs else self.started)
        times = [since] + [t for t in self.pongs if since <= t <= until] + [until]
        return max(b - a for a, b in itertools.pairwise(times))

    def stop(self) -> int:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        return self.sent


def flowmon_vnfd(addr: str) -> dict[str, Any]:
    return {"id": "fmc", **python_vnf(EXAMPLES / "flowmon.py"),
            "network": {"address": addr}, "resources": {"memory": "128Mi"},
            "ha": {"checkpoint_interval": INTERVAL, "backups": 1,
                   "probe": {"type": "udp", "port": 5001, "send": "PING", "expect": "PONG",
                             "interval": 0.1, "timeout": 0.1, "failure_threshold": 3}}}


def fences(m: Mgr) -> int:
    return len(m.ok("GET", "/nfvha/v1/fences"))


def checkpoint_gaps(m: Mgr, iid: str, since: float) -> float:
    cuts = [c["cutAt"] for c in m.checkpoints(iid)]
    cuts = sorted(c for c in cuts if c >= since - 2 * INTERVAL)
    return max((b - a for a, b in itertools.pairwise(cuts)), default=0.0)


@contextlib.contextmanager
def deployed(m: Mgr, iid: str, addr_index: int) -> Iterator[tuple[str, Client]]:
    addr = m.tb.vnf_address(addr_index)
    ip = addr.split("/")[0]
    m.deploy(flowmon_vnfd(addr), iid)
    client = Client(ip)
    try:
        yield ip, client
    finally:
        client.stop()
        with contextlib.suppress(AssertionError):
            m.ok("POST", f"/vnflcm/v1/vnf_instances/{iid}/terminate", json={})
        with contextlib.suppress(AssertionError, TimeoutError):
            wait_until(lambda: m.vnf(iid)["haState"] == "NOT_INSTANTIATED", 15)
        with contextlib.suppress(AssertionError):
            m.ok("DELETE", f"/vnflcm/v1/vnf_instances/{iid}")


def bring_back(m: Mgr, member: str, fault: str) -> None:
    if fault == "kill":
        asyncio.run(m.tb.restart_manager(member))
    else:
        asyncio.run(m.tb.restore_manager_host(member))
    wait_until(lambda: views(m).get(member) is not None, 20)


def lose_leader(m: Mgr, fault: str) -> tuple[str, float]:
    """Kill the leader or cut its host's power; returns who and when (monotonic)."""
    old = leader(m)
    assert old is not None, views(m)
    t0 = time.monotonic()
    if fault == "kill":
        asyncio.run(m.tb.kill_manager(old))
    else:
        asyncio.run(m.tb.crash_manager_host(old))
    return old, t0


def new_leader_after(m: Mgr, old: str, t0: float, timeout: float = 10) -> tuple[str, float]:
    found: list[str] = []

    def elected() -> bool:
        # Not asking the old one: a member whose host lost power answers nothing, and
        # each round would wait out its timeout (a power cut looked 0.3 s slower).
        who = leader(m, but=old)
        if who is not None and who != old:
            found.append(who)
            return True
        return False

    wait_until(elected, timeout)
    return found[-1], time.monotonic() - t0


# -- the acceptance tests ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "power-cut"])
def test_losing_the_leader_disturbs_no_vnf(cm: Mgr, fault: str) -> None:
    watch = LeaderWatch(cm)
    start_rev = current_revision(etcd_at(cm))
    failovers: list[float] = []
    iid = f"fmc-{fault}"
    try:
        with deployed(cm, iid, 60 + (fault == "kill")) as (ip, client):
            cm.wait_checkpoint_after(iid, time.time())
            heals0, fences0, host0 = len(cm.heals(iid)), fences(cm), cm.vnf(iid)["host"]
            for _ in range(REPS):
                old, t0 = lose_leader(cm, fault)
                wall0 = time.time()
                _new, took = new_leader_after(cm, old, t0)
                failovers.append(took)
                # The new leader acts: it checkpoints the VNF (its rhythm carried on).
                cm.wait_checkpoint_after(iid, wall0, timeout=3 * INTERVAL + 5)
                bring_back(cm, old, fault)
                time.sleep(0.5)
                gap = checkpoint_gaps(cm, iid, wall0)
                assert gap <= 2 * INTERVAL + 0.5, f"checkpoint gap {gap:.2f} s at a takeover"
            mono_end = time.monotonic()
            sent = client.stop()
            wait_until(lambda: int(flowmon_stats((ip, 5001))["total_packets"]) >= sent, 5)
            assert int(flowmon_stats((ip, 5001))["total_packets"]) == sent
            silence = client.longest_silence(client.started, mono_end)
            vnf = cm.vnf(iid)
            assert (vnf["haState"], vnf["host"]) == ("ACTIVE", host0), vnf
            assert len(cm.heals(iid)) == heals0, "a change of leader recovered the VNF"
            assert fences(cm) == fences0, "a change of leader fenced a host"
            assert silence < 1.0, f"the client went {silence:.2f} s without a reply"
    finally:
        watch.close()
    assert watch.overlaps == [], f"two leaders at once: {watch.overlaps[:5]}"
    audit = audit_terms(etcd_at(cm), DEFAULT_PREFIX, start_rev)
    assert audit.ok, (audit.split_terms, audit.stale)
    print(f"\n{fault}: failover median {statistics.median(failovers):.2f} s, max "
          f"{max(failovers):.2f} s over {len(failovers)}; {watch.rounds} watch rounds")


@pytest.mark.slow
@pytest.mark.parametrize("vnf_fault", ["kill", "host-crash"])
def test_a_vnf_failure_right_after_the_leader_dies_is_recovered_by_the_new_leader(
        cm: Mgr, vnf_fault: str) -> None:
    iid = f"fmv-{vnf_fault}"
    results: list[tuple[float, float]] = []
    with deployed(cm, iid, 62 + (vnf_fault == "kill")) as (ip, _client):
        for _ in range(REPS):
            results.append(_fail_vnf_right_after_the_leader(cm, iid, ip, vnf_fault))
    print(f"\n{vnf_fault} 100 ms after the leader's death, {len(results)} times: new leader "
          f"median {statistics.median(t for t, _ in results):.2f} s, recovered median "
          f"{statistics.median(r for _, r in results):.2f} s (max "
          f"{max(r for _, r in results):.2f} s) after the fault")


def _fail_vnf_right_after_the_leader(cm: Mgr, iid: str, ip: str,
                                     vnf_fault: str) -> tuple[float, float]:
    """One repetition: returns the failover time and the recovery time (from the fault)."""
    # A checkpoint with a replica on another host, taken after the counter read below.
    time.sleep(INTERVAL / 2)
    before = int(flowmon_stats((ip, 5001))["total_packets"])
    read_at = time.time()
    wait_until(lambda: any(c["cutAt"] > read_at and len(c["replicas"]) > 1
                           for c in cm.checkpoints(iid)), 3 * INTERVAL + 5)
    heals0 = len(cm.heals(iid))
    vnf = cm.vnf(iid)
    old, t0 = lose_leader(cm, "kill")
    time.sleep(0.1)
    if vnf_fault == "kill":
        asyncio.run(cm.tb.inject_vnf(vnf["host"], iid, "kill"))
    else:
        asyncio.run(cm.tb.crash_host(vnf["host"]))
    try:
        _new, took = new_leader_after(cm, old, t0)
        cm.wait_heal(iid, heals0 + 1, timeout=30)
        recovered = time.monotonic() - t0
        after = int(flowmon_stats((ip, 5001))["total_packets"])
        assert after >= before, f"state lost: {after} packets counted, {before} before"
        assert cm.vnf(iid)["haState"] == "ACTIVE"
        # The failover plus the usual recovery: a VNF kill is found by the new leader's
        # reconcile and restored; a host crash waits, besides, for the longest lease any
        # leader may have granted (docs/architecture.md, "Manager cluster").
        usual = RESTORE_S if vnf_fault == "kill" else \
            SUSPECT_S + MAX_LEASE_S + FENCING_MARGIN_S + RESTORE_S
        assert recovered <= took + usual, \
            f"recovered {recovered:.2f} s after the fault: failover {took:.2f} s + " \
            f"{usual:.2f} s"
        return took, recovered
    finally:
        if vnf_fault == "host-crash":
            asyncio.run(cm.tb.revive_host(vnf["host"]))
        bring_back(cm, old, "kill")


@pytest.mark.slow
def test_a_leader_cut_off_from_etcd_stops_acting_before_a_successor(cm: Mgr) -> None:
    watch = LeaderWatch(cm)
    start_rev = current_revision(etcd_at(cm))
    iid = "fmp"
    takeovers: list[float] = []
    try:
        with deployed(cm, iid, 64) as (ip, client):
            cm.wait_checkpoint_after(iid, time.time())
            heals0 = len(cm.heals(iid))
            for _ in range(REPS):
                # The heal before may have moved the leadership: a leader first.
                old = wait_until(lambda: leader(cm), 10)
                t0 = time.monotonic()
                asyncio.run(cm.tb.cut_manager_from_etcd(old))
                try:
                    _new, took = new_leader_after(cm, old, t0)
                    takeovers.append(took)
                    # The old leader, still reachable by agents and clients, knows it no
                    # longer leads, and sends writes on.
                    wait_until(lambda o=old: (views(cm, timeout=1.0).get(o) or {})
                               .get("leading") is False, 10)
                    after = time.time()
                    wait_until(lambda a=after: any(c["cutAt"] > a for c in cm.checkpoints(iid)),
                               3 * INTERVAL + 5, ignore=(NotLeader,))
                finally:
                    asyncio.run(cm.tb.cut_manager_from_etcd(old, heal=True))
                asyncio.run(cm.tb.wait_etcd())
                # Back in the cluster: the old leader follows the new one.
                wait_until(lambda o=old: ((views(cm).get(o) or {}).get("leader") or {})
                           .get("member") == leader(cm), 10)
            assert len(cm.heals(iid)) == heals0
            assert cm.vnf(iid)["haState"] == "ACTIVE"
            sent = client.stop()
            wait_until(lambda: int(flowmon_stats((ip, 5001))["total_packets"]) >= sent, 5)
            assert int(flowmon_stats((ip, 5001))["total_packets"]) == sent
    finally:
        watch.close()
    assert watch.overlaps == [], f"two leaders at once: {watch.overlaps[:5]}"
    audit = audit_terms(etcd_at(cm, 1), DEFAULT_PREFIX, start_rev)
    assert audit.ok, (audit.split_terms, audit.stale)
    print(f"\ncut from etcd, {len(takeovers)} times: a new leader after "
          f"{statistics.median(takeovers):.2f} s median; {audit.writes} writes in "
          f"{len(audit.writers)} terms, one writer each")


@pytest.mark.slow
def test_etcd_losing_a_member_disturbs_nothing_and_losing_quorum_pauses_protection(
        cm: Mgr) -> None:
    iid = "fmq"
    members = list(cm.tb.manager_members)
    with deployed(cm, iid, 65) as (ip, client):
        cm.wait_checkpoint_after(iid, time.time())
        heals0 = len(cm.heals(iid))
        lead = leader(cm)
        others = [x for x in members if x != lead]
        mono_1 = time.monotonic()
        # One member lost (not the leading manager's own): the VNF is not disturbed. If
        # it was etcd's raft leader (the leading manager keeps that one elsewhere), etcd
        # elects another, renewals wait meanwhile, and the managers may elect anew too.
        asyncio.run(cm.tb.kill_etcd(others[0]))
        t1 = time.time()
        cm.wait_checkpoint_after(iid, t1, timeout=3 * INTERVAL + 5)
        wait_until(lambda: leader(cm) is not None, 10)
        # Quorum lost: nobody leads, the VNF keeps running and answering.
        asyncio.run(cm.tb.kill_etcd(others[1]))
        assert client.longest_silence(mono_1, time.monotonic()) < 1.0
        wait_until(lambda: leader(cm) is None, 5)
        mono_q = time.monotonic()
        time.sleep(3)
        assert client.longest_silence(mono_q, time.monotonic()) < 1.0
        # Quorum back: a leader acts again, and protection resumes.
        asyncio.run(cm.tb.restart_etcd(others[0]))
        asyncio.run(cm.tb.restart_etcd(others[1]))
        wait_until(lambda: leader(cm) is not None, 20)
        cm.wait_checkpoint_after(iid, time.time(), timeout=3 * INTERVAL + 10)
        assert len(cm.heals(iid)) == heals0
        sent = client.stop()
        wait_until(lambda: int(flowmon_stats((ip, 5001))["total_packets"]) >= sent, 5)
        assert int(flowmon_stats((ip, 5001))["total_packets"]) == sent
