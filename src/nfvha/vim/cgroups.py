"""Cgroups for VNF sandboxes on cgroup v1 (incl. hybrid) and v2, through plain file I/O.

The cgroup is what makes "kill the VNF" mean every process it ever forked, and what
lets the agent cap and report its memory and CPU. Everything here is synchronous: a
few small writes to cgroupfs; the async agent runs it in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import posixpath
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nfvha.errors import ConfigError, SandboxError

__all__ = ["Cgroup", "CgroupDriver", "CgroupLimits", "CgroupUsage"]

#: CFS period used for CPU quotas: 100 ms, the kernel default.
CPU_PERIOD_US = 100_000
#: The kernel refuses CFS quotas below 1 ms.
_MIN_QUOTA_US = 1_000

# v1 hierarchies a sandbox lives in. memory/cpu/cpuacct/freezer are needed for limits,
# usage and kill_all; pids is joined when mounted so a pids.max can be set later.
_V1_REQUIRED = ("memory", "cpu", "cpuacct", "freezer")
_V1_OPTIONAL = ("pids",)
# Every v1 controller name, to recognise co-mounted hierarchies (e.g. "cpu,cpuacct").
_V1_ALL = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
    "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
})
# v2 controllers to enable in each ancestor's cgroup.subtree_control.
_V2_REQUIRED = ("memory", "cpu")
_V2_OPTIONAL = ("pids",)

_POLL_S = 0.01


@dataclass(frozen=True)
class CgroupLimits:
    """Resource caps of one sandbox; ``None`` means unlimited.

    ``cpu_cores`` is a CFS quota expressed in cores (0.5 = half of one CPU's time).
    """

    memory_bytes: int | None = None
    cpu_cores: float | None = None
    pids_max: int | None = None  # tasks (processes and threads) at most: no fork bomb

    def __post_init__(self) -> None:
        if self.pids_max is not None and (isinstance(self.pids_max, bool)
                                          or self.pids_max < 1):
            raise ConfigError(f"pids limit {self.pids_max!r} is invalid; give at least 1, "
                              "or None for no limit")
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool) or self.memory_bytes < 4096
        ):
            raise ConfigError(
                f"memory limit {self.memory_bytes!r} bytes is too small; give at least one "
                "page (4096), or None for no limit"
            )
        if self.cpu_cores is not None and (
            not math.isfinite(self.cpu_cores)
            or self.cpu_cores * CPU_PERIOD_US < _MIN_QUOTA_US
        ):
            raise ConfigError(
                f"cpu limit {self.cpu_cores!r} cores is invalid; give at least "
                f"{_MIN_QUOTA_US / CPU_PERIOD_US} cores, or None for no limit"
            )


@dataclass(frozen=True)
class CgroupUsage:
    """What a sandbox consumes now: memory charged, CPU time so far, live processes."""

    memory_bytes: int
    cpu_seconds: float
    pids: int


@dataclass(frozen=True)
class _Hierarchy:
    """One mounted cgroup hierarchy: where it is and what it controls."""

    mountpoint: Path
    root: str  # the mount's root inside the hierarchy (mountinfo field 4), usually "/"
    controllers: frozenset[str]  # empty for the v2 unified hierarchy


def _check_path(path: str) -> str:
    """Normalise a relative cgroup path; refuse anything that could reach outside it."""
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise SandboxError(
            f"invalid cgroup path {path!r}: give a non-empty relative path such as "
            "'nfvha/h1/vnf/inst-1' without '.', '..' or empty components"
        )
    return "/".join(parts)


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as exc:
        raise SandboxError(f"cannot read {file}: {exc.strerror}{_hint(exc)}") from exc


def _write(file: Path, value: str) -> None:
    # One write() per value: cgroupfs parses each write as one command.
    try:
        fd = os.open(file, os.O_WRONLY)
    except OSError as exc:
        raise SandboxError(
            f"cannot open {file} to write {value!r}: {exc.strerror}{_hint(exc)}"
        ) from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise SandboxError(f"cannot write {value!r} to {file}: {exc.strerror}{_hint(exc)}") from exc
    finally:
        os.close(fd)


def _hint(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "; run the agent as root or delegate this cgroup subtree to it"
    if exc.errno == errno.ENOENT:
        return "; the cgroup or its controller is missing: create() it first"
    if exc.errno == errno.ESRCH:
        return "; the process has already exited"
    if exc.errno == errno.EBUSY:
        return "; the cgroup is busy (it still has processes, or v2 forbids processes in it)"
    if exc.errno == errno.EINVAL:
        return "; the value is out of range (check the parent cgroup's limits)"
    return ""


def _walk_dirs(top: Path) -> Iterator[Path]:
    """Every cgroup directory of the subtree, deepest first; vanished ones are skipped."""
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        yield Path(dirpath)


def join_procs_files(paths: list[str]) -> None:
    """Write the calling process's pid into each ``cgroup.procs`` file: used in a child
    between fork and exec, so that nothing it runs is ever outside the cgroup."""
    me = str(os.getpid()).encode()
    for path in paths:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, me)
        finally:
            os.close(fd)


def _read_pids(procs: Path) -> list[int]:
    try:
        text = procs.read_text()
    except FileNotFoundError:
        return []  # the cgroup was removed under us: it holds nothing
    except OSError as exc:
        raise SandboxError(f"cannot read {procs}: {exc.strerror}{_hint(exc)}") from exc
    return [int(line) for line in text.split()]


class Cgroup:
    """One logical cgroup, the same relative path in every hierarchy it needs.

    Built by :meth:`CgroupDriver.cgroup`; ``path`` is relative to the hierarchy roots.
    """

    def __init__(self, path: str, *, version: int, hierarchies: Iterable[_Hierarchy]) -> None:
        self.path = _check_path(path)
        self.version = version
        self._hierarchies = tuple(hierarchies)

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, v{self.version})"

    # -- where things are ----------------------------------------------------------

    def dirs(self) -> list[Path]:
        """This cgroup's directory in each hierarchy (one on v2)."""
        return [h.mountpoint / self.path for h in self._hierarchies]

    def dir_for(self, controller: str) -> Path:
        """The directory holding ``controller``'s files (e.g. ``memory.max``)."""
        if self.version == 2:
            return self._hierarchies[0].mountpoint / self.path
        for h in self._hierarchies:
            if controller in h.controllers:
                return h.mountpoint / self.path
        raise SandboxError(f"no {controller} hierarchy is used for cgroup {self.path!r}")

    def procs_paths(self) -> list[Path]:
        """The cgroup.procs files a launched child writes its own pid (or "0") into.

        Joining before exec means the VNF's very first allocation is charged and no
        process of it ever runs outside the cgroup.
        """
        return [d / "cgroup.procs" for d in self.dirs()]

    def exists(self) -> bool:
        """True if the directory exists in any hierarchy (so a half-made one counts)."""
        return any(d.is_dir() for d in self.dirs())

    # -- life cycle ----------------------------------------------------------------

    def create(self, limits: CgroupLimits) -> None:
        """Make the cgroup (and missing parents) everywhere and apply ``limits``.

        Re-creating an existing cgroup just re-applies the limits. If a step fails, the
        directories this call made are removed again before the error is raised.
        """
        made: list[Path] = []
        try:
            if self.version == 2:
                self._create_v2(made)
            else:
                self._create_v1(made)
            self._apply(limits)
        except BaseException:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise

    def _create_v1(self, made: list[Path]) -> None:
        for h in self._hierarchies:
            current = h.mountpoint
            for part in self.path.split("/"):
                parent, current = current, current / part
                if self._mkdir(current):
                    made.append(current)
                    # A cpuset co-mounted with one of our controllers starts a new cgroup
                    # with no CPUs or memory nodes, and joining it fails with ENOSPC.
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        if (current / name).exists() and not _read(current / name).strip():
                            _write(current / name, _read(parent / name).strip())

    def _create_v2(self, made: list[Path]) -> None:
        current = self._hierarchies[0].mountpoint
        for part in self.path.split("/"):
            self._delegate_v2(current)
            current = current / part
            if self._mkdir(current):
                made.append(current)

    @staticmethod
    def _mkdir(d: Path) -> bool:
        try:
            d.mkdir()
        except FileExistsError:
            return False
        except OSError as exc:
            raise SandboxError(f"cannot create cgroup directory {d}: {exc.strerror}{_hint(exc)}"
                               ) from exc
        return True

    @staticmethod
    def _delegate_v2(parent: Path) -> None:
        """Enable memory, cpu (and pids) for the children of ``parent``."""
        available = _read(parent / "cgroup.controllers").split()
        for name in _V2_REQUIRED:
            if name not in available:
                raise SandboxError(
                    f"cgroup v2 {name} controller not delegated to {parent} (it is missing "
                    f"from {parent / 'cgroup.controllers'}); enable it in the parent's "
                    "cgroup.subtree_control, or run the agent in a systemd unit with Delegate=yes"
                )
        enabled = _read(parent / "cgroup.subtree_control").split()
        wanted = [
            n for n in (*_V2_REQUIRED, *_V2_OPTIONAL) if n in available and n not in enabled
        ]
        if not wanted:
            return
        control = parent / "cgroup.subtree_control"
        try:
            fd = os.open(control, os.O_WRONLY)
            try:
                os.write(fd, " ".join("+" + n for n in wanted).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            extra = ""
            if exc.errno == errno.EBUSY:
                extra = (
                    f"; {parent} holds processes of its own and v2 forbids controllers there "
                    "('no internal processes'): use a cgroup path whose ancestors hold no "
                    "processes, e.g. a dedicated subtree for the agent's VNFs"
                )
            raise SandboxError(
                f"cannot enable {' '.join(wanted)} in {control}: {exc.strerror}"
                f"{extra or _hint(exc)}"
            ) from exc

    def _apply(self, limits: CgroupLimits) -> None:
        self._apply_pids(limits.pids_max)
        if self.version == 2:
            d = self.dir_for("memory")
            _write(d / "memory.max", str(limits.memory_bytes or "max"))
            # Counting swap inside the limit makes "over the limit" mean OOM-killed, not
            # silently slowed down by swapping: a crash the HA layer sees and handles.
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0" if limits.memory_bytes else "max")
            quota = "max" if limits.cpu_cores is None else str(_quota_us(limits.cpu_cores))
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        mem = self.dir_for("memory")
        value = str(limits.memory_bytes) if limits.memory_bytes else "-1"
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            # RAM+swap = RAM limit: no swapping past the limit, as on v2 above. memsw must
            # stay >= the RAM limit at every moment, so the order of the two writes
            # depends on whether the limit goes down or up.
            try:
                _write(mem / "memory.limit_in_bytes", value)
                _write(memsw, value)
            except SandboxError:
                _write(memsw, value)
                _write(mem / "memory.limit_in_bytes", value)
        else:
            _write(mem / "memory.limit_in_bytes", value)
        cpu = self.dir_for("cpu")
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota_v1 = "-1" if limits.cpu_cores is None else str(_quota_us(limits.cpu_cores))
        _write(cpu / "cpu.cfs_quota_us", quota_v1)

    def set_pids_max(self, pids_max: int | None) -> None:
        """Change the pids limit of an existing cgroup (see ``Sandbox.restore``)."""
        self._apply_pids(pids_max)

    def _apply_pids(self, pids_max: int | None) -> None:
        try:
            d = self.dir_for("pids")
        except SandboxError:
            if pids_max is not None:
                raise SandboxError("the pids cgroup controller is not available here, so "
                                   "resources.pids cannot be enforced") from None
            return
        if (d / "pids.max").exists():
            _write(d / "pids.max", str(pids_max) if pids_max is not None else "max")

    def add_pid(self, pid: int) -> None:
        """Move ``pid`` (the whole process) into this cgroup in every hierarchy."""
        for procs in self.procs_paths():
            _write(procs, str(pid))

    # -- reading -------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process in the subtree, in any of the hierarchies, sorted."""
        found: set[int] = set()
        for d in self.dirs():
            if not d.is_dir():
                continue
            for sub in _walk_dirs(d):
                found.update(_read_pids(sub / "cgroup.procs"))
        return sorted(found)

    def usage(self) -> CgroupUsage:
        """Memory charged now, CPU time consumed so far, and live processes."""
        if self.version == 2:
            d = self.dir_for("memory")
            memory = int(_read(d / "memory.current"))
            stat = dict(line.split() for line in _read(d / "cpu.stat").splitlines() if line)
            cpu_seconds = int(stat["usage_usec"]) / 1e6
        else:
            memory = int(_read(self.dir_for("memory") / "memory.usage_in_bytes"))
            cpu_seconds = int(_read(self.dir_for("cpuacct") / "cpuacct.usage")) / 1e9
        return CgroupUsage(memory_bytes=memory, cpu_seconds=cpu_seconds, pids=len(self.pids()))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup at its
        memory limit (v2 ``memory.events``, v1 ``memory.oom_control``); 0 if unknown."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = _read(self.dir_for("memory") / name)
        except (SandboxError, OSError):
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    # -- killing -------------------------------------------------------------------

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the subtree at once, as a power loss would.

        The processes get no chance to react (no SIGTERM): a failover test must see the
        state a crash leaves. Freezing first stops a fork loop from outrunning the kill.
        Raises SandboxError if any process is still there after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        if not self.pids():
            return
        top = self.dir_for("freezer")
        if self.version == 2 and (top / "cgroup.kill").exists():
            # Atomic in the kernel, including processes forked during the kill.
            _write(top / "cgroup.kill", "1")
        elif self.version == 2:
            self._freeze_kill_thaw(
                top / "cgroup.freeze", "1", "0", self._v2_frozen, deadline, timeout
            )
        else:
            self._freeze_kill_thaw(
                top / "freezer.state", "FROZEN", "THAWED", self._v1_frozen, deadline, timeout
            )
        # Dying processes leave the cgroup a moment later; re-kill any straggler (e.g.
        # forked between a read of cgroup.procs and the freeze taking hold).
        while True:
            left = self.pids()
            if not left:
                return
            if time.monotonic() >= deadline:
                break
            for pid in left:
                self._kill_member(pid)
            time.sleep(_POLL_S)
        raise SandboxError(
            f"{len(left)} process(es) still in cgroup {self.path!r} {timeout:g}s after SIGKILL "
            f"(pids {left[:10]}); they are probably in uninterruptible sleep (state D): "
            "check /proc/<pid>/stack, then retry"
        )

    def _freeze_kill_thaw(
        self,
        state_file: Path,
        frozen: str,
        thawed: str,
        is_frozen: Callable[[], bool],
        deadline: float,
        timeout: float,
    ) -> None:
        _write(state_file, frozen)
        try:
            # Wait at most half the budget: a task stuck in D state never freezes, and we
            # still want to SIGKILL the rest.
            freeze_deadline = min(deadline, time.monotonic() + timeout / 2)
            while not is_frozen() and time.monotonic() < freeze_deadline:
                time.sleep(_POLL_S)
            for pid in self.pids():
                self._kill_member(pid)
        finally:
            # A killed task only dies once thawed (v1), and a cgroup must never be left
            # frozen with survivors in it. Descendants are thawed too: one frozen by a
            # kill of its own that was cut short (its caller killed with this subtree)
            # would keep its tasks frozen with their SIGKILL pending, forever.
            for child_state in sorted(state_file.parent.rglob(state_file.name), reverse=True):
                with contextlib.suppress(OSError):
                    _write(child_state, thawed)
            _write(state_file, thawed)

    def _v1_frozen(self) -> bool:
        return _read(self.dir_for("freezer") / "freezer.state").strip() == "FROZEN"

    def _v2_frozen(self) -> bool:
        events = _read(self.dir_for("freezer") / "cgroup.events")
        return re.search(r"^frozen 1$", events, re.MULTILINE) is not None

    def _kill_member(self, pid: int) -> None:
        """SIGKILL ``pid`` only if it is still ours; a pidfd pins it against pid reuse."""
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = None  # kernel without pidfd: accept the (tiny) reuse window
        try:
            if not self._contains(pid):
                return
            if fd is None:
                os.kill(pid, signal.SIGKILL)
            else:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            if fd is not None:
                os.close(fd)

    def _contains(self, pid: int) -> bool:
        """Does /proc/<pid>/cgroup place the process inside this subtree?"""
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        for line in text.splitlines():
            hier_id, _, rest = line.partition(":")
            ctrl_field, _, proc_path = rest.partition(":")
            ctrls = frozenset(ctrl_field.split(",")) if ctrl_field else frozenset()
            for h in self._hierarchies:
                same = (hier_id == "0" and not ctrl_field) if self.version == 2 else bool(
                    ctrls & h.controllers
                )
                if not same:
                    continue
                mine = posixpath.join(h.root, self.path)
                if proc_path == mine or proc_path.startswith(mine + "/"):
                    return True
        return False

    # -- removal -------------------------------------------------------------------

    def delete(self, timeout: float = 5.0) -> None:
        """Remove the subtree in every hierarchy, deepest first; absent is fine.

        Processes still inside are killed first (kill_all), since rmdir refuses a
        populated cgroup.
        """
        deadline = time.monotonic() + timeout
        if self.exists() and self.pids():
            self.kill_all(timeout)
        for top in self.dirs():
            if not top.is_dir():
                continue
            for d in _walk_dirs(top):
                self._rmdir(d, deadline)

    @staticmethod
    def _rmdir(d: Path, deadline: float) -> None:
        # Right after the last task exits the cgroup can still read as populated for a
        # moment, so EBUSY is retried until the deadline.
        while True:
            try:
                d.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise SandboxError(
                        f"cannot remove cgroup directory {d}: {exc.strerror}{_hint(exc)}"
                    ) from exc
            time.sleep(_POLL_S)


def _quota_us(cores: float) -> int:
    return max(_MIN_QUOTA_US, round(cores * CPU_PERIOD_US))


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> tuple[dict[str, _Hierarchy], _Hierarchy | None]:
    """(v1 hierarchy per controller, first cgroup2 mount) from /proc/self/mountinfo."""
    v1: dict[str, _Hierarchy] = {}
    v2: _Hierarchy | None = None
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        fstype, superopts = fields[sep + 1], fields[sep + 3]
        root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2" and v2 is None:
            v2 = _Hierarchy(mountpoint, root, frozenset())
        elif fstype == "cgroup":
            ctrls = frozenset(superopts.split(",")) & _V1_ALL
            hier = _Hierarchy(mountpoint, root, ctrls)
            for c in ctrls:
                # The first mount of a hierarchy wins; later ones are usually bind mounts.
                v1.setdefault(c, hier)
    return v1, v2



class CgroupDriver:
    """Knows which cgroup version the host runs and where each hierarchy is mounted.

    On hybrid hosts (v1 controllers plus an empty v2 mount) v1 is used, because that is
    where the memory controller lives.
    """

    def __init__(self, version: int, hierarchies: Iterable[_Hierarchy]) -> None:
        self.version = version
        self._hierarchies = tuple(hierarchies)

    def __repr__(self) -> str:
        mounts = ", ".join(str(h.mountpoint) for h in self._hierarchies)
        return f"CgroupDriver(v{self.version}: {mounts})"

    @classmethod
    def detect(
        cls,
        mountinfo: Path = Path("/proc/self/mountinfo"),
    ) -> CgroupDriver:
        """Read the mount table; raise ConfigError if no usable memory controller."""
        try:
            text = mountinfo.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {mountinfo}: {exc.strerror}; is /proc mounted?"
                              ) from exc
        v1, v2 = _parse_mountinfo(text)
        if "memory" in v1:
            missing = [c for c in _V1_REQUIRED if c not in v1]
            if missing:
                raise ConfigError(
                    f"cgroup v1 hierarchies for {', '.join(missing)} are not mounted; mount "
                    "them (e.g. `mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer`)"
                )
            ordered: list[_Hierarchy] = []
            for c in (*_V1_REQUIRED, *_V1_OPTIONAL):
                h = v1.get(c)
                if h is not None and h not in ordered:
                    ordered.append(h)
            return cls(1, ordered)
        if v2 is not None:
            controllers_file = v2.mountpoint / "cgroup.controllers"
            available = _read(controllers_file).split()
            missing = [c for c in _V2_REQUIRED if c not in available]
            if missing:
                raise ConfigError(
                    f"cgroup v2 at {v2.mountpoint} offers no {', '.join(missing)} controller "
                    f"({controllers_file}: {' '.join(available) or 'empty'}); delegate them "
                    "to the agent or mount the v1 hierarchies"
                )
            return cls(2, [v2])
        raise ConfigError("no cgroup filesystem is mounted; mount cgroup2 on /sys/fs/cgroup")

    def cgroup(self, path: str) -> Cgroup:
        """The cgroup at ``path`` (relative to the hierarchy roots); nothing is created."""
        return Cgroup(path, version=self.version, hierarchies=self._hierarchies)

    def own_cgroup_path(self) -> str:
        """This process's cgroup, relative like cgroup() paths ("" for the root).

        From the memory hierarchy on v1, the unified one on v2.
        """
        primary = self._hierarchies[0]
        text = _read(Path("/proc/self/cgroup"))
        for line in text.splitlines():
            hier_id, _, rest = line.partition(":")
            ctrl_field, _, proc_path = rest.partition(":")
            if self.version == 2:
                if hier_id != "0" or ctrl_field:
                    continue
            elif "memory" not in ctrl_field.split(","):
                continue
            rel = posixpath.relpath(proc_path, primary.root) if primary.root != "/" else proc_path
            rel = rel.strip("/")
            return "" if rel == "." else rel
        raise SandboxError(
            f"/proc/self/cgroup has no {'v2' if self.version == 2 else 'memory'} entry; "
            "is this process in a cgroup namespace that hides it?"
        )

    def list_children(self, path: str) -> list[str]:
        """Names of the child cgroups of ``path`` ("" = root), across all hierarchies."""
        rel = path.strip("/")
        if rel:
            rel = _check_path(rel)
        names: set[str] = set()
        for h in self._hierarchies:
            d = h.mountpoint / rel if rel else h.mountpoint
            try:
                names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SandboxError(f"cannot list {d}: {exc.strerror}{_hint(exc)}") from exc
        return sorted(names)
