"""SOL003 notifications: subscriptions over the real API, deliveries to a real endpoint."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from nfvha.store.sqlite import SqliteStore
from nfvha.vnfm.api import create_manager_app
from nfvha.vnfm.events import Event, EventKind
from nfvha.vnfm.manager import Manager, ManagerConfig
from nfvha.vnfm.notify import LCM, RetryPolicy, Subscription, build_notification

FAST = RetryPolicy(attempts=4, first_delay=0.1, factor=2.0, max_delay=1.0, timeout=2.0)


class CallbackServer:
    """A notification endpoint on 127.0.0.1: GET answers ``get_status``; every POST is
    logged in ``attempts`` and answered 503 while ``fail`` says so, else 204 and kept in
    ``received``, in arrival order."""

    def __init__(self, *, get_status: int = 204, fail_first: int = 0) -> None:
        self.get_status = get_status
        self.fail_first = fail_first
        self.fail: Callable[[dict[str, Any]], bool] = lambda _n: False
        self.received: list[dict[str, Any]] = []
        self.attempts: list[tuple[float, dict[str, Any]]] = []
        self.authorization: list[str | None] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.authorization.append(self.headers.get("Authorization"))
                self.send_response(owner.get_status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.authorization.append(self.headers.get("Authorization"))
                    owner.attempts.append((time.monotonic(), body))
                    failing = len(owner.attempts) <= owner.fail_first or owner.fail(body)
                    if not failing:
                        owner.received.append(body)
                self.send_response(503 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/notify"

    def of_type(self, ntype: str) -> list[dict[str, Any]]:
        with self.lock:
            return [n for n in self.received if n["notificationType"] == ntype]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Api:
    """A started manager (no hosts) and a client of its in-process API."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_manager_app(manager,
                                                                 manage_lifecycle=False)),
            base_url="http://manager", headers={"Authorization": "Bearer t"})

    async def subscribe(self, api: str, callback: str, **body: Any) -> httpx.Response:
        return await self.http.post(f"/{api}/v1/subscriptions",
                                    json={"callbackUri": callback, **body})


async def _started(db: Path, policy: RetryPolicy = FAST, **cfg: Any) -> Api:
    m = Manager(SqliteStore(db), ManagerConfig(token="t", base_url="http://manager", **cfg))
    m.notifier.policy = policy
    await m.start()
    return Api(m)


async def _stop(api: Api) -> None:
    await api.http.aclose()
    await api.manager.close()
    api.manager.store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await _started(tmp_path / "m.db")
    try:
        yield a
    finally:
        await _stop(a)


@pytest.fixture
async def insecure_api(tmp_path: Path) -> AsyncIterator[Api]:
    """A manager that accepts BASIC credentials for the plain-http test endpoints."""
    a = await _started(tmp_path / "m.db", allow_insecure_callbacks=True,
                       secret_key_file=tmp_path / "m.key")
    try:
        yield a
    finally:
        await _stop(a)


@pytest.fixture
def endpoint() -> Any:
    s = CallbackServer()
    yield s
    s.close()


def _alarm(m: Manager, vnf_id: str, severity: str = "CRITICAL",
           event_type: str = "PROCESSING_ERROR_ALARM", cause: str = "process-exit") -> None:
    m._raise_alarm(f"vnf:{vnf_id}", vnf_id, event_type, severity, cause,
                   f"{vnf_id} exited with status 9", {"host": "h1"})


# -- creation -----------------------------------------------------------------------------

async def test_callback_uri_must_answer_get_with_204(api: Api) -> None:
    wrong = CallbackServer(get_status=200)
    try:
        r = await api.subscribe("vnflcm", wrong.url)
    finally:
        wrong.close()
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "answered 200" in r.json()["detail"] and "204 No Content" in r.json()["detail"]
    r = await api.subscribe("vnffm", wrong.url)  # closed now: nothing listens there
    assert r.status_code == 422 and "reachable" in r.json()["detail"]
    assert api.manager.store.list("subscription") == []
    assert (await api.http.get("/vnflcm/v1/subscriptions")).json() == []


