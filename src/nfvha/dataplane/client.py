"""The manager's narrow interface to the steering forwarder."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Self

import httpx

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["ForwarderClient", "ForwarderError", "ReplayGapError"]

class ForwarderError(NfvhaError):
    """The forwarder is unreachable or refused; replay is unavailable until it is back."""

    problem_type = PROBLEM_PREFIX + "forwarder-unavailable"


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
    def __init__(self, url: str, token: str, http: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = http
        # No token with mutual TLS: the client certificate says who calls.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = await self.http.request(method, self.url + path, timeout=5.0,
                                        headers=self._headers, **kw)
        except httpx.HTTPError as exc:
            raise ForwarderError(f"forwarder {self.url} unreachable: {exc}") from exc
        if r.status_code == 409:
            try:
                body = r.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("type") == ReplayGapError.problem_type:
                raise ReplayGapError(str(body.get("detail")), int(body["position"]),
                                     int(body["oldest"]))
        if r.status_code >= 300:
            raise ForwarderError(f"forwarder {method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    async def add(self, name: str, listen_ip: str | None, port: int, target_ip: str,
                  exactly_once: bool, after: str | None = None) -> dict[str, Any]:
        res: dict[str, Any] = await self._call("POST", "/v1/services", json={
            "name": name, "listen_ip": listen_ip, "port": port, "target_ip": target_ip,
            "exactly_once": exactly_once, "after": after})
        return res

    async def remove(self, name: str) -> None:
        await self._call("DELETE", f"/v1/services/{name}")

    async def status(self, name: str) -> dict[str, Any]:
        res: dict[str, Any] = await self._call("GET", f"/v1/services/{name}")
        return res

    async def hold(self, name: str) -> int:
        return int((await self._call("POST", f"/v1/services/{name}/hold"))["position"])

    async def release(self, name: str) -> float:
        return float((await self._call("POST", f"/v1/services/{name}/release"))["held_ms"])

    async def commit(self, name: str, position: int) -> None:
        await self._call("POST", f"/v1/services/{name}/commit", json={"position": position})

    async def replay(self, name: str, position: int) -> dict[str, Any]:
        res: dict[str, Any] = await self._call("POST", f"/v1/services/{name}/replay",
                                               json={"position": position})
        return res

    async def reset(self, name: str) -> None:
        await self._call("POST", f"/v1/services/{name}/reset")
