"""Acceptance of the HA manager: real failures, detected and recovered by policy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.demo import python_vnf
from tests.conftest import EXAMPLES
from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.vnfclient import UdpFlow, flowmon_stats, wait_until


@pytest.fixture
def mgr() -> Iterator[Mgr]:
    with manager_bed("m", 150, 40, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


def flowmon(addr: str, python: str, *, interval: float = 0.5, **ha: Any) -> dict[str, Any]:
    return {"id": "flowmon", **python_vnf(EXAMPLES / "flowmon.py"), "network": {"address": addr},
            "resources": {"memory": "128Mi"},
            "ha": {"checkpoint_interval": interval, "backups": 1,
                   "probe": {"type": "udp", "port": 5001, "send": "PING", "expect": "PONG",
                             "interval": 0.1, "timeout": 0.1, "failure_threshold": 3},
                   **ha}}


def _count(ip: str, key: str) -> int:
    flow = flowmon_stats((ip, 5001))["flows"].get(key)
    return int(flow["packets"]) if flow else 0


def _answers(ip: str) -> bool:
    try:
        flowmon_stats((ip, 5001), timeout=0.3)
        return True
    except (OSError, ValueError):
        return False


def _warm(m: Mgr, ip: str, iid: str, n: int = 100) -> tuple[UdpFlow, int]:
    """Send n packets, wait until a checkpoint covers them; returns the flow."""
    wait_until(lambda: _answers(ip), 5)
    flow = UdpFlow((ip, 5000), None, 1.0)
    flow.send(n)
    wait_until(lambda: _count(ip, flow.key) == n, 5)
    m.wait_checkpoint_after(iid, time.time())
    return flow, n


def test_process_exit_is_restored_locally_with_state(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(1)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-a")
    flow, sent = _warm(mgr, ip, "fm-a")
    with flow:
        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-a/inject", json={"fault": "kill"})
        op = mgr.wait_heal("fm-a")
        assert op["isAutomaticInvocation"] is True
        assert op["nfvha"]["failureType"] == "process-exit"
        assert op["nfvha"]["strategy"] == "restore-local"
        assert op["nfvha"]["targetHost"] == vnf["host"]
        ts = op["nfvha"]["timestamps"]
        assert ts["detected"] <= ts["decided"] <= ts["restored"] <= ts["serving"]
        assert "reason" in op["nfvha"]["decision"]
        assert sent <= _count(ip, flow.key) <= sent
        alarms = [a for a in mgr.alarms() if a["faultType"] == "process-exit"]
        assert alarms and alarms[-1]["alarmClearedTime"] is not None
        assert alarms[-1]["perceivedSeverity"] == "CLEARED"


def test_hang_is_detected_by_probes_and_restored(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(2)
    ip = addr.split("/")[0]
    mgr.deploy(flowmon(addr, python_bin), "fm-h")
    flow, sent = _warm(mgr, ip, "fm-h")
    with flow:
        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-h/inject", json={"fault": "hang"})
        op = mgr.wait_heal("fm-h")
        assert op["nfvha"]["failureType"] == "hang"
        assert op["nfvha"]["strategy"] == "restore-local"
        assert _count(ip, flow.key) >= sent


def test_hang_while_a_replication_is_stuck_is_detected_and_restored(mgr: Mgr,
                                                                     python_bin: str) -> None:
    """The VNF's backup host crashes, so a checkpoint's push to it stalls (it waits out a
    60 s timeout) with the checkpoint task in flight; the VNF then hangs. Its probes
    still run and it is restored locally within seconds, the stuck checkpoint cancelled
    (the campaign's hangs undetected for 15 s+)."""
    addr = mgr.tb.vnf_address(9)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin, interval=0.2), "fm-s")
    flow, sent = _warm(mgr, ip, "fm-s")
    backup = vnf["backups"][0]
    with flow:
        asyncio.run(mgr.tb.crash_host(backup))
        wait_until(lambda: {h["id"]: h["state"] for h in mgr.ok("GET", "/nfvha/v1/hosts")}
                   [backup] == "DOWN", 10)
        time.sleep(1.0)
        last = mgr.checkpoints("fm-s")[-1]["seq"]
        time.sleep(1.0)
        stuck = mgr.checkpoints("fm-s")[-1]["seq"] == last  # none in 1 s at 0.2 s intervals
        injected = time.time()
        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-s/inject", json={"fault": "hang"})
        op = mgr.wait_heal("fm-s", timeout=10)
        assert op["nfvha"]["failureType"] == "hang", op
        assert op["nfvha"]["strategy"] == "restore-local", op
        detected = float(op["nfvha"]["timestamps"]["detected"])
        assert detected - injected < 3.0, (detected - injected, stuck)
        assert _count(ip, flow.key) >= sent
    assert mgr.vnf("fm-s")["host"] == vnf["host"]


