"""Emulated hosts on one machine: network namespaces on a shared bridge, one agent each.

Layout for a testbed named ``T`` with N hosts (all names derive from ``T``, so a
teardown after an interrupted run finds everything by prefix alone)::

    root netns:   bridge T-br (10.250.0.1/16)  ── veth T-h1 ─┐
    netns T-h1:   eth0 ─ bridge br0 (10.250.0.11/16), agent on :8700
                  └── veth nv… ── netns T-h1-<instance> (the VNF's eth0, its IP and MAC)
    cgroup T/h1:  agent/ (the agent)   vnf/<instance>/ (each VNF)

A host crash is a power loss: its uplink veth is deleted first, so nothing it sends
afterwards reaches anyone, then every process in its cgroup is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.errors import ConfigError, NfvhaError
from nfvha.vim.cgroups import CgroupDriver, CgroupLimits
from nfvha.vim.hostnet import HostNetwork

__all__ = ["AGENT_PORT", "Testbed", "TestbedHost"]

log = logging.getLogger(__name__)

AGENT_PORT = 8700
MANAGER_PORT = 8600
FORWARDER_PORT = 8800
DEFAULT_SUBNET = "10.250.0.0/16"


@dataclass
class TestbedHost:
    host_id: str
    netns: str
    uplink: str  # root-side veth end, on the shared bridge
    address: str  # agent's IP
    url: str
    cgroup: str
    agent_pid: int | None = None
    state: str = "up"  # up | crashed | partitioned


@dataclass
class Testbed:
    """A set of emulated hosts. ``up`` builds and starts, ``down`` removes everything."""

    __test__ = False  # not a pytest test class, despite its name

    name: str = "nfvha"
    n_hosts: int = 3
    subnet: str = DEFAULT_SUBNET
    state_dir: Path = Path("/run/nfvha")
    agent_args: list[str] = field(default_factory=list)
    with_manager: bool = False
    with_forwarder: bool = False
    manager_args: list[str] = field(default_factory=list)
    hosts: dict[str, TestbedHost] = field(default_factory=dict)
    token: str = ""
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

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 8 or not self.name.replace("-", "").isalnum():
            raise ConfigError(f"testbed name {self.name!r}: use 1-8 letters/digits")
        self.net = HostNetwork()
        self.cgroups = CgroupDriver.detect()
        self.dir = self.state_dir / f"testbed-{self.name}"
        net = ipaddress.ip_network(self.subnet)
        self._hosts_base = net.network_address
        self.prefixlen = net.prefixlen

    # -- names and addresses -------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def gateway(self) -> str:
        return str(self._hosts_base + 1)

    def host_address(self, i: int) -> str:
        return str(self._hosts_base + 10 + i)

    def vnf_address(self, i: int) -> str:
        """The i-th VNF address of this testbed (10.250.1.i for the default subnet)."""
        return f"{self._hosts_base + 256 + i}/{self.prefixlen}"

    @property
    def ingress_netns(self) -> str:
        return f"{self.name}-in"

    @property
    def ingress_address(self) -> str:
        return str(self._hosts_base + 5)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def forwarder_url(self) -> str:
        return f"{self.scheme}://{self.ingress_address}:{FORWARDER_PORT}"

    def service_address(self, i: int) -> str:
        """The i-th service address the forwarder owns (10.250.2.i by default)."""
        return str(self._hosts_base + 512 + i)

    @property
    def manager_url(self) -> str:
        return f"{self.scheme}://{self.gateway}:{MANAGER_PORT}"

    @property
    def token_file(self) -> Path:
        return self.dir / "token"

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
        """The testbed's CA, and a certificate for the manager and the forwarder (agents
        get theirs as their hosts are added)."""
        from nfvha.pki import init_ca

        ca = init_ca(self.pki_dir)
        ca.issue("manager", ips=[self.gateway, "127.0.0.1"])
        ca.issue("forwarder", ips=[self.ingress_address])

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
            await self.net.create_bridge(self.bridge, address=f"{self.gateway}/{self.prefixlen}")
            if self.with_forwarder:
                await self._add_ingress()
            if self.with_manager:
                self.cgroups.cgroup(f"{self.name}/manager").create(CgroupLimits())
                self.manager_pid = self.start_manager()
            for i in range(1, self.n_hosts + 1):
                await self._add_host(i)
            self._save()
            await self.wait_ready(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.down()
            raise

    async def _add_host(self, i: int) -> None:
        hid = f"h{i}"
        addr = self.host_address(i)
        h = TestbedHost(host_id=hid, netns=f"{self.name}-{hid}", uplink=f"{self.name}-{hid}",
                        address=addr, url=f"{self.scheme}://{addr}:{AGENT_PORT}",
                        cgroup=f"{self.name}/{hid}")
        self.hosts[hid] = h
        if self.tls:
            self._issue_agent(h)
        await self.net.create_netns(h.netns)
        await self.net.create_veth(h.uplink, f"{self.name}-t{i}", peer_netns=h.netns,
                                   peer_name_after_move="eth0", master=self.bridge)
        await self.net.create_bridge("br0", netns=h.netns, address=f"{addr}/{self.prefixlen}")
        await _ip("-n", h.netns, "link", "set", "eth0", "master", "br0")
        await _ip("-n", h.netns, "route", "replace", "default", "via", self.gateway)
        self.cgroups.cgroup(f"{h.cgroup}/agent").create(CgroupLimits())
        h.agent_pid = self._start_agent(h)

    async def _add_ingress(self) -> None:
        """The ingress host: the steering forwarder owns service addresses there."""
        ns = self.ingress_netns
        await self.net.create_netns(ns)
        await self.net.create_veth(f"{self.name}-i0", f"{self.name}-i1", peer_netns=ns,
                                   peer_name_after_move="eth0", master=self.bridge,
                                   peer_address=f"{self.ingress_address}/{self.prefixlen}")
        self.cgroups.cgroup(f"{self.name}/forwarder").create(CgroupLimits())
        args = [sys.executable, "-m", "nfvha", "forwarder",
                "--listen", f"{self.ingress_address}:{FORWARDER_PORT}",
                *([] if self.tls else ["--token-file", str(self.token_file)]),
                *self.tls_files("forwarder"), "--interface", "eth0",
                "--prefixlen", str(self.prefixlen)]
        self._spawn(args, "forwarder", f"{self.name}/forwarder", ns)

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
        self.fence_config.write_text(yaml.safe_dump(cfg))

    def start_manager(self) -> int:
        """The manager runs in the root netns, reachable by every host at the gateway."""
        if self.fencing:
            self._write_fence_config()
        args = [sys.executable, "-m", "nfvha", "manager",
                "--listen", f"{self.gateway}:{MANAGER_PORT}", "--db", str(self.dir / "manager.db"),
                "--token-file", str(self.token_file), "--vnf-network", self.subnet,
                *self.tls_files("manager"),
                *(["--liveness-secret-file", str(self.pki_dir / "liveness.secret")]
                  if self.tls else []),
                *(["--forwarder", self.forwarder_url] if self.with_forwarder else []),
                *(["--fence-config", str(self.fence_config)] if self.fencing else []),
                *self.manager_args]
        return self._spawn(args, "manager", f"{self.name}/manager", None)

    def _start_agent(self, h: TestbedHost) -> int:
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
            *(["--manager", self.manager_url] if self.with_manager else []),
            *self.agent_args,
        ]
        if self.agent_restart_delay is not None:
            from nfvha import _supervise

            args = [sys.executable, "-S", _supervise.__file__,
                    "--pidfile", str(self.agent_pidfile(h.host_id)),
                    "--delay", str(self.agent_restart_delay), "--", *args]
        return self._spawn(args, f"agent-{h.host_id}", f"{h.cgroup}/agent", h.netns)

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

    def _spawn(self, args: list[str], label: str, cgroup: str, netns: str | None) -> int:
        procs = [str(p) for p in self.cgroups.cgroup(cgroup).procs_paths()]
        netns_path = str(self.net.netns_path(netns)) if netns else None

        def enter() -> None:  # in the child: join the host's cgroup and netns, then exec

            me = str(os.getpid()).encode()
            for p in procs:
                fd = os.open(p, os.O_WRONLY)
                os.write(fd, me)
                os.close(fd)
            if netns_path:
                fd = os.open(netns_path, os.O_RDONLY)
                _setns(fd)
                os.close(fd)

        logf = open(self.log_dir / f"{label}.log", "ab")  # noqa: SIM115
        with logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    preexec_fn=enter, start_new_session=True)
        return proc.pid

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0, verify=self.client_context(None)) as client:
            while self.with_forwarder:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.forwarder_url}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise NfvhaError(f"forwarder did not answer at {self.forwarder_url}; its "
                                     f"log ends:\n{_tail(self.log_dir / 'forwarder.log')}")
                await asyncio.sleep(0.1)
            while self.with_manager:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.manager_url}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise NfvhaError(f"manager did not answer at {self.manager_url}; its log "
                                     f"ends:\n{_tail(self.log_dir / 'manager.log')}")
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
                                         f"within {timeout:.0f}s; its log ends:\n{tail}")
                    await asyncio.sleep(0.1)

    async def crash_host(self, host_id: str) -> None:
        """Power loss: cut the host's links first, then kill every process of it."""
        h = self.host(host_id)
        await self.net.delete_link(h.uplink)
        await asyncio.to_thread(self.cgroups.cgroup(h.cgroup).kill_all)
        h.state = "crashed"
        h.agent_pid = None
        self._save()

    async def revive_host(self, host_id: str) -> None:
        """Power a crashed host back on: same id, address and disk (its state dir)."""
        h = self.host(host_id)
        for ns in [h.netns, *await self.net.list_netns(f"{h.netns}-")]:
            await self.net.delete_netns(ns)
        await self.net.delete_link(h.uplink)
        root = self.cgroups.cgroup(h.cgroup)
        await asyncio.to_thread(root.delete)
        # /run is a tmpfs on a real host: what the guard kept there (its lease, in
        # monotonic time of a boot that is over) does not survive the power cycle.
        shutil.rmtree(self.dir / host_id / "guard", ignore_errors=True)
        await self._add_host(int(host_id[1:]))
        self._save()
        await self.wait_ready()

    async def partition_host(self, host_id: str, cut: bool = True) -> None:
        """Cut (or restore) the host's links; its processes keep running."""
        h = self.host(host_id)
        await self.net.set_link_up(h.uplink, not cut)
        h.state = "partitioned" if cut else "up"
        self._save()

    async def down(self) -> None:
        """Remove everything named after this testbed; safe after failures and interrupts."""
        errors: list[str] = []
        root = self.cgroups.cgroup(self.name)
        with contextlib.suppress(Exception):
            if root.exists():
                await asyncio.to_thread(root.kill_all)
        for ns in await self.net.list_netns(f"{self.name}-"):
            try:
                await self.net.delete_netns(ns)
            except NfvhaError as exc:
                errors.append(str(exc))
        for link in await self.net.list_links(f"{self.name}-"):
            with contextlib.suppress(NfvhaError):
                await self.net.delete_link(link)
        try:
            await asyncio.to_thread(root.delete)
        except NfvhaError as exc:
            errors.append(str(exc))
        _unmount_below(self.dir)  # a CRIU dump killed mid-way leaves its proc mount
        shutil.rmtree(self.dir, ignore_errors=True)
        self.hosts.clear()
        if errors:
            raise NfvhaError(f"testbed {self.name} teardown incomplete: " + "; ".join(errors))

    # -- persistence (so the CLI can act on a testbed another process made) --------------

    def _save(self) -> None:
        data = {"name": self.name, "subnet": self.subnet, "n_hosts": self.n_hosts,
                "with_manager": self.with_manager, "manager_pid": self.manager_pid,
                "agent_restart_delay": self.agent_restart_delay, "fencing": self.fencing,
                "with_forwarder": self.with_forwarder, "tls": self.tls,
                "token_file": str(self.token_file),
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
                 tls=data.get("tls", False))
        tb.n_hosts = data["n_hosts"]
        tb.with_manager = data.get("with_manager", False)
        tb.manager_pid = data.get("manager_pid")
        tb.with_forwarder = data.get("with_forwarder", False)
        tb.agent_restart_delay = data.get("agent_restart_delay")
        tb.fencing = data.get("fencing", False)
        tb.hosts = {k: TestbedHost(**v) for k, v in data["hosts"].items()}
        tb.token = tb.token_file.read_text().strip()
        return tb

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bridge": self.bridge, "gateway": self.gateway,
                "manager_url": self.manager_url if self.with_manager else None,
                "forwarder_url": self.forwarder_url if self.with_forwarder else None,
                "token_file": str(self.token_file),
                "ca_file": str(self.ca_file) if self.tls else None,
                "hosts": [asdict(h) for h in self.hosts.values()]}


async def _ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise NfvhaError(f"ip {' '.join(args)}: {err.decode().strip()}")


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:
        os.kill(os.getpid(), signal.SIGKILL)


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


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
