"""SOL003 notifications: subscriptions, their filters, and delivery to callback URIs.

The `Notifier` reads the manager's event bus, turns operation occurrence and alarm changes
into VnfLcmOperationOccurrenceNotification, AlarmNotification and AlarmClearedNotification,
and POSTs them to each matching subscription in order, with retries and exponential
back-off, from tasks of its own: a slow or dead subscriber costs a bounded queue, never
the manager's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from nfvha.errors import PROBLEM_PREFIX, NfvhaError
from nfvha.store.base import StateStore, json_equal
from nfvha.vnfm.events import Event, EventBus, EventKind
from nfvha.vnfm.secretbox import SecretBox, SecretBoxError

__all__ = [
    "FM",
    "LCM",
    "CallbackCheckError",
    "DeliveryStats",
    "FilterError",
    "InsecureCallbackError",
    "Notifier",
    "RetryPolicy",
    "Subscription",
    "SubscriptionError",
    "SubscriptionNotFound",
    "build_notification",
    "validate_filter",
]

log = logging.getLogger("nfvha.notify")

LCM = "vnflcm"  # VNF lifecycle management: LccnSubscription
FM = "vnffm"    # VNF fault management: FmSubscription
_PATH = {LCM: "/vnflcm/v1/subscriptions", FM: "/vnffm/v1/subscriptions"}

# Filter attributes nfvha evaluates, with their permitted values (None: free strings).
_LCM_FILTER: dict[str, frozenset[str] | None] = {
    "notificationTypes": frozenset({"VnfLcmOperationOccurrenceNotification",
                                    "VnfIdentifierCreationNotification",
                                    "VnfIdentifierDeletionNotification"}),
    "operationTypes": frozenset({"INSTANTIATE", "SCALE", "SCALE_TO_LEVEL", "CHANGE_FLAVOUR",
                                 "TERMINATE", "HEAL", "OPERATE", "CHANGE_EXT_CONN",
                                 "MODIFY_INFO", "CREATE_SNAPSHOT", "REVERT_TO_SNAPSHOT",
                                 "CHANGE_VNFPKG"}),
    "operationStates": frozenset({"STARTING", "PROCESSING", "COMPLETED", "FAILED_TEMP",
                                  "FAILED", "ROLLING_BACK", "ROLLED_BACK"}),
}
_FM_FILTER: dict[str, frozenset[str] | None] = {
    "notificationTypes": frozenset({"AlarmNotification", "AlarmClearedNotification",
                                    "AlarmListRebuiltNotification"}),
    "faultyResourceTypes": frozenset({"COMPUTE", "STORAGE", "NETWORK", "VNFC"}),
    "perceivedSeverities": frozenset({"CRITICAL", "MAJOR", "MINOR", "WARNING",
                                      "INDETERMINATE", "CLEARED"}),
    "eventTypes": frozenset({"COMMUNICATIONS_ALARM", "PROCESSING_ERROR_ALARM",
                             "ENVIRONMENTAL_ALARM", "QOS_ALARM", "EQUIPMENT_ALARM"}),
    "probableCauses": None,
}
_VNF_FILTER = ("vnfInstanceIds", "vnfInstanceNames", "vnfdIds")
_START_STATES = frozenset({"STARTING", "PROCESSING", "ROLLING_BACK"})


class SubscriptionError(NfvhaError):
    """A subscription request nfvha cannot accept; ``status`` is the HTTP answer."""

    problem_type = PROBLEM_PREFIX + "subscription-refused"
    status = 400
    title = "Bad request"


class FilterError(SubscriptionError):
    """The request (its filter, callback URI or authentication) is not valid."""

    problem_type = PROBLEM_PREFIX + "invalid-subscription"


class CallbackCheckError(SubscriptionError):
    """The callback URI did not answer the SOL013 test GET with 204 No Content."""

    problem_type = PROBLEM_PREFIX + "callback-check-failed"
    status = 422
    title = "Callback URI check failed"


class InsecureCallbackError(SubscriptionError):
    """BASIC credentials for a callback URI that would carry them in clear text."""

    problem_type = PROBLEM_PREFIX + "insecure-callback"
    status = 422
    title = "Insecure callback URI"


class SubscriptionNotFound(SubscriptionError):
    problem_type = PROBLEM_PREFIX + "subscription-not-found"
    status = 404
    title = "Not found"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one notification: ``attempts`` POSTs, waiting first_delay,
    first_delay * factor, ... (at most max_delay) between them; the defaults span about
    a minute. ``queue_size`` notifications wait per subscription; more are dropped."""

    attempts: int = 6
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    timeout: float = 5.0  # per POST, and for the GET that checks a new callback URI
    queue_size: int = 1000

    def delay(self, failed_attempt: int) -> float:
        """The wait after the ``failed_attempt``-th attempt (1-based) failed."""
        return float(min(self.max_delay, self.first_delay * self.factor ** (failed_attempt - 1)))


