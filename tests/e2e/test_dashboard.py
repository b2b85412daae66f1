"""Acceptance of the dashboard: headless Chromium watches a real host crash, live, and
a leader change of a manager cluster.

The page is opened once; the host is crashed through the testbed; the test reads what
the page shows (its DOM, as a person would see it) until the host is down and the VNF is
ACTIVE on another host with the recovery in the timeline — never reloading the page.
The cluster test opens the page on a follower of two managers on a real etcd, and
watches it show the leader's work and then the follower taking over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from nfvha.ha.election import ElectionTimings, LeaderElection
from nfvha.store import EtcdStore
from nfvha.store.etcd import EtcdClient
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.manager import Manager, ManagerConfig
from tests.conftest import REPO, TEST_PREFIX
from tests.e2e import test_manager as tm
from tests.test_store_contract import wipe_etcd_prefix

mgr = tm.mgr  # the testbed-with-manager fixture, shared
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOGS = Path("/tmp/nfvha-test-logs")
SCREENSHOT = LOGS / "dashboard.png"
DOCS_COPY = REPO / "docs" / "img" / "dashboard.png"

# What the page shows, read from its DOM in one go.
_READ_PAGE = """
const q = (s) => [...document.querySelectorAll(s)];
return {
  conn: document.body.dataset.conn,
  page: window.nfvhaPageId,
  hosts: Object.fromEntries(q('#hosts [data-host]').map(e =>
    [e.dataset.host, e.dataset.fenced === 'true' ? 'FENCED' : e.dataset.state])),
  vnfs: Object.fromEntries(q('#vnfs [data-vnf]').map(e =>
    [e.dataset.vnf, {state: e.dataset.state, host: e.dataset.host}])),
  checkpointHost: Object.fromEntries(q('#vnfs [data-vnf]').map(e =>
    [e.dataset.vnf, e.dataset.checkpointHost])),
  heals: q('#timeline li[data-operation=HEAL]').map(e =>
    ({vnf: e.dataset.vnf, state: e.dataset.state, target: e.dataset.target,
      text: e.innerText})),
  hostEvents: q('#timeline li[data-kind=host]').map(e =>
    ({host: e.dataset.host, state: e.dataset.state})),
  leader: {...document.getElementById('leader').dataset,
           text: document.getElementById('leader').innerText},
  charts: q('#charts figure').map(e => e.dataset.vnf),
  chartPoints: Object.fromEntries(q('#charts figure').map(e =>
    [e.dataset.vnf, Number(e.dataset.checkpoints)])),
};
"""


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (our private user-data dir)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
    return out


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Debian's chromedriver (nothing is downloaded);
    the driver, the browser and its profile are gone afterwards, also on failure."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run `make deps` (installs chromium, "
                        "chromium-driver)", pytrace=False)
    LOGS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="nfvha-dashboard-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-background-timer-throttling", "--window-size=1360,1500",
                f"--user-data-dir={profile}",
                # The testbed's CA is its own, not in this throwaway profile's store.
                "--ignore-certificate-errors"):
        opts.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER,
                      log_output=str(LOGS / "dashboard-chromedriver.log"))
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=opts)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        with contextlib.suppress(Exception):
            service.stop()
        # Whatever survived quit() (a renderer, a crashed driver) is ours by its profile.
        deadline = time.monotonic() + 5
        while (left := _pids_using(profile)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        shutil.rmtree(profile, ignore_errors=True)


def _wait_page(driver: Any, cond: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    from selenium.common.exceptions import JavascriptException

    while time.monotonic() < deadline:
        try:
            seen = driver.execute_script(_READ_PAGE)
        except JavascriptException:  # the page not built yet (a loaded machine): again
            time.sleep(0.1)
            continue
        if cond(seen):
            return seen
        time.sleep(0.1)
    driver.save_screenshot(str(LOGS / "dashboard-failed.png"))
    raise AssertionError(f"the dashboard did not show {what} within {timeout:.0f} s; it "
                         f"shows {seen} (screenshot {LOGS / 'dashboard-failed.png'})")


def test_dashboard_shows_host_crash_and_remote_restore_live(
        mgr: tm.Mgr, python_bin: str, browser: Any) -> None:
    addr = mgr.tb.vnf_address(7)
    desc = tm.flowmon(addr, python_bin, recovery={"host-loss": ["restore-remote"]})
    vnf = mgr.deploy(desc, "fm-d")
    mgr.wait_checkpoint_after("fm-d", time.time())
    home = vnf["host"]
    hosts = set(mgr.tb.hosts)

    started = time.monotonic()
    browser.get(f"{mgr.url}/#token={mgr.tb.viewer_token}")  # reads only
    before = _wait_page(browser, lambda p: p["conn"] == "live"
                        and p["hosts"] == dict.fromkeys(hosts, "UP")
                        and p["vnfs"].get("fm-d") == {"state": "ACTIVE", "host": home}
                        and p["charts"] == ["fm-d"], 20, f"3 UP hosts and fm-d on {home}")
    assert "token" not in browser.current_url  # taken out of the address bar
    # One manager: it leads, and the header says there is no cluster.
    assert before["leader"]["mode"] == "single" and before["leader"]["leading"] == "true"
    assert before["leader"]["text"] == "single manager"

    asyncio.run(mgr.tb.crash_host(home))
    crashed = time.monotonic()
    after = _wait_page(
        browser, lambda p: p["hosts"].get(home) in ("DOWN", "FENCED")
        and p["vnfs"]["fm-d"]["state"] == "ACTIVE" and p["vnfs"]["fm-d"]["host"] != home
        and any(h["vnf"] == "fm-d" and h["state"] == "COMPLETED" for h in p["heals"]),
        30, f"{home} down and fm-d ACTIVE elsewhere")
    shown = time.monotonic() - crashed
    op = mgr.wait_heal("fm-d")

    assert after["page"] == before["page"], "the page was reloaded"
    assert after["conn"] == "live"
    assert after["vnfs"]["fm-d"]["host"] == op["nfvha"]["targetHost"] in hosts - {home}
    (heal,) = [h for h in after["heals"] if h["vnf"] == "fm-d"]
    assert heal["target"] == op["nfvha"]["targetHost"]
    assert "host-loss" in heal["text"] and "restore-remote" in heal["text"]
    assert {"host": home, "state": "DOWN"} in after["hostEvents"]
    assert all(after["hosts"][h] == "UP" for h in hosts - {home})
    # The page keeps following: the lost host is shown fenced once its timeout passed,
    # and the checkpoints the new host takes land in the table and the cadence chart.
    n = after["chartPoints"]["fm-d"]
    target = after["vnfs"]["fm-d"]["host"]
    _wait_page(browser, lambda p: p["hosts"].get(home) == "FENCED"
               and p["checkpointHost"]["fm-d"] == target and p["chartPoints"]["fm-d"] >= n + 4,
               15, f"{home} fenced and new checkpoints of fm-d taken on {target}")

    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000, "the screenshot is empty"
    if os.environ.get("NFVHA_UPDATE_DOCS_SCREENSHOT"):
        # Tests leave the repository alone unless asked to refresh the docs' picture.
        DOCS_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_COPY)
    print(f"\ndashboard: page live in {crashed - started:.1f} s; after crashing {home}, "
          f"showed fm-d ACTIVE on {after['vnfs']['fm-d']['host']} {shown:.1f} s later, "
          f"without reload; screenshot {SCREENSHOT}")


# -- a manager cluster: the page on a follower, through a leader change -------------------


@dataclass
class Member:
    name: str
    url: str
    manager: Manager
    app: Any
    server: uvicorn.Server
    serving: asyncio.Task[None]


class Members:
    """Members of one manager cluster on a real etcd (1 s leases), each serving its API
    and dashboard on a port of 127.0.0.1, the URL it advertises."""

    def __init__(self, etcd: str) -> None:
        self.etcd = etcd
        self.prefix = f"/{TEST_PREFIX}/{uuid.uuid4().hex}"
        self.running: dict[str, Member] = {}

    async def start(self, name: str) -> Member:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        election = LeaderElection(EtcdClient([self.etcd], timeout=0.3),
                                  f"{self.prefix}/leader", name, 1, url=url,
                                  timings=ElectionTimings.from_ttl(1, poll_interval=0.02))
        m = Manager(EtcdStore([self.etcd], prefix=self.prefix),
                    ManagerConfig(token="t", base_url=url), election=election)
        await m.start()
        app = create_manager_app(m, manage_lifecycle=False)
        server = uvicorn.Server(uvicorn.Config(app, log_level="error",
                                               timeout_graceful_shutdown=2))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        self.running[name] = Member(name, url, m, app, server, serving)
        return self.running[name]

    async def stop(self, name: str) -> None:
        """As `nfvha manager` stops: open dashboard streams end, the member resigns (the
        other one takes over at once)."""
        x = self.running.pop(name)
        for hook in getattr(x.app.state, "on_stop", []):
            hook()
        x.server.should_exit = True
        await x.manager.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(x.serving, 5)
        assert x.manager.election is not None
        x.manager.election.client.close()
        x.manager.store.close()


@pytest.fixture
async def members(fast_etcd: str) -> AsyncIterator[Members]:
    ms = Members(fast_etcd)
    try:
        yield ms
    finally:
        for name in list(ms.running):
            await ms.stop(name)
        wipe_etcd_prefix(fast_etcd, ms.prefix)


async def test_dashboard_on_a_follower_shows_the_leader_and_carries_on_when_it_takes_over(
        members: Members, browser: Any) -> None:
    m1 = await members.start("m1")
    deadline = time.monotonic() + 3
    while not m1.manager.acting:
        assert time.monotonic() < deadline, "m1 did not lead"
        await asyncio.sleep(0.02)
    m2 = await members.start("m2")

    def wait(cond: Any, timeout: float, what: str) -> Any:
        return asyncio.to_thread(_wait_page, browser, cond, timeout, what)

    await asyncio.to_thread(browser.get, f"{m2.url}/#token=t")
    before = await wait(lambda p: p["conn"] == "live" and p["leader"].get("leader") == "m1",
                        10, "the page on m2 live, naming m1 the leader")
    assert before["leader"]["mode"] == "cluster" and before["leader"]["member"] == "m2"
    assert before["leader"]["leading"] == "false"
    assert "leader m1" in before["leader"]["text"] and "m2, a follower" in before["leader"]["text"]
    term = int(before["leader"]["term"])

    # The leader's work reaches the follower's page, though no event does.
    async with httpx.AsyncClient(base_url=m1.url, headers={"Authorization": "Bearer t"}) as c:
        assert (await c.post("/nfvha/v1/vnfds", json={
            "id": "fw", "command": ["sleep", "1000"],
            "network": {"address": "10.9.1.10/16"}, "ha": {"backups": 0}})).status_code == 201
        r = await c.post("/vnflcm/v1/vnf_instances",
                         json={"vnfdId": "fw", "vnfInstanceId": "fw-1"})
        assert r.status_code == 201, r.text
    await wait(lambda p: "fw-1" in p["vnfs"], 5, "fw-1, created on the leader")

    # The leader goes; m2 takes over and its page says so, without a reload.
    await members.stop("m1")
    after = await wait(lambda p: p["leader"].get("leading") == "true", 5,
                       "m2 named the leader")
    assert after["leader"]["leader"] == "m2" and int(after["leader"]["term"]) > term
    assert "m2, the leader" in after["leader"]["text"]
    assert after["page"] == before["page"], "the page was reloaded"
    assert after["conn"] == "live" and "fw-1" in after["vnfs"]
    await asyncio.to_thread(browser.save_screenshot, str(LOGS / "dashboard-cluster.png"))
