"""nfvha's steering forwarder beside nginx's UDP stream proxy, on loopback, in one run.

Both proxies run at once, each in front of the same echo server (127.0.0.2), at the same
scheduling priority (nice -10, the forwarder's own): the real ``nfvha forwarder`` daemon,
given a service through its control API, and Debian's nginx with ``libnginx-mod-stream``
(one worker, a generated config in a temporary directory; ``scripts/setup.sh`` installs
it). Request and reply both cross the proxy. Measured:

- **RTT**: closed loop (one request in flight) straight to the echo server, via nfvha and
  via nginx, in interleaved blocks; *added* = RTT via − RTT direct, p50 and p99.
- **Throughput per core**: a client process (batched ``sendmmsg``/``recvmmsg``) offers
  fixed request rates, then keeps a window of requests in flight (``max``); datagrams the
  proxy forwarded (requests the echo server got + replies the client got) per CPU second
  of the proxy's process (utime+stime).
- **Log memory**: what nfvha's packet log takes per logged datagram after the windows
  (its ``log_memory`` over ``log_packets``; nothing commits here, so it holds them all).

Only loopback addresses; every process and file it makes is removed at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx

from nfvha.dataplane.batchio import RecvBuffers, SendBuffers, sockaddr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, closed_loop, percentile, proc_cpu, wait_for

NGINX = "/usr/sbin/nginx"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
ECHO_IP = "127.0.0.2"
PROXY_IP = "127.0.0.1"
PAYLOAD = 32
NICE = -10  # the forwarder's default (cli: --nice); nginx is given the same
IN_FLIGHT = 256  # the "max" load: requests outstanding at once

Addr = tuple[str, int]


@dataclass(frozen=True)
class ProxyPlan:
    rtt_samples: int  # per path
    rtt_block: int
    loads: tuple[int | None, ...]  # offered requests/s; None: IN_FLIGHT outstanding
    window: float


QUICK = ProxyPlan(rtt_samples=1500, rtt_block=250, loads=(20000, 50000, None), window=2.0)
FULL = ProxyPlan(rtt_samples=5000, rtt_block=250, loads=(10000, 20000, 50000, 100000, None),
                 window=3.0)


def nginx_available() -> str | None:
    """Why nginx's UDP proxy cannot be measured here, or None."""
    if not os.access(NGINX, os.X_OK):
        return f"{NGINX} is missing (scripts/setup.sh installs nginx)"
    if not NGINX_STREAM_MODULE.exists():
        return f"{NGINX_STREAM_MODULE} is missing (scripts/setup.sh installs libnginx-mod-stream)"
    return None


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _big(sock: socket.socket) -> None:
    for opt, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, 8 << 20)


# -- the echo server and the load client (processes of their own) ---------------------------


def _echo(addr: Addr, count: Synchronized[int], ready: MpEvent, stop: MpEvent) -> None:
    """Answers every datagram with itself, in batches; counts what it got."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big(s)
    s.bind(addr)
    s.setblocking(False)
    rx, tx = RecvBuffers(), SendBuffers()
    names: dict[Addr, bytes] = {}
    poller = select.poll()
    poller.register(s, select.POLLIN)
    ready.set()
    fd = s.fileno()
    while not stop.is_set():
        if not poller.poll(100):
            continue
        while n := rx.recv(fd):
            count.value += n
            lens, srcs = rx.lengths(n), rx.sources(n)
            i = 0
            while i < n:
                j = i + 1
                while j < n and srcs[j] == srcs[i]:
                    j += 1
                name = names.get(srcs[i]) or names.setdefault(srcs[i], sockaddr(srcs[i]))
                tx.send(fd, name, [rx.pointer(k) for k in range(i, j)], lens[i:j])
                i = j
    s.close()


def _client(target: Addr, rate: int | None, duration: float, out: Any) -> None:
    """Offers ``rate`` requests/s in bursts (None: keeps IN_FLIGHT outstanding), counts
    the replies; then waits a little for the last ones."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big(s)
    s.connect(target)
    s.setblocking(False)
    rx, tx = RecvBuffers(), SendBuffers()
    payload = ctypes.create_string_buffer(b"q" * PAYLOAD)
    ptr = ctypes.addressof(payload)
    fd = s.fileno()
    poller = select.poll()
    poller.register(s, select.POLLIN)
    sent = got = written_off = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while (now := time.perf_counter()) < end:
        # Without a rate, a window: what was lost is written off after a silence, or the
        # window would shrink to nothing.
        due = (int((now - t0) * rate) - sent) if rate else IN_FLIGHT - (sent - got - written_off)
        if due > 0:
            k = tx.send(fd, None, [ptr] * min(due, tx.slots), [PAYLOAD] * min(due, tx.slots))
            sent += max(k, 0)
        while n := rx.recv(fd):
            got += n
        if rate:
            if due <= 0:
                poller.poll(0.2)
        elif not poller.poll(20):
            written_off = sent - got
    linger = time.perf_counter() + 0.3
    while time.perf_counter() < linger:
        n = rx.recv(fd)
        got += n
        if not n:
            poller.poll(20)
    out.put({"sent": sent, "got": got, "elapsed": duration})
    s.close()


