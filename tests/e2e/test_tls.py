"""Identity and transport for real: TLS on every daemon, callers known by certificate,
and a host reporting (HTTP or UDP heartbeat) only for itself."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.ha.liveness import decode, encode, host_key, load_key_file
from nfvha.pki import init_ca
from tests.e2e.conftest import Bed, Mgr, manager_bed
from tests.vnfclient import wait_until


def test_plain_http_is_refused_on_every_daemon(bed: Bed) -> None:
    url = bed.url("h1")
    assert url.startswith("https://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=3)
    # The server's certificate is the testbed CA's; a client trusting only the system's
    # CAs refuses it.
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=3)


def test_a_certificate_from_another_ca_is_refused(bed: Bed, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other")
    forged = other.issue("manager", out_dir=tmp_path / "f")
    ctx = ssl.create_default_context(cafile=str(bed.tb.ca_file))
    ctx.load_cert_chain(str(forged.cert), str(forged.key))
    with pytest.raises(httpx.HTTPError):
        httpx.get(bed.url("h1") + "/v1/status", verify=ctx, timeout=3)
    # The real manager's certificate is taken.
    assert bed.ok("GET", "h1", "/v1/status")["host_id"] == "h1"


def test_an_agent_takes_lifecycle_calls_from_the_manager_only(bed: Bed) -> None:
    url = bed.url("h1")
    with httpx.Client(timeout=5, verify=bed.tb.client_context("agent", "h2")) as peer:
        for method, path in [("POST", "/v1/instances"), ("POST", "/v1/fence"),
                             ("POST", "/v1/instances/x/inject"), ("GET", "/v1/status"),
                             ("POST", "/v1/instances/x/checkpoints")]:
            r = peer.request(method, url + path, json={})
            assert r.status_code == 403, (method, path, r.text)
            assert "agent:h2" in r.json()["detail"] and "manager" in r.json()["detail"]
        # Checkpoint images come from peer agents: past authorization (a bad upload).
        r = peer.put(url + "/v1/checkpoints/x/1", content=b"not a tar")
        assert r.status_code not in (401, 403) and r.status_code < 500, r.text
    r = bed.call("PUT", "h1", "/v1/checkpoints/x/1", content=b"not a tar")
    assert r.status_code == 403 and "peer agent" in r.json()["detail"]


@pytest.fixture(scope="module")
def mgr() -> Iterator[Mgr]:
    with manager_bed("t", 150, 20, n_hosts=2) as m:
        wait_until(lambda: len(m.ok("GET", "/nfvha/v1/hosts")) == 2, 15)
        yield m


def _as_agent(mgr: Mgr, host: str) -> httpx.Client:
    return httpx.Client(timeout=5, verify=mgr.tb.client_context("agent", host))


def test_a_host_reports_only_for_itself(mgr: Mgr) -> None:
    status = {"host_id": "h1", "url": mgr.tb.host("h2").url, "instances": []}
    with _as_agent(mgr, "h2") as h2:
        r = h2.post(mgr.url + "/nfvha/v1/hosts/h1/heartbeat", json=status)
        assert r.status_code == 403 and "agent:h2" in r.json()["detail"], r.text
        r = h2.post(mgr.url + "/nfvha/v1/hosts/phantom/heartbeat",
                    json={**status, "host_id": "phantom"})
        assert r.status_code == 403, r.text
        r = h2.post(mgr.url + "/nfvha/v1/events", json={
            "type": "instance-exit", "host_id": "h1", "instance": {"id": "x", "state": "EXITED"}})
        assert r.status_code == 403, r.text
        # An agent's certificate does not make it an operator.
        r = h2.get(mgr.url + "/vnflcm/v1/vnf_instances")
        assert r.status_code == 401, r.text
    # The operators' token does not stand in for a host's certificate either.
    r = mgr.http.post(mgr.url + "/nfvha/v1/hosts/phantom/heartbeat", json=status)
    assert r.status_code == 401 and "agent" in r.json()["detail"], r.text
    assert sorted(h["id"] for h in mgr.ok("GET", "/nfvha/v1/hosts")) == ["h1", "h2"]


def test_a_heartbeat_for_another_host_is_dropped(mgr: Mgr) -> None:
    """h2's guard key signs a heartbeat naming h1: the manager drops it, so h1's
    liveness cannot be faked by another host."""
    pki = mgr.tb.pki_dir
    key2, _ = load_key_file(pki / "agent-h2.liveness", "h2")
    key1, _ = load_key_file(pki / "agent-h1.liveness", "h1")
    assert key1 != key2
    manager = (mgr.tb.mgmt_gateway, 8600)

    def send(key: bytes, host: str) -> Any:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.sendto(encode(key, {"k": "hb", "h": host, "i": time.time(), "s": 1,
                                  "t": time.time(), "l": 0.5}), manager)
            try:
                return s.recv(9000)
            except TimeoutError:
                return None

    assert send(key2, "h1") is None  # dropped: no answer, no lease, h1 not heard
    # A host the manager does not know yet (so the real guards' sequences are left
    # alone): answered under its own key only.
    key9 = host_key(bytes.fromhex((pki / "liveness.secret").read_text().strip()), "h9")
    assert send(key2, "h9") is None
    reply = send(key9, "h9")
    assert reply is not None and json.loads(reply[16:])["k"] == "hb-ack"
    assert decode(key9, reply) is not None and decode(key2, reply) is None


def test_host_removal_is_refused_while_it_holds_vnfs(mgr: Mgr, python_bin: str) -> None:
    from tests.e2e.conftest import flowmon_descriptor

    vnf = mgr.deploy(flowmon_descriptor(mgr.tb.vnf_address(3), python_bin), "fm-rm")
    host = vnf["host"]
    r = mgr.http.delete(f"{mgr.url}/nfvha/v1/hosts/{host}")
    assert r.status_code == 409 and "fm-rm" in r.json()["detail"], r.text
    r = mgr.http.delete(f"{mgr.url}/nfvha/v1/hosts/nope")
    assert r.status_code == 404
    mgr.ok("POST", "/vnflcm/v1/vnf_instances/fm-rm/terminate", json={})
    wait_until(lambda: mgr.vnf("fm-rm")["haState"] == "NOT_INSTANTIATED"
               or mgr.vnf("fm-rm").get("instantiationState") == "NOT_INSTANTIATED", 15)
    mgr.ok("DELETE", "/vnflcm/v1/vnf_instances/fm-rm")
    # Stop the host's agent for good, or its next report registers the host again.
    import asyncio

    asyncio.run(mgr.tb.crash_host(host))
    r = mgr.http.delete(f"{mgr.url}/nfvha/v1/hosts/{host}")
    assert r.status_code == 200 and r.json()["removed"] is True, r.text
    assert host not in [h["id"] for h in mgr.ok("GET", "/nfvha/v1/hosts")]
    assert not any(a.get("managedObjectId") == host and a.get("alarmClearedTime") is None
                   for a in mgr.alarms())
