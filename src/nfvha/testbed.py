"""Emulated hosts on one machine: network namespaces on two bridges, one agent each.

Layout for a testbed named ``T`` with N hosts (all names derive from ``T``, so a
teardown after an interrupted run finds everything by prefix alone)::

    root netns:   T-mg  management bridge (172.31.X.1/24): manager :8600 (HTTP, UDP)
                  T-br  data bridge (10.X.0.1/16): test clients, the manager's probes
    netns T-h1:   mgmt0 (172.31.X.11/24) ─ veth T-h1m ─ T-mg: agent :8700, guard (UDP)
                  eth0 ─ veth T-h1 ─ T-br, in bridge br0 (no address)
                  └── veth nv… ── netns T-h1-<instance> (the VNF's eth0, its IP and MAC)
    netns T-in1:  mgmt0 (172.31.X.5) ─ T-in1m ─ T-mg: forwarder in1, control API :8800,
                  mirror stream :8801
                  eth0 (10.X.0.5/16; service addresses and the upstream address while
                  in1 is active) ─ T-in1 ─ T-br
    netns T-in2:  mgmt0 (172.31.X.4) ─ T-in2m ─ T-mg: forwarder in2, the same ports
                  eth0 (10.X.0.4/16; the same addresses while in2 is active) ─ T-in2 ─ T-br
    cgroup T/h1:  agent/ (the agent)   vnf/<instance>/ (each VNF)
    cgroup T/forwarder-in1, T/forwarder-in2: each forwarder and its supervisor

The two ingress hosts run the forwarder pair: one active, owning the service addresses
and the pair's upstream address (10.X.0.3, the source VNFs see client flows from); the
other standby, fed the active's flows and packet log over the mirror stream. The
testbed configures neither kind of address: the active forwarder adds them, and the
managers refuse them (and each ingress host's own data address) to VNFs. Each forwarder
gets ``--id inK``, its peer's mirror address, every manager and a certificate naming it
(``nfvha://forwarder/inK``), and runs supervised: killed, it is started again after
``agent_restart_delay``, as agents are. With ``forwarders=1`` there is one ingress host,
laid out as before pairs: netns ``T-in`` (mgmt .5, data .0.5, veths ``T-i0m`` and
``T-i0``), cgroup ``T/forwarder``, no supervisor.

With ``managers=N`` (3 or 5) the control plane is a cluster, each member on an
emulated management host of its own, so that one member's power cut takes its etcd
member and its manager down together, as on real hardware::

    netns T-mK:   mgmt0 (172.31.X.(5+K)/24) ─ veth T-mKm ─ T-mg: manager :8600 (HTTP,
                  UDP liveness), etcd member mK (client :2379, peer :2380)
                  eth0 (10.X.0.(5+K)/16) ─ veth T-mK ─ T-br: the manager's VNF probes
    cgroup T/mK:  etcd/ (the member)   manager/ (the manager)

K runs 1..N, so the management addresses .6-.10 lie between the ingress (.5) and the
first compute host (.11), the data addresses .0.6-.0.10 beside the forwarder's .0.5,
and a data address is reserved (refused to VNFs) like the gateway's. The etcd members
form one static cluster (data under ``etcd-mK/`` of the testbed's directory, its
"disk": kept across a power cut, removed by ``down``) with raft timings scaled for the
managers' 1 s leader lease. Agents get every manager URL (``--manager A,B,C``). With
one manager (the default) the layout is the single-manager one above, unchanged.

The two networks are separate subnets and nothing routes between them; in every
namespace on both (root, ingress, hosts) the table ``ip nfvha_T`` drops what arrives
from the data side for a management address, since Linux accepts a packet for any
of its own addresses on any interface. A VNF therefore reaches no control port.

A host crash is a power loss: its uplinks are deleted first, so nothing it sends
afterwards reaches anyone, then every process in its cgroup is killed; a management
host's crash (``crash_manager_host``) is the same, etcd member included, and so is an
ingress host's (``crash_ingress_host``), forwarder and supervisor included. Powered on
again, a host keeps the MACs of its addressed interfaces, as a real NIC does, so that
its peers' ARP caches stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.errors import ConfigError, NfvhaError
from nfvha.store.etcd import ETCD_MEMBER_FLAGS
from nfvha.vim.cgroups import CgroupDriver, CgroupLimits
from nfvha.vim.hostnet import HostNetwork

__all__ = ["AGENT_PORT", "IngressHost", "ManagerHost", "Testbed", "TestbedHost"]

log = logging.getLogger(__name__)

AGENT_PORT = 8700
MANAGER_PORT = 8600
FORWARDER_PORT = 8800
#: Where a forwarder of a pair takes its peer's mirror stream (management network).
FORWARDER_MIRROR_PORT = 8801
#: Forwarders: one ingress host (as before pairs) or an active/standby pair of them.
FORWARDER_COUNTS = (1, 2)
#: The last address octet of each ingress host of a pair, on both networks (in1 keeps
#: the single forwarder's .5); .0.3 on the data network is the pair's upstream address.
_INGRESS_OCTETS = {"in1": 5, "in2": 4}
_UPSTREAM_OCTET = 3
DEFAULT_SUBNET = "10.250.0.0/16"
#: Removes a table whether or not it exists (nft < 1.0.8 has no ``destroy``), in one
#: transaction with what follows: a table an interrupted run left is replaced, not added to.
_DROP_TABLE = "add table ip {table}\ndelete table ip {table}\n"
#: Inside each emulated host and the ingress host: the interface on the management network.
MGMT_IFNAME = "mgmt0"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
#: Cluster sizes: an odd number of members, since an even one tolerates no more
#: failures than the odd number below it (a majority of 4 is 3, as of 3 is 2... and of
#: 2 is 2: no failure at all). Five is what fits between the ingress and the hosts.
CLUSTER_SIZES = (1, 3, 5)
#: Management host K's last address octet is this plus K (.6-.10), on both networks.
_MANAGER_HOST_BASE = 5
#: The managers' leader lease (--election-ttl). etcd grants a lease no shorter than
#: 1.5 election timeouts rounded up to whole seconds: 2 s at its default timings, so
#: its members run at half of them (`nfvha.store.etcd.ETCD_MEMBER_FLAGS`) for 1 s.
ELECTION_TTL = 1


@dataclass
class TestbedHost:
    host_id: str
    netns: str
    uplink: str  # root-side veth end on the data bridge
    address: str  # the agent's (and its guard's) IP, on the management network
    url: str
    cgroup: str
    agent_pid: int | None = None
    state: str = "up"  # up | crashed | partitioned
    mgmt_uplink: str = ""  # root-side veth end on the management bridge

    @property
    def uplinks(self) -> list[str]:
        """Both of the host's links: a crash, a partition or a fence cuts them all."""
        return [link for link in (self.uplink, self.mgmt_uplink) if link]


@dataclass
class ManagerHost:
    """An emulated management host of a manager cluster: one etcd member, one manager.

    Kept apart from ``Testbed.hosts`` (compute hosts), which agents, placement and the
    testbed fence agent work on: a management host runs no VNF and is never fenced."""

    member_id: str  # mK: the manager's --member-id and the etcd member's name
    netns: str
    address: str  # management network: manager (HTTP, UDP liveness), etcd
    data_address: str  # data network: where the manager's VNF probes come from
    url: str  # the manager's --advertise-url
    cgroup: str
    uplink: str  # root-side veth end on the data bridge
    mgmt_uplink: str  # root-side veth end on the management bridge
    manager_pid: int | None = None
    etcd_pid: int | None = None
    state: str = "up"  # up | crashed

    @property
    def uplinks(self) -> list[str]:
        return [self.uplink, self.mgmt_uplink]

    @property
    def etcd_url(self) -> str:
        """The member's client URL (plain HTTP on the management network: see
        ``Testbed.etcd_endpoints``)."""
        return f"http://{self.address}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{ETCD_PEER_PORT}"


@dataclass
class IngressHost:
    """An emulated ingress host: one steering forwarder, its control API and mirror
    stream on the management network, its service addresses on the data network."""

    id: str  # in1, in2: the forwarder's --id (a single forwarder is in1, run without one)
    netns: str
    mgmt_address: str
    data_address: str  # its own; service and upstream addresses come and go beside it
    url: str  # the forwarder's control API
    cgroup: str
    uplink: str  # root-side veth end on the data bridge
    mgmt_uplink: str  # root-side veth end on the management bridge
    label: str  # its log, logs/<label>.log
    #: Where its supervisor writes the forwarder's pid ("": not supervised).
    pidfile: str = ""
    #: What the testbed started: the supervisor, or the forwarder when unsupervised.
    pid: int | None = None
    state: str = "up"  # up | down

    @property
    def uplinks(self) -> list[str]:
        return [self.uplink, self.mgmt_uplink]

    @property
    def mirror_address(self) -> str:
        """``HOST:PORT`` of its mirror stream listener (its peer's ``--peer``)."""
        return f"{self.mgmt_address}:{FORWARDER_MIRROR_PORT}"


