"""The embedded default run: a stateful VNF under traffic survives a crash and a host loss.

Agent-level for now (the manager's automatic recovery comes with it): two emulated hosts,
the flow monitor on h1; its process is killed and restored on h1, then h1 is crashed and
the pushed checkpoint is restored on h2. Each step prints what a client saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from nfvha.testbed import Testbed

__all__ = ["run_agent_demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "vnfs"


class _Flow:
    """A UDP client of the flow monitor that counts what it sent."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((ip, 5000))
        self.key = "{}:{}".format(*self.sock.getsockname())
        self.sent = 0

    def send(self, n: int) -> None:
        for _ in range(n):
            self.sock.send(b"x" * 64)
            self.sent += 1

    def counted(self, timeout: float = 0.3) -> int | None:
        q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        q.settimeout(timeout)
        try:
            q.sendto(b"STATS", (self.ip, 5001))
            stats: dict[str, Any] = json.loads(q.recv(65535))
        except (OSError, ValueError):
            return None
        finally:
            q.close()
        return int(stats["flows"].get(self.key, {}).get("packets", 0))

    def wait_answer(self, timeout: float = 10.0) -> float:
        """Seconds until the VNF answers a query again (bounded)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.counted(0.05) is not None:
                return time.monotonic() - t0
        raise TimeoutError(f"VNF at {self.ip} did not answer within {timeout}s")


async def run_agent_demo(keep: bool = False) -> int:
    con = Console()
    tb = Testbed(name="nfvha", n_hosts=2)
    con.print("[bold]nfvha demo[/]: 2 emulated hosts, a stateful UDP flow monitor, "
              "a process crash and a host crash")
    await tb.down()  # leftovers of an interrupted earlier run
    with con.status("starting testbed and agents..."):
        await tb.up()
    rows: list[tuple[str, str, str, str, str]] = []
    headers = {"Authorization": f"Bearer {tb.token}"}
    try:
        async with httpx.AsyncClient(timeout=30, headers=headers) as http:
            h1, h2 = tb.host("h1").url, tb.host("h2").url
            addr = tb.vnf_address(1)
            ip = addr.split("/")[0]
            desc = {"id": "flowmon", "command": [sys.executable, str(EXAMPLES / "flowmon.py")],
                    "network": {"address": addr}, "resources": {"memory": "128Mi"}}
            r = await http.post(f"{h1}/v1/instances",
                                json={"descriptor": desc, "instance_id": "flowmon-1"})
            r.raise_for_status()
            inst = r.json()
            con.print(f"flowmon-1 running on h1 at {ip} (pid {inst['pid']})")
            flow = _Flow(ip)
            flow.wait_answer()

            # 1. process crash, restore on the same host
            flow.send(500)
            await asyncio.sleep(0.1)
            cp = (await http.post(f"{h1}/v1/instances/flowmon-1/checkpoints")).json()
            at_cp = flow.counted()
            flow.send(100)
            con.print(f"checkpoint {cp['seq']}: {cp['total_bytes'] / 1e6:.1f} MB, frozen "
                      f"{cp['criu_stats']['frozen_time_us'] / 1000:.1f} ms; then 100 more "
                      "packets")
            t0 = time.monotonic()
            os.kill(inst["pid"], signal.SIGKILL)
            for _ in range(200):
                st = (await http.get(f"{h1}/v1/instances/flowmon-1")).json()
                if st["state"] == "EXITED":
                    break
                await asyncio.sleep(0.005)
            detect = time.monotonic() - t0
            r = await http.post(f"{h1}/v1/instances/flowmon-1/restore", json={})
            r.raise_for_status()
            restore = time.monotonic() - t0 - detect
            down = time.monotonic() - t0 + flow.wait_answer()
            rows.append(("kill -9 VNF, restore on h1", f"{detect * 1000:.0f} ms",
                         f"{restore * 1000:.0f} ms", f"{down * 1000:.0f} ms",
                         f"{flow.counted()}/{flow.sent} (checkpoint had {at_cp})"))

            # 2. host crash, restore the pushed checkpoint on h2
            flow.send(300)
            await asyncio.sleep(0.1)
            cp = (await http.post(f"{h1}/v1/instances/flowmon-1/checkpoints")).json()
            at_cp = flow.counted()
            push = (await http.post(f"{h1}/v1/checkpoints/flowmon-1/{cp['seq']}/push",
                                    json={"peer_url": h2})).json()
            con.print(f"checkpoint {cp['seq']} pushed to h2: {push['bytes'] / 1e6:.1f} MB in "
                      f"{push['seconds'] * 1000:.0f} ms")
            t0 = time.monotonic()
            await tb.crash_host("h1")
            con.print("h1 crashed: links cut, every process killed")
            r = await http.post(f"{h2}/v1/instances/flowmon-1/restore", json={})
            r.raise_for_status()
            restore = time.monotonic() - t0
            down = time.monotonic() - t0 + flow.wait_answer()
            rows.append(("crash host h1, restore on h2", "(manual)", f"{restore * 1000:.0f} ms",
                         f"{down * 1000:.0f} ms", f"{flow.counted()}/{flow.sent} "
                         f"(checkpoint had {at_cp})"))
        table = Table(title="recoveries (agent API driven by this demo)")
        for col in ("failure", "detected", "restored", "client downtime",
                    "packets counted/sent"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        con.print(table)
        con.print("Packets sent after a checkpoint are lost without replay; the counters "
                  "continue from the checkpoint.")
        return 0
    finally:
        if not keep:
            with con.status("tearing down..."):
                await tb.down()