def test_host_crash_is_restored_remotely_with_state(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(3)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-r")
    flow, sent = _warm(mgr, ip, "fm-r")
    with flow:
        asyncio.run(mgr.tb.crash_host(vnf["host"]))
        op = mgr.wait_heal("fm-r")
        assert op["nfvha"]["failureType"] == "host-loss"
        assert op["nfvha"]["strategy"] == "restore-remote"
        assert op["nfvha"]["targetHost"] != vnf["host"]
        assert mgr.vnf("fm-r")["host"] == op["nfvha"]["targetHost"]
        assert _count(ip, flow.key) >= sent
        hosts = {h["id"]: h["state"] for h in mgr.ok("GET", "/nfvha/v1/hosts")}
        assert hosts[vnf["host"]] == "DOWN"


def test_an_agent_stalling_in_bursts_keeps_its_vnf_and_a_crash_still_moves_it(
        mgr: Mgr, python_bin: str) -> None:
    """CPU starvation, played by SIGSTOP/SIGCONT of the lease guard: once the manager has seen
    the host come back from a silence, it suspects it later and grants it a longer lease,
    so longer stalls neither fence the agent nor move its VNF. A real crash afterwards is
    still detected, and the VNF moves once the longer lease has surely run out."""
    addr = mgr.tb.vnf_address(7)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-s")
    host = vnf["host"]
    flow, sent = _warm(mgr, ip, "fm-s")
    # The guard is what keeps the host's liveness and lease: starving it is starving the
    # host as the manager sees it.
    pid = mgr.tb.guard_process(host)
    assert pid is not None

    def stall(seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.4)

    with flow:
        # Ever longer, each within twice the last (the stretched suspicion), from under
        # the configured suspicion time (0.3 s) to well over it: with fixed timings the
        # 0.35 s stall already had the host DOWN and the VNF moved.
        for seconds in (0.15, 0.25, 0.35, 0.45, 0.45, 0.45):
            stall(seconds)
        assert mgr.heals("fm-s") == []
        hosts = {h["id"]: h for h in mgr.ok("GET", "/nfvha/v1/hosts")}
        assert hosts[host]["state"] == "UP"
        assert hosts[host]["leaseMs"] > 500 and hosts[host]["suspectAfterMs"] > 400
        assert mgr.vnf("fm-s")["host"] == host
        assert _count(ip, flow.key) == sent  # the same process all along
        t0 = time.time()
        asyncio.run(mgr.tb.crash_host(host))
        op = mgr.wait_heal("fm-s", timeout=20)
        assert op["nfvha"]["failureType"] == "host-loss"
        assert op["nfvha"]["targetHost"] != host
        assert op["nfvha"]["timestamps"]["restored"] - t0 < 5
        assert _count(ip, flow.key) >= sent


def test_failed_vnf_is_retried_when_a_replica_host_returns(mgr: Mgr, python_bin: str) -> None:
    """Every host is lost, so nothing can recover the VNF and it is FAILED; once the host
    with its replica is back, the manager's retry restores it there with its state."""
    addr = mgr.tb.vnf_address(6)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin, recovery={"host-loss": ["restore-remote"]}),
                     "fm-f")
    flow, sent = _warm(mgr, ip, "fm-f")
    backup = vnf["backups"][0]
    other = next(h for h in mgr.tb.hosts if h not in (vnf["host"], backup))

    def down(host: str) -> bool:
        return {h["id"]: h["state"] for h in mgr.ok("GET", "/nfvha/v1/hosts")}[host] == "DOWN"

    with flow:
        # One at a time: hosts all silent at once would be blamed on the manager instead.
        asyncio.run(mgr.tb.partition_host(other))
        wait_until(lambda: down(other), 10)
        asyncio.run(mgr.tb.crash_host(backup))
        wait_until(lambda: down(backup), 10)
        asyncio.run(mgr.tb.crash_host(vnf["host"]))
        wait_until(lambda: mgr.vnf("fm-f")["haState"] == "FAILED", 15)
        assert [o["operationState"] for o in mgr.heals("fm-f")] == ["FAILED"]
        time.sleep(3)  # the manager keeps looking, but records no new failed HEAL
        assert [o["operationState"] for o in mgr.heals("fm-f")] == ["FAILED"]
        asyncio.run(mgr.tb.revive_host(backup))
        op = mgr.wait_heal("fm-f", n=2, timeout=40)
        assert op["isAutomaticInvocation"] is True
        assert op["nfvha"]["strategy"] == "restore-remote"
        assert op["nfvha"]["targetHost"] == backup
        assert mgr.vnf("fm-f")["haState"] == "ACTIVE"
        assert _count(ip, flow.key) >= sent


