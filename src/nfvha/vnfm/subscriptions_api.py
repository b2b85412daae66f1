"""SOL003 subscription resources: ``/vnflcm/v1/subscriptions`` (LccnSubscription) and
``/vnffm/v1/subscriptions`` (FmSubscription). Thin: each route calls the `Notifier`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nfvha.vnfm.manager import Manager
from nfvha.vnfm.notify import FM, LCM, SubscriptionError
from nfvha.web import problem

__all__ = ["subscriptions_router"]


class BasicParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    userName: str
    password: str


class SubscriptionAuthentication(BaseModel):
    """SOL013 SubscriptionAuthentication; nfvha delivers with BASIC only."""

    model_config = ConfigDict(extra="forbid")
    authType: list[str] | str = Field(description='["BASIC"]')
    paramsBasic: BasicParams | None = None
    paramsOauth2ClientCredentials: dict[str, Any] | None = None


class SubscriptionRequest(BaseModel):
    """LccnSubscriptionRequest / FmSubscriptionRequest."""

    model_config = ConfigDict(extra="forbid")
    callbackUri: str = Field(description="must answer GET with 204 No Content (SOL013)")
    filter: dict[str, Any] | None = Field(
        default=None, description="LifecycleChangeNotificationsFilter / FmNotificationsFilter")
    authentication: SubscriptionAuthentication | None = None
    verbosity: Literal["FULL", "SHORT"] | None = Field(default=None,
                                                       description="/vnflcm/v1 only")


def subscriptions_router(manager: Manager, read: list[Any], write: list[Any]) -> APIRouter:
    """The routes of both subscription resources: GETs guarded by ``read``, creation and
    deletion by ``write``."""
    router = APIRouter()
    for api, kind in ((LCM, "LccnSubscription"), (FM, "FmSubscription")):
        _add_routes(router, manager, api, kind, read, write)
    return router


def _add_routes(router: APIRouter, manager: Manager, api: str, kind: str,
                read: list[Any], write: list[Any]) -> None:
    base = manager.cfg.base_url
    path = f"/{api}/v1/subscriptions"

    def failed(exc: SubscriptionError) -> JSONResponse:
        return problem(exc.status, exc.title, str(exc), of=exc)

    async def create(body: SubscriptionRequest) -> Response:
        try:
            sub, created = await manager.notifier.subscribe(
                api, body.callbackUri, body.filter,
                body.authentication.model_dump(exclude_none=True)
                if body.authentication else None, body.verbosity)
        except SubscriptionError as exc:
            return failed(exc)
        location = {"Location": base + sub.path}
        if not created:  # SOL013: same callback URI and filter -> See Other, no body
            return Response(status_code=303, headers=location)
        return JSONResponse(sub.resource(base), status_code=201, headers=location)

    async def list_all() -> list[dict[str, Any]]:
        return [s.resource(base) for s in manager.notifier.list(api)]

    async def read_one(subscriptionId: str) -> Response:
        try:
            return JSONResponse(manager.notifier.get(api, subscriptionId).resource(base))
        except SubscriptionError as exc:
            return failed(exc)

    async def delete(subscriptionId: str) -> Response:
        try:
            await manager.notifier.unsubscribe(api, subscriptionId)
        except SubscriptionError as exc:
            return failed(exc)
        return Response(status_code=204)

    tag: list[str | Enum] = [f"SOL003 {kind}"]
    unknown: dict[int | str, dict[str, Any]] = {404: {"description": "no such subscription"}}
    router.add_api_route(path, create, methods=["POST"], dependencies=write, tags=tag,
                         status_code=201, name=f"create {kind}",
                         operation_id=f"{api}_create_subscription",
                         responses={201: {"description": kind},
                                    303: {"description": "an equal subscription exists"},
                                    422: {"description": "callback URI check failed"}})
    router.add_api_route(path, list_all, methods=["GET"], dependencies=read, tags=tag,
                         name=f"list {kind}", operation_id=f"{api}_list_subscriptions")
    router.add_api_route(path + "/{subscriptionId}", read_one, methods=["GET"], tags=tag,
                         dependencies=read, name=f"read {kind}", responses=unknown,
                         operation_id=f"{api}_read_subscription")
    router.add_api_route(path + "/{subscriptionId}", delete, methods=["DELETE"], tags=tag,
                         dependencies=write, status_code=204, name=f"delete {kind}",
                         responses=unknown, operation_id=f"{api}_delete_subscription")