async def test_create_read_list_delete_never_showing_the_password(
        insecure_api: Api, endpoint: CallbackServer) -> None:
    api = insecure_api
    auth = {"authType": ["BASIC"], "paramsBasic": {"userName": "nfvo", "password": "s3cr3t"}}
    flt = {"vnfInstanceSubscriptionFilter": {"vnfInstanceIds": ["a"]},
           "operationTypes": ["HEAL"]}
    r = await api.subscribe("vnflcm", endpoint.url, filter=flt, authentication=auth)
    assert r.status_code == 201, r.text
    sub = r.json()
    assert r.headers["Location"] == f"http://manager/vnflcm/v1/subscriptions/{sub['id']}"
    assert sub["callbackUri"] == endpoint.url and sub["filter"] == flt
    assert sub["_links"]["self"]["href"] == r.headers["Location"]
    assert sub["nfvha"]["authentication"] == {"authType": ["BASIC"], "userName": "nfvo"}
    assert sub["nfvha"]["delivery"]["delivered"] == 0
    # The endpoint check used the credentials.
    assert endpoint.authorization == ["Basic " + base64.b64encode(b"nfvo:s3cr3t").decode()]
    one = await api.http.get(f"/vnflcm/v1/subscriptions/{sub['id']}")
    listed = await api.http.get("/vnflcm/v1/subscriptions")
    assert one.json()["id"] == sub["id"] and [s["id"] for s in listed.json()] == [sub["id"]]
    for resp in (r, one, listed):
        assert "s3cr3t" not in resp.text
    # An LCM subscription is not an FM one.
    assert (await api.http.get("/vnffm/v1/subscriptions")).json() == []
    assert (await api.http.get(f"/vnffm/v1/subscriptions/{sub['id']}")).status_code == 404
    # Kept in the state store with the password sealed (deliveries open it).
    stored = api.manager.store.get("subscription", sub["id"]).data
    assert "password" not in stored["authentication"]["paramsBasic"]
    assert "s3cr3t" not in json.dumps(stored)

    assert (await api.http.delete(f"/vnflcm/v1/subscriptions/{sub['id']}")).status_code == 204
    gone = await api.http.get(f"/vnflcm/v1/subscriptions/{sub['id']}")
    assert gone.status_code == 404 and sub["id"] in gone.json()["detail"]
    again = await api.http.delete(f"/vnflcm/v1/subscriptions/{sub['id']}")
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")
    assert api.manager.store.list("subscription") == []


async def test_same_callback_and_filter_is_see_other(api: Api, endpoint: CallbackServer
                                                     ) -> None:
    flt = {"perceivedSeverities": ["CRITICAL"]}
    first = await api.subscribe("vnffm", endpoint.url, filter=flt)
    assert first.status_code == 201
    dup = await api.subscribe("vnffm", endpoint.url, filter=flt)
    assert dup.status_code == 303
    assert dup.headers["Location"] == first.headers["Location"]
    other = await api.subscribe("vnffm", endpoint.url, filter={"perceivedSeverities": ["MAJOR"]})
    assert other.status_code == 201
    lcm = await api.subscribe("vnflcm", endpoint.url)  # another API: another subscription
    assert lcm.status_code == 201
    assert len((await api.http.get("/vnffm/v1/subscriptions")).json()) == 2


@pytest.mark.parametrize(("api_name", "body", "status", "says"), [
    ("vnflcm", {"filter": {"operationType": ["HEAL"]}}, 400,
     "unknown filter attribute filter.operationType"),
    ("vnflcm", {"filter": {"operationStates": ["DONE"]}}, 400, "'DONE' not permitted"),
    ("vnflcm", {"filter": {"operationStates": []}}, 400, "empty"),
    ("vnflcm", {"filter": {"vnfInstanceSubscriptionFilter": {
        "vnfInstanceIds": ["a"], "vnfInstanceNames": ["b"]}}}, 400, "not both"),
    ("vnflcm", {"filter": {"vnfInstanceSubscriptionFilter": {"vnfIds": ["a"]}}}, 400,
     "vnfInstanceSubscriptionFilter.vnfIds"),
    ("vnffm", {"filter": {"operationTypes": ["HEAL"]}}, 400,
     "unknown filter attribute filter.operationTypes"),
    ("vnffm", {"filter": {"perceivedSeverities": "CRITICAL"}}, 400, "list of strings"),
    ("vnffm", {"verbosity": "SHORT"}, 400, "only for /vnflcm/v1"),
    ("vnffm", {"callbackUrl": "x"}, 400, "callbackUrl"),
    ("vnflcm", {"authentication": {"authType": ["OAUTH2_CLIENT_CREDENTIALS"],
                                   "paramsOauth2ClientCredentials": {}}}, 422, "use [\"BASIC\"]"),
    ("vnflcm", {"authentication": {"authType": ["BASIC"]}}, 400, "paramsBasic"),
])
async def test_bad_requests_are_refused_with_the_reason(
        api: Api, endpoint: CallbackServer, api_name: str, body: dict[str, Any],
        status: int, says: str) -> None:
    r = await api.subscribe(api_name, endpoint.url, **body)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]
    assert r.headers["content-type"].startswith("application/problem+json")
    bad_uri = await api.http.post(f"/{api_name}/v1/subscriptions",
                                  json={"callbackUri": "ftp://somewhere/x"})
    assert bad_uri.status_code == 400 and "http(s)" in bad_uri.json()["detail"]
    assert endpoint.authorization == []  # refused before the endpoint was ever called
    assert api.manager.store.list("subscription") == []


