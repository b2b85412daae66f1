"""The testbed's forwarder pair for real: ``Testbed(forwarders=2)`` lays out two ingress
hosts, in1 and in2, each on both bridges at its documented addresses with a supervised
forwarder told of its peer and the managers. A killed forwarder is started again by its
supervisor; an ingress host's power cut takes its links and every process, and powered
on it comes back with the same MACs; teardown leaves nothing.

What the pair protocol does (roles, terms, failover) is not asserted here: the testbed
only lays it out (``active_forwarder`` is tested against stand-ins in
tests/test_testbed.py). One testbed for the module; the tests run in order and the last
one tears it down and looks for leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.errors import ConfigError
from nfvha.testbed import Testbed, _host_mac
from tests.conftest import TEST_PREFIX
from tests.e2e.conftest import _base36, _beds, keep_logs
from tests.vnfclient import wait_until


@pytest.fixture(scope="module")
def tb() -> Iterator[Testbed]:
    i = next(_beds)
    bed = Testbed(name=f"{TEST_PREFIX}p{_base36(os.getpid() % 100 * 400 + i, 3)}",
                  n_hosts=0, with_manager=True, with_forwarder=True, forwarders=2,
                  subnet=f"10.{190 + (os.getpid() + i) % 10}.0.0/16",
                  state_dir=Path("/run/nfvha-test"))
    asyncio.run(bed.up())
    try:
        yield bed
    finally:
        if bed.dir.exists():  # else the last test took them down, logs kept first
            keep_logs(bed)
        asyncio.run(bed.down())


def _addrs(netns: str) -> dict[str, str]:
    """Interface -> its IPv4 addresses (CIDR, space-separated) in ``netns``."""
    out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return {link["ifname"]: " ".join(f"{a['local']}/{a['prefixlen']}"
                                     for a in link.get("addr_info", [])
                                     if a.get("family") == "inet")
            for link in json.loads(out)}


def _mac(netns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return str(json.loads(out)[0]["address"])


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _healthy(tb: Testbed, ingress_id: str) -> bool:
    try:
        return httpx.get(f"{tb.ingress_hosts[ingress_id].url}/healthz", timeout=2,
                         verify=tb.client_context(None)).status_code == 200
    except httpx.HTTPError:
        return False


def _pids(tb: Testbed, cgroup: str) -> list[int]:
    return tb.cgroups.cgroup(cgroup).pids()


def _until_pair(tb: Testbed, timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """The members' views once one is active and the other follows it in sync."""
    deadline = time.monotonic() + timeout
    while True:
        views = asyncio.run(tb.pair_views())
        roles = {k: v for k, v in views.items() if isinstance(v, dict)}
        if sorted(v.get("role") for v in roles.values()) == ["active", "standby"] and \
                all(v.get("in_sync") or v.get("standby_in_sync") for v in roles.values()):
            return roles
        assert time.monotonic() < deadline, f"no pair in sync: {views}"
        time.sleep(0.2)


