"""A read-only view of the manager for its readers: the API, the metrics, the dashboard.

They used to reach into the manager's parts (the detector's dicts, the fence deadlines,
the last reports); the view gives them plain data instead, so the parts can change
without breaking them. Nothing here changes state: requests go through the manager.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nfvha.ha.fault import HostState
from nfvha.wire import ServiceStatus

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

__all__ = ["HostRow", "ManagerView"]


@dataclass(frozen=True)
class HostRow:
    """One host as the manager sees it now (times in seconds)."""

    id: str
    state: str  # UP, SUSPECTED or DOWN ("DOWN" for a host the detector does not know)
    record: dict[str, Any]  # the stored host record (url, registeredAt, ...); {} if none
    silence_s: float  # since its last heartbeat
    lease_s: float  # the lease its heartbeats are granted now (stretched under strain)
    suspect_after_s: float
    fenced: bool  # its VNFs are known stopped (STONITH confirmed, or its guard fenced)
    fence_driver: str | None
    #: Seconds until a DOWN host's VNFs are known stopped by its own fencing (<= 0: they
    #: are); None while it is not DOWN or no deadline is set.
    fenced_in_s: float | None
    guard: dict[str, Any] | None  # what its lease guard said last
    instances: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    heartbeats_missed: int = 0


class ManagerView:
    """Reads only; every method returns data its caller may keep or change freely."""

    def __init__(self, manager: Manager) -> None:
        self._m = manager

    # -- hosts ------------------------------------------------------------------------------

    def host_ids(self) -> list[str]:
        """Every host: the stored ones, then any the detector knows that is not stored."""
        ids = [r.id for r in self._m.store.list("host")]
        return ids + [h for h in self._m.detector.hosts() if h not in ids]

    def live_host_ids(self) -> list[str]:
        """The hosts the detector tracks (heard since the manager started, or stored)."""
        return self._m.detector.hosts()

    def host(self, host_id: str) -> HostRow:
        m = self._m
        mem = m.membership
        rec = m.store.find("host", host_id)
        state = str(m.detector.state_of(host_id) or HostState.DOWN)
        if not m.acting:  # a follower hears no host: what the leader last stored
            state = str(rec.data.get("state") or "UNKNOWN") if rec is not None else "UNKNOWN"
        deadline = mem.fence_deadline.get(host_id)
        status = mem.host_status.get(host_id, {})
        driver = m.cfg.fencers.get(host_id)
        return HostRow(
            id=host_id, state=state, record=dict(rec.data) if rec is not None else {},
            silence_s=m.detector.silence(host_id), lease_s=m.detector.lease(host_id),
            suspect_after_s=m.detector.suspect_after(host_id),
            fenced=host_id in mem.fenced_hosts,
            fence_driver=driver.name if driver is not None else None,
            fenced_in_s=(None if deadline is None or state != HostState.DOWN
                         else deadline - time.monotonic()),
            guard=mem.guard_view(host_id),
            instances=list(status.get("instances", [])),
            resources=dict(status.get("resources", {})),
            heartbeats_missed=mem.heartbeats_missed.get(host_id, 0))

    def hosts(self) -> list[HostRow]:
        """The stored hosts."""
        return [self.host(r.id) for r in self._m.store.list("host")]

    # -- records ----------------------------------------------------------------------------

    def _list(self, kind: str, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [r.data for r in self._m.store.list(kind, where=where)]

    def _find(self, kind: str, rid: str) -> dict[str, Any] | None:
        rec = self._m.store.find(kind, rid)
        return None if rec is None else rec.data

    def vnfds(self) -> list[dict[str, Any]]:
        return self._list("vnfd")

    def vnfs(self) -> list[dict[str, Any]]:
        return self._list("vnf")

    def checkpoints(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        return self._list("checkpoint", {"vnfInstanceId": vnf_id} if vnf_id else None)

    def ops(self, vnf_id: str | None = None) -> list[dict[str, Any]]:
        return self._list("op", {"vnfInstanceId": vnf_id} if vnf_id else None)

    def op(self, op_id: str) -> dict[str, Any] | None:
        return self._find("op", op_id)

    def alarms(self) -> list[dict[str, Any]]:
        return self._list("alarm")

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        return self._find("alarm", alarm_id)

    def fences(self, host_id: str | None = None) -> list[dict[str, Any]]:
        return self._list("fence", {"host": host_id} if host_id else None)

    # -- live statistics --------------------------------------------------------------------

    def forwarder_logs(self) -> dict[str, ServiceStatus]:
        """The forwarder's last packet-log statistics per VNF (replaying VNFs only)."""
        return {v: st.model_copy() for v, st in self._m.healing.forwarder_logs.items()}

    @property
    def events_dropped(self) -> int:
        """Events a slow observer (dashboard, notifier) missed."""
        return self._m.events.dropped
