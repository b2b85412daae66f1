#!/usr/bin/env python3
"""What the TCP network lock of a checkpoint costs, with and without TCP connections.

During a dump CRIU can lock the VNF's network (nftables: every packet of its netns
dropped) so that no TCP byte is acknowledged after it read the socket queues; otherwise a
restore could bring back a connection behind its peers. nfvha's ``network_lock: auto``
locks only when the VNF holds established TCP connections. One VNF
(``benchmarks/vnf_echo.py``: TCP echo and UDP echo) on a 2-host testbed, checkpointed
every ``--interval`` s, with one client at a time, each scenario on a fresh instance:

udp-unlocked
    a UDP ping-pong client, no TCP connection: ``auto`` does not lock.
udp-locked
    the same UDP client while one idle TCP connection is held open: ``auto`` locks, so
    datagrams arriving during the freeze are dropped instead of waiting in the buffer.
tcp-locked
    a TCP request/response client (``auto`` locks): a segment sent during the freeze is
    dropped and resent after the retransmission timeout (200 ms minimum on Linux).
tcp-unlocked
    the same with ``network_lock: skip`` (unsafe for restores; the cost comparison).

Reported per scenario: CRIU's frozen time per checkpoint, and what the client saw: its
round-trip times (p50, p99, max), the requests that took more than 100 ms (stalls) per
checkpoint, and for UDP the requests never answered within 1 s (lost).

Writes ``results/tcp_lock.{json,md,png}`` and ``docs/img/tcp_lock.png``. Usage::

    .venv/bin/python benchmarks/tcp_lock.py [--quick] [--seconds 20] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfvha.client import ManagerClient
from nfvha.demo import python_vnf
from nfvha.testbed import Testbed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    RESULTS,
    BenchError,
    fmt_num,
    install_signal_handlers,
    manager_call,
    manager_client,
    median,
    percentile,
    progress,
    publish,
    save_figure,
    signals_ignored,
    testbed_down,
    testbed_machine,
    wait_for,
)

VNF = Path(__file__).resolve().parent / "vnf_echo.py"
TB_NAME = "nfvbtcp"
TB_SUBNET = "10.252.0.0/16"  # outside the default testbed's and the tests' ranges
STATE_DIR = Path("/run/nfvha-bench")
TCP_PORT, UDP_PORT = 7000, 7001
STALL_S = 0.1
UDP_TIMEOUT_S = 1.0
SCENARIOS = ("udp-unlocked", "udp-locked", "tcp-locked", "tcp-unlocked")


def _deploy(m: ManagerClient, iid: str, addr: str, lock: str, interval: float) -> None:
    desc = {"id": iid, **python_vnf(VNF), "network": {"address": addr},
            "resources": {"memory": "128Mi"}, "network_lock": lock,
            "ha": {"checkpoint_interval": interval, "backups": 1, "retention": 3}}
    manager_call(m, "POST", "/nfvha/v1/vnfds", json=desc)
    manager_call(m, "POST", "/vnflcm/v1/vnf_instances",
                 json={"vnfdId": iid, "vnfInstanceId": iid})
    manager_call(m, "POST", f"/vnflcm/v1/vnf_instances/{iid}/instantiate", json={})
    wait_for(lambda: manager_call(m, "GET", f"/vnflcm/v1/vnf_instances/{iid}")["haState"]
             == "ACTIVE",
             30, f"{iid} ACTIVE")


def _remove(m: ManagerClient, iid: str) -> None:
    http = m.http  # unchecked calls, as before
    http.post(f"/vnflcm/v1/vnf_instances/{iid}/terminate", json={})
    wait_for(lambda: http.get(f"/vnflcm/v1/vnf_instances/{iid}").json()["haState"]
             == "NOT_INSTANTIATED", 30, f"{iid} terminated")
    http.delete(f"/vnflcm/v1/vnf_instances/{iid}")


def _udp_client(ip: str, seconds: float) -> tuple[list[float], int]:
    """Ping-pong over UDP for ``seconds``: round-trip times (s) and requests lost."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, UDP_PORT))
    s.settimeout(UDP_TIMEOUT_S)
    rtts: list[float] = []
    lost = 0
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seq += 1
        msg = seq.to_bytes(8, "big")
        t0 = time.monotonic()
        s.send(msg)
        try:
            while s.recv(64) != msg:  # a late answer to an earlier request: skip it
                pass
            rtts.append(time.monotonic() - t0)
        except TimeoutError:
            lost += 1
        time.sleep(0.001)
    s.close()
    return rtts, lost


