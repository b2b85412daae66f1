"""Send a request to the leader of a manager cluster, given every manager's URL.

In a cluster only the leader acts; the other members answer a write with ``307`` (or
``308``) and the leader's URL in ``Location``, or with ``503`` while no leader is known
(docs: the cluster contract, issue 14). Agents, the forwarder and the CLI all follow the
same rules, so they live here, once, with the I/O kept apart from the decisions:

* a request goes to the leader last known (at first: the first URL);
* a redirect is followed **by hand**, and only to the origin (scheme, host, port) of a
  configured manager: anywhere else the bearer token would leak (httpx itself would drop
  the ``Authorization`` header across origins, but also any header a caller adds, and it
  would follow wherever told); at most ``len(urls) + 1`` hops per request, so two members
  that each name the other as leader cannot keep a caller bouncing;
* a refused connection, a timeout or a ``503`` moves on to the next URL (round robin),
  at most ``tries`` times per request, and the member that worked is remembered.

A request that may already have been acted on is resent elsewhere only when it is
idempotent: a repeated instantiate would start a second operation. That is a request
whose connection broke or timed out after it was sent, and a ``503`` other than a
member's "no leader" answer (``"code": "no-leader"``, given before anything is done): a
leader that loses its term in the middle of a request, or whose state store fails,
answers ``503`` too, possibly after part of the work. GET, HEAD, PUT, DELETE and OPTIONS
are idempotent (RFC 9110); a caller whose POST is safe to repeat (heartbeats, status
reports) says so.

``LeaderFollower.send`` (``httpx.AsyncClient``) and ``send_sync`` (``httpx.Client``)
differ only in their I/O; both drive an ``Attempts``, whose decisions stand on the pure
functions ``origin``, ``redirect_target``, ``next_index``, ``may_have_arrived`` and
``nothing_done``.

    follower = LeaderFollower(split_urls("https://m1:8600,https://m2:8600"))
    r = await follower.send(client, "POST", "/nfvha/v1/events", json=event,
                            headers=auth, idempotent=True)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from httpx._client import UseClientDefault

from nfvha.errors import ConfigError

__all__ = [
    "REDIRECTS",
    "Attempts",
    "LeaderFollower",
    "RedirectRefused",
    "idempotent_method",
    "may_have_arrived",
    "next_index",
    "nothing_done",
    "origin",
    "redirect_target",
    "split_urls",
]

log = logging.getLogger(__name__)

#: The redirects a follower answers a write with: both keep the method and the body.
#: (301, 302 and 303 may turn a POST into a GET: they are answers, not followed.)
REDIRECTS = frozenset({307, 308})
#: While an election is waited out (``election_wait``), the members are asked this often.
ELECTION_POLL_S = 0.25

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Timeout = float | httpx.Timeout | None | UseClientDefault


class RedirectRefused(httpx.RequestError):
    """A manager redirected to a place that is not a configured manager (or said nowhere).

    Nothing was sent there. An ``httpx.RequestError``, so that callers that treat "no
    usable answer" as before need no new case."""


# -- the decisions, as pure functions -------------------------------------------------------


def split_urls(text: str) -> tuple[str, ...]:
    """``URL[,URL...]`` as given on a command line: each an http(s) URL with a host,
    without a trailing slash, duplicates dropped (order kept: the first is asked first).
    A mistyped URL is refused here rather than found unreachable at every request."""
    urls: list[str] = []
    for part in text.split(","):
        part = part.strip().rstrip("/")
        if not part:
            continue
        try:
            url = httpx.URL(part)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"manager URL {part!r}: {exc}") from None
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ConfigError(f"manager URL {part!r}: not http(s)://HOST[:PORT]")
        if part not in urls:
            urls.append(part)
    if not urls:
        raise ConfigError(f"no manager URL in {text!r}")
    return tuple(urls)


