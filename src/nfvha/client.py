"""One client of the manager's API, for the CLI, the demo, the tests and the benchmarks.

``ManagerClient`` (over ``httpx.Client``) and ``AsyncManagerClient`` (over
``httpx.AsyncClient``) share everything but the I/O: the managers' URLs, the bearer
token, how the manager's certificate is checked (a CA file or an ``ssl.SSLContext``),
timeouts, JSON, and the mapping of a problem answer to its exception class by its
``type`` (``nfvha.errors.error_for_problem``; docs/api.md lists the types).

A manager cluster has one leader; the other members serve reads and answer a write with
``307`` to the leader, or ``503`` while none is elected. Given every member's URL (a
list, or one string with commas), a client sends each request to the leader it last
knew and follows as ``nfvha.follow`` decides, the one implementation of those rules
(redirects only to a configured manager, so the token goes nowhere else; the next
member on a refused connection, a timeout or a ``503``; bounded). Nothing else is
retried: a POST whose answer was lost is not sent again (it could start a second
operation). With one URL a call is one plain request, as before clusters.

    with ManagerClient("https://10.250.0.1:8600,https://10.250.0.2:8600", token,
                       verify="ca.pem") as m:
        m.onboard(vnfd)
        m.create("fm-1", vnfd["id"])
        op_url = m.instantiate("fm-1")
        try:
            m.heal("fm-2")
        except InstanceNotFound:
            ...
"""

from __future__ import annotations

import ssl
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from nfvha.errors import PROBLEM_PREFIX, ConfigError, NfvhaError, error_for_problem
from nfvha.follow import (
    LeaderFollower,
    RedirectRefused,
    Timeout,
    idempotent_method,
    may_have_arrived,
    redirect_target,
    split_urls,
)

# The manager's own errors register their problem types when imported.
from nfvha.store import base as _store_errors  # noqa: F401

__all__ = ["AsyncManagerClient", "ManagerClient", "ManagerUnreachable", "Urls", "Verify",
           "manager_urls", "ssl_verify"]

#: How the manager's certificate is checked: ``True`` (the system's CAs), ``False``
#: (not at all), a CA file, or a ready ``ssl.SSLContext``.
Verify = bool | str | Path | ssl.SSLContext
#: The managers: one URL, several in one string with commas, or a list (each entry one
#: URL or several with commas). The first is asked first.
Urls = str | Sequence[str]

_LCM = "/vnflcm/v1"
_NFVHA = "/nfvha/v1"


#: How long a call keeps asking while every manager answers "no leader" (an election).
ELECTION_WAIT_S = 3.0

class ManagerUnreachable(NfvhaError):
    """No answer from the manager (connection refused, timed out, TLS handshake failed)."""

    problem_type = PROBLEM_PREFIX + "manager-unreachable"


def manager_urls(urls: Urls) -> tuple[str, ...]:
    """``urls`` as a tuple of checked manager URLs, in order, without duplicates or
    trailing slashes (``nfvha.follow.split_urls``); a ``ConfigError`` names a bad one."""
    return split_urls(urls if isinstance(urls, str) else ",".join(urls))


def ssl_verify(verify: Verify) -> ssl.SSLContext | bool:
    """``verify`` as httpx takes it: a CA file becomes an ``ssl.SSLContext`` trusting it."""
    if isinstance(verify, (str, Path)):
        try:
            return ssl.create_default_context(cafile=str(verify))
        except OSError as exc:
            raise ConfigError(f"CA file {verify}: {exc.strerror or exc}") from None
    return verify


def _object(body: Any) -> dict[str, Any] | None:
    """A JSON object as it came, anything else as None (nothing to show)."""
    return body if isinstance(body, dict) else None


