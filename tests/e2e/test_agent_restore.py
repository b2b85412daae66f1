"""Acceptance of the agent: real VNFs, real CRIU, real kills and host crashes."""

from __future__ import annotations

import os
import signal
from typing import Any

from tests.e2e.conftest import Bed, flowmon_descriptor, tcpcounter_descriptor
from tests.vnfclient import LineClient, UdpFlow, flowmon_stats, wait_until


def _ip(address: str) -> str:
    return address.split("/")[0]


def _wait_state(bed: Bed, host: str, iid: str, state: str, timeout: float = 5.0) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        nonlocal seen
        seen = bed.ok("GET", host, f"/v1/instances/{iid}")
        return bool(seen["state"] == state)

    wait_until(check, timeout)
    return seen


def _flow_packets(ip: str, key: str) -> int:
    flow = flowmon_stats((ip, 5001))["flows"].get(key)
    return int(flow["packets"]) if flow else 0


def test_udp_vnf_killed_and_restored_on_same_host(bed: Bed, python_bin: str) -> None:
    addr = bed.tb.vnf_address(1)
    ip = _ip(addr)
    inst = bed.ok("POST", "h1", "/v1/instances",
                  json={"descriptor": flowmon_descriptor(addr, python_bin), "instance_id": "fm1"})
    assert inst["state"] == "RUNNING"
    wait_until(lambda: _ping(ip), 5)
    with UdpFlow((ip, 5000), None, 1.0) as flow:
        flow.send(120)
        wait_until(lambda: _flow_packets(ip, flow.key) == 120, 3)
        meta = bed.ok("POST", "h1", "/v1/instances/fm1/checkpoints")
        assert meta["criu_stats"]["frozen_time_us"] > 0
        assert "pages-1.img" in meta["files"]
        flow.send(30)  # after the checkpoint: lost by a restore without replay
        wait_until(lambda: _flow_packets(ip, flow.key) == 150, 3)

        os.kill(inst["pid"], signal.SIGKILL)  # a real crash
        dead = _wait_state(bed, "h1", "fm1", "EXITED")
        assert dead["exit"]["signal"] == signal.SIGKILL

        restored = bed.ok("POST", "h1", "/v1/instances/fm1/restore", json={})
        assert restored["state"] == "RUNNING"
        assert restored["restored_from"] == f"fm1/{meta['seq']:06d}"
        assert restored["pid"] != inst["pid"]
        # Counters continue from the checkpoint's values, on the same address.
        assert _flow_packets(ip, flow.key) == 120
        flow.send(5)
        wait_until(lambda: _flow_packets(ip, flow.key) == 125, 3)


def test_checkpoint_pushed_and_restored_on_second_host_after_crash(bed: Bed,
                                                                   python_bin: str) -> None:
    addr = bed.tb.vnf_address(2)
    ip = _ip(addr)
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": flowmon_descriptor(addr, python_bin), "instance_id": "fm2"})
    wait_until(lambda: _ping(ip), 5)
    with UdpFlow((ip, 5000), None, 1.0) as flow:
        flow.send(200)
        wait_until(lambda: _flow_packets(ip, flow.key) == 200, 3)
        meta = bed.ok("POST", "h1", "/v1/instances/fm2/checkpoints")
        pushed = bed.ok("POST", "h1", f"/v1/checkpoints/fm2/{meta['seq']}/push",
                        json={"peer_url": bed.url("h2")})
        assert pushed["bytes"] >= meta["total_bytes"]
        listed = bed.ok("GET", "h2", "/v1/checkpoints", params={"instance_id": "fm2"})
        assert [c["seq"] for c in listed] == [meta["seq"]]

        bed.crash("h1")
        assert not _ping(ip), "the crashed host's VNF still answers"

        restored = bed.ok("POST", "h2", "/v1/instances/fm2/restore", json={"seq": meta["seq"]})
        assert restored["state"] == "RUNNING"
        assert _flow_packets(ip, flow.key) == 200
        flow.send(10)
        wait_until(lambda: _flow_packets(ip, flow.key) == 210, 3)


def test_tcp_listening_and_idle_connection_survive_restore_on_same_host(
        bed: Bed, python_bin: str) -> None:
    addr = bed.tb.vnf_address(3)
    ip = _ip(addr)
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": tcpcounter_descriptor(addr, python_bin), "instance_id": "tc1"})
    wait_until(lambda: _tcp_ok(ip), 5)
    with LineClient((ip, 7000), timeout=3.0) as idle:
        first = idle.call("hello")
        # A planned checkpoint that stops the VNF keeps its network locked, so the client
        # never sees a FIN; the connection then resumes in the restored copy.
        bed.ok("POST", "h1", "/v1/instances/tc1/checkpoints", params={"stop": "true"})
        _wait_state(bed, "h1", "tc1", "STOPPED")
        bed.ok("POST", "h1", "/v1/instances/tc1/restore", json={})
        conn_no, line_no, total, text = idle.call("again")
        assert (conn_no, line_no, total, text) == (first[0], 2, first[2] + 1, "again")
        with LineClient((ip, 7000), timeout=3.0) as fresh:  # the listening socket works too
            c2 = fresh.call("new")
            assert c2[0] > conn_no and c2[1] == 1


