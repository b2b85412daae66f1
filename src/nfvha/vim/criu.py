"""Async interface to the CRIU command line: dump, restore, feature detection, statistics.

The CLI (not RPC) is used because it is what operators debug with by hand: every call
here can be replayed from the logged argument list. CRIU's own figures (frozen time,
memory dump/write time, pages, restore time) come back as typed results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nfvha.errors import ConfigError, CriuError, DumpError, RestoreError
from nfvha.vim.cgroups import join_procs_files

__all__ = [
    "CRIU_MIN_VERSION",
    "CriuFeatures",
    "CriuRunner",
    "DumpOptions",
    "DumpStats",
    "NetworkLock",
    "RestoreOptions",
    "RestoreStats",
    "parse_stats",
]

log = logging.getLogger(__name__)

CRIU_MIN_VERSION = (4, 2)
NetworkLock = Literal["nftables", "iptables", "skip"]

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
PREDUMP_LOG = "pre-dump.log"


@dataclass(frozen=True)
class CriuFeatures:
    """What the installed CRIU and this kernel can do; detected once per runner."""

    binary: str
    version: str
    check_ok: bool
    check_output: str
    mem_dirty_track: bool
    uffd: bool
    uffd_noncoop: bool

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.version)[:3])


@dataclass(frozen=True)
class DumpStats:
    """CRIU's own account of a dump (from ``--display-stats``) plus our wall time."""

    freezing_time_us: int = 0
    frozen_time_us: int = 0
    memory_dump_time_us: int = 0
    memory_write_time_us: int = 0
    pages_scanned: int = 0
    pages_skipped_parent: int = 0
    pages_written: int = 0
    pages_lazy: int = 0
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RestoreStats:
    """CRIU's own account of a restore plus our wall time and the restored root pid."""

    pid: int
    restore_time_us: int = 0
    forking_time_us: int = 0
    pages_restored: int = 0
    pages_compared: int = 0
    pages_skipped_cow: int = 0
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DumpOptions:
    """How to dump one VNF tree.

    ``external_netns`` is ``(inode, key)`` of the sandbox network namespace, which the
    agent owns and keeps; CRIU then records a reference instead of dumping it.
    """

    leave_running: bool = True
    tcp_established: bool = True
    network_lock: NetworkLock = "nftables"
    external_netns: tuple[int, str] | None = None
    prev_images_dir: str | None = None  # relative to images dir, for pre-dump chains
    track_mem: bool = False
    timeout: float = 120.0
    extra_args: Sequence[str] = ()
    #: Bind mounts from the host in the VNF's private root, by their path inside (which
    #: is also their key): CRIU records them instead of dumping them.
    external_mounts: Sequence[str] = ()


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore: detached, into the netns open at ``netns_path`` under ``netns_key``.

    ``join_cgroup_procs`` lists ``cgroup.procs`` files CRIU itself joins before it forks
    the tree, so the restored VNF inherits the sandbox cgroup on any host, whatever the
    cgroup layout was where it was dumped (CRIU runs with ``--manage-cgroups=ignore``).
    """

    netns_path: str | None = None
    netns_key: str = "vnfnet"
    tcp_established: bool = True
    network_lock: NetworkLock = "nftables"
    join_cgroup_procs: Sequence[str] = ()
    work_dir: str | None = None  # logs and pidfile go here, keeping the checkpoint untouched
    lazy_pages: bool = False
    timeout: float = 120.0
    extra_args: Sequence[str] = field(default_factory=tuple)
    #: The private root's skeleton (``--root``) and ``(key, host path)`` of its binds.
    root: str | None = None
    external_mounts: Sequence[tuple[str, str]] = ()


_STAT_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z /-]*?):\s+(\d+)")
_STAT_KEYS = {
    "Freezing time": "freezing_time_us",
    "Frozen time": "frozen_time_us",
    "Memory dump time": "memory_dump_time_us",
    "Memory write time": "memory_write_time_us",
    "Memory pages scanned": "pages_scanned",
    "Memory pages skipped from parent": "pages_skipped_parent",
    "Memory pages written": "pages_written",
    "Lazy memory pages": "pages_lazy",
    "Restore time": "restore_time_us",
    "Forking time": "forking_time_us",
    "Pages restored": "pages_restored",
    "Pages compared": "pages_compared",
    "Pages skipped COW": "pages_skipped_cow",
}


def parse_stats(text: str) -> dict[str, int]:
    """Parse ``--display-stats`` output into our field names; unknown lines are ignored."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _STAT_LINE.match(line)
        if m and m.group(1) in _STAT_KEYS:
            out[_STAT_KEYS[m.group(1)]] = int(m.group(2))
    return out