class _Api:
    """What both clients share: where a request goes, how it is made and how its answer
    is read."""

    def __init__(self, url: Urls, token: str | None = None, *, verify: Verify = True,
                 timeout: float | httpx.Timeout = 30.0, tries: int | None = None,
                 election_wait: float = 0.0) -> None:
        self.urls = manager_urls(url)
        #: Which manager leads, as last learnt (a redirect, a dead member, ``cluster()``);
        #: shared by every request of this client.
        # An operator's call waits out an election (about a second; "no leader" answers
        # come before anything is done) instead of failing with a 503 to retry by hand.
        self.follower = LeaderFollower(self.urls, tries=tries, election_wait=election_wait)
        self.token = token
        self._verify = ssl_verify(verify)
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else \
            httpx.Timeout(timeout)

    @property
    def url(self) -> str:
        """The manager the next request goes to first: the leader as last known."""
        return self.follower.leader

    def _options(self, transport: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # base_url: the first manager, for callers of ``http`` with relative paths; the
        # client's own requests name their manager in full (``nfvha.follow``).
        opts: dict[str, Any] = {"base_url": self.urls[0], "headers": headers,
                                "timeout": self._timeout, "verify": self._verify}
        if transport is not None:
            opts["transport"] = transport
        return opts

    def _unreachable(self, method: str, path: str, exc: httpx.HTTPError,
                     idempotent: bool | None) -> NfvhaError:
        """The error for a request no manager answered: which, and whether it may have
        been acted on (then it was not resent, and the caller should look before
        repeating it)."""
        if isinstance(exc, RedirectRefused):
            return ConfigError(f"{method} {path}: {exc}; give the client every manager's "
                               "URL")
        why = str(exc) or type(exc).__name__
        if len(self.urls) == 1:
            return ManagerUnreachable(f"{method} {path}: manager at {self.urls[0]} "
                                      f"unreachable: {why}")
        try:
            where = f"{exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # an error raised before any request was made
            where = "?"
        if isinstance(exc, httpx.TransportError) and may_have_arrived(exc) and not (
                idempotent_method(method) if idempotent is None else idempotent):
            return ManagerUnreachable(
                f"{method} {path}: the answer of {where} was lost ({why}); it may have been "
                "acted on, so it was not sent to another manager: look (e.g. `nfvha ops`) "
                "before repeating it")
        return ManagerUnreachable(f"{method} {path}: no manager answered "
                                  f"({', '.join(self.urls)}); the last, {where}: {why}")

    def _index_of(self, url: Any, r: httpx.Response) -> int | None:
        """Which configured manager ``url`` is (by origin), if any."""
        if not isinstance(url, str) or not url:
            return None
        target = redirect_target(url, r.request.url, self.follower.parsed)
        return None if target is None else target[1]

    def _learn_leader(self, r: httpx.Response) -> None:
        """Remember the leader a ``GET /nfvha/v1/cluster`` answer names, when it is one of
        the configured managers: later requests, reads included, then go to it first
        (a follower's reads of host states are not the leader's, which hears them)."""
        view = self._json(r) if r.status_code < 400 else None
        leader = view.get("leader") if isinstance(view, dict) else None
        i = self._index_of(leader.get("url"), r) if isinstance(leader, dict) else None
        if i is not None:
            self.follower.remember(i)

    def _cluster_status(self, r: httpx.Response) -> dict[str, Any]:
        """The cluster part of ``status()``: the view of the member that answered (None
        from a manager that predates clusters), and each configured manager with what
        that view says of it: its member id, whether it answered, whether it leads."""
        view: dict[str, Any] | None = self._json(r) if r.status_code < 400 else None
        answered = self._index_of(str(r.request.url), r)
        leader = (view or {}).get("leader") or {}
        # Alone, the manager leads whatever URL it advertises.
        lead = answered if (view or {}).get("mode") == "single" \
            else self._index_of(leader.get("url"), r)
        managers = []
        for i, u in enumerate(self.urls):
            member = leader.get("member") if i == lead else \
                (view or {}).get("member") if i == answered else None
            managers.append({"url": u, "member": member, "answered": i == answered,
                             "leader": i == lead})
        return {"cluster": view, "managers": managers}

    @staticmethod
    def _check(method: str, path: str, r: httpx.Response, ok: Collection[int]) -> None:
        """A problem answer (any status >= 400 not in ``ok``) raised as its typed error,
        whose message names the request and the status."""
        if r.status_code < 400 or r.status_code in ok:
            return
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"title": r.reason_phrase, "detail": r.text or r.reason_phrase}
        exc = error_for_problem(r.status_code, body)
        exc.args = (f"{method} {path}: {r.status_code}: "
                    f"{body.get('detail') or body.get('title') or r.reason_phrase}",)
        raise exc

    @staticmethod
    def _json(r: httpx.Response) -> Any:
        return r.json() if r.content else None

    @staticmethod
    def _operation(r: httpx.Response) -> str:
        """The URL of the operation occurrence a 202 answer started (its ``Location``)."""
        return str(r.headers.get("Location", ""))

    @staticmethod
    def _params(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}


