"""The agent API answers bad requests with a 4xx that says what is wrong, and leaves
nothing half-made behind."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from nfvha.vim.hostnet import HostNetwork
from tests.e2e.conftest import Bed, flowmon_descriptor


def _sandboxes(bed: Bed, host: str) -> list[str]:
    prefix = f"{bed.tb.host(host).netns}-"
    return asyncio.run(HostNetwork().list_netns(prefix))


def test_no_certificate_is_401_but_liveness_is_open(bed: Bed) -> None:
    url = bed.url("h1")
    # Over TLS checked against the testbed's CA, but with no certificate of its own: the
    # token (which agents do not hold) does not stand in for the manager's certificate.
    with httpx.Client(timeout=5, verify=bed.tb.client_context(None),
                      headers={"Authorization": f"Bearer {bed.tb.token}"}) as anon:
        assert anon.get(f"{url}/healthz").status_code == 200
        for method, path in [("GET", "/v1/status"), ("GET", "/v1/instances"),
                             ("POST", "/v1/instances"), ("GET", "/v1/checkpoints"),
                             ("POST", "/v1/instances/x/restore"), ("PUT", "/v1/checkpoints/x/1")]:
            r = anon.request(method, url + path)
            assert r.status_code == 401, (method, path, r.text)
            assert "certificate" in r.json()["detail"]


def test_bad_descriptor_names_the_field_and_builds_nothing(bed: Bed, python_bin: str) -> None:
    desc = flowmon_descriptor("10.1.2.3", python_bin)  # no prefix length
    r = bed.call("POST", "h1", "/v1/instances", json={"descriptor": desc})
    assert r.status_code == 422
    assert "network.address" in r.json()["detail"]
    desc = flowmon_descriptor(bed.tb.vnf_address(9), python_bin)
    desc["resources"]["memroy"] = "1Gi"
    r = bed.call("POST", "h1", "/v1/instances", json={"descriptor": desc})
    assert r.status_code == 422 and "resources.memroy" in r.json()["detail"]
    r = bed.call("POST", "h1", "/v1/instances", json={"descriptor": {"id": "BAD ID"}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "id:" in detail and "command" in detail and "network" in detail
    assert _sandboxes(bed, "h1") == []


def test_a_command_that_cannot_start_leaves_nothing(bed: Bed) -> None:
    desc = {"id": "nope", "command": ["/nonexistent/vnf"],
            "network": {"address": bed.tb.vnf_address(10)}}
    r = bed.call("POST", "h1", "/v1/instances", json={"descriptor": desc, "instance_id": "np1"})
    # The launcher execs in the sandbox: the VNF exits 127 at once and is reported so.
    if r.status_code == 201:
        inst = bed.ok("GET", "h1", "/v1/instances/np1")
        assert inst["state"] in ("EXITED", "RUNNING")
        bed.ok("DELETE", "h1", "/v1/instances/np1")
    assert _sandboxes(bed, "h1") == []


def test_unknown_instance_is_404_with_the_id(bed: Bed) -> None:
    for method, path in [("GET", "/v1/instances/ghost"), ("POST", "/v1/instances/ghost/stop"),
                         ("DELETE", "/v1/instances/ghost"),
                         ("POST", "/v1/instances/ghost/checkpoints")]:
        r = bed.call(method, "h1", path)
        assert r.status_code == 404, (method, path, r.text)
        assert "ghost" in r.json()["detail"]
    r = bed.call("POST", "h1", "/v1/instances/ghost/restore", json={})
    assert r.status_code in (404, 409) and "ghost" in r.json()["detail"]


def test_restore_onto_an_address_in_use_is_409_and_nothing_moves(bed: Bed,
                                                                python_bin: str) -> None:
    addr = bed.tb.vnf_address(11)
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": flowmon_descriptor(addr, python_bin), "instance_id": "old"})
    bed.ok("POST", "h1", "/v1/instances/old/checkpoints")
    # While "old" runs, restoring it over itself is refused.
    r = bed.call("POST", "h1", "/v1/instances/old/restore", json={})
    assert r.status_code == 409 and "old" in r.json()["detail"]
    # A new instance takes the address; restoring "old" would make two owners of it.
    bed.ok("DELETE", "h1", "/v1/instances/old")
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": flowmon_descriptor(addr, python_bin), "instance_id": "new"})
    r = bed.call("POST", "h1", "/v1/instances/old/restore", json={})
    assert r.status_code == 409, r.text
    assert addr.split("/")[0] in r.json()["detail"] and "new" in r.json()["detail"]
    assert _sandboxes(bed, "h1") == [f"{bed.tb.host('h1').netns}-new"]
    states = {i["id"]: i["state"] for i in bed.ok("GET", "h1", "/v1/instances")}
    assert states == {"new": "RUNNING"}


def test_push_to_unreachable_peer_is_502_and_says_so(bed: Bed, python_bin: str) -> None:
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": flowmon_descriptor(bed.tb.vnf_address(12), python_bin),
                 "instance_id": "pp"})
    meta = bed.ok("POST", "h1", "/v1/instances/pp/checkpoints")
    bed.crash("h2")
    r = bed.call("POST", "h1", f"/v1/checkpoints/pp/{meta['seq']}/push",
                 json={"peer_url": bed.url("h2")})
    assert r.status_code == 502
    assert "unreachable" in r.json()["detail"]


def test_a_hang_injected_during_a_dump_takes(bed: Bed, python_bin: str) -> None:
    """CRIU seizes the VNF for its dump and resumes it as it found it: a SIGSTOP sent
    meanwhile was swallowed, and the injected "hang" never happened (fault campaigns
    counted such hangs as never detected). The agent now sends it once the dump is over:
    whenever it is injected, the VNF ends up stopped."""
    bed.ok("POST", "h1", "/v1/instances",
           json={"descriptor": flowmon_descriptor(bed.tb.vnf_address(13), python_bin),
                 "instance_id": "hs"})
    pid = bed.ok("GET", "h1", "/v1/instances/hs")["pid"]
    errors: list[str] = []

    def checkpoint() -> None:
        r = bed.call("POST", "h1", "/v1/instances/hs/checkpoints")
        if r.status_code not in (200, 201, 409):  # 409: the dump saw it stopped
            errors.append(f"{r.status_code} {r.text}")

    injected_during = False
    for _ in range(20):  # until an injection lands while the agent is dumping
        worker = threading.Thread(target=checkpoint)
        worker.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and worker.is_alive():
            if bed.ok("GET", "h1", "/v1/instances/hs")["state"] == "CHECKPOINTING":
                bed.ok("POST", "h1", "/v1/instances/hs/inject", json={"fault": "hang"})
                injected_during = True
                break
        worker.join(10)
        if injected_during:
            break
    assert injected_during, "no injection landed during a dump in 20 tries"
    assert not errors, errors
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "T", f"the VNF runs on (state {state}): the SIGSTOP was swallowed"
    os.kill(pid, signal.SIGCONT)