def test_host_crash_with_standby_strategy(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(4)
    ip = addr.split("/")[0]
    desc = flowmon(addr, python_bin, recovery={"host-loss": ["standby", "restore-remote"]})
    vnf = mgr.deploy(desc, "fm-s")
    flow, sent = _warm(mgr, ip, "fm-s")
    backup = vnf["backups"][0]
    wait_until(lambda: any(i["id"] == "fm-s" and i["state"] == "STANDBY"
                           for h in mgr.ok("GET", "/nfvha/v1/hosts") if h["id"] == backup
                           for i in h["instances"]), 10)
    with flow:
        asyncio.run(mgr.tb.crash_host(vnf["host"]))
        op = mgr.wait_heal("fm-s")
        assert op["nfvha"]["strategy"] == "standby"
        assert op["nfvha"]["targetHost"] == backup
        assert _count(ip, flow.key) >= sent


def _copies(tb: Any, iid: str) -> list[str]:
    """Hosts whose sandbox cgroup of this VNF holds a live process right now."""
    out = []
    for hid in tb.hosts:
        for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            procs = Path(f"{base}/{tb.name}/{hid}/vnf/{iid}/cgroup.procs")
            with contextlib.suppress(OSError):
                if procs.read_text().split():
                    out.append(hid)
                    break
    return out


def test_partition_moves_vnf_only_after_isolated_copy_stopped(mgr: Mgr,
                                                              python_bin: str) -> None:
    addr = mgr.tb.vnf_address(5)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-p")
    flow, sent = _warm(mgr, ip, "fm-p")
    worst: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            c = _copies(mgr.tb, "fm-p")
            if len(c) > 1:
                worst.append(c)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with flow:
            asyncio.run(mgr.tb.partition_host(vnf["host"]))
            op = mgr.wait_heal("fm-p")
            assert op["nfvha"]["failureType"] == "host-loss"
            assert op["nfvha"]["targetHost"] != vnf["host"]
            assert _count(ip, flow.key) >= sent
            # The isolated copy fenced itself; after the links come back it stays down.
            asyncio.run(mgr.tb.partition_host(vnf["host"], cut=False))
            time.sleep(1.0)
            assert _copies(mgr.tb, "fm-p") == [op["nfvha"]["targetHost"]]
    finally:
        stop.set()
        watcher.join(5)
    assert worst == [], f"two live copies seen: {worst[:3]}"


def test_corrupt_latest_checkpoint_falls_back_to_previous(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(6)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin, interval=2.0), "fm-c")
    wait_until(lambda: _answers(ip), 5)
    with UdpFlow((ip, 5000), None, 1.0) as flow:
        flow.send(50)
        wait_until(lambda: len(mgr.checkpoints("fm-c")) >= 2, 10)
        latest = mgr.checkpoints("fm-c")[-1]
        host = vnf["host"]
        img = mgr.tb.dir / host / "checkpoints" / "fm-c" / f"{latest['seq']:06d}" / "pages-1.img"
        data = bytearray(img.read_bytes())
        data[100] ^= 0xFF
        img.write_bytes(bytes(data))
        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-c/inject", json={"fault": "kill"})
        op = mgr.wait_heal("fm-c")
        assert op["nfvha"]["strategy"] == "restore-local"
        assert op["nfvha"]["checkpoint"] < latest["seq"]
        assert _count(ip, flow.key) >= 0  # answers again


