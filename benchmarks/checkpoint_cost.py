#!/usr/bin/env python3
"""What a checkpoint and a restore cost with nfvha, next to bare CRIU on the same VNF.

For each state size (MiB) the same stateful UDP VNF (``benchmarks/vnf_state.py``) is
measured two ways in one run, repeats interleaved so that drift hits both alike:

nfvha
    A 2-host testbed (``nfvbench``) and the agent HTTP API: checkpoint (API wall time and
    CRIU's own figures from ``criu_stats``), push to h2, then ``kill -9`` of the VNF and a
    restore on the same host (API wall time and CRIU's restore figures). The restored VNF
    must answer ``SUM`` with the value it gave before the checkpoint.

previous sandbox
    The same VNF on a second testbed (``nfvprev``) as nfvha ran it before issue 12: no
    private root (``security.private_root: false``), every capability, no seccomp
    filter, plain HTTP between the daemons (``Testbed(tls=False)``). The ratio
    nfvha/previous is the cost of containment and TLS (target <= 1.1x on checkpoint and
    restore).

bare CRIU
    The same VNF started by hand the same way (own netns ``nfvbench-bare``, PID/UTS/IPC
    namespaces via nfvha's launcher, no cgroup), dumped with ``criu dump`` using the very
    argument list nfvha builds (``CriuRunner.dump_args``), killed, and restored with
    ``criu restore -d --inherit-fd fd[N]:vnfnet`` (``CriuRunner.restore_args``). The
    transfer baseline is ``cp -r`` of the images to another directory (plus, separately,
    the fsync of the copy, which nfvha's receiver also does).

Writes ``results/checkpoint_cost.{json,md,png}`` and ``docs/img/checkpoint_cost.png``.
Needs root, CRIU >= 4.2, ``ip`` and ``nft``. Not a test: targets are reported, not
asserted. Usage::

    .venv/bin/python benchmarks/checkpoint_cost.py [--quick] [--sizes 1,16,64,256,512]
                                                   [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nfvha.testbed import Testbed
from nfvha.vim import _launch
from nfvha.vim.criu import CriuRunner, DumpOptions, RestoreOptions, parse_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _common
from _common import (
    RESULTS,
    BenchError,
    daemon_client,
    install_signal_handlers,
    machine_basics,
    median,
    percentile,
    program,
    progress,
    publish,
    signals_ignored,
    timed,
)

VNF_SCRIPT = Path(__file__).resolve().parent / "vnf_state.py"

TB_NAME = "nfvbench"
# Outside 10.250/16 (the default testbed) and 10.200-249/16 (e2e tests' testbeds).
TB_SUBNET = "10.251.0.0/16"
PREV_TB_NAME = "nfvprev"
PREV_TB_SUBNET = "10.252.0.0/16"
PREV_MGMT_SUBNET = "172.31.252.0/24"
TARGET_CONTAINMENT_RATIO = 1.1
STATE_DIR = Path("/run/nfvha-bench")
BARE_NETNS = "nfvbench-bare"
BARE_DIR = STATE_DIR / "bare"
NETNS_KEY = "vnfnet"
VNF_PORT = 5000
# Each VNF's working directory. CRIU's parasite, dumping a task whose PID namespace is
# private but whose mount namespace is the host's, mkdirs "proc.crtools" in the task's cwd
# to mount a procfs there. With cwd "/" every such dump on the machine uses /proc.crtools:
# concurrent dumps fail with EEXIST, and a dump killed midway leaves it behind so every
# later one fails. A private cwd keeps this benchmark out of other runs' way.
VNF_CWD = STATE_DIR / "cwd"

HTTP_TIMEOUT = 300.0  # a 256 MiB checkpoint is hashed and fsynced inside the call
CRIU_TIMEOUT = 300.0
CMD_TIMEOUT = 60.0
READY_TIMEOUT = 90.0
EXIT_TIMEOUT = 15.0

DEFAULT_SIZES = (1, 16, 64, 256, 512)
QUICK_SIZES = (1, 16)
TARGET_DUMP_RATIO = 1.2
TARGET_FROZEN_MS = 50.0
TARGET_FROZEN_AT_MB = 16

# Memory conditions a dump can meet in a VM whose virtio-balloon reports free pages to the
# hypervisor: "cold" = memory freed long enough ago (> ~1.5 s here) to be handed back, so
# every page CRIU's image writes allocate costs a host fault; "warm" = memory freed just
# before, so the guest reuses it at memcpy speed (what bare metal always sees).
MEMORY_CONDITIONS = ("cold", "warm")
COLD_SETTLE_S = 3.0

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


# -- processes -----------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans (the launched VNF, CRIU-restored trees) become our children: we reap them."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def kill_and_reap(pid: int, timeout: float = EXIT_TIMEOUT) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaped by us, or at least a zombie)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            if _gone(pid):
                return
        time.sleep(0.005)
    raise BenchError(f"process {pid} did not die within {timeout:.0f}s of SIGKILL")


def reap_all() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def run(cmd: Sequence[str], *, timeout: float = CMD_TIMEOUT, check: bool = True,
        pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              pass_fds=tuple(pass_fds), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd[:3])}... timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc


# -- UDP client of vnf_state -----------------------------------------------------------------


def _socket_in_netns(netns_path: str) -> socket.socket:
    """A UDP socket created inside ``netns_path`` (a socket keeps the netns it was made in).

    setns(CLONE_NEWNET) affects only the calling thread, so a short-lived thread enters
    the namespace, makes the socket and ends; the rest of the process never moves.
    """
    box: dict[str, Any] = {}

    def enter() -> None:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                box["err"] = os.strerror(ctypes.get_errno())
                return
            box["sock"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            os.close(fd)

    t = threading.Thread(target=enter, name="netns-socket", daemon=True)
    t.start()
    t.join(10)
    if "sock" not in box:
        raise BenchError(f"cannot make a socket in {netns_path}: {box.get('err', 'timeout')}")
    sock: socket.socket = box["sock"]
    return sock


class VnfClient:
    """Asks vnf_state PING/SUM over UDP, from the root netns or from inside a netns."""

    def __init__(self, ip: str, port: int = VNF_PORT, netns_path: str | None = None) -> None:
        self.addr = (ip, port)
        self.sock = (_socket_in_netns(netns_path) if netns_path
                     else socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def close(self) -> None:
        self.sock.close()

    def _drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            while True:
                self.sock.recv(2048)
        self.sock.setblocking(True)

    def ask(self, cmd: bytes, timeout: float = 0.5, tries: int = 4) -> str | None:
        want = cmd.split()[0] if cmd != b"PING" else b"PONG"
        for _ in range(tries):
            self._drain()
            self.sock.settimeout(timeout)
            try:
                self.sock.sendto(cmd, self.addr)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    data = self.sock.recv(2048)
                    if data.split()[:1] == [want]:
                        return data.decode()
            except (TimeoutError, ConnectionRefusedError, OSError):
                time.sleep(0.01)
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds until the VNF first answers PING; BenchError after ``timeout``."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.ask(b"PING", timeout=0.1, tries=1) == "PONG":
                return time.perf_counter() - t0
            time.sleep(0.01)
        raise BenchError(f"VNF at {self.addr[0]}:{self.addr[1]} did not answer PING "
                         f"within {timeout:.0f}s")

    def checksum(self) -> str:
        reply = self.ask(b"SUM", timeout=1.0, tries=5)
        if reply is None:
            raise BenchError(f"VNF at {self.addr[0]} did not answer SUM")
        return reply


# -- memory condition ----------------------------------------------------------------------------


def prepare_memory(condition: str, size_mb: int) -> None:
    """Put the guest's free memory in ``condition`` just before a dump (see MEMORY_CONDITIONS).

    warm: write and delete a scratch file a bit larger than the coming images on the same
    filesystem, so the page cache the dump allocates reuses pages freed a moment ago.
    cold: wait until every recently freed page has been reported to the hypervisor.
    """
    if condition == "cold":
        time.sleep(COLD_SETTLE_S)
        return
    scratch = STATE_DIR / "warm.scratch"
    block = b"\xa5" * (1 << 20)
    try:
        with scratch.open("wb") as f:
            for _ in range(size_mb + 32):
                f.write(block)
    finally:
        scratch.unlink(missing_ok=True)


# -- nfvha side --------------------------------------------------------------------------------


class Api:
    """Synchronous client of the testbed's agents; every call is timed."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.http = daemon_client(tb, HTTP_TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, host: str, path: str, **kw: Any) -> tuple[Any, float]:
        url = self.tb.host(host).url + path
        t0 = time.perf_counter()
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise BenchError(f"{method} {url}: {exc!r}") from exc
        elapsed = time.perf_counter() - t0
        if r.status_code >= 300:
            raise BenchError(f"{method} {url}: HTTP {r.status_code} {r.text[:800]}")
        return (r.json() if r.content else None), elapsed


