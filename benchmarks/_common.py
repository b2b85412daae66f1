"""Helpers shared by the benchmark scripts (checkpoint_cost, recovery, dataplane, scale,
idle_cost).

The scripts are run as ``python benchmarks/X.py``, not as a package, so each one puts its
own directory on ``sys.path`` and imports this module as ``_common``. Only what is truly the
same in every script that uses it lives here: each report's own statistics, tables and
plots stay in its script, so that changing one benchmark's output cannot change another's.
Stdlib only, apart from the testbed type, so that importing it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from nfvha.client import ManagerClient
    from nfvha.testbed import Testbed

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
DOC_IMG = REPO / "docs" / "img"


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why.

    One class for all scripts, so that the shared helpers (``wait_for``) raise exactly what
    each script's main loop catches to stop cleanly and still write partial results.
    """


# -- progress and signals --------------------------------------------------------------------


def progress(msg: str) -> None:
    """Print a time-stamped progress line, flushed so that it shows at once in a log."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Report how long the block took, so a slow step stands out in the progress log."""
    t0 = time.perf_counter()
    yield
    progress(f"{label} ({time.perf_counter() - t0:.1f}s)")


def on_term(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handler: turn it into KeyboardInterrupt so that it takes the same cleanup path
    as Ctrl-C (testbed down, partial results written)."""
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Make SIGINT and SIGTERM interrupt the run.

    Ctrl-C must reach the cleanup even when started in the background (where SIGINT is
    inherited as ignored), and a plain ``kill`` must tear the testbed down too.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM during cleanup, so that a second Ctrl-C cannot leave a
    half-torn-down testbed behind; afterwards SIGINT interrupts again (SIGTERM stays
    ignored: the results are about to be written)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- waiting and the testbed -----------------------------------------------------------------


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` s pass
    (BenchError naming ``what``): every wait of a benchmark must be bounded."""
    deadline = time.monotonic() + timeout
    while True:
        res = pred()
        if res:
            return res
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def testbed_down(tb: Testbed, who: str) -> None:
    """Tear the testbed down, reporting (not raising) a failure, then reap its processes.

    Used in ``finally`` blocks, where raising would hide the original error; the manager,
    agents and forwarder were our children, so they are reaped here to leave no zombies.
    """
    try:
        asyncio.run(tb.down())
    except Exception as exc:
        print(f"{who}: testbed down: {exc}", file=sys.stderr)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def program(script: Path, *args: str, previous: bool = False) -> dict[str, Any]:
    """``command``, ``volumes`` and ``security`` of a VNFD running one of the repository's
    Python VNFs: contained as nfvha runs VNFs now, or (``previous``) in the sandbox of
    before issue 12 (the host's file system, every capability, no seccomp), which the
    benchmarks measure side by side to give the cost of containment."""
    from nfvha.demo import VNF_PYTHON, python_vnf

    if previous:
        return {"command": [VNF_PYTHON, str(script), *args],
                "security": {"private_root": False, "seccomp": "unconfined",
                             "capabilities": ["ALL"]}}
    contained: dict[str, Any] = python_vnf(script, *args)
    return contained


def manager_client(tb: Testbed, timeout: float = 10.0) -> ManagerClient:
    """A client of the testbed's manager with its operator credential (``nfvha.client``);
    every call has a timeout. Its ``http`` is the ``httpx.Client`` under it, for raw
    answers."""
    import httpx

    from nfvha.client import ManagerClient

    return ManagerClient(tb.manager_urls, tb.operator_token, verify=tb.client_context(None),
                         timeout=httpx.Timeout(timeout, connect=3.0))


def manager_call(m: ManagerClient, method: str, path: str, ok: tuple[int, ...] = (),
                 **kw: Any) -> Any:
    """``api_result`` of one call through the manager client: a refusal (other than the
    statuses ``ok`` allows) or no answer at all is a BenchError naming the call."""
    from nfvha.errors import NfvhaError

    try:
        r = m.request(method, path, ok=ok, **kw)
    except NfvhaError as exc:
        raise BenchError(str(exc)) from exc
    return api_result(method, path, r, ok)


def daemon_client(tb: Testbed, timeout: float = 10.0, **kw: Any) -> httpx.Client:
    """A client of the testbed's agents and forwarder, which take calls from the
    manager only: it presents the manager's certificate (with TLS) or the cluster token."""
    import httpx

    headers = {} if tb.tls else {"Authorization": f"Bearer {tb.token}"}
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=3.0), headers=headers,
                        verify=tb.client_context("manager"), **kw)