def test_manager_restart_loses_and_duplicates_nothing(mgr: Mgr, python_bin: str) -> None:
    addr = mgr.tb.vnf_address(7)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin, interval=0.3), "fm-m")
    flow, sent = _warm(mgr, ip, "fm-m")
    with flow:
        before = mgr.checkpoints("fm-m")[-1]["seq"]
        os.kill(mgr.tb.manager_pid, signal.SIGKILL)
        time.sleep(1.0)  # agents keep their VNFs: peers still answer, so nobody fences
        assert _count(ip, flow.key) == sent
        mgr.tb.manager_pid = mgr.tb.start_manager()
        asyncio.run(mgr.tb.wait_ready())
        time.sleep(1.5)
        after = mgr.vnf("fm-m")
        assert after["haState"] == "ACTIVE" and after["host"] == vnf["host"]
        assert _copies(mgr.tb, "fm-m") == [vnf["host"]]
        wait_until(lambda: mgr.checkpoints("fm-m")[-1]["seq"] > before + 1, 10)
        assert _count(ip, flow.key) == sent


def test_bad_requests_get_problem_details(mgr: Mgr, python_bin: str) -> None:
    http = mgr.http
    r = httpx.get(mgr.url + "/vnflcm/v1/vnf_instances", verify=mgr.verify)
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem")
    r = http.get(mgr.url + "/vnflcm/v1/vnf_instances/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = http.post(mgr.url + "/nfvha/v1/vnfds", json={"id": "x", "command": []})
    assert r.status_code == 422 and "command" in r.json()["detail"]
    assert "network" in r.json()["detail"]
    r = http.post(mgr.url + "/vnflcm/v1/vnf_instances", json={"vnfdId": "missing"})
    assert r.status_code == 404 and "missing" in r.json()["detail"]
    r = http.post(mgr.url + "/vnflcm/v1/vnf_instances", json={})
    assert r.status_code == 400 and "vnfdId" in r.json()["detail"]
    agent = mgr.tb.host("h1").url
    r = httpx.post(f"{agent}/v1/instances", content=b"x" * (2 << 20), verify=mgr.verify,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text  # refused before it is read, token or not
    addr = mgr.tb.vnf_address(8)
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-t")
    backup = mgr.tb.host(vnf["backups"][0]).url

    def replicas() -> list[Any]:
        res: list[Any] = mgr.agents.get(f"{backup}/v1/checkpoints",
                                  params={"instance_id": "fm-t"}).json()
        return res

    wait_until(lambda: replicas() != [], 10)
    r = mgr.ok("POST", "/vnflcm/v1/vnf_instances/fm-t/terminate", json={})
    op_url = r.headers["Location"]
    wait_until(lambda: http.get(op_url).json()["operationState"] == "COMPLETED", 10)
    r = http.post(mgr.url + "/vnflcm/v1/vnf_instances/fm-t/heal", json={})
    assert r.status_code == 409 and "instantiate" in r.json()["detail"]
    assert r.json()["status"] == 409 and r.json()["title"]
    assert http.get(mgr.url + "/openapi.json").status_code == 200
    assert _copies(mgr.tb, "fm-t") == []
    assert replicas() == []  # the backup's replicas went with the VNF
    mgr.ok("DELETE", "/vnflcm/v1/vnf_instances/fm-t")