def _tcp_client(ip: str, seconds: float) -> list[float]:
    """Request/response over one TCP connection for ``seconds``: round-trip times (s)."""
    s = socket.create_connection((ip, TCP_PORT), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts: list[float] = []
    end = time.monotonic() + seconds
    msg = b"x" * 256
    while time.monotonic() < end:
        t0 = time.monotonic()
        s.sendall(msg)
        got = 0
        while got < len(msg):
            part = s.recv(4096)
            if not part:
                raise BenchError("the VNF closed the TCP connection")
            got += len(part)
        rtts.append(time.monotonic() - t0)
        time.sleep(0.001)
    s.close()
    return rtts


def _checkpoint_stats(m: ManagerClient, iid: str, seen: dict[int, dict[str, Any]]) -> None:
    for c in manager_call(m, "GET", "/nfvha/v1/checkpoints", params={"vnfInstanceId": iid}):
        seen.setdefault(int(c["seq"]), c.get("criuStats", {}))


def run_scenario(tb: Testbed, http: ManagerClient, name: str, n: int, seconds: float,
                 interval: float) -> dict[str, Any]:
    addr = tb.vnf_address(n)
    ip = addr.split("/")[0]
    iid = f"lock-{n}"
    _deploy(http, iid, addr, "skip" if name == "tcp-unlocked" else "auto", interval)
    held: socket.socket | None = None
    seen: dict[int, dict[str, Any]] = {}
    try:
        wait_for(lambda: _connects(ip), 10, "the VNF's TCP port")
        if name == "udp-locked":
            held = socket.create_connection((ip, TCP_PORT), timeout=5)
        time.sleep(interval * 2)  # the lock choice is made per dump: let one happen
        _checkpoint_stats(http, iid, seen)
        first = max(seen, default=0)
        progress(f"{name}: {seconds:g} s of client traffic")
        lost = 0
        import threading

        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval / 2):
                _checkpoint_stats(http, iid, seen)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            if name.startswith("udp"):
                rtts, lost = _udp_client(ip, seconds)
            else:
                rtts = _tcp_client(ip, seconds)
        finally:
            stop.set()
            poller.join(5)
        _checkpoint_stats(http, iid, seen)
    finally:
        if held is not None:
            held.close()
        _remove(http, iid)
    frozen = [s["frozen_time_us"] / 1000 for seq, s in seen.items()
              if seq > first and "frozen_time_us" in s]
    checkpoints = max(len(frozen), 1)
    stalls = sum(1 for r in rtts if r > STALL_S)
    return {"scenario": name, "lock": "nftables" if name.endswith("-locked") else "none",
            "checkpoints": len(frozen), "frozen_ms": {"median": median(frozen),
                                                      "p95": percentile(frozen, 95),
                                                      "max": max(frozen, default=float("nan"))},
            "requests": len(rtts) + lost, "lost": lost,
            "rtt_ms": {"p50": median(rtts) * 1e3, "p99": percentile(rtts, 99) * 1e3,
                       "max": max(rtts, default=float("nan")) * 1e3},
            "stalls": stalls, "stalls_per_checkpoint": stalls / checkpoints,
            "stall_ms_total": sum(r for r in rtts if r > STALL_S) * 1e3}


def _connects(ip: str) -> bool:
    try:
        socket.create_connection((ip, TCP_PORT), timeout=0.5).close()
        return True
    except OSError:
        return False


