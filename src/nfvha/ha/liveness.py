"""The liveness path: small authenticated UDP datagrams between lease guards and the manager.

Liveness is kept off the HTTP control API (BFD's lesson): each host's lease guard sends
one datagram per heartbeat interval to the manager and pings a few peers (SWIM's
fan-out, in ring order so every host is probed by exactly ``fanout`` others), and the
manager answers with the lease it grants. A datagram is ``tag || json``: the tag is the
first 16 bytes of HMAC-SHA256 over the JSON (BFD's keyed authentication). Each host has
its own key, derived from the cluster's liveness secret and the host id, and only its
guard and the manager hold it: a heartbeat or lease for host X is authentic only with X's
key, so no other host can keep X alive, report a fence for it or grant it a lease. Guards
ping each other with a shared peer key (it proves cluster membership only; see
docs/security.md). Stdlib only: the guard imports it and must start fast.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_DATAGRAM",
    "HostKeys",
    "decode",
    "decode_host",
    "enable_timestamps",
    "encode",
    "host_key",
    "liveness_key",
    "load_key_file",
    "peer_key",
    "recv_stamped",
    "ring_successors",
    "write_key_file",
]

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux, x86 and arm
_CMSG_SPACE = socket.CMSG_SPACE(16)

_TAG = 16
MAX_DATAGRAM = 8192  # a heartbeat with 40 peers' silences is ~1 KiB


def liveness_key(token: str) -> bytes:
    """A liveness secret derived from a bearer token, for clusters without a CA (no
    ``liveness.secret``): derived, so the token itself never signs anything else."""
    return hashlib.sha256(b"nfvha-liveness-v1\0" + token.encode()).digest()


def host_key(secret: bytes, host_id: str) -> bytes:
    """Host ``host_id``'s heartbeat key: its guard's heartbeats and the manager's answers
    to them are tagged with it."""
    return hmac.new(secret, b"nfvha-liveness-host-v1\0" + host_id.encode(),
                    hashlib.sha256).digest()


def peer_key(secret: bytes) -> bytes:
    """The key guards tag their pings to each other with (one per cluster)."""
    return hmac.new(secret, b"nfvha-liveness-peers-v1\0", hashlib.sha256).digest()


def write_key_file(path: Path, secret: bytes, host_id: str) -> None:
    """What one host's guard needs, and nothing more: its own key and the peer key
    (never the secret, from which every host's key follows). Written 0600."""
    text = json.dumps({"host": host_id, "key": host_key(secret, host_id).hex(),
                       "peers": peer_key(secret).hex()})
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    tmp.replace(path)


def load_key_file(path: Path, host_id: str) -> tuple[bytes, bytes]:
    """(host key, peer key) from a file ``write_key_file`` made for ``host_id``."""
    try:
        data = json.loads(path.read_text())
        keys = bytes.fromhex(data["key"]), bytes.fromhex(data["peers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"liveness key file {path}: {exc}") from None
    if data.get("host") != host_id:
        raise ValueError(f"liveness key file {path} is host {data.get('host')!r}'s, not "
                         f"{host_id!r}'s: issue one for this host (`nfvha pki issue --role "
                         "agent --host ...`)")
    return keys


class HostKeys:
    """The manager's view: every host's key, derived from the secret on first use and
    kept once a datagram verified with it (so forged host ids fill no cache)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._keys: dict[str, bytes] = {}

    def get(self, host_id: str) -> bytes:
        key = self._keys.get(host_id)
        return key if key is not None else host_key(self._secret, host_id)

    def remember(self, host_id: str, key: bytes) -> None:
        if len(self._keys) < 100_000:
            self._keys[host_id] = key


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


def decode_host(keys: HostKeys, data: bytes) -> dict[str, Any] | None:
    """A heartbeat, authentic only with the key of the host it names (``"h"``). The body
    is parsed before the tag is checked (the key depends on it): the same two steps as
    ``decode``, in the other order, so a heartbeat costs what it did with one key."""
    if len(data) <= _TAG or len(data) > MAX_DATAGRAM:
        return None
    tag, body = data[:_TAG], data[_TAG:]
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("h"), str):
        return None
    key = keys.get(msg["h"])
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:_TAG]):
        return None
    keys.remember(msg["h"], key)
    return msg


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