# -- the proxies -----------------------------------------------------------------------------


@contextlib.contextmanager
def _process(args: list[str], *, env: dict[str, str] | None = None,
             log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if log:
            out.close()  # type: ignore[union-attr]


def _nginx_config(work: Path, listen: Addr, target: Addr) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""\
# Generated by benchmarks/dataplane.py: nginx's UDP proxy beside nfvha's forwarder.
load_module {NGINX_STREAM_MODULE};
worker_processes 1;
master_process off;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen {listen[0]}:{listen[1]} udp;
        proxy_pass {target[0]}:{target[1]};
        proxy_timeout 60s;
    }}
}}
""")
    return conf


def _through(addr: Addr, timeout: float = 0.3) -> bool:
    """Whether a datagram sent to ``addr`` comes back (the proxy and echo are up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(addr)
        try:
            s.send(b"up?")
            return s.recv(100) == b"up?"
        except OSError:
            return False


@contextlib.contextmanager
def nginx(work: Path, listen: Addr, target: Addr) -> Iterator[int]:
    """nginx proxying ``listen`` to ``target``; yields its pid."""
    conf = _nginx_config(work, listen, target)
    # nginx takes a variable named NGINX as sockets it inherits.
    env = {k: v for k, v in os.environ.items() if k != "NGINX"}
    with _process([NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
                  env=env, log=work / "nginx.out") as proc:
        try:
            wait_for(lambda: proc.poll() is not None or _through(listen), 10, "nginx up")
        except BenchError:
            raise BenchError(f"nginx did not start: {(work / 'error.log').read_text()[-400:]}"
                             ) from None
        if proc.poll() is not None:
            raise BenchError(f"nginx exited: {(work / 'nginx.out').read_text()[-400:]}")
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, NICE)
        yield proc.pid


@contextlib.contextmanager
def nfvha_forwarder(work: Path, listen: Addr, target: Addr) -> Iterator[tuple[int, httpx.Client]]:
    """The ``nfvha forwarder`` daemon with one service, ``listen`` → ``target`` (same port:
    the control API takes one); yields its pid and a client of its control API."""
    if listen[1] != target[1]:
        raise BenchError("nfvha's service and target ports are the same port")
    token = work / "token"
    token.write_text("bench-token")
    ctl = _free_port(PROXY_IP)
    args = [sys.executable, "-m", "nfvha", "forwarder", "--listen", f"{PROXY_IP}:{ctl}",
            "--token-file", str(token), "--interface", "lo", "--prefixlen", "8",
            "--nice", str(NICE)]
    with _process(args, log=work / "forwarder.log") as proc, httpx.Client(
            base_url=f"http://{PROXY_IP}:{ctl}", timeout=5.0,
            headers={"Authorization": "Bearer bench-token"}) as http:

        def up() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"nfvha forwarder exited: "
                                 f"{(work / 'forwarder.log').read_text()[-400:]}")
            with contextlib.suppress(httpx.HTTPError):
                return http.get("/healthz").status_code == 200
            return False

        wait_for(up, 20, "nfvha forwarder up")
        # 127.0.0.1 is lo's own: the forwarder adds no address anywhere.
        r = http.post("/v1/services", json={"name": "bench", "listen_ip": listen[0],
                                            "port": listen[1], "target_ip": target[0]})
        if r.status_code != 201:
            raise BenchError(f"nfvha forwarder refused the service: {r.status_code} {r.text}")
        yield proc.pid, http


