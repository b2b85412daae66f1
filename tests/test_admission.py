"""Admission at the manager's API: every bad input gets a 4xx that says what was wrong,
and nothing is stored. The manager runs in process behind httpx's ASGI transport (no
agents: the instances these tests need as holders of an address are stored records)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig
from nfvha.web import json_depth, token_matches

NET = "10.9.0.0/16"


def vnfd(vid: str, address: str, **network: Any) -> dict[str, Any]:
    return {"id": vid, "command": ["sleep", "1000"],
            "network": {"address": address, **network}}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Manager, httpx.AsyncClient]]:
    m = Manager(SqliteStore(tmp_path / "m.db"),
                ManagerConfig(token="t", base_url="http://10.9.0.1:8600", vnf_network=NET,
                              max_body=64 * 1024, ops_per_vnf=3,
                              reserved_addresses={"10.9.0.5": "the forwarder (data side)"}))
    m.store.put("host", "h1", {"id": "h1", "url": "http://10.9.0.11:8700"})
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_manager_app(m, manage_lifecycle=False)),
        base_url="http://manager", headers={"Authorization": "Bearer t"})
    try:
        yield m, http
    finally:
        await http.aclose()
        m.store.close()


async def _nothing_stored(m: Manager) -> None:
    assert m.store.list("vnf") == [] and m.store.list("op") == []


async def test_a_huge_body_is_refused_before_it_is_read_or_authenticated(api: Any) -> None:
    m, http = api
    big = b'{"id": "x", "pad": "' + b"a" * 100_000 + b'"}'
    r = await http.post("/nfvha/v1/vnfds", content=big, headers={
        "Authorization": "", "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "64" in r.json()["detail"] or "65536" in r.json()["detail"]
    assert m.store.list("vnfd") == []


async def test_deep_json_is_a_422_not_a_crash(api: Any) -> None:
    m, http = api
    deep = "[" * 5000 + "]" * 5000
    r = await http.post("/vnflcm/v1/vnf_instances", content=deep,
                        headers={"content-type": "application/json"})
    assert r.status_code == 422 and "deeper" in r.json()["detail"]
    deep_yaml = ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))).encode()
    r = await http.post("/nfvha/v1/vnfds", content=deep_yaml,
                        headers={"content-type": "application/yaml"})
    assert r.status_code in (400, 422), r.text
    await _nothing_stored(m)


async def test_names_must_be_text_and_ids_dns_labels(api: Any) -> None:
    m, http = api
    assert (await http.post("/nfvha/v1/vnfds", json=vnfd("fw", "10.9.1.10/16"))).status_code \
        == 201
    cases = [({"vnfInstanceName": "a\ud800b"}, "vnfInstanceName"),
             ({"vnfInstanceName": "bell\x07"}, "U+0007"),
             ({"vnfInstanceName": "n" * 300}, "255"),
             ({"vnfInstanceId": "Fw_1"}, "vnfInstanceId"),
             ({"vnfInstanceId": "-fw"}, "vnfInstanceId")]
    for extra, words in cases:
        body = json.dumps({"vnfdId": "fw", **extra}).encode()  # \ud800 as an escape
        r = await http.post("/vnflcm/v1/vnf_instances", content=body,
                            headers={"content-type": "application/json"})
        assert r.status_code == 400 and words in r.json()["detail"], (extra, r.text)
    await _nothing_stored(m)
    r = await http.post("/vnflcm/v1/vnf_instances",
                        json={"vnfdId": "fw", "vnfInstanceName": "pare-feu ☂ 東京",
                              "vnfInstanceId": "fw-1"})
    assert r.status_code == 201
    r = await http.post("/vnflcm/v1/vnf_instances", json={"vnfdId": "fw",
                                                           "vnfInstanceId": "fw-1"})
    assert r.status_code == 409 and "fw-1" in r.json()["detail"]
    listed = (await http.get("/vnflcm/v1/vnf_instances")).json()
    assert [v["vnfInstanceName"] for v in listed] == ["pare-feu ☂ 東京"]


async def test_a_non_ascii_token_is_refused_not_a_crash(api: Any) -> None:
    _, http = api
    r = await http.get("/vnflcm/v1/vnf_instances",
                       headers={"Authorization": "Bearer tö".encode()})
    assert r.status_code == 401
    assert token_matches("é", "é") and not token_matches("é", "e")


@pytest.mark.parametrize(("address", "words"), [
    ("224.1.2.3/16", "multicast"), ("10.9.0.0/16", "network address"),
    ("10.9.255.255/16", "broadcast"), ("127.0.0.5/8", "loopback"),
    ("0.0.0.0/0", "unspecified"), ("10.9.1.9/32", "prefix")])
async def test_addresses_that_no_host_can_have_are_refused_at_onboarding(
        api: Any, address: str, words: str) -> None:
    m, http = api
    r = await http.post("/nfvha/v1/vnfds", json=vnfd("bad", address))
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert m.store.list("vnfd") == []


async def _instantiate(http: httpx.AsyncClient, vid: str, address: str,
                       **network: Any) -> httpx.Response:
    assert (await http.post("/nfvha/v1/vnfds",
                            json=vnfd(vid, address, **network))).status_code == 201
    assert (await http.post("/vnflcm/v1/vnf_instances",
                            json={"vnfdId": vid, "vnfInstanceId": vid})).status_code == 201
    return await http.post(f"/vnflcm/v1/vnf_instances/{vid}/instantiate", json={})


async def test_an_address_held_elsewhere_is_refused_naming_the_holder(api: Any) -> None:
    m, http = api
    # A running VNF, as the store knows it (no agent behind this manager).
    holder = vnfd("nat", "10.9.1.20/16", service={"address": "10.9.2.1", "port": 5000})
    m.store.put("vnf", "nat", {"id": "nat", "haState": "ACTIVE", "vnfd": holder,
                               "host": "h1", "instantiationState": "INSTANTIATED"})
    cases = [("dup", "10.9.1.20/16", {}, 409, "VNF instance nat"),
             ("svc", "10.9.1.21/16", {"service": {"address": "10.9.2.1", "port": 1}}, 409,
              "nat (its service address)"),
             ("mgr", "10.9.0.1/16", {}, 409, "the manager"),
             ("agt", "10.9.0.11/16", {}, 409, "host h1"),
             # On the data network, but named by no URL (the daemons listen elsewhere).
             ("fwd", "10.9.0.5/16", {}, 409, "the forwarder (data side)"),
             ("far", "10.10.1.1/16", {}, 422, "outside the data network")]
    for vid, address, network, status, words in cases:
        r = await _instantiate(http, vid, address, **network)
        assert r.status_code == status and words in r.json()["detail"], (vid, r.text)
        rec = m.store.get("vnf", vid).data
        assert rec["haState"] == "NOT_INSTANTIATED"
        assert [o for o in m.store.list("op") if o.data["vnfInstanceId"] == vid] == []
    assert m.store.get("vnf", "nat").data["haState"] == "ACTIVE"  # the holder is untouched


async def test_operation_occurrences_are_kept_bounded(api: Any) -> None:
    m, _ = api
    for _ in range(6):
        op = m.ops.new("fw-1", "HEAL", True)
        m.ops.update(op, operationState="COMPLETED")
    m.ops.new("fw-1", "HEAL", True)  # the newest, still running, always stays
    states = [o.data["operationState"] for o in m.store.list("op")]
    assert len(states) == 4 and states.count("COMPLETED") == 3, states


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[["}]}') == 3
    assert json_depth(b'"\\"[["') == 0


# -- what agents send: typed, a malformed report is a 400 and changes nothing ------------

_RUNNING = {"id": "fw-1", "state": "RUNNING", "pid": 42}


@pytest.mark.parametrize(("body", "words"), [
    (b"", "body"),  # was a JSONDecodeError: 500
    (b"[]", "body"),
    (json.dumps({"instances": "fw-1"}).encode(), "instances"),
    (json.dumps({"instances": [{"state": "RUNNING"}]}).encode(), "instances.0.id"),
    (json.dumps({"instances": [{**_RUNNING, "state": "DANCING"}]}).encode(),
     "instances.0.state"),
    (json.dumps({"url": "http://\u0000/"}).encode(), "url"),
    (json.dumps({"url": "10.9.0.11:8700"}).encode(), "url"),
    (json.dumps({"resources": {"mem_available_bytes": "lots"}}).encode(),
     "resources.mem_available_bytes")])
async def test_a_malformed_status_report_is_refused_and_changes_nothing(
        api: Any, body: bytes, words: str) -> None:
    """A report is stored as the host's status and read by placement and reconciliation:
    one the manager cannot read must be refused when it arrives, not break them later."""
    m, http = api
    r = await http.post("/nfvha/v1/hosts/h2/heartbeat", content=body,
                        headers={"content-type": "application/json"})
    assert r.status_code == 400 and words in r.json()["detail"], r.text
    assert m.store.find("host", "h2") is None and "h2" not in m.membership.host_status
    # Placement still works: the onboarded VNF is placed (on no host: 409, not a 500).
    r = await _instantiate(http, "fw", "10.9.1.10/16")
    assert r.status_code < 500, r.text


async def test_a_status_report_keeps_what_the_agent_sent(api: Any) -> None:
    m, http = api
    report = {"host_id": "h2", "url": "http://10.9.0.12:8700", "started_at": 100.0,
              "time": 1.0, "instances": [{**_RUNNING, "netns": "nfvha-h2-fw-1"}],
              "resources": {"load1": 0.5, "mem_available_bytes": 2**30}}
    r = await http.post("/nfvha/v1/hosts/h2/heartbeat", json=report)
    assert r.status_code == 200 and r.json()["need_full"] is False, r.text
    assert m.membership.host_status["h2"] == report
    assert m.store.get("host", "h2").data["url"] == "http://10.9.0.12:8700"
    r = await http.post("/nfvha/v1/hosts/h2/heartbeat",
                        json={"started_at": 100.0, "time": 2.0, "full": False})
    assert r.status_code == 200 and m.membership.host_status["h2"]["time"] == 2.0


@pytest.mark.parametrize(("body", "words"), [
    (b"", "body"), (b"[]", "body"),
    (json.dumps({"type": "instance-exit"}).encode(), "host_id"),  # was a KeyError: 500
    (json.dumps({"type": "instance-exit", "host_id": "h1",
                 "instance": {"id": "fw-1"}}).encode(), "instance.state"),
    (json.dumps({"type": "reboot", "host_id": "h1", "instance": _RUNNING}).encode(), "type")])
async def test_a_malformed_event_is_refused(api: Any, body: bytes, words: str) -> None:
    _, http = api
    r = await http.post("/nfvha/v1/events", content=body,
                        headers={"content-type": "application/json"})
    assert r.status_code == 400 and words in r.json()["detail"], r.text


async def test_an_exit_event_is_acted_on(api: Any) -> None:
    """The typed event still reaches the manager: the exit of an ACTIVE VNF on its host
    is a failure to recover."""
    m, http = api
    m.store.put("vnf", "nat", {"id": "nat", "haState": "ACTIVE", "host": "h1", "pid": 42,
                               "vnfd": vnfd("nat", "10.9.1.20/16")})
    r = await http.post("/nfvha/v1/events", json={
        "type": "instance-exit", "host_id": "h1", "at": 5.0,
        "instance": {"id": "nat", "state": "EXITED", "pid": 42,
                     "exit": {"code": 1, "reason": "exit code 1", "at": 4.5}}})
    assert r.status_code == 204, r.text
    failure = m.runtime["nat"].failure
    assert failure is not None and failure[0] == "process-exit" and m.runtime["nat"].failed_at \
        == 4.5


async def test_an_exit_of_an_earlier_incarnation_with_the_same_pid_is_ignored(
        api: Any) -> None:
    """CRIU restores a VNF with its old pid: an exit event delivered late, after the VNF
    was restored on the same host, names the running VNF's pid. Its start time tells it
    apart; acting on it would recover a running VNF (seen once in 20 in the cluster
    soak: a second recovery 30 ms after the first)."""
    m, http = api
    m.store.put("vnf", "nat", {"id": "nat", "haState": "ACTIVE", "host": "h1", "pid": 42,
                               "incarnation": 200.0, "vnfd": vnfd("nat", "10.9.1.20/16")})
    event = {"type": "instance-exit", "host_id": "h1", "at": 150.0,
             "instance": {"id": "nat", "state": "EXITED", "pid": 42, "started_at": 100.0,
                          "exit": {"signal": 9, "reason": "killed by signal 9", "at": 149.0}}}
    r = await http.post("/nfvha/v1/events", json=event)
    assert r.status_code == 204, r.text
    assert m._rt("nat").failure is None
    # The same through a status report (an agent's report from before the restore).
    m.heartbeat("h1", {"url": "http://h1:9000", "instances": [event["instance"]]})
    assert m._rt("nat").failure is None
    # The running incarnation's exit is a failure.
    event["instance"]["started_at"] = 200.0  # type: ignore[index]
    r = await http.post("/nfvha/v1/events", json=event)
    assert r.status_code == 204 and m.runtime["nat"].failure is not None
