"""ARP answered by the forwarder process itself: who owns a service address on the wire.

In a forwarder pair both ingress hosts keep the service addresses (and the pair's
upstream address) configured, so that the standby can bind its sockets at once when it
takes over; the kernel answers ARP for none of them (``arp_ignore=8``) and announces none
of them in its own requests (``arp_announce=2``: it names the interface's primary
address). What steers traffic to one host is this responder, in the forwarder's own
process: it answers ARP for the addresses only while ``owning()`` says so (the pair's
lease), and announces them with gratuitous ARP when the forwarder takes over.

So an address is owned by a live forwarder holding the lease, and by nothing else: a
killed forwarder answers nothing (its socket is gone with it), a stopped one answers
nothing while stopped and checks its lease before answering again, and a host that lost
power answers nothing. The kernel's own addresses of the interface (its fixed address)
are answered always, as the kernel would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ArpOwner", "garp_frame", "parse_request", "reply_frame"]

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ARP_HEAD = struct.pack("!HHBB", 1, 0x0800, 6, 4)  # Ethernet, IPv4, 6-byte MAC, 4-byte IP
_REQUEST, _REPLY = 1, 2
#: When the takeover's gratuitous ARP is sent again (seconds after the first): a switch
#: or host that missed one (a frame lost on a busy link) still learns the new owner.
GARP_REPEATS = (0.05, 0.2, 1.0)


def _frame(dst: bytes, src: bytes, op: int, sha: bytes, spa: bytes, tha: bytes,
           tpa: bytes) -> bytes:
    return (dst + src + struct.pack("!H", ETH_P_ARP) + _ARP_HEAD + struct.pack("!H", op)
            + sha + spa + tha + tpa)


def garp_frame(mac: bytes, ip: bytes) -> bytes:
    """A gratuitous ARP request for ``ip`` from ``mac``: every host on the segment that
    knows ``ip`` takes the new MAC (Linux does so even within its ``locktime``)."""
    return _frame(_BROADCAST, mac, _REQUEST, mac, ip, b"\x00" * 6, ip)


def reply_frame(mac: bytes, ip: bytes, asker_mac: bytes, asker_ip: bytes) -> bytes:
    return _frame(asker_mac, mac, _REPLY, mac, ip, asker_mac, asker_ip)


def parse_request(frame: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(asker's MAC, asker's IP, the IP asked for) of an ARP request for IPv4 over
    Ethernet; None for anything else."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[14:20] != _ARP_HEAD:
        return None
    if frame[20:22] != b"\x00\x01":
        return None
    return frame[22:28], frame[28:32], frame[38:42]


def _sysctl(interface: str, name: str, value: int) -> None:
    Path(f"/proc/sys/net/ipv4/conf/{interface}/{name}").write_text(f"{value}\n")


class ArpOwner:
    """Answers ARP on ``interface`` for ``fixed`` addresses always and for the floating
    ones (``set_floating``) while ``owning()``; ``announce`` sends the gratuitous ARP of a
    takeover. Needs CAP_NET_RAW and runs in the ingress host's network namespace."""

    def __init__(self, interface: str, owning: Callable[[], bool], *,
                 fixed: Iterable[str] = ()) -> None:
        self.interface = interface
        self.owning = owning
        self.fixed = {socket.inet_aton(a) for a in fixed}
        self.floating: set[bytes] = set()
        self.answered = 0
        self.refused = 0  # requests for a floating address while not owning it
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.mac = b""

    def start(self) -> None:
        """Take ARP from the kernel on the interface and answer it from here on."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            sock.bind((self.interface, ETH_P_ARP))
            sock.setblocking(False)
            self.mac = sock.getsockname()[4]
            _sysctl(self.interface, "arp_ignore", 8)  # the kernel answers nothing here
            _sysctl(self.interface, "arp_announce", 2)  # nor names a floating address
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def set_floating(self, addresses: Iterable[str]) -> None:
        self.floating = {socket.inet_aton(a) for a in addresses}

    def add_floating(self, address: str) -> None:
        self.floating.add(socket.inet_aton(address))

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(64):
            try:
                frame, addr = sock.recvfrom(128)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("ARP socket on %s: %s", self.interface, exc)
                return
            req = parse_request(frame)
            if req is None or addr[2] == socket.PACKET_OUTGOING:  # our own, looped back
                continue
            asker_mac, asker_ip, ip = req
            if asker_ip == ip:  # a gratuitous ARP (the other forwarder's): no answer
                continue
            if ip in self.fixed or (ip in self.floating and self._owning()):
                with contextlib.suppress(OSError):
                    sock.send(reply_frame(self.mac, ip, asker_mac, asker_ip))
                self.answered += 1
            elif ip in self.floating:
                self.refused += 1

    def _owning(self) -> bool:
        try:
            return self.owning()
        except Exception:  # never answer on a doubt
            log.exception("ownership check failed")
            return False

    def announce(self) -> None:
        """Gratuitous ARP for every floating address now, and again at ``GARP_REPEATS``
        while still owning them."""
        self._send_garps()
        task = asyncio.get_running_loop().create_task(self._repeat())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_garps(self) -> None:
        if self._sock is None:
            return
        for ip in sorted(self.floating):
            with contextlib.suppress(OSError):
                self._sock.send(garp_frame(self.mac, ip))

    async def _repeat(self) -> None:
        waited = 0.0
        for at in GARP_REPEATS:
            await asyncio.sleep(at - waited)
            waited = at
            if not self._owning():
                return
            self._send_garps()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