def _descriptor(tb: Testbed, size_mb: int, previous: bool = False) -> dict[str, Any]:
    return {
        "id": "statevnf",
        **program(VNF_SCRIPT, "--state-mb", str(size_mb), "--port", str(VNF_PORT),
                  previous=previous),
        "network": {"address": tb.vnf_address(1)},
        # Room for the interpreter besides the state; no CPU throttling (bare has none).
        "resources": {"memory": f"{size_mb + 160}Mi", "cpu": float(os.cpu_count() or 1)},
    }


@dataclass
class NfvhaVnf:
    api: Api
    tb: Testbed
    size_mb: int
    client: VnfClient
    instance_id: str
    pid: int = 0
    last_seq: int = 0

    @classmethod
    def start(cls, api: Api, tb: Testbed, size_mb: int, previous: bool = False) -> NfvhaVnf:
        iid = f"state{size_mb}m"
        (VNF_CWD / "nfvha").mkdir(parents=True, exist_ok=True)
        view, _ = api.call("POST", "h1", "/v1/instances",
                           json={"descriptor": _descriptor(tb, size_mb, previous),
                                 "instance_id": iid})
        ip = tb.vnf_address(1).split("/")[0]
        vnf = cls(api=api, tb=tb, size_mb=size_mb, client=VnfClient(ip), instance_id=iid,
                  pid=int(view["pid"]))
        vnf.client.wait_ready()
        return vnf

    def _wait_state(self, want: set[str], timeout: float = EXIT_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view, _ = self.api.call("GET", "h1", f"/v1/instances/{self.instance_id}")
            if view["state"] in want:
                return dict(view)
            if time.monotonic() > deadline:
                raise BenchError(f"instance {self.instance_id} stayed {view['state']}, "
                                 f"expected {sorted(want)}")
            time.sleep(0.01)

    def cycle(self, rep: int, memory: str) -> dict[str, Any]:
        iid = self.instance_id
        before = self.client.checksum()
        prepare_memory(memory, self.size_mb)
        meta, ckpt_api = self.api.call("POST", "h1", f"/v1/instances/{iid}/checkpoints")
        cs = meta["criu_stats"]
        seq = int(meta["seq"])
        self.last_seq = seq
        push, push_api = self.api.call(
            "POST", "h1", f"/v1/checkpoints/{iid}/{seq}/push",
            json={"peer_url": self.tb.host("h2").url})
        os.kill(self.pid, signal.SIGKILL)
        self._wait_state({"EXITED"})
        t0 = time.perf_counter()
        view, restore_api = self.api.call("POST", "h1", f"/v1/instances/{iid}/restore",
                                          json={"seq": seq})
        after = self.client.checksum()
        back = time.perf_counter() - t0
        rs = view.get("restore_stats") or {}
        self.pid = int(view["pid"])
        return {
            "size_mb": self.size_mb, "rep": rep, "memory": memory, "seq": seq,
            "checkpoint_api_s": ckpt_api,
            "dump_wall_s": float(cs.get("wall_seconds", math.nan)),
            "frozen_ms": cs.get("frozen_time_us", 0) / 1000,
            "freezing_ms": cs.get("freezing_time_us", 0) / 1000,
            "memory_dump_ms": cs.get("memory_dump_time_us", 0) / 1000,
            "memory_write_ms": cs.get("memory_write_time_us", 0) / 1000,
            "pages_written": int(cs.get("pages_written", 0)),
            "image_bytes": int(meta["total_bytes"]),
            "push_api_s": push_api,
            "push_s": float(push["seconds"]),
            "push_bytes": int(push["bytes"]),
            "restore_api_s": restore_api,
            "restore_wall_s": float(rs.get("wall_seconds", math.nan)),
            "restore_criu_ms": rs.get("restore_time_us", 0) / 1000,
            "restore_to_answer_s": back,
            "sum_before": before, "sum_after": after, "sum_ok": before == after,
            "load1": os.getloadavg()[0],
        }

    def checkpoint_dir(self, seq: int) -> Path:
        base: Path = self.tb.dir
        return base / "h1" / "checkpoints" / self.instance_id / f"{seq:06d}"

    def stop(self) -> None:
        self.client.close()
        with contextlib.suppress(BenchError):
            self.api.call("DELETE", "h1", f"/v1/instances/{self.instance_id}",
                          params={"purge_checkpoints": "true"})


# -- bare CRIU side ----------------------------------------------------------------------------


def _netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def bare_netns_down() -> None:
    if not Path(_netns_path(BARE_NETNS)).exists():
        return
    pids = run(["ip", "netns", "pids", BARE_NETNS], check=False).stdout.split()
    for p in pids:
        with contextlib.suppress(ValueError, BenchError):
            kill_and_reap(int(p), timeout=5)
    run(["ip", "netns", "delete", BARE_NETNS], check=False)


def bare_netns_up() -> None:
    bare_netns_down()
    run(["ip", "netns", "add", BARE_NETNS])
    run(["ip", "-n", BARE_NETNS, "link", "set", "lo", "up"])


@dataclass
class BareVnf:
    criu: CriuRunner
    size_mb: int
    client: VnfClient
    pid: int
    live: set[int]

    @classmethod
    def start(cls, criu: CriuRunner, size_mb: int, live: set[int]) -> BareVnf:
        BARE_DIR.mkdir(parents=True, exist_ok=True)
        (VNF_CWD / "bare").mkdir(parents=True, exist_ok=True)
        log = BARE_DIR / "vnf.log"
        out = run([sys.executable, "-S", _launch.__file__, "--netns", _netns_path(BARE_NETNS),
                   "--stdout", str(log), "--hostname", "statevnf",
                   "--workdir", str(VNF_CWD / "bare"), "--",
                   sys.executable, str(VNF_SCRIPT), "--state-mb", str(size_mb),
                   "--port", str(VNF_PORT)])
        pid = int(out.stdout.strip())
        live.add(pid)
        vnf = cls(criu=criu, size_mb=size_mb, pid=pid, live=live,
                  client=VnfClient("127.0.0.1", netns_path=_netns_path(BARE_NETNS)))
        vnf.client.wait_ready()
        return vnf

    def cycle(self, rep: int, memory: str) -> dict[str, Any]:
        before = self.client.checksum()
        images = BARE_DIR / f"images-{self.size_mb}m-{rep}"
        copy = BARE_DIR / f"copy-{self.size_mb}m-{rep}"
        work = BARE_DIR / "work"
        for d in (images, copy, work):
            shutil.rmtree(d, ignore_errors=True)
        images.mkdir(parents=True)
        work.mkdir(parents=True)
        inode = os.stat(_netns_path(BARE_NETNS)).st_ino
        prepare_memory(memory, self.size_mb)
        dump_args = self.criu.dump_args(self.pid, images,
                                        DumpOptions(external_netns=(inode, NETNS_KEY)))
        t0 = time.perf_counter()
        dumped = run([self.criu.binary, *dump_args], timeout=CRIU_TIMEOUT, check=False)
        dump_wall = time.perf_counter() - t0
        if dumped.returncode != 0:
            raise BenchError(f"bare criu dump failed (exit {dumped.returncode}); see "
                             f"{images / 'dump.log'}: {_log_tail(images / 'dump.log')}")
        ds = parse_stats(dumped.stdout)
        image_bytes = _tree_bytes(images)
        t0 = time.perf_counter()
        run(["cp", "-r", str(images), str(copy)], timeout=CRIU_TIMEOUT)
        cp_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _fsync_tree(copy)
        fsync_s = time.perf_counter() - t0

        kill_and_reap(self.pid)
        self.live.discard(self.pid)
        pidfile = work / "restore.pid"
        fd = os.open(_netns_path(BARE_NETNS), os.O_RDONLY)
        try:
            ropts = RestoreOptions(netns_path=_netns_path(BARE_NETNS), netns_key=NETNS_KEY,
                                   work_dir=str(work))
            restore_args = self.criu.restore_args(images, ropts, netns_fd=fd, pidfile=pidfile)
            t0 = time.perf_counter()
            restored = run([self.criu.binary, *restore_args], timeout=CRIU_TIMEOUT,
                           check=False, pass_fds=(fd,))
            restore_wall = time.perf_counter() - t0
        finally:
            os.close(fd)
        if restored.returncode != 0:
            raise BenchError(f"bare criu restore failed (exit {restored.returncode}); see "
                             f"{work / 'restore.log'}: {_log_tail(work / 'restore.log')}")
        self.pid = int(pidfile.read_text().strip())
        self.live.add(self.pid)
        after = self.client.checksum()
        back = time.perf_counter() - t0
        rs = parse_stats(restored.stdout)
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)
        return {
            "size_mb": self.size_mb, "rep": rep, "memory": memory,
            "dump_wall_s": dump_wall,
            "frozen_ms": ds.get("frozen_time_us", 0) / 1000,
            "freezing_ms": ds.get("freezing_time_us", 0) / 1000,
            "memory_dump_ms": ds.get("memory_dump_time_us", 0) / 1000,
            "memory_write_ms": ds.get("memory_write_time_us", 0) / 1000,
            "pages_written": ds.get("pages_written", 0),
            "image_bytes": image_bytes,
            "copy_s": cp_s,
            "copy_fsync_s": fsync_s,
            "restore_wall_s": restore_wall,
            "restore_criu_ms": rs.get("restore_time_us", 0) / 1000,
            "restore_to_answer_s": back,
            "sum_before": before, "sum_after": after, "sum_ok": before == after,
            "load1": os.getloadavg()[0],
        }

    def stop(self) -> None:
        self.client.close()
        with contextlib.suppress(BenchError):
            kill_and_reap(self.pid)
        self.live.discard(self.pid)


