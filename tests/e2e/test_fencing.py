"""Never two copies, whatever fails: the lease guard, agent restarts and STONITH, for real.

Every scenario runs a flow monitor under client traffic on a 3-host testbed, injects a
fault into nfvha's own parts (the agent killed, restarted, stopped; the host cut off or
crashed; a fence driver that fails), and a watcher reads every host's VNF cgroups every
2 ms: at no moment may two hosts run a live process of the VNF. At the end the VNF serves
on exactly one host with at least the state of its last checkpoint.

``make test`` runs each scenario once; ``make soak`` sets ``NFVHA_REPS=20``.
"""

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

import pytest

from tests.e2e.conftest import Mgr, manager_bed
from tests.e2e.test_manager import _answers, _count, _warm, flowmon
from tests.vnfclient import wait_until

REPS = int(os.environ.get("NFVHA_REPS", "1"))
GRACE = 3.0  # the agent grace (the default): longer than an agent restart
AGENT_ARGS = ["--fencing-timeout", "0.5", "--agent-grace", str(GRACE)]
MANAGER_ARGS = ["--suspect-after", "0.3", "--fencing-timeout", "0.5"]

def _live(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def copies(tb: Any, iid: str) -> list[str]:
    """Hosts whose sandbox cgroup of this VNF holds a live (not zombie) process now."""
    out = []
    for hid in tb.hosts:
        for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            procs = Path(f"{base}/{tb.name}/{hid}/vnf/{iid}/cgroup.procs")
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except OSError:
                continue
            if any(_live(p) for p in pids):
                out.append(hid)
            break
    return out


class CopyWatch:
    """Reads every host's cgroup of the VNF every 2 ms in a thread; ``seen`` holds every
    moment at which more than one host ran it."""

    def __init__(self, tb: Any, iid: str) -> None:
        self.tb, self.iid = tb, iid
        self.seen: list[tuple[float, list[str]]] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            c = copies(self.tb, self.iid)
            self.scans += 1
            if len(c) > 1:
                self.seen.append((time.time(), c))
            time.sleep(0.002)

    def __enter__(self) -> CopyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self) -> None:
        assert self.scans > 20, f"the watcher scanned only {self.scans} times"
        assert self.seen == [], f"two live copies of {self.iid}: {self.seen[:3]}"


@pytest.fixture
def fmgr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mgr]:
    """A 3-host testbed with a manager; ``@pytest.mark.fencing(...)`` sets the driver."""
    marker = request.node.get_closest_marker("fencing")
    fence_agent = None
    if marker is not None and marker.args[0] != "testbed":
        # A broken driver: the manager must fall back to the lease wait.
        bad = tmp_path / "fence-broken.sh"
        bad.write_text(marker.args[0])
        bad.chmod(0o755)
        fence_agent = [str(bad)]
    with manager_bed("f", 110, 30, agent_args=AGENT_ARGS, manager_args=MANAGER_ARGS,
                     fencing=marker is not None, fence_agent=fence_agent,
                     fence_timeout=1.0) as m:
        yield m


def _deploy(m: Mgr, python: str, iid: str) -> tuple[dict[str, Any], str, Any, int]:
    addr = m.tb.vnf_address(1)
    ip = addr.split("/")[0]
    vnf = m.deploy(flowmon(addr, python), iid)
    flow, sent = _warm(m, ip, iid)
    return vnf, ip, flow, sent


def _serving_once(m: Mgr, ip: str, iid: str, flow: Any, sent: int) -> str:
    """The VNF is ACTIVE on exactly one host, which runs it, with its warmed state."""
    wait_until(lambda: m.vnf(iid)["haState"] == "ACTIVE", 20)
    host = m.vnf(iid)["host"]
    wait_until(lambda: copies(m.tb, iid) == [host], 10)
    wait_until(lambda: _answers(ip), 10)
    assert _count(ip, flow.key) >= sent
    return str(host)


def _heals(m: Mgr, iid: str) -> list[dict[str, Any]]:
    return m.heals(iid)


@pytest.mark.parametrize("rep", range(REPS))
def test_agent_killed_and_not_restarted_its_guard_fences_and_the_vnf_moves(
        fmgr: Mgr, python_bin: str, rep: int) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fk")
    old = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "fk") as watch:
        killed = time.time()
        asyncio.run(fmgr.tb.kill_agent(old, restart=False))
        op = fmgr.wait_heal("fk", timeout=GRACE + 15)
        # Not before the agent grace: a restart within it must be a non-event.
        assert op["nfvha"]["timestamps"]["detected"] - killed >= GRACE - 0.2
        assert op["nfvha"]["failureType"] == "host-loss"
        assert "lease guard" in op["nfvha"]["detail"]
        assert op["nfvha"]["targetHost"] != old
        _serving_once(fmgr, ip, "fk", flow, sent)
    watch.check()
    hosts = {h["id"]: h for h in fmgr.ok("GET", "/nfvha/v1/hosts")}
    assert hosts[old]["state"] == "UP" and hosts[old]["fenced"] is True


