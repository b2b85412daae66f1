"""Shared test settings: every resource a test makes is named with TEST_PREFIX."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import httpx

    from nfvha.vnfm.manager import Manager

from nfvha.demo import VNF_PYTHON as _VNF_PYTHON

TEST_PREFIX = "nfvt"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "vnfs"
#: VNFs run in a private root: the example programs are a read-only volume there, and the
#: interpreter is Debian's (the project's virtualenv is not visible).
VNF_PYTHON = _VNF_PYTHON


def real_system_ready() -> str | None:
    """Why e2e tests cannot run here, or None. `make test` installs everything, so a
    missing piece fails loudly rather than skipping quietly."""
    if os.geteuid() != 0:
        return "e2e tests need root (namespaces, cgroups, CRIU)"
    for tool in ("ip", "criu", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; run `make deps`"
    return None


@pytest.fixture(scope="session")
def python_bin() -> str:
    return VNF_PYTHON


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Manager]:
    """An in-process manager on a fresh SQLite store: no hosts, no agents, token "t"."""
    from nfvha.store.sqlite import SqliteStore
    from nfvha.vnfm.manager import Manager, ManagerConfig

    m = Manager(SqliteStore(tmp_path / "m.db"), ManagerConfig(token="t"))
    try:
        yield m
    finally:
        await m.close()
        m.store.close()


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    """One throwaway etcd member per test module (tests/etcdmember.py); each test takes a
    key prefix of its own. Per module, not per session: a session fixture ends after
    `test_zz_leftovers` has looked for leftover etcd data directories. A missing etcd
    fails the tests that need it: `make test` installs it."""
    from tests.etcdmember import etcd_member, etcd_missing

    missing = etcd_missing()
    if missing:
        pytest.fail(missing)
    with etcd_member() as url:
        yield url


@pytest.fixture(scope="module")
def fast_etcd() -> Iterator[str]:
    """`etcd_url`, but a member whose shortest lease is 1 s (at etcd's defaults it is
    2 s): for the leader election and the manager cluster."""
    from tests.etcdmember import FAST_LEASES, etcd_missing, etcd_process

    missing = etcd_missing()
    if missing:
        pytest.fail(missing)
    with etcd_process(extra_args=FAST_LEASES) as member:
        yield member.url


@contextlib.asynccontextmanager
async def manager_with_fake_agent(
        tmp_path: Path, agent: Callable[[httpx.Request], httpx.Response] | object,
        vnfd: dict[str, object]) -> AsyncIterator[tuple[Manager, httpx.AsyncClient]]:
    """An in-process manager whose one host h1 is ``agent`` behind httpx's
    ``MockTransport`` (no namespaces), its API client, and the descriptor onboarded with
    an instance ``vnfd["id"]`` created (not instantiated)."""
    import httpx

    from nfvha.store.sqlite import SqliteStore
    from nfvha.vnfm.api import create_manager_app
    from nfvha.vnfm.manager import Manager, ManagerConfig

    m = Manager(SqliteStore(tmp_path / "m.db"),
                ManagerConfig(token="t", base_url="http://10.9.0.1:8600"))
    await m.http.aclose()
    m.http = httpx.AsyncClient(transport=httpx.MockTransport(agent))  # type: ignore[arg-type]
    m.heartbeat("h1", {"host_id": "h1", "url": "http://10.9.0.11:8700", "started_at": 1.0,
                       "time": 1.0, "instances": [], "resources": {}})
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_manager_app(m, manage_lifecycle=False)),
        base_url="http://manager", headers={"Authorization": "Bearer t"})
    try:
        assert (await http.post("/nfvha/v1/vnfds", json=vnfd)).status_code == 201
        assert (await http.post("/vnflcm/v1/vnf_instances", json={
            "vnfdId": vnfd["id"], "vnfInstanceId": vnfd["id"]})).status_code == 201
        yield m, http
    finally:
        await http.aclose()
        await m.close()
        m.store.close()
