"""Cgroups against the real kernel: limits land, processes are tracked, killed and OOM-killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfvha.errors import ConfigError, SandboxError
from nfvha.vim.cgroups import Cgroup, CgroupDriver, CgroupLimits, _Hierarchy

pytestmark = pytest.mark.e2e

BASE = f"nfvt-{os.getpid()}"
MiB = 1 << 20


@pytest.fixture
def driver() -> CgroupDriver:
    return CgroupDriver.detect()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts; killed and reaped whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def cg(driver: CgroupDriver, procs: list[subprocess.Popen[bytes]]) -> Iterator[Cgroup]:
    """A fresh cgroup under BASE; the whole BASE subtree is removed afterwards."""
    top = driver.cgroup(BASE)
    top.delete()
    try:
        yield driver.cgroup(f"{BASE}/vnf/inst-1")
    finally:
        top.delete()
        assert not top.exists()
        assert BASE not in driver.list_children("")


def _start_in(cgroup: Cgroup, argv: list[str], procs: list[subprocess.Popen[bytes]]
              ) -> subprocess.Popen[bytes]:
    """Start argv already inside the cgroup, the way the sandbox launcher does."""
    paths = [str(p) for p in cgroup.procs_paths()]

    def join() -> None:
        for path in paths:
            with open(path, "w") as f:
                f.write("0")

    p = subprocess.Popen(argv, preexec_fn=join, stdout=subprocess.PIPE)
    procs.append(p)
    return p


def _wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet: either way it runs no more code."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_limits_land_in_the_kernel_files(driver: CgroupDriver, cg: Cgroup) -> None:
    cg.create(CgroupLimits(memory_bytes=32 * MiB, cpu_cores=0.5))
    assert cg.exists()
    assert all(d.is_dir() for d in cg.dirs())
    assert driver.list_children(BASE) == ["vnf"]
    assert driver.list_children(f"{BASE}/vnf") == ["inst-1"]
    mem, cpu = cg.dir_for("memory"), cg.dir_for("cpu")
    if driver.version == 2:
        assert (mem / "memory.max").read_text().strip() == str(32 * MiB)
        assert (cpu / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(32 * MiB)
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"

    # Re-creating re-applies: no limits means unlimited again.
    cg.create(CgroupLimits())
    if driver.version == 2:
        assert (mem / "memory.max").read_text().strip() == "max"
        assert (cpu / "cpu.max").read_text().split()[0] == "max"
    else:
        assert int((mem / "memory.limit_in_bytes").read_text()) > 1 << 50
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"


def test_processes_are_tracked_measured_and_killed(
    cg: Cgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    cg.create(CgroupLimits(memory_bytes=256 * MiB))
    busy = (
        "import time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    vnf = _start_in(cg, [sys.executable, "-S", "-c", busy], procs)
    assert vnf.stdout is not None and vnf.stdout.readline() == b"ready\n"
    sleeper = subprocess.Popen(["sleep", "60"])
    procs.append(sleeper)
    cg.add_pid(sleeper.pid)

    assert cg.pids() == sorted([vnf.pid, sleeper.pid])
    usage = cg.usage()
    assert usage.pids == 2
    assert usage.memory_bytes > 1 * MiB  # the interpreter, charged since before exec
    assert usage.cpu_seconds >= 0.25

    cg.kill_all(timeout=5)
    assert vnf.wait(timeout=5) == -signal.SIGKILL
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert cg.pids() == []
    assert cg.usage().pids == 0


def test_kill_all_reaches_forked_and_orphaned_descendants(
    cg: Cgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    cg.create(CgroupLimits())
    # Three children, one of which double-forks a daemon that init inherits (out of
    # reach of any process-tree walk), then a bounded fork loop still running while
    # kill_all acts: the freeze must stop it from outrunning the kill.
    tree = (
        "import os, sys, time\n"
        "for i in range(3):\n"
        "    if os.fork() == 0:\n"
        "        if i == 0 and os.fork() == 0:\n"
        "            os.setsid()\n"
        "            if os.fork() == 0: time.sleep(60); os._exit(0)\n"
        "            os._exit(0)\n"
        "        time.sleep(60); os._exit(0)\n"
        "print('forked', flush=True)\n"
        "for _ in range(300):\n"
        "    if os.fork() == 0: time.sleep(60); os._exit(0)\n"
        "    time.sleep(0.01)\n"
        "time.sleep(60)\n"
    )
    vnf = _start_in(cg, [sys.executable, "-S", "-c", tree], procs)
    assert vnf.stdout is not None and vnf.stdout.readline() == b"forked\n"
    assert _wait_for(lambda: len(cg.pids()) >= 8), cg.pids()
    before = cg.pids()

    cg.kill_all(timeout=5)
    assert vnf.wait(timeout=5) == -signal.SIGKILL
    assert cg.pids() == []
    assert _wait_for(lambda: all(_dead(pid) for pid in before))


def test_delete_kills_what_is_left_and_removes_every_hierarchy_dir(
    cg: Cgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    cg.create(CgroupLimits(memory_bytes=64 * MiB, cpu_cores=1.0))
    vnf = _start_in(cg, ["sleep", "60"], procs)
    dirs = cg.dirs()
    assert _wait_for(lambda: cg.pids() == [vnf.pid])

    cg.delete(timeout=5)
    assert vnf.wait(timeout=5) == -signal.SIGKILL
    assert not cg.exists()
    assert not any(d.exists() for d in dirs)
    assert all(d.parent.is_dir() for d in dirs)  # only the subtree went
    cg.delete()  # idempotent
    cg.kill_all()  # nothing left to kill is not an error


def test_memory_limit_is_enforced_by_the_oom_killer(
    driver: CgroupDriver, cg: Cgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    cg.create(CgroupLimits(memory_bytes=32 * MiB))
    hog = "x = b'\\x01' * (128 << 20)\nprint('survived', flush=True)\n"
    vnf = _start_in(cg, [sys.executable, "-S", "-c", hog], procs)
    assert vnf.wait(timeout=30) == -signal.SIGKILL
    assert vnf.stdout is not None and vnf.stdout.read() == b""
    mem = cg.dir_for("memory")
    events_file = mem / ("memory.events" if driver.version == 2 else "memory.oom_control")
    events = dict(line.split() for line in events_file.read_text().splitlines())
    assert int(events["oom_kill"]) >= 1


def test_cpu_quota_throttles(cg: Cgroup, procs: list[subprocess.Popen[bytes]]) -> None:
    cg.create(CgroupLimits(cpu_cores=0.2))
    spin = (
        "import time\n"
        "t = time.monotonic()\n"
        "while time.monotonic() - t < 1.0: pass\n"
        "print(time.process_time(), flush=True)\n"
    )
    vnf = _start_in(cg, [sys.executable, "-S", "-c", spin], procs)
    out, _ = vnf.communicate(timeout=15)
    # Unthrottled it would use ~1 s of CPU in that wall second; 0.2 cores allows ~0.2 s.
    assert float(out) < 0.5


def test_bad_paths_and_limits_are_refused(driver: CgroupDriver) -> None:
    for bad in ("", "/", "..", f"{BASE}/../etc", "a//b", "./a"):
        with pytest.raises(SandboxError, match="invalid cgroup path"):
            driver.cgroup(bad)
    with pytest.raises(ConfigError, match="memory limit"):
        CgroupLimits(memory_bytes=0)
    with pytest.raises(ConfigError, match="cpu limit"):
        CgroupLimits(cpu_cores=0.0)
    with pytest.raises(ConfigError, match="cpu limit"):
        CgroupLimits(cpu_cores=float("nan"))


def test_own_cgroup_path_is_where_this_process_is(driver: CgroupDriver) -> None:
    own = driver.own_cgroup_path()
    assert not own.startswith("/")
    if own:
        procs_file = driver.cgroup(own).dir_for("memory") / "cgroup.procs"
        assert os.getpid() in [int(x) for x in procs_file.read_text().split()]


def test_v2_kill_and_delete_on_the_unified_mount(
    driver: CgroupDriver, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The v2 kill path (cgroup.kill), run for real even on a hybrid host.

    A hybrid host's unified mount has no memory/cpu controllers, but cgroup.procs,
    cgroup.kill and rmdir are core v2 features, so a hand-made v2 cgroup exercises them.
    """
    unified = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            unified = Path(fields[4])
            break
    if unified is None:
        pytest.skip("no cgroup2 mount")
    v2 = CgroupDriver(2, [_Hierarchy(unified, "/", frozenset())])
    top, cg = v2.cgroup(BASE), v2.cgroup(f"{BASE}/vnf")
    try:
        (unified / BASE / "vnf").mkdir(parents=True)
        if not (unified / BASE / "vnf" / "cgroup.kill").exists():
            pytest.skip("no cgroup.kill (kernel < 5.14)")
        tree = _start_in(cg, ["sh", "-c", "sleep 60 & sleep 60 & wait"], procs)
        assert _wait_for(lambda: len(cg.pids()) == 3), cg.pids()
        cg.kill_all(timeout=5)
        assert tree.wait(timeout=5) == -signal.SIGKILL
        assert cg.pids() == []
        top.delete(timeout=5)
        assert not (unified / BASE).exists()
    finally:
        top.delete(timeout=5)


