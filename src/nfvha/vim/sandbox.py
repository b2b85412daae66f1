"""The sandbox around one VNF instance: netns + veth, cgroup, PID/UTS/IPC namespaces, stdio.

The agent owns the network namespace (CRIU treats it as external), so the same dump can
be restored into a fresh sandbox with the same IP and MAC on any host. The VNF process is
always a direct child of the agent (a child subreaper): fresh starts and CRIU restores
alike, so its exit is seen at once through a pidfd and its exit status is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nfvha.descriptor import CAPABILITIES, VnfDescriptor
from nfvha.errors import HostCannotRun, HostNetworkError, SandboxError
from nfvha.vim import _launch
from nfvha.vim.cgroups import Cgroup, CgroupDriver, CgroupLimits
from nfvha.vim.criu import (
    CriuRunner,
    DumpOptions,
    DumpStats,
    NetworkLock,
    RestoreOptions,
    RestoreStats,
)
from nfvha.vim.hostnet import HostNetwork

__all__ = ["Bind", "ExitStatus", "ProcessWatch", "Sandbox", "SandboxConfig", "become_subreaper",
           "proc_state"]

log = logging.getLogger(__name__)

_CRIU_TASKS = 16  # CRIU's own tasks inside the sandbox's cgroups during a restore

NETNS_KEY = "vnfnet"
_background: set[asyncio.Future[None]] = set()  # fire-and-forget helpers, kept referenced
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants, so restored VNFs become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


#: Host system directories bound read-only into every private root (with /bin, /lib...
#: as the host has them: links on merged-/usr systems, else read-only binds too).
SYSTEM_DIRS = ("/usr", "/etc")
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Host files in those a VNF running as uid 0 could read even without capabilities (it
#: owns them): covered with /dev/null. Both exist on every Debian host, as they must on
#: every host the VNF may be restored on.
MASKED = ("/etc/shadow", "/etc/gshadow")
_DEVICES = ("null", "zero", "full", "random", "urandom")
#: The work directory inside a private root when the descriptor names none.
VNF_WORKDIR = "/var/lib/vnf"


@dataclass(frozen=True)
class Bind:
    """A host path bound into a VNF's private root; CRIU records it as an external mount
    keyed by ``target`` and binds ``source`` of whichever host restores it."""

    source: str
    target: str
    mode: str  # "ro", "rw" or "dev" (a device node, bound as it is)


_CAP_SYS_RESOURCE = 24


def _has_capability(bit: int) -> bool:
    """Whether this process holds capability ``bit`` (``CapEff`` of /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def _check_run_as(run_as: str | None, host_id: str) -> None:
    """A VNF running as another uid can be checkpointed only where root holds
    CAP_SYS_RESOURCE: CRIU reads its rlimits with prlimit(2), which the kernel refuses for
    another uid's process otherwise. Refused here, before anything runs, rather than a
    VNF that starts and then fails every checkpoint."""
    if run_as and run_as.partition(":")[0] != "0" and not _has_capability(_CAP_SYS_RESOURCE):
        raise HostCannotRun(f"security.run_as {run_as}: root on host {host_id} lacks "
                           "CAP_SYS_RESOURCE, which CRIU needs to checkpoint a process of "
                           "another uid (prlimit); run the VNF as root (no run_as) on such "
                           "hosts (docs/criu.md)")


@dataclass(frozen=True)
class SandboxConfig:
    """Per-agent settings every sandbox of that agent shares."""

    host_id: str
    bridge: str  # bridge in the agent's netns that VNF veths join
    netns_prefix: str  # sandbox netns names are <prefix><instance id>
    cgroup_parent: str  # relative cgroup path holding one child per instance
    run_dir: Path  # per-instance working files (CRIU restore logs, pidfiles)
    log_dir: Path  # VNF stdout/stderr; the same path on every host, since CRIU reopens it
    work_root: Path = Path("/var/lib/nfvha/vnf")  # per-instance cwd, same path on every host


@dataclass(frozen=True)
class ExitStatus:
    """How a VNF process ended: an exit code or a signal number."""

    code: int | None
    signal: int | None
    at: float
    oom: bool = False  # killed by the kernel at the sandbox's memory limit

    def describe(self) -> str:
        if self.oom:
            return "OOMKilled: killed at its memory limit (resources.memory)"
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        if self.code is None:
            return "ended (exit status unknown: not a child of this agent run)"
        return f"exited with code {self.code}"


class ProcessWatch:
    """Calls ``on_exit`` the moment a child process ends, via a pidfd in the event loop."""

    def __init__(self, pid: int, on_exit: Callable[[ExitStatus], None]) -> None:
        self.pid = pid
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError as exc:
            raise SandboxError(f"VNF process {pid} vanished before it could be watched") from exc
        self._loop.add_reader(self._fd, self._ready)
        self.status: ExitStatus | None = None

    def _ready(self) -> None:
        if self._fd is None:
            return
        code: int | None = None
        sig: int | None = None
        adopted = False
        try:
            res = os.waitid(os.P_PIDFD, self._fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Not our child: adopted after an agent restart (or the guard of an earlier
            # run). A pidfd is readable only once its process has exited, so it has.
            res, adopted = None, True
        if res is not None:
            if res.si_code == os.CLD_EXITED:
                code = res.si_status
            else:
                sig = res.si_status
        elif not adopted and not self._exited_without_child():
            return  # spurious wake-up
        self.close()
        self.status = ExitStatus(code=code, signal=sig, at=time.time())
        self._on_exit(self.status)

    def _exited_without_child(self) -> bool:
        return not Path(f"/proc/{self.pid}").exists()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def mute(self) -> None:
        """Stop reporting: the process is about to be killed on purpose (terminate)."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)

    async def reap(self, timeout: float = 2.0) -> None:
        """Collect the exit status of a process killed on purpose, then close.

        Without this a terminated VNF stays a zombie of the agent (its subreaper) for as
        long as the agent runs: one process-table entry per terminate.
        """
        if self._fd is None:
            return
        self.mute()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if os.waitid(os.P_PIDFD, self._fd, os.WEXITED | os.WNOHANG) is not None:
                        break
                except ChildProcessError:
                    break  # adopted after an agent restart: not ours to reap
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.01)
        finally:
            os.close(self._fd)
            self._fd = None


def _short(host_id: str, instance_id: str) -> str:
    return hashlib.sha1(f"{host_id}/{instance_id}".encode()).hexdigest()[:10]


class Sandbox:
    """One instance's sandbox on this host. ``build`` then ``start`` or ``restore``."""

    def __init__(self, cfg: SandboxConfig, instance_id: str, descriptor: VnfDescriptor,
                 net: HostNetwork, cgroups: CgroupDriver, criu: CriuRunner) -> None:
        self.cfg = cfg
        self.instance_id = instance_id
        self.descriptor = descriptor
        self.net = net
        self.criu = criu
        self.netns = f"{cfg.netns_prefix}{instance_id}"
        self.veth = f"nv{_short(cfg.host_id, instance_id)}"
        self.cgroup: Cgroup = cgroups.cgroup(f"{cfg.cgroup_parent}/{instance_id}")
        self.run_dir = cfg.run_dir / instance_id
        self.log_path = cfg.log_dir / f"{instance_id}.log"
        # CRIU's parasite makes a scratch directory (proc.crtools) in the VNF's cwd; a
        # cwd of its own per instance keeps concurrent dumps apart, and a dump killed by a
        # power loss leaves its scratch directory only there, where we clear it.
        # In a private root the work directory is this host's per-instance directory,
        # bound at the descriptor's path (or ``VNF_WORKDIR``): writable, private, and at
        # the same path inside on every host.
        private = descriptor.security.private_root
        self.workdir = (cfg.work_root / instance_id if descriptor.workdir == "/" or private
                        else Path(descriptor.workdir))
        self.inner_workdir = (self.workdir if not private else Path(
            VNF_WORKDIR if descriptor.workdir == "/" else descriptor.workdir))
        self.built = False

    @property
    def root_dir(self) -> Path:
        """The skeleton of the private root: mount points and links, nothing else."""
        return self.run_dir / "root"

    @property
    def private_root(self) -> bool:
        return self.descriptor.security.private_root

    def binds(self) -> list[Bind]:
        """Every host path the VNF sees, in mount order (a mount point inside another
        bind comes after it). The same list on every host: it depends on the descriptor,
        this host's log file and the host's top-level layout only."""
        out = [Bind(p, p, "ro") for p in SYSTEM_DIRS]
        for name in _TOP_LEVEL:
            host = Path("/" + name)
            if host.is_dir() and not host.is_symlink():
                out.append(Bind(str(host), str(host), "ro"))
        out += [Bind("/dev/null", m, "dev") for m in MASKED if os.path.exists(m)]
        out += [Bind(f"/dev/{d}", f"/dev/{d}", "dev") for d in _DEVICES]
        out.append(Bind(str(self.workdir), str(self.inner_workdir), "rw"))
        vols = sorted(self.descriptor.volumes, key=lambda v: v.inside.count("/"))
        out += [Bind(v.source, v.inside, "ro" if v.read_only else "rw") for v in vols]
        return out

    def external_mounts(self) -> list[tuple[str, str]]:
        """``(key, host path)`` of each bind for CRIU, the stdout file included."""
        return [(b.target, b.source) for b in self.binds()] + [
            ("/.stdout", str(self.log_path))]

    def _make_root(self) -> None:
        """Make the skeleton ``_launch`` pivots into and CRIU restores with ``--root``.
        Idempotent; a mount point inside the work directory or a writable volume is made
        there, on the host (a read-only one must already hold it)."""
        root = self.root_dir
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        root.chmod(0o755)
        for d in ("usr", "etc", "proc", "sys", "dev", "tmp", "run"):
            (root / d).mkdir(mode=0o755, exist_ok=True)
        for name in _TOP_LEVEL:
            host, mine = Path("/" + name), root / name
            if host.is_symlink() and not mine.is_symlink():
                mine.symlink_to(os.readlink(host))
        dev = root / "dev"
        (dev / "shm").mkdir(mode=0o755, exist_ok=True)
        for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            if not (dev / name).is_symlink():
                (dev / name).symlink_to(to)
        (root / ".stdout").touch(mode=0o600, exist_ok=True)
        placed: list[Bind] = []
        for b in self.binds():
            outer = max((p for p in placed if b.target.startswith(p.target + "/")),
                        key=lambda p: len(p.target), default=None)
            if outer is None:
                point = root / b.target.lstrip("/")
            elif outer.mode == "rw":
                point = Path(outer.source) / b.target[len(outer.target) + 1:]
            else:
                point = Path(b.target)  # inside a read-only bind: the host has it already
            if not point.exists():
                if Path(b.source).is_dir():
                    point.mkdir(mode=0o755, parents=True)
                else:
                    point.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    point.touch(mode=0o444)
            placed.append(b)

    def restrictions(self) -> list[str]:
        """The launcher's arguments for capabilities, user and seccomp (start and exec)."""
        sec = self.descriptor.security
        caps = ",".join(str(CAPABILITIES[c]) for c in sec.effective_capabilities())
        args = ["--caps", caps, "--seccomp", sec.seccomp]
        if sec.run_as:
            args += ["--run-as", sec.run_as]
        return args

    def exec_prefix(self, pid: int) -> list[str]:
        """Run a command inside the live VNF, as restricted as the VNF (exec probes)."""
        return [sys.executable, "-S", _launch.__file__, "--join", str(pid),
                "--workdir", str(self.inner_workdir), *self.restrictions(), "--"]

    @property
    def netns_path(self) -> Path:
        return self.net.netns_path(self.netns)

    def netns_inode(self) -> int:
        return os.stat(self.netns_path).st_ino

    async def build(self, *, standby: bool = False) -> None:
        """Make netns, veth and cgroup; on any failure remove what was made and raise.

        A ``standby`` sandbox keeps its host-side link down until ``activate``, so the
        address it will own is not answered twice while the primary copy lives.
        """
        d = self.descriptor
        # What this host cannot give is refused before anything is made.
        if self.private_root:
            self._check_volumes()
        _check_run_as(d.security.run_as, self.cfg.host_id)
        try:
            await self.net.create_netns(self.netns)
            await self.net.create_veth(
                self.veth, self.veth + "p", peer_netns=self.netns, peer_name_after_move="eth0",
                peer_mac=d.network.effective_mac, peer_address=d.network.address,
                master=self.cfg.bridge, peer_gateway=d.network.gateway,
                host_up=not standby,  # never up, not even for an instant (see create_veth)
            )
            await asyncio.to_thread(self.cgroup.create, CgroupLimits(
                memory_bytes=d.resources.memory, cpu_cores=d.resources.cpu,
                pids_max=d.resources.pids))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
            self.workdir.mkdir(parents=True, exist_ok=True)
            # CRIU reopens stdout by path on restore: it must exist on whichever host restores.
            self.log_path.touch(mode=0o600, exist_ok=True)
            if self.private_root:
                await asyncio.to_thread(self._make_root)
            if d.security.run_as:
                uid, _, gid = d.security.run_as.partition(":")
                os.chown(self.workdir, int(uid), int(gid or uid))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy()
            raise
        self.built = True

    def _check_volumes(self) -> None:
        missing = [v.source for v in self.descriptor.volumes if not os.path.exists(v.source)]
        if missing:
            raise HostCannotRun(f"volume source {', '.join(missing)} does not exist on host "
                               f"{self.cfg.host_id}; every host the VNF may run on needs it")

    async def activate(self) -> None:
        """Bring a standby sandbox's link up (just before its VNF is restored). Returns
        once both ends carry frames (see ``HostNetwork.wait_oper_up``)."""
        await self.net.set_link_up(self.veth, True)
        try:
            ends = await asyncio.gather(self.net.wait_oper_up(self.veth),
                                        self.net.wait_oper_up("eth0", netns=self.netns))
        except HostNetworkError as exc:  # only a wait: the link itself is up
            log.warning("cannot read the link state of %s: %s", self.instance_id, exc)
            return
        if not all(ends):
            log.warning("link of %s not up 1 s after it was set up", self.instance_id)

    async def hold_tcp(self, hold: bool) -> None:
        """Drop (or stop dropping) every TCP segment arriving in the sandbox's netns.

        Held while a VNF with established connections is restored: a peer's segment
        that arrived before CRIU recreated the socket would be answered with a RST. Only
        TCP: datagrams replayed or released to the VNF right after must get through.
        """
        cmd = ("add table inet nfvha_hold\n"
               "add chain inet nfvha_hold input { type filter hook input priority -300; }\n"
               "add rule inet nfvha_hold input meta l4proto tcp drop\n" if hold
               # Idempotent: CRIU's post-restore script has normally released it already.
               else "add table inet nfvha_hold\ndelete table inet nfvha_hold\n")
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={self.netns_path}", "nft", "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(cmd.encode()), 10)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise SandboxError(f"nft in the sandbox of {self.instance_id} timed out") from exc
        if proc.returncode != 0:
            raise SandboxError(f"{'holding' if hold else 'releasing'} TCP in the sandbox of "
                               f"{self.instance_id}: {err.decode(errors='replace').strip()}")

    async def start(self) -> int:
        """Start the descriptor's command as PID 1 of fresh PID/UTS/IPC namespaces."""
        d = self.descriptor
        args = [sys.executable, "-S", _launch.__file__, "--netns", str(self.netns_path),
                "--stdout", str(self.log_path), "--hostname", d.id,
                "--workdir", str(self.inner_workdir)]
        for p in self.cgroup.procs_paths():
            args += ["--cgroup-procs", str(p)]
        for k, v in d.env.items():
            args += ["--env", f"{k}={v}"]
        if self.private_root:
            args += ["--root", str(self.root_dir), "--tmpfs-size", str(d.resources.memory)]
            for b in self.binds():
                args += ["--bind", f"{b.source}:{b.target}:{b.mode}"]
        args += [*self.restrictions(), "--", *d.command]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError as exc:
            proc.kill()
            raise SandboxError(f"starting {self.instance_id} timed out in the launcher") from exc
        if proc.returncode != 0:
            raise SandboxError(
                f"cannot start {self.instance_id}: {err.decode(errors='replace').strip()}")
        try:
            return int(out.decode().strip())
        except ValueError as exc:
            raise SandboxError(f"launcher printed no pid for {self.instance_id}") from exc

    def network_lock(self, pid: int) -> NetworkLock:
        """The lock to use now: ``auto`` locks only while TCP connections are established.

        A lock makes TCP state consistent (no byte acknowledged after the dump read the
        queues) but drops every packet during the freeze; UDP datagrams are better left
        to queue in the socket buffer, where the live VNF reads them after the dump.
        """
        lock = self.descriptor.network_lock
        if lock != "auto":
            return lock
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                return "nftables"
            if any(ln.split()[3] == "01" for ln in lines if len(ln.split()) > 3):
                return "nftables"
        return "skip"

    async def dump(self, pid: int, images_dir: Path, *, leave_running: bool = True) -> DumpStats:
        with contextlib.suppress(OSError):
            os.rmdir(f"/proc/{pid}/cwd/proc.crtools")  # left by a dump that was killed
        opts = DumpOptions(
            leave_running=leave_running, network_lock=self.network_lock(pid),
            external_netns=(self.netns_inode(), NETNS_KEY),
            external_mounts=tuple(k for k, _ in self.external_mounts())
            if self.private_root else ())
        return await self.criu.dump(pid, images_dir, opts)

    async def restore(self, images_dir: Path, *, release_hold: bool = False) -> RestoreStats:
        """Restore into this sandbox. With ``release_hold`` the TCP hold (``hold_tcp``) is
        lifted by CRIU itself between recreating the sockets and taking them out of repair
        mode: the window probe each sends then, and its peer's answer, must get through,
        or a connection with unacknowledged data can stall for good."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        extra: tuple[str, ...] = ()
        if release_hold:
            script = self.run_dir / "release-hold.sh"
            script.write_text(
                "#!/bin/sh\n"
                '[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0\n'
                f"printf 'add table inet nfvha_hold\\ndelete table inet nfvha_hold\\n' | "
                f"nsenter --net={self.netns_path} nft -f -\n")
            script.chmod(0o700)
            extra = ("--action-script", str(script))
        opts = RestoreOptions(
            netns_path=str(self.netns_path), netns_key=NETNS_KEY,
            network_lock="nftables" if self.descriptor.network_lock == "auto"
            else self.descriptor.network_lock,
            join_cgroup_procs=[str(p) for p in self.cgroup.procs_paths()],
            work_dir=str(self.run_dir), extra_args=extra,
            root=str(self.root_dir) if self.private_root else None,
            external_mounts=tuple(self.external_mounts()) if self.private_root else ())
        if self.private_root:
            self._check_volumes()
            await asyncio.to_thread(self._make_root)
        # CRIU joins the sandbox's cgroups itself before it forks the tree, so its own
        # tasks count against pids.max: a VNF with as many tasks as its limit allows
        # could not be restored. Some headroom while CRIU runs, the limit again after.
        limit = self.descriptor.resources.pids
        await asyncio.to_thread(self.cgroup.set_pids_max, limit + _CRIU_TASKS)
        try:
            return await self.criu.restore(images_dir, opts)
        finally:
            await asyncio.to_thread(self.cgroup.set_pids_max, limit)

    async def announce(self) -> None:
        """Gratuitous ARP from the VNF's own interface after a restore.

        Bridges elsewhere may still have the VNF's MAC learned on the port towards its
        old host, where frames for it would now be dropped, and clients' ARP entries may
        be probing; one unsolicited ARP moves both to the new place at once.
        """
        ip = self.descriptor.network.ip
        try:
            proc = await asyncio.create_subprocess_exec(
                "nsenter", f"--net={self.netns_path}", "arping", "-U", "-c", "2", "-w", "1",
                "-I", "eth0", ip, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.warning("cannot announce %s after restore (is arping installed?): %s", ip, exc)
            return

        async def reap() -> None:
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                proc.kill()
                await proc.wait()

        _background.add(task := asyncio.ensure_future(reap()))
        task.add_done_callback(_background.discard)

    async def kill(self) -> None:
        """SIGKILL everything in the sandbox's cgroup (the VNF and any children)."""
        if self.cgroup.exists():
            await asyncio.to_thread(self.cgroup.kill_all)

    async def fence(self) -> None:
        """Kill the VNF and take its link down: a dead VNF's netns still answers ARP for
        its address, which may by now live on another host."""
        await self.kill()
        await self.net.set_link_up(self.veth, False)

    async def terminate(self, pid: int, grace: float = 2.0) -> None:
        """SIGTERM the VNF, then SIGKILL what is left after ``grace`` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            stat = proc_state(pid)
            if stat == "Z":
                break
            await asyncio.sleep(0.02)
        await self.kill()

    async def destroy(self) -> None:
        """Kill the VNF and remove netns, veth and cgroup. Idempotent."""
        errors: list[str] = []
        try:
            await self.kill()
        except SandboxError as exc:
            errors.append(str(exc))
        try:
            await self.net.delete_link(self.veth)
            await self.net.delete_netns(self.netns)
        except HostNetworkError as exc:
            errors.append(str(exc))
        try:
            await asyncio.to_thread(self.cgroup.delete)
        except SandboxError as exc:
            errors.append(str(exc))
        # Only mount points: the mounts themselves lived in the VNF's namespace.
        await asyncio.to_thread(shutil.rmtree, self.root_dir, True)
        self.built = False
        if errors:
            raise SandboxError(f"tearing down sandbox of {self.instance_id}: " + "; ".join(errors))


def proc_state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return data.rpartition(")")[2].split()[0]
