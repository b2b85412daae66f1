"""A manager cluster's HTTP side: who leads, and where a follower sends writes.

Every member serves reads from the shared store; only the leader acts. A request that
would change something (any method but GET and HEAD) reaching a follower is answered
``307 Temporary Redirect`` to the same path on the leader (307 keeps the method and the
body), or ``503`` with ``Retry-After`` while no leader is elected. A redirect rather than
forwarding the request: the leader must see the caller itself (an agent's TLS
certificate says which host it is; a forwarded request would carry the follower's), and
callers that know every member follow it by themselves (`nfvha.follow`). Answered before
authentication: the leader authenticates the request it actually serves.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from nfvha.errors import PROBLEM_PREFIX, NotLeader
from nfvha.vnfm.manager import Manager

__all__ = ["LeaderOnlyWrites", "cluster_view", "not_leader_answer", "not_leader_response"]

#: Served by every member whoever leads: how to find the leader, and the daemon's health.
_ANY_MEMBER = ("/healthz", "/metrics", "/nfvha/v1/cluster")


def cluster_view(m: Manager) -> dict[str, Any]:
    """``GET /nfvha/v1/cluster``: this member, and the leader as last read from etcd."""
    e = m.election
    if e is None:
        return {"mode": "single", "member": None, "url": m.cfg.base_url, "leading": m.acting,
                "leader": {"member": "manager", "url": m.cfg.base_url, "term": 0,
                           "since": None}}
    leader = e.leader
    return {"mode": "cluster", "member": e.member_id, "url": e.url, "leading": m.acting,
            "term": e.term,
            "leader": None if leader is None else {
                "member": leader.member_id, "url": leader.url, "term": leader.term,
                "since": leader.since},
            "election": e.last_reason}


def not_leader_answer(m: Manager, path: str = "", query: str = "",
                      detail: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and problem body for a request this member may not serve."""
    leader = m.election.leader if m.election is not None else None
    own = m.election.member_id if m.election is not None else None
    if leader is not None and leader.url and leader.member_id != own:
        target = leader.url.rstrip("/") + path + (f"?{query}" if query else "")
        body = {"type": PROBLEM_PREFIX + "not-leader", "title": "Not the leader",
                "status": 307, "detail": detail or (
                    f"this manager follows; the leader is {leader.member_id} at "
                    f"{leader.url}: send the request there"),
                "leader": leader.url}
        return 307, {"location": target, "x-nfvha-leader": leader.url}, body
    body = {"type": PROBLEM_PREFIX + "not-leader", "title": "No leader",
            "status": 503, "code": "no-leader", "detail": detail or (
                "no manager leads at the moment (an election is under way, or the state "
                "store has no quorum); nothing was done: retry in a second")}
    return 503, {"retry-after": "1"}, body


def _in_touch(m: Manager) -> bool:
    """Whether this member read etcd (with a quorum) within the last lease TTL."""
    e = m.election
    if e is None:
        return True
    return e.read_ok_at is not None and time.monotonic() - e.read_ok_at < e.timings.ttl


class LeaderOnlyWrites:
    """ASGI middleware: on a member that may not act, writes go to the leader, and
    reads are served only while the member is in touch with etcd's quorum."""

    def __init__(self, app: ASGIApp, *, manager: Manager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.manager
        if scope["type"] != "http" or m.election is None or m.acting \
                or scope["path"] in _ANY_MEMBER:
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD"):
            if _in_touch(m):
                await self.app(scope, receive, send)
                return
            # A follower that has not reached etcd's quorum lately would wait out every
            # member's timeout on each read, its event loop held meanwhile: the caller
            # is sent to another member at once instead.
            status, headers, body = 503, {"retry-after": "1"}, {
                "type": PROBLEM_PREFIX + "not-leader", "title": "State store unreachable",
                "status": 503, "code": "store-unreachable",
                "detail": "this manager has not reached a quorum of etcd lately, so it "
                          "cannot read the state; ask another manager"}
        else:
            status, headers, body = not_leader_answer(
                m, scope["path"], scope.get("query_string", b"").decode("latin-1"))
        raw = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": raw})


def not_leader_response(m: Manager, exc: NotLeader | None = None) -> JSONResponse:
    """A JSONResponse for a `NotLeader` (or `LeadershipLost`) raised while serving."""
    status, headers, body = not_leader_answer(m, detail=str(exc) if exc else None)
    # Raised mid-request: the request may have done part of its work, so it is neither
    # redirected nor marked "no-leader" (which says nothing was done, and lets callers
    # send any request again): "leadership-lost" is resent only if it is idempotent.
    body = {**body, "status": 503, "title": "Leadership changed", "code": "leadership-lost"}
    headers = {"retry-after": "1", **({"x-nfvha-leader": headers["x-nfvha-leader"]}
                                      if "x-nfvha-leader" in headers else {})}
    status = 503
    return JSONResponse(body, status_code=status, headers=headers,
                        media_type="application/problem+json")
