"""The manager's one narrow interface to agents: HTTP calls with short timeouts.

Answers are parsed into ``nfvha.wire`` models. An agent's problem answer is raised as
the exception class of its ``type`` (``nfvha.errors.error_for_problem``), so the
recovery logic catches ``CheckpointCorrupt`` (try the previous one), ``InstanceStopped``
(a hang) or ``AgentUnreachable`` (no answer at all) rather than reading statuses and
texts; the message names the call and the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from nfvha.errors import PROBLEM_PREFIX, InstanceNotFound, NfvhaError, error_for_problem
from nfvha.wire import (
    CheckpointMeta,
    CheckpointPushed,
    CheckpointRequest,
    CreateInstanceRequest,
    ExecProbeResult,
    Fault,
    InjectRequest,
    InstanceView,
    PushRequest,
    RestoreRequest,
)

__all__ = ["AgentCallError", "AgentClient", "AgentUnreachable"]

M = TypeVar("M", bound=BaseModel)
_CHECKPOINTS = TypeAdapter(list[CheckpointMeta])


class AgentCallError(NfvhaError):
    """An agent call failed without an answer of a known problem type (its answer was
    not problem details, or not the JSON the call returns): ``status`` is the HTTP status
    (0 when there was no answer)."""

    problem_type = PROBLEM_PREFIX + "agent-call-failed"

    def __init__(self, host_id: str, what: str, status: int, detail: str) -> None:
        self.host_id = host_id
        self.status = status
        super().__init__(f"{what} on host {host_id} failed ({status or 'unreachable'}): "
                         f"{detail}")

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        """A manager's answer about an agent call: the host and call are in its detail,
        which is the message as it stands; ``status`` is the manager's answer's."""
        status = problem.get("status")
        exc = cls("", "", status if isinstance(status, int) else 500, "")
        exc.args = (str(problem.get("detail") or problem.get("title") or "no detail"),)
        exc.problem = dict(problem)
        return exc


class AgentUnreachable(AgentCallError):
    """No answer from the agent (connection refused or reset, timed out)."""

    problem_type = PROBLEM_PREFIX + "agent-unreachable"


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
                    body: BaseModel | None = None, **kw: Any) -> httpx.Response:
        """The agent's answer to one call; a refusal raised as its typed error."""
        if body is not None:
            kw["json"] = body.model_dump(mode="json")
        try:
            r = await self.http.request(method, self.url + path, timeout=timeout,
                                        headers=self._headers, **kw)
        except httpx.HTTPError as exc:
            raise AgentUnreachable(self.host_id, what, 0,
                                   f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 300:
            try:
                problem = r.json()
            except ValueError:
                problem = None
            if not isinstance(problem, dict) or not problem.get("type"):
                raise AgentCallError(self.host_id, what, r.status_code, r.text[:300])
            error = error_for_problem(r.status_code, problem)
            detail = problem.get("detail") or problem.get("title") or "no detail"
            error.args = (f"{what} on host {self.host_id} failed ({r.status_code}): {detail}",)
            raise error
        return r

    async def _read(self, model: type[M], method: str, path: str, what: str,
                    **kw: Any) -> M:
        r = await self._call(method, path, what, **kw)
        try:
            return model.model_validate_json(r.content)
        except ValidationError as exc:
            raise AgentCallError(self.host_id, what, r.status_code,
                                 f"unexpected answer: {exc}") from exc

    async def create(self, descriptor: dict[str, Any], instance_id: str) -> InstanceView:
        return await self._read(InstanceView, "POST", "/v1/instances", "create instance",
                                body=CreateInstanceRequest(descriptor=descriptor,
                                                           instance_id=instance_id),
                                timeout=20)

    async def get(self, instance_id: str) -> InstanceView:
        return await self._read(InstanceView, "GET", f"/v1/instances/{instance_id}",
                                "read instance")

    async def delete(self, instance_id: str, *, purge: bool = False) -> None:
        """Delete the instance; one that is not there is deleted already."""
        with contextlib.suppress(InstanceNotFound):
            await self._call("DELETE", f"/v1/instances/{instance_id}", "delete instance",
                             params={"purge_checkpoints": str(purge).lower()}, timeout=3)

    async def kill(self, instance_id: str) -> None:
        """Stop the VNF at once but keep its sandbox, for a restore on the same host."""
        with contextlib.suppress(InstanceNotFound):
            await self._call("POST", f"/v1/instances/{instance_id}/stop", "kill instance",
                             params={"grace": 0}, timeout=3)

    async def checkpoint(self, instance_id: str, *, drain: bool = False,
                         extra: dict[str, Any] | None = None,
                         stop: bool = False) -> CheckpointMeta:
        return await self._read(
            CheckpointMeta, "POST", f"/v1/instances/{instance_id}/checkpoints", "checkpoint",
            timeout=120, params={"stop": "true"} if stop else None,
            body=CheckpointRequest(drain=drain, extra=extra or {}))

    async def all_checkpoints(self) -> list[CheckpointMeta]:
        r = await self._call("GET", "/v1/checkpoints", "list checkpoints")
        return self._checkpoints(r, "list checkpoints")

    async def checkpoints(self, instance_id: str) -> list[CheckpointMeta]:
        r = await self._call("GET", f"/v1/instances/{instance_id}/checkpoints",
                             "list checkpoints")
        return self._checkpoints(r, "list checkpoints")

    def _checkpoints(self, r: httpx.Response, what: str) -> list[CheckpointMeta]:
        try:
            return _CHECKPOINTS.validate_json(r.content)
        except ValidationError as exc:
            raise AgentCallError(self.host_id, what, r.status_code,
                                 f"unexpected answer: {exc}") from exc

    async def push(self, instance_id: str, seq: int, peer_url: str) -> CheckpointPushed:
        return await self._read(
            CheckpointPushed, "POST", f"/v1/checkpoints/{instance_id}/{seq}/push",
            "push checkpoint", body=PushRequest(peer_url=peer_url), timeout=120)

    async def restore(self, instance_id: str, seq: int | None) -> InstanceView:
        """Restore from checkpoint ``seq`` (the latest: None); the answer's
        ``restore_stats`` is CRIU's account of it."""
        return await self._read(InstanceView, "POST", f"/v1/instances/{instance_id}/restore",
                                "restore", body=RestoreRequest(seq=seq), timeout=60)

    async def standby(self, instance_id: str, seq: int | None) -> InstanceView:
        return await self._read(InstanceView, "POST", f"/v1/instances/{instance_id}/standby",
                                "prepare standby", body=RestoreRequest(seq=seq), timeout=30)

    async def exec_probe(self, instance_id: str, timeout: float) -> bool:
        res = await self._read(ExecProbeResult, "POST",
                               f"/v1/instances/{instance_id}/exec-probe", "exec probe",
                               timeout=timeout + 1.0)
        return res.ok

    async def inject(self, instance_id: str, fault: Fault | str) -> InstanceView:
        return await self._read(InstanceView, "POST", f"/v1/instances/{instance_id}/inject",
                                "inject fault", body=InjectRequest(fault=Fault(fault)))