@dataclass
class Testbed:
    """A set of emulated hosts. ``up`` builds and starts, ``down`` removes everything."""

    __test__ = False  # not a pytest test class, despite its name

    name: str = "nfvha"
    n_hosts: int = 3
    subnet: str = DEFAULT_SUBNET
    #: The management network (None: 172.31.X.0/24, X the data subnet's second octet).
    mgmt_subnet: str | None = None
    state_dir: Path = Path("/run/nfvha")
    agent_args: list[str] = field(default_factory=list)
    with_manager: bool = False
    with_forwarder: bool = False
    manager_args: list[str] = field(default_factory=list)
    hosts: dict[str, TestbedHost] = field(default_factory=dict)
    token: str = ""
    #: Credentials of the manager's users file (with_manager): an operator and a viewer.
    operator_token: str = ""
    viewer_token: str = ""
    manager_pid: int | None = None
    #: Restart a dead agent after this long, as systemd's Restart=always would (None: never).
    agent_restart_delay: float | None = 0.2
    #: Give the manager the testbed fence driver for every host (STONITH by link cut).
    fencing: bool = False
    #: Another fence agent (argv) for every host instead of the testbed's (tests: a
    #: broken one), with its timeout.
    fence_agent: list[str] | None = None
    fence_timeout: float = 5.0
    #: Mutual TLS everywhere, with a CA of the testbed's own (``pki/`` in its directory);
    #: agents and the forwarder then get no token, each guard only its host's key.
    tls: bool = True
    #: Managers: 1 (the manager in the root netns) or a cluster of 3 or 5, each member an
    #: emulated management host with an etcd member; the managers themselves start with
    #: ``with_manager`` (without it, the management hosts run their etcd members only).
    managers: int = 1
    manager_hosts: dict[str, ManagerHost] = field(default_factory=dict)
    #: With ``with_forwarder``: 2, a forwarder pair on two ingress hosts (in1, in2), or
    #: 1, one forwarder on one ingress host (in1, laid out as before pairs).
    forwarders: int = 2
    ingress_hosts: dict[str, IngressHost] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 8 or not self.name.replace("-", "").isalnum():
            raise ConfigError(f"testbed name {self.name!r}: use 1-8 letters/digits")
        self.net = HostNetwork()
        self.cgroups = CgroupDriver.detect()
        self.dir = self.state_dir / f"testbed-{self.name}"
        net = ipaddress.ip_network(self.subnet)
        self._hosts_base = net.network_address
        self.prefixlen = net.prefixlen
        if self.mgmt_subnet is None:
            self.mgmt_subnet = f"172.31.{int(net.network_address.packed[1])}.0/24"
        mgmt = ipaddress.ip_network(self.mgmt_subnet)
        if not isinstance(mgmt, ipaddress.IPv4Network) or mgmt.num_addresses < 256:
            raise ConfigError(f"management subnet {mgmt}: use an IPv4 /24 or larger")
        if mgmt.overlaps(net):
            raise ConfigError(f"management subnet {mgmt} overlaps the data subnet {net}; "
                              "they must be apart, so that nothing routes between them")
        self._mgmt_base = mgmt.network_address
        self.mgmt_prefixlen = mgmt.prefixlen
        if self.managers not in CLUSTER_SIZES:
            why = {2: "a cluster of 2 stops when either member is lost (a majority of 2 is "
                      "2): no loss tolerated, as with one manager, and twice the parts to fail",
                   4: "a cluster of 4 tolerates one lost member (a majority of 4 is 3), as "
                      "a cluster of 3 does: the fourth buys no availability"}
            raise ConfigError(f"managers={self.managers}: "
                              + why.get(self.managers, "an odd number of members, at most 5 "
                                        "(what fits between the ingress and the hosts)")
                              + "; use 1, 3 or 5")
        if self.forwarders not in FORWARDER_COUNTS:
            raise ConfigError(f"forwarders={self.forwarders}: use 1 (one forwarder) or 2 "
                              "(an active/standby pair)")

    # -- names and addresses -------------------------------------------------------------

    @property
    def bridge(self) -> str:
        """The data bridge: VNF sandboxes, the forwarder's data side, test clients."""
        return f"{self.name}-br"

    @property
    def mgmt_bridge(self) -> str:
        """The management bridge: manager, agents, guards, the forwarder's control API."""
        return f"{self.name}-mg"

    @property
    def gateway(self) -> str:
        """The root netns on the data network (test clients and backends live here)."""
        return str(self._hosts_base + 1)

    @property
    def mgmt_gateway(self) -> str:
        """The root netns on the management network: where the manager listens."""
        return str(self._mgmt_base + 1)

    def host_address(self, i: int) -> str:
        """Host i's management address: its agent and guard listen there only."""
        return str(self._mgmt_base + 10 + i)

    @property
    def nft_table(self) -> str:
        """The nftables table (family ``ip``) of this testbed, in every netns on both
        networks. Names hold letters, digits and ``-``; nft names take ``_`` instead."""
        return "nfvha_" + self.name.replace("-", "_")

    def vnf_address(self, i: int) -> str:
        """The i-th VNF address of this testbed (10.250.1.i for the default subnet)."""
        return f"{self._hosts_base + 256 + i}/{self.prefixlen}"

    @property
    def paired(self) -> bool:
        """A forwarder pair (``forwarders`` = 2) on two ingress hosts."""
        return self.with_forwarder and self.forwarders == 2

    @property
    def ingress_ids(self) -> list[str]:
        """The ingress hosts' ids: in1 and in2 for a pair, in1 alone for one forwarder
        ([] without a forwarder)."""
        if not self.with_forwarder:
            return []
        return list(_INGRESS_OCTETS)[:self.forwarders]

    def _ingress_plan(self, ingress_id: str) -> IngressHost:
        """Where ingress host ``ingress_id`` lives and what it is called (not its state).
        A single forwarder keeps the names it had before pairs (netns ``T-in``)."""
        octet = _INGRESS_OCTETS[ingress_id]
        mgmt = str(self._mgmt_base + octet)
        url = f"{self.scheme}://{mgmt}:{FORWARDER_PORT}"
        data = str(self._hosts_base + octet)
        if not self.paired:
            return IngressHost(id=ingress_id, netns=f"{self.name}-in", mgmt_address=mgmt,
                               data_address=data, url=url, cgroup=f"{self.name}/forwarder",
                               uplink=f"{self.name}-i0", mgmt_uplink=f"{self.name}-i0m",
                               label="forwarder")
        label = f"forwarder-{ingress_id}"
        return IngressHost(
            id=ingress_id, netns=f"{self.name}-{ingress_id}", mgmt_address=mgmt,
            data_address=data, url=url, cgroup=f"{self.name}/{label}",
            uplink=f"{self.name}-{ingress_id}", mgmt_uplink=f"{self.name}-{ingress_id}m",
            label=label, pidfile="" if self.agent_restart_delay is None
            else str(self.dir / f"{label}.pid"))

    @property
    def ingress_netns(self) -> str:
        """in1's netns (the single forwarder's: ``T-in``)."""
        return self._ingress_plan("in1").netns

    @property
    def ingress_address(self) -> str:
        """in1 on the data network (service addresses are added beside it)."""
        return str(self._hosts_base + _INGRESS_OCTETS["in1"])

    @property
    def ingress_mgmt_address(self) -> str:
        return str(self._mgmt_base + _INGRESS_OCTETS["in1"])

    @property
    def upstream_address(self) -> str:
        """The forwarder pair's upstream address (data network, no prefix): the source
        of every client flow towards the VNFs, held by whichever forwarder is active
        and configured by it, not by the testbed."""
        return str(self._hosts_base + _UPSTREAM_OCTET)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def forwarder_url(self) -> str:
        """in1's control API (the single forwarder's)."""
        return f"{self.scheme}://{self.ingress_mgmt_address}:{FORWARDER_PORT}"

    @property
    def forwarder_urls(self) -> dict[str, str]:
        """Ingress id -> its forwarder's control API ({} without a forwarder)."""
        return {i: self._ingress_plan(i).url for i in self.ingress_ids}

    def ingress_host(self, ingress_id: str) -> IngressHost:
        try:
            return self.ingress_hosts[ingress_id]
        except KeyError:
            if not self.ingress_hosts:
                raise ConfigError(f"testbed {self.name} runs no forwarder") from None
            raise ConfigError(
                f"no ingress host {ingress_id!r} in testbed {self.name} (ingress hosts: "
                f"{', '.join(self.ingress_hosts)})") from None

    def service_address(self, i: int) -> str:
        """The i-th service address the forwarder owns (10.250.2.i by default)."""
        return str(self._hosts_base + 512 + i)

    @property
    def clustered(self) -> bool:
        """Managers in a cluster on etcd (``managers`` > 1), each on a management host."""
        return self.managers > 1

    def manager_host_address(self, k: int) -> str:
        """Management host k's address on the management network (.6 for k = 1)."""
        return str(self._mgmt_base + _MANAGER_HOST_BASE + k)

    def manager_data_address(self, k: int) -> str:
        """Management host k's address on the data network (10.X.0.6 for k = 1)."""
        return str(self._hosts_base + _MANAGER_HOST_BASE + k)

    @property
    def manager_url(self) -> str:
        """The (first) manager: in a cluster m1's, which need not be the leader."""
        return self.manager_urls[0]

    @property
    def manager_urls(self) -> list[str]:
        """Every manager's URL, m1 first; one for a single manager."""
        if not self.clustered:
            return [f"{self.scheme}://{self.mgmt_gateway}:{MANAGER_PORT}"]
        return [f"{self.scheme}://{self.manager_host_address(k)}:{MANAGER_PORT}"
                for k in range(1, self.managers + 1)]

    @property
    def etcd_endpoints(self) -> list[str]:
        """``HOST:PORT`` of each etcd member ([] for a single manager on SQLite).

        Plain HTTP: the members listen on the management network only, which no VNF
        reaches (``_separate``); the store speaks etcd+https with the managers'
        certificates too, but etcd would then admit any certificate of the testbed's CA,
        agents' included, so TLS alone would keep out no one that the network does not."""
        return [f"{self.manager_host_address(k)}:{ETCD_CLIENT_PORT}"
                for k in range(1, self.managers + 1)] if self.clustered else []

    @property
    def store_url(self) -> str:
        """The managers' ``--store`` in a cluster: every etcd member."""
        return "etcd://" + ",".join(self.etcd_endpoints)

    @property
    def token_file(self) -> Path:
        return self.dir / "token"

    @property
    def users_file(self) -> Path:
        return self.dir / "users.yaml"

    @property
    def operator_token_file(self) -> Path:
        return self.dir / "operator.token"

    @property
    def viewer_token_file(self) -> Path:
        return self.dir / "viewer.token"

    def _add_operators(self) -> None:
        """An operator and a viewer credential in the manager's users file, each in a
        token file of its own (0600): the cluster token is for the daemons only."""
        from nfvha.vnfm.auth import Role, add_user

        for role, path in ((Role.OPERATOR, self.operator_token_file),
                           (Role.VIEWER, self.viewer_token_file)):
            token = add_user(self.users_file, role.value, role)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, token.encode())
            finally:
                os.close(fd)
            if role == Role.OPERATOR:
                self.operator_token = token
            else:
                self.viewer_token = token

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.pem"

    def tls_files(self, role: str, host: str | None = None) -> list[str]:
        """``--tls-cert --tls-key --tls-ca`` for a daemon of this testbed ([] without TLS)."""
        if not self.tls:
            return []
        stem = self.pki_dir / (role + (f"-{host}" if host else ""))
        return ["--tls-cert", f"{stem}.pem", "--tls-key", f"{stem}.key",
                "--tls-ca", str(self.ca_file)]

    def client_context(self, role: str | None = "manager",
                       host: str | None = None) -> ssl.SSLContext | bool:
        """For an httpx client of this testbed's APIs: trusts its CA and, with ``role``,
        presents that daemon's certificate (tests act as the manager towards agents);
        ``role=None``: no certificate (an operator). True without TLS."""
        if not self.tls:
            return True
        from nfvha.tls import TlsConfig

        stem = self.pki_dir / ((role or "manager") + (f"-{host}" if host else ""))
        return TlsConfig(Path(f"{stem}.pem"), Path(f"{stem}.key"),
                         self.ca_file).client_context(present=role is not None)

    def _make_pki(self) -> None:
        """The testbed's CA, and a certificate for the manager and each forwarder (agents
        get theirs as their hosts are added). A forwarder of a pair is known by its id
        (``nfvha://forwarder/in1``); a single forwarder's certificate names none."""
        from nfvha.pki import init_ca

        ca = init_ca(self.pki_dir)
        # One identity for every manager of a cluster (agents know "the manager" by it),
        # valid at each member's address.
        ca.issue("manager", ips=[*(self.manager_host_address(k)
                                   for k in range(1, self.managers + 1) if self.clustered),
                                 self.mgmt_gateway, "127.0.0.1"])
        if not self.paired:
            ca.issue("forwarder", ips=[self.ingress_mgmt_address])
        for i in self.ingress_ids if self.paired else []:
            ca.issue("forwarder", host=i, ips=[self._ingress_plan(i).mgmt_address])

    def _issue_agent(self, h: TestbedHost) -> None:
        from nfvha.ha.liveness import write_key_file
        from nfvha.pki import load_ca

        if (self.pki_dir / f"agent-{h.host_id}.pem").exists():
            return  # a revived host keeps its identity (its disk)
        ca = load_ca(self.pki_dir)
        ca.issue("agent", host=h.host_id, ips=[h.address])
        write_key_file(self.pki_dir / f"agent-{h.host_id}.liveness",
                       bytes.fromhex(ca.liveness_secret_path.read_text().strip()), h.host_id)

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def host(self, host_id: str) -> TestbedHost:
        try:
            return self.hosts[host_id]
        except KeyError:
            raise ConfigError(
                f"no host {host_id!r} in testbed {self.name} (hosts: {', '.join(self.hosts)})"
            ) from None

    def manager_host(self, member_id: str) -> ManagerHost:
        try:
            return self.manager_hosts[member_id]
        except KeyError:
            if not self.clustered:
                raise ConfigError(f"testbed {self.name} runs one manager, not a cluster "
                                  "(start it with `nfvha up --managers 3`)") from None
            raise ConfigError(
                f"no manager host {member_id!r} in testbed {self.name} (members: "
                f"{', '.join(self.manager_hosts)})") from None

    # -- lifecycle -----------------------------------------------------------------------

    async def up(self, timeout: float = 30.0) -> None:
        """Build bridge, hosts and agents; wait until every agent answers. All or nothing."""
        if await self.net.link_exists(self.bridge):
            raise ConfigError(f"testbed {self.name} is already up (bridge {self.bridge} "
                              f"exists); run `nfvha testbed down --name {self.name}` first")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_urlsafe(24)
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        if self.tls:
            self._make_pki()
        try:
            await self.net.create_bridge(self.mgmt_bridge,
                                         address=f"{self.mgmt_gateway}/{self.mgmt_prefixlen}")
            await self.net.create_bridge(self.bridge, address=f"{self.gateway}/{self.prefixlen}")
            await self._separate(None, self.bridge)
            for ingress_id in self.ingress_ids:
                await self._add_ingress_host(ingress_id)
            if self.with_manager:
                self._add_operators()
            if self.clustered:
                await self._add_cluster(timeout)
            elif self.with_manager:
                self.cgroups.cgroup(f"{self.name}/manager").create(CgroupLimits())
                self.manager_pid = self.start_manager()
            for i in range(1, self.n_hosts + 1):
                await self._add_host(i)
            self._save()
            await self.wait_ready(timeout)
            if self.with_manager and self.clustered:
                # Up means protected: a leader acts. Only here, not in every wait_ready
                # (a host revived while etcd has no quorum must not wait for one).
                await self._wait_leader(time.monotonic() + timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.down()
            raise

    async def _add_host(self, i: int) -> None:
        """A host's management interface carries its agent and guard; its data side is
        bridge ``br0`` without an address, which only joins its VNFs to the data bridge."""
        hid = f"h{i}"
        addr = self.host_address(i)
        h = TestbedHost(host_id=hid, netns=f"{self.name}-{hid}", uplink=f"{self.name}-{hid}",
                        address=addr, url=f"{self.scheme}://{addr}:{AGENT_PORT}",
                        cgroup=f"{self.name}/{hid}", mgmt_uplink=f"{self.name}-{hid}m")
        self.hosts[hid] = h
        if self.tls:
            self._issue_agent(h)
        await self.net.create_netns(h.netns)
        # The MAC of a real host's NIC survives a power cycle, and its peers' ARP caches
        # stay right: here too (a new random one left the forwarder, which a revived
        # host never sends to, with a stale entry, and its readings of a VNF's queue on
        # that host unanswered).
        await self.net.create_veth(h.mgmt_uplink, f"{self.name}-u{i}", peer_netns=h.netns,
                                   peer_name_after_move=MGMT_IFNAME, master=self.mgmt_bridge,
                                   peer_address=f"{addr}/{self.mgmt_prefixlen}",
                                   peer_mac=_host_mac(addr))
        await self.net.create_veth(h.uplink, f"{self.name}-t{i}", peer_netns=h.netns,
                                   peer_name_after_move="eth0", master=self.bridge)
        await self.net.create_bridge("br0", netns=h.netns)
        await _ip("-n", h.netns, "link", "set", "eth0", "master", "br0")
        await self._separate(h.netns, "br0")
        self.cgroups.cgroup(f"{h.cgroup}/agent").create(CgroupLimits())
        h.agent_pid = self._start_agent(h)

    async def _separate(self, netns: str | None, data_side: str) -> None:
        """Drop whatever arrives from the data side for a management address, delivered
        or routed. Separate subnets are not enough in a netns on both networks: Linux
        takes a packet for any of its addresses on any interface, so a VNF that routes
        the management subnet through such a netns (it may: it is root in its own)
        would reach the daemons there. ``iifname`` is the bridge for what the netns
        itself receives; frames the bridge only passes between its ports (VNF traffic,
        with br_netfilter) name a port and are not touched."""
        table, mgmt = self.nft_table, self.mgmt_subnet
        rules = _DROP_TABLE.format(table=table) + (f"table ip {table} {{\n"
                 f"  chain input {{ type filter hook input priority filter; policy accept;\n"
                 f"    iifname \"{data_side}\" ip daddr {mgmt} counter drop\n  }}\n"
                 f"  chain forward {{ type filter hook forward priority filter; policy accept;\n"
                 f"    iifname \"{data_side}\" ip daddr {mgmt} counter drop\n  }}\n}}\n")
        await _nft(rules, netns)

    async def _add_ingress_host(self, ingress_id: str) -> IngressHost:
        """An ingress host and its forwarder, which owns the service addresses there
        while it is active (a single forwarder: always)."""
        g = self._ingress_plan(ingress_id)
        self.ingress_hosts[g.id] = g
        await self.net.create_netns(g.netns)
        # The peer ends are made inside the netns under their final names; the names
        # given for them here never exist (a single forwarder's are the ones it had).
        mgmt_peer, data_peer = ((f"{self.name}-i1m", f"{self.name}-i1") if not self.paired
                                else (f"{g.mgmt_uplink}p", f"{g.uplink}p"))
        # Its MACs survive a power cycle, as a management host's do: the manager and the
        # peer forwarder (management), the bridge's clients and the VNFs (data) keep
        # right ARP entries for an ingress host powered on again.
        await self.net.create_veth(g.mgmt_uplink, mgmt_peer, peer_netns=g.netns,
                                   peer_name_after_move=MGMT_IFNAME, master=self.mgmt_bridge,
                                   peer_address=f"{g.mgmt_address}/{self.mgmt_prefixlen}",
                                   peer_mac=_host_mac(g.mgmt_address))
        await self.net.create_veth(g.uplink, data_peer, peer_netns=g.netns,
                                   peer_name_after_move="eth0", master=self.bridge,
                                   peer_address=f"{g.data_address}/{self.prefixlen}",
                                   peer_mac=_host_mac(g.data_address))
        await self._separate(g.netns, "eth0")
        self.cgroups.cgroup(g.cgroup).create(CgroupLimits())
        g.pid = self._start_forwarder(g)
        return g

    def _forwarder_argv(self, g: IngressHost) -> list[str]:
        """``nfvha forwarder`` on ingress host ``g``; in a pair with its id, its peer's
        mirror address, the upstream address and every manager (which arbitrate the
        pair), under a supervisor that starts it again when it dies."""
        args = [sys.executable, "-m", "nfvha", "forwarder",
                "--listen", f"{g.mgmt_address}:{FORWARDER_PORT}",
                *([] if self.tls else ["--token-file", str(self.token_file)]),
                *self.tls_files("forwarder", g.id if self.paired else None),
                "--interface", "eth0", "--prefixlen", str(self.prefixlen)]
        if not self.paired:
            return args
        peer = next(self._ingress_plan(i) for i in self.ingress_ids if i != g.id)
        args += ["--id", g.id, "--mirror-listen", g.mirror_address,
                 "--peer", peer.mirror_address, "--upstream-ip", self.upstream_address,
                 # Always: a pair without its managers would never name an active one (a
                 # bed started without them starts them later at these URLs).
                 "--manager", ",".join(self.manager_urls)]
        if g.pidfile and self.agent_restart_delay is not None:
            return _supervised(args, g.pidfile, self.agent_restart_delay)
        return args

    def _start_forwarder(self, g: IngressHost) -> int:
        return self._spawn(self._forwarder_argv(g), g.label, g.cgroup, g.netns)

    @property
    def fence_config(self) -> Path:
        return self.dir / "fence.yaml"

    def _write_fence_config(self) -> None:
        import yaml

        from nfvha.ha.fence_testbed import testbed_fence_config

        hosts = [f"h{i}" for i in range(1, self.n_hosts + 1)]
        cfg = testbed_fence_config(self.name, hosts, state_dir=str(self.state_dir))
        for h in cfg["hosts"].values():
            h["timeout"] = self.fence_timeout
            if self.fence_agent is not None:
                h["agent"] = self.fence_agent
        # Written again before each manager starts: atomically, so that one starting
        # meanwhile never reads half a file.
        tmp = self.fence_config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg))
        tmp.replace(self.fence_config)

    def start_manager(self) -> int:
        """The manager runs in the root netns and listens on its management address; its
        health probes reach the VNFs from the root's data address."""
        args = self._manager_argv(f"{self.mgmt_gateway}:{MANAGER_PORT}",
                                  ["--db", str(self.dir / "manager.db")])
        return self._spawn(args, "manager", f"{self.name}/manager", None)

    def _manager_argv(self, listen: str, store: list[str]) -> list[str]:
        """``nfvha manager`` with what every manager of this testbed gets; ``store`` says
        where its state is (and, in a cluster, which member it is)."""
        if self.fencing:
            self._write_fence_config()
        reserved = [f"{self.gateway}=the testbed's data gateway",
                    *([f"{self.ingress_address}=the steering forwarder (its data side)"]
                      if self.with_forwarder and not self.paired else []),
                    *([f"{self._ingress_plan(i).data_address}=forwarder {i} (its data side)"
                       for i in self.ingress_ids]
                      + [f"{self.upstream_address}=the forwarder pair's upstream address"]
                      if self.paired else []),
                    *(f"{m.data_address}=manager {m.member_id} (its data side)"
                      for m in self.manager_hosts.values())]
        # A pair's members by id (id=URL,...); a single forwarder by its URL, as before.
        forwarder = (",".join(f"{i}={u}" for i, u in self.forwarder_urls.items())
                     if self.paired else self.forwarder_url)
        return [sys.executable, "-m", "nfvha", "manager", "--listen", listen, *store,
                "--token-file", str(self.token_file), "--vnf-network", self.subnet,
                *[arg for r in reserved for arg in ("--reserve-address", r)],
                "--users-file", str(self.users_file),
                *self.tls_files("manager"),
                *(["--liveness-secret-file", str(self.pki_dir / "liveness.secret")]
                  if self.tls else []),
                *(["--forwarder", forwarder] if self.with_forwarder else []),
                *(["--fence-config", str(self.fence_config)] if self.fencing else []),
                *self.manager_args]

    # -- the manager cluster (managers > 1) ----------------------------------------------

    @property
    def secret_key_file(self) -> Path:
        """The key sealing subscription passwords, one for the whole cluster: a password
        one member sealed into the store must open on the next leader."""
        return self.dir / "manager.key"

    def etcd_data_dir(self, member_id: str) -> Path:
        return self.dir / f"etcd-{member_id}"

    async def _add_cluster(self, timeout: float) -> None:
        """Management hosts with their etcd members; once etcd has a quorum (a manager
        refuses to start on a store it cannot reach), the managers."""
        if self.with_manager:
            from nfvha.vnfm.secretbox import SecretBox

            SecretBox.from_file(self.secret_key_file)  # made once, before any member reads it
        for k in range(1, self.managers + 1):
            await self._add_manager_host(k)
        for m in self.manager_hosts.values():
            m.etcd_pid = self._start_etcd(m)
        await self.wait_etcd(timeout)
        if self.with_manager:
            for m in self.manager_hosts.values():
                m.manager_pid = self._start_cluster_manager(m)

    async def _add_manager_host(self, k: int) -> ManagerHost:
        """Management host k: on the management bridge (manager, etcd) and on the data
        bridge (the manager's VNF probes), the data side kept from management addresses
        as in every netns on both networks."""
        mid = f"m{k}"
        addr = self.manager_host_address(k)
        m = ManagerHost(member_id=mid, netns=f"{self.name}-{mid}", address=addr,
                        data_address=self.manager_data_address(k),
                        url=f"{self.scheme}://{addr}:{MANAGER_PORT}",
                        cgroup=f"{self.name}/{mid}", uplink=f"{self.name}-{mid}",
                        mgmt_uplink=f"{self.name}-{mid}m")
        self.manager_hosts[mid] = m
        await self.net.create_netns(m.netns)
        # Its MACs survive a power cycle, as a VNF host's do: with new ones, the other
        # etcd members kept sending to the old one after a restore, and the restored
        # member stayed unhealthy until their ARP entries aged (the cluster soak's
        # power cut, 3 times in 40 repetitions).
        await self.net.create_veth(m.mgmt_uplink, f"{self.name}-v{k}", peer_netns=m.netns,
                                   peer_name_after_move=MGMT_IFNAME, master=self.mgmt_bridge,
                                   peer_address=f"{addr}/{self.mgmt_prefixlen}",
                                   peer_mac=_host_mac(addr))
        await self.net.create_veth(m.uplink, f"{self.name}-w{k}", peer_netns=m.netns,
                                   peer_name_after_move="eth0", master=self.bridge,
                                   peer_address=f"{m.data_address}/{self.prefixlen}",
                                   peer_mac=_host_mac(m.data_address))
        await self._separate(m.netns, "eth0")
        for part in ("etcd", "manager"):
            self.cgroups.cgroup(f"{m.cgroup}/{part}").create(CgroupLimits())
        return m

    def _etcd_argv(self, m: ManagerHost) -> list[str]:
        """A member of the static cluster. Its data dir is the host's disk: a member
        started again on it rejoins with what it had (etcd ignores the --initial-*
        flags then)."""
        cluster = ",".join(f"{o.member_id}={o.peer_url}" for o in self.manager_hosts.values())
        return ["etcd", "--name", m.member_id, "--data-dir", str(self.etcd_data_dir(m.member_id)),
                "--listen-client-urls", m.etcd_url, "--advertise-client-urls", m.etcd_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"nfvha-{self.name}",
                "--logger", "zap", "--log-level", "warn", *ETCD_MEMBER_FLAGS]

    def _start_etcd(self, m: ManagerHost) -> int:
        # One thread of Go scheduling each: three members share two cores with the rest.
        return self._spawn(self._etcd_argv(m), f"etcd-{m.member_id}", f"{m.cgroup}/etcd",
                           m.netns, env={**os.environ, "GOMAXPROCS": "1"})

    def _cluster_manager_argv(self, m: ManagerHost) -> list[str]:
        """What the single manager gets, on the shared etcd store, campaigning as its
        member id with the 1 s leader lease the etcd timings allow."""
        return self._manager_argv(
            f"{m.address}:{MANAGER_PORT}",
            ["--db", str(self.dir / m.member_id / "manager.db"), "--store", self.store_url,
             "--member-id", m.member_id, "--election-ttl", str(ELECTION_TTL),
             "--advertise-url", m.url, "--secret-key-file", str(self.secret_key_file)])

    def _start_cluster_manager(self, m: ManagerHost) -> int:
        (self.dir / m.member_id).mkdir(exist_ok=True)
        return self._spawn(self._cluster_manager_argv(m), f"manager-{m.member_id}",
                           f"{m.cgroup}/manager", m.netns)

    async def wait_etcd(self, timeout: float = 30.0,
                        members: list[str] | None = None) -> None:
        """Until each member (default: each one up) says it is healthy: it has a leader
        and answers a linearizable read, so a quorum of the cluster is there."""
        deadline = time.monotonic() + timeout
        wanted = [self.manager_host(mid) for mid in members] if members is not None \
            else [m for m in self.manager_hosts.values() if m.state == "up"]
        async with httpx.AsyncClient(timeout=1.0) as client:
            for m in wanted:
                while True:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        r = await client.get(f"{m.etcd_url}/health")
                        if r.json().get("health") == "true":
                            break
                    if time.monotonic() > deadline:
                        tail = _tail(self.log_dir / f"etcd-{m.member_id}.log")
                        raise NfvhaError(f"etcd member {m.member_id} not healthy at "
                                         f"{m.etcd_url} within {timeout:.0f}s; its log "
                                         f"ends:\n{tail}")
                    await asyncio.sleep(0.1)

    async def cluster_views(self) -> dict[str, dict[str, Any]]:
        """``GET /nfvha/v1/cluster`` of every manager that answers it, by URL."""
        token = self.viewer_token or self.operator_token
        async with httpx.AsyncClient(timeout=2.0, verify=self.client_context(None),
                                     headers={"Authorization": f"Bearer {token}"}) as client:

            async def ask(url: str) -> dict[str, Any] | str:
                try:
                    r = await client.get(f"{url}/nfvha/v1/cluster")
                except httpx.HTTPError as exc:
                    return f"{url}: {type(exc).__name__}"
                if r.status_code != 200:
                    return f"{url}: {r.status_code}"
                view: dict[str, Any] = r.json()
                return view

            answers = await asyncio.gather(*(ask(u) for u in self.manager_urls))
        views = {u: a for u, a in zip(self.manager_urls, answers, strict=True)
                 if isinstance(a, dict)}
        if not views:
            raise NfvhaError("no manager answered GET /nfvha/v1/cluster ("
                             + "; ".join(str(a) for a in answers) + ")")
        return views

    async def leader(self) -> str | None:
        """The member id of the manager that says it leads, None while none does. Asked
        of the leader itself, not of what followers name: they learn of a new leader a
        moment later (a watch), so right after a failover they may name the dead one."""
        leading = [v for v in (await self.cluster_views()).values() if v.get("leading")]
        if not leading:
            return None
        best = max(leading, key=lambda v: v.get("term") or 0)  # a deposed one's is lower
        return str(best["member"] or "manager")  # single mode: member is None

    def _require_manager(self) -> None:
        if not self.with_manager:
            raise ConfigError(f"testbed {self.name} runs no manager")

    async def kill_manager(self, member_id: str = "leader") -> tuple[str, list[int]]:
        """SIGKILL one manager (its etcd member and host live on): ``member_id``, or the
        leader the managers name. Returns the member and the pids killed (the manager
        and any child of it, a fence agent say: everything in its cgroup). With one
        manager, "leader" and "manager" name it. Nothing restarts it: `restart_manager`."""
        self._require_manager()
        if not self.clustered:
            if member_id not in ("leader", "manager"):
                raise ConfigError(f"testbed {self.name} runs one manager: name it 'manager' "
                                  f"or 'leader', not {member_id!r}")
            pids = await self._kill_cgroup(f"{self.name}/manager")
            self.manager_pid = None
            self._save()
            return "manager", pids
        if member_id == "leader":
            leader = await self.leader()
            if leader is None:
                raise NfvhaError("the managers know no leader now; name the member to kill")
            member_id = leader
        m = self.manager_host(member_id)
        pids = await self._kill_cgroup(f"{m.cgroup}/manager")
        if not pids:
            raise ConfigError(f"{member_id}: no manager is running there")
        m.manager_pid = None
        self._save()
        return member_id, pids

    async def restart_manager(self, member_id: str = "manager", timeout: float = 30.0) -> int:
        """Start a killed manager again (same member id, store and address); returns its
        pid once it answers /healthz."""
        self._require_manager()
        if not self.clustered:
            if self.cgroups.cgroup(f"{self.name}/manager").pids():
                raise ConfigError("the manager is running; kill it first")
            self.manager_pid = self.start_manager()
            self._save()
            await self.wait_ready(timeout)
            return self.manager_pid
        m = self._up_manager_host(member_id)
        if self.cgroups.cgroup(f"{m.cgroup}/manager").pids():
            raise ConfigError(f"{member_id}: its manager is running; kill it first")
        m.manager_pid = self._start_cluster_manager(m)
        self._save()
        await self.wait_ready(timeout)
        return m.manager_pid

    async def kill_etcd(self, member_id: str) -> list[int]:
        """SIGKILL one etcd member (its manager lives on, on the others' quorum)."""
        m = self.manager_host(member_id)
        pids = await self._kill_cgroup(f"{m.cgroup}/etcd")
        if not pids:
            raise ConfigError(f"{member_id}: no etcd member is running there")
        m.etcd_pid = None
        self._save()
        return pids

    async def restart_etcd(self, member_id: str, timeout: float = 30.0) -> int:
        """Start a killed etcd member again on its data dir; returns its pid once it is
        healthy (which needs a quorum)."""
        m = self._up_manager_host(member_id)
        if self.cgroups.cgroup(f"{m.cgroup}/etcd").pids():
            raise ConfigError(f"{member_id}: its etcd member is running; kill it first")
        m.etcd_pid = self._start_etcd(m)
        self._save()
        await self.wait_etcd(timeout, [member_id])
        return m.etcd_pid

    def _up_manager_host(self, member_id: str) -> ManagerHost:
        m = self.manager_host(member_id)
        if m.state != "up":
            raise ConfigError(f"manager host {member_id} is {m.state}; restore it "
                              "(`restore_manager_host`, `nfvha inject crash-manager-host "
                              f"{member_id} --heal`)")
        return m

    async def crash_manager_host(self, member_id: str) -> None:
        """Power loss of a management host: its links are cut first, so nothing it sends
        while dying reaches anyone, then every process of it, etcd member and manager,
        is killed."""
        m = self.manager_host(member_id)
        for link in m.uplinks:
            await self.net.delete_link(link)
        await asyncio.to_thread(self.cgroups.cgroup(m.cgroup).kill_all)
        m.state = "crashed"
        m.manager_pid = m.etcd_pid = None
        self._save()

    async def restore_manager_host(self, member_id: str, timeout: float = 30.0) -> None:
        """Power a crashed management host back on: same address and disk (its etcd data
        dir, so the member rejoins the cluster as itself), etcd first, then its manager."""
        m = self.manager_host(member_id)
        await self.net.delete_netns(m.netns)
        for link in m.uplinks:
            await self.net.delete_link(link)
        await asyncio.to_thread(self.cgroups.cgroup(m.cgroup).delete)
        m = await self._add_manager_host(int(member_id[1:]))
        m.etcd_pid = self._start_etcd(m)
        self._save()
        await self.wait_etcd(timeout, [member_id])
        if self.with_manager:
            m.manager_pid = self._start_cluster_manager(m)
            self._save()
            await self.wait_ready(timeout)

    async def cut_manager_from_etcd(self, member_id: str, *, heal: bool = False) -> None:
        """Partition a management host from etcd, and from etcd only: in its netns, TCP to
        and from the etcd ports of the other members is dropped on its management link
        (its own member, reached over loopback, stays reachable and loses its quorum).
        Its manager still reaches the agents, the guards and the callers, and they it:
        the fault a leader must notice by its lease alone. ``heal`` lifts it."""
        m = self._up_manager_host(member_id)
        table = f"{self.nft_table}_etcdcut"
        rules = _DROP_TABLE.format(table=table)
        if not heal:
            ports = f"{{ {ETCD_CLIENT_PORT}, {ETCD_PEER_PORT} }}"
            rules += (f"table ip {table} {{\n"
                      f"  chain out {{ type filter hook output priority 0;\n"
                      f"    oifname \"{MGMT_IFNAME}\" tcp dport {ports} drop\n"
                      f"    oifname \"{MGMT_IFNAME}\" tcp sport {ports} drop\n  }}\n"
                      f"  chain in {{ type filter hook input priority 0;\n"
                      f"    iifname \"{MGMT_IFNAME}\" tcp dport {ports} drop\n"
                      f"    iifname \"{MGMT_IFNAME}\" tcp sport {ports} drop\n  }}\n}}\n")
        await _nft(rules, m.netns)

    @property
    def manager_members(self) -> dict[str, str]:
        """Member id -> URL of every manager ({"manager": URL} for a single one)."""
        if not self.clustered:
            return {"manager": self.manager_url}
        return {mid: m.url for mid, m in sorted(self.manager_hosts.items())}

    async def _kill_cgroup(self, path: str) -> list[int]:
        """SIGKILL whatever runs in cgroup ``path``; the pids it had (none: nothing ran)."""
        cg = self.cgroups.cgroup(path)
        pids = cg.pids() if cg.exists() else []
        if pids:
            await asyncio.to_thread(cg.kill_all)
        return pids

    def _start_agent(self, h: TestbedHost) -> int:
        return self._spawn(self._agent_argv(h), f"agent-{h.host_id}", f"{h.cgroup}/agent",
                           h.netns)

    def _agent_argv(self, h: TestbedHost) -> list[str]:
        args = [
            sys.executable, "-m", "nfvha", "agent", "--host-id", h.host_id,
            "--listen", f"{h.address}:{AGENT_PORT}", "--bridge", "br0",
            "--state-dir", str(self.dir / h.host_id),
            # With TLS an agent holds no token and no cluster secret: its certificate
            # and its own host's heartbeat keys only.
            *(["--liveness-key-file", str(self.pki_dir / f"agent-{h.host_id}.liveness"),
               *self.tls_files("agent", h.host_id)] if self.tls
              else ["--token-file", str(self.token_file)]),
            "--netns-prefix", f"{h.netns}-", "--cgroup-parent", f"{h.cgroup}/vnf",
            "--log-dir", str(self.log_dir / "vnf"), "--advertise-url", h.url,
            "--work-root", str(self.dir / "vnf-root"),
            # Every manager: the agent follows the leader among them (cluster-spec).
            *(["--manager", ",".join(self.manager_urls)] if self.with_manager else []),
            *self.agent_args,
        ]
        if self.agent_restart_delay is not None:
            args = _supervised(args, str(self.agent_pidfile(h.host_id)),
                               self.agent_restart_delay)
        return args

    def agent_pidfile(self, host_id: str) -> Path:
        return self.dir / f"agent-{host_id}.pid"

    def agent_process(self, host_id: str) -> int:
        """The pid of the host's agent process itself (not its supervisor)."""
        h = self.host(host_id)
        if self.agent_restart_delay is None:
            if h.agent_pid is None:
                raise ConfigError(f"host {host_id} runs no agent")
            return h.agent_pid
        try:
            return int(self.agent_pidfile(host_id).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"host {host_id}: no agent pid ({exc})") from exc

    def guard_process(self, host_id: str) -> int | None:
        """The pid of the host's lease guard, from the file it shares with the agent."""
        from nfvha.vim.guard import LeaseFile

        path = self.dir / host_id / "guard" / "lease"
        if not path.exists():
            return None
        lf = LeaseFile(path)
        try:
            return lf.guard().pid or None
        finally:
            lf.close()

    async def inject_vnf(self, host_id: str, instance_id: str, fault: str) -> None:
        """A VNF fault straight through its host's agent, as the manager's inject API
        does (``kill`` or ``hang``), with the manager's identity: for faults that must
        land while no manager leads."""
        h = self.host(host_id)
        async with httpx.AsyncClient(timeout=10.0, verify=self.client_context("manager"),
                                     headers={} if self.tls else
                                     {"Authorization": f"Bearer {self.token}"}) as client:
            r = await client.post(f"{h.url}/v1/instances/{instance_id}/inject",
                                  json={"fault": fault})
        if r.status_code >= 300:
            raise NfvhaError(f"inject {fault} into {instance_id} on {host_id}: "
                             f"{r.status_code} {r.text}")

    async def kill_agent(self, host_id: str, *, restart: bool = True) -> int:
        """SIGKILL the host's agent (its VNFs and guard live on). Its supervisor restarts
        it after ``agent_restart_delay`` unless ``restart`` is False."""
        h = self.host(host_id)
        pid = self.agent_process(host_id)
        if not restart and self.agent_restart_delay is not None and h.agent_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.agent_pid, signal.SIGKILL)  # the supervisor first
            h.agent_pid = None
            self._save()
        os.kill(pid, signal.SIGKILL)
        return pid

    async def stop_agent(self, host_id: str, seconds: float) -> int:
        """SIGSTOP the host's agent for ``seconds`` (a stall: swap, a stuck syscall)."""
        pid = self.agent_process(host_id)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return pid

    async def start_agent(self, host_id: str) -> None:
        """Start the host's agent again (after ``kill_agent(restart=False)``)."""
        h = self.host(host_id)
        h.agent_pid = self._start_agent(h)
        self._save()

    def _spawn(self, args: list[str], label: str, cgroup: str, netns: str | None,
               env: dict[str, str] | None = None) -> int:
        procs = [str(p) for p in self.cgroups.cgroup(cgroup).procs_paths()]
        netns_path = str(self.net.netns_path(netns)) if netns else None
        setns = _setns_func()  # resolved here: no dlopen, no import in the forked child

        def enter() -> None:  # in the child: join the host's cgroup and netns, then exec

            me = str(os.getpid()).encode()
            for p in procs:
                fd = os.open(p, os.O_WRONLY)
                os.write(fd, me)
                os.close(fd)
            if netns_path:
                fd = os.open(netns_path, os.O_RDONLY)
                if setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    os.kill(os.getpid(), signal.SIGKILL)
                os.close(fd)

        logf = open(self.log_dir / f"{label}.log", "ab")  # noqa: SIM115
        with logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    preexec_fn=enter, start_new_session=True, env=env)
        return proc.pid

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0, verify=self.client_context(None)) as client:
            for g in self.ingress_hosts.values():
                if g.state == "up" and g.pid is not None:  # not the killed ones
                    await self._wait_forwarder(client, g, deadline)
            managers = [(self.manager_url, "manager")] if not self.clustered else [
                (m.url, f"manager-{m.member_id}") for m in self.manager_hosts.values()
                if m.state == "up" and m.manager_pid is not None]  # not the killed ones
            for url, label in managers if self.with_manager else []:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/healthz")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise NfvhaError(f"{label} did not answer at {url}; its log "
                                         f"ends:\n{_tail(self.log_dir / f'{label}.log')}")
                    await asyncio.sleep(0.1)
            for h in self.hosts.values():
                if h.state != "up":
                    continue
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{h.url}/healthz")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        tail = _tail(self.log_dir / f"agent-{h.host_id}.log")
                        raise NfvhaError(f"agent of {h.host_id} did not answer at {h.url} "
                                         f"within {timeout:.0f}s ({_describe(h.agent_pid)}); "
                                         f"its log ends:\n{tail}")
                    await asyncio.sleep(0.1)

    async def _wait_forwarder(self, client: httpx.AsyncClient, g: IngressHost,
                              deadline: float) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{g.url}/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise NfvhaError(f"forwarder {g.id} did not answer at {g.url}; its log "
                                 f"ends:\n{_tail(self.log_dir / f'{g.label}.log')}")
            await asyncio.sleep(0.1)

    async def _wait_leader(self, deadline: float) -> None:
        """Until the managers name a leader: before that, nothing is protected."""
        while True:
            try:
                if await self.leader() is not None:
                    return
                why = "none is leading"
            except NfvhaError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise NfvhaError(f"the managers elected no leader in time: {why}")
            await asyncio.sleep(0.1)

    async def crash_host(self, host_id: str) -> None:
        """Power loss: cut the host's links first, then kill every process of it."""
        h = self.host(host_id)
        for link in h.uplinks:
            await self.net.delete_link(link)
        await asyncio.to_thread(self.cgroups.cgroup(h.cgroup).kill_all)
        h.state = "crashed"
        h.agent_pid = None
        self._save()

    async def revive_host(self, host_id: str) -> None:
        """Power a crashed host back on: same id, address and disk (its state dir)."""
        h = self.host(host_id)
        for ns in [h.netns, *await self.net.list_netns(f"{h.netns}-")]:
            await self.net.delete_netns(ns)
        for link in h.uplinks:
            await self.net.delete_link(link)
        root = self.cgroups.cgroup(h.cgroup)
        await asyncio.to_thread(root.delete)
        # /run is a tmpfs on a real host: what the guard kept there (its lease, in
        # monotonic time of a boot that is over) does not survive the power cycle.
        shutil.rmtree(self.dir / host_id / "guard", ignore_errors=True)
        await self._add_host(int(host_id[1:]))
        self._save()
        await self.wait_ready()

    async def partition_host(self, host_id: str, cut: bool = True) -> None:
        """Cut (or restore) the host's links; its processes keep running.

        Both networks are cut, as when a host's switch or uplink bond fails: the host
        looks dead to the manager and its peers (management) and its VNFs serve nobody
        (data), so a copy restored elsewhere is the only one clients reach while the
        isolated one waits for its lease to run out."""
        h = self.host(host_id)
        for link in h.uplinks:
            await self.net.set_link_up(link, not cut)
        h.state = "partitioned" if cut else "up"
        self._save()

    # -- the forwarders, on the ingress hosts ----------------------------------------------

    async def pair_views(self, *, transport: httpx.AsyncBaseTransport | None = None,
                         ) -> dict[str, dict[str, Any] | str]:
        """``GET /v1/pair`` of each forwarder whose host is up, by ingress id: its answer
        (``id``, ``role``, ``term``...), or why there is none. Asked as the manager
        (its certificate; the token without TLS), whom the forwarders answer."""
        up = [g for g in self.ingress_hosts.values() if g.state == "up"]
        headers = {} if self.tls else {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=2.0, verify=self.client_context("manager"),
                                     headers=headers, transport=transport) as client:

            async def ask(g: IngressHost) -> dict[str, Any] | str:
                try:
                    r = await client.get(f"{g.url}/v1/pair")
                except httpx.HTTPError as exc:
                    return type(exc).__name__
                if r.status_code != 200:
                    return f"answered {r.status_code}"
                try:
                    view = r.json()
                except ValueError:
                    return "answered no JSON"
                return view if isinstance(view, dict) else "answered no JSON object"

            answers = await asyncio.gather(*(ask(g) for g in up))
        return {g.id: a for g, a in zip(up, answers, strict=True)}

    async def active_forwarder(self, *, transport: httpx.AsyncBaseTransport | None = None,
                               ) -> str | None:
        """The id of the forwarder that says it is active (of two that say so, the one
        of the higher term: the other was deposed and has not heard yet); None while
        none does."""
        return _active_member(await self.pair_views(transport=transport))

    async def _forwarder_named(self, which: str) -> str:
        """The ingress id ``which`` names: an id, or the forwarder now ``active`` or
        ``standby`` (a single forwarder is the active one)."""
        if which in self.ingress_hosts:
            return which
        if which not in ("active", "standby"):
            raise ConfigError(f"no forwarder {which!r} in testbed {self.name}: name one of "
                              f"{', '.join([*self.ingress_hosts, 'active', 'standby'])}")
        if not self.paired:
            if which == "standby" or not self.ingress_hosts:
                raise ConfigError(f"testbed {self.name} runs "
                                  + ("one forwarder, which has no standby (a pair: `nfvha up "
                                     "--forwarders 2`)" if self.ingress_hosts
                                     else "no forwarder"))
            return next(iter(self.ingress_hosts))
        views = await self.pair_views()
        found = _active_member(views) if which == "active" else next(
            (i for i, v in views.items() if isinstance(v, dict) and v.get("role") == "standby"),
            None)
        if found is None:
            said = "; ".join(f"{i}: {v.get('role') if isinstance(v, dict) else v}"
                             for i, v in views.items()) or "no ingress host is up"
            raise NfvhaError(f"no forwarder says it is {which} ({said}); name one: "
                             f"{', '.join(self.ingress_hosts)}")
        return found

    def _up_ingress_host(self, ingress_id: str) -> IngressHost:
        g = self.ingress_host(ingress_id)
        if g.state != "up":
            raise ConfigError(f"ingress host {ingress_id} is {g.state}; power it on "
                              "(`restore_ingress_host`, `nfvha inject crash-ingress-host "
                              f"{ingress_id} --heal`)")
        return g

    def forwarder_process(self, ingress_id: str) -> int:
        """The pid of the forwarder process itself (not its supervisor)."""
        g = self._up_ingress_host(ingress_id)
        if not g.pidfile:
            if g.pid is None:
                raise ConfigError(f"{ingress_id}: no forwarder is running there")
            return g.pid
        try:
            return int(Path(g.pidfile).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{ingress_id}: no forwarder pid ({exc})") from exc

    async def kill_forwarder(self, which: str = "active") -> tuple[str, int]:
        """SIGKILL a forwarder process: ``which`` is an ingress id, or ``active`` or
        ``standby`` as the forwarders say (``pair_views``). Its supervisor starts it
        again after ``agent_restart_delay``; an unsupervised one (a single forwarder)
        stays dead until `start_forwarder`. Returns the ingress id and the pid killed."""
        ingress_id = await self._forwarder_named(which)
        g = self._up_ingress_host(ingress_id)
        pid = self.forwarder_process(ingress_id)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            raise NfvhaError(f"{ingress_id}: its forwarder (pid {pid}) is not running"
                             + ("; its supervisor starts it again shortly" if g.pidfile
                                else "")) from None
        if not g.pidfile:
            g.pid = None
            self._save()
        return ingress_id, pid

    async def start_forwarder(self, ingress_id: str, timeout: float = 30.0) -> int:
        """Start the forwarder of an ingress host that is up but runs none (an
        unsupervised one killed); returns what was started once it answers."""
        g = self._up_ingress_host(ingress_id)
        if self.cgroups.cgroup(g.cgroup).pids():
            raise ConfigError(f"{ingress_id}: its forwarder is running"
                              + (" (supervised: killed, it is started again by itself)"
                                 if g.pidfile else "; kill it first"))
        g.pid = self._start_forwarder(g)
        self._save()
        async with httpx.AsyncClient(timeout=1.0, verify=self.client_context(None)) as client:
            await self._wait_forwarder(client, g, time.monotonic() + timeout)
        return g.pid

    async def crash_ingress_host(self, ingress_id: str) -> None:
        """Power loss of an ingress host: its links are cut first, so nothing its
        forwarder sends while dying (a last mirror record, a gratuitous ARP) reaches
        anyone, then every process of it is killed, supervisor included."""
        g = self.ingress_host(ingress_id)
        for link in g.uplinks:
            await self.net.delete_link(link)
        await asyncio.to_thread(self.cgroups.cgroup(g.cgroup).kill_all)
        g.state = "down"
        g.pid = None
        self._save()

    async def restore_ingress_host(self, ingress_id: str, timeout: float = 30.0) -> None:
        """Power a crashed ingress host back on: the same addresses and MACs, its
        separation table, its forwarder (supervised) started again; returns once the
        forwarder answers. Its service and upstream addresses are not: they are the
        pair's, for the forwarder to take or leave."""
        g = self.ingress_host(ingress_id)
        if g.state == "up":
            raise ConfigError(f"ingress host {ingress_id} is up; crash it first")
        await self.net.delete_netns(g.netns)
        for link in g.uplinks:
            await self.net.delete_link(link)
        await asyncio.to_thread(self.cgroups.cgroup(g.cgroup).delete)
        g = await self._add_ingress_host(ingress_id)
        self._save()
        async with httpx.AsyncClient(timeout=1.0, verify=self.client_context(None)) as client:
            await self._wait_forwarder(client, g, time.monotonic() + timeout)

    async def down(self) -> None:
        """Remove everything named after this testbed; safe after failures and interrupts."""
        errors: list[str] = []
        root = self.cgroups.cgroup(self.name)
        with contextlib.suppress(Exception):
            if root.exists():
                await asyncio.to_thread(root.kill_all)
        # Each step goes on whatever the one before did, and the network is tried again.
        # A teardown that stopped at its first error left a whole testbed behind in CI,
        # once; likely cause: `ip` waiting on the kernel's network lock, which namespaces
        # of earlier tests still being torn down can hold for many seconds (the same run's
        # agents never answered, and an `ip` waiting there cannot even be killed).
        for attempt in range(4):
            failed: list[str] = []
            try:
                for ns in await self.net.list_netns(f"{self.name}-"):
                    try:
                        await self.net.delete_netns(ns)
                    except NfvhaError as exc:
                        failed.append(str(exc))
                for link in await self.net.list_links(f"{self.name}-"):
                    with contextlib.suppress(NfvhaError):  # may go with its namespace
                        await self.net.delete_link(link)
            except NfvhaError as exc:
                failed.append(str(exc))
            if not failed:
                break
            if attempt == 3:
                errors += failed
            else:
                await asyncio.sleep(2.0)
        try:
            await asyncio.to_thread(root.delete)
        except NfvhaError as exc:
            errors.append(str(exc))
        try:
            await _nft(_DROP_TABLE.format(table=self.nft_table), None)
        except NfvhaError as exc:
            errors.append(str(exc))
        _unmount_below(self.dir)  # a CRIU dump killed mid-way leaves its proc mount
        shutil.rmtree(self.dir, ignore_errors=True)
        self.hosts.clear()
        self.ingress_hosts.clear()
        if errors:
            raise NfvhaError(f"testbed {self.name} teardown incomplete: " + "; ".join(errors))

    # -- persistence (so the CLI can act on a testbed another process made) --------------

    def _save(self) -> None:
        data = {"name": self.name, "subnet": self.subnet, "mgmt_subnet": self.mgmt_subnet,
                "n_hosts": self.n_hosts,
                "with_manager": self.with_manager, "manager_pid": self.manager_pid,
                "agent_restart_delay": self.agent_restart_delay, "fencing": self.fencing,
                "with_forwarder": self.with_forwarder, "tls": self.tls,
                "token_file": str(self.token_file), "managers": self.managers,
                "manager_hosts": {k: asdict(v) for k, v in self.manager_hosts.items()},
                "forwarders": self.forwarders,
                "ingress_hosts": {k: asdict(v) for k, v in self.ingress_hosts.items()},
                "hosts": {k: asdict(v) for k, v in self.hosts.items()}}
        tmp = self.dir / "testbed.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.dir / "testbed.json")

    @classmethod
    def load(cls, name: str = "nfvha", state_dir: Path = Path("/run/nfvha")) -> Testbed:
        path = state_dir / f"testbed-{name}" / "testbed.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no testbed {name} is up ({path}: {exc}); "
                              "start one with `nfvha up` or `nfvha testbed up`") from exc
        tb = cls(name=name, state_dir=state_dir, subnet=data["subnet"],
                 mgmt_subnet=data.get("mgmt_subnet"), tls=data.get("tls", False),
                 managers=data.get("managers", 1),
                 forwarders=data.get("forwarders", 1))  # saved before pairs: one
        tb.manager_hosts = {k: ManagerHost(**v)
                            for k, v in data.get("manager_hosts", {}).items()}
        tb.n_hosts = data["n_hosts"]
        tb.with_manager = data.get("with_manager", False)
        tb.manager_pid = data.get("manager_pid")
        tb.with_forwarder = data.get("with_forwarder", False)
        tb.agent_restart_delay = data.get("agent_restart_delay")
        tb.fencing = data.get("fencing", False)
        tb.hosts = {k: TestbedHost(**v) for k, v in data["hosts"].items()}
        tb.ingress_hosts = {k: IngressHost(**v)
                            for k, v in data.get("ingress_hosts", {}).items()}
        if tb.with_forwarder and not tb.ingress_hosts:  # saved before ingress hosts were
            tb.ingress_hosts = {i: tb._ingress_plan(i) for i in tb.ingress_ids}
        tb.token = tb.token_file.read_text().strip()
        for attr, path in (("operator_token", tb.operator_token_file),
                           ("viewer_token", tb.viewer_token_file)):
            if path.exists():
                setattr(tb, attr, path.read_text().strip())
        return tb

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bridge": self.bridge, "gateway": self.gateway,
                "mgmt_bridge": self.mgmt_bridge, "mgmt_gateway": self.mgmt_gateway,
                "subnet": self.subnet, "mgmt_subnet": self.mgmt_subnet,
                "manager_url": self.manager_url if self.with_manager else None,
                # Every manager (m1 first, as manager_url); a caller finds the leader
                # among them, `nfvha status` asks them GET /nfvha/v1/cluster.
                "manager_urls": self.manager_urls if self.with_manager else [],
                "managers": [{**asdict(m), "etcd_url": m.etcd_url}
                             for m in self.manager_hosts.values()],
                "store_url": self.store_url if self.clustered else None,
                "forwarder_url": self.forwarder_url if self.with_forwarder else None,
                "forwarder_urls": self.forwarder_urls,
                "upstream_address": self.upstream_address if self.paired else None,
                "ingress_hosts": [asdict(g) for g in self.ingress_hosts.values()],
                "token_file": str(self.token_file),
                "operator_token_file": str(self.operator_token_file)
                if self.with_manager else None,
                "viewer_token_file": str(self.viewer_token_file) if self.with_manager else None,
                "ca_file": str(self.ca_file) if self.tls else None,
                "hosts": [asdict(h) for h in self.hosts.values()]}