@dataclass
class DeliveryStats:
    """Per subscription, since the manager started; plain counters for metrics."""

    delivered: int = 0        # notifications the subscriber accepted (2xx)
    failed_attempts: int = 0  # POSTs that failed (error, timeout or non-2xx answer)
    gave_up: int = 0          # notifications abandoned after the last attempt
    dropped: int = 0          # notifications never tried: the subscription's queue was full
    last_error: str | None = None
    last_error_at: str | None = None
    last_delivered_at: str | None = None

    def as_dict(self, queued: int) -> dict[str, Any]:
        return {"delivered": self.delivered, "failedAttempts": self.failed_attempts,
                "gaveUp": self.gave_up, "dropped": self.dropped, "queued": queued,
                "lastError": self.last_error, "lastErrorTime": self.last_error_at,
                "lastDeliveredTime": self.last_delivered_at}


@dataclass
class Subscription:
    """One LccnSubscription or FmSubscription. ``authentication`` is kept as stored:
    its password sealed (``paramsBasic.passwordSealed``), opened only to deliver."""

    id: str
    api: str  # LCM or FM
    callback_uri: str
    filter: dict[str, Any]
    authentication: dict[str, Any] | None = field(default=None, repr=False)
    verbosity: str = "FULL"  # LCM only
    created_at: str = ""
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    queue: asyncio.Queue[dict[str, Any]] | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    sending: bool = False  # a notification is out, or waiting for its next attempt

    @property
    def path(self) -> str:
        return f"{_PATH[self.api]}/{self.id}"

    def record(self) -> dict[str, Any]:
        """What the state store keeps: the password sealed, never in clear."""
        return {"id": self.id, "api": self.api, "callbackUri": self.callback_uri,
                "filter": self.filter, "authentication": self.authentication,
                "verbosity": self.verbosity, "createdAt": self.created_at}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Subscription:
        return cls(id=data["id"], api=data["api"], callback_uri=data["callbackUri"],
                   filter=data.get("filter") or {}, authentication=data.get("authentication"),
                   verbosity=data.get("verbosity", "FULL"), created_at=data.get("createdAt", ""))

    def resource(self, base_url: str) -> dict[str, Any]:
        """The LccnSubscription / FmSubscription a client sees: never the password."""
        out: dict[str, Any] = {"id": self.id, "filter": self.filter,
                               "callbackUri": self.callback_uri}
        if self.api == LCM:
            out["verbosity"] = self.verbosity
        out["_links"] = {"self": {"href": base_url + self.path}}
        ext: dict[str, Any] = {"createdAt": self.created_at, "delivery": self.stats.as_dict(
            self.queue.qsize() if self.queue is not None else 0)}
        if self.authentication:
            ext["authentication"] = {
                "authType": self.authentication.get("authType", []),
                "userName": (self.authentication.get("paramsBasic") or {}).get("userName")}
        out["nfvha"] = ext
        return out

    def auth(self, box: SecretBox) -> httpx.BasicAuth | None:
        """The credentials to deliver with; SecretBoxError if the password does not open
        (the manager's key file is not the one that sealed it)."""
        basic = (self.authentication or {}).get("paramsBasic")
        if not basic:
            return None
        return httpx.BasicAuth(basic["userName"], box.open(basic["passwordSealed"]))

    def offer(self, notification: dict[str, Any]) -> None:
        """Queue a notification for delivery; drop it (counted) when the queue is full."""
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(notification)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                log.warning("subscription %s (%s): %d notification(s) queued, %s dropped; "
                            "%d dropped so far (last error: %s)", self.id, self.callback_uri,
                            self.queue.qsize(), notification["notificationType"],
                            self.stats.dropped, self.stats.last_error)