def markdown(r: dict[str, Any]) -> str:
    rows = [f"| {s['scenario']} | {s['lock']} | {s['checkpoints']} | "
            f"{fmt_num(s['frozen_ms']['median'], 1)} / {fmt_num(s['frozen_ms']['p95'], 1)} | "
            f"{fmt_num(s['rtt_ms']['p50'], 2)} | {fmt_num(s['rtt_ms']['p99'], 1)} | "
            f"{fmt_num(s['rtt_ms']['max'], 0)} | {fmt_num(s['stalls_per_checkpoint'], 2)} | "
            f"{s['lost']} of {s['requests']} |" for s in r["scenarios"]]
    return "\n".join([
        f"# TCP network lock ({r['run']['name']})", "",
        f"Checkpoint every {r['config']['interval_s']:g} s, {r['config']['seconds']:g} s of "
        "traffic per scenario, one client at a time.", "",
        "| Scenario | Lock | Checkpoints | Frozen ms p50 / p95 | RTT p50 ms | RTT p99 ms | "
        "RTT max ms | Stalls > 100 ms per checkpoint | UDP lost |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|", *rows, ""])


def plot(r: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["scenario"] for s in r["scenarios"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [s["frozen_ms"]["median"] for s in r["scenarios"]], 0.4,
           label="frozen per checkpoint (median)")
    ax.bar([i + 0.2 for i in x], [s["rtt_ms"]["max"] for s in r["scenarios"]], 0.4,
           label="longest client round trip")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ms")
    ax.set_title(f"TCP network lock during checkpoints ({r['run']['name']})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, paths)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="6 s per scenario")
    ap.add_argument("--seconds", type=float, default=None, help="traffic per scenario (20)")
    ap.add_argument("--interval", type=float, default=0.5, help="checkpoint interval, s")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    a = ap.parse_args(argv)
    seconds = a.seconds or (6.0 if a.quick else 20.0)
    if os.geteuid() != 0:
        print("tcp_lock: needs root (namespaces, cgroups, CRIU)", file=sys.stderr)
        return 2
    install_signal_handlers()
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "tcp_lock",
        "run": {"name": "tcp_lock-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(started)),
                "started": started},
        "machine": testbed_machine(TB_NAME),
        "config": {"quick": a.quick, "seconds": seconds, "interval_s": a.interval,
                   "stall_s": STALL_S, "udp_timeout_s": UDP_TIMEOUT_S,
                   "testbed": {"name": TB_NAME, "subnet": TB_SUBNET}},
        "scenarios": [],
    }
    tb = Testbed(name=TB_NAME, n_hosts=2, with_manager=True, subnet=TB_SUBNET,
                 state_dir=STATE_DIR)
    t0 = time.perf_counter()
    try:
        asyncio.run(tb.up())
        with manager_client(tb) as http:
            for n, name in enumerate(SCENARIOS, 1):
                result["scenarios"].append(run_scenario(tb, http, name, n, seconds,
                                                        a.interval))
    except (KeyboardInterrupt, BenchError) as exc:
        print(f"tcp_lock: stopped: {exc!r}", file=sys.stderr)
        return 1
    finally:
        with signals_ignored():
            testbed_down(tb, "tcp_lock")
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["complete"] = True
    result["elapsed_s"] = time.perf_counter() - t0
    by = {s["scenario"]: s for s in result["scenarios"]}
    result["summary"] = {
        "udp_lost_locked": by["udp-locked"]["lost"],
        "udp_lost_unlocked": by["udp-unlocked"]["lost"],
        "tcp_max_rtt_ms_locked": by["tcp-locked"]["rtt_ms"]["max"],
        "tcp_max_rtt_ms_unlocked": by["tcp-unlocked"]["rtt_ms"]["max"]}
    result["targets"] = [{
        "target": "a VNF without TCP connections loses no datagram to checkpoints",
        "value": by["udp-unlocked"]["lost"], "pass": by["udp-unlocked"]["lost"] == 0}]
    publish(result, "tcp_lock", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']} lost", doc_img=not a.no_doc_img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
