"""Fixtures for tests that run for real: emulated hosts, agents, CRIU, traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.client import ManagerClient
from nfvha.demo import python_vnf
from tests.conftest import EXAMPLES, TEST_PREFIX, real_system_ready
from tests.vnfclient import wait_until

_counter = itertools.count(1)

# These tests check correctness (state kept, never two live copies), not detection speed,
# on a 2-core machine running three agents, a manager, a forwarder and several VNFs:
# fault timings with more slack than the defaults keep CPU starvation from being taken
# for a host loss. benchmarks/recovery.py measures the defaults.
TOLERANT_AGENT = ["--fencing-timeout", "0.5"]
TOLERANT_MANAGER = ["--suspect-after", "0.3", "--fencing-timeout", "0.5"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _require_real_system() -> None:
    why = real_system_ready()
    if why:
        pytest.fail(why, pytrace=False)


class Bed:
    """A running testbed plus a client for its agents."""

    def __init__(self, tb: Any) -> None:
        self.tb = tb
        # Agents take calls from the manager's certificate only: tests act as the manager.
        self.http = httpx.Client(timeout=30.0, verify=tb.client_context("manager"),
                                 headers={"Authorization": f"Bearer {tb.token}"})

    def url(self, host: str) -> str:
        return str(self.tb.host(host).url)

    def call(self, method: str, host: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, self.url(host) + path, **kw)

    def ok(self, method: str, host: str, path: str, **kw: Any) -> Any:
        r = self.call(method, host, path, **kw)
        assert r.status_code < 300, f"{method} {path} on {host}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def crash(self, host: str) -> None:
        asyncio.run(self.tb.crash_host(host))

    def close(self) -> None:
        self.http.close()


def _make_bed(n_hosts: int) -> Bed:
    from nfvha.testbed import Testbed

    i = next(_counter)
    name = f"{TEST_PREFIX}{_base36(os.getpid() % 1000 * 64 + i, 4)}"
    tb = Testbed(name=name, n_hosts=n_hosts, subnet=f"10.{200 + (os.getpid() + i) % 50}.0.0/16",
                 state_dir=Path("/run/nfvha-test"))
    asyncio.run(tb.up())
    return Bed(tb)


@pytest.fixture
def bed() -> Iterator[Bed]:
    """A fresh two-host testbed per test (crash tests destroy hosts)."""
    b = _make_bed(2)
    try:
        yield b
    finally:
        b.close()
        asyncio.run(b.tb.down())


def flowmon_descriptor(address: str, python: str, vnfd_id: str = "flowmon") -> dict[str, Any]:
    return {"id": vnfd_id, **python_vnf(EXAMPLES / "flowmon.py"),
            "network": {"address": address}, "resources": {"memory": "128Mi", "cpu": 1.0}}


def tcpcounter_descriptor(address: str, python: str) -> dict[str, Any]:
    return {"id": "tcpcounter", **python_vnf(EXAMPLES / "tcpcounter.py"),
            "network": {"address": address}, "resources": {"memory": "128Mi", "cpu": 1.0}}


class Mgr:
    """A testbed with a manager, and a client of the manager's API."""

    def __init__(self, tb: Any) -> None:
        self.tb = tb
        self.url = tb.manager_url  # the first manager (in a cluster, not always the leader)
        # An operator: the operator credential, over TLS checked against the testbed's CA.
        self.verify = tb.client_context(None)
        self.client = ManagerClient(tb.manager_urls, tb.operator_token, verify=self.verify,
                                    timeout=30)
        self.http = self.client.http  # for calls the client has no method for
        # Agents take calls from the manager's certificate only: for tests that look
        # at an agent directly.
        self.agents = httpx.Client(timeout=30, verify=tb.client_context("manager"))

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON of a successful answer (the response itself for a 202); a refusal
        raises its typed error (nfvha.client), whose message names the call."""
        r = self.client.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content and r.status_code != 202 else r

    def vnf(self, iid: str) -> dict[str, Any]:
        return self.client.instance(iid)

    def deploy(self, desc: dict[str, Any], iid: str) -> dict[str, Any]:
        self.client.onboard(desc)
        self.client.create(iid, desc["id"])
        op = self.client.instantiate(iid)
        assert "/vnflcm/v1/vnf_lcm_op_occs/" in op
        wait_until(lambda: self.vnf(iid)["haState"] == "ACTIVE", 15)
        return self.vnf(iid)

    def checkpoints(self, iid: str) -> list[dict[str, Any]]:
        return sorted(self.client.checkpoints(iid), key=lambda c: c["seq"])

    def heals(self, iid: str) -> list[dict[str, Any]]:
        return [o for o in self.client.ops(iid) if o["operation"] == "HEAL"]

    def wait_heal(self, iid: str, n: int = 1, timeout: float = 15) -> dict[str, Any]:
        wait_until(lambda: len([o for o in self.heals(iid)
                                if o["operationState"] in ("COMPLETED", "FAILED")]) >= n,
                   timeout)
        op = [o for o in self.heals(iid) if o["operationState"] in ("COMPLETED", "FAILED")][-1]
        assert op["operationState"] == "COMPLETED", op
        return op

    def wait_checkpoint_after(self, iid: str, t: float, timeout: float = 10) -> dict[str, Any]:
        wait_until(lambda: any(c["cutAt"] > t for c in self.checkpoints(iid)), timeout)
        return self.checkpoints(iid)[-1]

    def alarms(self) -> list[dict[str, Any]]:
        return self.client.alarms()


_beds = itertools.count(1)


@contextlib.contextmanager
def manager_bed(letter: str, net_base: int, net_span: int, *, n_hosts: int = 3,
                **testbed: Any) -> Iterator[Mgr]:
    """A testbed with a manager (and whatever else ``testbed`` asks for), its logs kept
    and everything removed afterwards, even when the test fails. ``letter`` and the
    subnet range keep concurrent runs and test files apart."""
    from nfvha.testbed import Testbed

    i = next(_beds)
    name = f"{TEST_PREFIX}{letter}{_base36(os.getpid() % 100 * 400 + i, 3)}"
    tb = Testbed(name=name, n_hosts=n_hosts, with_manager=True,
                 subnet=f"10.{net_base + (os.getpid() + i) % net_span}.0.0/16",
                 state_dir=Path("/run/nfvha-test"), **testbed)
    asyncio.run(tb.up())
    m = Mgr(tb)
    try:
        yield m
    finally:
        m.client.close()
        m.agents.close()
        keep_logs(tb)
        asyncio.run(tb.down())


def _base36(n: int, width: int) -> str:
    """``n`` in ``width`` base-36 digits: testbed names are at most 8 characters, and
    they must differ within a run, or the logs kept after each test overwrite
    each other (``keep_logs``)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out


KEPT_LOGS = Path("/tmp/nfvha-test-logs")
KEPT_LOGS_MAX = 60  # testbeds' logs kept: a few full runs' worth


def keep_logs(tb: Any) -> None:
    """Copy a testbed's daemon logs to /tmp/nfvha-test-logs/<name> before teardown, for
    post-mortems of failed runs (the testbed's own directory is removed); only the newest
    ``KEPT_LOGS_MAX`` are kept, or every run would add to them for good."""
    import shutil

    keep = KEPT_LOGS / tb.name
    shutil.rmtree(keep, ignore_errors=True)
    with contextlib.suppress(OSError):
        shutil.copytree(tb.log_dir, keep, ignore=shutil.ignore_patterns("vnf"))
    with contextlib.suppress(OSError):
        kept = sorted((d for d in KEPT_LOGS.iterdir() if d.is_dir()),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for old in kept[KEPT_LOGS_MAX:]:
            shutil.rmtree(old, ignore_errors=True)
