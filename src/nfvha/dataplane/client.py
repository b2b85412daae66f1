"""The manager's narrow interface to the steering forwarder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from nfvha.errors import PROBLEM_PREFIX, NfvhaError, error_for_problem
from nfvha.wire import (
    CommitResult,
    HoldResult,
    PositionRequest,
    ReleaseResult,
    ReplayPace,
    ReplayRequest,
    ReplayResult,
    ServiceRequest,
    ServiceStatus,
)

__all__ = ["ForwarderClient", "ForwarderError", "ForwarderNotActive", "ReplayGapError"]

M = TypeVar("M", bound=BaseModel)

class ForwarderError(NfvhaError):
    """The forwarder is unreachable or refused; replay is unavailable until it is back."""

    problem_type = PROBLEM_PREFIX + "forwarder-unavailable"


class ForwarderNotActive(ForwarderError):
    """The forwarder called is not its pair's active one (``active`` names the one it
    follows, if it knows): the call changed nothing there."""

    problem_type = PROBLEM_PREFIX + "forwarder-not-active"

    def __init__(self, message: str, active: str | None = None) -> None:
        super().__init__(message)
        self.active = active

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        exc = super().from_problem(problem)
        active = problem.get("active")
        exc.active = active if isinstance(active, str) else None
        return exc


class ReplayGapError(ForwarderError):
    """The forwarder refused a replay: its log was trimmed past ``position``; ``oldest`` is
    the oldest position it can replay from (what lies between is lost)."""

    problem_type = PROBLEM_PREFIX + "replay-gap"

    def __init__(self, message: str, position: int = -1, oldest: int = -1) -> None:
        super().__init__(message)
        self.position = position
        self.oldest = oldest

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        exc = super().from_problem(problem)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            exc.position, exc.oldest = int(problem["position"]), int(problem["oldest"])
        return exc


class ForwarderClient:
    """Calls the forwarder; answers are ``nfvha.wire`` models. Every failure is a
    ``ForwarderError`` (the manager alarms and carries on without replay), a refused
    replay the ``ReplayGapError`` of its problem type; the typed error of any other
    problem answer is the ``ForwarderError``'s ``__cause__``."""

    def __init__(self, url: str, token: str, http: httpx.AsyncClient,
                 members: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        #: A forwarder pair's members (id -> URL): a call that reaches one that is not
        #: active is sent once more to the one it names.
        self.members = {k: v.rstrip("/") for k, v in (members or {}).items()}
        self._abandoned: dict[str, asyncio.Event] = {}
        self.token = token
        self.http = http
        # No token with mutual TLS: the client certificate says who calls.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def switch(self, url: str) -> None:
        """Call ``url`` from now on (a pair's takeover); calls under way to the one
        before end at once, with a ``ForwarderError``."""
        url = url.rstrip("/")
        if url == self.url:
            return
        old, self.url = self.url, url
        self._abandoned.pop(url, None)
        self._abandoned.setdefault(old, asyncio.Event()).set()

    async def _call(self, method: str, path: str, body: BaseModel | None = None,
                    timeout: float = 5.0) -> httpx.Response:
        try:
            return await self._call_once(method, path, body, timeout)
        except ForwarderNotActive as exc:
            url = self.members.get(exc.active or "")
            if url is None or url == self.url:
                raise
            self.switch(url)
            return await self._call_once(method, path, body, timeout)

    async def _call_once(self, method: str, path: str, body: BaseModel | None,
                         timeout: float) -> httpx.Response:
        kw: dict[str, Any] = {} if body is None else {"json": body.model_dump(mode="json")}
        url = self.url  # the one called, even if a takeover moves self.url meanwhile
        gone = self._abandoned.setdefault(url, asyncio.Event())
        # A forwarder whose host lost power answers nothing: a short connect timeout, and
        # a call under way when its pair's standby takes over ends at once (``abandon``),
        # or it would hold the VNF's next checkpoints (the re-anchoring) for its timeout.
        req = asyncio.ensure_future(self.http.request(
            method, url + path, timeout=httpx.Timeout(timeout, connect=0.5),
            headers=self._headers, **kw))
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({req, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if not req.done():
            req.cancel()
            raise ForwarderError(f"forwarder {url} was replaced by its pair's standby "
                                 f"during {method} {path}; nothing is known of the call")
        try:
            r = req.result()
        except httpx.HTTPError as exc:
            raise ForwarderError(f"forwarder {url} unreachable: {exc}") from exc
        if r.status_code < 300:
            return r
        try:
            problem = r.json()
        except ValueError:
            problem = None
        what = f"forwarder {method} {path}: {r.status_code}"
        if not isinstance(problem, dict) or not problem.get("type"):
            raise ForwarderError(f"{what} {r.text[:300]}")
        error = error_for_problem(r.status_code, problem)
        error.args = (f"{what}: {problem.get('detail') or problem.get('title')}",)
        if isinstance(error, ForwarderError):
            raise error
        wrapped = ForwarderError(str(error))
        wrapped.problem = error.problem
        raise wrapped from error

    async def _read(self, model: type[M], method: str, path: str,
                    body: BaseModel | None = None, timeout: float = 5.0) -> M:
        r = await self._call(method, path, body, timeout)
        try:
            return model.model_validate_json(r.content)
        except ValidationError as exc:
            raise ForwarderError(f"forwarder {method} {path}: unexpected answer: {exc}") \
                from exc

    async def add(self, name: str, listen_ip: str | None, port: int, target_ip: str,
                  exactly_once: bool, after: str | None = None) -> ServiceStatus:
        return await self._read(ServiceStatus, "POST", "/v1/services", ServiceRequest(
            name=name, listen_ip=listen_ip, port=port, target_ip=target_ip,
            exactly_once=exactly_once, after=after))

    async def remove(self, name: str) -> None:
        await self._call("DELETE", f"/v1/services/{name}")

    async def status(self, name: str) -> ServiceStatus:
        return await self._read(ServiceStatus, "GET", f"/v1/services/{name}")

    async def hold(self, name: str) -> int:
        """Hold delivery; the log position of the cut."""
        return (await self._read(HoldResult, "POST", f"/v1/services/{name}/hold")).position

    async def release(self, name: str) -> float:
        """Release delivery; how long it was held, in milliseconds."""
        res = await self._read(ReleaseResult, "POST", f"/v1/services/{name}/release")
        return res.held_ms

    async def commit(self, name: str, position: int) -> int:
        """Let the log forget up to ``position``; how many datagrams it trimmed."""
        res = await self._read(CommitResult, "POST", f"/v1/services/{name}/commit",
                               PositionRequest(position=position))
        return res.trimmed

    async def replay(self, name: str, position: int,
                     pace: ReplayPace | None = None) -> ReplayResult:
        """Replay from ``position`` and release; ``ReplayGapError`` if the log was trimmed
        past it (delivery stays held). ``pace`` names the agent that reads the VNF's
        receive queue to pace it by. The forwarder sends it all within its pacing
        deadline (10 s, ``nfvha.dataplane.pacing.PaceConfig``), and this call waits that
        long and more."""
        return await self._read(ReplayResult, "POST", f"/v1/services/{name}/replay",
                                ReplayRequest(position=position, pace=pace), timeout=30.0)

    async def reset(self, name: str) -> None:
        await self._call("POST", f"/v1/services/{name}/reset")
