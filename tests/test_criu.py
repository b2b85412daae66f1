"""The CRIU runner: exact command lines, CRIU's own figures, and errors a person can act on.

A small shell script stands in for ``criu`` so that no root and no kernel support are
needed; it understands just enough of the CLI (``-D``, ``-o``, ``-W``, ``--pidfile``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from nfvha.errors import ConfigError, CriuError, DumpError, RestoreError
from nfvha.vim.criu import (
    CriuRunner,
    DumpOptions,
    DumpStats,
    RestoreOptions,
    RestoreStats,
    parse_stats,
)

DUMP_STATS = (
    "Displaying dump stats:\nFreezing time: 133 us\nFrozen time: 95388 us\n"
    "Memory dump time: 4601 us\nMemory write time: 2862 us\nIRMAP resolve time: 0 us\n"
    "Memory pages scanned: 1896 (0x768)\nMemory pages skipped from parent: 0 (0x0)\n"
    "Memory pages written: 1793 (0x701)\nLazy memory pages: 0 (0x0)"
)
RESTORE_STATS = (
    "Displaying restore stats:\nPages compared: 0 (0x0)\nPages skipped COW: 0 (0x0)\n"
    "Pages restored: 1793 (0x701)\nRestore time: 31770 us\nForking time: 0 us"
)

# Bodies for the fake's actions; $dir, $logname, $work, $pidfile come from its arguments.
DUMP_OK = f"printf '%s\\n' '{DUMP_STATS}'; exit 0"
DUMP_FAIL = ('echo "(00.002) Error (criu/x.c:1): boom" > "$dir/$logname"; '
             'echo "dump failed" >&2; exit 1')
RESTORE_OK = f"echo 4242 > \"$pidfile\"; printf '%s\\n' '{RESTORE_STATS}'; exit 0"
RESTORE_FAIL = ('echo "(00.003) Error (criu/y.c:2): restore boom" > "${work:-$dir}/$logname"; '
                'exit 1')


def fake_criu(tmp_path: Path, *, version: str = "4.2", check: str = "exit 0",
              dump: str = DUMP_OK, restore: str = RESTORE_OK) -> Path:
    """Write a stand-in ``criu``; every call's arguments are appended to ``calls.log``."""
    script = tmp_path / "criu"
    script.write_text(f"""#!/bin/sh
echo "$*" >> "{tmp_path / 'calls.log'}"
action="$1"
all="$*"
dir=""; logname=""; work=""; pidfile=""; inherit=""
while [ $# -gt 0 ]; do
  case "$1" in
    -D) dir="$2"; shift;;
    -o) logname="$2"; shift;;
    -W) work="$2"; shift;;
    --pidfile) pidfile="$2"; shift;;
    --inherit-fd) inherit="$2"; shift;;
  esac
  shift
done
case "$action" in
  --version) echo "Version: {version}"; echo "GitID: v{version}"; exit 0;;
  check) {check};;
  dump|pre-dump) {dump};;
  restore) {restore};;
esac
exit 2
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


# -- statistics ------------------------------------------------------------------------


def test_parse_dump_stats() -> None:
    assert parse_stats(DUMP_STATS) == {
        "freezing_time_us": 133,
        "frozen_time_us": 95388,
        "memory_dump_time_us": 4601,
        "memory_write_time_us": 2862,
        "pages_scanned": 1896,
        "pages_skipped_parent": 0,
        "pages_written": 1793,
        "pages_lazy": 0,
    }


def test_parse_restore_stats() -> None:
    assert parse_stats(RESTORE_STATS) == {
        "pages_compared": 0,
        "pages_skipped_cow": 0,
        "pages_restored": 1793,
        "restore_time_us": 31770,
        "forking_time_us": 0,
    }


def test_parse_stats_ignores_noise() -> None:
    text = "Warn: something\n(00.1) Frozen time: 12 us\nFrozen time: 7 us\ngarbage: x\n\n"

    assert parse_stats(text) == {"frozen_time_us": 7}


def test_parsed_stats_fill_the_typed_results() -> None:
    dump = DumpStats(**parse_stats(DUMP_STATS))
    restore = RestoreStats(pid=1, **parse_stats(RESTORE_STATS))

    assert dump.as_dict()["frozen_time_us"] == 95388
    assert restore.as_dict()["restore_time_us"] == 31770


# -- command lines ---------------------------------------------------------------------


def test_dump_args_default() -> None:
    args = CriuRunner("criu").dump_args(1234, Path("/ck/1"), DumpOptions())

    assert args[0] == "dump"
    assert after(args, "-t") == "1234"
    assert after(args, "-D") == "/ck/1"
    assert after(args, "-o") == "dump.log"
    assert "-v2" in args
    assert "--display-stats" in args
    assert "--leave-running" in args
    assert "--tcp-established" in args
    assert after(args, "--network-lock") == "nftables"
    assert "--external" not in args
    assert "--track-mem" not in args


def test_dump_args_options() -> None:
    opts = DumpOptions(leave_running=False, tcp_established=False, network_lock="skip",
                       external_netns=(4026532211, "vnfnet"), track_mem=True,
                       prev_images_dir="../0", extra_args=("--ghost-limit", "1M"))

    args = CriuRunner("criu", log_level=4).dump_args(7, Path("/ck/2"), opts)

    assert "--leave-running" not in args
    assert "--tcp-established" not in args
    assert after(args, "--network-lock") == "skip"
    assert after(args, "--external") == "net[4026532211]:vnfnet"
    assert "--track-mem" in args
    assert after(args, "--prev-images-dir") == "../0"
    assert "-v4" in args
    assert args[-2:] == ["--ghost-limit", "1M"]


def test_pre_dump_args_track_memory_and_leave_the_vnf_alone() -> None:
    args = CriuRunner("criu").dump_args(7, Path("/ck/3"), DumpOptions(), pre_dump=True)

    assert args[0] == "pre-dump"
    assert after(args, "-o") == "pre-dump.log"
    assert "--track-mem" in args
    assert "--leave-running" not in args
    assert "--network-lock" not in args


def test_restore_args() -> None:
    opts = RestoreOptions(netns_key="vnfnet", work_dir="/run/w", network_lock="iptables",
                          lazy_pages=True)

    args = CriuRunner("criu").restore_args(Path("/ck/1"), opts, netns_fd=7,
                                           pidfile=Path("/run/w/restore.pid"))

    assert args[0] == "restore"
    assert after(args, "-D") == "/ck/1"
    assert after(args, "-o") == "restore.log"
    assert after(args, "-W") == "/run/w"
    assert "--restore-detached" in args
    assert after(args, "--pidfile") == "/run/w/restore.pid"
    assert "--manage-cgroups=ignore" in args
    assert after(args, "--network-lock") == "iptables"
    assert "--tcp-established" in args
    assert after(args, "--inherit-fd") == "fd[7]:vnfnet"
    assert "--lazy-pages" in args


def test_restore_args_without_netns_or_workdir() -> None:
    args = CriuRunner("criu").restore_args(Path("/ck/1"), RestoreOptions(tcp_established=False),
                                           netns_fd=None, pidfile=Path("/ck/1/restore.pid"))

    assert "-W" not in args
    assert "--inherit-fd" not in args
    assert "--tcp-established" not in args
    assert "--lazy-pages" not in args


# -- feature detection -----------------------------------------------------------------


async def test_features_parse_version_and_checks(tmp_path: Path) -> None:
    check = 'case "$all" in *uffd-noncoop*) exit 1;; *) exit 0;; esac'
    runner = CriuRunner(str(fake_criu(tmp_path, version="4.2", check=check)))

    f = await runner.features()

    assert f.version == "4.2"
    assert f.version_tuple == (4, 2)
    assert f.check_ok
    assert f.mem_dirty_track
    assert f.uffd
    assert not f.uffd_noncoop
    assert await runner.require_usable() == f


async def test_features_are_detected_once(tmp_path: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path)))

    await runner.features()
    n = len(calls(tmp_path))
    await runner.features()

    assert len(calls(tmp_path)) == n
    await runner.features(refresh=True)
    assert len(calls(tmp_path)) == 2 * n


async def test_old_criu_is_refused(tmp_path: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, version="4.1")))

    with pytest.raises(ConfigError, match=r"CRIU 4\.1 .* too old.*>= 4\.2"):
        await runner.require_usable()


async def test_newer_minor_version_is_not_mistaken_for_older(tmp_path: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, version="4.10")))

    assert (await runner.require_usable()).version_tuple == (4, 10)


async def test_failing_criu_check_is_refused_with_its_output(tmp_path: Path) -> None:
    check = 'echo "Error: no userfaultfd" >&2; exit 1'
    runner = CriuRunner(str(fake_criu(tmp_path, check=check)))

    with pytest.raises(ConfigError, match="no userfaultfd"):
        await runner.require_usable()


async def test_missing_criu_says_how_to_get_it(tmp_path: Path) -> None:
    runner = CriuRunner(str(tmp_path / "no-such-criu"))

    with pytest.raises(ConfigError, match="make deps"):
        await runner.features()


async def test_pre_dump_refused_without_dirty_tracking(tmp_path: Path, images: Path) -> None:
    check = 'case "$all" in *mem_dirty_track*) exit 1;; *) exit 0;; esac'
    runner = CriuRunner(str(fake_criu(tmp_path, check=check)))

    with pytest.raises(ConfigError, match="dirty tracking"):
        await runner.pre_dump(1, images)


# -- dump ------------------------------------------------------------------------------


async def test_dump_returns_criu_figures(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path)))

    stats = await runner.dump(4321, images, DumpOptions(external_netns=(99, "vnfnet")))

    assert isinstance(stats, DumpStats)
    assert stats.frozen_time_us == 95388
    assert stats.pages_written == 1793
    assert stats.wall_seconds > 0
    [call] = calls(tmp_path)
    assert call.startswith(f"dump -t 4321 -D {images} -o dump.log")
    assert "--external net[99]:vnfnet" in call


async def test_failed_dump_shows_criu_log_errors(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, dump=DUMP_FAIL)))

    with pytest.raises(DumpError) as exc_info:
        await runner.dump(4321, images)

    err = exc_info.value
    assert any("boom" in line for line in err.log_lines)
    assert err.log_path == str(images / "dump.log")
    assert str(images / "dump.log") in str(err)
    assert "pid 4321" in str(err)
    assert "exit 1" in str(err)
    assert "boom" in str(err)  # the reason travels with the message into logs


async def test_failed_dump_without_log_falls_back_to_stderr(tmp_path: Path,
                                                            images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, dump='echo "cannot attach" >&2; exit 1')))

    with pytest.raises(DumpError) as exc_info:
        await runner.dump(1, images)

    assert exc_info.value.log_lines == ["cannot attach"]


async def test_dump_into_missing_directory_fails_before_running_criu(tmp_path: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path)))

    with pytest.raises(DumpError, match="does not exist"):
        await runner.dump(1, tmp_path / "absent")
    assert not (tmp_path / "calls.log").exists()


async def test_hanging_dump_times_out_and_criu_is_killed(tmp_path: Path, images: Path) -> None:
    pid_file = tmp_path / "hung.pid"
    runner = CriuRunner(str(fake_criu(tmp_path, dump=f'echo $$ > "{pid_file}"; exec sleep 30')))

    t0 = time.monotonic()
    with pytest.raises(DumpError, match="timed out") as exc_info:
        await runner.dump(4321, images, DumpOptions(timeout=0.5))

    assert time.monotonic() - t0 < 3
    assert exc_info.value.log_path == str(images / "dump.log")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_unrunnable_criu_is_a_criu_error(tmp_path: Path, images: Path) -> None:
    not_executable = tmp_path / "criu"
    not_executable.write_text("#!/bin/sh\n")

    with pytest.raises(CriuError, match="cannot run"):
        await CriuRunner(str(not_executable)).dump(1, images)


# -- restore ---------------------------------------------------------------------------


async def test_restore_returns_pid_and_figures(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path)))

    stats = await runner.restore(images)

    assert isinstance(stats, RestoreStats)
    assert stats.pid == 4242
    assert stats.restore_time_us == 31770
    assert stats.pages_restored == 1793
    assert f"--pidfile {images / 'restore.pid'}" in calls(tmp_path)[0]


async def test_restore_passes_the_target_netns_as_an_inherited_fd(tmp_path: Path,
                                                                  images: Path) -> None:
    netns = tmp_path / "netns"
    netns.write_text("")
    seen = tmp_path / "fd-open"
    # Report whether the fd named in --inherit-fd fd[N]:key is really open in criu.
    restore = ('n=${inherit#fd[}; n=${n%%]*}; '
               f'if [ -e /proc/$$/fd/$n ]; then echo yes > "{seen}"; fi; ' + RESTORE_OK)
    runner = CriuRunner(str(fake_criu(tmp_path, restore=restore)))

    await runner.restore(images, RestoreOptions(netns_path=str(netns), netns_key="vnfnet"))

    assert seen.read_text().strip() == "yes"
    assert ":vnfnet" in calls(tmp_path)[0]


async def test_restore_joins_cgroups_before_criu_runs(tmp_path: Path, images: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    me = tmp_path / "criu.pid"
    runner = CriuRunner(str(fake_criu(tmp_path, restore=f'echo $$ > "{me}"; ' + RESTORE_OK)))

    await runner.restore(images, RestoreOptions(join_cgroup_procs=[str(procs)]))

    assert procs.read_text() == me.read_text().strip()


async def test_restore_into_missing_netns_fails_clearly(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path)))

    with pytest.raises(RestoreError, match="cannot open target netns"):
        await runner.restore(images, RestoreOptions(netns_path=str(tmp_path / "gone")))


async def test_failed_restore_raises_with_log_and_kills_partial_tree(tmp_path: Path,
                                                                     images: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    partial = subprocess.Popen(["sleep", "30"])
    restore = f'echo {partial.pid} > "$pidfile"; ' + RESTORE_FAIL
    runner = CriuRunner(str(fake_criu(tmp_path, restore=restore)))
    try:
        with pytest.raises(RestoreError) as exc_info:
            await runner.restore(images, RestoreOptions(work_dir=str(work)))

        err = exc_info.value
        assert any("restore boom" in line for line in err.log_lines)
        assert err.log_path == str(work / "restore.log")
        assert str(work / "restore.log") in str(err)
        # Nothing of a half-restored VNF may keep running.
        assert partial.wait(timeout=2) == -9
    finally:
        if partial.poll() is None:
            partial.kill()
            partial.wait()


async def test_restore_without_pidfile_is_an_error(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, restore="exit 0")))

    with pytest.raises(RestoreError, match="no pidfile"):
        await runner.restore(images)


async def test_hanging_restore_times_out(tmp_path: Path, images: Path) -> None:
    runner = CriuRunner(str(fake_criu(tmp_path, restore="exec sleep 30")))

    t0 = time.monotonic()
    with pytest.raises(RestoreError, match="timed out"):
        await runner.restore(images, RestoreOptions(timeout=0.3))
    assert time.monotonic() - t0 < 3