def api_result(method: str, path: str, r: httpx.Response, ok: tuple[int, ...] = ()) -> Any:
    """The JSON of a manager or forwarder answer; None for 202 or an empty body. Any other
    status >= 300 that ``ok`` does not allow is a BenchError naming the request."""
    if r.status_code >= 300 and r.status_code not in ok:
        raise BenchError(f"{method} {path}: HTTP {r.status_code} {r.text[:400]}")
    if r.status_code == 202 or not r.content:
        return None
    return r.json()


def save_figure(fig: Any, paths: Sequence[Path]) -> None:
    """Write a matplotlib figure to every path (directories made), then free it."""
    import matplotlib.pyplot as plt

    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=100)
    plt.close(fig)


def run_ip(*args: str) -> str:
    """Run ``ip ARGS`` (bounded): its stdout, or BenchError with its stderr."""
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"ip {' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def pin_bridge_macs(tb: Testbed) -> None:
    """Give every bridge of the testbed its current MAC explicitly, so that it keeps it.

    A Linux bridge without an explicitly set address takes the lowest MAC of its ports and
    changes it when that port goes away. The testbed does not set one, so a crashed host
    whose uplink had the lowest MAC (one run in three) changes the root bridge's MAC: the
    root netns flushes its ARP entries (the client's entry for the VNF is re-resolved only
    after up to 1 s) and the surviving agents keep sending heartbeats to the old gateway
    MAC until they re-ARP, so the manager suspects them at the very moment it decides
    where to recover. Real switches and routers do not change MAC when a host dies; a
    host's br0 likewise changes MAC when a VNF's veth comes or goes. Re-setting the same
    address marks it as administratively set (no disruption at all).
    """
    mac = Path(f"/sys/class/net/{tb.bridge}/address").read_text().strip()
    run_ip("link", "set", "dev", tb.bridge, "address", mac)
    for h in tb.hosts.values():
        info = json.loads(run_ip("-n", h.netns, "-j", "link", "show", "br0"))
        run_ip("-n", h.netns, "link", "set", "dev", "br0", "address", info[0]["address"])


# -- processes -------------------------------------------------------------------------------

_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float:
    """utime+stime of a process (all its threads, not its children), seconds; NaN if it
    is gone. Clock ticks: 10 ms resolution at the usual 100 Hz."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _TCK


def proc_rss_mib(pid: int | None) -> float:
    """Resident memory of a process, MiB; NaN if it is gone."""
    if pid is None:
        return math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def proc_wait(pid: int | None) -> float:
    """Seconds the threads of a process spent runnable but waiting for a CPU (schedstat);
    NaN if it is gone."""
    if pid is None:
        return math.nan
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return math.nan
    total = 0.0
    for t in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[1]) / 1e9
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(f[:8])
    return (total - f[3] - f[4]) / _TCK, total / _TCK


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float | None], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values.

    None and NaN (a sample that could not be measured) are left out rather than failing
    the whole summary.
    """
    xs = sorted(float(v) for v in values if v is not None and not math.isnan(v))
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Sequence[float | None]) -> float:
    """The 50th percentile, with ``percentile``'s handling of missing values."""
    return percentile(values, 50)


def fmt_num(x: float | None, digits: int = 0) -> str:
    """A number for a Markdown table; a dash where nothing was measured."""
    if x is None or math.isnan(x):
        return "–"
    return f"{x:.{digits}f}"


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _memory_kib() -> int:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return mem_kib


