"""The manager's REST API in the shape of ETSI SOL003 (VNF LCM and fault management),
plus nfvha's own ``/nfvha/v1`` resources. Errors are ProblemDetails; OpenAPI at /docs.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import yaml
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from nfvha.errors import (
    AddressConflict,
    DescriptorError,
    InstanceNotFound,
    InstanceStateError,
    InvalidRequest,
    NfvhaError,
    NotLeader,
)
from nfvha.store.base import ConflictError, LeadershipLost, StoreError
from nfvha.tls import caller
from nfvha.vnfm.auth import Authenticator
from nfvha.vnfm.cluster import LeaderOnlyWrites, cluster_view, not_leader_response
from nfvha.vnfm.dashboard import dashboard_router
from nfvha.vnfm.forwarders import ForwarderPair, TakeoverRefused
from nfvha.vnfm.manager import Manager
from nfvha.vnfm.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from nfvha.vnfm.subscriptions_api import subscriptions_router
from nfvha.web import (
    BodyLimit,
    Refused,
    install_problem_handlers,
    problem,
    problem_responses,
    who_may,
)
from nfvha.wire import (
    HOST_ID,
    AgentEvent,
    ForwarderAnswer,
    ForwarderBeat,
    HeartbeatAck,
    HostStatusReport,
    TakeoverRequest,
)

__all__ = ["create_manager_app"]

log = logging.getLogger(__name__)


_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label: it names netns and cgroups


def _clean_text(v: str | None, *, multiline: bool = False) -> str | None:
    """Any Unicode text, but only text: a lone surrogate (valid in a JSON string, not
    in UTF-8) was stored and then broke every list of instances with a 500."""
    if v is None:
        return v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (\\ud800-\\udfff escape): send text that "
                         "UTF-8 can encode") from None
    allowed = "\n\t" if multiline else ""
    bad = next((c for c in v if unicodedata.category(c) == "Cc" and c not in allowed), None)
    if bad is not None:
        raise ValueError(f"contains the control character U+{ord(bad):04X}")
    return v


class CreateVnfRequest(BaseModel):
    vnfdId: str = Field(description="id of an onboarded VNFD", min_length=1, max_length=64)
    vnfInstanceName: str | None = Field(default=None, max_length=255)
    vnfInstanceDescription: str | None = Field(default=None, max_length=4096)
    vnfInstanceId: str | None = Field(
        default=None, pattern=_LABEL, description="nfvha extension: pick the id (a DNS label: "
        "1-63 characters of a-z, 0-9 and '-', not at the ends)")

    @field_validator("vnfInstanceName")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _clean_text(v)

    @field_validator("vnfInstanceDescription")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return _clean_text(v, multiline=True)


class InstantiateRequest(BaseModel):
    flavourId: str = "default"


class HealRequest(BaseModel):
    cause: str | None = Field(default=None, max_length=1024)

    @field_validator("cause")
    @classmethod
    def _cause(cls, v: str | None) -> str | None:
        return _clean_text(v, multiline=True)


class TerminateRequest(BaseModel):
    terminationType: Literal["FORCEFUL", "GRACEFUL"] = "FORCEFUL"


class MoveRequest(BaseModel):
    host: str | None = Field(default=None, max_length=63,
                             description="target host; none: placement picks")


class InjectRequest(BaseModel):
    fault: Literal["kill", "hang"]


def create_manager_app(manager: Manager, *, manage_lifecycle: bool = True) -> FastAPI:
    view = manager.view  # what the read endpoints show; requests go to the manager
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await manager.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await manager.close()

    app = FastAPI(title="nfvha manager", version="1",
                  description="SOL003-shaped VNF LCM and FM with nfvha's HA module",
                  lifespan=lifespan,
                  responses=problem_responses(400, 401, 404, 409, 413, 422))
    app.add_middleware(BodyLimit, max_bytes=manager.cfg.max_body)
    app.add_middleware(LeaderOnlyWrites, manager=manager)  # outermost: added last
    # The one seam of roles: every route below names the role it needs (docs/api.md).
    authn = Authenticator(manager.cfg.token, manager.cfg.users_file)
    read = [Depends(authn.viewer)]
    write = [Depends(authn.operator)]
    daemon = [Depends(authn.daemon)]
    # A host's own reports: with TLS, from that host's agent only (its certificate), so
    # no host can report for another or invent one; without, the daemons' token.
    if manager.cfg.tls is not None:
        host_auth = [who_may(tls=True, token="", want="the agent of the host named in the path",
                             allowed=lambda ident, req: ident.is_agent(
                                 req.path_params.get("host_id")), token_ok=False)]
        agent_auth = [who_may(tls=True, token="", want="an agent",
                              allowed=lambda ident, _: ident.is_agent(), token_ok=False)]
    else:
        host_auth = agent_auth = daemon
    # A forwarder pair's member beats and asks for takeovers in its own name only.
    fwd_auth = [who_may(tls=True, token="", want="the forwarder named in the path",
                        allowed=lambda ident, req: ident.is_forwarder(
                            req.path_params.get("fid")), token_ok=False)] \
        if manager.cfg.tls is not None else daemon


    @app.exception_handler(NfvhaError)
    async def _err(_: Request, exc: NfvhaError) -> JSONResponse:
        if isinstance(exc, DescriptorError):
            return problem(422, "Invalid descriptor", str(exc), of=exc)
        if isinstance(exc, InstanceNotFound):
            return problem(404, "Not found", str(exc), of=exc)
        if isinstance(exc, InstanceStateError):
            return problem(409, "Conflict with the instance state", str(exc), of=exc)
        if isinstance(exc, AddressConflict):
            return problem(409, "Address in use", str(exc), of=exc)
        if isinstance(exc, ConflictError):
            return problem(409, "Conflict", str(exc), of=exc)
        if isinstance(exc, NotLeader | LeadershipLost):
            return not_leader_response(manager, exc if isinstance(exc, NotLeader) else None)
        if isinstance(exc, StoreError):
            return problem(503, "State store unavailable", str(exc), of=exc)
        log.exception("unclassified error", exc_info=exc)
        return problem(500, "Internal error", str(exc), of=exc)

    @app.exception_handler(RecursionError)
    async def _deep(_: Request, __: RecursionError) -> JSONResponse:
        return problem(422, "Invalid request", "the body nests too deeply to be read; no nfvha "
                       "document needs more than a few levels",
                       of=InvalidRequest)

    install_problem_handlers(app, invalid_status=400, invalid_title="Bad request")

    def accepted(op_id: str) -> Response:
        return Response(status_code=202, headers={
            "Location": f"{manager.cfg.base_url}/vnflcm/v1/vnf_lcm_op_occs/{op_id}"})

    def links(vnf: dict[str, Any]) -> dict[str, Any]:
        base = f"{manager.cfg.base_url}/vnflcm/v1/vnf_instances/{vnf['id']}"
        return {**vnf, "haPhase": manager.phase_of(vnf), "_links": {"self": {"href": base},
                                  "instantiate": {"href": base + "/instantiate"},
                                  "heal": {"href": base + "/heal"},
                                  "terminate": {"href": base + "/terminate"}}}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/nfvha/v1/cluster", dependencies=read)
    async def cluster() -> dict[str, Any]:
        """This member and the leader (every member answers; `docs/api.md`)."""
        return cluster_view(manager)

    @app.get("/metrics", dependencies=read, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format; scrape with ``authorization: {credentials: <token>}``."""
        return Response(manager.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # -- agents talk to these -----------------------------------------------------------

    @app.post("/nfvha/v1/hosts/{host_id}/heartbeat", dependencies=host_auth)
    async def heartbeat(body: HostStatusReport,
                        host_id: str = Path(pattern=HOST_ID)) -> HeartbeatAck:
        report = body.as_dict()
        if report.get("host_id", host_id) != host_id:
            raise Refused(403, f"a status report for host {host_id} names host "
                          f"{report.get('host_id')!r}: each host reports for itself")
        return HeartbeatAck.model_validate(manager.heartbeat(host_id, report))

    @app.post("/nfvha/v1/events", dependencies=agent_auth, status_code=204)
    async def event(body: AgentEvent, request: Request) -> None:
        report = body.as_dict()
        ident = caller(request.scope)
        if ident is not None and report.get("host_id") != ident.host:
            raise Refused(403, f"{ident} reported an event of host {report.get('host_id')!r}: "
                          "each host reports its own")
        manager.event(report)

    # -- the forwarder pair (nfvha.vnfm.forwarders) ----------------------------------------

    def pair_of(fid: str) -> ForwarderPair:
        pair = manager.pair
        if pair is None or fid not in pair.members:
            raise InstanceNotFound(
                f"forwarder {fid!r} is not a member of this manager's forwarder pair "
                f"({', '.join(pair.members) if pair else 'it has none'}); start the "
                "manager with --forwarder ID=URL,ID=URL")
        return pair

    @app.post("/nfvha/v1/forwarders/{fid}/beat", dependencies=fwd_auth)
    async def forwarder_beat(body: ForwarderBeat, fid: str = Path(pattern=HOST_ID)
                             ) -> ForwarderAnswer:
        return ForwarderAnswer.model_validate(pair_of(fid).beat(fid, body.model_dump()))

    @app.post("/nfvha/v1/forwarders/{fid}/takeover", dependencies=fwd_auth,
              response_model=ForwarderAnswer)
    async def forwarder_takeover(body: TakeoverRequest, fid: str = Path(pattern=HOST_ID)
                                 ) -> ForwarderAnswer | JSONResponse:
        try:
            return ForwarderAnswer.model_validate(
                await pair_of(fid).takeover(fid, body.model_dump()))
        except TakeoverRefused as exc:
            return problem(409, "Takeover refused", str(exc), of=exc, active=exc.active,
                           term=exc.term)

    @app.get("/nfvha/v1/forwarders", dependencies=read)
    async def forwarders() -> dict[str, Any]:
        """The forwarder pair: which member is active, in which term, how each beats."""
        if manager.pair is not None:
            return manager.pair.status()
        url = manager.cfg.forwarder_url
        return {"pair": False, "active": None if url is None else "forwarder", "term": 0,
                "members": [] if url is None else [{"id": "forwarder", "url": url,
                                                    "role": "single",
                                                    "last_beat_ago_s": None,
                                                    "in_sync": None}],
                "alarm": None, "takeovers": []}

    @app.get("/nfvha/v1/hosts", dependencies=read)
    async def hosts() -> list[dict[str, Any]]:
        manager.drain_liveness()  # silences as of now, not as of the loop's last turn
        # A follower hears no heartbeat: it shows the state the leader stored, no timing.
        heard = manager.acting
        return [{**h.record, "state": h.state,
                 "lastHeartbeatAgoMs": round(h.silence_s * 1000) if heard else None,
                 # Stretched while the host (or the manager) recently stalled.
                 "leaseMs": round(h.lease_s * 1000),
                 "suspectAfterMs": round(h.suspect_after_s * 1000),
                 "fenced": h.fenced, "fenceDriver": h.fence_driver, "guard": h.guard,
                 "instances": h.instances, "resources": h.resources}
                for h in view.hosts()]

    @app.delete("/nfvha/v1/hosts/{host_id}", dependencies=write)
    async def remove_host(host_id: str) -> dict[str, Any]:
        """Take a host out of the cluster (its record, alarms and liveness state); 409
        while it is UP with VNFs or replicas placed on it."""
        return manager.remove_host(host_id)

    @app.post("/nfvha/v1/hosts/{host_id}/fence", dependencies=write)
    async def fence(host_id: str) -> dict[str, Any]:
        """Fence the host now through its configured driver (STONITH); once confirmed off,
        its VNFs are recovered elsewhere. 409 when the host has no fence driver."""
        return await manager.fence_host(host_id)

    @app.get("/nfvha/v1/fences", dependencies=read)
    async def fences(host: str | None = None) -> list[dict[str, Any]]:
        """Every fence attempt with its result, oldest first."""
        return sorted(view.fences(host), key=lambda d: str(d.get("startedAt")))

    @app.get("/nfvha/v1/checkpoints", dependencies=read)
    async def checkpoints(vnfInstanceId: str | None = None) -> list[dict[str, Any]]:
        return view.checkpoints(vnfInstanceId)

    @app.post("/nfvha/v1/vnfds", dependencies=write, status_code=201)
    async def onboard(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as exc:
            raise DescriptorError(f"the VNFD is neither JSON nor YAML: {exc}") from exc
        if not isinstance(body, dict):
            raise DescriptorError("the request body must be a VNFD mapping (YAML or JSON)")
        return manager.onboard(body)

    @app.get("/nfvha/v1/vnfds", dependencies=read)
    async def vnfds() -> list[dict[str, Any]]:
        return view.vnfds()

    @app.post("/nfvha/v1/vnf_instances/{vnf_id}/move", dependencies=write)
    async def move(vnf_id: str, body: MoveRequest | None = None) -> Response:
        """A planned move to another host, connections and state kept (202 + operation)."""
        return accepted(manager.start_move(vnf_id, body.host if body else None))

    @app.post("/nfvha/v1/vnf_instances/{vnf_id}/inject", dependencies=write)
    async def inject(vnf_id: str, body: InjectRequest) -> dict[str, Any]:
        return await manager.inject(vnf_id, body.fault)

    # -- SOL003 VNF LCM -----------------------------------------------------------------

    @app.post("/vnflcm/v1/vnf_instances", dependencies=write, status_code=201)
    async def create(body: CreateVnfRequest, response: Response) -> dict[str, Any]:
        vnf = manager.create_vnf(body.vnfdId, body.vnfInstanceName,
                                 body.vnfInstanceDescription, body.vnfInstanceId)
        response.headers["Location"] = \
            f"{manager.cfg.base_url}/vnflcm/v1/vnf_instances/{vnf['id']}"
        return links(vnf)

    @app.get("/vnflcm/v1/vnf_instances", dependencies=read)
    async def list_vnfs() -> list[dict[str, Any]]:
        return [links(v) for v in view.vnfs()]

    @app.get("/vnflcm/v1/vnf_instances/{vnf_id}", dependencies=read)
    async def read_vnf(vnf_id: str) -> dict[str, Any]:
        return links(manager.get_vnf(vnf_id))

    @app.delete("/vnflcm/v1/vnf_instances/{vnf_id}", dependencies=write, status_code=204)
    async def delete_vnf(vnf_id: str) -> None:
        manager.delete_vnf(vnf_id)

    @app.post("/vnflcm/v1/vnf_instances/{vnf_id}/instantiate", dependencies=write)
    async def instantiate(vnf_id: str, body: InstantiateRequest | None = None) -> Response:
        return accepted(manager.start_instantiate(vnf_id))

    @app.post("/vnflcm/v1/vnf_instances/{vnf_id}/heal", dependencies=write)
    async def heal(vnf_id: str, body: HealRequest | None = None) -> Response:
        return accepted(manager.start_heal(vnf_id, body.cause if body else None))

    @app.post("/vnflcm/v1/vnf_instances/{vnf_id}/terminate", dependencies=write)
    async def terminate(vnf_id: str, body: TerminateRequest | None = None) -> Response:
        return accepted(manager.start_terminate(vnf_id))

    @app.get("/vnflcm/v1/vnf_lcm_op_occs", dependencies=read)
    async def ops(vnfInstanceId: str | None = None) -> list[dict[str, Any]]:
        return view.ops(vnfInstanceId)

    @app.get("/vnflcm/v1/vnf_lcm_op_occs/{op_id}", dependencies=read)
    async def op(op_id: str) -> dict[str, Any]:
        found = view.op(op_id)
        if found is None:
            raise InstanceNotFound(f"no operation occurrence {op_id!r}")
        return found

    # -- SOL003 VNF FM ------------------------------------------------------------------

    @app.get("/vnffm/v1/alarms", dependencies=read)
    async def alarms(active: bool | None = None) -> list[dict[str, Any]]:
        out = view.alarms()
        if active is not None:
            out = [a for a in out if (a.get("alarmClearedTime") is None) == active]
        return out

    @app.get("/vnffm/v1/alarms/{alarm_id}", dependencies=read)
    async def alarm(alarm_id: str) -> dict[str, Any]:
        found = view.alarm(alarm_id)
        if found is None:
            raise InstanceNotFound(f"no alarm {alarm_id!r}")
        return found

    app.include_router(dashboard_router(manager, read))
    app.include_router(subscriptions_router(manager, read, write))
    return app
