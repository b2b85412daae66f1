"""The manager's narrow interface to the steering forwarder."""

from __future__ import annotations

from typing import Any

import httpx

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["ForwarderClient", "ForwarderError"]


class ForwarderError(NfvhaError):
    """The forwarder is unreachable or refused; replay is unavailable until it is back."""

    problem_type = PROBLEM_PREFIX + "forwarder-unavailable"


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
