#!/usr/bin/env python3
"""vnf_state: a plain stateful UDP VNF for checkpoint benchmarks (stdlib only).

It knows nothing of nfvha. At start it allocates ``--state-mb`` MiB of state filled with
non-zero pseudo-random bytes, so every page is really present and must be dumped, then
answers on UDP ``--port`` (default 5000), one datagram per request:

    b"PING" -> b"PONG"
    b"SUM"  -> b"SUM <crc32 hex> <state MiB>": crc32 of a fixed sample of pages of the
               state, so a restored copy can be checked against the original cheaply
    b"INFO" -> b"INFO <state MiB> <pid> <requests served>"
    other   -> b"ERR unknown command"

The socket is bound only after the state is filled: a PONG means "ready".
SIGTERM and SIGINT end the process with exit status 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import zlib
from types import FrameType

MIB = 1 << 20
PAGE = 4096
SAMPLED_PAGES = 256


def fill_state(state_mb: int) -> bytearray:
    """``state_mb`` MiB of non-zero pseudo-random bytes; every MiB differs from the others.

    One random MiB is drawn and rotated by a different offset for each MiB (a memcpy per
    MiB, so 256 MiB take well under a second), and a little-endian MiB index is stamped
    at every page start so that no two pages of the state are equal.
    """
    block = os.urandom(MIB)
    # A page of pure zero bytes would be skipped by nothing, but keep the state non-zero
    # anyway: replace zero bytes of the seed block so no page can ever read as empty.
    block = block.replace(b"\x00", b"\x5a")
    state = bytearray(state_mb * MIB)
    for i in range(state_mb):
        shift = (i * 4099) % MIB
        base = i * MIB
        state[base:base + MIB] = block[shift:] + block[:shift]
        stamp = (i + 1).to_bytes(4, "little")
        for off in range(base, base + MIB, PAGE):
            state[off:off + 4] = stamp
    return state


def checksum(state: bytearray) -> int:
    """crc32 over up to SAMPLED_PAGES pages spread evenly over the state (plus its size)."""
    pages = len(state) // PAGE
    crc = zlib.crc32(len(state).to_bytes(8, "little"))
    if pages == 0:
        return crc
    step = max(1, pages // SAMPLED_PAGES)
    view = memoryview(state)
    for p in range(0, pages, step):
        crc = zlib.crc32(view[p * PAGE:(p + 1) * PAGE], crc)
    crc = zlib.crc32(view[(pages - 1) * PAGE:pages * PAGE], crc)
    return crc


def serve(port: int, state: bytearray, state_mb: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    served = 0
    while True:
        data, peer = sock.recvfrom(2048)
        cmd = data.strip().upper()
        served += 1
        if cmd == b"PING":
            reply = b"PONG"
        elif cmd == b"SUM":
            reply = f"SUM {checksum(state):08x} {state_mb}".encode()
        elif cmd == b"INFO":
            reply = f"INFO {state_mb} {os.getpid()} {served}".encode()
        else:
            reply = b"ERR unknown command"
        sock.sendto(reply, peer)


def _stop(signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vnf_state", description=__doc__.splitlines()[0])
    ap.add_argument("--state-mb", type=int, default=16, help="MiB of state to hold")
    ap.add_argument("--port", type=int, default=5000, help="UDP port")
    a = ap.parse_args(argv)
    if a.state_mb < 0:
        ap.error("--state-mb must be >= 0")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    state = fill_state(a.state_mb)
    print(f"vnf_state: {a.state_mb} MiB of state ready, crc {checksum(state):08x}, "
          f"UDP port {a.port}", flush=True)
    serve(a.port, state, a.state_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
