"""The liveness path: small authenticated UDP datagrams between lease guards and the manager.

Liveness is kept off the HTTP control API (BFD's lesson): each host's lease guard sends
one datagram per heartbeat interval to the manager and pings a few peers (SWIM's
fan-out, in ring order so every host is probed by exactly ``fanout`` others), and the
manager answers with the lease it grants. A datagram is ``tag || json``: the tag is the
first 16 bytes of HMAC-SHA256 over the JSON with a key derived from the cluster token
(BFD's keyed authentication), so nobody without the token can keep a host alive, fence
it or poison its peer list. Stdlib only: the guard imports it and must start fast.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import time
from typing import Any

__all__ = [
    "MAX_DATAGRAM",
    "decode",
    "enable_timestamps",
    "encode",
    "liveness_key",
    "recv_stamped",
    "ring_successors",
]

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux, x86 and arm
_CMSG_SPACE = socket.CMSG_SPACE(16)

_TAG = 16
MAX_DATAGRAM = 8192  # a heartbeat with 40 peers' silences is ~1 KiB


def liveness_key(token: str) -> bytes:
    """The datagram key: derived, so the bearer token itself never signs anything else."""
    return hashlib.sha256(b"nfvha-liveness-v1\0" + token.encode()).digest()


def encode(key: bytes, msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return hmac.new(key, body, hashlib.sha256).digest()[:_TAG] + body


def decode(key: bytes, data: bytes) -> dict[str, Any] | None:
    """The message, or None when it is not authentic or not a JSON object (dropped quietly:
    a forged or garbled datagram must cost the receiver nothing but this check)."""
    if len(data) <= _TAG or len(data) > MAX_DATAGRAM:
        return None
    tag, body = data[:_TAG], data[_TAG:]
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:_TAG]):
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def ring_successors(me: str, hosts: list[str], fanout: int) -> list[str]:
    """The ``fanout`` hosts after ``me`` in sorted order, wrapping: each host pings these,
    so each is pinged by exactly ``fanout`` others (random choice leaves some unpinged)."""
    ring = sorted(set(hosts) | {me})
    i = ring.index(me)
    others = ring[i + 1:] + ring[:i]
    return others[:fanout]


def enable_timestamps(sock: socket.socket) -> None:
    """Have the kernel stamp each datagram with its arrival time (SO_TIMESTAMPNS)."""
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)


def recv_stamped(sock: socket.socket) -> tuple[bytes, tuple[str, int], float] | None:
    """One datagram from a non-blocking socket, with its arrival as CLOCK_MONOTONIC time
    (None when there is none). Daemons read these in batches, late on purpose (a wake-up
    per datagram is most of what idling costs); the arrival time keeps a late read from
    counting a host as heard later than it was."""
    try:
        data, anc, _, addr = sock.recvmsg(MAX_DATAGRAM + 1, _CMSG_SPACE)
    except (BlockingIOError, InterruptedError):
        return None
    now_mono, now_real = time.monotonic(), time.time()
    at = now_mono
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            at = min(now_mono, now_mono - (now_real - (sec + nsec / 1e9)))
    return data, addr, at
