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
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

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
    InstanceStopped,
    NfvhaError,
    SandboxError,
    TransferError,
)
from nfvha.tls import Identity
from nfvha.vim.agent import Agent
from nfvha.vim.transfer import receive_checkpoint_tar
from nfvha.web import (
    BodyLimit,
    install_problem_handlers,
    problem,
    problem_responses,
    who_may,
)
from nfvha.wire import (
    AgentHealth,
    CheckpointMeta,
    CheckpointPushed,
    CheckpointRequest,
    CreateInstanceRequest,
    ExecProbeResult,
    FenceResult,
    HostStatusReport,
    InjectRequest,
    InstanceView,
    PeerProbeResult,
    PeerUrl,
    PushRequest,
    RestoreRequest,
    RxQueue,
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
    (InstanceStopped, 409, "Instance stopped"),
    (InstanceStateError, 409, "Conflict with instance state"),
    (TransferError, 502, "Transfer to peer failed"),
    (CheckpointError, 409, "Checkpoint problem"),
    (CriuError, 500, "CRIU failed"),
    (SandboxError, 500, "Sandbox failed"),
    (ConfigError, 503, "Host cannot serve this"),
]


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
    #: A VNF's receive queue, read by the forwarder while it paces a replay to it (and by
    #: the manager). Nothing else is the forwarder's: it cannot act on a host.
    queue_readers = gate("the forwarder or the manager",
                         lambda ident, _: ident.role in ("forwarder", "manager"))
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
    async def healthz() -> AgentHealth:
        return AgentHealth(ok=True, host_id=agent.cfg.host_id)

    @app.get("/metrics", dependencies=auth, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format; scrape with ``authorization: {credentials: <token>}``."""
        return Response(agent.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # Views are sent with only the fields the agent set (``usage`` in status reports,
    # ``restore_stats`` after a restore), as before they were models.
    only_set = True  # response_model_exclude_unset

    @app.get("/v1/status", dependencies=auth, response_model_exclude_unset=only_set)
    async def status() -> HostStatusReport:
        return agent.status()

    @app.get("/v1/instances", dependencies=auth, response_model_exclude_unset=only_set)
    async def list_instances() -> list[InstanceView]:
        return [i.view() for i in agent.instances.values()]

    @app.post("/v1/instances", dependencies=auth, status_code=201,
              response_model_exclude_unset=only_set)
    async def create_instance(body: CreateInstanceRequest) -> InstanceView:
        inst = await agent.create_instance(body.descriptor, body.instance_id)
        return inst.view()

    @app.get("/v1/instances/{instance_id}", dependencies=auth,
             response_model_exclude_unset=only_set)
    async def get_instance(instance_id: str) -> InstanceView:
        return agent.get(instance_id).view()

    @app.post("/v1/instances/{instance_id}/stop", dependencies=auth,
              response_model_exclude_unset=only_set)
    async def stop_instance(instance_id: str, grace: float = 2.0) -> InstanceView:
        return (await agent.stop_instance(instance_id, grace=min(max(grace, 0.0), 60.0))).view()

    @app.delete("/v1/instances/{instance_id}", dependencies=auth, status_code=204)
    async def delete_instance(instance_id: str, purge_checkpoints: bool = False) -> None:
        await agent.delete_instance(instance_id, purge_checkpoints=purge_checkpoints)

    @app.post("/v1/instances/{instance_id}/checkpoints", dependencies=auth, status_code=201)
    async def checkpoint(instance_id: str, stop: bool = False,
                         body: CheckpointRequest | None = None) -> CheckpointMeta:
        b = body or CheckpointRequest()
        return await agent.checkpoint(instance_id, stop=stop, drain=b.drain, extra=b.extra)

    @app.get("/v1/checkpoints", dependencies=auth)
    async def list_checkpoints(instance_id: str | None = None) -> list[CheckpointMeta]:
        return await agent.list_checkpoints(instance_id)

    @app.get("/v1/instances/{instance_id}/checkpoints", dependencies=auth)
    async def list_instance_checkpoints(instance_id: str) -> list[CheckpointMeta]:
        return await agent.list_checkpoints(instance_id)

    @app.post("/v1/checkpoints/{instance_id}/{seq}/push", dependencies=auth)
    async def push(instance_id: str, seq: int, body: PushRequest) -> CheckpointPushed:
        r = await agent.push(instance_id, seq, body.peer_url)
        return CheckpointPushed(instance_id=r.instance_id, seq=r.seq, bytes=r.bytes_sent,
                                seconds=r.seconds, peer=r.peer)

    @app.put("/v1/checkpoints/{instance_id}/{seq}", dependencies=peers, status_code=201,
             response_model=CheckpointMeta)
    async def receive(instance_id: str, seq: int,
                      request: Request) -> CheckpointMeta | JSONResponse:
        try:
            meta = await receive_checkpoint_tar(agent.store, request.stream(),
                                                expect_instance=instance_id, expect_seq=seq)
        except TransferError as exc:
            if isinstance(exc.__cause__, OSError):
                raise  # this host could not write it down
            # The sender's stream is bad (truncated, not a tar, another checkpoint): its
            # fault, not a failure of this agent to reach a peer (502).
            return problem(400, "Bad checkpoint stream", str(exc), of=exc)
        return meta

    @app.post("/v1/instances/{instance_id}/restore", dependencies=auth, status_code=201,
              response_model_exclude_unset=only_set)
    async def restore(instance_id: str, body: RestoreRequest | None = None) -> InstanceView:
        inst = await agent.restore(instance_id, body.seq if body else None)
        return inst.restored_view()

    @app.post("/v1/instances/{instance_id}/standby", dependencies=auth, status_code=201,
              response_model_exclude_unset=only_set)
    async def standby(instance_id: str, body: RestoreRequest | None = None) -> InstanceView:
        return (await agent.prepare_standby(instance_id, body.seq if body else None)).view()

    @app.post("/v1/instances/{instance_id}/inject", dependencies=auth,
              response_model_exclude_unset=only_set)
    async def inject(instance_id: str, body: InjectRequest) -> InstanceView:
        return (await agent.inject(instance_id, body.fault)).view()

    @app.post("/v1/instances/{instance_id}/exec-probe", dependencies=auth)
    async def exec_probe(instance_id: str) -> ExecProbeResult:
        """The instance's own exec probe, inside its sandbox (no command is taken here)."""
        return ExecProbeResult(ok=await agent.exec_probe(instance_id))

    @app.get("/v1/instances/{instance_id}/rx-queue", dependencies=queue_readers)
    async def rx_queue(instance_id: str, port: Annotated[int, Query(ge=1, le=65535)],
                       below: Annotated[int | None, Query(ge=0)] = None,
                       wait_ms: Annotated[float, Query(ge=0, le=200)] = 0.0) -> RxQueue:
        """The receive queue of the VNF's UDP socket on ``port``; with ``below``, once it
        holds at most that many bytes or ``wait_ms`` have passed (a long poll)."""
        return await agent.rx_queue(instance_id, port, below=below, wait=wait_ms / 1000)

    @app.get("/v1/probe", dependencies=auth)
    async def probe(url: Annotated[PeerUrl, Query()], timeout: float = 0.2) -> PeerProbeResult:
        return PeerProbeResult(url=url,
                               reachable=await agent.probe_peer(url, min(timeout, 5.0)))

    @app.post("/v1/fence", dependencies=auth)
    async def fence() -> FenceResult:
        return FenceResult(stopped=await agent.stop_all("fenced by request"))

    return app


