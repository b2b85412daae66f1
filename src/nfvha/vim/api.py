"""HTTP API of the agent (FastAPI). Thin: each route calls one ``Agent`` coroutine.

Every route but ``/healthz`` needs a caller: with TLS, the manager's certificate (and, for
checkpoint images pushed here, a peer agent's); without, ``Authorization: Bearer <token>``.
Errors are answered as RFC 7807 problem details whose ``detail`` says what was wrong and
what to do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from nfvha.errors import (
    AddressInUse,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    ConfigError,
    CriuError,
    DescriptorError,
    HostCannotRun,
    InstanceNotFound,
    InstanceStateError,
    NfvhaError,
    SandboxError,
    TransferError,
)
from nfvha.tls import Identity
from nfvha.vim.agent import Agent
from nfvha.vim.transfer import receive_checkpoint_tar
from nfvha.web import (
    BodyLimit,
    http_url,
    install_problem_handlers,
    problem,
    problem_responses,
    who_may,
)

__all__ = ["create_app", "problem"]

log = logging.getLogger(__name__)

#: The status and title of each error; its problem ``type`` is its class's
#: ``problem_type`` (nfvha.errors), so a subclass listed under its parent keeps its own.
_STATUS: list[tuple[type[NfvhaError], int, str]] = [
    (DescriptorError, 422, "Invalid descriptor"),
    (InstanceNotFound, 404, "Instance not found"),
    (CheckpointNotFound, 404, "Checkpoint not found"),
    (CheckpointCorrupt, 422, "Checkpoint corrupt"),
    (AddressInUse, 409, "Address in use"),
    (HostCannotRun, 422, "This host cannot run it"),
    (InstanceStateError, 409, "Conflict with instance state"),
    (TransferError, 502, "Transfer to peer failed"),
    (CheckpointError, 409, "Checkpoint problem"),
    (CriuError, 500, "CRIU failed"),
    (SandboxError, 500, "Sandbox failed"),
    (ConfigError, 503, "Host cannot serve this"),
]


class CreateInstance(BaseModel):
    descriptor: dict[str, Any] = Field(description="the VNFD, as JSON")
    instance_id: str | None = None


PeerUrl = Annotated[str, Field(max_length=2048), AfterValidator(http_url)]


class PushRequest(BaseModel):
    peer_url: PeerUrl = Field(description="base URL of the peer agent, e.g. "
                              "http://10.250.0.12:8700")


class CheckpointRequest(BaseModel):
    drain: bool = Field(default=False, description="wait until the VNF read every datagram")
    extra: dict[str, Any] = Field(default_factory=dict, description="stored in the metadata")


class InjectRequest(BaseModel):
    fault: Literal["kill", "hang"]


class RestoreRequest(BaseModel):
    seq: int | None = Field(default=None, description="checkpoint sequence; latest if absent")


def create_app(agent: Agent, *, manage_lifecycle: bool = True) -> FastAPI:
    """Build the app; with ``manage_lifecycle`` it starts and closes the agent itself."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await agent.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await agent.close(stop_instances=not agent.cfg.keep_vnfs_on_exit)

    app = FastAPI(title="nfvha agent", version="1", lifespan=lifespan,
                  responses=problem_responses(400, 401, 404, 409, 413, 422, 502))
    # Checkpoint images are streamed to disk (PUT /v1/checkpoints/...): never buffered.
    app.add_middleware(BodyLimit, stream=lambda scope: scope["method"] == "PUT"
                       and str(scope["path"]).startswith("/v1/checkpoints/"))
    tls = agent.cfg.tls is not None

    def gate(want: str, allowed: Callable[[Identity, Request], bool]) -> list[Any]:
        if not tls and not agent.cfg.token:
            return []  # in-process (tests): nothing to check against
        # With TLS the token is not taken: an agent has none (a host holding the
        # operators' token could act as an operator on the manager).
        return [who_may(tls=tls, token="" if tls else agent.cfg.token, want=want,
                        allowed=allowed, token_ok=not tls)]

    #: Lifecycle, checkpoints, faults, fencing, reads: the manager's calls.
    auth = gate("the manager", lambda ident, _: ident.role == "manager")
    #: Checkpoint images pushed by another host's agent (``push``).
    peers = gate("a peer agent", lambda ident, _: ident.is_agent()
                 and ident.host != agent.cfg.host_id)

    install_problem_handlers(app)

    @app.exception_handler(NfvhaError)
    async def _nfvha_error(_: Request, exc: NfvhaError) -> JSONResponse:
        for cls, status, title in _STATUS:
            if isinstance(exc, cls):
                extra: dict[str, Any] = {}
                if isinstance(exc, CheckpointCorrupt):
                    extra = {"checkpoint": exc.checkpoint, "file": exc.file}
                if isinstance(exc, CriuError):
                    extra = {"criu_log": exc.log_lines, "criu_log_path": exc.log_path}
                return problem(status, title, str(exc), of=exc, **extra)
        log.exception("unclassified error", exc_info=exc)
        return problem(500, "Internal error", str(exc), of=exc)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "host_id": agent.cfg.host_id}

    @app.get("/metrics", dependencies=auth, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format; scrape with ``authorization: {credentials: <token>}``."""
        return Response(agent.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/status", dependencies=auth)
    async def status() -> dict[str, Any]:
        return agent.status()

    @app.get("/v1/instances", dependencies=auth)
    async def list_instances() -> list[dict[str, Any]]:
        return [i.view() for i in agent.instances.values()]

    @app.post("/v1/instances", dependencies=auth, status_code=201)
    async def create_instance(body: CreateInstance) -> dict[str, Any]:
        inst = await agent.create_instance(body.descriptor, body.instance_id)
        return inst.view()

    @app.get("/v1/instances/{instance_id}", dependencies=auth)
    async def get_instance(instance_id: str) -> dict[str, Any]:
        return agent.get(instance_id).view()

    @app.post("/v1/instances/{instance_id}/stop", dependencies=auth)
    async def stop_instance(instance_id: str, grace: float = 2.0) -> dict[str, Any]:
        return (await agent.stop_instance(instance_id, grace=min(max(grace, 0.0), 60.0))).view()

    @app.delete("/v1/instances/{instance_id}", dependencies=auth, status_code=204)
    async def delete_instance(instance_id: str, purge_checkpoints: bool = False) -> None:
        await agent.delete_instance(instance_id, purge_checkpoints=purge_checkpoints)

    @app.post("/v1/instances/{instance_id}/checkpoints", dependencies=auth, status_code=201)
    async def checkpoint(instance_id: str, stop: bool = False,
                         body: CheckpointRequest | None = None) -> dict[str, Any]:
        b = body or CheckpointRequest()
        meta = await agent.checkpoint(instance_id, stop=stop, drain=b.drain, extra=b.extra)
        return meta.model_dump(mode="json")

    @app.get("/v1/checkpoints", dependencies=auth)
    async def list_checkpoints(instance_id: str | None = None) -> list[dict[str, Any]]:
        return [m.model_dump(mode="json") for m in await agent.list_checkpoints(instance_id)]

    @app.get("/v1/instances/{instance_id}/checkpoints", dependencies=auth)
    async def list_instance_checkpoints(instance_id: str) -> list[dict[str, Any]]:
        return [m.model_dump(mode="json") for m in await agent.list_checkpoints(instance_id)]

    @app.post("/v1/checkpoints/{instance_id}/{seq}/push", dependencies=auth)
    async def push(instance_id: str, seq: int, body: PushRequest) -> dict[str, Any]:
        r = await agent.push(instance_id, seq, body.peer_url)
        return {"instance_id": r.instance_id, "seq": r.seq, "bytes": r.bytes_sent,
                "seconds": r.seconds, "peer": r.peer}

    @app.put("/v1/checkpoints/{instance_id}/{seq}", dependencies=peers, status_code=201,
             response_model=None)
    async def receive(instance_id: str, seq: int,
                      request: Request) -> dict[str, Any] | JSONResponse:
        try:
            meta = await receive_checkpoint_tar(agent.store, request.stream(),
                                                expect_instance=instance_id, expect_seq=seq)
        except TransferError as exc:
            if isinstance(exc.__cause__, OSError):
                raise  # this host could not write it down
            # The sender's stream is bad (truncated, not a tar, another checkpoint): its
            # fault, not a failure of this agent to reach a peer (502).
            return problem(400, "Bad checkpoint stream", str(exc), of=exc)
        return meta.model_dump(mode="json")

    @app.post("/v1/instances/{instance_id}/restore", dependencies=auth, status_code=201)
    async def restore(instance_id: str, body: RestoreRequest | None = None) -> dict[str, Any]:
        inst = await agent.restore(instance_id, body.seq if body else None)
        v = inst.view()
        if inst.last_restore is not None:
            v["restore_stats"] = inst.last_restore.as_dict()
        return v

    @app.post("/v1/instances/{instance_id}/standby", dependencies=auth, status_code=201)
    async def standby(instance_id: str, body: RestoreRequest | None = None) -> dict[str, Any]:
        return (await agent.prepare_standby(instance_id, body.seq if body else None)).view()

    @app.post("/v1/instances/{instance_id}/inject", dependencies=auth)
    async def inject(instance_id: str, body: InjectRequest) -> dict[str, Any]:
        return (await agent.inject(instance_id, body.fault)).view()

    @app.post("/v1/instances/{instance_id}/exec-probe", dependencies=auth)
    async def exec_probe(instance_id: str) -> dict[str, Any]:
        """The instance's own exec probe, inside its sandbox (no command is taken here)."""
        return {"ok": await agent.exec_probe(instance_id)}

    @app.get("/v1/probe", dependencies=auth)
    async def probe(url: Annotated[PeerUrl, Query()], timeout: float = 0.2) -> dict[str, Any]:
        return {"url": url, "reachable": await agent.probe_peer(url, min(timeout, 5.0))}

    @app.post("/v1/fence", dependencies=auth)
    async def fence() -> dict[str, Any]:
        return {"stopped": await agent.stop_all("fenced by request")}

    return app


