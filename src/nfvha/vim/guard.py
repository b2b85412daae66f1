"""The lease guard: a small per-host process that keeps the host's lease and enforces it.

The agent is a large asyncio program that can crash, be OOM-killed or stall; the promise
that a VNF never runs twice cannot rest on it. The guard is separate, small and
stdlib-only (it starts in tens of milliseconds), and it alone speaks the liveness path:

* it sends the manager one UDP heartbeat per interval and pings ``fanout`` peers; each
  answer renews the **host lease** (the manager's grant; an answered peer ping counts,
  so a host cut off from the manager alone is not isolated). Of a manager cluster it
  heartbeats every member: only the leader answers, and which member leads is not the
  guard's to know (a leader change then costs no round trip and no lost interval);
* the agent **feeds** it through the shared lease file (``LeaseFile``): "I am alive
  until T"; the **agent grace** is how long the agent may be silent (a restart, a stall)
  before the VNFs it can no longer manage are stopped;
* when either runs out it **fences**: every process in the host's VNF cgroups is killed
  at once, and it keeps killing whatever appears there until the agent acknowledges
  the fence (a restore the stopped agent had started must not come back to life); its
  heartbeats report the fence, so the manager can move the VNFs without waiting.

No single process death leaves a VNF running past its lease: the guard enforces both
leases while the agent is dead or stopped; the agent enforces the host lease (read from
the same file) while the guard is dead or stopped, and restarts it. Both dead at once is
what a kernel watchdog covers (``--watchdog``: fed while the guard runs and fencing
works, as SBD does); the manager's active fencing (STONITH) covers it regardless.

Run as ``python -m nfvha.vim.guard`` by the agent (or systemd).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from nfvha.errors import ConfigError, SandboxError
from nfvha.ha.liveness import (
    decode,
    enable_timestamps,
    encode,
    host_key,
    liveness_key,
    load_key_file,
    peer_key,
    recv_stamped,
    ring_successors,
)
from nfvha.ha.timings import DEFAULT_TIMINGS, check_host_timings
from nfvha.vim.cgroups import CgroupDriver

__all__ = ["AgentSide", "GuardConfig", "GuardSide", "LeaseFile", "LeaseGuard", "main"]

log = logging.getLogger("nfvha.guard")

_MAX_LEASE_S = 30.0  # a manager granting more is broken
_SWEEP_S = 0.02  # while fenced and unacknowledged: look for (and kill) new VNF processes


# -- the shared lease file ---------------------------------------------------------------


class GuardSide(NamedTuple):
    host_until: float  # CLOCK_MONOTONIC deadline of the host lease; 0: never had contact
    fence_seq: int  # fences so far; the one in force when > the agent's ack_seq
    fenced_at: float  # wall time of the last fence, 0 if none
    pid: int
    lease: float  # length of the lease last granted
    fenced: int  # 1 while fenced (VNFs must not run), 0 otherwise
    need_full: int = 0  # bumped when the manager asks the agent for a full status


class AgentSide(NamedTuple):
    agent_until: float  # CLOCK_MONOTONIC deadline the agent last fed; 0: not yet armed
    ack_seq: int  # the last fence the agent has seen through (its VNFs marked FENCED)
    pid: int


_MAGIC = b"NFVHALS1"
_BOOT = 8  # 16 bytes of the boot id: monotonic deadlines mean nothing after a reboot
_G = 32  # guard region: seq, host_until, fence_seq, fenced_at, pid, lease, fenced, need_full
_G_FMT = struct.Struct("<dQdQdQQ")
_A = 96  # agent region: seq, agent_until, ack_seq, pid
_A_FMT = struct.Struct("<dQQ")
_SIZE = 128
_SEQ = struct.Struct("<Q")


def _boot_id() -> bytes:
    try:
        return bytes.fromhex(Path("/proc/sys/kernel/random/boot_id").read_text()
                             .strip().replace("-", ""))[:16]
    except (OSError, ValueError):
        return b"\0" * 16


class LeaseFile:
    """128 bytes shared by the guard and the agent through ``mmap``.

    Each side writes only its own region, under a sequence lock (odd while writing), so
    a reader never acts on a torn deadline. Monotonic times are comparable between the
    two processes (one clock per boot); a file from an earlier boot is reset.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one initialiser at a time
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self._mm = mmap.mmap(fd, _SIZE)
            boot = _boot_id()
            if self._mm[:8] != _MAGIC or self._mm[_BOOT:_BOOT + 16] != boot:
                self._mm[:_SIZE] = b"\0" * _SIZE
                self._mm[:8] = _MAGIC
                self._mm[_BOOT:_BOOT + 16] = boot
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        self.path = path

    def _write(self, off: int, fmt: struct.Struct, *values: Any) -> None:
        seq = _SEQ.unpack_from(self._mm, off)[0]
        seq += 1 if seq % 2 == 0 else 2  # odd: writing (a writer that died mid-write: skip)
        _SEQ.pack_into(self._mm, off, seq)
        fmt.pack_into(self._mm, off + 8, *values)
        _SEQ.pack_into(self._mm, off, seq + 1)

    def _read(self, off: int, fmt: struct.Struct) -> tuple[Any, ...]:
        values: tuple[Any, ...] = ()
        for _ in range(1000):
            s1 = _SEQ.unpack_from(self._mm, off)[0]
            values = fmt.unpack_from(self._mm, off + 8)
            if s1 % 2 == 0 and _SEQ.unpack_from(self._mm, off)[0] == s1:
                break
        return values

    def guard(self) -> GuardSide:
        return GuardSide(*self._read(_G, _G_FMT))

    def write_guard(self, g: GuardSide) -> None:
        self._write(_G, _G_FMT, *g)

    def agent(self) -> AgentSide:
        return AgentSide(*self._read(_A, _A_FMT))

    def write_agent(self, a: AgentSide) -> None:
        self._write(_A, _A_FMT, *a)

    def close(self) -> None:
        self._mm.close()


