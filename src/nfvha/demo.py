"""The embedded default run (``make demo``): nfvha brings stateful VNFs back by itself.

Three emulated hosts, the manager, and two sample stateful VNFs (a flow monitor and a
UDP NAT) under client traffic. A VNF process is killed, a VNF hangs, a host crashes; for
each the demo prints detection and restore time, the downtime the client saw, and the
state kept compared with what the client sent. Everything is torn down at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nfvha.client import AsyncManagerClient
from nfvha.testbed import Testbed

__all__ = ["run_demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "vnfs"
#: The interpreter of Python VNFs: Debian's, visible in every private root (/usr); a
#: virtualenv's is not.
VNF_PYTHON = "/usr/bin/python3"


#: Where a Python VNF's script directory appears in its private root: a fixed place, since
#: the repository itself may live anywhere (even under /tmp, which is the VNF's own).
VNF_SCRIPTS = "/opt/nfvha-vnfs"


def python_vnf(script: Path, *args: str) -> dict[str, Any]:
    """``command`` and ``volumes`` of a VNFD running a Python script of this repository:
    its directory is a read-only volume at `VNF_SCRIPTS` in the VNF's private root."""
    return {"command": [VNF_PYTHON, f"{VNF_SCRIPTS}/{script.name}", *args],
            "volumes": [{"source": str(script.parent.resolve()), "target": VNF_SCRIPTS,
                         "read_only": True}]}
RATE_HZ = 200  # client datagrams per second per VNF
PROBE_HZ = 500  # client-side availability probe


@dataclass
class Client:
    """Background traffic to one VNF plus a fast probe that records when it answered."""

    ip: str
    data_port: int
    query_port: int
    via: str | None = None  # service address of the steering forwarder, if replayed
    sent: int = 0
    answered: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((self.via or self.ip, self.data_port))
        self.key = "{}:{}".format(*self.sock.getsockname())
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._probe, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        period = 1.0 / RATE_HZ
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.paused.is_set():
                time.sleep(period)
                continue
            with contextlib.suppress(OSError):
                self.sock.send(b"x" * 64)
                with self.lock:
                    self.sent += 1
            time.sleep(period)

    def _probe(self) -> None:
        q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        q.settimeout(1.0 / PROBE_HZ * 4)
        q.connect((self.ip, self.query_port))
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                q.send(b"PING")
                if q.recv(64) == b"PONG":
                    self.answered.append(time.time())
            except OSError:
                pass
            time.sleep(1.0 / PROBE_HZ)
        q.close()

    def downtime_since(self, t0: float) -> float:
        """Longest gap between answers after ``t0`` (the failure), in seconds."""
        times = [t for t in self.answered if t >= t0 - 0.05]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return max(gaps, default=0.0)

    def query(self, payload: bytes) -> dict[str, Any] | None:
        q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        q.settimeout(0.5)
        try:
            q.sendto(payload, (self.ip, self.query_port))
            res: dict[str, Any] = json.loads(q.recv(65535))
            return res
        except (OSError, ValueError):
            return None
        finally:
            q.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.sock.close()


def _counted(c: Client, kind: str) -> int | None:
    if kind.startswith("flowmon") and c.via:
        st = c.query(b"STATS")  # behind the forwarder the VNF sees the forwarder's flow
        return None if st is None else int(st["total_packets"])
    if kind.startswith("flowmon"):
        st = c.query(b"STATS")
        return None if st is None else int(st["flows"].get(c.key, {}).get("packets", 0))
    st = c.query(b"TABLE")
    return None if st is None else int(st["bindings"].get(c.key, {}).get("packets", 0))


def _vnfd(kind: str, addr: str, interval: float, *, vnfd_id: str | None = None,
          service: str | None = None) -> dict[str, Any]:
    port = 5001 if kind == "flowmon" else 6001
    host_loss = ["restore-remote", "restart"] if kind == "flowmon" else \
        ["standby", "restore-remote", "restart"]
    network: dict[str, Any] = {"address": addr}
    if service:
        network["service"] = {"address": service, "port": port - 1}
    return {"id": vnfd_id or kind, **python_vnf(EXAMPLES / f"{kind}.py"),
            "network": network, "resources": {"memory": "128Mi", "cpu": 0.5},
            "ha": {"checkpoint_interval": interval, "backups": 1, "replay": bool(service),
                   "recovery": {"process-exit": ["restore-local", "restore-remote", "restart"],
                                "hang": ["restore-local", "restore-remote", "restart"],
                                "host-loss": host_loss},
                   "probe": {"type": "udp", "port": port, "send": "PING", "expect": "PONG",
                             "interval": 0.05, "timeout": 0.05, "failure_threshold": 3}}}