def _normal_priority() -> None:
    """CRIU copies memory at full speed: it runs at normal priority, below the agent."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def _log_errors(log_path: Path, limit: int = 12) -> list[str]:
    """The lines of a CRIU log worth showing a person: errors first, else its tail."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    picked = [ln.strip() for ln in lines if "Error" in ln or "Warn" in ln]
    # RLIMIT_NOFILE for self is logged as an error on every run in a VM and is harmless.
    picked = [ln for ln in picked if "RLIMIT_NOFILE" not in ln]
    return (picked or [ln.strip() for ln in lines[-limit:]])[-limit:]


class CriuRunner:
    """Runs the ``criu`` binary; one instance per agent.

    All methods are coroutines; CRIU runs as a child process that the caller may cancel
    (the child is then killed, and no half-restored tree is left: see ``restore``).
    """

    def __init__(self, binary: str | None = None, log_level: int = 2) -> None:
        found = binary or shutil.which("criu") or "/usr/local/sbin/criu"
        self.binary = found
        self.log_level = log_level
        self._features: CriuFeatures | None = None

    # -- feature detection ---------------------------------------------------------------

    async def features(self, refresh: bool = False) -> CriuFeatures:
        """Version, ``criu check`` and the optional features nfvha can use."""
        if self._features is not None and not refresh:
            return self._features
        if not Path(self.binary).exists() and shutil.which(self.binary) is None:
            raise ConfigError(
                f"criu not found at {self.binary!r}; run `make deps` (builds CRIU >= 4.2)"
            )
        _, out, _ = await self._run(["--version"], timeout=10)
        m = re.search(r"Version:\s*(\S+)", out)
        version = m.group(1) if m else "unknown"
        rc, cout, cerr = await self._run(["check"], timeout=30)
        dirty_rc, _, _ = await self._run(["check", "--feature", "mem_dirty_track"], timeout=10)
        uffd_rc, _, _ = await self._run(["check", "--feature", "uffd"], timeout=10)
        noncoop_rc, _, _ = await self._run(["check", "--feature", "uffd-noncoop"], timeout=10)
        self._features = CriuFeatures(
            binary=self.binary,
            version=version,
            check_ok=rc == 0,
            check_output=(cout + cerr).strip(),
            mem_dirty_track=dirty_rc == 0,
            uffd=uffd_rc == 0,
            uffd_noncoop=noncoop_rc == 0,
        )
        return self._features

    async def require_usable(self) -> CriuFeatures:
        """Raise ``ConfigError`` unless CRIU is new enough and passes ``criu check``."""
        f = await self.features()
        if f.version_tuple < CRIU_MIN_VERSION:
            raise ConfigError(
                f"CRIU {f.version} at {f.binary} is too old: this kernel needs CRIU >= "
                f"{'.'.join(map(str, CRIU_MIN_VERSION))}; run `make deps`"
            )
        if not f.check_ok:
            raise ConfigError(f"`criu check` fails on this machine: {f.check_output[-400:]}")
        return f

    # -- dump ----------------------------------------------------------------------------

    def dump_args(self, pid: int, images_dir: Path, opts: DumpOptions,
                  *, pre_dump: bool = False) -> list[str]:
        """The exact argument list of a dump (public so tests and docs can show it)."""
        args = ["pre-dump" if pre_dump else "dump", "-t", str(pid), "-D", str(images_dir),
                "-o", PREDUMP_LOG if pre_dump else DUMP_LOG, "-v" + str(self.log_level),
                "--display-stats"]
        if not pre_dump:
            if opts.leave_running:
                args.append("--leave-running")
            if opts.tcp_established:
                args.append("--tcp-established")
            args += ["--network-lock", opts.network_lock]
        if opts.external_netns is not None:
            inode, key = opts.external_netns
            args += ["--external", f"net[{inode}]:{key}"]
        for target in opts.external_mounts:
            args += ["--external", f"mnt[{target}]:{target}"]
        if opts.track_mem or pre_dump:
            args.append("--track-mem")
        if opts.prev_images_dir:
            args += ["--prev-images-dir", opts.prev_images_dir]
        args += list(opts.extra_args)
        return args

    async def dump(self, pid: int, images_dir: Path, opts: DumpOptions | None = None) -> DumpStats:
        """Dump the tree rooted at ``pid`` into ``images_dir`` (which must exist)."""
        opts = opts or DumpOptions()
        return await self._dump(pid, images_dir, opts, pre_dump=False)

    async def pre_dump(self, pid: int, images_dir: Path,
                       opts: DumpOptions | None = None) -> DumpStats:
        """Copy memory while the VNF runs, so the next dump only copies dirty pages.

        Needs kernel soft-dirty tracking (``features().mem_dirty_track``).
        """
        f = await self.features()
        if not f.mem_dirty_track:
            raise ConfigError("pre-dump needs memory dirty tracking, which this kernel lacks")
        return await self._dump(pid, images_dir, opts or DumpOptions(), pre_dump=True)

    async def _dump(self, pid: int, images_dir: Path, opts: DumpOptions,
                    *, pre_dump: bool) -> DumpStats:
        if not images_dir.is_dir():
            raise DumpError(f"images directory {images_dir} does not exist")
        args = self.dump_args(pid, images_dir, opts, pre_dump=pre_dump)
        t0 = time.monotonic()
        try:
            rc, out, err = await self._run(args, timeout=opts.timeout)
        except TimeoutError as exc:
            raise DumpError(
                f"criu dump of pid {pid} timed out after {opts.timeout:.0f}s",
                _log_errors(images_dir / DUMP_LOG), str(images_dir / DUMP_LOG),
            ) from exc
        wall = time.monotonic() - t0
        log_path = images_dir / (PREDUMP_LOG if pre_dump else DUMP_LOG)
        if rc != 0:
            raise DumpError(
                f"criu {'pre-dump' if pre_dump else 'dump'} of pid {pid} failed (exit {rc})"
                f"; see {log_path}",
                _log_errors(log_path) or err.strip().splitlines()[-5:], str(log_path),
            )
        stats = parse_stats(out)
        return DumpStats(wall_seconds=wall, **stats)

    # -- restore -------------------------------------------------------------------------

    def restore_args(self, images_dir: Path, opts: RestoreOptions, *, netns_fd: int | None,
                     pidfile: Path) -> list[str]:
        args = ["restore", "-D", str(images_dir), "-o", RESTORE_LOG, "-v" + str(self.log_level),
                *(["-W", opts.work_dir] if opts.work_dir else []),
                "--restore-detached", "--pidfile", str(pidfile), "--display-stats",
                "--manage-cgroups=ignore", "--network-lock", opts.network_lock]
        if opts.tcp_established:
            args.append("--tcp-established")
        if netns_fd is not None:
            args += ["--inherit-fd", f"fd[{netns_fd}]:{opts.netns_key}"]
        if opts.lazy_pages:
            args.append("--lazy-pages")
        if opts.root:
            args += ["--root", opts.root]
        for key, source in opts.external_mounts:
            args += ["--external", f"mnt[{key}]:{source}"]
        args += list(opts.extra_args)
        return args

    async def restore(self, images_dir: Path, opts: RestoreOptions | None = None) -> RestoreStats:
        """Restore the tree from ``images_dir`` detached; returns the restored root pid.

        The restored root is re-parented to the nearest child subreaper when CRIU exits:
        the agent sets itself as one so that it can reap the VNF and learn its exit status.
        """
        opts = opts or RestoreOptions()
        work = Path(opts.work_dir) if opts.work_dir else images_dir
        pidfile = work / "restore.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        netns_fd: int | None = None
        if opts.netns_path:
            try:
                netns_fd = os.open(opts.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise RestoreError(f"cannot open target netns {opts.netns_path}: {exc}") from exc
        procs = list(opts.join_cgroup_procs)

        def _join_cgroups() -> None:  # runs in the child between fork and exec
            os.setpriority(os.PRIO_PROCESS, 0, 0)  # never ahead of the HA daemons
            join_procs_files(procs)

        args = self.restore_args(images_dir, opts, netns_fd=netns_fd, pidfile=pidfile)
        t0 = time.monotonic()
        try:
            rc, out, err = await self._run(
                args, timeout=opts.timeout,
                pass_fds=(netns_fd,) if netns_fd is not None else (),
                preexec_fn=_join_cgroups if procs else None,
            )
        except asyncio.CancelledError:
            self._kill_partial(pidfile)
            raise
        except TimeoutError as exc:
            self._kill_partial(pidfile)
            raise RestoreError(
                f"criu restore from {images_dir} timed out after {opts.timeout:.0f}s",
                _log_errors(work / RESTORE_LOG), str(work / RESTORE_LOG),
            ) from exc
        finally:
            if netns_fd is not None:
                os.close(netns_fd)
        wall = time.monotonic() - t0
        log_path = work / RESTORE_LOG
        if rc != 0:
            self._kill_partial(pidfile)
            raise RestoreError(
                f"criu restore from {images_dir} failed (exit {rc}); see {log_path}",
                _log_errors(log_path) or err.strip().splitlines()[-5:], str(log_path),
            )
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RestoreError(f"criu restore wrote no pidfile at {pidfile}") from exc
        stats = parse_stats(out)
        return RestoreStats(pid=pid, wall_seconds=wall, **stats)

    @staticmethod
    def _kill_partial(pidfile: Path) -> None:
        """A failed restore must not leave a half-restored VNF running."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- process plumbing ----------------------------------------------------------------

    async def _run(self, args: Sequence[str], *, timeout: float, pass_fds: Sequence[int] = (),
                   preexec_fn: Callable[[], None] | None = None) -> tuple[int, str, str]:
        cmd = [self.binary, *args]
        log.debug("criu: %s", " ".join(cmd))
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=tuple(pass_fds),
                preexec_fn=preexec_fn or _normal_priority,
            )
        except OSError as exc:
            raise CriuError(f"cannot run {self.binary}: {exc}; run `make deps`") from exc
        try:
            out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            raise
        assert proc.returncode is not None
        return proc.returncode, out_b.decode(errors="replace"), err_b.decode(errors="replace")
