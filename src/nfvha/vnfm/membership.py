"""Cluster membership: who is alive, who is lost, who is fenced.

Heartbeats (agents' HTTP reports, lease guards' UDP datagrams), host state changes and
their alarms, the second-path confirmation of a suspected host, rejoin clean-up, and
fencing (STONITH or a guard's own fence), which says when a lost host's VNFs are stopped.

A part composed into the ``Manager``; it calls back through the manager's shared
services only (the contract is in ``nfvha.vnfm.manager``'s docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nfvha.errors import InstanceNotFound, InstanceStateError, NfvhaError
from nfvha.ha.fault import HostState
from nfvha.ha.fencing import FenceResult
from nfvha.ha.lifecycle import VnfState
from nfvha.ha.liveness import (
    HostKeys,
    decode_host,
    enable_timestamps,
    encode,
    liveness_key,
    recv_stamped,
)
from nfvha.ha.planner import judge_suspect
from nfvha.logs import decision as log_decision
from nfvha.store.base import Op
from nfvha.vnfm.agent_client import AgentUnreachable
from nfvha.vnfm.events import EventKind
from nfvha.vnfm.records import now_iso
from nfvha.wire import InstanceState

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

log = logging.getLogger("nfvha.manager")

__all__ = ["GuardReport", "Membership"]



@dataclass
class GuardReport:
    """The last heartbeat of a host's lease guard, as received."""

    addr: tuple[str, int]
    msg: dict[str, Any]
    at: float  # monotonic receive time

    def heard(self, host_id: str) -> float | None:
        """Monotonic time at which this guard last heard ``host_id``, if it said."""
        ms = self.msg.get("p", {}).get(host_id) if isinstance(self.msg.get("p"), dict) \
            else None
        return None if not isinstance(ms, int | float) else self.at - ms / 1000.0


