"""The drain before a replay VNF's checkpoint, on a real network namespace.

The cut must be exact (every datagram the forwarder delivered is read by the VNF before
the freeze), yet traffic that never passes the forwarder, such as a 500 Hz health probe,
must not stop checkpoints from being taken.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from nfvha.errors import CheckpointError
from nfvha.vim.agent import _softnet_backlog, _udp_unread, _wait_udp_drained

# Inside its own netns: a server reading port 5001 at once, a 500 Hz prober of it, and a
# socket on port 5002 that only reads when told (SIGUSR1), with one datagram sent to it.
_VNF = r"""
import os, signal, socket, subprocess, threading, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("127.0.0.1", 5001))
idle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); idle.bind(("127.0.0.1", 5002))
def serve():
    while True:
        srv.recv(64)
def probe():
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        p.sendto(b"PING", ("127.0.0.1", 5001)); time.sleep(0.002)
signal.signal(signal.SIGUSR1, lambda *_: idle.recv(64))
threading.Thread(target=serve, daemon=True).start()
threading.Thread(target=probe, daemon=True).start()
if os.environ.get("UNREAD"):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 5002))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _start(unread: bool) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **({"UNREAD": "1"} if unread else {})}
    p = subprocess.Popen(["unshare", "--net", sys.executable, "-c", _VNF], env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def vnf(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    p = _start(bool(request.param))
    try:
        yield p
    finally:
        p.kill()
        p.wait(5)


@pytest.mark.parametrize("vnf", [False], indirect=True)
def test_steady_probe_traffic_does_not_refuse_the_checkpoint(
        vnf: subprocess.Popen[str]) -> None:
    t0 = time.monotonic()
    for _ in range(10):  # every time, not by luck of a pause between two probes
        asyncio.run(_wait_udp_drained(vnf.pid, timeout=0.5))
    assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("vnf", [True], indirect=True)
def test_an_unread_datagram_refuses_the_checkpoint_then_reading_it_allows_it(
        vnf: subprocess.Popen[str]) -> None:
    assert (_udp_unread(vnf.pid) or 0) > 0
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="unread datagrams"):
        asyncio.run(_wait_udp_drained(vnf.pid, timeout=0.2))
    assert time.monotonic() - t0 < 1.0  # bounded
    vnf.send_signal(10)  # SIGUSR1: the VNF reads it
    deadline = time.monotonic() + 5
    while _udp_unread(vnf.pid) != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    asyncio.run(_wait_udp_drained(vnf.pid, timeout=0.5))


def test_a_gone_process_never_counts_as_drained() -> None:
    p = subprocess.Popen(["true"])
    p.wait(5)
    assert _udp_unread(p.pid) is None
    with pytest.raises(CheckpointError):
        asyncio.run(_wait_udp_drained(p.pid, timeout=0.05))


def test_this_kernel_shows_its_receive_backlog() -> None:
    """The drain relies on it (Linux >= 5.10); a kernel without it must be noticed."""
    assert _softnet_backlog() is not None
