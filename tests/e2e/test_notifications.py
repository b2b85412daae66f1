"""SOL003 notifications for real: a subscriber hears of an injected failure and its heal."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.test_manager import Mgr, flowmon, mgr  # noqa: F401  (mgr is a fixture)
from tests.test_notify import CallbackServer
from tests.vnfclient import wait_until


def _subscribe(m: Mgr, api: str, callback: str, flt: dict[str, Any]) -> dict[str, Any]:
    r = m.http.post(f"{m.url}/{api}/v1/subscriptions", json={"callbackUri": callback,
                                                             "filter": flt})
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith(f"/{api}/v1/subscriptions/{r.json()['id']}")
    body: dict[str, Any] = r.json()
    return body


def test_subscriber_gets_heal_and_alarm_notifications_of_a_killed_vnf(
        mgr: Mgr, python_bin: str) -> None:  # noqa: F811
    lcm_endpoint = CallbackServer()  # the manager runs in the root netns: loopback reaches
    fm_endpoint = CallbackServer()
    try:
        mine = {"vnfInstanceSubscriptionFilter": {"vnfInstanceIds": ["fm-n"]}}
        lcm = _subscribe(mgr, "vnflcm", lcm_endpoint.url, {**mine, "operationTypes": ["HEAL"]})
        fm = _subscribe(mgr, "vnffm", fm_endpoint.url, mine)
        mgr.deploy(flowmon(mgr.tb.vnf_address(1), python_bin), "fm-n")
        mgr.wait_checkpoint_after("fm-n", time.time())
        assert lcm_endpoint.received == []  # the INSTANTIATE op is not a HEAL

        mgr.ok("POST", "/nfvha/v1/vnf_instances/fm-n/inject", json={"fault": "kill"})
        op = mgr.wait_heal("fm-n")
        wait_until(lambda: any(n["notificationStatus"] == "RESULT"
                               for n in lcm_endpoint.received), 10)
        wait_until(lambda: fm_endpoint.of_type("AlarmClearedNotification"), 10)

        ops = lcm_endpoint.received
        assert {n["vnfLcmOpOccId"] for n in ops} == {op["id"]}
        statuses = [(n["operationState"], n["notificationStatus"]) for n in ops]
        assert statuses[0] == ("STARTING", "START")
        assert statuses[-1] == ("COMPLETED", "RESULT")
        assert [s for _, s in statuses].count("RESULT") == 1  # START(s), then one RESULT
        for n in ops:
            assert n["notificationType"] == "VnfLcmOperationOccurrenceNotification"
            assert n["subscriptionId"] == lcm["id"] and n["vnfInstanceId"] == "fm-n"
            assert n["operation"] == "HEAL" and n["isAutomaticInvocation"] is True
            assert n["_links"]["vnfLcmOpOcc"]["href"].endswith(op["id"])
        assert ops[-1]["nfvha"]["strategy"] == "restore-local"  # nfvha's extension

        alarms = fm_endpoint.received
        assert [n["notificationType"] for n in alarms] == ["AlarmNotification",
                                                           "AlarmClearedNotification"]
        raised, cleared = alarms
        assert raised["subscriptionId"] == fm["id"] == cleared["subscriptionId"]
        assert raised["alarm"]["managedObjectId"] == "fm-n"
        assert raised["alarm"]["faultType"] == "process-exit"
        assert raised["alarm"]["perceivedSeverity"] == "CRITICAL"
        assert cleared["alarmId"] == raised["alarm"]["id"] and cleared["alarmClearedTime"]
        assert cleared["_links"]["alarm"]["href"].endswith(raised["alarm"]["id"])

        stats = mgr.ok("GET", f"/vnffm/v1/subscriptions/{fm['id']}")["nfvha"]["delivery"]
        assert stats["delivered"] == 2 and stats["failedAttempts"] == 0
    finally:
        lcm_endpoint.close()
        fm_endpoint.close()
