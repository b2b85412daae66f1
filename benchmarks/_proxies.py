"""nfvha's steering forwarder, alone and as the active of a forwarder pair, beside nginx's
UDP stream proxy, in one network namespace, in one run.

Three proxies run at once, each in front of the same echo server, at the same scheduling
priority (nice -10, the forwarder's own): the real ``nfvha forwarder`` daemon alone, given
a service through its control API; a forwarder *pair* (``nfvha.dataplane.pair``): two
``nfvha forwarder`` daemons and an ``nfvha manager`` (SQLite) arbitrating them, the
service given to the active one, which mirrors every datagram it logs (and its flows and
reply counts) to the standby over a TCP stream; and Debian's nginx with
``libnginx-mod-stream`` (one worker, a generated config in a temporary directory;
``scripts/setup.sh`` installs it). Request and reply both cross the proxy. Measured:

- **RTT**: closed loop (one request in flight) straight to the echo server and via each
  proxy, in interleaved blocks; *added* = RTT via − RTT direct, p50 and p99.
- **Throughput per core**: a client process (batched ``sendmmsg``/``recvmmsg``) offers
  fixed request rates, then keeps a window of requests in flight (``max``), to each proxy
  in turn (the order reversed at every load); datagrams the proxy forwarded (requests the
  echo server got + replies the client got) per CPU second of the proxy's process
  (utime+stime). For the pair that process is the *active* forwarder; the standby's CPU
  is given apart, per datagram it was mirrored, with the mirror stream's bytes per
  datagram (the active's ``mirrored_bytes``, the standby's ``mirrored_datagrams``; the
  stream also carries a heartbeat every 40 ms). The standby and the manager share the
  machine's CPUs with the rest while the pair is measured, as they would share a host.
- **Log memory**: what the lone forwarder's packet log takes per logged datagram after the
  windows (its ``log_memory`` over ``log_packets``; nothing commits here, so it holds them
  all).

**The path.** Everything (echo server, clients, the three proxies, the pair's manager)
runs in one network namespace made for the run (``nfvb-px<pid>``) and removed at its end
with whatever still runs in it: a pair member takes ARP over on its interface (an
``AF_PACKET`` socket, ``arp_ignore``/``arp_announce``), which must not happen on the
machine's own interfaces, and ``lo`` has no ARP. So the echo server and every proxy listen
on addresses of a veth inside the namespace (192.0.2.0/24, its peer end up and empty):
traffic between local addresses, which the kernel delivers through the loopback device,
the same for all three proxies. Control APIs, the manager and the mirror stream use
127.0.0.1 in the namespace; between two hosts the mirror stream would cross a network.
"""

from __future__ import annotations

import asyncio
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
from nfvha.errors import HostNetworkError
from nfvha.vim.hostnet import NETNS_RUN_DIR, HostNetwork

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, closed_loop, percentile, proc_cpu, wait_for

NGINX = "/usr/sbin/nginx"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
NETNS_PREFIX = "nfvb-px"
IFACE, IFACE_PEER = "nfvb0", "nfvb1"  # a veth inside the namespace: ARP needs one, lo has none
PREFIXLEN = 24
FIXED_IP = "192.0.2.1"  # the interface's own (primary) address; TEST-NET-1, in the netns only
ECHO_IP = "192.0.2.2"
LONE_IP = "192.0.2.3"  # the lone forwarder's service address
NGINX_IP = "192.0.2.4"
PAIR_IP = "192.0.2.10"  # the pair's service address
UPSTREAM_IP = "192.0.2.11"  # the pair's upstream address
CTL_IP = "127.0.0.1"  # control APIs, the manager, the mirror stream
PAYLOAD = 32
NICE = -10  # the forwarder's default (cli: --nice); nginx and the pair's manager are given it
IN_FLIGHT = 256  # the "max" load: requests outstanding at once
PROXIES = ("nfvha", "nfvha-pair", "nginx")
TOKEN = "bench-token"
CLONE_NEWNET = 0x40000000

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


# -- the namespace ---------------------------------------------------------------------------


def _ip(netns: str, *args: str) -> None:
    r = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10,
                       check=False)
    if r.returncode != 0:
        raise BenchError(f"ip -n {netns} {' '.join(args)}: {r.stderr.strip()}")