def test_tcp_idle_connection_survives_restore_on_other_host_after_crash(
        bed: Bed, python_bin: str) -> None:
    addr = bed.tb.vnf_address(4)
    ip = _ip(addr)
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": tcpcounter_descriptor(addr, python_bin), "instance_id": "tc2"})
    wait_until(lambda: _tcp_ok(ip), 5)
    with LineClient((ip, 7000), timeout=3.0) as idle:
        first = idle.call("hello")
        meta = bed.ok("POST", "h1", "/v1/instances/tc2/checkpoints")
        bed.ok("POST", "h1", f"/v1/checkpoints/tc2/{meta['seq']}/push",
               json={"peer_url": bed.url("h2")})
        bed.crash("h1")
        bed.ok("POST", "h2", "/v1/instances/tc2/restore", json={})
        assert idle.call("after crash") == (first[0], 2, first[2] + 1, "after crash")
        with LineClient((ip, 7000), timeout=3.0) as fresh:
            assert fresh.call("new")[1] == 1


def test_socat_non_python_vnf_is_protected_the_same_way(bed: Bed) -> None:
    """socat (C, from Debian) as a TCP echo VNF: its process tree, listening socket and
    an idle established connection move to another host after a crash."""
    addr = bed.tb.vnf_address(5)
    ip = _ip(addr)
    desc = {"id": "socat-echo", "command": ["socat", "TCP-LISTEN:7000,reuseaddr,fork",
                                            "EXEC:cat"],
            "network": {"address": addr}, "resources": {"memory": "64Mi", "cpu": 0.5}}
    bed.ok("POST", "h1", "/v1/instances", json={"descriptor": desc, "instance_id": "so1"})
    wait_until(lambda: _tcp_ok(ip), 5)
    with LineClient((ip, 7000), timeout=3.0) as idle:
        idle.send_raw(b"ping 1\n")
        assert idle.read_line() == b"ping 1"
        meta = bed.ok("POST", "h1", "/v1/instances/so1/checkpoints")
        assert meta["criu_stats"]["pages_written"] > 0
        bed.ok("POST", "h1", f"/v1/checkpoints/so1/{meta['seq']}/push",
               json={"peer_url": bed.url("h2")})
        bed.crash("h1")
        bed.ok("POST", "h2", "/v1/instances/so1/restore", json={})
        idle.send_raw(b"ping 2\n")
        assert idle.read_line() == b"ping 2"


def test_corrupt_image_is_refused_and_previous_checkpoint_restores(bed: Bed,
                                                                    python_bin: str) -> None:
    addr = bed.tb.vnf_address(6)
    ip = _ip(addr)
    inst = bed.ok("POST", "h1", "/v1/instances",
                  json={"descriptor": flowmon_descriptor(addr, python_bin), "instance_id": "fm3"})
    wait_until(lambda: _ping(ip), 5)
    with UdpFlow((ip, 5000), None, 1.0) as flow:
        flow.send(40)
        wait_until(lambda: _flow_packets(ip, flow.key) == 40, 3)
        first = bed.ok("POST", "h1", "/v1/instances/fm3/checkpoints")
        flow.send(40)
        wait_until(lambda: _flow_packets(ip, flow.key) == 80, 3)
        second = bed.ok("POST", "h1", "/v1/instances/fm3/checkpoints")
        state_dir = bed.tb.dir / "h1" / "checkpoints" / "fm3" / f"{second['seq']:06d}"
        target = state_dir / "pages-1.img"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))

        os.kill(inst["pid"], signal.SIGKILL)
        _wait_state(bed, "h1", "fm3", "EXITED")
        r = bed.call("POST", "h1", "/v1/instances/fm3/restore", json={})
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["checkpoint"] == f"fm3/{second['seq']:06d}"
        assert problem["file"] == "pages-1.img"
        assert "pages-1.img" in problem["detail"]
        assert f"fm3/{second['seq']:06d}" in problem["detail"]
        assert not _ping(ip), "a refused restore must not leave a VNF running"

        bed.ok("POST", "h1", "/v1/instances/fm3/restore", json={"seq": first["seq"]})
        assert _flow_packets(ip, flow.key) == 40


def _ping(ip: str) -> bool:
    try:
        return bool(flowmon_stats((ip, 5001), timeout=0.3) is not None)
    except (TimeoutError, OSError, ValueError):
        return False


def _tcp_ok(ip: str) -> bool:
    try:
        with LineClient((ip, 7000), timeout=0.5):
            return True
    except OSError:
        return False