# -- the guard -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardConfig:
    host_id: str
    lease_path: Path
    cgroup_parent: str  # every VNF cgroup of this host is below it
    listen: tuple[str, int]
    key: bytes  # this host's own key: its heartbeats and the manager's answers
    #: The key of pings between guards (None: ``key``). An answer from the manager (a
    #: lease) is accepted under ``key`` only, so no peer can grant this host a lease.
    peer_key: bytes | None = None
    #: Every manager's liveness address (of a cluster: every member's); empty: none.
    managers: tuple[tuple[str, int], ...] = ()
    heartbeat_interval: float = DEFAULT_TIMINGS.heartbeat_interval
    #: The shortest lease; 0: never fence on the host lease.
    fencing_timeout: float = DEFAULT_TIMINGS.fencing_timeout
    agent_grace: float = 3.0  # the agent may be silent this long (0: never fence for it)
    fanout: int = 3
    #: Peers are pinged every this many heartbeats: they are the second path and a spare
    #: lease renewal, both content with ten a second.
    ping_every: int = 2
    watchdog: Path | None = None
    watchdog_timeout: int = 0  # seconds; 0: the device's own
    #: The bridge the VNFs' veths join: a fence takes them down as well, since a dead
    #: VNF's sandbox still answers ARP for its address (and the kernel refuses its
    #: traffic) where the VNF now runs elsewhere with the same IP and MAC.
    bridge: str | None = None
    veth_prefix: str = "nv"


