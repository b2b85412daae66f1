"""A VNF that keeps failing right after each recovery backs off (CrashLoopBackOff), with an
alarm; one killed at its memory limit is reported as OOMKilled; a restart that loses the
VNF's state is not counted as a successful recovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import TOLERANT_AGENT, TOLERANT_MANAGER, Mgr, manager_bed
from tests.vnfclient import wait_until


@pytest.fixture(scope="module")
def cmgr() -> Iterator[Mgr]:
    with manager_bed("k", 20, 30, n_hosts=2, agent_args=TOLERANT_AGENT,
                     manager_args=TOLERANT_MANAGER) as m:
        yield m


def _heals(m: Mgr, iid: str) -> list[dict[str, Any]]:
    ops = m.ok("GET", "/vnflcm/v1/vnf_lcm_op_occs", params={"vnfInstanceId": iid})
    return [o for o in ops if o["operation"] == "HEAL"]


def _terminate(m: Mgr, iid: str) -> None:
    m.ok("POST", f"/vnflcm/v1/vnf_instances/{iid}/terminate", json={})
    wait_until(lambda: m.vnf(iid)["haState"] == "NOT_INSTANTIATED", 15)


def test_a_vnf_failing_after_every_recovery_backs_off_with_an_alarm(
        cmgr: Mgr, python_bin: str) -> None:
    m = cmgr
    # Exits 0.6 s after it starts; a restored copy resumes the same countdown.
    desc = {"id": "crasher", "command": [python_bin, "-c",
                                         "import time, sys; time.sleep(0.6); sys.exit(3)"],
            "network": {"address": m.tb.vnf_address(5)}, "resources": {"memory": "64Mi"},
            "ha": {"checkpoint_interval": 0.2, "backups": 0,
                   "recovery": {"process-exit": ["restart"]}}}
    m.deploy(desc, "crasher")
    wait_until(lambda: any(a["faultType"] == "crash-loop" and a.get("alarmClearedTime")
                           is None for a in m.alarms()), 30)
    alarm = next(a for a in m.alarms() if a["faultType"] == "crash-loop")
    assert "exited with code 3" in alarm["probableCause"], alarm
    n = len(_heals(m, "crasher"))
    vnf = m.vnf("crasher")
    assert vnf["crashLoop"]["streak"] >= 3 and "code 3" in vnf["crashLoop"]["reason"], vnf
    # Backed off: 1 + 2 + 4 s between the 2nd, 3rd and 4th recoveries at least, so far
    # fewer recoveries than the ~1.5 per second of a VNF restarted at once each time.
    assert n <= 6, n
    done = [o for o in _heals(m, "crasher") if o["operationState"] == "COMPLETED"]
    assert done and all(o["nfvha"]["stateLost"] for o in done)
    metrics = m.http.get(m.url + "/metrics").text
    assert 'result="state-lost"' in metrics and 'strategy="restart",result="success"' \
        not in metrics
    _terminate(m, "crasher")


def test_a_vnf_killed_at_its_memory_limit_is_reported_as_oom(
        cmgr: Mgr, python_bin: str) -> None:
    m = cmgr
    # Waits 0.5 s (instantiated and checkpointed), then grows past its 48 MiB limit.
    desc = {"id": "hog", "command": [python_bin, "-c",
                                     "import time; time.sleep(0.5); b = bytearray(200 << 20);"
                                     " time.sleep(100)"],
            "network": {"address": m.tb.vnf_address(6)}, "resources": {"memory": "48Mi"},
            "ha": {"checkpoint_interval": 5, "backups": 0,
                   "recovery": {"process-exit": ["restart"]}}}
    m.deploy(desc, "hog")
    wait_until(lambda: _heals(m, "hog") != [], 15)
    heal = _heals(m, "hog")[0]
    assert "OOMKilled" in heal["nfvha"]["detail"], heal["nfvha"]
    _terminate(m, "hog")


def test_checkpoints_slower_than_their_interval_raise_an_alarm(
        cmgr: Mgr, python_bin: str) -> None:
    m = cmgr
    # 96 MiB of state cannot be dumped and replicated every 50 ms.
    desc = {"id": "big", "command": [python_bin, "-c",
                                     "import time; b = bytearray(96 << 20); time.sleep(600)"],
            "network": {"address": m.tb.vnf_address(7)}, "resources": {"memory": "256Mi"},
            "ha": {"checkpoint_interval": 0.05, "backups": 1}}
    m.deploy(desc, "big")
    wait_until(lambda: any(a["faultType"] == "checkpoints-behind"
                           and a["managedObjectId"] == "big"
                           and a.get("alarmClearedTime") is None for a in m.alarms()), 30)
    _terminate(m, "big")