class Membership:
    """What the manager knows of each host beyond the detector's clock: its last report,
    its guard, its fence. Host state changes are decided here (the loop only suspects)."""

    def __init__(self, m: Manager) -> None:
        self.m = m
        cfg = m.cfg
        self.host_status: dict[str, dict[str, Any]] = {}  # last heartbeat body per host
        self.heartbeats_missed: dict[str, int] = {}  # host -> heartbeats not received
        # Each guard's datagrams are checked against its own host's key.
        self.liveness_keys = HostKeys(cfg.liveness_secret or liveness_key(cfg.token))
        self.liveness_rejected = 0  # datagrams dropped: not authentic, or malformed
        self.guards: dict[str, GuardReport] = {}  # host -> its guard's last heartbeat
        self._guard_seq: dict[str, tuple[float, int]] = {}  # host -> (incarnation, seq)
        self._guard_fence_seen: dict[str, int] = {}  # host -> the last fence it reported
        self._agents_overdue: set[str] = set()  # hosts whose agent-unresponsive alarm is up
        self.fence_deadline: dict[str, float] = {}  # host -> monotonic time it is fenced by
        # host -> monotonic time from which its VNFs are known stopped (a confirmed
        # STONITH, or its guard reporting a fence); moves need not wait for its lease.
        self.fenced_hosts: dict[str, float] = {}
        self._fencing: dict[str, asyncio.Task[FenceResult | None]] = {}
        self._stale_deletes: dict[tuple[str, str], float] = {}
        self._liveness: socket.socket | None = None
        self._stonith_off: set[str] = set()  # hosts a fence driver powered off
        self._down_at: dict[str, float] = {}  # host -> monotonic time it was declared DOWN
        self._host_known: dict[str, tuple[str, str | None]] = {}  # host -> (state, url) stored
        self._peers_cache: tuple[float, list[list[Any]], str] = (-1.0, [], "")

    def start(self) -> None:
        """Reload: every known host gets a full timeout (a DOWN one stays DOWN), agent
        alarms raised by an earlier run are cleared by this one, the guards' socket opens."""
        m = self.m
        for rec in m.store.list("host"):
            m.detector.grace(rec.id)
            if rec.data.get("state") == HostState.DOWN:
                m.detector.restore_state(rec.id, HostState.DOWN)
        for rec in m.store.list("alarm"):  # raised by an earlier run: cleared by this one
            key = str(rec.data.get("key", ""))
            if key.startswith("agent:") and rec.data.get("alarmClearedTime") is None:
                self._agents_overdue.add(key.removeprefix("agent:"))
        if m.cfg.liveness_listen is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            enable_timestamps(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(m.cfg.liveness_listen)
            sock.setblocking(False)
            self._liveness = sock

    def close(self) -> None:
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None

    def fencing_under_way(self, host_id: str) -> bool:
        """Whether a fence driver is powering the host off right now."""
        t = self._fencing.get(host_id)
        return t is not None and not t.done()

    def host_state(self, host_id: str, state: str, previous: str | None,
                   reason: str) -> None:
        self.m.events.publish(EventKind.HOST, {"id": host_id, "state": state,
                                               "previous": previous, "reason": reason})

    def host_heard(self, host_id: str, url: str | None, *, at: float | None = None) -> None:
        """Any sign of life from a host (a guard's datagram, an agent's report). Twenty
        a second per host: the store is read only when something may have changed."""
        if self.m.detector.state_of(host_id) == HostState.DOWN and at is not None \
                and at <= self._down_at.get(host_id, -1.0):
            return  # sent before it was declared lost (read late): no sign it is back
        if self.m.detector.state_of(host_id) is not None:
            # Heartbeats that should have come in the silence that just ended.
            gap = self.m.detector.silence(host_id, at) / self.m.cfg.timings.heartbeat_interval
            if gap >= 2:
                self.heartbeats_missed[host_id] = (self.heartbeats_missed.get(host_id, 0)
                                                   + int(gap) - 1)
        known = self._host_known.get(host_id)
        if known is not None and known[0] == HostState.UP and (not url or url == known[1]) \
                and self.m.detector.is_up(host_id):
            self.m.detector.heard(host_id, at)
            return
        before = self.m.detector.heard(host_id, at)
        rec = self.m.store.find("host", host_id)
        if rec is None or rec.data.get("state") != HostState.UP or before != HostState.UP \
                or (url and rec.data.get("url") != url):
            if rec is not None and rec.data.get("state") == HostState.DOWN:
                log.info("host %s is back; its stale VNF copies are removed", host_id)
                self.fence_deadline.pop(host_id, None)
                self.fenced_hosts.pop(host_id, None)
                self._stonith_off.discard(host_id)
                self.m._spawn(self._cleanup_rejoined(host_id))
            url = url or (rec.data.get("url") if rec else None)
            self.m.store.put("host", host_id, {
                "id": host_id, "url": url,
                "state": HostState.UP,
                "registeredAt": (rec.data.get("registeredAt") if rec else None) or now_iso(),
                "stateChangedAt": now_iso()})
            previous = rec.data.get("state") if rec is not None else None
            if before != HostState.UP and previous == HostState.UP:
                previous = str(before)
            if previous != HostState.UP:
                self.host_state(host_id, HostState.UP, previous,
                                "registered" if rec is None else "heartbeat received")
        self._host_known[host_id] = (HostState.UP, url or (rec.data.get("url") if rec else None))

    def heartbeat(self, host_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """An agent's status report (HTTP): what runs there. Liveness is the guard's
        (``liveness``), but a report is a sign of life too."""
        # The guards' datagrams that arrived before this report count first: otherwise
        # the silence since the last one read looks like a gap in the host's heartbeats.
        self.drain_liveness()
        held = body.get("lease")
        if isinstance(held, int | float) and not isinstance(held, bool):
            self.m.detector.held(host_id, float(held))
        need_full = False
        if body.get("full", True):
            self.host_status[host_id] = body
            self._remove_stale_copies(host_id, body)
        else:
            # "Alive, nothing changed": the last full status still holds, unless this
            # manager has none or it came from an earlier run of the agent.
            prev = self.host_status.get(host_id)
            if prev is None or prev.get("started_at") != body.get("started_at"):
                need_full = True
            else:
                prev["time"] = body.get("time")
        self.host_heard(host_id, body.get("url"))
        # An exit the agent's event did not deliver is still seen here.
        for inst in body.get("instances", []):
            if inst["state"] == InstanceState.EXITED:
                self._instance_exited(host_id, inst)
        lease = self.m.detector.lease(host_id)
        self.m.detector.granted(host_id, lease)
        return {"peers": [], "need_full": need_full, "lease": lease}

    def drain_liveness(self) -> None:
        """The guards' heartbeats, read once per loop tick rather than each as it arrives:
        a wake-up per datagram (20 a second per host) is most of what idling costs. Each
        counts at its kernel arrival time, so reading late delays detection by nothing."""
        sock = self._liveness
        if sock is None:
            return
        for _ in range(4096):
            try:
                got = recv_stamped(sock)
            except OSError as exc:
                log.warning("liveness socket: %s", exc)
                return
            if got is None:
                return
            data, addr, at = got
            msg = decode_host(self.liveness_keys, data)
            if msg is None or msg.get("k") != "hb":
                self.liveness_rejected += 1
                continue
            try:
                answer = self.liveness(msg["h"], msg, addr, at=at)
            except Exception:
                log.exception("liveness datagram from %s", addr)
                continue
            if answer is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(encode(self.liveness_keys.get(msg["h"]), answer), addr)

    def liveness(self, host_id: str, msg: dict[str, Any], addr: tuple[str, int],
                 *, at: float | None = None) -> dict[str, Any] | None:
        """A lease guard's heartbeat (UDP): the host is alive; the answer grants its lease
        and, when the guard's list is out of date, names the peers it should ping."""
        inc, seq = msg.get("i"), msg.get("s")
        if not isinstance(inc, int | float) or not isinstance(seq, int):
            self.liveness_rejected += 1
            return None
        last = self._guard_seq.get(host_id)
        if last is not None and (inc < last[0] or (inc == last[0] and seq <= last[1])):
            return None  # late or replayed: only the newest counts
        self._guard_seq[host_id] = (float(inc), seq)
        answer: dict[str, Any] = {"k": "hb-ack", "s": seq}
        if host_id not in self._host_known and self.m.store.find("host", host_id) is None:
            # Registered by its agent's first report (which brings the agent's URL).
            answer["l"] = self.m.cfg.timings.fencing_timeout
            return answer
        prev = self.guards.get(host_id)
        if prev is None or prev.addr != addr:
            self._peers_cache = (-1.0, [], "")  # a new guard, or one that moved
        at = time.monotonic() if at is None else at
        if prev is not None:
            self.m.detector.came_back(host_id, at - prev.at, at)
        self.guards[host_id] = GuardReport(addr, msg, at)
        held = msg.get("l")
        if isinstance(held, int | float) and not isinstance(held, bool):
            self.m.detector.held(host_id, float(held))
        self.host_heard(host_id, None, at=at)
        fence = msg.get("f")
        if isinstance(fence, int) and fence > 0:
            if self._guard_fence_seen.get(host_id) != fence:
                self._guard_fence_seen[host_id] = fence
                self._guard_fenced(host_id, str(msg.get("fr") or "fenced"), msg.get("fa"))
        elif host_id in self.fenced_hosts and self.m.detector.is_up(host_id) \
                and host_id not in self._stonith_off:
            del self.fenced_hosts[host_id]  # the guard lifted its fence: the agent is back
        self._agent_alarm(host_id, msg.get("a"), msg.get("g"))
        status = self.host_status.get(host_id)
        if msg.get("ap") and (status is None or status.get("agent_pid") != msg.get("ap")):
            # What runs there is unknown to this manager, or was told by an earlier run of
            # the agent: the guard passes the request on through the lease file.
            answer["nf"] = 1
        peers, version = self._guard_peers()
        if msg.get("pv") != version:
            answer["peers"], answer["pv"] = peers, version
        lease = self.m.detector.lease(host_id)
        self.m.detector.granted(host_id, lease)
        answer["l"] = lease
        return answer

    def guard_view(self, host_id: str) -> dict[str, Any] | None:
        """What the host's guard said last: the agent's remaining grace, its fence."""
        r = self.guards.get(host_id)
        if r is None:
            return None
        return {"lastHeardAgoMs": round((time.monotonic() - r.at) * 1000),
                "agentGraceLeftS": r.msg.get("a"), "fence": r.msg.get("f") or 0,
                "fenceReason": r.msg.get("fr") or None,
                "watchdogS": r.msg.get("w") or 0}

    def _guard_peers(self) -> tuple[list[list[Any]], str]:
        """The guards' peer list and its version; recomputed at most twice a second."""
        now = time.monotonic()
        if now - self._peers_cache[0] < 0.5:
            return self._peers_cache[1], self._peers_cache[2]
        peers = sorted([h, r.addr[0], r.addr[1]] for h, r in self.guards.items()
                       if self.m.detector.state_of(h) != HostState.DOWN)
        version = hashlib.sha1(repr(peers).encode()).hexdigest()[:12]
        self._peers_cache = (now, peers, version)
        return peers, version

    def _agent_alarm(self, host_id: str, left: Any, grace: Any) -> None:
        """The guard says how long its agent may still be silent: an alarm while the agent
        is overdue (dead, stopped or starved), before the guard has to fence."""
        if not isinstance(left, int | float) or not isinstance(grace, int | float):
            return
        silent = float(grace) - float(left)
        # Only a change of state touches the store: this runs for every heartbeat.
        if silent > max(1.0, float(grace) / 3) and host_id not in self._agents_overdue:
            self._agents_overdue.add(host_id)
            self.m._raise_alarm(f"agent:{host_id}", None, "PROCESSING_ERROR_ALARM", "MAJOR",
                                "agent-unresponsive", f"the agent of host {host_id} has not fed "
                              f"its lease guard for {silent:.1f} s (grace {float(grace):g} s): "
                              "dead, stopped or starved; its VNFs keep running until then",
                                {"host": host_id})
        elif silent < 1.0 and host_id in self._agents_overdue:
            self._agents_overdue.discard(host_id)
            self.m._clear_alarm(f"agent:{host_id}")

    def _guard_fenced(self, host_id: str, reason: str, fenced_at: Any) -> None:
        """The host's guard killed every VNF there: they are known stopped, so they move
        now, with no lease to wait out."""
        self.fenced_hosts[host_id] = time.monotonic()
        log_decision(log, "host-fenced-by-guard", f"host {host_id}'s lease guard fenced its "
                     f"VNFs: {reason}", level=logging.WARNING, reason=reason, host=host_id)
        at = float(fenced_at) if isinstance(fenced_at, int | float) and fenced_at \
            else time.time()
        self.fail_host_vnfs(host_id, f"fenced on {host_id} by its lease guard: {reason}", at)

    def fail_host_vnfs(self, host_id: str, detail: str, failed_at: float) -> None:
        """Every ACTIVE VNF of a lost or fenced host fails as a host loss (a checkpoint
        under way is moot and cancelled); the loop recovers them."""
        detected = time.time()
        for v in self.m.store.list("vnf"):
            if v.data.get("host") == host_id and v.data["haState"] == VnfState.ACTIVE:
                rt = self.m._rt(v.id)
                self.m._cancel(rt.busy, f"cancelled by the loss of host {host_id}")
                rt.failure = ("host-loss", detected, detail)
                rt.failed_at = min(failed_at, detected)
        self.m._wake.set()

    def _remove_stale_copies(self, host_id: str, status: dict[str, Any]) -> None:
        """A copy of a VNF that lives elsewhere (a host back from a fence or a partition,
        a restore the stopped agent finished late) is removed as soon as it is reported."""
        now = time.monotonic()
        for inst in status.get("instances", []):
            if inst.get("state") in (InstanceState.STANDBY, InstanceState.STOPPED):
                continue
            rec = self.m.store.find("vnf", str(inst.get("id")))
            if rec is None or rec.data["haState"] != VnfState.ACTIVE or \
                    rec.data.get("host") in (None, host_id):
                continue
            key = (host_id, rec.id)
            if now - self._stale_deletes.get(key, -1e9) < 2.0:
                continue
            self._stale_deletes[key] = now
            log_decision(log, "remove-stale-copy", f"remove the stale copy of {rec.id} on "
                         f"{host_id} ({inst.get('state')}); it lives on {rec.data['host']}",
                         level=logging.WARNING, vnf=rec.id, host=host_id,
                         reason="never two copies: the VNF was moved while this host could "
                                "not be told")

            async def delete(h: str = host_id, vnf: str = rec.id) -> None:
                with contextlib.suppress(NfvhaError):
                    await self.m.agent(h).delete(vnf)

            self.m._spawn(delete())

    def remove_host(self, host_id: str) -> dict[str, Any]:
        """Take a host out of the cluster: its record, its alarms and what the detector
        and the liveness path know of it. Refused (409) while it is UP and VNFs or
        replicas are placed on it: move them first, or let it go DOWN (its VNFs are then
        recovered elsewhere). An agent still running there registers the host again with
        its next report, so stop it first."""
        rec = self.m.store.find("host", host_id)
        if rec is None:
            raise InstanceNotFound(f"no host {host_id!r}; GET /nfvha/v1/hosts lists them")
        up = self.m.detector.is_up(host_id)
        placed = sorted(v.id for v in self.m.store.list("vnf")
                        if host_id in (v.data.get("host"), v.data.get("placedOn"))
                        or host_id in (v.data.get("backups") or []))
        if up and placed:
            raise InstanceStateError(
                f"host {host_id} is UP and holds VNFs or replicas of {', '.join(placed)}: "
                "move them to other hosts first (nfvha move ID --to HOST), or stop the host "
                "and remove it once it is DOWN")
        alarms = [a for a in self.m.store.list("alarm")
                  if a.data.get("key") in (f"host:{host_id}", f"agent:{host_id}",
                                           f"fence:{host_id}")]
        self.m.store.transaction([Op.delete("host", host_id)]
                                 + [Op.delete("alarm", a.id) for a in alarms])
        self.m.detector.forget(host_id)
        for d in (self.host_status, self.guards, self._guard_seq, self._guard_fence_seen,
                  self.fenced_hosts, self.fence_deadline, self._host_known, self._down_at,
                  self.heartbeats_missed):
            d.pop(host_id, None)
        self._agents_overdue.discard(host_id)
        self._peers_cache = (-1.0, [], "")  # the other guards stop pinging it
        log_decision(log, "host-removed", f"host {host_id} removed from the cluster "
                     f"({'UP' if up else 'not UP'}; VNFs placed there: "
                     f"{', '.join(placed) or 'none'})", host=host_id, reason="operator request")
        return {"id": host_id, "removed": True, "wasUp": up, "placed": placed}

    def event(self, ev: dict[str, Any]) -> None:
        if ev.get("type") == "instance-exit":
            self._instance_exited(ev["host_id"], ev["instance"])

    def _instance_exited(self, host_id: str, inst: dict[str, Any]) -> None:
        rec = self.m.store.find("vnf", inst["id"])
        if rec is None or rec.data["haState"] != VnfState.ACTIVE or rec.data["host"] != host_id:
            return
        if _earlier_incarnation(rec.data, inst):
            return  # a report about an earlier incarnation, already recovered
        rt = self.m._rt(rec.id)
        if rt.busy is not None and not rt.busy.done() and not rt.checkpointing:
            # A heal already runs (this exit was reported twice, by a status report and by
            # the agent's event, or an operator's heal came first): it restores the VNF,
            # and cancelling it would fail its operation for nothing.
            return
        if rt.failure is None:
            # An ACTIVE VNF busy with a checkpoint: moot now, recovery takes over.
            self.m._cancel(rt.busy, f"cancelled by the exit of the VNF's process on {host_id}")
            reason = (inst.get("exit") or {}).get("reason", "exited")
            rt.failure = ("process-exit", time.time(), f"VNF process {reason} on {host_id}")
            at = (inst.get("exit") or {}).get("at")
            rt.failed_at = float(at) if isinstance(at, int | float) else None
            self.m._wake.set()

    async def confirm_host_loss(self, host_id: str) -> None:
        """Second path: did any other host hear the suspected one lately?

        A host some peer heard within the suspicion time is alive and not isolated (and
        would not fence itself): it stays UP. Otherwise it is DOWN, and its VNFs may move
        once it is fenced (STONITH confirmed) or, failing that, once the longest lease it
        may hold (+ margin) has passed since anyone last heard it.
        """
        try:
            helpers = [h for h in self.m.detector.hosts(HostState.UP, HostState.SUSPECTED)
                       if h != host_id and h in self.guards]
            now = time.monotonic()
            # The second path costs no round trip: every guard's heartbeat says when it
            # last heard its ring neighbours. Only fresh reports count.
            fresh = {h: self.guards[h] for h in helpers
                     if now - self.guards[h].at < self.m.detector.suspect_after(h)}
            det = self.m.detector
            verdict = judge_suspect(
                host_id, own_silence=det.silence(host_id),
                suspect_after=det.suspect_after(host_id), still_up=det.is_up(host_id),
                peers=helpers,
                fresh={h: (now - t if (t := r.heard(host_id)) is not None else None)
                       for h, r in fresh.items()})
            if not verdict.down:
                # Nobody could be asked (this manager may be the one cut off: ask again on
                # the next tick rather than move VNFs on a guess), or someone heard it.
                if verdict.retry:
                    log.info("%s", verdict.reason)
                else:
                    log_decision(log, "host-stays-up", f"host {host_id} stays UP: "
                                 f"{verdict.reason}", reason=verdict.reason, host=host_id)
                if det.state_of(host_id) == HostState.SUSPECTED:
                    det.keep_up(host_id)
                    if not verdict.retry:
                        self.host_state(host_id, HostState.UP, HostState.SUSPECTED,
                                        verdict.reason)
                return
            recent = verdict.silence
            self.m.detector.mark_down(host_id)
            self._down_at[host_id] = time.monotonic()
            self.fence_deadline[host_id] = (time.monotonic() - recent
                                            + self.m.detector.fenced_after(host_id))
            self._host_known.pop(host_id, None)
            self.m.store.update("host", host_id, lambda d: {**d, "state": HostState.DOWN,
                                                            "stateChangedAt": now_iso()})
            log_decision(log, "host-down", f"host {host_id} DOWN: {verdict.reason}",
                         level=logging.WARNING, reason=verdict.reason, host=host_id,
                         silence_ms=round(recent * 1000),
                         lease_ms=round(det.lease_granted(host_id) * 1000))
            self.host_state(host_id, HostState.DOWN, HostState.SUSPECTED, verdict.reason)
            self.m._raise_alarm(f"host:{host_id}", None, "EQUIPMENT_ALARM", "CRITICAL",
                                "host-loss", f"host {host_id} lost: {verdict.reason}",
                                {"host": host_id})
            # Confirmed: the loss is known from now on; it happened when last heard.
            self.fail_host_vnfs(host_id, f"host {host_id} lost", time.time() - recent)
            if host_id in self.m.cfg.fencers:
                self.start_fence(host_id, "host-loss")
        finally:
            self.m._confirming.discard(host_id)

    async def _cleanup_rejoined(self, host_id: str) -> None:
        """A host that comes back must not run copies of VNFs that now live elsewhere."""
        for v in self.m.store.list("vnf"):
            if v.data.get("host") != host_id:
                for inst in self.host_status.get(host_id, {}).get("instances", []):
                    if inst["id"] == v.id and inst["state"] != InstanceState.STANDBY:
                        with contextlib.suppress(NfvhaError):
                            await self.m.agent(host_id).delete(v.id)
        await self.collect_orphans(host_id)
        self.m._clear_alarm(f"host:{host_id}")

    async def collect_orphans(self, host_id: str) -> None:
        """Checkpoints on a host of VNFs that no longer exist (terminated while the host
        was away) are removed when it comes back."""
        try:
            held = {c.instance_id for c in await self.m.agent(host_id).all_checkpoints()}
        except NfvhaError as exc:
            log.warning("cannot list the checkpoints on %s: %s", host_id, exc)
            return
        for iid in sorted(held):
            rec = self.m.store.find("vnf", iid)
            if rec is None or rec.data["haState"] == VnfState.NOT_INSTANTIATED:
                log_decision(log, "collect-orphans", f"remove the checkpoints of {iid} on "
                             f"{host_id}", reason="its VNF was terminated or deleted",
                             vnf=iid, host=host_id)
                with contextlib.suppress(NfvhaError):
                    await self.m.agent(host_id).delete(iid, purge=True)

    async def wait_guard_fence(self, host_id: str, vnf_id: str, exc: AgentUnreachable) -> None:
        report = self.guards.get(host_id)
        left = report.msg.get("a") if report is not None else None
        if not isinstance(left, int | float):
            raise exc
        deadline = time.monotonic() + max(0.0, float(left)) + 1.0
        log_decision(log, "wait-guard-fence", f"agent of {host_id} unreachable; waiting up to "
                     f"{deadline - time.monotonic():.1f} s for its guard to fence before moving "
                     f"{vnf_id}", reason="never two live copies: the host is alive, so the old "
                     "copy is stopped only by its guard once the agent grace runs out",
                     vnf=vnf_id, host=host_id)
        while time.monotonic() < deadline:
            if host_id in self.fenced_hosts:
                return
            with contextlib.suppress(AgentUnreachable):
                await self.m.agent(host_id).delete(vnf_id)  # the agent may be back
                return
            await asyncio.sleep(0.05)
        raise exc

    def start_fence(self, host_id: str, trigger: str) -> asyncio.Task[FenceResult | None]:
        """Fence the host through its driver, once at a time per host."""
        t = self._fencing.get(host_id)
        if t is None or t.done():
            t = self._fencing[host_id] = self.m._spawn(self._fence(host_id, trigger))
        return t

    async def _fence(self, host_id: str, trigger: str) -> FenceResult | None:
        """Power the host off through its fence driver and record the attempt. Confirmed
        off, its VNFs move at once; otherwise the lease wait still covers them."""
        driver = self.m.cfg.fencers.get(host_id)
        if driver is None:
            return None
        rec_id = f"{host_id}-{uuid.uuid4().hex[:8]}"
        started = time.time()
        base = {"id": rec_id, "host": host_id, "trigger": trigger, "driver": driver.name,
                "startedAt": now_iso(started)}
        self.m.store.put("fence", rec_id, {**base, "state": "PROCESSING"})
        log_decision(log, "fence", f"fencing {host_id} through {driver.name} ({trigger})",
                     reason="make the host safe without trusting it, before its VNFs move",
                     host=host_id, driver=driver.name)
        try:
            result = await driver.off()
        except Exception as exc:  # a driver bug must not stop failover: the lease covers it
            log.exception("fence driver %s for %s", driver.name, host_id)
            result = FenceResult(host=host_id, action="off", ok=False, status="unknown",
                                 detail=f"driver error: {exc}", driver=driver.name,
                                 duration_s=time.time() - started)
        self.m.store.put("fence", rec_id, {
            **base, "state": "COMPLETED" if result.ok else "FAILED", "result": result.as_dict(),
            "finishedAt": now_iso(), "durationMs": round(result.duration_s * 1000, 1)})
        self.m.metrics.fences.labels("confirmed" if result.ok else "failed").inc()
        self.m.metrics.fence_duration.observe(result.duration_s)
        if result.ok:
            self._stonith_off.add(host_id)
            self.fenced_hosts[host_id] = time.monotonic()
            self.m._clear_alarm(f"fence:{host_id}")
            log_decision(log, "fenced", f"host {host_id} fenced ({result.detail}) in "
                         f"{result.duration_s * 1000:.0f} ms", reason="fence confirmed off",
                         host=host_id)
            self.m._wake.set()
        else:
            self.m._raise_alarm(f"fence:{host_id}", None, "EQUIPMENT_ALARM", "MAJOR",
                                "fence-failed", f"fencing {host_id} through {driver.name} "
                              f"failed: {result.detail}; its VNFs move once the longest lease "
                              "it may hold has run out", {"host": host_id})
        return result

    async def fence_host(self, host_id: str) -> dict[str, Any]:
        """Operator's fence (``nfvha inject fence``): through the configured driver; a
        host confirmed off is DOWN at once and its VNFs are recovered elsewhere."""
        if self.m.store.find("host", host_id) is None:
            raise InstanceNotFound(f"no host {host_id!r} (see GET /nfvha/v1/hosts)")
        if host_id not in self.m.cfg.fencers:
            raise InstanceStateError(f"no fence driver is configured for host {host_id}; give "
                                     "the manager one with --fence-config")
        result = await self.start_fence(host_id, "manual")
        assert result is not None
        if result.ok and self.m.detector.state_of(host_id) != HostState.DOWN:
            self.m.detector.mark_down(host_id)
            self._down_at[host_id] = time.monotonic()
            self.fence_deadline[host_id] = time.monotonic()
            previous = self.m.store.get("host", host_id).data.get("state")
            self._host_known.pop(host_id, None)
            self.m.store.update("host", host_id, lambda d: {**d, "state": HostState.DOWN,
                                                            "stateChangedAt": now_iso()})
            self.host_state(host_id, HostState.DOWN, previous, "fenced by the operator")
            self.fail_host_vnfs(host_id, f"host {host_id} fenced by the operator",
                                time.time())
        return result.as_dict()


def _earlier_incarnation(vnf: dict[str, Any], inst: dict[str, Any]) -> bool:
    """Whether an exit report is about a process the VNF no longer runs as. The pid alone
    cannot tell: CRIU restores a VNF with its old pid, so an exit event delivered late
    (held up by a leader change) after a restore on the same host looked like a new
    failure and started a second recovery of a running VNF. The incarnation (the
    agent's start time of the process, stored at every start and restore) tells."""
    if vnf.get("pid") is not None and inst.get("pid") != vnf["pid"]:
        return True
    started = inst.get("started_at")
    return vnf.get("incarnation") is not None and started is not None \
        and started != vnf["incarnation"]