class ManagerClient(_Api):
    """Synchronous client of the manager (or of a manager cluster's leader: ``url`` may
    name every member). ``tries``: managers tried per request (default: one each).
    ``http`` is its ``httpx.Client`` (token and TLS set; base URL the first manager) for
    calls this class has no method for; ``request`` follows the leader, ``http`` does
    not."""

    def __init__(self, url: Urls, token: str | None = None, *, verify: Verify = True,
                 timeout: float | httpx.Timeout = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 tries: int | None = None, election_wait: float = ELECTION_WAIT_S) -> None:
        super().__init__(url, token, verify=verify, timeout=timeout, tries=tries,
                         election_wait=election_wait)
        self.http = httpx.Client(**self._options(transport))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def request(self, method: str, path: str, *, ok: Collection[int] = (),
                json: Any = None, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None,
                timeout: Timeout = httpx.USE_CLIENT_DEFAULT,
                idempotent: bool | None = None) -> httpx.Response:
        """The answer to one request (``path`` from ``/``), from the leader; a problem
        answer raises its typed error unless its status is in ``ok``; no answer raises
        ``ManagerUnreachable``. ``idempotent``: a POST that may safely arrive twice
        (default: by the method) is resent to another manager after a broken
        connection."""
        try:
            r = self.follower.send_sync(self.http, method, path, json=json, params=params,
                                        headers=headers, timeout=timeout,
                                        idempotent=idempotent)
        except httpx.HTTPError as exc:
            raise self._unreachable(method, path, exc, idempotent) from exc
        self._check(method, path, r, ok)
        return r

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON of the answer (None when it has no body)."""
        return self._json(self.request(method, path, **kw))

    # -- VNFDs and instances (SOL003 LCM) -------------------------------------------------

    def onboard(self, vnfd: Mapping[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = self.call("POST", f"{_NFVHA}/vnfds", json=dict(vnfd))
        return res

    def vnfds(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", f"{_NFVHA}/vnfds")
        return res

    def create(self, vnf_id: str | None, vnfd_id: str, **fields: Any) -> dict[str, Any]:
        """Create an instance (``vnfInstanceName``, ``vnfInstanceDescription`` in
        ``fields``); ``vnf_id`` None lets the manager pick the id."""
        body = {"vnfdId": vnfd_id, **self._params(vnfInstanceId=vnf_id, **fields)}
        res: dict[str, Any] = self.call("POST", f"{_LCM}/vnf_instances", json=body)
        return res

    def instantiate(self, vnf_id: str, flavour: str = "default") -> str:
        """Start instantiating; the URL of the operation occurrence."""
        return self._operation(self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/instantiate", json={"flavourId": flavour}))

    def heal(self, vnf_id: str, cause: str | None = None) -> str:
        return self._operation(self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/heal", json=self._params(cause=cause)))

    def terminate(self, vnf_id: str, graceful: bool = False) -> str:
        return self._operation(self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/terminate",
            json={"terminationType": "GRACEFUL" if graceful else "FORCEFUL"}))

    def delete(self, vnf_id: str) -> None:
        self.request("DELETE", f"{_LCM}/vnf_instances/{vnf_id}")

    def instances(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", f"{_LCM}/vnf_instances")
        return res

    def instance(self, vnf_id: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", f"{_LCM}/vnf_instances/{vnf_id}")
        return res

    def ops(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        """Operation occurrences, of one instance or of all."""
        res: list[dict[str, Any]] = self.call(
            "GET", f"{_LCM}/vnf_lcm_op_occs", params=self._params(vnfInstanceId=vnf_id))
        return res

    def op(self, op_id: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("GET", f"{_LCM}/vnf_lcm_op_occs/{op_id}")
        return res

    # -- nfvha's own -----------------------------------------------------------------------

    def move(self, vnf_id: str, host: str | None = None) -> str:
        """A planned move (placement picks the host if none); the operation's URL."""
        return self._operation(self.request(
            "POST", f"{_NFVHA}/vnf_instances/{vnf_id}/move", json={"host": host}))

    def inject(self, vnf_id: str, fault: str) -> dict[str, Any]:
        """``kill`` or ``hang`` the instance's VNF."""
        res: dict[str, Any] = self.call("POST", f"{_NFVHA}/vnf_instances/{vnf_id}/inject",
                                        json={"fault": fault})
        return res

    def hosts(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", f"{_NFVHA}/hosts")
        return res

    def remove_host(self, host: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("DELETE", f"{_NFVHA}/hosts/{host}")
        return res

    def fence(self, host: str) -> dict[str, Any]:
        res: dict[str, Any] = self.call("POST", f"{_NFVHA}/hosts/{host}/fence")
        return res

    def fences(self, host: str | None = None) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call("GET", f"{_NFVHA}/fences",
                                              params=self._params(host=host))
        return res

    def checkpoints(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = self.call(
            "GET", f"{_NFVHA}/checkpoints", params=self._params(vnfInstanceId=vnf_id))
        return res

    # -- FM ----------------------------------------------------------------------------------

    def alarms(self, active: bool | None = None) -> list[dict[str, Any]]:
        params = {} if active is None else {"active": "true" if active else "false"}
        res: list[dict[str, Any]] = self.call("GET", "/vnffm/v1/alarms", params=params)
        return res

    # -- the cluster -------------------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        """``GET /nfvha/v1/cluster`` of the manager asked: its mode, member id, whether it
        leads, and the leader (member, url, term, since). The leader, if configured, is
        asked first from then on."""
        r = self.request("GET", f"{_NFVHA}/cluster")
        self._learn_leader(r)
        res: dict[str, Any] = self._json(r)
        return res

    def forwarders(self) -> dict[str, Any] | None:
        """``GET /nfvha/v1/forwarders``: the steering forwarders as the manager sees them
        (``pair``, ``active``, ``term``, each member's ``role``, ``last_beat_ago_s`` and
        ``in_sync``, the pair's ``alarm``); None where it answers 404 (no forwarder, or a
        manager from before forwarder pairs)."""
        r = self.request("GET", f"{_NFVHA}/forwarders", ok=(404,))
        return None if r.status_code == 404 else _object(self._json(r))

    def status(self) -> dict[str, Any]:
        """What ``nfvha status`` shows: ``cluster`` (the view of the manager that
        answered; None from a manager without clusters) and ``managers`` (each configured
        URL: ``member``, ``answered``, ``leader``), then ``forwarders`` (None: none to
        show), ``hosts``, ``vnfs`` and active ``alarms``, read from the leader when it is
        a configured manager."""
        r = self.request("GET", f"{_NFVHA}/cluster", ok=(404,))
        self._learn_leader(r)
        return {**self._cluster_status(r), "forwarders": self.forwarders(),
                "hosts": self.hosts(), "vnfs": self.instances(),
                "alarms": self.alarms(active=True)}


class AsyncManagerClient(_Api):
    """The same as ``ManagerClient``, over ``httpx.AsyncClient``."""

    def __init__(self, url: Urls, token: str | None = None, *, verify: Verify = True,
                 timeout: float | httpx.Timeout = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 tries: int | None = None, election_wait: float = ELECTION_WAIT_S) -> None:
        super().__init__(url, token, verify=verify, timeout=timeout, tries=tries,
                         election_wait=election_wait)
        self.http = httpx.AsyncClient(**self._options(transport))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, *, ok: Collection[int] = (),
                      json: Any = None, params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None,
                      timeout: Timeout = httpx.USE_CLIENT_DEFAULT,
                      idempotent: bool | None = None) -> httpx.Response:
        try:
            r = await self.follower.send(self.http, method, path, json=json, params=params,
                                         headers=headers, timeout=timeout,
                                         idempotent=idempotent)
        except httpx.HTTPError as exc:
            raise self._unreachable(method, path, exc, idempotent) from exc
        self._check(method, path, r, ok)
        return r

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        return self._json(await self.request(method, path, **kw))

    async def onboard(self, vnfd: Mapping[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("POST", f"{_NFVHA}/vnfds", json=dict(vnfd))
        return res

    async def vnfds(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call("GET", f"{_NFVHA}/vnfds")
        return res

    async def create(self, vnf_id: str | None, vnfd_id: str, **fields: Any) -> dict[str, Any]:
        body = {"vnfdId": vnfd_id, **self._params(vnfInstanceId=vnf_id, **fields)}
        res: dict[str, Any] = await self.call("POST", f"{_LCM}/vnf_instances", json=body)
        return res

    async def instantiate(self, vnf_id: str, flavour: str = "default") -> str:
        return self._operation(await self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/instantiate", json={"flavourId": flavour}))

    async def heal(self, vnf_id: str, cause: str | None = None) -> str:
        return self._operation(await self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/heal", json=self._params(cause=cause)))

    async def terminate(self, vnf_id: str, graceful: bool = False) -> str:
        return self._operation(await self.request(
            "POST", f"{_LCM}/vnf_instances/{vnf_id}/terminate",
            json={"terminationType": "GRACEFUL" if graceful else "FORCEFUL"}))

    async def delete(self, vnf_id: str) -> None:
        await self.request("DELETE", f"{_LCM}/vnf_instances/{vnf_id}")

    async def instances(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call("GET", f"{_LCM}/vnf_instances")
        return res

    async def instance(self, vnf_id: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("GET", f"{_LCM}/vnf_instances/{vnf_id}")
        return res

    async def ops(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call(
            "GET", f"{_LCM}/vnf_lcm_op_occs", params=self._params(vnfInstanceId=vnf_id))
        return res

    async def op(self, op_id: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("GET", f"{_LCM}/vnf_lcm_op_occs/{op_id}")
        return res

    async def move(self, vnf_id: str, host: str | None = None) -> str:
        return self._operation(await self.request(
            "POST", f"{_NFVHA}/vnf_instances/{vnf_id}/move", json={"host": host}))

    async def inject(self, vnf_id: str, fault: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call(
            "POST", f"{_NFVHA}/vnf_instances/{vnf_id}/inject", json={"fault": fault})
        return res

    async def hosts(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call("GET", f"{_NFVHA}/hosts")
        return res

    async def remove_host(self, host: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("DELETE", f"{_NFVHA}/hosts/{host}")
        return res

    async def fence(self, host: str) -> dict[str, Any]:
        res: dict[str, Any] = await self.call("POST", f"{_NFVHA}/hosts/{host}/fence")
        return res

    async def fences(self, host: str | None = None) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call("GET", f"{_NFVHA}/fences",
                                                    params=self._params(host=host))
        return res

    async def checkpoints(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self.call(
            "GET", f"{_NFVHA}/checkpoints", params=self._params(vnfInstanceId=vnf_id))
        return res

    async def alarms(self, active: bool | None = None) -> list[dict[str, Any]]:
        params = {} if active is None else {"active": "true" if active else "false"}
        res: list[dict[str, Any]] = await self.call("GET", "/vnffm/v1/alarms", params=params)
        return res

    async def cluster(self) -> dict[str, Any]:
        r = await self.request("GET", f"{_NFVHA}/cluster")
        self._learn_leader(r)
        res: dict[str, Any] = self._json(r)
        return res

    async def forwarders(self) -> dict[str, Any] | None:
        r = await self.request("GET", f"{_NFVHA}/forwarders", ok=(404,))
        return None if r.status_code == 404 else _object(self._json(r))

    async def status(self) -> dict[str, Any]:
        r = await self.request("GET", f"{_NFVHA}/cluster", ok=(404,))
        self._learn_leader(r)
        return {**self._cluster_status(r), "forwarders": await self.forwarders(),
                "hosts": await self.hosts(), "vnfs": await self.instances(),
                "alarms": await self.alarms(active=True)}
