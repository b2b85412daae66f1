"""Real TCP proxies from Debian as VNFs: their connections through checkpoints, a planned
move and a host crash, with every byte counted on both ends.

The VNFs are Debian's haproxy (TCP mode) and nginx's stream proxy, unmodified. A backend
echo server runs on the testbed's own network (its gateway address); clients connect to
the VNF from this process. Each connection's bytes are counted at the client and at the
backend, and must match exactly at the end: nothing lost, nothing repeated.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.vnfclient import wait_until

PORT = 8000
INTERVAL = 0.2  # checkpoints: 20 of them take a few seconds


class EchoBackend:
    """A threaded TCP echo server counting, per client port, the bytes it received."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0), backlog=64)
        self.sock.settimeout(0.2)
        self.address, self.port = address, self.sock.getsockname()[1]
        self.received: dict[int, int] = {}  # the proxy's source port -> bytes
        self.closed: dict[int, str] = {}  # how each connection ended: "eof" or an error
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._echo, args=(conn, peer[1]), daemon=True)
            self._threads.append(t)
            t.start()

    def _echo(self, conn: socket.socket, port: int) -> None:
        self.received[port] = 0
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self.closed[port] = f"error: {exc}"
                    return
                if not data:
                    self.closed[port] = "eof"
                    return
                self.received[port] += len(data)
                conn.sendall(data)
        self.closed[port] = "stopped"

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in [self._accept, *self._threads]:
            t.join(2)


class Conn:
    """One client connection through the proxy, counting what it sent and got back."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.create_connection((ip, PORT), timeout=10)
        self.sent = self.got = 0
        self.error: str | None = None

    def exchange(self, size: int) -> None:
        msg = random.randbytes(size)
        self.sock.sendall(msg)
        self.sent += size
        back = b""
        while len(back) < size:
            part = self.sock.recv(size - len(back))
            if not part:
                raise ConnectionError(f"EOF after {self.got + len(back)} bytes")
            back += part
        assert back == msg, "the echo came back altered"
        self.got += size


class Active(threading.Thread):
    """A connection exchanging messages of 1-8 KiB back to back until stopped; can be
    paused (quiet) on request. Remembers the longest pause its client saw."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(ip)
        self.running = threading.Event()
        self.running.set()
        self.quiet = threading.Event()
        self._halt = threading.Event()
        self.exchanges = 0
        self.longest_gap = 0.0

    def run(self) -> None:
        last = time.monotonic()
        while not self._halt.is_set():
            if not self.running.is_set():
                self.quiet.set()
                self.running.wait(0.05)
                last = time.monotonic()
                continue
            self.quiet.clear()
            try:
                self.conn.exchange(random.randint(1024, 8192))
            except (OSError, ConnectionError, AssertionError) as exc:
                self.conn.error = repr(exc)
                return
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.exchanges += 1

    def pause(self) -> None:
        self.running.clear()
        assert self.quiet.wait(15), "the active connection did not go quiet"

    def stop(self) -> None:
        self._halt.set()
        self.running.set()
        self.join(15)


#: Where a test's configuration files appear inside the VNF's private root.
CONF = "/srv/conf"


def _conf(tmp: Path) -> list[dict[str, Any]]:
    return [{"source": str(tmp), "target": CONF}]


def _haproxy(tmp: Path, ip: str, backend: EchoBackend) -> list[str]:
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""global
  maxconn 256
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind {ip}:{PORT}
  default_backend be
backend be
  server echo {backend.address}:{backend.port}
""")
    return ["haproxy", "-db", "-f", f"{CONF}/haproxy.cfg"]


def _nginx(tmp: Path, ip: str, backend: EchoBackend) -> list[str]:
    # Workers stay root: CRIU cannot dump a process of another uid where root lacks
    # CAP_SYS_RESOURCE (these VMs), nor mount its /proc (docs/criu.md).
    cfg = tmp / "nginx.conf"
    cfg.write_text(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
user root;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr notice;
events {{ worker_connections 256; }}
stream {{
  server {{
    listen {ip}:{PORT};
    proxy_pass {backend.address}:{backend.port};
    proxy_timeout 1h;
  }}
}}
""")
    return ["nginx", "-c", f"{CONF}/nginx.conf", "-e", "stderr"]


PROXIES = {"haproxy": _haproxy, "nginx-stream": _nginx}


