"""Containment that holds today (issue 12, in part): a fork bomb stops at the sandbox's
pids limit without disturbing a neighbour, the VNF cannot gain privileges (no_new_privs,
kept across restores), and what nfvha writes about it is private (0600/0700)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.vnfclient import wait_until

# Forks sleeping children until the kernel refuses, then answers "N" on UDP 7100 with how
# many it got and why it stopped.
BOMB = r"""
import os, socket, time
n, why = 0, "no limit met"
while n < 5000:
    try:
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
        n += 1
    except OSError as exc:
        why = exc.strerror
        break
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7100))
while True:
    _, peer = s.recvfrom(64)
    s.sendto(f"{n} {why}".encode(), peer)
"""
ECHO = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 7100))\nwhile True:\n    d, p = s.recvfrom(64)\n    s.sendto(d, p)\n")


@pytest.fixture(scope="module")
def smgr() -> Iterator[Mgr]:
    with manager_bed("s", 50, 10, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


def _ask(ip: str, msg: bytes = b"N", timeout: float = 0.5) -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(msg, (ip, 7100))
        return s.recv(128).decode()
    except OSError:
        return None
    finally:
        s.close()


def _no_new_privs(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return line.split()[1] == "1"
    return False


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_neighbour_serves_on(
        smgr: Mgr, python_bin: str) -> None:
    m = smgr
    nb_addr, bomb_addr = m.tb.vnf_address(2), m.tb.vnf_address(3)
    m.deploy({"id": "neighbour", "command": [python_bin, "-c", ECHO],
              "network": {"address": nb_addr}, "ha": {"checkpoint_interval": 1}}, "nb")
    nb_ip = nb_addr.split("/")[0]
    wait_until(lambda: _ask(nb_ip, b"hi") == "hi", 10)
    m.deploy({"id": "bomb", "command": [python_bin, "-c", BOMB],
              "network": {"address": bomb_addr}, "resources": {"pids": 40},
              "ha": {"checkpoint_interval": 1, "backups": 1}}, "bomb")
    bomb_ip = bomb_addr.split("/")[0]
    answer = wait_until(lambda: _ask(bomb_ip), 20)
    n, _, why = answer.partition(" ")
    assert int(n) < 40 and "unavailable" in why.lower(), answer  # EAGAIN at pids.max
    assert _ask(nb_ip, b"still") == "still"

    # The VNF cannot gain privileges, before and after a restore elsewhere.
    vnf = m.vnf("bomb")
    assert _no_new_privs(vnf["pid"])
    first = max((c["seq"] for c in m.checkpoints("bomb")), default=0)
    wait_until(lambda: any(c["seq"] > first and len(c["replicas"]) > 1
                           for c in m.checkpoints("bomb")), 15)
    heals = len([o for o in m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs",
                                 params={"vnfInstanceId": "bomb"})
                 if o["operation"] == "HEAL"])
    asyncio.run(m.tb.crash_host(vnf["host"]))
    try:
        wait_until(lambda: len([o for o in m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs",
                                                params={"vnfInstanceId": "bomb"})
                                if o["operation"] == "HEAL"
                                and o["operationState"] == "COMPLETED"]) > heals, 30)
        moved = m.vnf("bomb")
        assert moved["host"] != vnf["host"]
        assert _no_new_privs(moved["pid"])
        # Its state (the children it got) came along.
        wait_until(lambda: _ask(bomb_ip) == answer, 5)

        # What nfvha wrote about it is private: checkpoint images, the VNF's log.
        images = list((m.tb.dir / moved["host"] / "checkpoints" / "bomb").rglob("*.img"))
        assert images
        for f in images[:20]:
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f, oct(f.stat().st_mode))
        for d in {f.parent for f in images}:
            assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, d
        log = m.tb.log_dir / "vnf" / "bomb.log"
        assert stat.S_IMODE(os.stat(log).st_mode) & 0o077 == 0, oct(os.stat(log).st_mode)
    finally:
        asyncio.run(m.tb.revive_host(vnf["host"]))


def test_an_exec_probe_runs_inside_the_vnf_sandbox(smgr: Mgr, python_bin: str) -> None:
    """The probe passes only inside the VNF's namespaces, not beside the manager (where
    it would fail, and the VNF be declared hung within half a second)."""
    m = smgr
    addr = m.tb.vnf_address(4)
    # Its hostname and its address on a local interface: its UTS and network namespaces.
    check = f"test \"$(hostname)\" = probed && ip -o addr | grep -q ' {addr} '"
    m.deploy({"id": "probed", "command": [python_bin, "-c", ECHO],
              "network": {"address": addr},
              "ha": {"checkpoint_interval": 1, "backups": 0,
                     "probe": {"type": "exec", "command": ["sh", "-c", check],
                               "interval": 0.1, "timeout": 1.0, "failure_threshold": 3}}},
             "probed")
    time.sleep(3)
    ops = m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": "probed"})
    assert [o for o in ops if o["operation"] == "HEAL"] == [], ops
    assert m.vnf("probed")["haState"] == "ACTIVE"
    # And a probe that fails in there is seen: the VNF is declared hung and healed.
    m.ok("POST", "/nfvha/v1/vnf_instances/probed/inject", json={"fault": "kill"})
    wait_until(lambda: any(o["operation"] == "HEAL" and o["operationState"] == "COMPLETED"
                           for o in m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs",
                                         params={"vnfInstanceId": "probed"})), 20)
