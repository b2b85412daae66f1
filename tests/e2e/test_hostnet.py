"""HostNetwork against the real kernel: namespaces, a bridge, veths and traffic between them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nfvha.errors import HostNetworkError
from nfvha.vim.hostnet import HostNetwork

pytestmark = pytest.mark.e2e

# Every netns and link this file makes starts with PREFIX, so the finalizer can sweep
# them all and prove nothing leaked. 9 characters leave 6 for interface suffixes.
PREFIX = f"nfvtn{os.getpid() % 10000:04d}"
NS_A, NS_B, NS_SW = f"{PREFIX}a", f"{PREFIX}b", f"{PREFIX}sw"
BRIDGE = f"{PREFIX}br"
MAC_A, MAC_B = "02:fe:00:00:00:0a", "02:fe:00:00:00:0b"
ADDR_A, ADDR_B, GATEWAY = "10.254.1.1", "10.254.1.2", "10.254.1.254"


async def _sweep(net: HostNetwork) -> None:
    # Links in the current netns first: they do not die synchronously with a netns.
    for link in await net.list_links(PREFIX):
        await net.delete_link(link)
    for ns in await net.list_netns(PREFIX):
        await net.delete_netns(ns)


@pytest.fixture
async def net() -> AsyncIterator[HostNetwork]:
    hn = HostNetwork()
    await _sweep(hn)  # leftovers of an earlier, killed run that had the same pid
    try:
        yield hn
    finally:
        await _sweep(hn)
        assert await hn.list_netns(PREFIX) == []
        assert await hn.list_links(PREFIX) == []


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True,
                         timeout=10).stdout
    data: list[dict[str, object]] = json.loads(out or "[]")
    return data


def _tcp_round_trip(server_ns: str, server_addr: str, client_ns: str) -> bytes:
    """Echo one message over TCP from client_ns to server_ns; return what came back."""
    server_code = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(10)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({server_addr!r}, 7777))\n"
        "s.listen(1); print('listening', flush=True)\n"
        "c,_=s.accept(); c.settimeout(10); c.sendall(b'echo:'+c.recv(100)); c.close()\n"
    )
    client_code = (
        "import socket,sys\n"
        f"c=socket.create_connection(({server_addr!r}, 7777), timeout=5)\n"
        "c.sendall(b'hello'); sys.stdout.buffer.write(c.recv(100))\n"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-S", "-c", server_code],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"listening\n"
        client = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, "-S", "-c", client_code],
            capture_output=True, timeout=15,
        )
        assert client.returncode == 0, client.stderr.decode()
        assert server.wait(timeout=10) == 0
        return client.stdout
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=5)


async def _two_vnfs_on_a_bridge(net: HostNetwork) -> None:
    for ns in (NS_A, NS_B, NS_SW):
        await net.create_netns(ns)
    await net.create_bridge(BRIDGE, netns=NS_SW, address=f"{GATEWAY}/24")
    for ns, mac, addr in ((NS_A, MAC_A, ADDR_A), (NS_B, MAC_B, ADDR_B)):
        await net.create_veth(
            f"{PREFIX}{ns[-1]}", f"{PREFIX}{ns[-1]}p", netns=NS_SW, peer_netns=ns,
            peer_name_after_move="eth0", peer_mac=mac, peer_address=f"{addr}/24",
            master=BRIDGE, mtu=1400, peer_gateway=GATEWAY,
        )


async def test_two_namespaces_talk_through_a_bridge(net: HostNetwork) -> None:
    await _two_vnfs_on_a_bridge(net)

    assert await net.list_netns(PREFIX) == sorted([NS_A, NS_B, NS_SW])
    assert await net.list_links(PREFIX, netns=NS_SW) == sorted(
        [f"{PREFIX}a", f"{PREFIX}b", BRIDGE]
    )
    assert ("eth0", f"{ADDR_A}/24") in await net.addresses(netns=NS_A)
    assert ("lo", "127.0.0.1/8") in await net.addresses(netns=NS_A)
    assert (BRIDGE, f"{GATEWAY}/24") in await net.addresses(netns=NS_SW)
    assert await net.link_exists("eth0", netns=NS_B)
    assert not await net.link_exists(f"{PREFIX}bp", netns=NS_B)  # renamed, not copied

    (eth0,) = _ip_json("-n", NS_A, "link", "show", "dev", "eth0")
    assert eth0["address"] == MAC_A
    assert eth0["mtu"] == 1400
    assert eth0["operstate"] == "UP"
    (host_end,) = _ip_json("-n", NS_SW, "link", "show", "dev", f"{PREFIX}a")
    assert host_end["master"] == BRIDGE
    (route,) = _ip_json("-n", NS_A, "route", "show", "default")
    assert route["gateway"] == GATEWAY

    # Real traffic across the bridge, and to the gateway address on the bridge.
    assert _tcp_round_trip(NS_B, ADDR_B, NS_A) == b"echo:hello"
    if shutil.which("ping"):
        for target in (ADDR_B, GATEWAY):
            ping = subprocess.run(
                ["ip", "netns", "exec", NS_A, "ping", "-c1", "-W1", target],
                capture_output=True, timeout=10,
            )
            assert ping.returncode == 0, ping.stdout.decode() + ping.stderr.decode()
    # B learned A's MAC from that exchange: the MAC we set is the one on the wire.
    neigh = _ip_json("-n", NS_B, "neigh", "show", ADDR_A)
    assert neigh and neigh[0]["lladdr"] == MAC_A


async def test_a_standby_end_never_puts_a_frame_on_the_bridge(net: HostNetwork) -> None:
    """A standby's sandbox has the VNF's address and MAC while the VNF runs elsewhere: its
    host end stays down from the start, so the bridge never learns that MAC on its port
    (it used to be up for an instant, long enough for the peer's first frames)."""
    for ns in (NS_A, NS_SW):
        await net.create_netns(ns)
    await net.create_bridge(BRIDGE, netns=NS_SW, address=f"{GATEWAY}/24")
    await net.create_veth(
        f"{PREFIX}a", f"{PREFIX}ap", netns=NS_SW, peer_netns=NS_A,
        peer_name_after_move="eth0", peer_mac=MAC_A, peer_address=f"{ADDR_A}/24",
        master=BRIDGE, peer_gateway=GATEWAY, host_up=False)
    (host_end,) = _ip_json("-n", NS_SW, "link", "show", "dev", f"{PREFIX}a")
    assert "UP" not in host_end["flags"]  # type: ignore[operator]
    # Whatever the peer sends on coming up (IPv6 DAD and router solicitations) is dropped.
    subprocess.run(["ip", "netns", "exec", NS_A, "ping", "-c1", "-W1", GATEWAY],
                   capture_output=True, timeout=10)
    fdb = subprocess.run(["ip", "netns", "exec", NS_SW, "bridge", "fdb", "show", "br", BRIDGE],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert MAC_A not in fdb, fdb
    await net.set_link_up(f"{PREFIX}a", True, netns=NS_SW)  # activate: now it may speak
    (host_end,) = _ip_json("-n", NS_SW, "link", "show", "dev", f"{PREFIX}a")
    assert "UP" in host_end["flags"]  # type: ignore[operator]


async def test_host_end_in_current_netns_and_delete_removes_both_ends(
    net: HostNetwork,
) -> None:
    await net.create_netns(NS_A)
    host = f"{PREFIX}h"
    await net.create_veth(host, f"{PREFIX}hp", peer_netns=NS_A, peer_address=f"{ADDR_A}/24")
    assert await net.list_links(PREFIX) == [host]
    assert await net.link_exists(f"{PREFIX}hp", netns=NS_A)
    assert (f"{PREFIX}hp", f"{ADDR_A}/24") in await net.addresses(netns=NS_A)

    await net.set_link_up(host, False)
    (link,) = _ip_json("link", "show", "dev", host)
    assert "UP" not in link["flags"]  # type: ignore[operator]

    await net.delete_link(host)
    assert not await net.link_exists(host)
    assert not await net.link_exists(f"{PREFIX}hp", netns=NS_A)


async def test_netns_twice_is_an_error_and_deletes_are_idempotent(net: HostNetwork) -> None:
    await net.create_netns(NS_A)
    assert await net.netns_exists(NS_A)
    assert net.netns_path(NS_A).exists()
    with pytest.raises(HostNetworkError, match="already exists"):
        await net.create_netns(NS_A)

    await net.delete_netns(NS_A)
    await net.delete_netns(NS_A)
    assert not await net.netns_exists(NS_A)
    await net.delete_link(f"{PREFIX}nope")
    await net.delete_link(f"{PREFIX}nope", netns=f"{PREFIX}gone")
    assert not await net.link_exists(f"{PREFIX}nope", netns=f"{PREFIX}gone")


async def test_failed_veth_removes_what_it_made(net: HostNetwork) -> None:
    await net.create_netns(NS_A)
    await net.create_netns(NS_SW)
    with pytest.raises(HostNetworkError, match="master") as err:
        await net.create_veth(
            f"{PREFIX}a", f"{PREFIX}ap", netns=NS_SW, peer_netns=NS_A,
            peer_name_after_move="eth0", master=f"{PREFIX}nobr",
        )
    assert f"{PREFIX}nobr" in str(err.value)
    assert await net.list_links(PREFIX, netns=NS_SW) == []
    assert not await net.link_exists("eth0", netns=NS_A)

    await net.create_bridge(BRIDGE, netns=NS_SW)
    with pytest.raises(HostNetworkError, match="File exists"):
        await net.create_bridge(BRIDGE, netns=NS_SW)
    assert await net.link_exists(BRIDGE, netns=NS_SW)  # the failed duplicate left it alone


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda n: n.create_netns("bad/name"), "bad/name"),
        (lambda n: n.create_netns(".."), ".."),
        (lambda n: n.create_netns("x" * 65), "x" * 65),
        (lambda n: n.delete_netns("has space"), "has space"),
        (lambda n: n.create_bridge("a" * 16), "a" * 16),
        (lambda n: n.create_bridge("br/0"), "br/0"),
        (lambda n: n.create_veth("ok0", "ok1", peer_mac="01:00:5e:00:00:01"), "01:00:5e:00:00:01"),
        (lambda n: n.create_veth("ok0", "ok1", peer_mac="02:00:00:00:00"), "02:00:00:00:00"),
        (lambda n: n.create_veth("ok0", "ok1", peer_address="10.254.1.1"), "10.254.1.1"),
        (lambda n: n.create_veth("ok0", "ok1", peer_address="10.254.1.300/24"), "10.254.1.300/24"),
        (lambda n: n.create_veth("ok0", "ok1", peer_gateway="10.254.1.0/24"), "10.254.1.0/24"),
        (lambda n: n.create_veth("ok0", "ok1", peer_name_after_move="eth 0"), "eth 0"),
        (lambda n: n.add_address("ok0", "not-an-ip/24"), "not-an-ip/24"),
    ],
)
async def test_bad_values_are_rejected_before_ip_runs(
    call: Callable[[HostNetwork], Awaitable[object]], bad: str
) -> None:
    # An ip that does not exist: reaching it would give "not found", not the bad value.
    net = HostNetwork(ip_cmd="/nonexistent/ip")
    with pytest.raises(HostNetworkError) as err:
        await call(net)
    assert repr(bad) in str(err.value)
    assert "not found" not in str(err.value)


async def test_missing_ip_binary_says_what_to_install() -> None:
    with pytest.raises(HostNetworkError, match="install iproute2"):
        await HostNetwork(ip_cmd="/nonexistent/ip").list_netns()