async def _ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise NfvhaError(f"ip {' '.join(args)}: {err.decode().strip()}")


async def _nft(rules: str, netns: str | None, timeout: float = 10.0) -> None:
    """Load an nft script (on stdin) in ``netns`` (None: the root netns)."""
    argv = ["nft", "-f", "-"] if netns is None else ["ip", "netns", "exec", netns,
                                                      "nft", "-f", "-"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        raise NfvhaError(f"cannot run {argv[0]}: {exc}; install nftables (the testbed "
                         "separates its networks with it)") from exc
    try:
        _, err = await asyncio.wait_for(proc.communicate(rules.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NfvhaError(f"nft in {netns or 'the root netns'} did not finish within "
                         f"{timeout:g}s") from None
    if proc.returncode != 0:
        raise NfvhaError(f"nft in {netns or 'the root netns'}: {err.decode().strip()}")


def _active_member(views: dict[str, dict[str, Any] | str]) -> str | None:
    """The member whose view says it is active, of the highest term if several do."""
    active = [(_term(v), i) for i, v in views.items()
              if isinstance(v, dict) and v.get("role") == "active"]
    return max(active)[1] if active else None


def _term(view: dict[str, Any]) -> int:
    try:
        return int(view.get("term") or 0)
    except (TypeError, ValueError):
        return 0


def _supervised(args: list[str], pidfile: str, delay: float) -> list[str]:
    """``args`` under ``nfvha/_supervise.py``: started again ``delay`` s after it dies,
    its pid in ``pidfile`` each time (fault injection kills the daemon, not this)."""
    from nfvha import _supervise

    return [sys.executable, "-S", _supervise.__file__, "--pidfile", pidfile,
            "--delay", str(delay), "--", *args]


def _host_mac(address: str) -> str:
    """A host's management MAC, locally administered and derived from its address (VNF
    MACs, on the other network, are ``02:00:`` and theirs)."""
    return "02:01:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


@functools.cache
def _setns_func() -> Callable[[int, int], int]:
    """libc's setns(2), looked up in the parent. A child forked from this threaded
    process may run only what needs no lock another thread could have held at the
    fork: importing ctypes or dlopen() there (the loader's lock) could hang it before
    exec, a daemon that never starts and never logs."""
    import ctypes

    setns: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).setns
    return setns


def _unmount_below(top: Path) -> None:
    """Detach every mount under ``top`` (deepest first), so that it can be removed."""
    import ctypes

    prefix = str(top).rstrip("/") + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted((m.encode().decode("unicode_escape") for m in mounts
                         if m.startswith(prefix)), reverse=True):
        libc.umount2(point.encode(), 2)  # MNT_DETACH


def _describe(pid: int | None) -> str:
    """What a process that does not answer is doing: gone, or its state, the kernel
    function it waits in and its command, so a hang can be told from a slow start."""
    if pid is None:
        return "no process"
    try:
        status = dict(ln.split(":", 1) for ln in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return f"process {pid} is gone"
    waits = f", waiting in {wchan}" if wchan not in ("", "0") else ""
    # A child that hangs between fork and exec still shows its parent's command.
    return (f"process {pid} {status.get('State', '?').strip()}{waits}, "
            f"{status.get('Threads', '?').strip()} threads: {argv[:120].decode(errors='replace')}")


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