@pytest.mark.parametrize("rep", range(REPS))
def test_agent_killed_and_restarted_within_its_grace_is_a_non_event(
        fmgr: Mgr, python_bin: str, rep: int) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fr")
    host = vnf["host"]
    agent_url = fmgr.tb.host(host).url + "/v1/instances/fr"
    pid = fmgr.agents.get(agent_url).json()["pid"]
    with flow, CopyWatch(fmgr.tb, "fr") as watch:
        old_agent = asyncio.run(fmgr.tb.kill_agent(host))  # its supervisor restarts it
        wait_until(lambda: fmgr.tb.agent_process(host) != old_agent, 10)
        # The new agent adopts the VNF: the same process, running (or in a checkpoint the
        # manager already asked the new agent for).
        wait_until(lambda: fmgr.agents.get(agent_url).json(), 15, ignore=(Exception,))
        adopted = fmgr.agents.get(agent_url).json()
        assert adopted["pid"] == pid and adopted["state"] in ("RUNNING", "CHECKPOINTING"), \
            adopted
        time.sleep(GRACE + 0.5)  # past the grace: the guard was fed by the new agent
        flow.send(10)
        wait_until(lambda: _count(ip, flow.key) == sent + 10, 5)
    watch.check()
    assert _heals(fmgr, "fr") == []
    assert fmgr.vnf("fr")["host"] == host and copies(fmgr.tb, "fr") == [host]
    # Checkpoints go on through the new agent.
    fmgr.wait_checkpoint_after("fr", time.time())


@pytest.mark.parametrize("rep", range(REPS))
def test_agent_restarted_after_its_grace_finds_its_vnf_fenced_and_moved(
        fmgr: Mgr, python_bin: str, rep: int) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fa")
    old = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "fa") as watch:
        asyncio.run(fmgr.tb.kill_agent(old, restart=False))
        op = fmgr.wait_heal("fa", timeout=GRACE + 15)
        asyncio.run(fmgr.tb.start_agent(old))
        # The restarted agent reports the fenced sandbox; the manager removes it, and the
        # host's fence lifts once the agent has seen it through.
        wait_until(lambda: not any(i["id"] == "fa" for h in fmgr.ok("GET", "/nfvha/v1/hosts")
                                   if h["id"] == old for i in h["instances"]), 20)
        wait_until(lambda: {h["id"]: h for h in fmgr.ok("GET", "/nfvha/v1/hosts")}[old]
                   ["fenced"] is False, 10)
        assert _serving_once(fmgr, ip, "fa", flow, sent) == op["nfvha"]["targetHost"]
    watch.check()


@pytest.mark.parametrize("seconds", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("rep", range(REPS))
def test_agent_stopped(fmgr: Mgr, python_bin: str, rep: int, seconds: float) -> None:
    """SIGSTOP of the agent (swap, a stuck syscall): shorter than the grace, nothing
    happens; longer, the guard fences and the VNF moves; never two copies either way."""
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fs")
    host = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "fs") as watch:
        asyncio.run(fmgr.tb.stop_agent(host, seconds))
        if seconds < GRACE:
            time.sleep(1.0)
            assert _heals(fmgr, "fs") == []
            assert _serving_once(fmgr, ip, "fs", flow, sent) == host
        else:
            op = fmgr.wait_heal("fs", timeout=15)
            assert op["nfvha"]["targetHost"] != host
            _serving_once(fmgr, ip, "fs", flow, sent)
            # The continued agent sees the fence through: its copy stays dead.
            wait_until(lambda: {h["id"]: h for h in fmgr.ok("GET", "/nfvha/v1/hosts")}[host]
                       ["fenced"] is False, 15)
            time.sleep(1.0)
    watch.check()


@pytest.mark.parametrize("rep", range(REPS))
def test_guard_killed_is_restarted_by_the_agent_and_the_vnf_stays(
        fmgr: Mgr, python_bin: str, rep: int) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fg")
    host = vnf["host"]
    guard = fmgr.tb.guard_process(host)
    assert guard is not None
    with flow, CopyWatch(fmgr.tb, "fg") as watch:
        os.kill(guard, signal.SIGKILL)
        wait_until(lambda: fmgr.tb.guard_process(host) not in (None, guard), 5)
        time.sleep(1.0)
        _serving_once(fmgr, ip, "fg", flow, sent)
    watch.check()