class LeaseGuard:
    """One guard; ``run`` loops until SIGTERM. Single-threaded: one socket, ``select``."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.file = LeaseFile(cfg.lease_path)
        self.cgroup = CgroupDriver.detect().cgroup(cfg.cgroup_parent)
        g = self.file.guard()
        # A restarted guard inherits the lease in force: restarting must not disarm it.
        self.host_until = g.host_until
        self.lease = g.lease or cfg.fencing_timeout
        self.fence_seq = g.fence_seq
        self.fenced_at = g.fenced_at
        self.fenced = bool(g.fenced)
        self.need_full = g.need_full
        self._asked_full = 0.0
        self.reason = "inherited from the previous guard" if self.fenced else ""
        self.incarnation = time.time()
        # Sequence numbers start at the incarnation in milliseconds, so this run's never
        # repeat an earlier run's (it sends far fewer than 1000 a second): an answer to
        # the previous guard's heartbeat, arriving late, must not count as an answer to
        # this guard's heartbeat of the same number, sent later (a lease from then).
        self.seq = int(self.incarnation * 1000)
        #: The newest heartbeat a manager answered: older answers renew the lease from
        #: their own send time but no longer set the lease length, the peers or requests.
        self.answered = 0
        self.granted_by: tuple[str, int] | None = None  # where that answer came from
        self.beats = 0
        self.sent: dict[int, float] = {}  # heartbeat/ping seq -> monotonic send time
        self.peers: dict[str, tuple[str, int]] = {}
        self.peers_version = ""
        self.heard: dict[str, float] = {}  # peer -> monotonic time we last heard it
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        enable_timestamps(self.sock)
        self.sock.bind(cfg.listen)
        self.sock.setblocking(False)
        self._stop = False
        self._wd: int | None = None
        self._sweep_failed = False
        self._publish()

    # -- state shared with the agent -----------------------------------------------------

    def _publish(self) -> None:
        self.file.write_guard(GuardSide(self.host_until, self.fence_seq, self.fenced_at,
                                        os.getpid(), self.lease, int(self.fenced),
                                        self.need_full))

    def _renew(self, sent_at: float, lease: float) -> None:
        """Contact that began at ``sent_at`` was answered: the lease runs from sending."""
        until = sent_at + lease
        if until > self.host_until:
            self.host_until = until
            self._publish()

    # -- fencing -------------------------------------------------------------------------

    def check(self, now: float, a: AgentSide | None = None) -> None:
        a = a or self.file.agent()
        agent_out = self.cfg.agent_grace > 0 and a.agent_until > 0 and now > a.agent_until
        host_out = self.cfg.fencing_timeout > 0 and self.host_until > 0 \
            and now > self.host_until
        if (agent_out or host_out) and not self.fenced:
            if host_out:
                why = (f"host lease ran out: neither the manager nor any peer answered for "
                       f"{(now - self.host_until + self.lease) * 1000:.0f} ms")
            else:
                why = (f"agent silent for {(now - a.agent_until + self.cfg.agent_grace):.1f}"
                       f" s (grace {self.cfg.agent_grace:g} s): dead or stopped")
            self.fence(why)
        if not self.fenced:
            return
        if a.ack_seq < self.fence_seq:
            self._sweep()
        elif not agent_out and not host_out:
            log.info("fence %d lifted: the agent acknowledged it and the lease is held",
                     self.fence_seq)
            self.fenced = False
            self.reason = ""
            self._publish()

    def fence(self, reason: str) -> None:
        self.fenced = True
        self.fence_seq += 1
        self.fenced_at = time.time()
        self.reason = reason
        self._publish()
        log.warning("fencing host %s (fence %d): %s", self.cfg.host_id, self.fence_seq, reason)
        self._sweep()
        self._cut_links()

    def _cut_links(self) -> None:
        if self.cfg.bridge is None:
            return
        try:
            out = subprocess.run(["ip", "-o", "link", "show", "master", self.cfg.bridge],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                name = line.split(":", 2)[1].strip().split("@")[0]
                if name.startswith(self.cfg.veth_prefix) and ",UP" in line + ",":
                    subprocess.run(["ip", "link", "set", name, "down"], timeout=5,
                                   capture_output=True)
        except (OSError, subprocess.SubprocessError, IndexError) as exc:
            log.error("fence could not take the VNF links down: %s", exc)

    def _sweep(self) -> None:
        try:
            if self.cgroup.exists() and self.cgroup.pids():
                self.cgroup.kill_all()
            self._sweep_failed = False
        except SandboxError as exc:
            # Processes that survive SIGKILL (state D): the watchdog, if armed, is no
            # longer fed, and resets the host (SBD's rule).
            self._sweep_failed = True
            log.error("fence could not kill every VNF process: %s", exc)

    # -- the liveness path ---------------------------------------------------------------

    def _send(self, msg: dict[str, Any], addr: tuple[str, int], *, peer: bool = False) -> None:
        key = self.cfg.peer_key if peer and self.cfg.peer_key is not None else self.cfg.key
        with contextlib.suppress(OSError):  # unreachable now: the lease tells the rest
            self.sock.sendto(encode(key, msg), addr)

    def _send_all(self, msg: dict[str, Any], addrs: tuple[tuple[str, int], ...]) -> None:
        data = encode(self.cfg.key, msg)
        for addr in addrs:
            with contextlib.suppress(OSError):  # one unreachable manager stops no other
                self.sock.sendto(data, addr)

    def _next_seq(self, now: float) -> int:
        self.seq += 1
        self.sent[self.seq] = now
        if len(self.sent) > 256:
            for s in sorted(self.sent)[:128]:
                del self.sent[s]
        return self.seq

    def beat(self, now: float, a: AgentSide | None = None) -> None:
        """One heartbeat to every manager and one ping to each of ``fanout`` peers.

        One heartbeat, one sequence number, sent to each manager: whichever answers (the
        leader), the answer names the send time the lease runs from."""
        a = a or self.file.agent()
        if self.cfg.managers:
            self._send_all({
                "k": "hb", "h": self.cfg.host_id, "i": self.incarnation,
                "s": self._next_seq(now), "t": time.time(), "l": self.lease,
                "a": None if a.agent_until <= 0 else round(a.agent_until - now, 3),
                "g": self.cfg.agent_grace, "ap": a.pid,
                "f": self.fence_seq if self.fenced else 0, "fr": self.reason,
                "fa": self.fenced_at, "pv": self.peers_version,
                "w": self.cfg.watchdog_timeout if self._wd is not None else 0,
                "p": {p: round((now - t) * 1000) for p, t in self.heard.items()
                      if now - t < 10.0},
            }, self.cfg.managers)
        self.beats += 1
        if self.beats % self.cfg.ping_every:
            return
        for peer in ring_successors(self.cfg.host_id, list(self.peers), self.cfg.fanout):
            if peer != self.cfg.host_id:
                self._send({"k": "ping", "h": self.cfg.host_id, "s": self._next_seq(now)},
                           self.peers[peer], peer=True)

    def receive(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        msg = decode(self.cfg.key, data)
        from_manager = msg is not None
        if msg is None and self.cfg.peer_key is not None:
            msg = decode(self.cfg.peer_key, data)
        if msg is None:
            return
        kind = msg.get("k")
        if kind == "hb-ack" and not from_manager:
            return  # a lease only the manager grants, under this host's own key
        seq = msg.get("s")
        sent_at = self.sent.get(seq) if isinstance(seq, int) else None
        if kind == "hb-ack":
            self._granted(msg, sent_at, addr, now)
        elif kind == "ping" and isinstance(msg.get("h"), str):
            self.heard[msg["h"]] = now
            self._send({"k": "pong", "h": self.cfg.host_id, "s": msg.get("s")}, addr,
                       peer=True)
        elif kind == "pong" and isinstance(msg.get("h"), str):
            self.heard[msg["h"]] = now
            if sent_at is not None:
                self._renew(sent_at, self.lease)

    def _granted(self, msg: dict[str, Any], sent_at: float | None, addr: tuple[str, int],
                 now: float) -> None:
        """A manager's answer (authentic: under this host's key) to the heartbeat sent at
        ``sent_at`` (None: not one this guard sent, or long forgotten: ignored).

        It may come from any member (only the leader answers) and from any source address
        (a multi-homed manager, NAT): the key is the proof. The lease runs from the
        answered heartbeat's send time. With several managers, answers also come out of
        order (a deposed leader's late one after the new leader's): an answer to a
        heartbeat older than the newest answered one is ignored. It could only renew
        less (it was sent earlier), unless it granted a longer lease than the newest
        grant: a stale lease, which, taken up as the lease in force, every peer's answer
        would renew too, past what the current leader counts on. Two answers to one
        heartbeat (two members that both believe they lead, for an instant) both count:
        the guard holds, and reports, the longer."""
        seq = msg.get("s")
        length = msg.get("l")
        if sent_at is None or not isinstance(seq, int) or isinstance(length, bool) \
                or not isinstance(length, int | float):
            return
        lease = min(max(float(length), self.cfg.fencing_timeout), _MAX_LEASE_S)
        if seq < self.answered:
            return
        if seq == self.answered:  # a second manager answered the same heartbeat
            self.lease = max(self.lease, lease)
        else:
            self.answered, self.lease = seq, lease
            if addr != self.granted_by:
                before = self.granted_by
                log.info("lease granted by %s:%d (before: %s)", addr[0], addr[1],
                         f"{before[0]}:{before[1]}" if before else "none")
                self.granted_by = addr
        self._renew(sent_at, lease)
        if msg.get("nf") and now - self._asked_full > 0.5:
            # The manager needs the agent's full status: passed on through the file
            # (at most twice a second: answers to earlier heartbeats ask again).
            self._asked_full = now
            self.need_full += 1
            self._publish()
        if isinstance(msg.get("peers"), list):
            self.peers = {str(p[0]): (str(p[1]), int(p[2])) for p in msg["peers"]
                          if isinstance(p, list) and len(p) == 3}
            self.peers_version = str(msg.get("pv", ""))

    # -- the loop ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Everything that arrived since the last wake, each at its kernel arrival time
        (SO_TIMESTAMPNS): read late, a peer still counts heard when it was, neither later
        (which would keep a dead host UP longer) nor earlier (which would let the manager
        count a live host's lease out too soon)."""
        for _ in range(1024):
            got = recv_stamped(self.sock)
            if got is None:
                return
            self.receive(*got)

    def _open_watchdog(self) -> None:
        if self.cfg.watchdog is None:
            return
        self._wd = os.open(self.cfg.watchdog, os.O_WRONLY)
        if self.cfg.watchdog_timeout:
            import array

            wdioc_settimeout = 0xC0045706
            with contextlib.suppress(OSError):  # a plain file in tests, or a fixed timeout
                fcntl.ioctl(self._wd, wdioc_settimeout,
                            array.array("i", [self.cfg.watchdog_timeout]))
        log.info("watchdog %s armed", self.cfg.watchdog)

    def _feed_watchdog(self) -> None:
        if self._wd is not None and not self._sweep_failed:
            os.write(self._wd, b"\0")

    def stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> None:
        self._open_watchdog()
        interval = self.cfg.heartbeat_interval
        next_beat = time.monotonic()
        while not self._stop:
            # Wake-ups are what idling costs (a VM exit each): the socket is not waited
            # on. Answers and pings are drained at each beat and at each deadline, before
            # anything is decided; renewals count from the send time, so reading them late
            # shortens no lease, and peers count heard at their kernel arrival time.
            self._drain()
            now = time.monotonic()
            a = self.file.agent()
            if now >= next_beat:
                if now - next_beat > interval:
                    # Starved or descheduled: the manager sees this as a silence (strain).
                    log.warning("heartbeat %.0f ms late", (now - next_beat) * 1000)
                self.beat(now, a)
                next_beat = max(next_beat + interval, now)
            self.check(now, a)
            self._feed_watchdog()
            wake = next_beat
            if self.fenced and a.ack_seq < self.fence_seq:
                wake = min(wake, now + _SWEEP_S)
            for deadline in (self.host_until, a.agent_until):
                if deadline > now:
                    wake = min(wake, deadline + 0.001)
            with contextlib.suppress(InterruptedError):
                time.sleep(max(0.0, wake - time.monotonic()))
        if self._wd is not None:
            os.write(self._wd, b"V")  # magic close: a clean stop disarms the watchdog
            os.close(self._wd)
        self.sock.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nfvha-guard", description=__doc__.splitlines()[0])
    ap.add_argument("--host-id", required=True)
    ap.add_argument("--lease-file", required=True, type=Path)
    ap.add_argument("--cgroup-parent", required=True)
    ap.add_argument("--listen", required=True, help="UDP ADDRESS:PORT for peers' pings")
    ap.add_argument("--manager", default=None, metavar="ADDRESS:PORT[,ADDRESS:PORT...]",
                    help="the manager's UDP liveness address; of a cluster: every member's")
    keys = ap.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path,
                      help="this host's liveness keys (`nfvha pki issue --role agent`)")
    keys.add_argument("--token-file", type=Path,
                      help="the cluster token, when the cluster has no liveness secret: "
                           "every holder can derive every host's key")
    ap.add_argument("--heartbeat-interval", type=float,
                    default=DEFAULT_TIMINGS.heartbeat_interval)
    ap.add_argument("--fencing-timeout", type=float, default=DEFAULT_TIMINGS.fencing_timeout)
    ap.add_argument("--agent-grace", type=float, default=3.0)
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--bridge", default=None, help="the VNFs' bridge: a fence takes their "
                    "veths down too")
    ap.add_argument("--watchdog", type=Path, default=None,
                    help="kernel watchdog device (e.g. /dev/watchdog with softdog)")
    ap.add_argument("--watchdog-timeout", type=int, default=0)
    ap.add_argument("--nice", type=int, default=-15)
    args = ap.parse_args(argv)
    try:
        check_host_timings(args.heartbeat_interval, args.fencing_timeout)
    except ConfigError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s guard[%(process)d] %(levelname)s %(message)s")
    # Exclusive: two guards of one host would fight over the lease file and the port.
    args.lease_file.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(str(args.lease_file) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another guard holds %s.lock; exiting", args.lease_file)
        return 3
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    with contextlib.suppress(OSError):  # never swapped out: a stall here is a late fence
        import ctypes

        ctypes.CDLL(None, use_errno=True).mlockall(1 | 2)  # MCL_CURRENT | MCL_FUTURE
    if args.key_file is not None:
        try:
            key, pkey = load_key_file(args.key_file, args.host_id)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
    else:
        secret = liveness_key(args.token_file.read_text().strip())
        key, pkey = host_key(secret, args.host_id), peer_key(secret)
    guard = LeaseGuard(GuardConfig(
        host_id=args.host_id, lease_path=args.lease_file, cgroup_parent=args.cgroup_parent,
        listen=_addr(args.listen), key=key, peer_key=pkey,
        managers=tuple(_addr(m.strip()) for m in (args.manager or "").split(",")
                       if m.strip()),
        heartbeat_interval=args.heartbeat_interval, fencing_timeout=args.fencing_timeout,
        agent_grace=args.agent_grace, fanout=args.fanout, watchdog=args.watchdog,
        bridge=args.bridge,
        watchdog_timeout=args.watchdog_timeout))
    signal.signal(signal.SIGTERM, guard.stop)
    signal.signal(signal.SIGINT, guard.stop)
    log.info("guard of %s on udp %s, lease file %s", args.host_id, args.listen,
             args.lease_file)
    guard.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