def machine_basics() -> dict[str, Any]:
    """Date, kernel, OS, CPU model, CPU count and memory: what every report states about the
    machine, so that results from different machines are never compared unknowingly.

    Each script adds its own facts (CRIU version, sysctls, ...) after these keys.
    """
    cpu = _cpu_model()
    mem_kib = _memory_kib()
    debian = ""
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "os": f"Debian {debian}" if debian else platform.platform(),
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
    }


def testbed_machine(tb_name: str) -> dict[str, Any]:
    """``machine_basics`` plus what every testbed benchmark states about its run: CRIU,
    Python, the load, the other testbeds present (they share the CPUs) and the digest of
    nfvha's sources at the start (compared with the end by the caller)."""
    from nfvha.vim.criu import CriuRunner

    criu = CriuRunner().binary
    try:
        version = subprocess.run([criu, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip().replace("\n", "; ")
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"unknown ({exc})"
    return {**machine_basics(), "criu_binary": criu, "criu_version": version,
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg(),
            "other_netns_at_start": other_netns(tb_name),
            "source_digest_at_start": source_digest()}


def shared_machine_note(m: dict[str, Any]) -> list[str]:
    """An anomaly line when other testbeds' namespaces existed at the start of the run
    (``m``: the result's machine description, with ``loadavg_at_end`` filled in)."""
    if not m["other_netns_at_start"]:
        return []
    return [f"{len(m['other_netns_at_start'])} other network namespaces existed at start "
            f"({', '.join(m['other_netns_at_start'][:6])}): other testbeds may have shared "
            f"the CPUs; load1 at start {m['loadavg_at_start'][0]:.2f}, at end "
            f"{m['loadavg_at_end'][0]:.2f}"]


def other_netns(ours: str) -> list[str]:
    """Network namespaces not ours (not starting with ``ours``): other testbeds may share
    the CPUs meanwhile."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(ours))


def source_digest() -> str:
    """sha256 over nfvha's sources: the manager and agents each run import them afresh, so
    an edit during the run means the runs did not all measure the same code."""
    h = hashlib.sha256()
    for p in sorted((REPO / "src" / "nfvha").rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# -- output ----------------------------------------------------------------------------------


def publish(result: dict[str, Any], name: str, out: Path, *,
            markdown: Callable[[dict[str, Any]], str],
            plot: Callable[[dict[str, Any], Sequence[Path]], None],
            target_value: Callable[[dict[str, Any]], str],
            doc_img: bool, json_indent: int = 2) -> None:
    """Write ``<name>.json``, ``.md`` and ``.png`` to ``out`` (and the plot to docs/img
    if ``doc_img``), then print the report, the targets and what was written.

    One place for it so that every benchmark leaves the same set of files, named alike,
    and the docs copy of a plot is only ever refreshed on request.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=json_indent) + "\n")
    md = markdown(result)
    (out / f"{name}.md").write_text(md)
    pngs = [out / f"{name}.png"]
    if doc_img:
        pngs.append(DOC_IMG / f"{name}.png")
    plot(result, pngs)
    print()
    print(md)
    for t in result["targets"]:
        print(f"{'PASS' if t['pass'] else 'MISS'}: {t['target']}: {target_value(t)}")
    print(f"wrote {out / f'{name}.json'}, .md, .png"
          + (f" and {DOC_IMG / f'{name}.png'}" if doc_img else "")
          + f" in {result['elapsed_s']:.0f}s")


def closed_loop(sock: socket.socket, n: int, seq0: int) -> tuple[list[float], int]:
    """n request→reply RTTs (µs) on a connected socket, one request in flight; a reply
    counts when its last word is the request (an echo, or a VNF that prefixes it)."""
    out: list[float] = []
    lost = 0
    for i in range(seq0, seq0 + n):
        want = b"%d" % i
        t0 = time.perf_counter_ns()
        sock.send(want)
        while True:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                lost += 1
                break
            if data.rsplit(b" ", 1)[-1] == want:
                out.append((time.perf_counter_ns() - t0) / 1000)
                break
    return out, lost