def test_two_ingress_hosts_each_run_a_forwarder_told_of_its_peer(tb: Testbed) -> None:
    assert list(tb.ingress_hosts) == ["in1", "in2"]
    in1, in2 = tb.ingress_hosts["in1"], tb.ingress_hosts["in2"]
    assert [g.mgmt_address.rsplit(".", 1)[1] for g in (in1, in2)] == ["5", "4"]
    assert [g.data_address.rsplit(".", 1)[1] for g in (in1, in2)] == ["5", "4"]
    for g, peer in ((in1, in2), (in2, in1)):
        assert g.state == "up" and _healthy(tb, g.id)
        addrs = _addrs(g.netns)
        assert addrs["mgmt0"] == f"{g.mgmt_address}/{tb.mgmt_prefixlen}"
        # Its own data address first (the primary, which the kernel names in its own ARP
        # requests), then the pair's upstream address, which each forwarder configures
        # itself and only the active one answers ARP for.
        assert addrs["eth0"] == f"{g.data_address}/{tb.prefixlen} " \
                                f"{tb.upstream_address}/{tb.prefixlen}"
        assert _mac(g.netns, "mgmt0") == _host_mac(g.mgmt_address)
        assert _mac(g.netns, "eth0") == _host_mac(g.data_address)
        # The forwarder itself (its pidfile's pid), a child of its supervisor, in the
        # host's cgroup, with its pair's flags.
        pid = tb.forwarder_process(g.id)
        assert {g.pid, pid} <= set(_pids(tb, g.cgroup)) and g.pid != pid
        argv = _cmdline(pid)
        assert argv[argv.index("--id") + 1] == g.id
        assert argv[argv.index("--peer") + 1] == peer.mirror_address
        assert argv[argv.index("--mirror-listen") + 1] == g.mirror_address
        assert argv[argv.index("--upstream-ip") + 1] == tb.upstream_address
        assert argv[argv.index("--manager") + 1] == ",".join(tb.manager_urls)
        assert argv[argv.index("--tls-cert") + 1].endswith(f"/forwarder-{g.id}.pem")
    # One of them active, the other its standby in sync, both in the same term.
    views = _until_pair(tb)
    assert sorted(v["role"] for v in views.values()) == ["active", "standby"]
    assert asyncio.run(tb.active_forwarder()) in ("in1", "in2")
    mgr = _cmdline(tb.manager_pid or 0)
    assert mgr[mgr.index("--forwarder") + 1] == f"in1={in1.url},in2={in2.url}"
    assert Testbed.load(tb.name, tb.state_dir).ingress_hosts == tb.ingress_hosts


def test_a_killed_forwarder_is_started_again_by_its_supervisor(tb: Testbed) -> None:
    supervisor = tb.ingress_hosts["in1"].pid
    ingress_id, pid = asyncio.run(tb.kill_forwarder("in1"))
    assert ingress_id == "in1"
    new = wait_until(lambda: (p := tb.forwarder_process("in1")) != pid and p, 10)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5)  # reaped by the supervisor
    assert tb.ingress_hosts["in1"].pid == supervisor and Path(f"/proc/{supervisor}").exists()
    wait_until(lambda: _healthy(tb, "in1"), 15)
    assert "--id" in _cmdline(new)


def test_an_ingress_hosts_power_cut_and_power_on(tb: Testbed) -> None:
    g = tb.ingress_hosts["in2"]
    macs = {ifname: _mac(g.netns, ifname) for ifname in ("mgmt0", "eth0")}
    before = tb.forwarder_process("in2")
    asyncio.run(tb.crash_ingress_host("in2"))
    assert tb.ingress_hosts["in2"].state == "down" and _pids(tb, g.cgroup) == []
    assert not any(asyncio.run(tb.net.link_exists(link)) for link in g.uplinks)
    assert Testbed.load(tb.name, tb.state_dir).ingress_hosts["in2"].state == "down"
    assert not _healthy(tb, "in2") and _healthy(tb, "in1")  # in1 is untouched
    with pytest.raises(ConfigError, match="ingress host in2 is down"):
        asyncio.run(tb.kill_forwarder("in2"))

    asyncio.run(tb.restore_ingress_host("in2"))
    g = tb.ingress_hosts["in2"]
    assert g.state == "up" and _healthy(tb, "in2")
    assert {ifname: _mac(g.netns, ifname) for ifname in ("mgmt0", "eth0")} == macs
    assert _addrs(g.netns)["eth0"].split()[0] == f"{g.data_address}/{tb.prefixlen}"
    assert tb.forwarder_process("in2") != before
    assert all(asyncio.run(tb.net.link_exists(link)) for link in g.uplinks)
    with pytest.raises(ConfigError, match="in2 is up; crash it first"):
        asyncio.run(tb.restore_ingress_host("in2"))


def test_teardown_leaves_nothing(tb: Testbed) -> None:
    state = tb.dir
    keep_logs(tb)  # before they go with the testbed's directory
    asyncio.run(Testbed(name=tb.name, state_dir=tb.state_dir).down())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10, check=True).stdout
    assert [ln for ln in netns.splitlines() if ln.startswith(f"{tb.name}-")] == []
    assert asyncio.run(tb.net.list_links(f"{tb.name}-")) == []
    assert not tb.cgroups.cgroup(tb.name).exists()
    assert not state.exists()
    left = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(state).encode() in (proc / "cmdline").read_bytes():
                left.append(proc.name)
    assert left == []
