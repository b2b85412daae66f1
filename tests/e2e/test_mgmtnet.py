"""A VNF reaches no control port: the management network is apart from the data network.

A real VNF is deployed on a testbed with manager and forwarder pair; from its network
namespace a probe tries every control port (manager HTTP and UDP, each agent, each lease
guard, each forwarder's API), first as the VNF's routes stand, then as a hostile VNF
would (it is root in its netns): routing each management address through the netns on
the data network that holds it. Nothing may answer. The same probe run from the
management side, and towards a listener on the data network from the VNF, must get
answers, so a probe that cannot reach anything proves nothing.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nfvha.ha.liveness import encode, host_key, liveness_key, peer_key
from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.e2e.test_manager import flowmon

ANSWERED = {"connected", "answered"}

# Runs in the netns it is started in: one connection attempt or datagram per target,
# then (with "routes") host routes through chosen next hops, and every attempt again.
PROBE = r"""
import json, socket, subprocess, sys
spec = json.loads(sys.argv[1])

def attempt(phase):
    out = {}
    for ip, port, label in spec["tcp"]:
        s = socket.socket()
        s.settimeout(spec["timeout"])
        try:
            s.connect((ip, port))
            out[label] = "connected"
        except OSError as exc:
            out[label] = type(exc).__name__
        finally:
            s.close()
    for ip, port, label, payloads in spec["udp"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(spec["timeout"])
        try:
            s.sendto(bytes.fromhex(payloads[phase]), (ip, port))
            s.recvfrom(4096)
            out[label] = "answered"
        except OSError as exc:
            out[label] = type(exc).__name__
        finally:
            s.close()
    return out

result = {"plain": attempt("plain")}
if spec["routes"]:
    for dest, via, mac in spec["routes"]:
        if mac:
            subprocess.run(["ip", "neigh", "replace", via, "lladdr", mac, "dev", "eth0",
                            "nud", "permanent"], check=True, timeout=10)
        subprocess.run(["ip", "route", "replace", dest + "/32", "via", via, "dev", "eth0"],
                       check=True, timeout=10)
    result["hostile"] = attempt("hostile")
print(json.dumps(result))
"""


@pytest.fixture
def nmgr() -> Iterator[Mgr]:
    with manager_bed("n", 90, 10, with_forwarder=True, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


class _DataListeners:
    """A TCP listener and a UDP echo on the data gateway (root netns): what a VNF may
    reach, so the probe's own ability to connect and get answers is checked too."""

    def __init__(self, address: str) -> None:
        self.tcp = socket.create_server((address, 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 0))
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._echo, daemon=True)
        self._thread.start()

    def _echo(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.udp.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.tcp.close()
        self.udp.close()


def _probe(spec: dict[str, Any], netns: str | None) -> dict[str, dict[str, str]]:
    argv = [sys.executable, "-c", PROBE, json.dumps(spec)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"probe in {netns or 'the root netns'}: {done.stderr}"
    result: dict[str, dict[str, str]] = json.loads(done.stdout)
    return result


def _mac(netns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return str(json.loads(out)[0]["address"])


def _inet(netns: str) -> list[tuple[str, str]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return [(link["ifname"], f"{a['local']}/{a['prefixlen']}") for link in json.loads(out)
            for a in link.get("addr_info", []) if a.get("family") == "inet"]


def test_a_vnf_reaches_no_control_port_and_the_management_side_reaches_all(
        nmgr: Mgr, python_bin: str) -> None:
    tb = nmgr.tb
    data = ipaddress.ip_network(tb.subnet)
    mgmt = ipaddress.ip_network(str(tb.mgmt_subnet))
    addr = tb.vnf_address(1)
    vnf = nmgr.deploy(flowmon(addr, python_bin), "fm-n")
    vnf_ns = f"{tb.host(vnf['host']).netns}-fm-n"

    # The sandbox is on the data network only; the hosts have no data address at all.
    assert _inet(vnf_ns) == [("lo", "127.0.0.1/8"), ("eth0", addr)]
    for h in tb.hosts.values():
        assert [(dev, a) for dev, a in _inet(h.netns) if dev != "lo"] == \
            [("mgmt0", f"{h.address}/{mgmt.prefixlen}")], h.host_id

    # With the cluster CA each host signs with a key of its own and guards ping with
    # the peer key; without, one key from the token.
    secret = bytes.fromhex((tb.pki_dir / "liveness.secret").read_text().strip()) \
        if tb.tls else liveness_key(tb.token)

    def key(kind: str, host: str) -> bytes:
        if not tb.tls:
            return secret
        return host_key(secret, host) if kind == "hb" else peer_key(secret)

    def datagrams(kind: str, port_owner: str) -> dict[str, str]:
        """A signed message the daemon answers when it gets it: a heartbeat of an
        unknown host (the manager acks it and registers nothing) or a peer ping (the
        guard pongs). One host id per phase: the manager answers a sequence once."""
        return {phase: encode(key(kind, host := f"probe-{phase}-{port_owner}"),
                              {"k": kind, "h": host, "i": 1, "s": 1}).hex()
                for phase in ("plain", "hostile", "mgmt")}

    mgr_ip = tb.mgmt_gateway
    fwds = list(tb.ingress_hosts.values())  # a pair: in1 and in2
    tcp = [[mgr_ip, 8600, "manager"],
           *([g.mgmt_address, 8800, f"forwarder {g.id}"] for g in fwds),
           *([h.address, 8700, f"agent {h.host_id}"] for h in tb.hosts.values())]
    udp = [[mgr_ip, 8600, "manager udp", datagrams("hb", "manager")],
           *([h.address, 8700, f"guard {h.host_id}", datagrams("ping", h.host_id)]
             for h in tb.hosts.values())]
    # The hostile VNF's next hop to each address: the netns on the data network that
    # holds it (the root's and the ingress's data addresses; for a host, a made-up
    # neighbour with the MAC of its br0, since it has no data address to route to).
    routes: list[list[Any]] = [[mgr_ip, tb.gateway, None],
                               *([g.mgmt_address, g.data_address, None] for g in fwds)]
    for i, h in enumerate(tb.hosts.values()):
        routes.append([h.address, str(data.broadcast_address - 10 - i), _mac(h.netns, "br0")])

    listeners = _DataListeners(tb.gateway)
    try:
        reach = [[tb.gateway, listeners.tcp.getsockname()[1], "data listener"]]
        echo = [[tb.gateway, listeners.udp.getsockname()[1], "data echo",
                 {p: b"hello".hex() for p in ("plain", "hostile", "mgmt")}]]
        from_vnf = _probe({"tcp": [*tcp, *reach], "udp": [*udp, *echo], "routes": routes,
                           "timeout": 0.5}, vnf_ns)
    finally:
        listeners.close()

    for phase in ("plain", "hostile"):
        got = from_vnf[phase]
        assert got["data listener"] == "connected" and got["data echo"] == "answered", got
        reached = {k: v for k, v in got.items() if v in ANSWERED and not k.startswith("data")}
        assert reached == {}, f"from the VNF ({phase} routes) a control port answered: {got}"

    # The management side: every control port answers the very same probe.
    from_mgmt = _probe({"tcp": tcp, "udp": [[*u[:3], {"plain": u[3]["mgmt"]}] for u in udp],
                        "routes": [], "timeout": 2.0}, None)["plain"]
    assert all(v in ANSWERED for v in from_mgmt.values()), from_mgmt
    auth = {"Authorization": f"Bearer {tb.token}"}
    for url in [tb.manager_url, *tb.forwarder_urls.values(),
                *(h.url for h in tb.hosts.values())]:
        assert httpx.get(f"{url}/healthz", headers=auth, timeout=5,
                         verify=tb.client_context(None)).status_code == 200, url
    # And the VNF is still served on the data network.
    assert nmgr.vnf("fm-n")["haState"] == "ACTIVE"
