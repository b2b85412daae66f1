"""The live dashboard: a static page served at ``/``, and the data it shows as a JSON
snapshot and a Server-Sent Events stream fed by the manager's event bus.

The page holds no data and needs no token; the data endpoints need the manager's bearer
token. The stream sends a snapshot first, then coalesced batches of changes (in the same
shapes as the snapshot), and a tick every second so that ages and host silences move.

In a manager cluster every member serves the page. Snapshots and ticks carry the
cluster view (``GET /nfvha/v1/cluster``: who leads, in which term, whether this member
does), so the page shows the leader and follows a change within a tick. Only the leader
acts, so only the leader's event bus carries changes; a follower's stream instead sends a
fresh snapshot, read from the shared store, every ``FOLLOWER_REFRESH_S`` when it differs
from the last, and a member whose role changes sends one at once. A follower hears no
heartbeats: it shows each host's stored state (UP or DOWN; a suspicion is the leader's
alone) and no silence.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.params import Depends
from fastapi.responses import Response, StreamingResponse

from nfvha.vnfm.cluster import cluster_view
from nfvha.vnfm.events import Event, EventKind
from nfvha.vnfm.manager import Manager
from nfvha.vnfm.views import HostRow

__all__ = ["DashboardFeed", "dashboard_router"]

WINDOW_S = 600.0  # checkpoint history kept for the cadence charts
TICK_S = 1.0  # refresh of ages and host silences; also the stream's keep-alive
COALESCE_S = 0.05  # a burst of changes within this time goes out as one message
#: On a member that does not act (a follower), whose bus is quiet: how often its streams
#: read the store again (a full read: every host, VNF, operation and alarm).
FOLLOWER_REFRESH_S = 2.0
_TIMELINE_OPS = 100
_RECENT_ALARMS = 30

_STATIC = Path(__file__).parent / "static"
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Everything the page loads comes from here; no inline script, no other origin.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _epoch(iso: str | None) -> float | None:
    """Wall time of one of the manager's ISO timestamps (``...Z``)."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class DashboardFeed:
    """What the dashboard shows, built from the manager's store and live state.

    The store keeps only the last few checkpoints of a VNF and no history of host states,
    so the feed listens to the event bus for those (bounded: ``WINDOW_S`` of checkpoints,
    the last 200 host state changes). Everything else is read when needed.
    """

    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.closing = asyncio.Event()
        self.checkpoints: dict[str, deque[tuple[float, int, float]]] = {}
        self.latest_checkpoint: dict[str, dict[str, Any]] = {}
        self.host_changes: deque[dict[str, Any]] = deque(maxlen=200)
        for cp in sorted(manager.view.checkpoints(),
                         key=lambda c: float(c.get("createdAt") or 0)):
            self._add_checkpoint(cp)
        manager.events.listen(self._observe)

    # -- history the store does not keep ----------------------------------------------------

    def _observe(self, ev: Event) -> None:
        if ev.kind == EventKind.CHECKPOINT:
            self._add_checkpoint(ev.data)
        elif ev.kind == EventKind.HOST:
            self.host_changes.append(self._host_change(ev))
        elif ev.kind == EventKind.VNF_DELETED:
            self.checkpoints.pop(ev.data["id"], None)
            self.latest_checkpoint.pop(ev.data["id"], None)

    def _add_checkpoint(self, cp: dict[str, Any]) -> None:
        vnf = cp["vnfInstanceId"]
        points = self.checkpoints.setdefault(vnf, deque(maxlen=4096))
        points.append(self._point(cp))
        while points and points[0][0] < time.time() - WINDOW_S:
            points.popleft()
        self.latest_checkpoint[vnf] = self._checkpoint_view(cp)

    @staticmethod
    def _point(cp: dict[str, Any]) -> tuple[float, int, float]:
        return (float(cp.get("createdAt") or 0), int(cp.get("bytes") or 0),
                round(float(cp.get("durationMs") or 0), 1))

    @staticmethod
    def _checkpoint_view(cp: dict[str, Any]) -> dict[str, Any]:
        return {"seq": cp.get("seq"), "createdAt": cp.get("createdAt"),
                "bytes": cp.get("bytes"), "durationMs": cp.get("durationMs"),
                "host": cp.get("host"), "replicas": cp.get("replicas", [])}

    @staticmethod
    def _host_change(ev: Event) -> dict[str, Any]:
        return {"type": "host", "id": f"host-{ev.seq}", "at": ev.at, "host": ev.data["id"],
                "state": ev.data["state"], "previous": ev.data.get("previous"),
                "reason": ev.data.get("reason", "")}

    # -- views ------------------------------------------------------------------------------

    def _host_live(self, host_id: str) -> dict[str, Any]:
        """What changes every second: state, silence, fencing."""
        return self._live(self.m.view.host(host_id))

    def _live(self, h: HostRow) -> dict[str, Any]:
        if not self.m.acting:
            # Heartbeats go to the leader: a follower knows a host's stored state (the
            # view's), no silence, no fencing deadline, no report.
            return {"id": h.id, "state": h.state,
                    "fenced": False, "fencedInS": None, "lastHeartbeatAgoMs": None,
                    "instances": []}
        fenced_in = h.fenced_in_s
        return {"id": h.id, "state": h.state,
                "fenced": fenced_in is not None and fenced_in <= 0,
                "fencedInS": round(fenced_in, 2) if fenced_in and fenced_in > 0 else None,
                "lastHeartbeatAgoMs": round(h.silence_s * 1000),
                "instances": [{"id": i.get("id"), "state": i.get("state")}
                              for i in h.instances]}

    def host_view(self, host_id: str) -> dict[str, Any]:
        h = self.m.view.host(host_id)
        return {**self._live(h), "url": h.record.get("url"),
                "registeredAt": h.record.get("registeredAt"),
                "stateChangedAt": _epoch(h.record.get("stateChangedAt")),
                "memAvailableBytes": h.resources.get("mem_available_bytes"),
                "heartbeatsMissed": h.heartbeats_missed}

    def vnf_view(self, vnf: dict[str, Any]) -> dict[str, Any]:
        vnfd = vnf.get("vnfd") or {}
        ha = vnfd.get("ha") or {}
        return {"id": vnf["id"], "name": vnf.get("vnfInstanceName"), "vnfdId": vnf.get("vnfdId"),
                "state": vnf.get("haState"), "host": vnf.get("host"),
                "backups": vnf.get("backups", []), "generation": vnf.get("generation", 0),
                "address": (vnfd.get("network") or {}).get("address"),
                "replay": bool(ha.get("replay")),
                "checkpointInterval": ha.get("checkpoint_interval"),
                "createdAt": _epoch(vnf.get("createdAt")),
                "lastRecovery": vnf.get("lastRecovery"),
                "lastCheckpoint": self.latest_checkpoint.get(vnf["id"])}

    @staticmethod
    def op_view(op: dict[str, Any]) -> dict[str, Any]:
        n = op.get("nfvha") or {}
        phases = n.get("phases") or {}
        return {"type": "op", "id": op["id"], "operation": op.get("operation"),
                "vnf": op.get("vnfInstanceId"), "state": op.get("operationState"),
                "auto": bool(op.get("isAutomaticInvocation")),
                "at": n.get("detectedAt") or _epoch(op.get("startTime")),
                "failureType": n.get("failureType"), "detail": n.get("detail"),
                "strategy": n.get("strategy") or (n.get("decision") or {}).get("strategy"),
                "targetHost": n.get("targetHost") or (n.get("decision") or {}).get("target_host"),
                "checkpoint": n.get("checkpoint"), "timestamps": n.get("timestamps") or {},
                "phases": {k: round(v, 1) for k, v in phases.items()
                           if k.endswith("Ms") and isinstance(v, int | float)},
                "attempts": len(n.get("attempts") or []),
                "error": (op.get("error") or {}).get("detail")}

    @staticmethod
    def alarm_view(a: dict[str, Any]) -> dict[str, Any]:
        return {"id": a["id"], "object": a.get("managedObjectId"),
                "severity": a.get("perceivedSeverity"), "eventType": a.get("eventType"),
                "faultType": a.get("faultType"), "detail": a.get("probableCause"),
                "raisedAt": _epoch(a.get("alarmRaisedTime")),
                "clearedAt": _epoch(a.get("alarmClearedTime"))}

    def _merge_stored_checkpoints(self) -> None:
        """A follower gets no checkpoint events: the charts take the checkpoints the store
        keeps (the last few per VNF), those newer than what they already show."""
        for cp in sorted(self.m.view.checkpoints(),
                         key=lambda c: float(c.get("createdAt") or 0)):
            points = self.checkpoints.get(cp["vnfInstanceId"])
            if not points or float(cp.get("createdAt") or 0) > points[-1][0]:
                self._add_checkpoint(cp)

    def cluster(self) -> dict[str, Any]:
        """Who leads, and whether this member does (``GET /nfvha/v1/cluster``)."""
        return cluster_view(self.m)

    def snapshot(self) -> dict[str, Any]:
        if not self.m.acting:
            self._merge_stored_checkpoints()
        view = self.m.view
        ids = view.host_ids()
        ops = sorted((self.op_view(o) for o in view.ops()),
                     key=lambda o: o["at"] or 0)[-_TIMELINE_OPS:]
        alarms = sorted((self.alarm_view(a) for a in view.alarms()),
                        key=lambda a: a["raisedAt"] or 0)
        active = [a for a in alarms if a["clearedAt"] is None]
        cleared = [a for a in alarms if a["clearedAt"] is not None][-_RECENT_ALARMS:]
        since = time.time() - WINDOW_S
        return {"now": time.time(), "window": WINDOW_S, "tick": TICK_S,
                "cluster": self.cluster(),
                "hosts": [self.host_view(h) for h in sorted(ids)],
                "vnfs": [self.vnf_view(v) for v in view.vnfs()],
                "alarms": active + cleared,
                "timeline": sorted([*ops, *self.host_changes], key=lambda e: e["at"] or 0),
                "checkpoints": {v: [p for p in pts if p[0] >= since]
                                for v, pts in self.checkpoints.items()}}

    def tick(self) -> dict[str, Any]:
        """Ages and silences, and the leader. A follower's hosts change only with the
        store (its snapshots): none here."""
        return {"now": time.time(), "cluster": self.cluster(),
                "hosts": [self._host_live(h) for h in self.m.view.live_host_ids()]
                if self.m.acting else []}

    def item(self, ev: Event) -> dict[str, Any] | None:
        """One event as the page applies it (None: nothing the page shows)."""
        d = ev.data
        if ev.kind == EventKind.HOST:
            return {"kind": "host", "key": d["id"], "host": self.host_view(d["id"]),
                    "change": self._host_change(ev)}
        if ev.kind == EventKind.VNF:
            return {"kind": "vnf", "key": d["id"], "vnf": self.vnf_view(d)}
        if ev.kind == EventKind.VNF_DELETED:
            return {"kind": "vnf-deleted", "key": d["id"], "id": d["id"]}
        if ev.kind == EventKind.OP:
            return {"kind": "op", "key": d["id"], "op": self.op_view(d)}
        if ev.kind in (EventKind.ALARM_RAISED, EventKind.ALARM_CLEARED):
            return {"kind": "alarm", "key": d["id"], "alarm": self.alarm_view(d)}
        if ev.kind == EventKind.CHECKPOINT:
            return {"kind": "checkpoint", "key": None, "vnf": d["vnfInstanceId"],
                    "point": self._point(d), "checkpoint": self._checkpoint_view(d)}
        if ev.kind == EventKind.CHECKPOINT_FAILED:
            return {"kind": "checkpoint-failed", "key": None, "vnf": d.get("vnfInstanceId"),
                    "host": d.get("host"), "detail": d.get("detail"), "at": ev.at}
        return None

    def batch(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """A burst of events as page items; a record changed twice is sent once, at the
        place of its last change. Host changes and checkpoints are history: all kept."""
        items = [it for it in (self.item(ev) for ev in events) if it is not None]
        last = {(it["kind"], it["key"]): i for i, it in enumerate(items) if it["key"]}
        out = []
        for i, it in enumerate(items):
            if it["key"] and last[(it["kind"], it["key"])] != i:
                if it["kind"] == "host":  # keep the transition for the timeline
                    out.append({"kind": "host-change", "change": it["change"]})
                continue
            out.append(it)
        return out

    # -- the stream -------------------------------------------------------------------------

    @staticmethod
    def _content(snap: dict[str, Any]) -> str:
        """What a snapshot shows, without its clock and the cluster view (ticks carry
        that): equal for two reads of an unchanged store."""
        return json.dumps({k: v for k, v in snap.items() if k not in ("now", "cluster")},
                          sort_keys=True, default=str)

    async def stream(self) -> AsyncGenerator[str, None]:
        """Snapshot, then batches and ticks, until the client leaves (the response task
        is cancelled) or the manager shuts down. A gap in the event sequence (the
        subscriber queue overflowed) is answered with a fresh snapshot; so is a change of
        this member's role, and on a follower a change in the store (read every
        ``FOLLOWER_REFRESH_S``), since no event tells of it there."""
        loop = asyncio.get_running_loop()
        with self.m.events.subscribe() as q:
            acting = self.m.acting
            snap = self.snapshot()
            shown = self._content(snap)
            yield _sse("snapshot", snap)
            last_seq: int | None = None
            next_tick = loop.time() + TICK_S
            next_refresh = loop.time() + FOLLOWER_REFRESH_S
            while not self.closing.is_set():
                now = loop.time()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    role_changed = self.m.acting != acting
                    if role_changed or (not acting and now >= next_refresh):
                        acting = self.m.acting
                        next_refresh = now + FOLLOWER_REFRESH_S
                        snap = self.snapshot()
                        content = self._content(snap)
                        if role_changed or content != shown:
                            shown = content
                            yield _sse("snapshot", snap)
                            continue
                    yield _sse("tick", self.tick())
                    continue
                try:
                    first = await asyncio.wait_for(q.get(), next_tick - now)
                except TimeoutError:
                    continue
                await asyncio.sleep(COALESCE_S)  # let the rest of a burst arrive
                events = [first]
                while not q.empty():
                    events.append(q.get_nowait())
                gap = last_seq is not None and events[0].seq != last_seq + 1
                last_seq = events[-1].seq
                if gap:
                    snap = self.snapshot()
                    shown = self._content(snap)
                    yield _sse("snapshot", snap)
                    continue
                items = self.batch(events)
                if items:
                    yield _sse("events", {"now": time.time(), "seq": last_seq, "items": items})
            yield _sse("closing", {"now": time.time(), "reason": "manager shutting down"})


class _EventStream(StreamingResponse):
    """An SSE response that closes its generator whichever way the response ends: a
    client that goes away cancels the send, and a generator left suspended would keep
    its bus subscription until garbage collection."""

    body_iterator: AsyncGenerator[str, None]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


#: One event of the stream (OpenAPI 3.2 ``itemSchema``); ``data`` is JSON.
_SSE_EVENT = {"type": "object", "required": ["event", "data"],
              "properties": {"event": {"enum": ["snapshot", "events", "tick"]},
                             "data": {"type": "string"}}}


def dashboard_router(manager: Manager, auth: Sequence[Depends]) -> APIRouter:
    """The page at ``/``, its assets, and ``/dashboard/v1/{state,stream}`` (token)."""
    feed = DashboardFeed(manager)
    page = (_STATIC / "index.html").read_bytes()
    assets = {name: (_STATIC / name).read_bytes() for name in _ASSETS}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        feed.closing.clear()
        # The server calls these when a stop begins, before it waits for open requests
        # (nfvha's `_serve`): open streams end within a tick instead of holding it up.
        if not hasattr(app.state, "on_stop"):
            app.state.on_stop = []
        app.state.on_stop.append(feed.closing.set)
        try:
            yield
        finally:
            feed.closing.set()

    router = APIRouter(lifespan=lifespan)

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/dashboard/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            return Response(status_code=404)
        return Response(assets[name], media_type=_ASSETS[name], headers=_PAGE_HEADERS)

    @router.get("/dashboard/v1/state", dependencies=list(auth))
    async def state() -> dict[str, Any]:
        """Everything the dashboard shows, at once."""
        return feed.snapshot()

    @router.get("/dashboard/v1/stream", dependencies=list(auth), response_class=_EventStream,
                responses={200: {"description": "an endless event stream", "content": {
                    "text/event-stream": {"itemSchema": _SSE_EVENT}}}})
    async def stream() -> _EventStream:
        """Server-Sent Events: ``snapshot``, then ``events`` batches and ``tick``s."""
        return _EventStream(feed.stream(), media_type="text/event-stream",
                            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return router
