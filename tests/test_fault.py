"""Fault detection: heartbeat bookkeeping on explicit clocks, and real health probes."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from nfvha.descriptor import HealthProbe
from nfvha.ha.fault import FaultTimings, HeartbeatDetector, HostState, probe_vnf

LOCAL = "127.0.0.1"
T = FaultTimings(suspect_after=0.15, fencing_timeout=0.25, fencing_margin=0.1)


@pytest.fixture
def detector() -> HeartbeatDetector:
    # Fake clock from 10.0 on; started long before, so no lease of an earlier run counts.
    return HeartbeatDetector(T, started=-100.0)


# -- heartbeats ------------------------------------------------------------------------


def test_heard_host_is_up(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)

    assert detector.state_of("h1") == HostState.UP
    assert detector.silence("h1", now=10.04) == pytest.approx(0.04)


def test_host_is_suspected_only_after_suspect_after(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)

    assert detector.to_suspect(now=10.0 + T.suspect_after - 0.01) == []
    assert detector.state_of("h1") == HostState.UP
    assert detector.to_suspect(now=10.0 + T.suspect_after + 0.01) == ["h1"]
    assert detector.state_of("h1") == HostState.SUSPECTED


def test_host_is_reported_suspect_only_once(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)

    assert detector.to_suspect(now=11.0) == ["h1"]
    assert detector.to_suspect(now=12.0) == []


def test_only_silent_hosts_are_suspected(detector: HeartbeatDetector) -> None:
    detector.heard("quiet", now=10.0)
    detector.heard("chatty", now=10.0)
    detector.heard("chatty", now=10.2)

    assert detector.to_suspect(now=10.25) == ["quiet"]
    assert detector.state_of("chatty") == HostState.UP


def test_heartbeat_clears_suspicion(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.to_suspect(now=11.0)

    assert detector.heard("h1", now=11.1) == HostState.SUSPECTED
    assert detector.state_of("h1") == HostState.UP
    assert detector.to_suspect(now=11.2) == []


def test_grace_gives_a_full_timeout_after_a_manager_restart(detector: HeartbeatDetector) -> None:
    detector.grace("h1", now=100.0)

    assert detector.state_of("h1") == HostState.UP
    assert detector.to_suspect(now=100.1) == []
    assert detector.to_suspect(now=100.0 + T.suspect_after + 0.01) == ["h1"]


def test_grace_keeps_a_known_state(detector: HeartbeatDetector) -> None:
    detector.mark_down("h1")

    detector.grace("h1", now=100.0)

    assert detector.state_of("h1") == HostState.DOWN
    assert detector.to_suspect(now=200.0) == []  # a down host is not suspected again


def test_fenced_in_counts_down_from_fencing_timeout_plus_margin(
        detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)

    assert detector.fenced_in("h1", now=10.0) == pytest.approx(0.35)
    assert detector.fenced_in("h1", now=10.2) == pytest.approx(0.15)
    assert detector.fenced_in("h1", now=10.35) == pytest.approx(0.0)
    assert detector.fenced_in("h1", now=11.0) < 0


def test_manager_waits_longer_than_the_agent_fences_itself() -> None:
    assert T.fenced_after() > T.fencing_timeout
    assert FaultTimings().fenced_after() > FaultTimings().suspect_after


def test_heard_after_down_reports_a_rejoin(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.mark_down("h1")

    assert detector.heard("h1", now=20.0) == HostState.DOWN
    assert detector.state_of("h1") == HostState.UP
    assert detector.fenced_in("h1", now=20.0) == pytest.approx(T.fenced_after())


# -- leases -----------------------------------------------------------------------------


def _beat(d: HeartbeatDetector, host: str, times: list[float]) -> None:
    for t in times:
        d.heard(host, now=t)


def test_a_calm_host_gets_the_configured_lease(detector: HeartbeatDetector) -> None:
    _beat(detector, "h1", [10.0 + 0.05 * i for i in range(40)])
    assert detector.lease("h1", now=12.0) == T.fencing_timeout
    assert detector.suspect_after("h1", now=12.0) == T.suspect_after


def test_a_host_back_from_a_silence_gets_a_longer_lease_for_a_while(
        detector: HeartbeatDetector) -> None:
    _beat(detector, "h1", [10.0, 10.05, 10.25])  # a 200 ms stall (CPU starvation)
    assert detector.lease("h1", now=10.3) == pytest.approx(0.6)  # 3 x 200 ms
    assert detector.suspect_after("h1", now=10.3) == pytest.approx(0.4)
    # Suspected later: 300 ms of silence is no longer suspicious...
    assert detector.to_suspect(now=10.25 + 0.3) == []
    # ...and the window passes: back to the configured figures.
    later = 10.25 + T.strain_window + 1
    assert detector.lease("h1", now=later) == T.fencing_timeout
    assert detector.suspect_after("h1", now=later) == T.suspect_after


def test_a_host_restoring_for_the_manager_counts_as_strained(
        detector: HeartbeatDetector) -> None:
    _beat(detector, "h2", [10.0, 10.05])
    detector.loading("h2", +1)
    detector.loading("h2", +1)
    assert detector.lease("h2", now=10.1) == pytest.approx(3 * T.fencing_timeout)
    assert detector.suspect_after("h2", now=10.1) == pytest.approx(2 * T.fencing_timeout)
    assert detector.lease("h1", now=10.1) == T.fencing_timeout  # only that host
    detector.loading("h2", -1)
    assert detector.lease("h2", now=10.1) > T.fencing_timeout  # one still running
    detector.loading("h2", -1)
    assert detector.lease("h2", now=10.1) == T.fencing_timeout


def test_the_lease_is_capped(detector: HeartbeatDetector) -> None:
    _beat(detector, "h1", [10.0, 15.0])  # 5 s silent, then back (still UP: not confirmed)
    assert detector.lease("h1", now=15.0) == T.max_lease


def test_a_rejoin_after_down_stretches_nothing(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.mark_down("h1")
    detector.heard("h1", now=20.0)
    assert detector.lease("h1", now=20.0) == T.fencing_timeout


def test_a_manager_loop_stall_stretches_every_host(detector: HeartbeatDetector) -> None:
    _beat(detector, "h1", [10.0, 10.05])
    detector.stalled(0.3, now=10.1)
    assert detector.lease("h1", now=10.2) == pytest.approx(0.9)


def test_the_fencing_wait_honours_the_longest_lease_that_may_be_held(
        detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.granted("h1", 1.2, now=10.0)
    detector.heard("h1", now=10.05)
    detector.granted("h1", 0.25, now=10.05)  # the answer carrying it may have been lost
    assert detector.fenced_in("h1", now=10.05) == pytest.approx(1.2 + T.fencing_margin)
    # Once the long one must have run out, the short one rules again.
    t = 10.0 + T.max_lease + 1.5
    detector.heard("h1", now=t)
    assert detector.fenced_in("h1", now=t) == pytest.approx(T.fenced_after())


def test_a_new_manager_assumes_the_longest_lease_until_the_agent_says() -> None:
    d = HeartbeatDetector(T, started=10.0)
    d.heard("h1", now=10.1)  # an agent that did not say which lease it holds
    assert d.fenced_in("h1", now=10.1) == pytest.approx(T.max_lease + T.fencing_margin)
    d.heard("h1", now=10.0 + T.max_lease + 2)
    assert d.fenced_in("h1", now=10.0 + T.max_lease + 2) == pytest.approx(T.fenced_after())
    d.heard("h2", now=10.1)
    d.held("h2", 0.25, now=10.1)  # its heartbeat: "I hold 250 ms"
    assert d.fenced_in("h2", now=10.1) == pytest.approx(T.fenced_after())
    d.heard("h3", now=10.1)
    d.held("h3", 1.5, now=10.1)  # a long one from the previous manager run
    assert d.fenced_in("h3", now=10.1) == pytest.approx(1.5 + T.fencing_margin)


def test_heard_uses_the_monotonic_clock_by_default(detector: HeartbeatDetector) -> None:
    before = time.monotonic()
    detector.heard("h1")

    assert before <= detector.last_heard("h1") <= time.monotonic()


# -- probes ----------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        if data == b"PING" and self.reply is not None:
            self.transport.sendto(self.reply, addr)


async def _udp_server(reply: bytes | None) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Echo(reply),
                                                       local_addr=(LOCAL, 0))
    return transport, transport.get_extra_info("sockname")[1]


@pytest.fixture
async def pong_port() -> AsyncIterator[int]:
    transport, port = await _udp_server(b"PONG from vnf")
    yield port
    transport.close()


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
    return port


async def test_udp_probe_answered(pong_port: int) -> None:
    probe = HealthProbe(type="udp", port=pong_port, timeout=1.0)

    assert await probe_vnf(probe, LOCAL) is True


async def test_udp_probe_without_expectation_accepts_any_reply(pong_port: int) -> None:
    probe = HealthProbe(type="udp", port=pong_port, expect=None, timeout=1.0)

    assert await probe_vnf(probe, LOCAL) is True


async def test_udp_probe_with_wrong_reply_fails() -> None:
    transport, port = await _udp_server(b"ERR")
    try:
        probe = HealthProbe(type="udp", port=port, timeout=1.0)
        t0 = time.monotonic()
        assert await probe_vnf(probe, LOCAL) is False
        assert time.monotonic() - t0 < 0.5  # refused on the reply, not on the timeout
    finally:
        transport.close()


async def test_udp_probe_to_closed_port_fails_within_timeout() -> None:
    probe = HealthProbe(type="udp", port=_closed_udp_port(), timeout=0.3)

    t0 = time.monotonic()
    assert await probe_vnf(probe, LOCAL) is False
    assert time.monotonic() - t0 < 0.3 + 0.2


async def test_udp_probe_to_silent_vnf_fails_at_timeout() -> None:
    transport, port = await _udp_server(None)
    try:
        probe = HealthProbe(type="udp", port=port, timeout=0.2)
        t0 = time.monotonic()
        assert await probe_vnf(probe, LOCAL) is False
        assert 0.15 < time.monotonic() - t0 < 0.2 + 0.2
    finally:
        transport.close()


async def test_tcp_probe_to_listening_socket() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), LOCAL, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await probe_vnf(HealthProbe(type="tcp", port=port, timeout=1.0), LOCAL) is True
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_probe_to_closed_port_fails() -> None:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused

        assert await probe_vnf(HealthProbe(type="tcp", port=port, timeout=1.0), LOCAL) is False


async def test_none_probe_is_always_healthy() -> None:
    assert await probe_vnf(HealthProbe(type="none"), "192.0.2.1") is True


@pytest.mark.parametrize(("command", "healthy"), [(["true"], True), (["false"], False)])
async def test_exec_probe_uses_exit_status(command: list[str], healthy: bool) -> None:
    probe = HealthProbe(type="exec", command=command, timeout=2.0)

    assert await probe_vnf(probe, LOCAL) is healthy


async def test_exec_probe_gets_the_vnf_address() -> None:
    check = [sys.executable, "-c", "import sys; sys.exit(sys.argv[1] != '10.250.1.10')", "{ip}"]
    probe = HealthProbe(type="exec", command=check, timeout=2.0)

    assert await probe_vnf(probe, "10.250.1.10") is True
    assert await probe_vnf(probe, "10.250.1.11") is False


async def test_exec_probe_that_hangs_fails_at_timeout() -> None:
    probe = HealthProbe(type="exec", command=["sleep", "30"], timeout=0.2)

    t0 = time.monotonic()
    assert await probe_vnf(probe, LOCAL) is False
    assert time.monotonic() - t0 < 1.0


async def test_exec_probe_with_missing_program_fails() -> None:
    probe = HealthProbe(type="exec", command=["/nonexistent/nfvt-probe"], timeout=1.0)

    assert await probe_vnf(probe, LOCAL) is False


def test_keep_up_only_clears_a_suspicion(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.to_suspect(now=11.0)
    detector.keep_up("h1")
    assert detector.state_of("h1") == HostState.UP
    detector.mark_down("h1")
    detector.keep_up("h1")  # a DOWN host comes back only by being heard
    assert detector.state_of("h1") == HostState.DOWN
    detector.keep_up("never-heard")
    assert detector.state_of("never-heard") is None


def test_reads_are_copies(detector: HeartbeatDetector) -> None:
    detector.heard("h1", now=10.0)
    detector.states()["h1"] = HostState.DOWN
    assert detector.is_up("h1") and detector.hosts(HostState.UP) == ["h1"]
    assert detector.last_heard("h1") == 10.0
    assert detector.suspect_at("h1", now=10.0) == pytest.approx(10.0 + T.suspect_after)
