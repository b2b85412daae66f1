"""Prometheus metrics, scraped for real: the recovery a test causes shows up in them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_manager import Mgr, _warm, flowmon, mgr  # noqa: F401  (fixture)


def scrape(url: str, token: str, verify: Any = True,
           ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, parsed by Prometheus' own text parser."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # "": a certificate
    r = httpx.get(url + "/metrics", headers=headers, timeout=10, verify=verify)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    want = tuple(sorted(labels.items()))
    for (n, lab), v in samples.items():
        if n == name and all(item in lab for item in want):
            return v
    return None


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Daemons started from now on log JSON lines (the testbed passes the env on)."""
    monkeypatch.setenv("NFVHA_LOG_JSON", "1")
    yield


def test_metrics_show_the_recovery_and_checkpoints(json_logs: None, mgr: Mgr,  # noqa: F811
                                                   python_bin: str) -> None:
    addr = mgr.tb.vnf_address(1)
    ip = addr.split("/")[0]
    vnf = mgr.deploy(flowmon(addr, python_bin), "fm-m")
    flow, _sent = _warm(mgr, ip, "fm-m")

    before = scrape(mgr.url, mgr.tb.viewer_token, mgr.verify)
    assert value(before, "nfvha_recoveries_total", failure="process-exit") in (None, 0.0)
    assert value(before, "nfvha_host_up", host=vnf["host"]) == 1.0
    age = value(before, "nfvha_checkpoint_age_seconds", vnf="fm-m")
    assert age is not None and 0 <= age < 10
    assert (value(before, "nfvha_checkpoint_duration_seconds_count") or 0) >= 1
    assert (value(before, "nfvha_checkpoint_size_bytes_sum") or 0) > 0

    with flow:
        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-m/inject", json={"fault": "kill"})
        op = mgr.wait_heal("fm-m")
    strategy = op["nfvha"]["strategy"]

    after = scrape(mgr.url, mgr.tb.viewer_token, mgr.verify)
    assert value(after, "nfvha_recoveries_total", failure="process-exit", strategy=strategy,
                 result="success") == 1.0
    assert value(after, "nfvha_downtime_seconds_count", failure="process-exit",
                 strategy=strategy) == 1.0
    downtime = value(after, "nfvha_downtime_seconds_sum", failure="process-exit",
                     strategy=strategy)
    assert downtime is not None and 0 < downtime * 1000 <= op["nfvha"]["phases"]["downtimeMs"] + 1
    assert value(after, "nfvha_detection_seconds_count", failure="process-exit") == 1.0
    assert value(after, "nfvha_alarms_raised_total", fault_type="process-exit") == 1.0
    assert value(after, "nfvha_vnf_state", vnf="fm-m", state="ACTIVE") == 1.0

    # The agent of the host that restored it saw the restore and the checkpoints.
    agent = mgr.tb.hosts[op["nfvha"]["targetHost"]]
    a = scrape(agent.url, "", mgr.tb.client_context("manager"))  # the manager's scrape
    assert value(a, "nfvha_agent_restore_seconds_count", result="success") == 1.0
    assert (value(a, "nfvha_agent_checkpoint_frozen_seconds_count") or 0) >= 1
    # Status reports: on every change (the restore, checkpoints), not on a fixed beat.
    assert (value(a, "nfvha_agent_heartbeats_total", result="ok") or 0) >= 1
    assert value(a, "nfvha_agent_host_lease_left_seconds") is not None
    assert value(a, "nfvha_agent_fenced") == 0.0

    # The manager's JSON log has one line for that recovery decision, with its reason.
    lines = [json.loads(line) for line in
             (mgr.tb.log_dir / "manager.log").read_text().splitlines()
             if line.startswith("{")]
    assert lines, "the manager wrote no JSON log lines"
    recover = [r for r in lines if r.get("decision") == "recover" and r.get("vnf") == "fm-m"]
    assert len(recover) == 1, recover
    assert recover[0]["strategy"] == strategy and recover[0]["reason"]
    assert recover[0]["op"] == op["id"]
    assert any(r.get("decision") == "place" and r.get("vnf") == "fm-m" for r in lines)


def test_metrics_need_the_token(mgr: Mgr) -> None:  # noqa: F811
    for url in (mgr.url, next(iter(mgr.tb.hosts.values())).url):
        # No credential: neither a token nor a client certificate (the CA is trusted).
        r = httpx.get(url + "/metrics", timeout=5, verify=mgr.verify)
        assert r.status_code == 401