def origin(url: httpx.URL | str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port made explicit: ``https://m`` and
    ``https://m:443`` are one origin, ``http://m:8600`` and ``https://m:8600`` two."""
    u = httpx.URL(url)
    return u.scheme, u.host, u.port or _DEFAULT_PORTS.get(u.scheme, 0)


def redirect_target(location: str | None, sent_to: httpx.URL,
                    bases: Sequence[httpx.URL]) -> tuple[httpx.URL, int] | None:
    """Where a redirect may be followed: ``location`` (relative ones resolved against the
    URL the request went to) and the index of the configured manager it belongs to; None
    when it names no configured manager's origin, carries credentials of its own, or is
    not a URL, since whatever is sent there (the token) would go to a stranger."""
    if not location:
        return None
    try:
        target = sent_to.join(location)
    except httpx.InvalidURL:
        return None
    if target.userinfo:
        return None
    o = origin(target)
    for i, base in enumerate(bases):
        if origin(base) == o:
            return target, i
    return None


def next_index(i: int, n: int) -> int:
    """Round robin: the manager after ``i`` of ``n``."""
    return (i + 1) % n


def idempotent_method(method: str) -> bool:
    """Sending it twice does what sending it once does (RFC 9110, 9.2.2)."""
    return method.upper() in _IDEMPOTENT


def may_have_arrived(exc: httpx.TransportError) -> bool:
    """Whether the manager may have received (and acted on) the request: only a failure
    to connect at all proves it did not."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def nothing_done(r: httpx.Response) -> bool:
    """The answer says the request was not acted on: a redirect to the leader, or a
    member's ``503`` "no leader" (the contract's problem ``"code": "no-leader"``)."""
    if r.status_code in REDIRECTS:
        return True
    if r.status_code != 503:
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("code") == "no-leader"


# -- one request's course -------------------------------------------------------------------


class Attempts:
    """The course of one request: where it goes next, given each outcome.

    ``url`` is where to send it now. After an answer call ``answered``, after a transport
    error ``failed`` (inside the ``except``); each returns the response to hand back to the
    caller, or None to send again to the new ``url``; when the tries are spent they raise
    (the last error, ``RedirectRefused`` or ``httpx.TooManyRedirects``), except that a
    ``503`` seen on the way is returned instead: "no leader" says more than the refused
    connection of a member that is down. The I/O stays with the caller (sync or async).
    """

    def __init__(self, follower: LeaderFollower, path: str, *, idempotent: bool) -> None:
        self._f = follower
        self.path = path
        self.idempotent = idempotent
        self.index = follower.current
        self.url = follower.url_for(self.index, path)
        #: ``url`` is a redirect's ``Location``, query included: params are not added again.
        self.from_location = False
        self.hops = 0
        self.failures = 0
        self._unavailable: httpx.Response | None = None
        #: Seconds to wait before sending again (set while an election is waited out).
        self.pause = 0.0
        self._elect_until = time.monotonic() + follower.election_wait

    def answered(self, r: httpx.Response) -> httpx.Response | None:
        if r.status_code in REDIRECTS:
            target = redirect_target(r.headers.get("location"), r.request.url,
                                     self._f.parsed)
            if target is None:
                return self._next(self._f.refused(r))
            if self.hops >= self._f.max_hops:
                raise httpx.TooManyRedirects(
                    f"{r.request.method} {self.path}: still redirected after {self.hops} "
                    f"hops between the managers (no settled leader)", request=r.request)
            self.hops += 1
            self.url, self.index = str(target[0]), target[1]
            self.from_location = True
            self._f.remember(self.index)
            return None
        if r.status_code == 503:
            if not self.idempotent and not nothing_done(r):
                # Perhaps acted on in part: the caller's to decide (the next request
                # starts at another member all the same).
                self._f.remember(next_index(self.index, len(self._f.urls)))
                return r
            self._unavailable = r
            return self._next(None)
        self._f.remember(self.index, answered=True)
        return r

    def failed(self, exc: httpx.TransportError) -> httpx.Response | None:
        if not self.idempotent and may_have_arrived(exc):
            # Not resent (it may have been acted on), but the next request starts elsewhere.
            self._f.remember(next_index(self.index, len(self._f.urls)))
            raise exc
        return self._next(exc)

    def _next(self, exc: httpx.HTTPError | None) -> httpx.Response | None:
        self.failures += 1
        self.index = next_index(self.index, len(self._f.urls))
        self._f.remember(self.index)
        self.pause = 0.0
        if self.failures >= self._f.tries:
            if self._unavailable is not None:
                if nothing_done(self._unavailable) and time.monotonic() < self._elect_until:
                    # Every member said "no leader" and nothing was done: an election is
                    # under way (about a second); wait for it rather than fail the call.
                    self.failures, self._unavailable = 0, None
                    self.pause = ELECTION_POLL_S
                    self.url = self._f.url_for(self.index, self.path)
                    self.from_location = False
                    return None
                return self._unavailable
            assert exc is not None  # a 503 would have been kept
            raise exc
        self.url = self._f.url_for(self.index, self.path)
        self.from_location = False
        return None


class LeaderFollower:
    """Sends requests to the leader among ``urls`` and remembers which one it is.

    One per caller and cluster, shared by its tasks: what one request learns (a redirect,
    a dead member) the next one starts from. ``tries``: failed sends (transport errors,
    ``503``, refused redirects) per request before giving up, by default one per URL;
    redirects followed count apart, at most ``len(urls) + 1``. With one URL this is one
    plain request, as without a cluster.
    """

    def __init__(self, urls: Sequence[str], *, tries: int | None = None,
                 election_wait: float = 0.0) -> None:
        if not urls:
            raise ConfigError("a leader follower needs at least one manager URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.parsed = tuple(httpx.URL(u) for u in self.urls)
        self.tries = max(1, tries if tries is not None else len(self.urls))
        self.max_hops = len(self.urls) + 1
        #: How long a request whose every member answered "no leader" (nothing done)
        #: keeps asking, for an election to end: 0 for callers that retry on their own
        #: (agents' reports), a few seconds for an operator's call.
        self.election_wait = election_wait
        self.current = 0
        self._answered_by: int | None = None  # the member that gave the last answer
        self._warned: set[tuple[str, str, int]] = set()

    @property
    def leader(self) -> str:
        """The URL the next request goes to first: the leader as last known."""
        return self.urls[self.current]

    def url_for(self, i: int, path: str) -> str:
        return self.urls[i] + path

    def remember(self, i: int, *, answered: bool = False) -> None:
        """The next request starts at member ``i``. Logged only when another member than
        before gives an answer (a leader change), not at each member tried in vain: with
        every manager down, a reporter twice a second would log a line per member."""
        self.current = i
        if answered and i != self._answered_by:
            if self._answered_by is not None:
                log.info("manager requests are answered by %s now (before: %s)",
                         self.urls[i], self.urls[self._answered_by])
            self._answered_by = i

    def refused(self, r: httpx.Response) -> RedirectRefused:
        """The error for a redirect not followed; logged once per place it pointed to (a
        misconfigured cluster would otherwise log it at every report)."""
        location = r.headers.get("location")
        why = (f"{r.request.url} redirected to {location!r}, which is not one of the "
               f"configured managers {', '.join(self.urls)}: not followed (the token "
               "would go there); a member's --advertise-url must be one of these")
        try:
            key = origin(r.request.url.join(location)) if location else ("", "", 0)
        except httpx.InvalidURL:
            key = ("", str(location), 0)
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            log.warning("%s", why)
        return RedirectRefused(why, request=r.request)

    def attempts(self, method: str, path: str, *, idempotent: bool | None = None) -> Attempts:
        """The course of one request to ``path`` (starting with ``/``); ``idempotent``
        None: by its method."""
        return Attempts(self, path, idempotent=idempotent_method(method)
                        if idempotent is None else idempotent)

    async def send(self, client: httpx.AsyncClient, method: str, path: str, *,
                   json: Any = None, params: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None,
                   timeout: Timeout = httpx.USE_CLIENT_DEFAULT,
                   idempotent: bool | None = None) -> httpx.Response:
        """Send one request to the leader, following it as the module says; the answer
        (any status, a ``503`` when no member had a leader), or the last error."""
        course = self.attempts(method, path, idempotent=idempotent)
        while True:
            try:
                r = await client.request(method, course.url, json=json,
                                         params=None if course.from_location else params,
                                         headers=headers, timeout=timeout,
                                         follow_redirects=False)
            except httpx.TransportError as exc:
                done = course.failed(exc)
            else:
                done = course.answered(r)
            if done is not None:
                return done
            if course.pause:
                await asyncio.sleep(course.pause)

    def send_sync(self, client: httpx.Client, method: str, path: str, *,
                  json: Any = None, params: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None,
                  timeout: Timeout = httpx.USE_CLIENT_DEFAULT,
                  idempotent: bool | None = None) -> httpx.Response:
        """``send`` for a synchronous ``httpx.Client``."""
        course = self.attempts(method, path, idempotent=idempotent)
        while True:
            try:
                r = client.request(method, course.url, json=json,
                                   params=None if course.from_location else params,
                                   headers=headers, timeout=timeout, follow_redirects=False)
            except httpx.TransportError as exc:
                done = course.failed(exc)
            else:
                done = course.answered(r)
            if done is not None:
                return done
            if course.pause:
                time.sleep(course.pause)
