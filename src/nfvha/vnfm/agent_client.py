"""The manager's one narrow interface to agents: HTTP calls with short timeouts.

Agent errors come back as ``AgentCallError`` carrying the agent's problem details, so the
recovery logic can tell "checkpoint corrupt" (try the previous one) from "host gone".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import httpx

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["AgentCallError", "AgentClient"]


class AgentCallError(NfvhaError):
    """An agent call failed: ``status`` is the HTTP status (0 when unreachable)."""

    problem_type = PROBLEM_PREFIX + "agent-call-failed"

    problem: dict[str, Any]

    def __init__(self, host_id: str, what: str, status: int, problem: dict[str, Any]) -> None:
        self.host_id = host_id
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"{what} on host {host_id} failed ({status or 'unreachable'}): {detail}")

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        """A manager's answer about an agent call: the host and call are in its detail,
        which is the message as it stands; ``status`` is the manager's answer's."""
        status = problem.get("status")
        exc = cls("", "", status if isinstance(status, int) else 500, dict(problem))
        exc.args = (str(problem.get("detail") or problem.get("title") or "no detail"),)
        return exc

    @property
    def corrupt_checkpoint(self) -> bool:
        return self.status == 422 and "file" in self.problem

    @property
    def unreachable(self) -> bool:
        return self.status == 0


class AgentClient:
    """Calls one agent. ``timeout`` bounds every call; long ones (dump, push) pass their own."""

    def __init__(self, host_id: str, url: str, token: str, http: httpx.AsyncClient) -> None:
        self.host_id = host_id
        self.url = url.rstrip("/")
        self.token = token
        self.http = http
        # No token with mutual TLS: the client certificate says who calls.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, what: str, *, timeout: float = 5.0,
                    **kw: Any) -> Any:
        try:
            r = await self.http.request(method, self.url + path, timeout=timeout,
                                        headers=self._headers, **kw)
        except httpx.HTTPError as exc:
            raise AgentCallError(self.host_id, what, 0,
                                 {"detail": f"{type(exc).__name__}: {exc}"}) from exc
        if r.status_code >= 300:
            try:
                problem = r.json()
            except ValueError:
                problem = {"detail": r.text[:300]}
            raise AgentCallError(self.host_id, what, r.status_code, problem)
        return r.json() if r.content else None

    async def create(self, descriptor: dict[str, Any], instance_id: str) -> dict[str, Any]:
        body = {"descriptor": descriptor, "instance_id": instance_id}
        res: dict[str, Any] = await self._call("POST", "/v1/instances", "create instance",
                                               json=body, timeout=20)
        return res

    async def get(self, instance_id: str) -> dict[str, Any]:
        res: dict[str, Any] = await self._call("GET", f"/v1/instances/{instance_id}",
                                               "read instance")
        return res

    async def delete(self, instance_id: str, *, purge: bool = False) -> None:
        try:
            await self._call("DELETE", f"/v1/instances/{instance_id}", "delete instance",
                             params={"purge_checkpoints": str(purge).lower()}, timeout=3)
        except AgentCallError as exc:
            if exc.status != 404:
                raise

    async def kill(self, instance_id: str) -> None:
        """Stop the VNF at once but keep its sandbox, for a restore on the same host."""
        try:
            await self._call("POST", f"/v1/instances/{instance_id}/stop", "kill instance",
                             params={"grace": 0}, timeout=3)
        except AgentCallError as exc:
            if exc.status != 404:
                raise

    async def checkpoint(self, instance_id: str, *, drain: bool = False,
                         extra: dict[str, Any] | None = None,
                         stop: bool = False) -> dict[str, Any]:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/instances/{instance_id}/checkpoints", "checkpoint", timeout=120,
            params={"stop": "true"} if stop else None, json={"drain": drain, "extra": extra or {}})
        return res

    async def all_checkpoints(self) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self._call("GET", "/v1/checkpoints",
                                                     "list checkpoints")
        return res

    async def checkpoints(self, instance_id: str) -> list[dict[str, Any]]:
        res: list[dict[str, Any]] = await self._call(
            "GET", f"/v1/instances/{instance_id}/checkpoints", "list checkpoints")
        return res

    async def push(self, instance_id: str, seq: int, peer_url: str) -> dict[str, Any]:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/checkpoints/{instance_id}/{seq}/push", "push checkpoint",
            json={"peer_url": peer_url}, timeout=120)
        return res

    async def restore(self, instance_id: str, seq: int | None) -> dict[str, Any]:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/instances/{instance_id}/restore", "restore", json={"seq": seq},
            timeout=60)
        return res

    async def standby(self, instance_id: str, seq: int | None) -> dict[str, Any]:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/instances/{instance_id}/standby", "prepare standby",
            json={"seq": seq}, timeout=30)
        return res

    async def exec_probe(self, instance_id: str, timeout: float) -> bool:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/instances/{instance_id}/exec-probe", "exec probe",
            timeout=timeout + 1.0)
        return bool(res.get("ok"))

    async def inject(self, instance_id: str, fault: str) -> dict[str, Any]:
        res: dict[str, Any] = await self._call(
            "POST", f"/v1/instances/{instance_id}/inject", "inject fault", json={"fault": fault})
        return res