def _pids_inside(netns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                       timeout=10, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    """A network namespace of this run's own: ``lo`` up, and a veth whose end ``IFACE``
    carries the echo server's and the proxies' addresses. At the end, whatever still runs
    in it (it holds only this run's processes) is killed and it is removed."""
    net = HostNetwork()
    try:
        asyncio.run(net.create_netns(name))
    except HostNetworkError as exc:
        raise BenchError(f"cannot make the proxies' namespace: {exc}") from exc
    try:
        _ip(name, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE_PEER)
        for dev in (IFACE, IFACE_PEER):
            _ip(name, "link", "set", dev, "up")
        # The pair's two addresses too: both members share IFACE here, and each adds a
        # missing address at its start (one of them would find it added meanwhile).
        for ip in (FIXED_IP, ECHO_IP, LONE_IP, NGINX_IP, PAIR_IP, UPSTREAM_IP):
            _ip(name, "addr", "add", f"{ip}/{PREFIXLEN}", "dev", IFACE)
        yield name
    finally:
        deadline = time.monotonic() + 5
        while (left := _pids_inside(name)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        asyncio.run(net.delete_netns(name))


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """The calling thread in ``netns`` (the sockets it opens and the processes it forks
    live there), and back in its own at the end."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(NETNS_RUN_DIR / netns, os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise BenchError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(there)
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                # Not a BenchError: the sections after this one must not run in the wrong
                # namespace.
                raise OSError(ctypes.get_errno(), "cannot return to this process's network "
                              f"namespace from {netns}")
    finally:
        os.close(home)


# -- the proxies -----------------------------------------------------------------------------


@contextlib.contextmanager
def _process(args: list[str], netns: str, *, env: dict[str, str] | None = None,
             log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` run in ``netns`` (``ip netns exec`` execs it: the pid is the command's)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["ip", "netns", "exec", netns, *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
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
# Generated by benchmarks/dataplane.py: nginx's UDP proxy beside nfvha's forwarders.
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
def nginx(work: Path, netns: str, listen: Addr, target: Addr) -> Iterator[int]:
    """nginx proxying ``listen`` to ``target``; yields its pid."""
    conf = _nginx_config(work, listen, target)
    # nginx takes a variable named NGINX as sockets it inherits.
    env = {k: v for k, v in os.environ.items() if k != "NGINX"}
    with _process([NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
                  netns, env=env, log=work / "nginx.out") as proc:
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


def _api(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://{CTL_IP}:{port}", timeout=5.0,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def _wait_healthy(proc: subprocess.Popen[bytes], http: httpx.Client, what: str,
                  log: Path) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited: {log.read_text(errors='replace')[-600:]}")
        with contextlib.suppress(httpx.HTTPError):
            return http.get("/healthz").status_code == 200
        return False

    wait_for(up, 30, f"{what} up")


def _add_service(http: httpx.Client, listen: Addr, target: Addr) -> None:
    r = http.post("/v1/services", json={"name": "bench", "listen_ip": listen[0],
                                        "port": listen[1], "target_ip": target[0]})
    if r.status_code != 201:
        raise BenchError(f"nfvha forwarder refused the service: {r.status_code} {r.text}")


def _forwarder_args(ctl: int, token: Path) -> list[str]:
    return [sys.executable, "-m", "nfvha", "forwarder", "--listen", f"{CTL_IP}:{ctl}",
            "--token-file", str(token), "--interface", IFACE, "--prefixlen", str(PREFIXLEN),
            "--nice", str(NICE)]


@contextlib.contextmanager
def nfvha_forwarder(work: Path, netns: str, listen: Addr,
                    target: Addr) -> Iterator[tuple[int, httpx.Client]]:
    """The ``nfvha forwarder`` daemon alone with one service, ``listen`` → ``target`` (same
    port: the control API takes one); yields its pid and a client of its control API."""
    if listen[1] != target[1]:
        raise BenchError("nfvha's service and target ports are the same port")
    token = work / "token"
    token.write_text(TOKEN)
    log = work / "forwarder.log"
    ctl = _free_port(CTL_IP)
    with _process(_forwarder_args(ctl, token), netns, log=log) as proc, _api(ctl) as http:
        _wait_healthy(proc, http, "nfvha forwarder", log)
        _add_service(http, listen, target)
        yield proc.pid, http


@dataclass
class Pair:
    """A running forwarder pair: which member is active, the members' pids and control
    APIs; reads what the mirror stream carried."""

    active: str
    standby: str
    pids: dict[str, int]
    http: dict[str, httpx.Client]
    #: From the daemons' start to one active on the short lease, its standby in sync.
    ready_s: float
    #: Logged − mirrored before measuring (0: the standby has every datagram).
    offset: int = 0

    @property
    def active_pid(self) -> int:
        return self.pids[self.active]

    @property
    def standby_pid(self) -> int:
        return self.pids[self.standby]

    def status(self, member: str) -> dict[str, Any]:
        r = self.http[member].get("/v1/pair")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def counters(self) -> dict[str, Any]:
        """What the active logged and mirrored (bytes) and the standby applied; the roles
        and term, to tell a takeover or a lost stream in between."""
        a, s = self.status(self.active), self.status(self.standby)
        svc = self.http[self.active].get("/v1/services/bench").json()
        return {"logged": int(svc["position"]), "mirrored_bytes": a["mirrored_bytes"],
                "mirrored_datagrams": s["mirrored_datagrams"], "term": a["term"],
                "roles": (a["role"], s["role"]), "in_sync": bool(s["in_sync"]),
                "takeovers": a["takeovers"] + s["takeovers"],
                "demotions": a["demotions"] + s["demotions"]}

    def caught_up(self, timeout: float = 3.0) -> dict[str, Any]:
        """The counters once the standby has applied everything the active logged (or
        stopped applying any more: the stream was lost)."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            c = self.counters()
            got = c["mirrored_datagrams"]
            if (got is None or got + self.offset >= c["logged"] or got == last
                    or time.monotonic() > deadline):
                return c
            last = got
            time.sleep(0.05)


def _pair_ready(http: dict[str, httpx.Client]) -> tuple[str, str] | None:
    """(active, standby) once one member is active with its standby in sync."""
    st = {}
    for m, h in http.items():
        with contextlib.suppress(httpx.HTTPError, ValueError):
            st[m] = h.get("/v1/pair").json()
    act = [m for m, x in st.items() if x.get("role") == "active"]
    sby = [m for m, x in st.items() if x.get("role") == "standby"]
    if len(act) == 1 and len(sby) == 1 and st[act[0]].get("standby_in_sync") \
            and st[sby[0]].get("in_sync"):
        return act[0], sby[0]
    return None


@contextlib.contextmanager
def nfvha_pair(work: Path, netns: str, listen: Addr, target: Addr,
               log: Callable[[str], None]) -> Iterator[Pair]:
    """Two ``nfvha forwarder`` daemons of a pair (``a``, ``b``) on ``IFACE`` and an ``nfvha
    manager`` (SQLite) arbitrating them; the service given to the active once its standby
    follows it; yields once the active holds the short lease (the lone one it got before
    its standby joined has run out)."""
    if listen[1] != target[1]:
        raise BenchError("nfvha's service and target ports are the same port")
    token = work / "token"
    token.write_text(TOKEN)
    mgr_port = _free_port(CTL_IP)
    ctl = {m: _free_port(CTL_IP) for m in ("a", "b")}
    mirror = {m: _free_port(CTL_IP) for m in ("a", "b")}
    mgr_args = [sys.executable, "-m", "nfvha", "manager", "--listen", f"{CTL_IP}:{mgr_port}",
                "--db", str(work / "manager.db"), "--token-file", str(token),
                "--nice", str(NICE), "--forwarder",
                ",".join(f"{m}=http://{CTL_IP}:{p}" for m, p in ctl.items())]

    def member(m: str) -> list[str]:
        peer = "b" if m == "a" else "a"
        return [*_forwarder_args(ctl[m], token), "--id", m,
                "--mirror-listen", f"{CTL_IP}:{mirror[m]}",
                "--peer", f"{CTL_IP}:{mirror[peer]}",
                "--manager", f"http://{CTL_IP}:{mgr_port}", "--upstream-ip", UPSTREAM_IP]

    t0 = time.monotonic()
    logs = {m: work / f"forwarder-{m}.log" for m in ("a", "b")}
    with contextlib.ExitStack() as stack:
        mgr = stack.enter_context(_process(mgr_args, netns, log=work / "manager.log"))
        procs = {m: stack.enter_context(_process(member(m), netns, log=logs[m]))
                 for m in ("a", "b")}
        http = {m: stack.enter_context(_api(p)) for m, p in ctl.items()}

        def ready() -> tuple[str, str] | None:
            for what, p, f in (("the manager", mgr, work / "manager.log"),
                               *((f"forwarder {m}", procs[m], logs[m]) for m in procs)):
                if p.poll() is not None:
                    raise BenchError(f"the pair's {what} exited: "
                                     f"{f.read_text(errors='replace')[-600:]}")
            return _pair_ready(http)

        try:
            active, standby = wait_for(ready, 40, "a forwarder pair in sync", every=0.1)
        except BenchError as exc:
            tails = "; ".join(f"{m}: {f.read_text(errors='replace')[-300:]!r}"
                              for m, f in logs.items())
            raise BenchError(f"{exc} ({tails})") from None
        log(f"proxies pair: {active} active, {standby} following "
            f"({time.monotonic() - t0:.1f} s)")
        _add_service(http[active], listen, target)
        wait_for(lambda: any(s.get("name") == "bench" for s in
                             http[standby].get("/v1/services").json()),
                 10, "the service mirrored to the standby")
        timings = http[active].get("/v1/pair").json()["timings"]

        def short_lease() -> bool:
            st = http[active].get("/v1/pair").json()
            if st["role"] != "active" or not st["standby_in_sync"]:
                raise BenchError(f"the pair changed while settling: {active} is now {st}")
            return bool(st["lease_remaining_s"] <= timings["lease"] + timings["margin"])

        wait_for(short_lease, timings["lone_lease"] + 5, "the active's lease to be the short "
                 "one (its standby in sync)")
        pair = Pair(active, standby, {m: p.pid for m, p in procs.items()}, http,
                    ready_s=time.monotonic() - t0)
        pair.pids["manager"] = mgr.pid
        wait_for(lambda: _through(listen), 10, "a datagram through the pair")
        c = pair.caught_up()
        pair.offset = c["logged"] - (c["mirrored_datagrams"] or 0)
        yield pair


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


def _mirror(before: dict[str, Any], after: dict[str, Any], cpu: float,
            elapsed: float) -> dict[str, Any]:
    """What the standby cost over one window: its CPU per datagram mirrored to it, and
    the stream's bytes per datagram."""
    changed = (before["term"] != after["term"] or before["roles"] != after["roles"]
               or after["takeovers"] != before["takeovers"]
               or after["demotions"] != before["demotions"])
    if changed or None in (before["mirrored_bytes"], after["mirrored_bytes"],
                           before["mirrored_datagrams"], after["mirrored_datagrams"]):
        return {"mirror_error": f"the pair changed during the window: {before} -> {after}"}
    got = after["mirrored_datagrams"] - before["mirrored_datagrams"]
    sent = after["mirrored_bytes"] - before["mirrored_bytes"]
    if sent < 0:  # a new stream (its counter restarts): the standby was sent a snapshot
        return {"mirror_error": f"the mirror stream was reopened during the window: "
                                f"{before} -> {after}"}
    return {"logged": after["logged"] - before["logged"], "mirrored_datagrams": got,
            "mirrored_bytes": sent, "standby_lag": after["logged"] - after["mirrored_datagrams"],
            "standby_cpu_s": cpu, "standby_cores": cpu / elapsed,
            "mirror_bytes_per_datagram": sent / got if got else math.nan,
            "standby_us_per_datagram": cpu / got * 1e6 if got else math.nan}


def _window(pid: int, target: Addr, rate: int | None, duration: float,
            echo_count: Synchronized[int], pair: Pair | None = None) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    # The pair's counters are read over HTTP outside the CPU readings where it can be.
    m0 = pair.counters() if pair is not None else None
    s0, u0 = (proc_cpu(pair.standby_pid), time.perf_counter()) if pair is not None \
        else (math.nan, 0.0)
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
    w = {"offered_pps": rate, "sent": res["sent"], "echoed": e1 - e0, "replies": res["got"],
         "loss": 1 - res["got"] / res["sent"] if res["sent"] else math.nan,
         "round_trips_per_s": res["got"] / duration, "forwarded": forwarded,
         "proxy_cpu_s": cpu, "proxy_cores": cpu / (t1 - t0),
         "datagrams_per_core": forwarded / cpu if cpu > 0 else math.nan,
         "us_per_datagram": cpu / forwarded * 1e6 if forwarded else math.nan}
    if pair is not None and m0 is not None:
        m1 = pair.caught_up()  # the standby's CPU counts until it has applied the window
        s1, u1 = proc_cpu(pair.standby_pid), time.perf_counter()
        w.update(_mirror(m0, m1, s1 - s0, u1 - u0))
    return w


def measure(plan: ProxyPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """The three proxies side by side, in a namespace of their own; see the module
    docstring."""
    why = nginx_available()
    if why:
        raise BenchError(why)
    version = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10,
                             check=False).stderr.strip()
    work = Path(tempfile.mkdtemp(prefix="nfvha-proxies-"))
    try:
        with namespace(f"{NETNS_PREFIX}{os.getpid()}") as ns, inside(ns):
            result = _measure(plan, log, ns, work)
        result["nginx_version"] = version
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(plan: ProxyPlan, log: Callable[[str], None], ns: str,
             work: Path) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    count = ctx.Value("q", 0, lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    port = _free_port(ECHO_IP)
    echo_addr = (ECHO_IP, port)
    echo = ctx.Process(target=_echo, args=(echo_addr, count, ready, stop), daemon=True)
    echo.start()
    try:
        if not ready.wait(10):
            raise BenchError("the echo server did not start")
        for d in ("nginx", "nfvha", "pair"):
            (work / d).mkdir()
        addrs = {"direct": echo_addr, "nfvha": (LONE_IP, port), "nfvha-pair": (PAIR_IP, port),
                 "nginx": (NGINX_IP, port)}
        with nfvha_forwarder(work / "nfvha", ns, addrs["nfvha"], echo_addr) as (fwd_pid, http), \
                nfvha_pair(work / "pair", ns, addrs["nfvha-pair"], echo_addr, log) as pair, \
                nginx(work / "nginx", ns, addrs["nginx"], echo_addr) as nginx_pid:
            result: dict[str, Any] = {
                "payload_bytes": PAYLOAD, "in_flight_at_max": IN_FLIGHT, "nice": NICE,
                "nginx_config": (work / "nginx" / "nginx.conf").read_text(),
                "path": {"netns": ns, "interface": IFACE, "addresses": {
                    k: list(v) for k, v in addrs.items()}, "control": CTL_IP},
                "pair": {"active": pair.active, "standby": pair.standby,
                         "ready_s": pair.ready_s,
                         "timings": pair.status(pair.active)["timings"]}}
            rtt = measure_rtt(addrs, plan)
            result["rtt_us"] = rtt
            log(f"proxies RTT: direct p50 {rtt['direct']['p50']:.0f} µs; added p50/p99 "
                + ", ".join(f"{p} {rtt[p]['added_p50']:.0f}/{rtt[p]['added_p99']:.0f} µs"
                            for p in PROXIES))
            pids = {"nfvha": fwd_pid, "nfvha-pair": pair.active_pid, "nginx": nginx_pid}
            windows: list[dict[str, Any]] = []
            for k, load in enumerate(plan.loads):
                order = PROXIES if k % 2 == 0 else PROXIES[::-1]
                for name in order:
                    w = {"proxy": name, **_window(
                        pids[name], addrs[name], load, plan.window, count,
                        pair if name == "nfvha-pair" else None)}
                    windows.append(w)
                    log(f"proxies {name:10s} offered {load or 'max':>6}: "
                        f"{w['round_trips_per_s']:8.0f} round trips/s, loss "
                        f"{w['loss'] * 100:4.1f}%, {w['proxy_cores']:.2f} cores, "
                        f"{w['datagrams_per_core']:8.0f} datagrams/s per core"
                        + (f"; standby {w['standby_cores']:.2f} cores, "
                           f"{w['standby_us_per_datagram']:.1f} µs and "
                           f"{w['mirror_bytes_per_datagram']:.1f} stream bytes per "
                           "mirrored datagram" if "standby_cores" in w else "")
                        + (f"; {w['mirror_error']}" if "mirror_error" in w else ""))
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
            result["pair"]["after"] = {m: pair.status(m) for m in (pair.active, pair.standby)}
            result["pair"]["active_stats"] = pair.http[pair.active].get(
                "/v1/services/bench").json()["stats"]
        return result
    finally:
        stop.set()
        echo.join(5)
        if echo.is_alive():
            os.kill(echo.pid or 0, signal.SIGKILL)
            echo.join(2)


def _per_proxy(res: dict[str, Any], p: str) -> dict[str, Any]:
    rtt = res["rtt_us"][p]
    ws = [w for w in res["throughput"] if w["proxy"] == p
          and not math.isnan(w["datagrams_per_core"])]
    return {"added_p50_us": rtt["added_p50"], "added_p99_us": rtt["added_p99"],
            "rtt_p50_us": rtt["p50"], "rtt_p99_us": rtt["p99"],
            "best_datagrams_per_core": max((w["datagrams_per_core"] for w in ws),
                                           default=math.nan),
            "max_round_trips_per_s": max((w["round_trips_per_s"] for w in ws),
                                         default=math.nan)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Per proxy: added RTT p50/p99, best datagrams/s per core; nfvha over nginx; and, if
    the pair was measured, the pair's active over the lone forwarder and what its standby
    cost (over every window of the pair: CPU per mirrored datagram, stream bytes per
    datagram)."""
    s: dict[str, Any] = {p: _per_proxy(res, p) for p in PROXIES if p in res["rtt_us"]}
    s["direct_p50_us"] = res["rtt_us"]["direct"]["p50"]
    a, b = s["nfvha"], s["nginx"]
    s["added_p50_ratio"] = _ratio(a["added_p50_us"], b["added_p50_us"])
    s["per_core_ratio"] = a["best_datagrams_per_core"] / b["best_datagrams_per_core"]
    s["log_bytes_per_datagram"] = res["nfvha_log"]["bytes_per_datagram"]
    s["log_overhead_per_datagram"] = res["nfvha_log"]["overhead_per_datagram"]
    if "nfvha-pair" in s:
        pr = s["nfvha-pair"]
        ws = [w for w in res["throughput"] if w["proxy"] == "nfvha-pair"
              and "standby_cpu_s" in w]
        got = sum(w["mirrored_datagrams"] for w in ws)
        pr["standby_us_per_mirrored_datagram"] = (
            sum(w["standby_cpu_s"] for w in ws) / got * 1e6 if got else math.nan)
        pr["mirror_bytes_per_datagram"] = (sum(w["mirrored_bytes"] for w in ws) / got
                                           if got else math.nan)
        pr["standby_max_cores"] = max((w["standby_cores"] for w in ws), default=math.nan)
        pr["windows_without_mirror_figures"] = sum(
            1 for w in res["throughput"] if w["proxy"] == "nfvha-pair" and "mirror_error" in w)
        s["pair_per_core_ratio"] = _ratio(pr["best_datagrams_per_core"],
                                          a["best_datagrams_per_core"])
        s["pair_added_p50_extra_us"] = pr["added_p50_us"] - a["added_p50_us"]
        s["pair_added_p99_extra_us"] = pr["added_p99_us"] - a["added_p99_us"]
        lone = {w["offered_pps"]: w for w in res["throughput"] if w["proxy"] == "nfvha"}
        s["pair_per_core_ratio_by_load"] = [
            {"offered_pps": w["offered_pps"],
             "ratio": _ratio(w["datagrams_per_core"],
                             lone[w["offered_pps"]]["datagrams_per_core"])}
            for w in res["throughput"] if w["proxy"] == "nfvha-pair"
            and w["offered_pps"] in lone]
    return s
