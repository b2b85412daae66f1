"""Control API of the forwarder (FastAPI): services, hold/release around checkpoints,
commit (log trim) and replay after a restore. Used by the manager only. During a replay
the forwarder itself calls the restored VNF's agent, to read its receive queue."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from nfvha.dataplane.client import ForwarderNotActive, ReplayGapError
from nfvha.dataplane.forwarder import Forwarder, ReplayGap, ServiceSpec
from nfvha.dataplane.pacing import QueueProbe
from nfvha.dataplane.pair import PairMember, Role
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
                         pair: Callable[[Forwarder, HostNetwork], PairMember] | None = None,
                         ) -> FastAPI:
    """Build the app; ``net`` is the host network it takes service addresses on (tests
    pass one that touches nothing). A replay's pacing reads the VNF's queue with a probe
    from ``probes`` (given the ``pace`` and the VNF's port), one per replay; by default
    it calls the agent presenting ``client_tls``'s certificate, with ``token`` as bearer
    if there is one. With ``pair`` (which makes this forwarder's ``PairMember``), it is
    one of a forwarder pair: its services are the manager's to change only while it is
    the active one (a standby answers 409 naming the active)."""
    fwd = Forwarder()
    net = net or HostNetwork()
    member = pair(fwd, net) if pair is not None else None

    def agent_probe(pace: ReplayPace, port: int) -> QueueProbe:
        return AgentQueueProbe(pace.agent_url, pace.instance_id, port, token=token,
                               ssl_context=client_tls)

    new_probe = probes or agent_probe

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if member is not None:
            await member.start()
        try:
            yield
        finally:
            if member is not None:
                await member.close()
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

    class _NotActive(Exception):
        pass

    async def active_only() -> None:
        """A pair's standby (or demoted active) changes no service: the manager must call
        the active, which mirrors every change here."""
        if member is not None and member.role is not Role.ACTIVE:
            raise _NotActive()

    @app.exception_handler(_NotActive)
    async def _not_active(_: Request, __: _NotActive) -> JSONResponse:
        assert member is not None
        return problem(409, "Not the active forwarder",
                       f"forwarder {member.id} is {member.role}, not the active one of its "
                       f"pair (the active is {member.active or 'not known here'}); call the "
                       "active", of=ForwarderNotActive, active=member.active, term=member.term)

    mutate = [*auth, Depends(active_only)]

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

    @app.get("/v1/pair", dependencies=auth)
    async def pair_status() -> dict[str, Any]:
        """This forwarder's place in its pair (``role: single`` for a lone forwarder)."""
        if member is None:
            return {"id": None, "role": "single", "term": 0, "active": None, "owning": True}
        return member.status()

    @app.get("/v1/services", dependencies=auth)
    async def services() -> list[ServiceStatus]:
        return [s.status() for s in fwd.services.values()]

    @app.post("/v1/services", dependencies=mutate, status_code=201,
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
        if member is not None:
            member.service_added(svc.spec)
        return svc.status()

    @app.get("/v1/services/{name}", dependencies=auth)
    async def get(name: str) -> ServiceStatus:
        return fwd.get(name).status()

    @app.delete("/v1/services/{name}", dependencies=mutate, status_code=204)
    async def remove(name: str) -> None:
        await fwd.remove(name)

    @app.post("/v1/services/{name}/hold", dependencies=mutate)
    async def hold(name: str) -> HoldResult:
        position = fwd.get(name).hold()
        if member is not None:  # the cut, mirrored before the manager learns it
            await member.barrier()
        return HoldResult(position=position)

    @app.post("/v1/services/{name}/release", dependencies=mutate)
    async def release(name: str) -> ReleaseResult:
        return ReleaseResult(held_ms=fwd.get(name).release() * 1000)

    @app.post("/v1/services/{name}/commit", dependencies=mutate)
    async def commit(name: str, body: PositionRequest) -> CommitResult:
        return CommitResult(trimmed=fwd.get(name).commit(body.position))

    @app.post("/v1/services/{name}/replay", dependencies=mutate, response_model=ReplayResult)
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
        across = svc.takeover_at if svc.takeover_at is not None \
            and body.position < svc.takeover_at else None
        return ReplayResult(replayed=n, replay_ms=replay_s * 1000, held_ms=held * 1000,
                            pacing=svc.last_pacing, across_takeover=across)

    @app.post("/v1/services/{name}/reset", dependencies=mutate)
    async def reset(name: str) -> ReleaseResult:
        svc = fwd.get(name)
        svc.reset()
        return ReleaseResult(held_ms=svc.release() * 1000)

    return app
