"""The sample VNFs in examples/vnfs, run as real processes on 127.0.0.1."""

import ast
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vnfclient import (
    LineClient,
    NatClient,
    UdpFlow,
    flowmon_flow,
    flowmon_stats,
    nat_table,
    udp_request,
)

VNF_DIR = Path(__file__).resolve().parents[1] / "examples" / "vnfs"
VNF_NAMES = ["flowmon", "udpnat", "tcpcounter"]
HOST = "127.0.0.1"
Address = tuple[str, int]


@dataclass
class UdpVnf:
    process: subprocess.Popen[bytes]
    startup_line: str
    data: Address
    query: Address


@dataclass
class TcpVnf:
    process: subprocess.Popen[bytes]
    startup_line: str
    addr: Address


def _free_ports(kind: socket.SocketKind, count: int) -> list[int]:
    # All probes stay open until all are picked, so the ports are distinct.
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]


def _read_startup_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no startup line from {process.args!r} within {timeout}s")
    line = process.stdout.readline()
    if not line:
        _, stderr = process.communicate(timeout=5)
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}: {stderr!r}")
    return line.decode().rstrip("\n")


@contextmanager
def _running(name: str, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run one VNF; on the way out, check it did not die by itself, then kill it."""
    command = [sys.executable, str(VNF_DIR / f"{name}.py"), "--host", HOST, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped_by_test = False
    try:
        yield process, _read_startup_line(process, timeout=5)
        stopped_by_test = process.returncode is not None
    finally:
        crashed = process.poll() is not None and not stopped_by_test
        process.kill()
        _, stderr = process.communicate(timeout=5)
    assert not crashed, f"{name} died during the test: {stderr.decode(errors='replace')}"


@contextmanager
def _udp_vnf(name: str, *args: str) -> Iterator[UdpVnf]:
    data_port, query_port = _free_ports(socket.SOCK_DGRAM, 2)
    ports = ("--data-port", str(data_port), "--query-port", str(query_port))
    with _running(name, *ports, *args) as (process, line):
        yield UdpVnf(process, line, (HOST, data_port), (HOST, query_port))


@contextmanager
def _tcp_vnf(*args: str) -> Iterator[TcpVnf]:
    (port,) = _free_ports(socket.SOCK_STREAM, 1)
    with _running("tcpcounter", "--port", str(port), *args) as (process, line):
        yield TcpVnf(process, line, (HOST, port))


@pytest.fixture
def flowmon() -> Iterator[UdpVnf]:
    with _udp_vnf("flowmon") as vnf:
        yield vnf


@pytest.fixture
def udpnat() -> Iterator[UdpVnf]:
    with _udp_vnf("udpnat", "--base-port", "30000") as vnf:
        yield vnf


@pytest.fixture
def tcpcounter() -> Iterator[TcpVnf]:
    with _tcp_vnf("--max-line", "1024") as vnf:
        yield vnf


# --- all three ------------------------------------------------------------------------


@pytest.mark.parametrize("name", VNF_NAMES)
def test_vnf_is_a_standalone_stdlib_script(name: str) -> None:
    path = VNF_DIR / f"{name}.py"
    source = path.read_text()
    assert source.startswith("#!/usr/bin/env python3\n")
    assert os.access(path, os.X_OK)
    tree = ast.parse(source)
    assert ast.get_docstring(tree)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            imported.add(node.module.partition(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


@pytest.mark.parametrize("name", VNF_NAMES)
def test_vnf_exits_0_on_sigterm(name: str, request: pytest.FixtureRequest) -> None:
    vnf: UdpVnf | TcpVnf = request.getfixturevalue(name)
    with ExitStack() as stack:
        if isinstance(vnf, TcpVnf):
            # An established connection must not hold the exit up.
            client = stack.enter_context(LineClient(vnf.addr))
            assert client.call("hi") == (1, 1, 1, "hi")
        vnf.process.send_signal(signal.SIGTERM)
        assert vnf.process.wait(timeout=5) == 0


def test_vnf_reports_a_port_it_cannot_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, str(VNF_DIR / "tcpcounter.py"), "--host", HOST]
        result = subprocess.run(
            [*command, "--port", str(port)], capture_output=True, timeout=5, check=False
        )
    assert result.returncode == 1
    assert b"cannot listen" in result.stderr
    assert result.stdout == b""


# --- flowmon ----------------------------------------------------------------------------


def test_flowmon_announces_its_ports_and_answers_ping(flowmon: UdpVnf) -> None:
    assert flowmon.startup_line == (
        f"flowmon listening on {HOST}:{flowmon.data[1]}, queries on {flowmon.query[1]}"
    )
    assert udp_request(flowmon.query, b"PING") == b"PONG"


def test_flowmon_counts_packets_and_bytes_per_flow(flowmon: UdpVnf) -> None:
    with UdpFlow(flowmon.data, None, 1.0) as a, UdpFlow(flowmon.data, None, 1.0) as b:
        a.send(5, size=100)
        b.send(3, size=10)
        # ACK? is counted too, and answers only once everything sent before it was.
        assert a.ack() == 6
        assert b.ack() == 4
        stats = flowmon_stats(flowmon.query)
        assert stats["flows"] == {
            a.key: {"packets": 6, "bytes": 5 * 100 + 4},
            b.key: {"packets": 4, "bytes": 3 * 10 + 4},
        }
    assert stats["flow_count"] == 2
    assert stats["total_packets"] == 10
    assert stats["total_bytes"] == 504 + 34
    assert stats["started_at"] <= time.time()
    assert "truncated" not in stats


def test_flowmon_ack_shows_the_counter_advancing(flowmon: UdpVnf) -> None:
    with UdpFlow(flowmon.data, None, 1.0) as flow:
        assert flow.ack() == 1
        flow.send(10)
        assert flow.ack() == 12
        assert flow.ack() == 13


def test_flowmon_flow_query_returns_one_flow(flowmon: UdpVnf) -> None:
    with UdpFlow(flowmon.data, None, 1.0) as flow:
        flow.send(2, size=7)
        flow.ack()
        answer = flowmon_flow(flowmon.query, flow.key)
    assert answer["flow"] == flow.key
    assert (answer["packets"], answer["bytes"]) == (3, 18)
    assert answer["first_seen"] <= answer["last_seen"] <= time.time()


@pytest.mark.parametrize(
    "key", ["127.0.0.1:1", "nonsense", "1.2.3.4:99999", "1.2.3.4:", ":80", "300.1.1.1:80", ""]
)
def test_flowmon_flow_query_for_unknown_or_bad_key_is_an_error(flowmon: UdpVnf, key: str) -> None:
    assert "error" in flowmon_flow(flowmon.query, key)


@pytest.mark.parametrize("request_", [b"RESET", b"PING extra", b"STATS please", b"FLOWS"])
def test_flowmon_answers_unknown_requests_with_an_error(flowmon: UdpVnf, request_: bytes) -> None:
    assert b'"error"' in udp_request(flowmon.query, request_)


def test_flowmon_survives_malformed_datagrams(flowmon: UdpVnf) -> None:
    garbage = [b"", b"\xff\xfe\x00", b"FLOW \xff\xff:1", b"ACK", b"x" * 65000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for payload in garbage:
            sock.sendto(payload, flowmon.query)
            assert b'"error"' in sock.recv(65535), payload[:20]
            sock.sendto(payload, flowmon.data)
        sock.sendto(b"ACK?", flowmon.data)
        assert sock.recv(65535) == b"ACK %d" % (len(garbage) + 1)
    assert udp_request(flowmon.query, b"ping\n") == b"PONG"
    stats = flowmon_stats(flowmon.query)
    assert stats["total_bytes"] == sum(len(p) for p in garbage) + len(b"ACK?")


def test_flowmon_truncates_stats_over_60000_bytes(flowmon: UdpVnf) -> None:
    # About 40 bytes of JSON per flow. The kernel may hand a closed socket's port to
    # a later one, so count the distinct flows rather than the sockets.
    keys: set[str] = set()
    sent = 0
    while len(keys) < 1600:
        with UdpFlow(flowmon.data, None, 1.0) as flow:
            flow.ack()
            keys.add(flow.key)
            sent += 1
    reply = udp_request(flowmon.query, b"STATS")
    stats = flowmon_stats(flowmon.query)
    assert len(reply) < 60000
    assert stats["truncated"] is True
    assert "flows" not in stats
    assert (stats["flow_count"], stats["total_packets"]) == (len(keys), sent)


# --- udpnat ---------------------------------------------------------------------------


def test_nat_announces_its_ports_and_answers_ping(udpnat: UdpVnf) -> None:
    assert udpnat.startup_line == (
        f"udpnat listening on {HOST}:{udpnat.data[1]}, queries on {udpnat.query[1]}"
    )
    assert udp_request(udpnat.query, b"PING") == b"PONG"


def test_nat_binds_new_clients_to_sequential_ports_and_keeps_them(udpnat: UdpVnf) -> None:
    with (
        NatClient(udpnat.data, None, 1.0) as a,
        NatClient(udpnat.data, None, 1.0) as b,
        NatClient(udpnat.data, None, 1.0) as c,
    ):
        assert a.request(b"hello") == (30000, 1, b"hello")
        assert b.request(b"hello") == (30001, 1, b"hello")
        assert a.request(b"again") == (30000, 2, b"again")
        assert c.request(b"hi") == (30002, 1, b"hi")
        assert b.request(b"x") == (30001, 2, b"x")
        assert a.request(b"y") == (30000, 3, b"y")


@pytest.mark.parametrize("payload", [b"", b"two words ", b"\x00\xff\n binary \r\n"])
def test_nat_echoes_any_payload_unchanged(udpnat: UdpVnf, payload: bytes) -> None:
    with NatClient(udpnat.data, None, 1.0) as client:
        assert client.request(payload) == (30000, 1, payload)


def test_nat_table_lists_bindings_and_next_port(udpnat: UdpVnf) -> None:
    with NatClient(udpnat.data, None, 1.0) as a, NatClient(udpnat.data, None, 1.0) as b:
        a.request(b"1")
        a.request(b"2")
        b.request(b"1")
        table = nat_table(udpnat.query)
    assert {k: (v["external_port"], v["packets"]) for k, v in table["bindings"].items()} == {
        a.key: (30000, 2),
        b.key: (30001, 1),
    }
    assert table["next_port"] == 30002
    assert table["binding_count"] == 2


def test_nat_binding_expires_after_idle_timeout_only() -> None:
    with (
        _udp_vnf("udpnat", "--idle-timeout", "0.3") as nat,
        NatClient(nat.data, None, 1.0) as client,
    ):
        for n in range(1, 5):
            assert client.request(b"busy") == (20000, n, b"busy")
            time.sleep(0.1)
        time.sleep(0.4)
        assert nat_table(nat.query)["bindings"] == {}
        assert client.request(b"back") == (20001, 1, b"back")


def test_nat_survives_malformed_queries(udpnat: UdpVnf) -> None:
    for payload in [b"", b"\xff\xfe", b"TABLE TABLE", b"x" * 65000]:
        assert b'"error"' in udp_request(udpnat.query, payload), payload[:20]
    assert udp_request(udpnat.query, b" table ").startswith(b"{")
    assert udp_request(udpnat.query, b"PING") == b"PONG"


# --- tcpcounter -----------------------------------------------------------------------


def test_tcp_announces_its_port(tcpcounter: TcpVnf) -> None:
    assert tcpcounter.startup_line == f"tcpcounter listening on {HOST}:{tcpcounter.addr[1]}"


def test_tcp_numbers_lines_per_connection_and_in_total(tcpcounter: TcpVnf) -> None:
    with LineClient(tcpcounter.addr) as first, LineClient(tcpcounter.addr) as second:
        assert first.call("a") == (1, 1, 1, "a")
        assert first.call("b") == (1, 2, 2, "b")
        assert second.call("x y") == (2, 1, 3, "x y")
        assert first.call("c") == (1, 3, 4, "c")
        assert second.call("") == (2, 2, 5, "")


def test_tcp_idle_connection_keeps_its_numbering(tcpcounter: TcpVnf) -> None:
    with LineClient(tcpcounter.addr) as idle:
        idle.call("one")
        idle.call("two")
        for n in range(5):
            with LineClient(tcpcounter.addr) as other:
                assert other.call("o") == (n + 2, 1, n + 3, "o")
        assert idle.call("three") == (1, 3, 8, "three")


def test_tcp_handles_pipelined_split_and_crlf_lines(tcpcounter: TcpVnf) -> None:
    with LineClient(tcpcounter.addr) as client:
        client.send_raw(b"one\r\ntwo\nthr")
        assert client.read_reply() == (1, 1, 1, "one")
        assert client.read_reply() == (1, 2, 2, "two")
        client.send_raw(b"ee\n")
        assert client.read_reply() == (1, 3, 3, "three")
        client.send_raw(b"\xff\x00\xfe\n")
        assert client.read_line() == b"1 4 4 \xff\x00\xfe"


def test_tcp_answers_last_partial_line_at_eof_then_closes(tcpcounter: TcpVnf) -> None:
    with LineClient(tcpcounter.addr) as client:
        client.send_raw(b"first\nlast")
        client.shutdown_write()
        assert client.read_until_closed() == b"1 1 1 first\n1 2 2 last\n"


def test_tcp_serves_many_clients_at_once(tcpcounter: TcpVnf) -> None:
    count = 50
    with ExitStack() as stack:
        clients = [stack.enter_context(LineClient(tcpcounter.addr)) for _ in range(count)]
        first = [client.call("hello") for client in clients]
        second = [client.call("again") for client in clients]
    assert sorted(conn_no for conn_no, _, _, _ in first) == list(range(1, count + 1))
    assert {line_no for _, line_no, _, _ in first} == {1}
    assert [total for _, _, total, _ in first] == list(range(1, count + 1))
    assert [(conn_no, line_no) for conn_no, line_no, _, _ in second] == [
        (conn_no, 2) for conn_no, _, _, _ in first
    ]


def test_tcp_drops_only_a_connection_with_an_overlong_line(tcpcounter: TcpVnf) -> None:
    with LineClient(tcpcounter.addr) as flooder:
        flooder.send_raw(b"z" * 2000)
        # The server closes with our bytes unread, which the kernel may turn into a reset.
        with suppress(ConnectionResetError):
            assert flooder.read_until_closed() == b""
    with LineClient(tcpcounter.addr) as client:
        assert client.call("fine") == (2, 1, 1, "fine")
