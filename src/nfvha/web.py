"""What every nfvha HTTP API does to a request before it reaches a route: the body is
capped and its nesting bounded before anything parses it (and before authentication, so
an anonymous client cannot make a daemon hold or parse a huge body), and the bearer
token is compared in constant time whatever characters it holds.

One ASGI middleware rather than per-route checks: a route that forgets a check cannot
exist, and the refusal costs nothing (no JSON parsing, no store access).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from nfvha.errors import (
    BodyTooLarge,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NfvhaError,
    ResourceNotFound,
    Unauthorized,
    problem_type,
)
from nfvha.tls import Identity, caller

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_DEPTH", "BodyLimit", "Refused", "http_url",
           "install_problem_handlers", "json_depth", "problem", "problem_responses",
           "refused_response", "token_matches", "who_may"]

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a VNFD is a few KiB (Kubernetes caps at 3 MiB)
DEFAULT_MAX_DEPTH = 32  # no nfvha document nests deeper than about 6

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: RFC 7807 problem details, as every nfvha daemon answers a refusal.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "detail": {"type": "string"}}}
_REASONS = {400: "Bad request: a parameter or the body is invalid (detail says which)",
            401: "Missing or wrong bearer token", 404: "Not found",
            409: "Conflict with the current state", 413: "Request body too large",
            422: "Invalid request (a body nested too deeply, an invalid field or descriptor)",
            502: "A peer could not be reached", 503: "Unavailable here"}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``FastAPI(responses=...)``: the refusals an app answers,
    as problem details (``application/problem+json``), so that clients and schemathesis
    know the answers a request can get besides its success."""
    return {c: {"description": _REASONS.get(c, "Refused"),
                "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}
            for c in codes}


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of bearer tokens. ``hmac.compare_digest`` refuses str
    with non-ASCII characters (a TypeError, i.e. a 500): compare their UTF-8 bytes."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def http_url(v: str) -> str:
    """An absolute http(s) URL of printable ASCII, for URLs a daemon is given and later
    calls (an agent's, a peer's to push to or probe): one no HTTP client can use (httpx
    raises InvalidURL, not an HTTPError, for a control character) is refused on arrival."""
    if not v.isascii() or not v.isprintable() or " " in v:
        raise ValueError("must be printable ASCII without spaces")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL, e.g. "
                         "http://10.250.0.11:8700")
    return v


class Refused(Exception):
    """A caller that may not make this call: 401 (no or wrong credential) or 403 (a
    known identity this call is not for), with a detail that says who may."""

    def __init__(self, status: int, detail: str, *, bearer: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.bearer = bearer


def refused_response(exc: Refused) -> JSONResponse:
    """The problem details of a refusal (a starlette JSONResponse)."""
    cls = Unauthorized if exc.status == 401 else Forbidden
    r = problem(exc.status, "Unauthorized" if exc.status == 401 else "Forbidden", exc.detail,
                of=cls)
    if exc.bearer:
        r.headers["WWW-Authenticate"] = "Bearer"
    return r


def who_may(*, tls: bool, token: str, want: str,
            allowed: Callable[[Identity, Any], bool] | None = None,
            token_ok: bool = True, token_hint: str = "the cluster token") -> Any:
    """A FastAPI dependency that admits a request or raises ``Refused``.

    With TLS, a daemon is known by its certificate (``nfvha.tls.caller``), and
    ``allowed(identity, request)`` says whether it may make the call; a request with no
    certificate may still come with the bearer token if ``token_ok`` (operators). Without
    TLS, the bearer token is all there is. ``want`` names who may, for the refusal.
    """
    bearer = HTTPBearer(auto_error=False)

    async def check(request: Request,
                    creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
                    ) -> None:
        ident = caller(request.scope) if tls else None
        if ident is not None and allowed is not None:
            if allowed(ident, request):
                return
            raise Refused(403, f"{ident} may not make this call: only {want} may (by its "
                          "certificate from the cluster CA)")
        if token_ok and token and creds is not None and token_matches(creds.credentials,
                                                                      token):
            return
        if tls and allowed is not None:
            how = f"present {want}'s certificate (mutual TLS, from the cluster CA)"
            if token_ok and token:
                how += " or send 'Authorization: Bearer <token>'"
            raise Refused(401, f"who is calling is unknown: {how}", bearer=token_ok)
        raise Refused(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                      f"<token>' with {token_hint}", bearer=True)

    return Depends(check)


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings in a JSON text, without
    parsing it (a parser recurses, and a deep enough text makes it fail)."""
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is a 413 and a JSON body nested deeper
    than ``max_depth`` a 422, both answered before the app sees the request. Requests
    that ``stream(scope)`` selects (checkpoint image uploads, gigabytes streamed to disk)
    pass through untouched."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY,
                 max_depth: int = DEFAULT_MAX_DEPTH,
                 stream: Callable[[Scope], bool] = lambda _: False) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.stream(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await _refuse(send, 400, "Bad request", "Content-Length is not a number",
                              InvalidRequest)
                return
            if n > self.max_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip()
        if data and ctype.endswith(b"json") and json_depth(data) > self.max_depth:
            await _refuse(send, 422, "Invalid request",
                          f"the JSON body nests deeper than {self.max_depth} levels; no nfvha "
                          "request needs that many", InvalidRequest)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _refuse(send, 413, "Request body too large",
                      f"the body is larger than {self.max_bytes} bytes; a VNFD or request is a "
                      "few KiB (the limit is the daemon's --max-body)", BodyTooLarge)


async def _refuse(send: Send, status: int, title: str, detail: str,
                  of: type[NfvhaError]) -> None:
    body = json.dumps({"type": problem_type(of), "title": title, "status": status,
                       "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def problem(status: int, title: str, detail: str, *,
            of: BaseException | type[BaseException], **extra: Any) -> JSONResponse:
    """An RFC 9457 problem details response about the error ``of`` (an exception or its
    class), whose ``problem_type`` is the ``type`` (``nfvha.errors``; docs/api.md)."""
    body = {"type": problem_type(of), "title": title, "status": status, "detail": detail,
            **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


#: FastAPI's own refusals (a path no route serves, a body it cannot parse, ...).
_HTTP_ERRORS: dict[int, type[NfvhaError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: ResourceNotFound,
    405: MethodNotAllowed, 413: BodyTooLarge, 422: InvalidRequest}


def install_problem_handlers(app: FastAPI, *, invalid_status: int = 422,
                             invalid_title: str = "Invalid request") -> None:
    """Every daemon answers the same refusals as problem details: an identity or token
    refused (``Refused``), a body that fails validation (naming each field), and
    FastAPI's own refusals (a body it cannot parse, a method a path does not take)."""

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return refused_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                 for e in exc.errors()]
        return problem(invalid_status, invalid_title, "; ".join(parts), of=InvalidRequest)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        r = problem(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail),
                    of=_HTTP_ERRORS.get(exc.status_code, NfvhaError))
        r.headers.update(exc.headers or {})  # a 405's Allow
        return r