def _remove_parasite_leftovers() -> None:
    """Unmount and remove proc.crtools left in our VNFs' cwd by a dump killed midway."""
    if not VNF_CWD.is_dir():
        return
    for p in VNF_CWD.glob("*/proc.crtools"):
        run(["umount", "-l", str(p)], check=False)
        with contextlib.suppress(OSError):
            p.rmdir()


def _tree_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _fsync_tree(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _log_tail(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if "Error" in ln]
    return " | ".join((errs or lines)[-n:])


# -- attribution of nfvha's overhead -------------------------------------------------------------


def _sha256_file(path: Path) -> None:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def sha256_seconds(directory: Path) -> float:
    """Time to sha256 every file of a checkpoint, 4 threads like the store (page cache hot)."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(_sha256_file, files))
    return time.perf_counter() - t0


def http_rtt_seconds(api: Api, n: int = 20) -> float:
    times = []
    for _ in range(n):
        _, t = api.call("GET", "h1", "/v1/status")
        times.append(t)
    return median(times)


# -- statistics ----------------------------------------------------------------------------------


def describe(values: Sequence[float]) -> dict[str, float]:
    xs = [float(v) for v in values]
    return {"median": median(xs), "p95": percentile(xs, 95), "min": min(xs, default=math.nan),
            "max": max(xs, default=math.nan), "n": len(xs)}


NUMERIC_SKIP = {"size_mb", "rep", "memory", "seq", "sum_before", "sum_after", "sum_ok",
                "load1"}


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = [k for k in samples[0] if k not in NUMERIC_SKIP] if samples else []
    return {k: describe([s[k] for s in samples]) for k in keys}


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


#: (name, key): nfvha/previous ratios, the cost of containment and TLS.
CONTAINMENT_RATIOS = (
    ("checkpoint_api", "checkpoint_api_s"), ("dump_criu", "dump_wall_s"),
    ("frozen", "frozen_ms"), ("push_api", "push_api_s"), ("restore_api", "restore_api_s"),
    ("restore_criu", "restore_wall_s"), ("restore_to_answer", "restore_to_answer_s"))


def build_summary(sizes: Sequence[int], conditions: Sequence[str], nfv: list[dict[str, Any]],
                  bare: list[dict[str, Any]], prev: Sequence[dict[str, Any]] = (),
                  ) -> dict[str, dict[str, Any]]:
    """``{memory condition: {size: {"nfvha": stats, "bare": stats, "ratios": ...}}}``, plus
    ``"previous"`` and ``"containment"`` (nfvha/previous ratios) where it was measured."""
    out: dict[str, dict[str, Any]] = {}
    for cond in conditions:
        per_size: dict[str, Any] = {}
        for size in sizes:
            ns = [s for s in nfv if s["size_mb"] == size and s["memory"] == cond]
            bs = [s for s in bare if s["size_mb"] == size and s["memory"] == cond]
            if not ns or not bs:
                continue
            n, b = summarize(ns), summarize(bs)
            ratios: dict[str, dict[str, float]] = {}
            for name, nkey, bkey in (
                ("dump_api", "checkpoint_api_s", "dump_wall_s"),
                ("dump_criu", "dump_wall_s", "dump_wall_s"),
                ("restore_api", "restore_api_s", "restore_wall_s"),
                ("restore_criu", "restore_wall_s", "restore_wall_s"),
                ("frozen", "frozen_ms", "frozen_ms"),
                ("transfer", "push_api_s", "copy_s"),
            ):
                ratios[name] = {q: _ratio(n[nkey][q], b[bkey][q]) for q in ("median", "p95")}
            ps = [s for s in prev if s["size_mb"] == size and s["memory"] == cond]
            per_size[str(size)] = {"nfvha": n, "bare": b, "ratios": ratios,
                                   "sum_ok": all(s["sum_ok"] for s in ns + bs + ps)}
            if ps:
                p = summarize(ps)
                per_size[str(size)]["previous"] = p
                per_size[str(size)]["containment"] = {
                    name: {q: _ratio(n[key][q], p[key][q]) for q in ("median", "p95")}
                    for name, key in CONTAINMENT_RATIOS}
        if per_size:
            out[cond] = per_size
    return out


def evaluate_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    for cond, per_size in summary.items():
        for size, s in per_size.items():
            r = s["ratios"]["dump_api"]["median"]
            targets.append({
                "memory": cond, "kind": "dump_ratio", "size_mb": int(size),
                "target": f"dump overhead nfvha/bare <= {TARGET_DUMP_RATIO}x at {size} MiB, "
                          f"{cond} memory (checkpoint API wall / bare criu dump wall, medians)",
                "value": r, "pass": bool(r <= TARGET_DUMP_RATIO)})
            c = s.get("containment")
            for name in ("checkpoint_api", "restore_api") if c else ():
                v = c[name]["median"]
                targets.append({
                    "memory": cond, "kind": "containment_ratio", "size_mb": int(size),
                    "target": f"containment and TLS: {name.replace('_', ' ')} nfvha/previous "
                              f"<= {TARGET_CONTAINMENT_RATIO}x at {size} MiB, {cond} memory "
                              "(medians)",
                    "value": v, "pass": bool(v <= TARGET_CONTAINMENT_RATIO)})
        s16 = per_size.get(str(TARGET_FROZEN_AT_MB))
        if s16 is not None:
            for side in ("nfvha", "bare"):
                v = s16[side]["frozen_ms"]["median"]
                targets.append({
                    "memory": cond, "kind": "frozen_ms", "size_mb": TARGET_FROZEN_AT_MB,
                    "target": f"frozen time <= {TARGET_FROZEN_MS:.0f} ms at "
                              f"{TARGET_FROZEN_AT_MB} MiB, {cond} memory ({side}, median)",
                    "value": v, "pass": bool(v <= TARGET_FROZEN_MS)})
    return targets


# -- machine -------------------------------------------------------------------------------------


def machine_description(criu: CriuRunner) -> dict[str, Any]:
    version = run([criu.binary, "--version"], check=False).stdout.strip().replace("\n", "; ")
    return {
        **machine_basics(),
        "criu_binary": criu.binary,
        "criu_version": version,
        "python": platform.python_version(),
        "state_dir": str(STATE_DIR),
        "state_dir_fs": _fs_type(STATE_DIR),
        "loadavg_at_start": os.getloadavg(),
        "other_netns_at_start": _other_netns(),
        "stale_proc_crtools_at_start": Path("/proc.crtools").exists(),
    }


def _other_netns() -> list[str]:
    """Network namespaces not ours: a sign that other testbeds share the CPUs meanwhile."""
    out = run(["ip", "netns", "list"], check=False).stdout.split("\n")
    names = [ln.split()[0] for ln in out if ln.strip()]
    return [n for n in names if not n.startswith((TB_NAME, PREV_TB_NAME, BARE_NETNS))]


def _fs_type(path: Path) -> str:
    best, fstype = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt) and len(mnt) >= len(best):
                best, fstype = mnt, f"{parts[2]} ({parts[0]} on {mnt})"
    return fstype


# -- output --------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x * 1000:.0f}" if x >= 0.1 else f"{x * 1000:.1f}")


def _x(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}x"


def _containment_cell(s: dict[str, Any], key: str, name: str, scale: float = 1000.0) -> str:
    """``nfvha / previous (ratio)`` of one size's medians."""
    n, p, c = s["nfvha"], s["previous"], s["containment"]
    return (f"{n[key]['median'] * scale:.1f} / {p[key]['median'] * scale:.1f} "
            f"({_x(c[name]['median'])})")


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    summary: dict[str, dict[str, Any]] = result["summary"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    lines = [
        "# Checkpoint cost: nfvha vs bare CRIU",
        "",
        f"{m['date']} · kernel {m['kernel']} · {m['os']} · {m['cpu_model']} × {m['nproc']} · "
        f"{m['memory_mib']} MiB RAM · CRIU {version} · images on {m['state_dir_fs']} · "
        f"{result['config']['repeats']} repeats per size and memory condition · "
        f"{result['elapsed_s']:.0f} s in all.",
        "",
        "*nfvha API* is the agent HTTP call as a client sees it; *nfvha CRIU* is CRIU's wall "
        "time inside it (`criu_stats` / `restore_stats`); *bare* is the same `criu` command "
        "line run by hand on the same VNF. Ratios are nfvha/bare: API-level first, CRIU-level "
        "in brackets. Times in ms except transfer (s).",
        "",
        "*Memory condition*: this VM's virtio-balloon reports free pages to the hypervisor, "
        "so page cache allocated from memory freed more than ~1.5 s earlier costs a host "
        f"fault per page. *cold* = dump after {COLD_SETTLE_S:.0f} s of quiet (the steady "
        "state of periodic checkpoints in such a VM); *warm* = dump right after freeing as "
        "much memory as the images need (what bare metal always sees). Restores always "
        "follow the kill at once, so they are warm in both.",
    ]
    for cond, per_size in summary.items():
        lines += [
            "",
            f"## {cond} memory — medians",
            "",
            "| State MiB | Image MiB | Frozen nfvha / bare | Dump nfvha API / CRIU / bare | "
            "Dump ratio | Restore nfvha API / CRIU / bare | Restore ratio "
            "| CRIU restore time nfvha / bare | Push s / cp s (+fsync) | SUM ok |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for size, s in per_size.items():
            n, b, r = s["nfvha"], s["bare"], s["ratios"]
            lines.append(
                f"| {size} | {n['image_bytes']['median'] / 2**20:.1f} "
                f"| {n['frozen_ms']['median']:.1f} / {b['frozen_ms']['median']:.1f} "
                f"| {_ms(n['checkpoint_api_s']['median'])} / {_ms(n['dump_wall_s']['median'])}"
                f" / {_ms(b['dump_wall_s']['median'])} "
                f"| {_x(r['dump_api']['median'])} ({_x(r['dump_criu']['median'])}) "
                f"| {_ms(n['restore_api_s']['median'])} / "
                f"{_ms(n['restore_wall_s']['median'])} / {_ms(b['restore_wall_s']['median'])} "
                f"| {_x(r['restore_api']['median'])} ({_x(r['restore_criu']['median'])}) "
                f"| {n['restore_criu_ms']['median']:.1f} / {b['restore_criu_ms']['median']:.1f} "
                f"| {n['push_api_s']['median']:.3f} / {b['copy_s']['median']:.3f} "
                f"(+{b['copy_fsync_s']['median']:.3f}) "
                f"| {'yes' if s['sum_ok'] else '**NO**'} |")
        lines += [
            "",
            f"{cond} memory — p95 over repeats:",
            "",
            "| State MiB | Frozen nfvha / bare | Dump nfvha API / CRIU / bare | Dump ratio "
            "| Restore nfvha API / CRIU / bare | Restore ratio |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for size, s in per_size.items():
            n, b, r = s["nfvha"], s["bare"], s["ratios"]
            lines.append(
                f"| {size} | {n['frozen_ms']['p95']:.1f} / {b['frozen_ms']['p95']:.1f} "
                f"| {_ms(n['checkpoint_api_s']['p95'])} / {_ms(n['dump_wall_s']['p95'])} / "
                f"{_ms(b['dump_wall_s']['p95'])} "
                f"| {_x(r['dump_api']['p95'])} ({_x(r['dump_criu']['p95'])}) "
                f"| {_ms(n['restore_api_s']['p95'])} / {_ms(n['restore_wall_s']['p95'])} / "
                f"{_ms(b['restore_wall_s']['p95'])} "
                f"| {_x(r['restore_api']['p95'])} ({_x(r['restore_criu']['p95'])}) |")
    if any("containment" in s for per in summary.values() for s in per.values()):
        lines += [
            "",
            "## The cost of containment and TLS",
            "",
            "The same VNF on a second testbed run as before issue 12 (*previous*: the "
            "host's file system, every capability, no seccomp, plain HTTP) in the same run, "
            "repeats interleaved. Medians, ms; ratio nfvha/previous.",
            "",
            "| State MiB | Memory | Checkpoint API | Frozen | Push API | Restore API "
            "| Restore to answer |",
            "|---:|:---|---:|---:|---:|---:|---:|",
        ]
        for cond, per_size in summary.items():
            for size, s in per_size.items():
                if "containment" not in s:
                    continue
                cell = functools.partial(_containment_cell, s)
                lines.append(
                    f"| {size} | {cond} | {cell('checkpoint_api_s', 'checkpoint_api')} "
                    f"| {cell('frozen_ms', 'frozen', 1.0)} | {cell('push_api_s', 'push_api')} "
                    f"| {cell('restore_api_s', 'restore_api')} "
                    f"| {cell('restore_to_answer_s', 'restore_to_answer')} |")
    att = result.get("attribution", {})
    if att:
        lines += [
            "",
            "## Where nfvha's extra time goes",
            "",
            "Medians, ms. *Checkpoint extra* = API − CRIU dump wall: store.commit (sha256 and "
            "fsync of every image file, meta.json, rename, retention of old checkpoints) plus "
            "HTTP. *Restore extra* = API − CRIU restore wall: store.verify (sha256 of every "
            "file again), teardown of the dead instance's sandbox and a new one (netns, veth, "
            "cgroup), plus HTTP. sha256 is timed separately on the same images (4 threads like "
            "the store, page cache hot); HTTP is the median `GET /v1/status` round trip.",
            "",
            "| State MiB | Memory | Checkpoint extra | Restore extra | sha256 of images "
            "| HTTP round trip |",
            "|---:|:---|---:|---:|---:|---:|",
        ]
        for cond, per_size in summary.items():
            for size, s in per_size.items():
                a = att.get(size)
                if a is None:
                    continue
                n = s["nfvha"]
                ck = n["checkpoint_api_s"]["median"] - n["dump_wall_s"]["median"]
                rs = n["restore_api_s"]["median"] - n["restore_wall_s"]["median"]
                lines.append(f"| {size} | {cond} | {_ms(ck)} | {_ms(rs)} | {_ms(a['sha256_s'])} "
                             f"| {_ms(a['http_rtt_s'])} |")
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        v = t["value"]
        shown = f"{v:.2f}x" if t["kind"].endswith("ratio") else f"{v:.1f} ms"
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {shown}")
    if result.get("anomalies"):
        lines += ["", "## Anomalies seen", ""]
        lines += [f"- {a}" for a in result["anomalies"]]
    lines += ["", "Transfer baseline: bare is a local `cp -r` of the image directory "
              "(fsync of the copy shown separately); nfvha's push streams a tar over HTTP "
              "to the other emulated host's agent, which hashes, fsyncs and publishes it.",
              ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], paths: Sequence[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    summary: dict[str, dict[str, Any]] = result["summary"]
    if not summary:
        return
    conds = list(summary)
    sizes = sorted({int(s) for per in summary.values() for s in per})

    def series(cond: str, side: str, key: str, scale: float = 1.0
               ) -> tuple[list[int], list[float], list[list[float]]]:
        per = summary[cond]
        xs = [s for s in sizes if str(s) in per]
        st = [per[str(s)][side][key] for s in xs]
        med = [d["median"] * scale for d in st]
        lo = [m - d["min"] * scale for m, d in zip(med, st, strict=True)]
        hi = [d["p95"] * scale - m for m, d in zip(med, st, strict=True)]
        return xs, med, [lo, hi]

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    api_c, criu_c, bare_c = "tab:blue", "tab:cyan", "tab:orange"
    cond_style = {"cold": ("-", 1.0, 1.8), "warm": (":", 0.8, 1.3)}
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 9))
    panels: list[tuple[Any, str, list[tuple[str, str, float, str, str, str]]]] = [
        (axes[0][0], "CRIU frozen time (VNF paused)", [
            ("nfvha", "frozen_ms", 1.0, "nfvha", "o", api_c),
            ("bare", "frozen_ms", 1.0, "bare criu", "s", bare_c)]),
        (axes[0][1], "Checkpoint (dump) wall time", [
            ("nfvha", "checkpoint_api_s", 1000.0, "nfvha API call", "o", api_c),
            ("nfvha", "dump_wall_s", 1000.0, "nfvha: criu dump inside", "^", criu_c),
            ("bare", "dump_wall_s", 1000.0, "bare criu dump", "s", bare_c)]),
        (axes[1][0], "Restore wall time (after kill -9, same host)", [
            ("nfvha", "restore_api_s", 1000.0, "nfvha API call", "o", api_c),
            ("nfvha", "restore_wall_s", 1000.0, "nfvha: criu restore inside", "^", criu_c),
            ("bare", "restore_wall_s", 1000.0, "bare criu restore", "s", bare_c)]),
    ]
    for ax, title, lines in panels:
        for cond in conds:
            ls, alpha, lw = cond_style.get(cond, ("-", 1.0, 1.5))
            for side, key, scale, label, marker, color in lines:
                xs, med, err = series(cond, side, key, scale)
                ax.errorbar(xs, med, yerr=err, fmt=marker, ls=ls, lw=lw, color=color,
                            alpha=alpha, capsize=3, label=f"{label} ({cond})")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("VNF state (MiB)")
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].axhline(TARGET_FROZEN_MS, color="grey", lw=0.8, ls="--")
    axes[0][0].annotate(f"target {TARGET_FROZEN_MS:.0f} ms at {TARGET_FROZEN_AT_MB} MiB",
                        (sizes[-1], TARGET_FROZEN_MS), fontsize=7, color="grey",
                        xytext=(-110, -10), textcoords="offset points")
    ax = axes[1][1]
    cond0 = conds[0]
    xs, img_n, _ = series(cond0, "nfvha", "image_bytes", 1 / 2**20)
    xb, img_b, _ = series(cond0, "bare", "image_bytes", 1 / 2**20)
    ax.bar([s * 0.87 for s in xs], img_n, width=[s * 0.22 for s in xs],
           label="image size nfvha (MiB)", color=api_c, alpha=0.3)
    ax.bar([s * 1.13 for s in xb], img_b, width=[s * 0.22 for s in xb],
           label="image size bare (MiB)", color=bare_c, alpha=0.3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel("VNF state (MiB)")
    ax.set_ylabel("image size (MiB)")
    ax.set_title("Image size and transfer time")
    ax2 = ax.twinx()
    x1, med, err = series(cond0, "nfvha", "push_api_s", 1000.0)
    ax2.errorbar(x1, med, yerr=err, fmt="o-", color=api_c, capsize=3,
                 label=f"nfvha push to h2, API call (ms, {cond0})")
    x2, med, err = series(cond0, "bare", "copy_s", 1000.0)
    ax2.errorbar(x2, med, yerr=err, fmt="s--", color=bare_c, capsize=3,
                 label=f"bare cp -r (ms, {cond0})")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(plain)
    ax2.set_ylabel("transfer time (ms)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    m = result["machine"]
    version = m["criu_version"].split(";")[0].replace("Version:", "").strip()
    fig.suptitle(f"nfvha vs bare CRIU {version} — kernel {m['kernel']}, {m['nproc']} vCPU, "
                 f"images on {m['state_dir_fs'].split()[0]}, {result['config']['repeats']} "
                 "repeats (median; bars min..p95)", fontsize=11)
    fig.tight_layout()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
    plt.close(fig)


def anomalies(nfv: list[dict[str, Any]], bare: list[dict[str, Any]],
              summary: dict[str, dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    others = machine.get("other_netns_at_start") or []
    if others:
        notes.append(f"{len(others)} other network namespaces existed at start "
                     f"({', '.join(others[:6])}{', ...' if len(others) > 6 else ''}): other "
                     f"testbeds may have shared the CPUs; load1 at start "
                     f"{machine['loadavg_at_start'][0]:.2f}, at end "
                     f"{machine.get('loadavg_at_end', [math.nan])[0]:.2f}")
    if not Path("/run/criu.kdat").exists():
        notes.append("/run/criu.kdat is absent (CRIU caches its kernel probe there only when "
                     f"/run is a tmpfs; here it is {_fs_type(Path('/run'))}): every criu "
                     "invocation re-probes the kernel before it freezes anything, on both "
                     "sides alike")
    if machine.get("stale_proc_crtools_at_start") or Path("/proc.crtools").exists():
        notes.append("/proc.crtools exists on this machine (left by a CRIU dump of a VNF with "
                     "cwd / that was killed midway, or one running right now): every dump of "
                     "a VNF whose cwd is / fails with 'Can't create a directory (-17)' while "
                     "it is there. This run's VNFs use a private cwd and are not affected")
    cold, warm = summary.get("cold", {}), summary.get("warm", {})
    for size in cold:
        if size in warm:
            c = cold[size]["bare"]["memory_write_ms"]["median"]
            w = warm[size]["bare"]["memory_write_ms"]["median"]
            if c > 2 * w and c - w > 5:
                notes.append(f"{size} MiB: CRIU's memory write phase (inside the frozen time) "
                             f"took {c:.0f} ms cold vs {w:.0f} ms warm (bare, medians): page "
                             "cache for the images comes from memory the hypervisor took back")
    for s in nfv + bare:
        if not s["sum_ok"]:
            side = "nfvha" if "push_s" in s else "bare"
            notes.append(f"{side} {s['size_mb']} MiB rep {s['rep']} ({s['memory']}): SUM "
                         f"differs after restore ({s['sum_before']} -> {s['sum_after']})")
    for side, samples in (("nfvha", nfv), ("bare", bare)):
        for key in ("dump_wall_s", "restore_wall_s"):
            groups: dict[tuple[int, str], list[float]] = {}
            for s in samples:
                groups.setdefault((s["size_mb"], s["memory"]), []).append(s[key])
            for (size_mb, cond), xs in groups.items():
                med = median(xs)
                for i, x in enumerate(xs):
                    if len(xs) >= 3 and x > 2 * med and x - med > 0.02:
                        notes.append(f"{side} {key} at {size_mb} MiB ({cond}): repeat {i} took "
                                     f"{x * 1000:.0f} ms, > 2x the median {med * 1000:.0f} ms")
    return notes


# -- main ----------------------------------------------------------------------------------------


def _sample_line(side: str, s: dict[str, Any]) -> str:
    nfv = side != "bare"
    return (f"{s['size_mb']:>4} MiB rep {s['rep']} {s['memory']} {side:8}: dump "
            f"{s['dump_wall_s'] * 1000:7.1f} ms"
            + (f" (API {s['checkpoint_api_s'] * 1000:7.1f})" if nfv else " " * 18)
            + f" frozen {s['frozen_ms']:6.1f} ms, restore {s['restore_wall_s'] * 1000:6.1f} ms"
            + (f" (API {s['restore_api_s'] * 1000:7.1f})" if nfv else " " * 18)
            + f", SUM {'ok' if s['sum_ok'] else 'DIFFERS'}")


def measure(sizes: Sequence[int], repeats: int, conditions: Sequence[str], criu: CriuRunner,
            tb: Testbed, live_bare: set[int], record: Callable[[str, dict[str, Any]], None],
            attribution: dict[str, dict[str, float]], prev_tb: Testbed | None = None) -> None:
    api = Api(tb)
    papi = Api(prev_tb) if prev_tb is not None else None
    try:
        for size in sizes:
            with timed(f"{size} MiB done"):
                nvnf = NfvhaVnf.start(api, tb, size)
                bvnf = BareVnf.start(criu, size, live_bare)
                pvnf = (NfvhaVnf.start(papi, prev_tb, size, previous=True)
                        if papi is not None and prev_tb is not None else None)
                sides: dict[str, Callable[[int, str], dict[str, Any]]] = {
                    "nfvha": nvnf.cycle, "bare": bvnf.cycle,
                    **({"previous": pvnf.cycle} if pvnf is not None else {})}
                names = list(sides)
                try:
                    pairs = [(rep, memory) for rep in range(repeats) for memory in conditions]
                    for j, (rep, memory) in enumerate(pairs):
                        # Rotate who goes first, so that drift hits every side alike.
                        for side in names[j % len(names):] + names[:j % len(names)]:
                            sample = sides[side](rep, memory)
                            record(side, sample)
                            progress(_sample_line(side, sample))
                    ckpt = nvnf.checkpoint_dir(nvnf.last_seq)
                    attribution[str(size)] = {
                        "sha256_s": median([sha256_seconds(ckpt) for _ in range(3)]),
                        "http_rtt_s": http_rtt_seconds(api),
                    }
                finally:
                    nvnf.stop()
                    bvnf.stop()
                    if pvnf is not None:
                        pvnf.stop()
    finally:
        api.close()
        if papi is not None:
            papi.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default=None, help="comma-separated MiB, default 1,16,64,256,512")
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="sizes 1,16 and 2 repeats")
    ap.add_argument("--memory", choices=[*MEMORY_CONDITIONS, "both"], default="both",
                    help="free-memory condition before each dump (see the report); "
                         "default both")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--no-doc-img", action="store_true", help="do not copy the plot to docs/")
    ap.add_argument("--no-previous", action="store_true",
                    help="skip the previous-sandbox testbed (the cost of containment and TLS)")
    a = ap.parse_args(argv)
    sizes = ([int(x) for x in a.sizes.split(",") if x.strip()] if a.sizes
             else list(QUICK_SIZES if a.quick else DEFAULT_SIZES))
    repeats = a.repeats if a.repeats is not None else (2 if a.quick else 5)
    conditions = list(MEMORY_CONDITIONS) if a.memory == "both" else [a.memory]
    if os.geteuid() != 0:
        print("checkpoint_cost: needs root (namespaces, CRIU)", file=sys.stderr)
        return 2
    if repeats < 1 or not sizes or min(sizes) < 1:
        ap.error("need --repeats >= 1 and sizes >= 1")

    criu = CriuRunner()
    asyncio.run(criu.require_usable())
    become_subreaper()
    install_signal_handlers()

    result: dict[str, Any] = {
        "benchmark": "checkpoint_cost",
        "machine": machine_description(criu),
        "config": {
            "sizes_mib": sizes, "repeats": repeats, "quick": a.quick,
            "memory_conditions": conditions, "cold_settle_s": COLD_SETTLE_S,
            "testbed": {"name": TB_NAME, "subnet": TB_SUBNET, "state_dir": str(STATE_DIR),
                        "hosts": 2},
            "bare_netns": BARE_NETNS,
            "vnf_cwd": str(VNF_CWD),
            "criu_dump_args": criu.dump_args(0, Path("IMAGES"),
                                             DumpOptions(external_netns=(0, NETNS_KEY))),
            "criu_restore_args": criu.restore_args(
                Path("IMAGES"), RestoreOptions(netns_path="NETNS", netns_key=NETNS_KEY,
                                               work_dir="WORK"),
                netns_fd=0, pidfile=Path("WORK/restore.pid")),
        },
        "samples": {"nfvha": [], "bare": [], "previous": []},
    }
    samples: dict[str, list[dict[str, Any]]] = result["samples"]
    attribution: dict[str, dict[str, float]] = {}
    live_bare: set[int] = set()
    tb = Testbed(name=TB_NAME, n_hosts=2, subnet=TB_SUBNET, state_dir=STATE_DIR)
    prev_tb = None if a.no_previous else Testbed(
        name=PREV_TB_NAME, n_hosts=2, subnet=PREV_TB_SUBNET, mgmt_subnet=PREV_MGMT_SUBNET,
        state_dir=STATE_DIR, tls=False)
    t_start = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        for t in (tb, prev_tb):
            if t is not None:
                with contextlib.suppress(Exception):
                    asyncio.run(t.down())  # leftovers of an interrupted run
                with timed(f"testbed {t.name} up"):
                    asyncio.run(t.up())
        bare_netns_up()
        measure(sizes, repeats, conditions, criu, tb, live_bare,
                lambda side, s: samples[side].append(s), attribution, prev_tb)
    except (KeyboardInterrupt, BenchError) as exc:
        interrupted = exc
        print(f"checkpoint_cost: stopped: {exc!r}", file=sys.stderr)
    finally:
        with signals_ignored(), timed("cleanup"):
            for pid in list(live_bare):
                with contextlib.suppress(BenchError):
                    kill_and_reap(pid, timeout=5)
            with contextlib.suppress(Exception):
                bare_netns_down()
            for t in (tb, prev_tb):
                if t is None:
                    continue
                try:
                    asyncio.run(t.down())
                except Exception as exc:
                    print(f"checkpoint_cost: testbed {t.name} down: {exc}", file=sys.stderr)
            _remove_parasite_leftovers()
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            reap_all()

    result["elapsed_s"] = time.perf_counter() - t_start
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["complete"] = interrupted is None
    if interrupted is not None:
        result["stopped_by"] = repr(interrupted)
    summary = build_summary(sizes, conditions, samples["nfvha"], samples["bare"],
                            samples["previous"])
    result["summary"] = summary
    measured = {size for per in summary.values() for size in per}
    result["attribution"] = {k: v for k, v in attribution.items() if k in measured}
    result["targets"] = evaluate_targets(summary)
    result["anomalies"] = anomalies(samples["nfvha"], samples["bare"], summary,
                                    result["machine"])
    if not result["summary"]:
        print("checkpoint_cost: no complete size measured; nothing written", file=sys.stderr)
        return 1
    publish(result, "checkpoint_cost", a.out, markdown=markdown, plot=plot,
            target_value=lambda t: f"{t['value']:.2f}", doc_img=not a.no_doc_img)
    return 0 if interrupted is None else 1


if __name__ == "__main__":
    sys.exit(main())
