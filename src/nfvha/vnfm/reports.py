"""What agents send the manager (status reports, exit events), typed: a malformed report
is a 4xx naming the field, never a 500, and nothing from it is stored or acted on.

Fields the manager does not read (the instance views' ``netns``, ``log``, ``usage``, …)
are kept as sent, for the dashboard and ``GET /nfvha/v1/hosts``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nfvha.vim.agent import InstanceState
from nfvha.web import http_url

__all__ = ["HOST_ID", "AgentEvent", "HostStatusReport", "InstanceReport"]

#: Host ids name network namespaces and cgroups (``nfvha-<host>-…``): short, no spaces.
HOST_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


HttpUrl = Annotated[str, Field(max_length=2048), AfterValidator(http_url)]


class ExitReport(BaseModel):
    """How an instance's process ended (the agent's ``ExitStatus``)."""

    model_config = ConfigDict(extra="allow")
    code: int | None = None
    signal: int | None = None
    at: float | None = None
    oom: bool = False
    reason: str | None = Field(default=None, max_length=1024)


class InstanceReport(BaseModel):
    """One instance on the host, as the agent's ``Instance.view()`` shows it."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=64)
    state: InstanceState
    pid: int | None = Field(default=None, ge=1)
    exit: ExitReport | None = None


class HostResources(BaseModel):
    model_config = ConfigDict(extra="allow")
    load1: float | None = None
    mem_available_bytes: int = Field(default=0, ge=0)
    cpus: int | None = Field(default=None, ge=1)
    checkpoint_bytes: int | None = Field(default=None, ge=0)


class HostStatusReport(BaseModel):
    """An agent's status report (``Agent.status()``); ``full: false`` says only "alive,
    nothing changed since the last full one"."""

    model_config = ConfigDict(extra="allow")
    host_id: str | None = Field(default=None, pattern=HOST_ID)
    url: HttpUrl | None = None
    started_at: float | None = None
    time: float | None = None
    full: bool = True
    lease: float | None = Field(default=None, ge=0)
    agent_pid: int | None = Field(default=None, ge=1)
    instances: list[InstanceReport] = Field(default_factory=list, max_length=10_000)
    resources: HostResources = Field(default_factory=HostResources)

    def as_dict(self) -> dict[str, Any]:
        """The report as the manager keeps it: only what was sent, extra fields too."""
        return self.model_dump(mode="json", exclude_unset=True)


class AgentEvent(BaseModel):
    """Something that happened on a host, reported at once (``instance-exit``)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["instance-exit"]
    host_id: str = Field(pattern=HOST_ID)
    instance: InstanceReport
    at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)