async def test_subscriptions_need_the_token(api: Api, endpoint: CallbackServer) -> None:
    r = await api.http.post("/vnflcm/v1/subscriptions", json={"callbackUri": endpoint.url},
                            headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


# -- notifications ------------------------------------------------------------------------

async def test_operation_notifications_start_then_result(api: Api, endpoint: CallbackServer
                                                         ) -> None:
    m = api.manager
    full = (await api.subscribe("vnflcm", endpoint.url)).json()
    heal_only = CallbackServer()
    short = CallbackServer()
    fm = CallbackServer()
    try:
        assert (await api.subscribe("vnflcm", heal_only.url,
                                    filter={"operationTypes": ["HEAL"]})).status_code == 201
        assert (await api.subscribe("vnflcm", short.url, verbosity="SHORT", filter={
            "operationStates": ["FAILED"], "vnfInstanceSubscriptionFilter": {
                "vnfdIds": ["probe"], "vnfInstanceNames": ["the-probe"]}})).status_code == 201
        assert (await api.subscribe("vnffm", fm.url)).status_code == 201
        m.onboard({"id": "probe", "command": [sys.executable, "-c", "pass"],
                   "network": {"address": "10.77.0.5/24"}})
        m.create_vnf("probe", "the-probe", None, "p1")
        op_id = m.start_instantiate("p1")  # no host to place it on: the op fails
        await until(lambda: len(endpoint.received) == 3)
        await until(lambda: len(short.received) == 1)
        await asyncio.sleep(0.2)
        states = [(n["operationState"], n["notificationStatus"]) for n in endpoint.received]
        assert states == [("STARTING", "START"), ("PROCESSING", "START"),
                          ("FAILED", "RESULT")]
        last = endpoint.received[-1]
        assert last["notificationType"] == "VnfLcmOperationOccurrenceNotification"
        assert last["subscriptionId"] == full["id"]
        assert last["vnfInstanceId"] == "p1" and last["vnfLcmOpOccId"] == op_id
        assert last["operation"] == "INSTANTIATE" and last["isAutomaticInvocation"] is False
        assert last["error"]["status"] == 409 and "error" not in endpoint.received[0]
        assert last["timeStamp"].endswith("Z") and len({n["id"] for n in endpoint.received}) == 3
        assert last["_links"] == {
            "vnfInstance": {"href": "http://manager/vnflcm/v1/vnf_instances/p1"},
            "subscription": {"href": f"http://manager/vnflcm/v1/subscriptions/{full['id']}"},
            "vnfLcmOpOcc": {"href": f"http://manager/vnflcm/v1/vnf_lcm_op_occs/{op_id}"}}
        assert short.received[0]["operationState"] == "FAILED"
        assert short.received[0]["verbosity"] == "SHORT" and "nfvha" not in short.received[0]
        assert heal_only.received == [] and fm.received == []
        stats = (await api.http.get(f"/vnflcm/v1/subscriptions/{full['id']}")).json()
        assert stats["nfvha"]["delivery"]["delivered"] == 3
        assert stats["nfvha"]["delivery"]["failedAttempts"] == 0
    finally:
        for s in (heal_only, short, fm):
            s.close()


async def test_alarm_and_cleared_notifications_follow_filters(api: Api, endpoint: CallbackServer
                                                              ) -> None:
    m = api.manager
    sub = (await api.subscribe("vnffm", endpoint.url)).json()
    critical_a = CallbackServer()
    equipment = CallbackServer()
    by_cause = CallbackServer()
    try:
        await api.subscribe("vnffm", critical_a.url, filter={
            "perceivedSeverities": ["CRITICAL"],
            "vnfInstanceSubscriptionFilter": {"vnfInstanceIds": ["a"]}})
        await api.subscribe("vnffm", equipment.url, filter={"eventTypes": ["EQUIPMENT_ALARM"]})
        await api.subscribe("vnffm", by_cause.url, filter={
            "probableCauses": ["checkpoint-failed"],
            "notificationTypes": ["AlarmClearedNotification"]})
        _alarm(m, "a")
        _alarm(m, "b")
        m._raise_alarm("checkpoint:a", "a", "PROCESSING_ERROR_ALARM", "MAJOR",
                       "checkpoint-failed", "dump failed", {"host": "h1"})
        m._clear_alarm("vnf:a")
        m._clear_alarm("checkpoint:a")
        await until(lambda: len(endpoint.received) == 5)
        await until(lambda: len(critical_a.received) == 2 and len(by_cause.received) == 1)
        await asyncio.sleep(0.2)
        kinds = [(n["notificationType"], n.get("alarm", {}).get("managedObjectId"))
                 for n in endpoint.received]
        assert kinds == [("AlarmNotification", "a"), ("AlarmNotification", "b"),
                         ("AlarmNotification", "a"), ("AlarmClearedNotification", None),
                         ("AlarmClearedNotification", None)]
        raised = endpoint.received[0]
        alarm = raised["alarm"]
        assert raised["subscriptionId"] == sub["id"]
        assert alarm["perceivedSeverity"] == "CRITICAL" and alarm["faultType"] == "process-exit"
        assert alarm["eventType"] == "PROCESSING_ERROR_ALARM" and alarm["id"]
        assert raised["_links"] == {"subscription": {
            "href": f"http://manager/vnffm/v1/subscriptions/{sub['id']}"}}
        cleared = endpoint.received[3]
        assert cleared["alarmId"] == alarm["id"] and cleared["alarmClearedTime"]
        assert cleared["_links"]["alarm"] == {"href":
                                              f"http://manager/vnffm/v1/alarms/{alarm['id']}"}
        # CRITICAL alarm of a, and its clearing (raised CRITICAL, now CLEARED).
        assert [n["notificationType"] for n in critical_a.received] == [
            "AlarmNotification", "AlarmClearedNotification"]
        assert critical_a.received[1]["alarmId"] == alarm["id"]
        assert equipment.received == []
        assert by_cause.received[0]["alarmId"] == endpoint.received[2]["alarm"]["id"]
    finally:
        for s in (critical_a, equipment, by_cause):
            s.close()


async def test_retries_with_exponential_backoff_until_delivered(api: Api) -> None:
    flaky = CallbackServer(fail_first=2)
    try:
        sub = (await api.subscribe("vnffm", flaky.url)).json()
        _alarm(api.manager, "a")
        await until(lambda: len(flaky.received) == 1)
        times = [t for t, _ in flaky.attempts]
        assert len(times) == 3
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= FAST.first_delay * 0.9
        assert gaps[1] >= FAST.first_delay * FAST.factor * 0.9
        assert flaky.attempts[0][1]["id"] == flaky.received[0]["id"]  # the same notification
        # The callback has it; the notifier counts it once the 204 is back (a moment later).
        deadline = time.monotonic() + 5
        while True:
            st = (await api.http.get(f"/vnffm/v1/subscriptions/{sub['id']}")).json()
            delivery = st["nfvha"]["delivery"]
            if delivery["delivered"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert delivery["delivered"] == 1 and delivery["failedAttempts"] == 2
        assert delivery["gaveUp"] == 0 and "503" in delivery["lastError"]
    finally:
        flaky.close()


async def test_gives_up_after_the_last_attempt_and_keeps_order(api: Api) -> None:
    s = CallbackServer()
    s.fail = lambda n: n.get("alarm", {}).get("managedObjectId") == "doomed"
    try:
        sub = (await api.subscribe("vnffm", s.url)).json()
        _alarm(api.manager, "doomed")
        for i in range(20):
            _alarm(api.manager, f"v{i}")
        stats = api.manager.notifier.subscriptions[sub["id"]].stats
        # The server has the 20th before the notifier has its answer: wait for both.
        await until(lambda: len(s.received) == 20 and stats.delivered == 20)
        assert [n["alarm"]["managedObjectId"] for n in s.received] == [
            f"v{i}" for i in range(20)]
        assert [n["alarm"]["managedObjectId"] for _, n in s.attempts[:FAST.attempts]] == \
            ["doomed"] * FAST.attempts
        assert (stats.delivered, stats.gave_up, stats.failed_attempts) == \
            (20, 1, FAST.attempts)
    finally:
        s.close()


async def test_a_dead_subscriber_costs_a_bounded_queue(tmp_path: Path) -> None:
    a = await _started(tmp_path / "m.db", RetryPolicy(attempts=100, first_delay=30,
                                                      timeout=1, queue_size=3))
    s = CallbackServer()
    try:
        sub = (await a.subscribe("vnffm", s.url)).json()
        s.close()  # the subscriber dies
        for i in range(10):
            _alarm(a.manager, f"v{i}")
        await until(lambda: a.manager.notifier.subscriptions[sub["id"]].stats.failed_attempts
                    >= 1)
        delivery = (await a.http.get(f"/vnffm/v1/subscriptions/{sub['id']}")).json()[
            "nfvha"]["delivery"]
        # one in its retries, at most three queued, the rest dropped and counted
        assert delivery["queued"] <= 3 and delivery["queued"] + delivery["dropped"] == 9
        assert delivery["dropped"] >= 6
        assert delivery["delivered"] == 0 and delivery["lastError"]
        started = time.monotonic()
    finally:
        await _stop(a)
    assert time.monotonic() - started < 3  # closing does not wait for the dead subscriber


async def test_subscriptions_survive_a_manager_restart(tmp_path: Path) -> None:
    s = CallbackServer()
    auth = {"authType": ["BASIC"], "paramsBasic": {"userName": "nfvo", "password": "pw"}}
    cfg = {"allow_insecure_callbacks": True, "secret_key_file": tmp_path / "m.key"}
    a = await _started(tmp_path / "m.db", **cfg)
    try:
        sub = (await a.subscribe("vnffm", s.url, authentication=auth)).json()
    finally:
        await _stop(a)
    b = await _started(tmp_path / "m.db", **cfg)
    try:
        listed = (await b.http.get("/vnffm/v1/subscriptions")).json()
        assert [x["id"] for x in listed] == [sub["id"]]
        _alarm(b.manager, "a")
        await until(lambda: len(s.received) == 1)
        assert s.received[0]["subscriptionId"] == sub["id"]
        assert s.authorization[-1] == "Basic " + base64.b64encode(b"nfvo:pw").decode()
    finally:
        await _stop(b)
        s.close()


def test_only_state_changes_of_operations_are_notified() -> None:
    sub = Subscription(id="s", api=LCM, callback_uri="http://x/", filter={})
    op = {"id": "o", "operationState": "PROCESSING", "vnfInstanceId": "v",
          "operation": "HEAL", "isAutomaticInvocation": True,
          "nfvha": {"phases": {"detected": 1}}}
    same = Event(1, EventKind.OP, time.time(), {**op, "stateChanged": False})
    assert build_notification(same, sub) is None
    changed = build_notification(Event(2, EventKind.OP, time.time(),
                                       {**op, "stateChanged": True}), sub)
    assert changed is not None
    assert changed["notificationStatus"] == "START" and changed["isAutomaticInvocation"]
    assert changed["nfvha"] == {"phases": {"detected": 1}}
    for state in ("COMPLETED", "FAILED_TEMP", "FAILED", "ROLLED_BACK"):
        n = build_notification(Event(3, EventKind.OP, time.time(), {
            **op, "operationState": state, "stateChanged": True}), sub)
        assert n is not None and n["notificationStatus"] == "RESULT"
    assert build_notification(Event(4, EventKind.CHECKPOINT, time.time(), {}), sub) is None


# -- passwords at rest and in transit -----------------------------------------------------

def _store_bytes(db: Path) -> bytes:
    """Every byte the SQLite store holds on disk, its write-ahead log included."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


async def test_the_stored_password_is_sealed_and_opened_only_to_deliver(
        tmp_path: Path, endpoint: CallbackServer) -> None:
    secret = "pw-" + "x7Q" * 5
    auth = {"authType": ["BASIC"], "paramsBasic": {"userName": "nfvo", "password": secret}}
    a = await _started(tmp_path / "m.db", allow_insecure_callbacks=True,
                       secret_key_file=tmp_path / "m.key")
    try:
        r = await a.subscribe("vnffm", endpoint.url, authentication=auth)
        assert r.status_code == 201, r.text
        assert secret not in r.text
        _alarm(a.manager, "a")
        await until(lambda: len(endpoint.received) == 1)
        assert endpoint.authorization[-1] == \
            "Basic " + base64.b64encode(f"nfvo:{secret}".encode()).decode()
        assert secret.encode() not in _store_bytes(tmp_path / "m.db")
    finally:
        await _stop(a)
    assert secret.encode() not in _store_bytes(tmp_path / "m.db")
    assert (tmp_path / "m.key").stat().st_mode & 0o777 == 0o600


async def test_a_password_stored_in_clear_by_an_older_manager_is_sealed_at_start(
        tmp_path: Path, endpoint: CallbackServer) -> None:
    store = SqliteStore(tmp_path / "m.db")
    store.create("subscription", "old", {
        "id": "old", "api": "vnffm", "callbackUri": endpoint.url, "filter": {},
        "authentication": {"authType": ["BASIC"],
                           "paramsBasic": {"userName": "nfvo", "password": "legacy-pw"}},
        "verbosity": "FULL", "createdAt": ""})
    store.close()
    a = await _started(tmp_path / "m.db", secret_key_file=tmp_path / "m.key")
    try:
        stored = a.manager.store.get("subscription", "old").data
        assert "legacy-pw" not in json.dumps(stored)
        _alarm(a.manager, "a")
        await until(lambda: len(endpoint.received) == 1)
        assert endpoint.authorization[-1] == \
            "Basic " + base64.b64encode(b"nfvo:legacy-pw").decode()
    finally:
        await _stop(a)


async def test_a_password_sealed_with_another_key_is_not_sent_and_says_why(
        tmp_path: Path, endpoint: CallbackServer) -> None:
    auth = {"authType": ["BASIC"], "paramsBasic": {"userName": "nfvo", "password": "pw"}}
    a = await _started(tmp_path / "m.db", allow_insecure_callbacks=True,
                       secret_key_file=tmp_path / "one.key")
    try:
        sub = (await a.subscribe("vnffm", endpoint.url, authentication=auth)).json()
    finally:
        await _stop(a)
    b = await _started(tmp_path / "m.db", secret_key_file=tmp_path / "other.key")
    try:
        _alarm(b.manager, "a")
        stats = b.manager.notifier.subscriptions[sub["id"]].stats
        await until(lambda: stats.gave_up == 1)
        assert "cannot be opened" in (stats.last_error or "")
        assert endpoint.received == [] and len(endpoint.authorization) == 1  # the check GET
    finally:
        await _stop(b)


async def test_basic_credentials_for_a_plain_http_callback_are_refused(
        api: Api, endpoint: CallbackServer) -> None:
    auth = {"authType": ["BASIC"], "paramsBasic": {"userName": "nfvo", "password": "pw"}}
    r = await api.subscribe("vnflcm", endpoint.url, authentication=auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert "plain http" in detail and "--allow-insecure-callbacks" in detail
    assert endpoint.authorization == []  # refused before the check: the password never left
    assert api.manager.store.list("subscription") == []
    # Without credentials a plain-http callback is fine; https with them passes this check
    # (and fails the next one here: nothing listens there).
    assert (await api.subscribe("vnflcm", endpoint.url)).status_code == 201
    r = await api.subscribe("vnffm", "https://127.0.0.1:1/nfv", authentication=auth)
    assert r.status_code == 422 and "reachable" in r.json()["detail"]


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    from nfvha.vnfm.secretbox import SecretBox, SecretBoxError

    key = tmp_path / "k"
    box = SecretBox.from_file(key)
    assert box.open(box.seal("x")) == "x"
    assert SecretBox.from_file(key).open(box.seal("y")) == "y"  # the same key again
    key.chmod(0o644)
    with pytest.raises(SecretBoxError, match="chmod 600"):
        SecretBox.from_file(key)
    key.chmod(0o600)
    key.write_text("not a key")
    with pytest.raises(SecretBoxError, match="not a Fernet key"):
        SecretBox.from_file(key)