@pytest.fixture(scope="module")
def tmgr() -> Iterator[Mgr]:
    with manager_bed("t", 60, 30, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


def _ops(m: Mgr, iid: str, operation: str) -> list[dict[str, Any]]:
    ops = m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": iid})
    return [o for o in ops if o["operation"] == operation]


def _wait_op(m: Mgr, iid: str, operation: str, n: int, timeout: float) -> dict[str, Any]:
    wait_until(lambda: len([o for o in _ops(m, iid, operation)
                            if o["operationState"] in ("COMPLETED", "FAILED")]) >= n, timeout)
    op = [o for o in _ops(m, iid, operation)
          if o["operationState"] in ("COMPLETED", "FAILED")][-1]
    assert op["operationState"] == "COMPLETED", op
    return op


def _last_seq(m: Mgr, iid: str, after: float = 0.0) -> int:
    """The newest checkpoint's number (those cut after ``after``); the manager keeps only
    ``retention`` records, so checkpoints are counted by number."""
    return max((c["seq"] for c in m.checkpoints(iid) if c["cutAt"] > after), default=0)


@pytest.mark.parametrize("kind", sorted(PROXIES))
def test_tcp_proxy_keeps_connections_through_checkpoints_a_move_and_a_host_crash(
        tmgr: Mgr, tmp_path: Path, kind: str) -> None:
    m = tmgr
    index = sorted(PROXIES).index(kind) + 1
    addr = m.tb.vnf_address(20 + index)
    ip = addr.split("/")[0]
    iid = f"tcp-{kind}"
    backend = EchoBackend(m.tb.gateway)
    conns: list[Conn] = []
    active: list[Active] = []
    crashed: list[str] = []
    try:
        desc = {"id": kind, "command": PROXIES[kind](tmp_path, ip, backend),
                "volumes": _conf(tmp_path), "network": {"address": addr},
                "resources": {"memory": "256Mi"},
                "network_lock": "auto",
                "ha": {"checkpoint_interval": INTERVAL, "backups": 1, "retention": 3,
                       "probe": {"type": "tcp", "port": PORT, "interval": 0.2,
                                 "timeout": 0.5, "failure_threshold": 5}}}
        m.deploy(desc, iid)
        wait_until(lambda: _try_connect(ip), 10)
        # Idle connections: one exchange each, then silence until the end.
        conns = [Conn(ip) for _ in range(3)]
        for c in conns:
            c.exchange(512)
        active = [Active(ip) for _ in range(2)]
        for a in active:
            a.start()
        first = _last_seq(m, iid)

        # 1. Twenty checkpoints, with bytes flowing on the active connections meanwhile.
        wait_until(lambda: _last_seq(m, iid) >= first + 20, 60)
        _all_alive(conns, active, "after 20 checkpoints")
        assert all(a.exchanges > 20 for a in active), [a.exchanges for a in active]

        # 2. A planned move, traffic flowing: the final dump keeps the network locked
        #    until the restore elsewhere, so peers see a pause and nothing else.
        source = m.vnf(iid)["host"]
        m.ok("POST", f"/nfvha/v1/vnf_instances/{iid}/move", json={})
        move = _wait_op(m, iid, "MOVE", 1, 30)
        assert m.vnf(iid)["host"] == move["nfvha"]["targetHost"] != source
        _resumed(active, "after the planned move")
        _all_alive(conns, active, "after the planned move")

        # 3. A host crash. TCP cannot take back bytes its peers already hold, so a
        #    connection survives a crash if it was quiet since the last checkpoint
        #    (docs/architecture.md): the active ones pause, a checkpoint follows, then
        #    the power cut.
        for a in active:
            a.pause()
        quiet_at = time.time()
        wait_until(lambda: _last_seq(m, iid, after=quiet_at + 0.05) > 0, 10)
        host = m.vnf(iid)["host"]
        heals = len(_ops(m, iid, "HEAL"))
        crashed.append(host)
        asyncio.run(m.tb.crash_host(host))
        heal = _wait_op(m, iid, "HEAL", heals + 1, 30)
        assert heal["nfvha"]["strategy"] == "restore-remote", heal["nfvha"]
        assert m.vnf(iid)["host"] not in (host, None)
        for a in active:
            a.running.set()
        _resumed(active, "after the host crash")
        _all_alive(conns, active, "after the host crash")

        # 4. New connections are accepted by the restored proxy.
        fresh = Conn(ip)
        fresh.exchange(4096)
        conns.append(fresh)
    finally:
        for a in active:
            a.stop()
        for c in [*conns, *(a.conn for a in active)]:
            c.sock.close()
        for h in crashed:  # the testbed serves the module's other tests
            asyncio.run(m.tb.revive_host(h))
    # Every connection's bytes, counted at both ends, match exactly. (The proxies also
    # open backend connections for the TCP health probe; those carry no bytes.)
    ours = len(conns) + len(active)
    wait_until(lambda: sum(1 for p, n in backend.received.items()
                           if n and p in backend.closed) >= ours, 10)
    backend.close()
    clients = sorted((c.sent, c.got) for c in [*conns, *(a.conn for a in active)])
    assert all(sent == got for sent, got in clients), clients
    carried = {p: n for p, n in backend.received.items() if n}
    assert sorted(carried.values()) == sorted(s for s, _ in clients), \
        (sorted(carried.values()), clients)
    assert {backend.closed[p] for p in carried} == {"eof"}, backend.closed


def _deploy_haproxy(m: Mgr, tmp: Path, n: int, iid: str,
                    backend: EchoBackend) -> tuple[str, str]:
    addr = m.tb.vnf_address(n)
    ip = addr.split("/")[0]
    m.deploy({"id": f"haproxy-{n}", "command": _haproxy(tmp, ip, backend),
              "volumes": _conf(tmp), "network": {"address": addr}, "resources": {"memory": "256Mi"},
              "ha": {"checkpoint_interval": INTERVAL, "backups": 1}}, iid)
    wait_until(lambda: _try_connect(ip), 10)
    return ip, m.vnf(iid)["host"]


def test_a_move_that_cannot_work_is_refused_and_changes_nothing(
        tmgr: Mgr, tmp_path: Path) -> None:
    m = tmgr
    backend = EchoBackend(m.tb.gateway)
    try:
        ip, host = _deploy_haproxy(m, tmp_path, 30, "mv-bad", backend)
        c = Conn(ip)
        c.exchange(100)
        cases = [("nope", {}, 404, "no VNF instance"),
                 ("mv-bad", {"host": "h9"}, 404, "no host 'h9'"),
                 ("mv-bad", {"host": host}, 409, f"already runs on {host}"),
                 ("mv-bad", {"host": 7}, 400, "host")]
        for iid, body, status, words in cases:
            r = m.http.post(f"{m.url}/nfvha/v1/vnf_instances/{iid}/move", json=body)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert words in r.json()["detail"], r.json()
        assert _ops(m, "mv-bad", "MOVE") == []
        vnf = m.vnf("mv-bad")
        assert (vnf["haState"], vnf["host"]) == ("ACTIVE", host)
        c.exchange(100)  # nothing disturbed it
        c.sock.close()
    finally:
        backend.close()


def test_a_move_failing_half_way_puts_the_vnf_back_with_its_connections(
        tmgr: Mgr, tmp_path: Path) -> None:
    """The target's agent is dead (its guard still beats, so the host looks UP): the
    transfer fails after the final dump stopped the VNF, which is restored on its source
    from that checkpoint, connections intact."""
    m = tmgr
    backend = EchoBackend(m.tb.gateway)
    target = None
    try:
        ip, source = _deploy_haproxy(m, tmp_path, 31, "mv-fail", backend)
        c = Conn(ip)
        c.exchange(1000)
        target = next(h for h in sorted(m.tb.hosts) if h != source)
        asyncio.run(m.tb.kill_agent(target, restart=False))
        m.ok("POST", "/nfvha/v1/vnf_instances/mv-fail/move", json={"host": target})
        wait_until(lambda: [o["operationState"] for o in _ops(m, "mv-fail", "MOVE")]
                   == ["FAILED"], 30)
        op = _ops(m, "mv-fail", "MOVE")[0]
        assert f"restored on {source}" in op["error"]["detail"], op["error"]
        vnf = m.vnf("mv-fail")
        assert (vnf["haState"], vnf["host"]) == ("ACTIVE", source)
        c.exchange(1000)
        c.sock.close()
        wait_until(lambda: any(n for n in backend.received.values()), 5)
        assert sorted(n for n in backend.received.values() if n) == [2000]
    finally:
        if target is not None:
            asyncio.run(m.tb.start_agent(target))
            asyncio.run(m.tb.wait_ready())
        backend.close()


def _try_connect(ip: str) -> bool:
    try:
        socket.create_connection((ip, PORT), timeout=0.5).close()
        return True
    except OSError:
        return False


def _resumed(active: list[Active], when: str) -> None:
    """Every active connection makes progress again. A segment dropped while the VNF was
    locked is resent after the peer's retransmission timeout, which doubles with each
    loss (0.2, 0.4, 0.8, ... s): resuming can take a few seconds."""
    before = [a.exchanges for a in active]
    try:
        wait_until(lambda: all(a.exchanges > b + 10 or a.conn.error
                               for a, b in zip(active, before, strict=True)), 30)
    except TimeoutError:
        raise AssertionError(f"active connections stalled {when}: exchanges "
                             f"{before} -> {[a.exchanges for a in active]}, errors "
                             f"{[a.conn.error for a in active]}") from None


def _all_alive(conns: list[Conn], active: list[Active], when: str) -> None:
    errors = [a.conn.error for a in active if a.conn.error]
    assert not errors, f"active connections broke {when}: {errors}"
    for c in conns:
        c.exchange(256)  # an idle connection still carries data, both ways
