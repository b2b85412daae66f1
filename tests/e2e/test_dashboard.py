"""Acceptance of the dashboard: headless Chromium watches a real host crash, live.

The page is opened once; the host is crashed through the testbed; the test reads what
the page shows (its DOM, as a person would see it) until the host is down and the VNF is
ACTIVE on another host with the recovery in the timeline — never reloading the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e import test_manager as tm

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
    while time.monotonic() < deadline:
        seen = driver.execute_script(_READ_PAGE)
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
