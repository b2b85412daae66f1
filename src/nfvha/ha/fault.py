"""Fault detection: missed heartbeats per host, health probes per VNF.

``HeartbeatDetector`` is pure bookkeeping on monotonic time (tested without sleeping);
``probe_vnf`` sends one real probe (UDP, TCP, HTTP or a command).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import socket
import time
from collections.abc import Callable, Sequence

import httpx

from nfvha.descriptor import HealthProbe
from nfvha.ha.timings import FaultTimings

__all__ = ["FaultTimings", "HeartbeatDetector", "HostState", "probe_vnf"]


class HostState(enum.StrEnum):
    UP = "UP"
    SUSPECTED = "SUSPECTED"  # heartbeats missed; being confirmed by a second path
    DOWN = "DOWN"  # confirmed lost; its VNFs move once it is known fenced


class HeartbeatDetector:
    """Tracks when each host was last heard from and says which ones to suspect.

    **Leases that stretch under strain.** Every heartbeat answer grants the agent a lease:
    it stops its own VNFs (fences) once that long has passed without an answer from the
    manager or a peer, and the manager moves them only after the longest lease it may
    have granted has run out, plus a margin. The lease is normally ``fencing_timeout``.
    A host that comes back from a silence (a CPU-starved agent, a stalled manager loop)
    gets ``lease_factor`` times that silence, up to ``max_lease``, for
    ``strain_window`` seconds, and is suspected only after twice that silence. With fixed
    short timings an overloaded machine fences its own agents, which restores their VNFs
    elsewhere and overloads it further: failover slows down under strain instead. A host
    that really died sends no heartbeat, so nothing stretches its last lease.
    """

    def __init__(self, timings: FaultTimings, *, started: float | None = None) -> None:
        self.timings = timings
        # Owned here: callers read them through the methods below and change a host's
        # state only through its transitions (heard, to_suspect, keep_up, mark_down).
        self._last_seen: dict[str, float] = {}
        self._state: dict[str, HostState] = {}
        self._silences: dict[str, collections.deque[tuple[float, float]]] = {}
        self._stalls: collections.deque[tuple[float, float]] = collections.deque()
        self._grants: dict[str, collections.deque[tuple[float, float]]] = {}
        self._loading: dict[str, int] = {}  # host -> restores the manager has under way
        # An agent may still hold a long lease granted by this manager's previous run,
        # until its first heartbeat to this run says which lease it holds.
        self._born = time.monotonic() if started is None else started
        self._reported: set[str] = set()

    # -- reads ------------------------------------------------------------------------------

    def state_of(self, host_id: str) -> HostState | None:
        """The host's state; None for a host never heard of (or forgotten)."""
        return self._state.get(host_id)

    def is_up(self, host_id: str) -> bool:
        return self._state.get(host_id) == HostState.UP

    def states(self) -> dict[str, HostState]:
        """Every known host's state (a copy: changing it changes nothing here)."""
        return dict(self._state)

    def hosts(self, *states: HostState) -> list[str]:
        """The known hosts, in the order first heard; only those in ``states`` if given."""
        return [h for h, st in self._state.items() if not states or st in states]

    def last_heard(self, host_id: str) -> float | None:
        """Monotonic time the host was last heard (or given a grace), if ever."""
        return self._last_seen.get(host_id)

    def suspect_at(self, host_id: str, now: float | None = None) -> float:
        """Monotonic time at which an UP host becomes suspect unless heard meanwhile."""
        t = time.monotonic() if now is None else now
        return self._last_seen.get(host_id, t) + self.suspect_after(host_id, t)

    # -- transitions ---------------------------------------------------------------------

    def keep_up(self, host_id: str) -> None:
        """A suspected host is alive after all (a second path heard it, or every host went
        silent at once): UP again, with its silence still counted from its last heartbeat."""
        if self._state.get(host_id) == HostState.SUSPECTED:
            self._state[host_id] = HostState.UP

    def mark_down(self, host_id: str) -> None:
        """The host is confirmed lost (or fenced): it stays DOWN until heard again."""
        self._state[host_id] = HostState.DOWN

    def restore_state(self, host_id: str, state: HostState) -> None:
        """Set the state a host was in, as stored by an earlier run of the manager."""
        self._state[host_id] = state

    def heard(self, host_id: str, now: float | None = None) -> HostState:
        """Record a heartbeat; returns the state before it (DOWN -> the host rejoined)."""
        t = time.monotonic() if now is None else now
        before = self._state.get(host_id, HostState.DOWN)
        if before != HostState.DOWN and host_id in self._last_seen:
            # A silence that ended: strain, not a loss (a rejoin after DOWN is neither).
            gap = t - self._last_seen[host_id]
            if gap > 2 * self.timings.heartbeat_interval:
                self._silences.setdefault(host_id, collections.deque()).append((t, gap))
        self._last_seen[host_id] = t
        self._state[host_id] = HostState.UP
        return before

    def forget(self, host_id: str) -> None:
        """A host removed from the cluster: nothing of it is kept (a host of the same
        name that joins later starts afresh)."""
        for d in (self._last_seen, self._state, self._silences, self._grants, self._loading):
            d.pop(host_id, None)
        self._reported.discard(host_id)

    def came_back(self, host_id: str, gap: float, now: float | None = None) -> None:
        """The host's own heartbeat stream (its lease guard) resumed after ``gap`` seconds.

        ``heard`` sees every sign of life, and the agent's status reports (every 0.5 s)
        split a guard's silence into pieces: a 0.45 s stall would count as two short ones,
        and a later, slightly longer stall would be taken for a loss. The strain is the
        guard's silence, measured between its own datagrams."""
        if gap > 2 * self.timings.heartbeat_interval \
                and self._state.get(host_id, HostState.DOWN) != HostState.DOWN:
            t = time.monotonic() if now is None else now
            self._silences.setdefault(host_id, collections.deque()).append((t, gap))

    def stalled(self, duration: float, now: float | None = None) -> None:
        """The manager's own loop stalled this long: every host's heartbeats were late."""
        self._stalls.append((time.monotonic() if now is None else now, duration))

    def loading(self, host_id: str, delta: int) -> None:
        """The manager starts (+1) or ends (-1) heavy work on the host, a restore: it is
        strained meanwhile even before any heartbeat of it came late."""
        n = self._loading.get(host_id, 0) + delta
        if n > 0:
            self._loading[host_id] = n
        else:
            self._loading.pop(host_id, None)

    def strain(self, host_id: str, now: float | None = None) -> float:
        """The longest silence the host (or the manager's loop) came back from lately;
        at least the fencing timeout while restores run on it."""
        t = time.monotonic() if now is None else now
        cutoff = t - self.timings.strain_window
        worst = self.timings.fencing_timeout if self._loading.get(host_id) else 0.0
        for q in (self._silences.get(host_id), self._stalls):
            if q is None:
                continue
            while q and q[0][0] < cutoff:
                q.popleft()
            worst = max([worst, *(gap for _, gap in q)])
        return worst

    def lease(self, host_id: str, now: float | None = None) -> float:
        """The lease to grant with this heartbeat's answer (see the class docstring)."""
        tm = self.timings
        return min(max(tm.fencing_timeout, tm.lease_factor * self.strain(host_id, now)),
                   max(tm.max_lease, tm.fencing_timeout))

    def suspect_after(self, host_id: str, now: float | None = None) -> float:
        """Silence after which the host is suspected: longer while it is strained."""
        tm = self.timings
        return min(max(tm.suspect_after, 2 * self.strain(host_id, now)),
                   max(tm.max_lease, tm.suspect_after))

    def held(self, host_id: str, lease: float, now: float | None = None) -> None:
        """The agent says (in a heartbeat) which lease it holds: whoever granted it."""
        self._reported.add(host_id)
        self.granted(host_id, lease, now)

    def granted(self, host_id: str, lease: float, now: float | None = None) -> None:
        """Remember a lease granted, so that the fencing wait honours the longest one."""
        t = time.monotonic() if now is None else now
        q = self._grants.setdefault(host_id, collections.deque())
        q.append((t, lease))
        cutoff = t - max(self.timings.max_lease, self.timings.fencing_timeout) - 1.0
        while q and q[0][0] < cutoff:
            q.popleft()

    def lease_granted(self, host_id: str, now: float | None = None) -> float:
        """The longest lease the host may still hold. A grant older than the longest
        possible lease has expired, whatever the agent received since."""
        t = time.monotonic() if now is None else now
        longest = max(self.timings.max_lease, self.timings.fencing_timeout)
        cutoff = t - longest - 1.0
        if cutoff < self._born and host_id not in self._reported:
            return longest  # not heard since this manager started: assume the worst
        return max([self.timings.fencing_timeout,
                    *(lease for at, lease in self._grants.get(host_id, ()) if at >= cutoff)])

    def fenced_after(self, host_id: str, now: float | None = None) -> float:
        """Silence after which the host's VNFs are known stopped by its own fencing."""
        return self.lease_granted(host_id, now) + self.timings.fencing_margin

    def grace(self, host_id: str, now: float | None = None) -> None:
        """A manager that just (re)started gives every known host a full timeout."""
        self._last_seen[host_id] = time.monotonic() if now is None else now
        self._state.setdefault(host_id, HostState.UP)

    def to_suspect(self, now: float | None = None) -> list[str]:
        t = time.monotonic() if now is None else now
        out = []
        for h, st in self._state.items():
            if st == HostState.UP and t - self._last_seen.get(h, t) > self.suspect_after(h, t):
                self._state[h] = HostState.SUSPECTED
                out.append(h)
        return out

    def silence(self, host_id: str, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        return t - self._last_seen.get(host_id, t)

    def fenced_in(self, host_id: str, now: float | None = None) -> float:
        """Seconds until the host's VNFs are known stopped by its own fencing (<= 0: now)."""
        return self.fenced_after(host_id, now) - self.silence(host_id, now)


async def probe_vnf(probe: HealthProbe, ip: str, *, exec_prefix: Sequence[str] = (),
                    exec_preexec: Callable[[], None] | None = None) -> bool:
    """One health probe of a VNF at ``ip``; True when it answered as expected in time.

    An ``exec`` probe runs ``exec_prefix + command`` (the agent enters the VNF's
    namespaces with it, and ``exec_preexec`` joins its cgroup): never beside a daemon.
    """
    if probe.type == "none":
        return True
    try:
        return await asyncio.wait_for(_probe(probe, ip, exec_prefix, exec_preexec),
                                      probe.timeout)
    except (TimeoutError, OSError, httpx.HTTPError):
        return False


async def _probe(probe: HealthProbe, ip: str, exec_prefix: Sequence[str],
                 exec_preexec: Callable[[], None] | None) -> bool:
    if probe.type == "udp":
        assert probe.port is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((ip, probe.port))
            await loop.sock_sendall(sock, probe.send.encode())
            data = await loop.sock_recv(sock, 65535)
        finally:
            sock.close()
        return probe.expect is None or probe.expect.encode() in data
    if probe.type == "tcp":
        assert probe.port is not None
        _, writer = await asyncio.open_connection(ip, probe.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    if probe.type == "http":
        async with httpx.AsyncClient(timeout=probe.timeout) as c:
            r = await c.get(f"http://{ip}:{probe.port}{probe.path}")
            return r.status_code < 400 and (probe.expect is None or probe.expect in r.text)
    if probe.type == "exec":
        cmd = [*exec_prefix, *(a.replace("{ip}", ip) for a in probe.command)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=exec_preexec)
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
    return False