# -- validation ---------------------------------------------------------------------------

def _check_strings(where: str, value: Any, allowed: frozenset[str] | None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FilterError(f"{where} must be a list of strings, not {value!r}")
    if not value:
        raise FilterError(f"{where} is empty: it would match nothing; leave it out to "
                          "match everything")
    if allowed is not None:
        wrong = [v for v in value if v not in allowed]
        if wrong:
            raise FilterError(f"{where}: {', '.join(map(repr, wrong))} not permitted; "
                              f"permitted values: {', '.join(sorted(allowed))}")
    return list(value)


def validate_filter(api: str, flt: Any) -> dict[str, Any]:
    """The filter, checked: an attribute nfvha does not evaluate is an error, not ignored."""
    if flt is None:
        return {}
    if not isinstance(flt, dict):
        raise FilterError(f"filter must be an object, not {flt!r}")
    spec = _LCM_FILTER if api == LCM else _FM_FILTER
    out: dict[str, Any] = {}
    for key, value in flt.items():
        if key == "vnfInstanceSubscriptionFilter":
            out[key] = _validate_vnf_filter(value)
        elif key in spec:
            out[key] = _check_strings(f"filter.{key}", value, spec[key])
        else:
            kind = "LccnSubscription" if api == LCM else "FmSubscription"
            raise FilterError(f"unknown filter attribute filter.{key}: a {kind} filter takes "
                              f"{', '.join(['vnfInstanceSubscriptionFilter', *spec])}")
    return out


def _validate_vnf_filter(value: Any) -> dict[str, Any]:
    where = "filter.vnfInstanceSubscriptionFilter"
    if not isinstance(value, dict):
        raise FilterError(f"{where} must be an object, not {value!r}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "vnfProductsFromProviders":
            raise FilterError(f"{where}.vnfProductsFromProviders is not supported by nfvha: "
                              "filter on vnfdIds instead")
        if key not in _VNF_FILTER:
            raise FilterError(f"unknown filter attribute {where}.{key}: it takes "
                              f"{', '.join(_VNF_FILTER)}")
        out[key] = _check_strings(f"{where}.{key}", v, None)
    if "vnfInstanceIds" in out and "vnfInstanceNames" in out:
        raise FilterError(f"{where}: vnfInstanceIds and vnfInstanceNames shall not both be "
                          "present (SOL003)")
    return out


def seal_authentication(auth: dict[str, Any] | None, box: SecretBox) -> dict[str, Any] | None:
    """``auth`` as the store keeps it: ``paramsBasic.password`` replaced by its sealed
    form ``passwordSealed`` (a record sealed already is returned as it is)."""
    basic = (auth or {}).get("paramsBasic")
    if auth is None or not isinstance(basic, dict) or "password" not in basic:
        return auth
    sealed = {k: v for k, v in basic.items() if k != "password"}
    sealed["passwordSealed"] = box.seal(basic["password"])
    return {**auth, "paramsBasic": sealed}


def validate_callback_uri(uri: Any) -> str:
    parts = urlsplit(uri) if isinstance(uri, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise FilterError(f"callbackUri {uri!r} is not an absolute http(s) URI")
    return str(uri)


def validate_authentication(auth: Any) -> dict[str, Any] | None:
    """SOL013 SubscriptionAuthentication; nfvha delivers with BASIC only."""
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise FilterError(f"authentication must be an object, not {auth!r}")
    types = auth.get("authType")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        raise FilterError("authentication.authType must be a list such as [\"BASIC\"]")
    unsupported = [t for t in types if t != "BASIC"]
    if unsupported:
        err = CallbackCheckError(f"authentication.authType {', '.join(map(str, unsupported))}"
                                 " is not supported by nfvha: use [\"BASIC\"]")
        err.title = "Unsupported authentication"
        raise err
    basic = auth.get("paramsBasic")
    if not isinstance(basic, dict) or not isinstance(basic.get("userName"), str) \
            or not isinstance(basic.get("password"), str):
        raise FilterError("authentication.paramsBasic {userName, password} (strings) is "
                          "required with authType BASIC")
    extra = set(auth) - {"authType", "paramsBasic"}
    if extra:
        raise FilterError(f"authentication: unexpected {', '.join(sorted(extra))} with "
                          "authType BASIC")
    return {"authType": ["BASIC"],
            "paramsBasic": {"userName": basic["userName"], "password": basic["password"]}}


# -- notifications ------------------------------------------------------------------------

def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def _vnf_matches(vf: dict[str, Any], vnf_id: str | None,
                 vnf: Callable[[], dict[str, Any] | None]) -> bool:
    if not vf:
        return True
    if "vnfInstanceIds" in vf and vnf_id not in vf["vnfInstanceIds"]:
        return False
    if "vnfInstanceNames" in vf or "vnfdIds" in vf:
        rec = vnf()
        if rec is None:
            return False
        if "vnfInstanceNames" in vf and rec.get("vnfInstanceName") not in vf["vnfInstanceNames"]:
            return False
        if "vnfdIds" in vf and rec.get("vnfdId") not in vf["vnfdIds"]:
            return False
    return True


def _has(flt: dict[str, Any], key: str, value: Any) -> bool:
    return key not in flt or value in flt[key]


def build_notification(ev: Event, sub: Subscription, *, base_url: str = "",
                       vnf: Callable[[], dict[str, Any] | None] = lambda: None,
                       raised_severity: str | None = None) -> dict[str, Any] | None:
    """The notification ``sub`` gets for ``ev``, or None (not its kind, or filtered out).

    ``vnf`` looks up the VNF instance record (only called for name / VNFD filters);
    ``raised_severity`` is the severity a cleared alarm was raised with, so that a
    perceivedSeverities filter that let the alarm through also lets its clearing through.
    """
    flt = sub.filter
    common = {"id": uuid.uuid4().hex, "subscriptionId": sub.id, "timeStamp": _iso(ev.at)}
    sub_link = {"href": base_url + sub.path}
    d = ev.data
    if sub.api == LCM:
        if ev.kind != EventKind.OP or not d.get("stateChanged"):
            return None
        state = d["operationState"]
        if not (_has(flt, "notificationTypes", "VnfLcmOperationOccurrenceNotification")
                and _has(flt, "operationTypes", d["operation"])
                and _has(flt, "operationStates", state)
                and _vnf_matches(flt.get("vnfInstanceSubscriptionFilter", {}),
                                 d["vnfInstanceId"], vnf)):
            return None
        links = d.get("_links", {})
        n: dict[str, Any] = {
            **common, "notificationType": "VnfLcmOperationOccurrenceNotification",
            "notificationStatus": "START" if state in _START_STATES else "RESULT",
            "operationState": state, "vnfInstanceId": d["vnfInstanceId"],
            "operation": d["operation"],
            "isAutomaticInvocation": bool(d.get("isAutomaticInvocation")),
            "verbosity": sub.verbosity, "vnfLcmOpOccId": d["id"]}
        if d.get("error"):
            n["error"] = d["error"]
        if sub.verbosity == "FULL" and d.get("nfvha"):
            n["nfvha"] = d["nfvha"]  # nfvha extension: decision, attempts, phases, timestamps
        n["_links"] = {"vnfInstance": links.get("vnfInstance", {"href": base_url +
                       f"/vnflcm/v1/vnf_instances/{d['vnfInstanceId']}"}),
                       "subscription": sub_link,
                       "vnfLcmOpOcc": links.get("self", {"href": base_url +
                                                f"/vnflcm/v1/vnf_lcm_op_occs/{d['id']}"})}
        return n
    if ev.kind not in (EventKind.ALARM_RAISED, EventKind.ALARM_CLEARED):
        return None
    ntype = "AlarmNotification" if ev.kind == EventKind.ALARM_RAISED \
        else "AlarmClearedNotification"
    severities = {d.get("perceivedSeverity")}
    if ev.kind == EventKind.ALARM_CLEARED and raised_severity:
        severities.add(raised_severity)
    if not (_has(flt, "notificationTypes", ntype)
            and _has(flt, "eventTypes", d.get("eventType"))
            and _has(flt, "faultyResourceTypes",
                     (d.get("faultyResource") or {}).get("resourceType"))
            and ("perceivedSeverities" not in flt
                 or severities & set(flt["perceivedSeverities"]))
            # nfvha's short cause (e.g. "process-exit") is faultType; probableCause is text
            and ("probableCauses" not in flt
                 or {d.get("probableCause"), d.get("faultType")} & set(flt["probableCauses"]))
            and _vnf_matches(flt.get("vnfInstanceSubscriptionFilter", {}),
                             d.get("managedObjectId"), vnf)):
        return None
    alarm_link = d.get("_links", {}).get("self",
                                         {"href": base_url + f"/vnffm/v1/alarms/{d['id']}"})
    if ev.kind == EventKind.ALARM_RAISED:
        return {**common, "notificationType": ntype, "alarm": d,
                "_links": {"subscription": sub_link}}
    return {**common, "notificationType": ntype, "alarmId": d["id"],
            "alarmClearedTime": d.get("alarmClearedTime"),
            "_links": {"subscription": sub_link, "alarm": alarm_link}}


# -- the notifier -------------------------------------------------------------------------

class Notifier:
    """Owns the subscriptions (kept in the state store) and delivers their notifications.

    ``subscriptions`` maps id to `Subscription`, whose ``stats`` are the delivery counters.
    """

    def __init__(self, store: StateStore, events: EventBus, *, base_url: str = "",
                 policy: RetryPolicy | None = None, box: SecretBox | None = None,
                 allow_insecure_callbacks: bool = False) -> None:
        self.store = store
        self.events = events
        self.base_url = base_url
        self.policy = policy or RetryPolicy()
        if box is None:
            log.warning("subscription passwords are sealed with a key held in memory only: "
                        "after a restart, BASIC subscriptions cannot be delivered")
        self.box = box or SecretBox.ephemeral()
        self.allow_insecure_callbacks = allow_insecure_callbacks
        self.subscriptions: dict[str, Subscription] = {}
        self.http = httpx.AsyncClient(follow_redirects=False,
                                      limits=httpx.Limits(max_connections=50))
        self._raised: dict[str, str] = {}  # active alarm id -> severity it was raised with
        self._stack = contextlib.ExitStack()
        self._consumer: asyncio.Task[None] | None = None

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Load the stored subscriptions and follow the event bus from now on (synchronous,
        so that events the caller publishes right after are not missed)."""
        queue = self._stack.enter_context(self.events.subscribe(maxsize=10_000))
        for rec in self.store.list("alarm"):
            if rec.data.get("alarmClearedTime") is None:
                self._raised[rec.id] = rec.data.get("perceivedSeverity", "")
        for rec in self.store.list("subscription"):
            sub = Subscription.from_record(rec.data)
            sealed = seal_authentication(sub.authentication, self.box)
            if sealed is not sub.authentication:  # stored in clear by an older manager
                sub.authentication = sealed
                self.store.put("subscription", sub.id, sub.record())
                log.info("subscription %s: its stored password is sealed now", sub.id)
            self._activate(sub)
        self._consumer = asyncio.ensure_future(self._consume(queue))
        if self.subscriptions:
            log.info("notifying %d subscription(s)", len(self.subscriptions))

    async def close(self, drain: float = 1.0) -> None:
        """Stop; give queued notifications up to ``drain`` seconds to go out first."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        self._stack.close()
        busy = [s.queue.join() for s in self.subscriptions.values()
                if s.queue is not None and (s.sending or s.queue.qsize())]
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy), drain)
        for sub in list(self.subscriptions.values()):
            await self._deactivate(sub)
        await self.http.aclose()

    def _activate(self, sub: Subscription) -> None:
        sub.queue = asyncio.Queue(maxsize=self.policy.queue_size)
        sub.task = asyncio.ensure_future(self._deliver_all(sub))
        self.subscriptions[sub.id] = sub

    async def _deactivate(self, sub: Subscription) -> None:
        self.subscriptions.pop(sub.id, None)
        if sub.task is not None:
            sub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.task

    # -- subscriptions --------------------------------------------------------------------

    async def subscribe(self, api: str, callback_uri: Any, flt: Any = None,
                        authentication: Any = None,
                        verbosity: str | None = None) -> tuple[Subscription, bool]:
        """Create a subscription after checking its callback URI; returns it and True, or
        the existing subscription with the same callback URI and filter and False."""
        uri = validate_callback_uri(callback_uri)
        flt = validate_filter(api, flt)
        auth = validate_authentication(authentication)
        if verbosity is not None and (api != LCM or verbosity not in ("FULL", "SHORT")):
            raise FilterError("verbosity is FULL or SHORT, and only for /vnflcm/v1 "
                              "subscriptions")
        if auth is not None and urlsplit(uri).scheme == "http" \
                and not self.allow_insecure_callbacks:
            raise InsecureCallbackError(
                f"callbackUri {uri} is plain http: BASIC authentication would send the "
                "password in clear text to it. Use an https callbackUri, or start the "
                "manager with --allow-insecure-callbacks (e.g. on a closed management "
                "network)")
        same = self._find(api, uri, flt)
        if same is not None:
            return same, False
        await self.check_callback(uri, auth)
        # Look again, with no await until the subscription is active: a concurrent equal
        # request that passed its check first wins, and this one is its duplicate.
        same = self._find(api, uri, flt)
        if same is not None:
            return same, False
        sub = Subscription(id=uuid.uuid4().hex, api=api, callback_uri=uri, filter=flt,
                           authentication=seal_authentication(auth, self.box),
                           verbosity=verbosity or "FULL",
                           created_at=_iso(time.time()))
        self.store.create("subscription", sub.id, sub.record())
        self._activate(sub)
        log.info("subscription %s created: %s notifications to %s, filter %s", sub.id, api,
                 uri, flt or "none")
        return sub, True

    def _find(self, api: str, uri: str, flt: dict[str, Any]) -> Subscription | None:
        for s in self.subscriptions.values():
            if s.api == api and s.callback_uri == uri and json_equal(s.filter, flt):
                return s
        return None

    async def check_callback(self, uri: str, auth: dict[str, Any] | None) -> None:
        """SOL013: a GET to the callback URI must answer 204 No Content."""
        basic = (auth or {}).get("paramsBasic")
        try:
            r = await self.http.get(uri, timeout=self.policy.timeout, auth=httpx.BasicAuth(
                basic["userName"], basic["password"]) if basic else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise CallbackCheckError(
                f"GET {uri} failed ({type(exc).__name__}: {exc or 'no answer'}): the "
                "notification endpoint must be reachable from the manager and answer GET "
                "with 204 No Content") from exc
        if r.status_code != 204:
            raise CallbackCheckError(
                f"GET {uri} answered {r.status_code} {r.reason_phrase}: a notification "
                "endpoint must answer GET with 204 No Content (ETSI GS NFV-SOL 013)")

    def get(self, api: str, sub_id: str) -> Subscription:
        sub = self.subscriptions.get(sub_id)
        if sub is None or sub.api != api:
            raise SubscriptionNotFound(f"no subscription {sub_id!r} at {_PATH[api]}")
        return sub

    def list(self, api: str) -> list[Subscription]:
        return [s for s in self.subscriptions.values() if s.api == api]

    async def unsubscribe(self, api: str, sub_id: str) -> None:
        """Delete the subscription; its undelivered notifications are discarded."""
        sub = self.get(api, sub_id)
        self.store.delete("subscription", sub_id)
        await self._deactivate(sub)
        log.info("subscription %s deleted (%d delivered, %d queued notifications "
                 "discarded)", sub_id, sub.stats.delivered,
                 sub.queue.qsize() if sub.queue else 0)

    # -- from events to deliveries --------------------------------------------------------

    async def _consume(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            ev = await queue.get()
            try:
                self.dispatch(ev)
            except Exception:
                log.exception("notification of event %s failed (continuing)", ev.kind)

    def dispatch(self, ev: Event) -> None:
        """Queue the notifications of one event for every subscription it matches."""
        raised: str | None = None
        if ev.kind == EventKind.ALARM_RAISED:
            self._raised[ev.data["id"]] = ev.data.get("perceivedSeverity", "")
        elif ev.kind == EventKind.ALARM_CLEARED:
            raised = self._raised.pop(ev.data["id"], None)
        elif ev.kind != EventKind.OP:
            return
        vnf_id = ev.data.get("vnfInstanceId") if ev.kind == EventKind.OP \
            else ev.data.get("managedObjectId")
        cache: list[dict[str, Any] | None] = []

        def vnf() -> dict[str, Any] | None:
            if not cache:
                rec = self.store.find("vnf", vnf_id) if vnf_id else None
                cache.append(rec.data if rec is not None else None)
            return cache[0]

        for sub in list(self.subscriptions.values()):
            n = build_notification(ev, sub, base_url=self.base_url, vnf=vnf,
                                   raised_severity=raised)
            if n is not None:
                sub.offer(n)

    async def _deliver_all(self, sub: Subscription) -> None:
        assert sub.queue is not None
        while True:
            n = await sub.queue.get()
            sub.sending = True
            try:
                await self._deliver(sub, n)
            finally:
                sub.sending = False
                sub.queue.task_done()

    async def _deliver(self, sub: Subscription, n: dict[str, Any]) -> None:
        """POST one notification, retrying with exponential back-off until a 2xx answer or
        the last attempt; the next notification of this subscription waits (order kept)."""
        p = self.policy
        try:
            basic = sub.auth(self.box)
        except SecretBoxError as exc:
            # Retrying cannot help: the key file must be the one that sealed it.
            sub.stats.gave_up += 1
            sub.stats.last_error = f"password of the subscription cannot be opened: {exc}"
            sub.stats.last_error_at = _iso(time.time())
            log.error("subscription %s: %s not sent: %s", sub.id, n["notificationType"],
                      sub.stats.last_error)
            return
        for attempt in range(1, p.attempts + 1):
            try:
                r = await self.http.post(sub.callback_uri, json=n, timeout=p.timeout,
                                         auth=basic or httpx.USE_CLIENT_DEFAULT)
                if 200 <= r.status_code < 300:
                    sub.stats.delivered += 1
                    sub.stats.last_delivered_at = _iso(time.time())
                    return
                error = f"answered {r.status_code} {r.reason_phrase}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc or 'no answer'}"
            sub.stats.failed_attempts += 1
            sub.stats.last_error = f"POST {sub.callback_uri} {error}"
            sub.stats.last_error_at = _iso(time.time())
            if attempt < p.attempts:
                log.info("subscription %s: %s attempt %d/%d failed (%s); retrying in %.1f s",
                         sub.id, n["notificationType"], attempt, p.attempts, error,
                         p.delay(attempt))
                await asyncio.sleep(p.delay(attempt))
        sub.stats.gave_up += 1
        log.warning("subscription %s: gave up on %s %s after %d attempts (last: %s)", sub.id,
                    n["notificationType"], n["id"], p.attempts, sub.stats.last_error)
