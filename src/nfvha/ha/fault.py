"""Fault detection: missed heartbeats per host, health probes per VNF.

``HeartbeatDetector`` is pure bookkeeping on monotonic time (tested without sleeping);
``probe_vnf`` sends one real probe (UDP, TCP, HTTP or a command).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import time
from dataclasses import dataclass

import httpx

from nfvha.descriptor import HealthProbe

__all__ = ["FaultTimings", "HeartbeatDetector", "HostState", "probe_vnf"]


class HostState(enum.StrEnum):
    UP = "UP"
    SUSPECTED = "SUSPECTED"  # heartbeats missed; being confirmed by a second path
    DOWN = "DOWN"  # confirmed lost; its VNFs move once it is known fenced


@dataclass(frozen=True)
class FaultTimings:
    """Detection and fencing times. Defaults aim at host-loss detection <= 300 ms.

    The agent stops its own VNFs after ``fencing_timeout`` without reaching the manager;
    the manager restores them elsewhere only ``fencing_timeout + fencing_margin`` after it
    last heard the host, which covers the heartbeat's one-way delay and the agent's check
    period: at that moment the old copy is known to be stopped.
    """

    heartbeat_interval: float = 0.05
    suspect_after: float = 0.15
    confirm_timeout: float = 0.06
    fencing_timeout: float = 0.25
    fencing_margin: float = 0.1  # > heartbeat latency + agent check period + peer probe

    def fenced_after(self) -> float:
        return self.fencing_timeout + self.fencing_margin


class HeartbeatDetector:
    """Tracks when each host was last heard from and says which ones to suspect."""

    def __init__(self, timings: FaultTimings) -> None:
        self.timings = timings
        self.last_seen: dict[str, float] = {}
        self.state: dict[str, HostState] = {}

    def heard(self, host_id: str, now: float | None = None) -> HostState:
        """Record a heartbeat; returns the state before it (DOWN -> the host rejoined)."""
        before = self.state.get(host_id, HostState.DOWN)
        self.last_seen[host_id] = time.monotonic() if now is None else now
        self.state[host_id] = HostState.UP
        return before

    def grace(self, host_id: str, now: float | None = None) -> None:
        """A manager that just (re)started gives every known host a full timeout."""
        self.last_seen[host_id] = time.monotonic() if now is None else now
        self.state.setdefault(host_id, HostState.UP)

    def to_suspect(self, now: float | None = None) -> list[str]:
        t = time.monotonic() if now is None else now
        out = []
        for h, st in self.state.items():
            if st == HostState.UP and t - self.last_seen.get(h, t) > self.timings.suspect_after:
                self.state[h] = HostState.SUSPECTED
                out.append(h)
        return out

    def silence(self, host_id: str, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        return t - self.last_seen.get(host_id, t)

    def fenced_in(self, host_id: str, now: float | None = None) -> float:
        """Seconds until the host's VNFs are known stopped by its own fencing (<= 0: now)."""
        return self.timings.fenced_after() - self.silence(host_id, now)


async def probe_vnf(probe: HealthProbe, ip: str) -> bool:
    """One health probe of a VNF at ``ip``; True when it answered as expected in time."""
    if probe.type == "none":
        return True
    try:
        return await asyncio.wait_for(_probe(probe, ip), probe.timeout)
    except (TimeoutError, OSError, httpx.HTTPError):
        return False


async def _probe(probe: HealthProbe, ip: str) -> bool:
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
        cmd = [a.replace("{ip}", ip) for a in probe.command]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
    return False