async def run_demo(keep: bool = False, interval: float = 1.0) -> int:
    con = Console(width=max(Console().width, 120))
    tb = Testbed(name="nfvha", n_hosts=3, with_manager=True, with_forwarder=True, fencing=True,
                 managers=3)
    con.rule("[bold]nfvha demo[/]")
    con.print("3 emulated hosts, a cluster of 3 HA managers on etcd (each on its own "
              "management host), a pair of steering forwarders (active and standby, each on "
              "an ingress host); two flow monitors "
              "(one with packet log and replay) and a UDP NAT under traffic; checkpoints every "
              f"{interval:.1f} s")
    with contextlib.suppress(Exception):
        await tb.down()  # leftovers of an interrupted earlier run
    clients: list[Client] = []
    rows: list[list[str]] = []
    t_start = time.monotonic()
    try:
        with con.status("starting testbed, manager and agents..."):
            await tb.up()
        async with AsyncManagerClient(tb.manager_urls, tb.operator_token, timeout=30,
                                      verify=tb.client_context(None)) as m:
            vnfs = {"flowmon": tb.vnf_address(10), "udpnat": tb.vnf_address(20),
                    "flowmon-replay": tb.vnf_address(11)}
            service = tb.service_address(10)
            for name, addr in vnfs.items():
                kind = "udpnat" if name == "udpnat" else "flowmon"
                vnfd = _vnfd(kind, addr, interval, vnfd_id=name,
                             service=service if name == "flowmon-replay" else None)
                await m.onboard(vnfd)
                await m.create(name, name)
                await m.instantiate(name)
            with con.status("instantiating..."):
                await _wait(m, lambda v: all(x["haState"] == "ACTIVE" for x in v), 20)
            for name, addr in vnfs.items():
                v = await m.instance(name)
                via = f", clients via {service}" if name == "flowmon-replay" else ""
                con.print(f"  {name:14} on {v['host']} (backup {', '.join(v['backups'])}) at "
                          f"{addr.split('/')[0]}{via}")
            clients_by = {
                "flowmon": Client(vnfs["flowmon"].split("/")[0], 5000, 5001),
                "udpnat": Client(vnfs["udpnat"].split("/")[0], 6000, 6001),
                "flowmon-replay": Client(vnfs["flowmon-replay"].split("/")[0], 5000, 5001,
                                         via=service)}
            clients = list(clients_by.values())
            scenarios = [("kill -9 the flow monitor", "flowmon", "kill"),
                         ("kill -9 the flow monitor with replay", "flowmon-replay", "kill"),
                         ("the NAT hangs (SIGSTOP)", "udpnat", "hang"),
                         ("kill -9 the flow monitor's agent; restarted", "flowmon",
                          "kill-agent"),
                         ("kill -9 the flow monitor's agent; not restarted", "flowmon",
                          "kill-agent-for-good"),
                         ("power loss of the leader manager's host, then kill -9 the flow "
                          "monitor 100 ms later", "flowmon", "leader-loss-then-kill"),
                         ("power loss of the NAT's host (fenced)", "udpnat", "crash"),
                         ("power loss of the active forwarder's ingress host (the flow "
                          "monitor with replay behind it)", "flowmon-replay",
                          "crash-forwarder")]
            for title, kind, fault in scenarios:
                await asyncio.sleep(interval * 2.5)  # traffic, and checkpoints of it
                row = await _inject(con, m, tb, title, kind, fault, clients_by[kind])
                rows.append(row)
        table = Table(title="failures and recoveries", show_lines=True)
        for col in ("failure", "strategy", "detected in", "restored in", "client downtime",
                    "state kept"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        con.print(table)
        con.print("detected: failure to detection; restored: decision to restored VNF; "
                  "client downtime: longest gap between answers to a 500 Hz probe. "
                  f"Without replay, what arrives after the last checkpoint (<= {interval:.1f} s "
                  "of traffic) is lost; with replay the forwarder's packet log brings the "
                  "restored VNF to exactly what the client sent. While no manager leads, no "
                  "checkpoint is taken: a VNF failing then loses up to the failover time more.")
        con.print(f"demo finished in {time.monotonic() - t_start:.0f} s")
        return 0
    finally:
        for c in clients:
            c.close()
        if not keep:
            with con.status("tearing everything down..."):
                await tb.down()


async def _inject(con: Console, m: AsyncManagerClient, tb: Testbed, title: str, kind: str,
                  fault: str, client: Client) -> list[str]:
    heals_before = len(await _heals(m, kind))
    v = await m.instance(kind)
    con.print(f"[yellow]>>[/] {title} (on {v['host']})")
    t0 = time.time()
    if fault == "crash-forwarder":
        return await _forwarder_takeover(con, tb, title, kind, client)
    if fault == "kill-agent":
        # Its supervisor restarts it; the new agent adopts the VNF within the grace.
        await tb.kill_agent(v["host"])
        await asyncio.sleep(4.0)
        if len(await _heals(m, kind)) > heals_before:
            return [title, "unexpected recovery", "-", "-", "-", "-"]
        con.print("   no recovery needed: the restarted agent adopted the running VNF "
                  "within its grace")
        return [title, "none: adopted by the restarted agent", "-", "-",
                f"{client.downtime_since(t0) * 1000:.0f} ms", "kept (same process)"]
    if fault == "crash":
        await tb.crash_host(v["host"])
    elif fault == "leader-loss-then-kill":
        # The VNF fails while no manager leads: the new leader must find it and recover it.
        old = await tb.leader()
        assert old is not None
        t_lost = time.monotonic()
        await tb.crash_manager_host(old)
        await asyncio.sleep(0.1)
        await tb.inject_vnf(v["host"], kind, "kill")  # straight at the agent: no leader
        new = None
        while new is None and time.monotonic() - t_lost < 15:
            new = await tb.leader()
            if new is None:
                await asyncio.sleep(0.02)
        con.print(f"   manager {old} lost; {new or 'no manager'} leads "
                  f"{(time.monotonic() - t_lost) * 1000:.0f} ms later")
    elif fault == "kill-agent-for-good":
        await tb.kill_agent(v["host"], restart=False)
    else:
        await m.inject(kind, fault)
    deadline = time.monotonic() + 20
    op: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        done = [o for o in await _heals(m, kind)
                if o["operationState"] in ("COMPLETED", "FAILED")]
        if len(done) > heals_before:
            op = done[-1]
            break
        await asyncio.sleep(0.05)
    if fault == "kill-agent-for-good":
        await tb.start_agent(v["host"])  # back for what follows: its fenced copy is removed
    if op is None:
        return [title, "-", "-", "-", "no recovery within 20 s", "-"]
    await asyncio.sleep(0.3)  # let the probe see it answering again
    n = op["nfvha"]
    ts = n["timestamps"]
    client.paused.set()  # a quiet moment, so that what was sent has arrived
    await asyncio.sleep(0.1)
    with client.lock:
        sent = client.sent
    # Replayed and queued datagrams reach a just-restored VNF paced: count once the
    # counter stops moving (bounded), not at a fixed instant.
    counted = _counted(client, kind)
    for _ in range(20):
        if counted is not None and counted >= sent:
            break
        await asyncio.sleep(0.1)
        again = _counted(client, kind)
        if again == counted:
            break
        counted = again
    client.paused.clear()
    lost = "?" if counted is None else str(sent - counted)
    cp = n.get("checkpoint")
    if os.environ.get("NFVHA_DEMO_DEBUG"):
        after = [round((t - t0) * 1000) for t in client.answered if t > t0][:4]
        rel = {k: round((v - t0) * 1000) for k, v in ts.items()}
        print(f"   debug: phases (ms after fault) {rel}; answers at {after}")
    state = f"{counted}/{sent} counted, {lost} lost (checkpoint {cp})"
    if n.get("replay"):
        state += f", {n['replay'].get('replayed', 0)} replayed"
    con.print(f"   {op['operationState']}: {n.get('strategy')} on {n.get('targetHost')} — "
              f"{n.get('decision', {}).get('reason', '')}")
    return [title, f"{n.get('strategy')} on {n.get('targetHost')}",
            f"{(ts['detected'] - t0) * 1000:.0f} ms",
            f"{(ts['restored'] - ts['decided']) * 1000:.0f} ms",
            f"{client.downtime_since(t0) * 1000:.0f} ms", state]


async def _forwarder_takeover(con: Console, tb: Testbed, title: str, kind: str,
                              client: Client) -> list[str]:
    """The active forwarder's host loses power: its standby takes the service addresses
    over; the VNF behind them is not touched (no heal), and what was in flight is lost."""
    old = await tb.active_forwarder()
    if old is None:
        return [title, "no active forwarder", "-", "-", "-", "-"]
    client.paused.set()  # a quiet moment: what was sent before has arrived
    await asyncio.sleep(0.3)
    with client.lock:
        before = client.sent
    counted_before = _counted(client, kind)
    client.paused.clear()
    await asyncio.sleep(0.5)
    t_lost = time.monotonic()
    await tb.crash_ingress_host(old)
    new = None
    while new in (None, old) and time.monotonic() - t_lost < 10:
        await asyncio.sleep(0.02)
        new = await tb.active_forwarder()
    took = (time.monotonic() - t_lost) * 1000
    await asyncio.sleep(0.5)  # let the probe see it answering again
    client.paused.set()
    await asyncio.sleep(0.3)
    with client.lock:
        sent = client.sent
    counted = _counted(client, kind)
    client.paused.clear()
    if new in (None, old):
        return [title, "no takeover within 10 s", "-", "-", "-", "-"]
    con.print(f"   forwarder {old} lost; {new} active {took:.0f} ms later (ARP announced; "
              "flows, log and reply counts were mirrored to it); powering "
              f"{old} on again as its standby")
    await tb.restore_ingress_host(old)
    lost = "?" if counted is None or counted_before is None else \
        str((sent - before) - (counted - counted_before))
    # The probe asks the VNF directly (not through the forwarder): it sees no downtime.
    return [title, f"forwarder {new} took over", f"{took:.0f} ms (to active)", "-",
            "- (the probe bypasses the forwarder)",
            f"{counted}/{sent} counted: {lost} in flight lost at the takeover"]


async def _heals(m: AsyncManagerClient, kind: str) -> list[dict[str, Any]]:
    return [o for o in await m.ops(kind) if o["operation"] == "HEAL"]


async def _wait(m: AsyncManagerClient, pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vnfs = await m.instances()
        if pred(vnfs):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"VNFs not ACTIVE within {timeout}s: {vnfs}")