# -- measurements ----------------------------------------------------------------------------


def _closed_loop(addr: Addr, n: int, seq0: int) -> tuple[list[float], int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.settimeout(0.5)
        return closed_loop(s, n, seq0)


def measure_rtt(paths: dict[str, Addr], plan: ProxyPlan) -> dict[str, Any]:
    samples: dict[str, list[float]] = {p: [] for p in paths}
    lost = dict.fromkeys(paths, 0)
    seq = 0
    for addr in paths.values():  # warm-up: flows, caches
        _closed_loop(addr, 200, seq)
        seq += 200
    blocks = []
    while min(len(v) for v in samples.values()) < plan.rtt_samples:
        blk = {}
        for p, addr in paths.items():
            got, miss = _closed_loop(addr, plan.rtt_block, seq)
            seq += plan.rtt_block
            samples[p] += got
            lost[p] += miss
            blk[p] = percentile(got, 50)
        blocks.append(blk)
    out: dict[str, Any] = {"blocks_p50_us": blocks}
    direct = samples["direct"]
    for p, xs in samples.items():
        out[p] = {"n": len(xs), "lost": lost[p], "p50": percentile(xs, 50),
                  "p99": percentile(xs, 99)}
        if p != "direct":
            out[p]["added_p50"] = out[p]["p50"] - percentile(direct, 50)
            out[p]["added_p99"] = out[p]["p99"] - percentile(direct, 99)
    return out


def _window(pid: int, target: Addr, rate: int | None, duration: float,
            echo_count: Synchronized[int]) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    e0, c0, t0 = echo_count.value, proc_cpu(pid), time.perf_counter()
    p = ctx.Process(target=_client, args=(target, rate, duration, out), daemon=True)
    p.start()
    try:
        res: dict[str, Any] = out.get(timeout=duration + 20)
    finally:
        p.join(5)
        if p.is_alive():
            p.terminate()
            p.join(2)
    e1, c1, t1 = echo_count.value, proc_cpu(pid), time.perf_counter()
    cpu = c1 - c0
    forwarded = (e1 - e0) + res["got"]
    return {"offered_pps": rate, "sent": res["sent"], "echoed": e1 - e0, "replies": res["got"],
            "loss": 1 - res["got"] / res["sent"] if res["sent"] else math.nan,
            "round_trips_per_s": res["got"] / duration, "forwarded": forwarded,
            "proxy_cpu_s": cpu, "proxy_cores": cpu / (t1 - t0),
            "datagrams_per_core": forwarded / cpu if cpu > 0 else math.nan,
            "us_per_datagram": cpu / forwarded * 1e6 if forwarded else math.nan}


def measure(plan: ProxyPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """Both proxies side by side; see the module docstring."""
    why = nginx_available()
    if why:
        raise BenchError(why)
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10,
                             check=False).stderr.strip()
    ctx = mp.get_context("fork")
    count = ctx.Value("q", 0, lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    port = _free_port(PROXY_IP)
    echo_addr = (ECHO_IP, port)
    work = Path(tempfile.mkdtemp(prefix="nfvha-proxies-"))
    echo = ctx.Process(target=_echo, args=(echo_addr, count, ready, stop), daemon=True)
    echo.start()
    try:
        if not ready.wait(10):
            raise BenchError("the echo server did not start")
        (work / "nginx").mkdir()
        (work / "nfvha").mkdir()
        nfvha_addr, nginx_addr = (PROXY_IP, port), (PROXY_IP, _free_port(PROXY_IP))
        with nfvha_forwarder(work / "nfvha", nfvha_addr, echo_addr) as (fwd_pid, http), \
                nginx(work / "nginx", nginx_addr, echo_addr) as nginx_pid:
            result: dict[str, Any] = {
                "nginx_version": version, "payload_bytes": PAYLOAD,
                "in_flight_at_max": IN_FLIGHT, "nice": NICE,
                "nginx_config": (work / "nginx" / "nginx.conf").read_text()}
            rtt = measure_rtt({"direct": echo_addr, "nfvha": nfvha_addr, "nginx": nginx_addr},
                              plan)
            result["rtt_us"] = rtt
            log(f"proxies RTT: direct p50 {rtt['direct']['p50']:.0f} µs; added p50/p99 "
                f"nfvha {rtt['nfvha']['added_p50']:.0f}/{rtt['nfvha']['added_p99']:.0f} µs, "
                f"nginx {rtt['nginx']['added_p50']:.0f}/{rtt['nginx']['added_p99']:.0f} µs")
            windows: list[dict[str, Any]] = []
            for k, load in enumerate(plan.loads):
                order = [("nfvha", fwd_pid, nfvha_addr), ("nginx", nginx_pid, nginx_addr)]
                for name, pid, addr in order if k % 2 == 0 else order[::-1]:
                    w = {"proxy": name, **_window(pid, addr, load, plan.window, count)}
                    windows.append(w)
                    log(f"proxies {name:5s} offered {load or 'max':>6}: "
                        f"{w['round_trips_per_s']:8.0f} round trips/s, loss "
                        f"{w['loss'] * 100:4.1f}%, {w['proxy_cores']:.2f} cores, "
                        f"{w['datagrams_per_core']:8.0f} datagrams/s per core")
                    time.sleep(0.3)
            result["throughput"] = windows
            st = http.get("/v1/services/bench").json()
            result["nfvha_log"] = {
                "packets": st["log_packets"], "payload_bytes": st["log_bytes"],
                "memory_bytes": st.get("log_memory"),
                "bytes_per_datagram": (st["log_memory"] / st["log_packets"]
                                       if st.get("log_memory") and st["log_packets"]
                                       else math.nan),
                "overhead_per_datagram": ((st["log_memory"] - st["log_bytes"])
                                          / st["log_packets"]
                                          if st.get("log_memory") and st["log_packets"]
                                          else math.nan)}
            result["nfvha_stats"] = st["stats"]
        return result
    finally:
        stop.set()
        echo.join(5)
        if echo.is_alive():
            os.kill(echo.pid or 0, signal.SIGKILL)
            echo.join(2)
        shutil.rmtree(work, ignore_errors=True)


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Per proxy: added RTT p50/p99, best datagrams/s per core; and nfvha over nginx."""
    s: dict[str, Any] = {}
    for p in ("nfvha", "nginx"):
        rtt = res["rtt_us"][p]
        ws = [w for w in res["throughput"] if w["proxy"] == p
              and not math.isnan(w["datagrams_per_core"])]
        s[p] = {"added_p50_us": rtt["added_p50"], "added_p99_us": rtt["added_p99"],
                "rtt_p50_us": rtt["p50"], "rtt_p99_us": rtt["p99"],
                "best_datagrams_per_core": max((w["datagrams_per_core"] for w in ws),
                                               default=math.nan),
                "max_round_trips_per_s": max((w["round_trips_per_s"] for w in ws),
                                             default=math.nan)}
    s["direct_p50_us"] = res["rtt_us"]["direct"]["p50"]
    a, b = s["nfvha"], s["nginx"]
    s["added_p50_ratio"] = (a["added_p50_us"] / b["added_p50_us"]
                            if b["added_p50_us"] > 0 else math.nan)
    s["per_core_ratio"] = a["best_datagrams_per_core"] / b["best_datagrams_per_core"]
    s["log_bytes_per_datagram"] = res["nfvha_log"]["bytes_per_datagram"]
    s["log_overhead_per_datagram"] = res["nfvha_log"]["overhead_per_datagram"]
    return s