def _fake_mountinfo(tmp_path: Path, *lines: str) -> Path:
    f = tmp_path / "mountinfo"
    f.write_text("".join(line + "\n" for line in lines))
    return f


def test_detect_pure_v2_hybrid_and_co_mounted_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg root"  # a space, escaped as \040 in mountinfo
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    esc = str(root).replace(" ", "\\040")
    v2_line = f"30 23 0:26 / {esc} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
    pure = CgroupDriver.detect(_fake_mountinfo(tmp_path, v2_line))
    assert pure.version == 2
    assert pure.cgroup("a/b").dirs() == [root / "a" / "b"]
    assert pure.cgroup("a/b").dir_for("memory") == root / "a" / "b"

    v1_lines = [
        "32 31 0:29 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "35 31 0:32 / /c/memory rw - cgroup cgroup rw,memory",
        "37 31 0:34 / /c/freezer rw - cgroup cgroup rw,freezer",
        "40 31 0:37 / /c/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        v2_line,
    ]
    hybrid = CgroupDriver.detect(_fake_mountinfo(tmp_path, *v1_lines))
    assert hybrid.version == 1
    cg = hybrid.cgroup("x")
    assert cg.dirs() == [Path("/c/memory/x"), Path("/c/cpu,cpuacct/x"), Path("/c/freezer/x")]
    assert cg.dir_for("cpuacct") == cg.dir_for("cpu") == Path("/c/cpu,cpuacct/x")

    with pytest.raises(ConfigError, match="freezer"):
        CgroupDriver.detect(_fake_mountinfo(tmp_path, *v1_lines[:2]))
    (root / "cgroup.controllers").write_text("cpu io pids\n")
    with pytest.raises(ConfigError, match="memory"):
        CgroupDriver.detect(_fake_mountinfo(tmp_path, v2_line))
