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

from tests.conftest import EXAMPLES, TEST_PREFIX, real_system_ready

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
        self.http = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {tb.token}"})

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
    name = f"{TEST_PREFIX}{os.getpid() % 1000}{i}"[:8]
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
    return {"id": vnfd_id, "command": [python, str(EXAMPLES / "flowmon.py")],
            "network": {"address": address}, "resources": {"memory": "128Mi", "cpu": 1.0}}


def tcpcounter_descriptor(address: str, python: str) -> dict[str, Any]:
    return {"id": "tcpcounter", "command": [python, str(EXAMPLES / "tcpcounter.py")],
            "network": {"address": address}, "resources": {"memory": "128Mi", "cpu": 1.0}}


def keep_logs(tb: Any) -> None:
    """Copy a testbed's daemon logs to /tmp/nfvha-test-logs/<name> before teardown, for
    post-mortems of failed runs (the testbed's own directory is removed)."""
    import shutil

    keep = Path("/tmp/nfvha-test-logs") / tb.name
    shutil.rmtree(keep, ignore_errors=True)
    with contextlib.suppress(OSError):
        shutil.copytree(tb.log_dir, keep, ignore=shutil.ignore_patterns("vnf"))