@pytest.mark.parametrize("fault", ["partition", "crash"])
@pytest.mark.parametrize("rep", range(REPS))
def test_host_cut_off_or_crashed(fmgr: Mgr, python_bin: str, rep: int, fault: str) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fh")
    old = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "fh") as watch:
        if fault == "partition":
            asyncio.run(fmgr.tb.partition_host(old))
        else:
            asyncio.run(fmgr.tb.crash_host(old))
        op = fmgr.wait_heal("fh", timeout=15)
        assert op["nfvha"]["failureType"] == "host-loss"
        _serving_once(fmgr, ip, "fh", flow, sent)
        if fault == "partition":
            asyncio.run(fmgr.tb.partition_host(old, cut=False))
            time.sleep(1.5)
            assert copies(fmgr.tb, "fh") == [op["nfvha"]["targetHost"]]
    watch.check()


@pytest.mark.fencing("testbed")
@pytest.mark.parametrize("rep", range(REPS))
def test_host_crash_is_fenced_and_moved_without_waiting_out_the_lease(
        fmgr: Mgr, python_bin: str, rep: int) -> None:
    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "ff")
    old = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "ff") as watch:
        asyncio.run(fmgr.tb.crash_host(old))
        fmgr.wait_heal("ff", timeout=15)
        _serving_once(fmgr, ip, "ff", flow, sent)
    watch.check()
    fences = fmgr.ok("GET", "/nfvha/v1/fences", params={"host": old})
    assert [f["state"] for f in fences] == ["COMPLETED"], fences
    assert fences[0]["result"]["status"] == "off" and fences[0]["trigger"] == "host-loss"
    log = (fmgr.tb.log_dir / "manager.log").read_text()
    assert "wait-fenced" not in log or "no fence confirmed" not in log


@pytest.mark.fencing("#!/bin/sh\ncat >/dev/null\necho 'Failed: unable to connect' >&2\n"
                     "exit 1\n")
def test_a_failing_fence_driver_falls_back_to_the_lease_and_raises_an_alarm(
        fmgr: Mgr, python_bin: str) -> None:
    _fallback(fmgr, python_bin, "fx")


@pytest.mark.fencing("#!/bin/sh\ncat >/dev/null\nsleep 30\n")
def test_a_hanging_fence_driver_is_cut_at_its_timeout_and_the_lease_covers(
        fmgr: Mgr, python_bin: str) -> None:
    _fallback(fmgr, python_bin, "fy")


def _fallback(m: Mgr, python: str, iid: str) -> None:
    vnf, ip, flow, sent = _deploy(m, python, iid)
    old = vnf["host"]
    with flow, CopyWatch(m.tb, iid) as watch:
        asyncio.run(m.tb.partition_host(old))  # alive but cut off: the lease is what stops it
        m.wait_heal(iid, timeout=15)
        _serving_once(m, ip, iid, flow, sent)
        wait_until(lambda: [f["state"] for f in m.ok("GET", "/nfvha/v1/fences",
                                                       params={"host": old})] == ["FAILED"], 10)
        alarms = [a for a in m.alarms() if a["faultType"] == "fence-failed"]
        assert alarms and old in alarms[-1]["probableCause"]
        asyncio.run(m.tb.partition_host(old, cut=False))
        time.sleep(1.5)
    watch.check()
    metrics = m.http.get(m.url + "/metrics").text
    assert 'nfvha_fences_total{result="failed"} 1.0' in metrics


@pytest.mark.fencing("testbed")
def test_operator_fence_through_the_cli_moves_the_vnf(fmgr: Mgr, python_bin: str) -> None:
    from nfvha.cli import main

    vnf, ip, flow, sent = _deploy(fmgr, python_bin, "fo")
    old = vnf["host"]
    with flow, CopyWatch(fmgr.tb, "fo") as watch:
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            assert main(["inject", "fence", old, "--name", fmgr.tb.name, "--url", fmgr.url,
                         "--token-file", str(fmgr.tb.operator_token_file),
                         "--ca-file", str(fmgr.tb.ca_file), "--json"]) == 0
        op = fmgr.wait_heal("fo", timeout=15)
        assert op["nfvha"]["targetHost"] != old
        _serving_once(fmgr, ip, "fo", flow, sent)
    watch.check()
    assert [f["trigger"] for f in fmgr.ok("GET", "/nfvha/v1/fences")] == ["manual"]
