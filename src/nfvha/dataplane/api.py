"""Control API of the forwarder (FastAPI): services, hold/release around checkpoints,
commit (log trim) and replay after a restore. Used by the manager only. During a replay
the forwarder itself calls the restored VNF's agent, to read its receive queue."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nfvha.dataplane.client import ReplayGapError
from nfvha.dataplane.forwarder import Forwarder, ReplayGap, ServiceSpec
from nfvha.dataplane.pacing import QueueProbe
from nfvha.dataplane.rxprobe import AgentQueueProbe
from nfvha.errors import AddressInUse, HostNetworkError, InvalidRequest, ResourceNotFound
from nfvha.vim.hostnet import HostNetwork
from nfvha.web import BodyLimit, install_problem_handlers, problem, problem_responses, who_may
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

__all__ = ["create_forwarder_app"]

def create_forwarder_app(token: str, *, interface: str = "eth0", prefixlen: int = 16,
                         net: HostNetwork | None = None, tls: bool = False,
                         client_tls: ssl.SSLContext | None = None,
                         probes: Callable[[ReplayPace, int], QueueProbe] | None = None,
                         ) -> FastAPI:
    """Build the app; ``net`` is the host network it takes service addresses on (tests
    pass one that touches nothing). A replay's pacing reads the VNF's queue with a probe
    from ``probes`` (given the ``pace`` and the VNF's port), one per replay; by default
    it calls the agent presenting ``client_tls``'s certificate, with ``token`` as bearer
    if there is one."""
    fwd = Forwarder()
    net = net or HostNetwork()

    def agent_probe(pace: ReplayPace, port: int) -> QueueProbe:
        return AgentQueueProbe(pace.agent_url, pace.instance_id, port, token=token,
                               ssl_context=client_tls)

    new_probe = probes or agent_probe

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await fwd.close()

    app = FastAPI(title="nfvha forwarder", lifespan=lifespan,
                  responses=problem_responses(401, 404, 409, 413, 422))
    app.add_middleware(BodyLimit)
    app.state.forwarder = fwd
    # With TLS: the manager, by its certificate (and the token, if one was given, for an
    # operator's debugging); without: the token.
    auth = [who_may(tls=tls, token=token, want="the manager",
                    allowed=(lambda ident, _: ident.role == "manager") if tls else None)]

    install_problem_handlers(app)

    @app.exception_handler(KeyError)
    async def _missing(_: Request, exc: KeyError) -> JSONResponse:
        return problem(404, "Not found", str(exc.args[0]), of=ResourceNotFound)

    @app.exception_handler(OSError)
    async def _os(_: Request, exc: OSError) -> JSONResponse:
        return problem(409, "Cannot bind", f"{exc}; is the service address free here?",
                       of=AddressInUse)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/v1/services", dependencies=auth)
    async def services() -> list[ServiceStatus]:
        return [s.status() for s in fwd.services.values()]

    @app.post("/v1/services", dependencies=auth, status_code=201,
              response_model=ServiceStatus)
    async def add(body: ServiceRequest) -> ServiceStatus | JSONResponse:
        if (body.listen_ip is None) == (body.after is None):
            return problem(422, "Invalid service", "give exactly one of listen_ip (a chain "
                           "head) and after (the service this one follows)",
                           of=InvalidRequest)
        if body.listen_ip is not None:
            owned = {a.split("/")[0] for _, a in await net.addresses()}
            if body.listen_ip not in owned:
                try:
                    await net.add_address(interface, f"{body.listen_ip}/{prefixlen}")
                except HostNetworkError as exc:
                    return problem(409, "Cannot own the service address", str(exc), of=exc)
        svc = await fwd.add(ServiceSpec(
            name=body.name, after=body.after,
            listen=(body.listen_ip, body.port) if body.listen_ip else None,
            target=(body.target_ip, body.port),
            exactly_once=body.exactly_once, max_log_bytes=body.max_log_bytes,
            max_log_age=body.max_log_age))
        return svc.status()

    @app.get("/v1/services/{name}", dependencies=auth)
    async def get(name: str) -> ServiceStatus:
        return fwd.get(name).status()

    @app.delete("/v1/services/{name}", dependencies=auth, status_code=204)
    async def remove(name: str) -> None:
        await fwd.remove(name)

    @app.post("/v1/services/{name}/hold", dependencies=auth)
    async def hold(name: str) -> HoldResult:
        return HoldResult(position=fwd.get(name).hold())

    @app.post("/v1/services/{name}/release", dependencies=auth)
    async def release(name: str) -> ReleaseResult:
        return ReleaseResult(held_ms=fwd.get(name).release() * 1000)

    @app.post("/v1/services/{name}/commit", dependencies=auth)
    async def commit(name: str, body: PositionRequest) -> CommitResult:
        return CommitResult(trimmed=fwd.get(name).commit(body.position))

    @app.post("/v1/services/{name}/replay", dependencies=auth, response_model=ReplayResult)
    async def replay(name: str, body: ReplayRequest) -> ReplayResult | JSONResponse:
        """Replay from ``position`` and release; 409 (``oldest``: where a replay can start
        now) if the log was trimmed past it, with delivery still held. With ``pace``, the
        replay is paced by the VNF's receive queue, read from that agent (``pacing`` in
        the answer says how it went)."""
        svc = fwd.get(name)
        probe = None if body.pace is None else new_probe(body.pace, svc.spec.target[1])
        t0 = time.monotonic()
        try:
            n = await svc.replay(body.position, probe)
        except ReplayGap as gap:
            return problem(409, "Replay position trimmed", str(gap), of=ReplayGapError,
                           position=gap.position, oldest=gap.oldest)
        replay_s = time.monotonic() - t0
        held = svc.release()
        return ReplayResult(replayed=n, replay_ms=replay_s * 1000, held_ms=held * 1000,
                            pacing=svc.last_pacing)

    @app.post("/v1/services/{name}/reset", dependencies=auth)
    async def reset(name: str) -> ReleaseResult:
        svc = fwd.get(name)
        svc.reset()
        return ReleaseResult(held_ms=svc.release() * 1000)

    return app
