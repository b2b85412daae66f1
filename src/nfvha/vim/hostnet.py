"""The host network as one narrow async interface: netns, bridges, veths, addresses.

Everything goes through iproute2's ``ip`` with argument lists, so the agent needs no
netlink bindings and every action can be replayed by hand from an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import time
from pathlib import Path
from typing import Any

from nfvha.errors import HostNetworkError

__all__ = ["NETNS_RUN_DIR", "HostNetwork"]

#: Where ``ip netns add`` bind-mounts named namespaces (iproute2's default).
NETNS_RUN_DIR = Path("/run/netns")

_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")
_IFNAMSIZ = 16  # kernel limit including the trailing NUL, so 15 usable characters

# Substrings of ip's stderr that mean "the thing is not there", for idempotent deletes
# and existence checks. iproute2 has no error codes on its CLI, only messages.
_ABSENT_LINK = ("Cannot find device", "does not exist")
_ABSENT_NETNS = ("Cannot open network namespace", "No such file or directory")


def _check_netns(name: str) -> str:
    if not _NETNS_RE.fullmatch(name) or name in (".", "..") or name.startswith("-"):
        raise HostNetworkError(
            f"invalid network namespace name {name!r}: use 1-64 characters of "
            "[A-Za-z0-9_.-], not starting with '-' and not '.' or '..'"
        )
    return name


def _check_ifname(name: str) -> str:
    bad = (
        not name
        or len(name) >= _IFNAMSIZ
        or name in (".", "..")
        or name.startswith("-")
        or any(c == "/" or c == ":" or c.isspace() for c in name)
    )
    if bad:
        raise HostNetworkError(
            f"invalid interface name {name!r}: use 1-15 characters without '/', ':' or "
            "whitespace, not starting with '-'"
        )
    return name


def _check_mac(mac: str) -> str:
    if not _MAC_RE.fullmatch(mac):
        raise HostNetworkError(f"invalid MAC address {mac!r}: expected xx:xx:xx:xx:xx:xx in hex")
    first = int(mac[:2], 16)
    if first & 0x01:
        raise HostNetworkError(
            f"invalid MAC address {mac!r}: it is a multicast address (low bit of the first "
            "octet set); use a unicast one, e.g. with first octet 02 (locally administered)"
        )
    if int(mac.replace(":", ""), 16) == 0:
        raise HostNetworkError(f"invalid MAC address {mac!r}: the all-zero address is not usable")
    return mac.lower()


def _check_cidr(cidr: str) -> str:
    if "/" not in cidr:
        raise HostNetworkError(
            f"invalid address {cidr!r}: give it in CIDR form with a prefix length, "
            "e.g. 10.0.0.2/24"
        )
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise HostNetworkError(f"invalid address {cidr!r}: {exc}") from exc
    return iface.with_prefixlen


def _check_ip(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError as exc:
        raise HostNetworkError(f"invalid gateway address {addr!r}: {exc}") from exc


def _check_mtu(mtu: int) -> int:
    if not 68 <= mtu <= 65535:
        raise HostNetworkError(f"invalid MTU {mtu!r}: use a value between 68 and 65535")
    return mtu


def _mentions(stderr: str, needles: tuple[str, ...]) -> bool:
    return any(n in stderr for n in needles)


class HostNetwork:
    """Creates and removes the host-side plumbing of VNF sandboxes.

    Each method is one or a few ``ip`` invocations; ``netns=None`` means the namespace
    the agent runs in. Deletes are idempotent so that a crashed agent can clean up by
    simply deleting everything it may have made.
    """

    def __init__(self, ip_cmd: str = "ip", *, timeout: float = 10.0) -> None:
        self._ip = ip_cmd
        self._timeout = timeout

    # -- plumbing ---------------------------------------------------------------

    async def _run(self, args: list[str], *, netns: str | None = None) -> tuple[int, str, str]:
        """Run ``ip [-n netns] args``; return (returncode, stdout, stderr)."""
        argv = [self._ip]
        if netns is not None:
            argv += ["-n", netns]
        argv += args
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise HostNetworkError(
                f"cannot run {self._ip!r}: not found; install iproute2 or pass ip_cmd"
            ) from exc
        except PermissionError as exc:
            raise HostNetworkError(f"cannot run {self._ip!r}: permission denied") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except BaseException as exc:
            # Timeout or cancellation: do not leave a stray ip process behind.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise HostNetworkError(
                    f"`{self._cmdline(args, netns)}` did not finish within {self._timeout:g}s; "
                    "check for a hung netlink operation (dmesg) or raise the timeout"
                ) from exc
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()

    async def _must(self, args: list[str], *, netns: str | None = None, what: str) -> str:
        """Run ip and raise HostNetworkError naming the command when it fails."""
        rc, out, err = await self._run(args, netns=netns)
        if rc != 0:
            raise HostNetworkError(
                f"{what}: `{self._cmdline(args, netns)}` failed (exit {rc}): {err or 'no output'}"
                f"{self._hint(err)}"
            )
        return out

    def _cmdline(self, args: list[str], netns: str | None) -> str:
        return " ".join([self._ip, *(["-n", netns] if netns is not None else []), *args])

    @staticmethod
    def _hint(stderr: str) -> str:
        if "Operation not permitted" in stderr:
            return "; run the agent as root or with CAP_NET_ADMIN and CAP_SYS_ADMIN"
        if "File exists" in stderr:
            return "; the object already exists: delete it first or pick another name"
        if _mentions(stderr, _ABSENT_NETNS):
            return "; the network namespace does not exist: create it first"
        if _mentions(stderr, _ABSENT_LINK):
            return "; the device does not exist in that namespace"
        if "Unknown device type" in stderr:
            return "; the kernel lacks the module (modprobe veth / bridge)"
        return ""

    async def _json(self, args: list[str], *, netns: str | None, what: str) -> list[Any]:
        out = await self._must(["-j", *args], netns=netns, what=what)
        if not out.strip():
            return []  # `ip -j netns list` prints nothing at all when there are none
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise HostNetworkError(
                f"{what}: could not parse JSON from `{self._cmdline(['-j', *args], netns)}`: "
                f"{exc}; is iproute2 older than 4.14?"
            ) from exc
        if not isinstance(data, list):
            raise HostNetworkError(f"{what}: expected a JSON list from ip, got {type(data)}")
        return data

    # -- network namespaces ----------------------------------------------------

    def netns_path(self, name: str) -> Path:
        """The bind mount that keeps the namespace alive; CRIU and setns() take it."""
        return NETNS_RUN_DIR / _check_netns(name)

    async def create_netns(self, name: str) -> None:
        """Create a named netns with ``lo`` up; an existing one is an error, not reused."""
        _check_netns(name)
        if await self.netns_exists(name):
            raise HostNetworkError(
                f"network namespace {name!r} already exists; delete it "
                f"(`{self._ip} netns del {name}`) or use another name"
            )
        await self._must(["netns", "add", name], what=f"create netns {name!r}")
        try:
            await self._must(
                ["link", "set", "dev", "lo", "up"], netns=name, what=f"bring up lo in {name!r}"
            )
        except BaseException:
            await self.delete_netns(name)
            raise

    async def delete_netns(self, name: str) -> None:
        """Remove the named netns; absent is fine. Links inside die with it."""
        _check_netns(name)
        rc, _, err = await self._run(["netns", "del", name])
        if rc != 0 and not _mentions(err, _ABSENT_NETNS):
            raise HostNetworkError(
                f"delete netns {name!r}: `{self._cmdline(['netns', 'del', name], None)}` "
                f"failed (exit {rc}): {err}{self._hint(err)}"
            )

    async def netns_exists(self, name: str) -> bool:
        _check_netns(name)
        return name in await self.list_netns()

    async def list_netns(self, prefix: str = "") -> list[str]:
        """Named namespaces whose name starts with ``prefix``, sorted."""
        entries = await self._json(["netns", "list"], netns=None, what="list netns")
        names = [str(e["name"]) for e in entries if isinstance(e, dict) and "name" in e]
        return sorted(n for n in names if n.startswith(prefix))

    # -- links -------------------------------------------------------------------

    async def create_bridge(
        self, name: str, *, netns: str | None = None, address: str | None = None,
        mac: str | None = None,
    ) -> None:
        """Create a bridge, optionally give it an address (CIDR), and bring it up.

        The bridge gets a MAC of its own (``mac``, else one derived from its name and
        netns): a Linux bridge without one takes its lowest port's MAC and changes it when
        that port goes, e.g. when a host dies or a VNF moves, which flushes everyone's
        ARP entries for the bridge's address at the worst moment.
        """
        _check_ifname(name)
        if netns is not None:
            _check_netns(netns)
        cidr = _check_cidr(address) if address is not None else None
        if mac is None:
            digest = hashlib.sha1(f"{netns or ''}/{name}".encode()).digest()
            mac = "02:" + ":".join(f"{b:02x}" for b in digest[:5])
        mac = _check_mac(mac)
        await self._must(
            ["link", "add", "name", name, "address", mac, "type", "bridge"],
            netns=netns,
            what=f"create bridge {name!r}",
        )
        try:
            if cidr is not None:
                await self.add_address(name, cidr, netns=netns)
            await self.set_link_up(name, netns=netns)
        except BaseException:
            await self.delete_link(name, netns=netns)
            raise

    async def create_veth(
        self,
        name: str,
        peer: str,
        *,
        netns: str | None = None,
        peer_netns: str | None = None,
        peer_name_after_move: str | None = None,
        peer_mac: str | None = None,
        peer_address: str | None = None,
        master: str | None = None,
        mtu: int | None = None,
        peer_gateway: str | None = None,
        host_up: bool = True,
    ) -> None:
        """Create a veth pair and wire its peer end into a sandbox.

        With ``host_up`` False the host end stays down (a standby, or a sandbox about to
        be restored into): the peer, up with the VNF's address and MAC, must not send a
        single frame onto the bridge, or the network learns the VNF's MAC on this port
        while the VNF runs elsewhere.

        The peer is created directly inside ``peer_netns`` under its final name
        (``peer_name_after_move`` if given, else ``peer``) with its MAC and MTU, in one
        netlink request: no temporary name ever exists in ``netns``, so many sandboxes
        can each get an ``eth0`` without racing. If any later step fails, the pair is
        deleted (deleting one end removes both) before the error is raised.
        """
        _check_ifname(name)
        _check_ifname(peer)
        final_peer = _check_ifname(peer_name_after_move) if peer_name_after_move else peer
        if netns is not None:
            _check_netns(netns)
        if peer_netns is not None:
            _check_netns(peer_netns)
        mac = _check_mac(peer_mac) if peer_mac is not None else None
        cidr = _check_cidr(peer_address) if peer_address is not None else None
        gateway = _check_ip(peer_gateway) if peer_gateway is not None else None
        if master is not None:
            _check_ifname(master)
        if mtu is not None:
            _check_mtu(mtu)
        # The peer end lives in peer_netns if given, else next to `name`.
        where_peer = peer_netns if peer_netns is not None else netns

        args = ["link", "add", "name", name]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        args += ["type", "veth", "peer", "name", final_peer]
        if mac is not None:
            args += ["address", mac]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        if peer_netns is not None and peer_netns != netns:
            args += ["netns", peer_netns]
        await self._must(args, netns=netns, what=f"create veth {name!r}<->{final_peer!r}")
        try:
            if master is not None:
                await self._must(
                    ["link", "set", "dev", name, "master", master],
                    netns=netns,
                    what=f"attach {name!r} to bridge {master!r}",
                )
            if cidr is not None:
                await self.add_address(final_peer, cidr, netns=where_peer)
            await self.set_link_up(final_peer, netns=where_peer)
            if host_up:
                await self.set_link_up(name, netns=netns)
            if gateway is not None:
                await self._must(
                    ["route", "add", "default", "via", gateway, "dev", final_peer],
                    netns=where_peer,
                    what=f"add default route via {gateway} in {where_peer or 'current netns'}",
                )
        except BaseException:
            await self.delete_link(name, netns=netns)
            raise

    async def delete_link(self, name: str, *, netns: str | None = None) -> None:
        """Delete a link; absent link or absent namespace is fine."""
        _check_ifname(name)
        if netns is not None:
            _check_netns(netns)
        args = ["link", "del", "dev", name]
        rc, _, err = await self._run(args, netns=netns)
        if rc != 0 and not _mentions(err, _ABSENT_LINK + _ABSENT_NETNS):
            raise HostNetworkError(
                f"delete link {name!r}: `{self._cmdline(args, netns)}` failed (exit {rc}): "
                f"{err}{self._hint(err)}"
            )

    async def link_exists(self, name: str, *, netns: str | None = None) -> bool:
        """True if the link is there; a missing namespace means it is not."""
        _check_ifname(name)
        if netns is not None:
            _check_netns(netns)
        args = ["-j", "link", "show", "dev", name]
        rc, _, err = await self._run(args, netns=netns)
        if rc == 0:
            return True
        if _mentions(err, _ABSENT_LINK + _ABSENT_NETNS):
            return False
        raise HostNetworkError(
            f"check link {name!r}: `{self._cmdline(args, netns)}` failed (exit {rc}): "
            f"{err}{self._hint(err)}"
        )

    async def set_link_up(self, name: str, up: bool = True, *, netns: str | None = None) -> None:
        _check_ifname(name)
        if netns is not None:
            _check_netns(netns)
        state = "up" if up else "down"
        await self._must(
            ["link", "set", "dev", name, state], netns=netns, what=f"set {name!r} {state}"
        )

    async def wait_oper_up(self, name: str, *, netns: str | None = None,
                           timeout: float = 1.0) -> bool:
        """Wait until the link is operationally up; False if it is not within ``timeout``.

        ``ip link set up`` returns before the kernel's link watcher has run: until then
        the device's queue discipline is the no-op one, which drops every frame sent
        through it (replayed datagrams, seen lost right after a restore).
        """
        _check_ifname(name)
        deadline = time.monotonic() + timeout
        while True:
            links = await self._json(["link", "show", "dev", name], netns=netns,
                                     what=f"read the state of {name!r}")
            if links and links[0].get("operstate") == "UP":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.001)

    async def add_address(self, dev: str, cidr: str, *, netns: str | None = None) -> None:
        """Add an address in CIDR form; an address already present is an error."""
        _check_ifname(dev)
        if netns is not None:
            _check_netns(netns)
        value = _check_cidr(cidr)
        await self._must(
            ["addr", "add", value, "dev", dev], netns=netns, what=f"add {value} to {dev!r}"
        )

    async def addresses(self, *, netns: str | None = None) -> list[tuple[str, str]]:
        """(ifname, "ip/prefix") for every IPv4 address, in ip's order."""
        if netns is not None:
            _check_netns(netns)
        result: list[tuple[str, str]] = []
        for link in await self._json(["addr", "show"], netns=netns, what="list addresses"):
            ifname = str(link.get("ifname", ""))
            for info in link.get("addr_info", []):
                if info.get("family") == "inet":
                    result.append((ifname, f"{info['local']}/{info['prefixlen']}"))
        return result

    async def list_links(self, prefix: str = "", *, netns: str | None = None) -> list[str]:
        """Link names starting with ``prefix``, sorted."""
        if netns is not None:
            _check_netns(netns)
        links = await self._json(["link", "show"], netns=netns, what="list links")
        return sorted(
            str(link["ifname"])
            for link in links
            if "ifname" in link and str(link["ifname"]).startswith(prefix)
        )
