"""The SOL003 lifecycle: VNFDs, VNF instances, and the operations on them (instantiate,
heal, move, terminate), each recorded as an operation occurrence.

A part composed into the ``Manager``; it calls back through the manager's shared
services only (the contract is in ``nfvha.vnfm.manager``'s docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from nfvha.dataplane.client import ForwarderError
from nfvha.descriptor import VnfDescriptor, parse_descriptor
from nfvha.errors import (
    AddressConflict,
    DescriptorError,
    InstanceNotFound,
    InstanceStateError,
    NfvhaError,
)
from nfvha.ha.lifecycle import VnfState
from nfvha.ha.planner import Request, RequestPlan, plan_request
from nfvha.ha.recovery import RecoveryDecision
from nfvha.logs import decision as log_decision
from nfvha.nfvo.placement import PlacementError, place
from nfvha.store.base import StateStore, StoreError
from nfvha.vnfm.events import EventBus, EventKind
from nfvha.vnfm.records import OpChange, now_iso, problem, set_fields
from nfvha.wire import CheckpointMeta

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager, ManagerConfig

log = logging.getLogger("nfvha.manager")

__all__ = ["Lifecycle", "Operations"]


class Operations:
    """SOL003 operation occurrences: created, updated (each change published), pruned.
    Needs only the store, the event bus and the configuration."""

    def __init__(self, store: StateStore, events: EventBus, cfg: ManagerConfig) -> None:
        self.store = store
        self.events = events
        self.cfg = cfg

    def new(self, vnf_id: str, operation: str, auto: bool) -> str:
        op_id = uuid.uuid4().hex
        now = now_iso()
        rec = self.store.create("op", op_id, {
            "id": op_id, "operationState": "STARTING", "stateEnteredTime": now,
            "startTime": now, "vnfInstanceId": vnf_id, "operation": operation,
            "isAutomaticInvocation": auto, "isCancelPending": False, "nfvha": {},
            "_links": {"self": {"href": f"{self.cfg.base_url}/vnflcm/v1/vnf_lcm_op_occs/{op_id}"},
                       "vnfInstance": {"href":
                                       f"{self.cfg.base_url}/vnflcm/v1/vnf_instances/{vnf_id}"}}})
        self.events.publish(EventKind.OP, {**rec.data, "stateChanged": True})
        self._prune(vnf_id)
        return op_id

    def _prune(self, vnf_id: str) -> None:
        """Operation occurrences are kept bounded: per VNF the newest ``ops_per_vnf``
        finished ones, and none finished longer ago than ``ops_max_age`` (a VNF healed
        every few seconds for months would otherwise fill the store)."""
        finished = sorted((r for r in self.store.list("op", where={"vnfInstanceId": vnf_id})
                           if r.data["operationState"] in ("COMPLETED", "FAILED",
                                                            "ROLLED_BACK")),
                          key=lambda r: str(r.data.get("stateEnteredTime")))
        cutoff = now_iso(time.time() - self.cfg.ops_max_age)
        doomed = finished[:max(0, len(finished) - self.cfg.ops_per_vnf)]
        doomed += [r for r in finished[len(doomed):]
                   if str(r.data.get("stateEnteredTime")) < cutoff]
        for r in doomed:
            with contextlib.suppress(StoreError):
                self.store.delete("op", r.id)

    def update(self, op_id: str, *, operationState: str | None = None,
               error: dict[str, Any] | None = None, nfvha: dict[str, Any] | None = None,
               nfvha_merge: dict[str, Any] | None = None) -> None:
        change = OpChange(operationState, error, nfvha, nfvha_merge)
        rec = self.store.update("op", op_id, change)
        self.events.publish(EventKind.OP, {**rec.data, "stateChanged": change.state_changed})


class Lifecycle:
    """The operator's requests on VNFs: checked here, then run as tasks beside the loop."""

    def __init__(self, m: Manager) -> None:
        self.m = m

    def onboard(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        d = parse_descriptor(descriptor)
        data = {"id": d.id, "vnfdId": d.id, "descriptor": d.model_dump(mode="json")}
        self.m.store.put("vnfd", d.id, data)
        return data

    def create_vnf(self, vnfd_id: str, name: str | None, description: str | None,
                   instance_id: str | None = None) -> dict[str, Any]:
        vnfd = self.m.store.find("vnfd", vnfd_id)
        if vnfd is None:
            known = ", ".join(r.id for r in self.m.store.list("vnfd")) or "none"
            raise InstanceNotFound(f"no VNFD {vnfd_id!r} is onboarded (known: {known}); POST it "
                                   "to /nfvha/v1/vnfds first")
        iid = instance_id or f"{vnfd_id}-{uuid.uuid4().hex[:6]}"
        data = {"id": iid, "vnfInstanceName": name or iid, "vnfInstanceDescription":
                description or "", "vnfdId": vnfd_id, "vnfProvider": "nfvha",
                "vnfProductName": vnfd_id, "vnfSoftwareVersion": vnfd.data["descriptor"]
                ["version"], "vnfdVersion": vnfd.data["descriptor"]["version"],
                "instantiationState": "NOT_INSTANTIATED", "haState": VnfState.NOT_INSTANTIATED,
                "vnfd": vnfd.data["descriptor"], "host": None, "backups": [], "generation": 0,
                "createdAt": now_iso()}
        self.m.store.create("vnf", iid, data)
        return data

    def get_vnf(self, vnf_id: str) -> dict[str, Any]:
        rec = self.m.store.find("vnf", vnf_id)
        if rec is None:
            raise InstanceNotFound(f"no VNF instance {vnf_id!r}")
        return rec.data

    def start_instantiate(self, vnf_id: str) -> str:
        data = self.get_vnf(vnf_id)
        if data["haState"] != VnfState.NOT_INSTANTIATED:
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: only a "
                                     "NOT_INSTANTIATED instance can be instantiated")
        self._admit_addresses(vnf_id, self.m._vnfd(data))
        self.m._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.INSTANTIATING})
        op_id = self.m.ops.new(vnf_id, "INSTANTIATE", False)
        self.m._rt(vnf_id).busy = self.m._spawn_op(op_id, self._instantiate(vnf_id, op_id))
        return op_id

    def _admit_addresses(self, vnf_id: str, d: VnfDescriptor) -> None:
        """Cluster-wide address management, before anything is stored or started: a VNF's
        address and service address must lie in the data network and be held by nobody
        else, neither another instantiated VNF nor nfvha itself (manager, forwarder,
        hosts). Two VNFs with one address would each see the other's traffic, and the
        one that lost it would be taken for hung and rolled back."""
        ip = ipaddress.IPv4Address(d.network.ip)
        mine = {ip: "its address"}
        if d.network.service is not None and d.network.service.address is not None:
            mine[ipaddress.IPv4Address(d.network.service.address)] = "its service address"
        if self.m.cfg.vnf_network is not None:
            net = ipaddress.ip_network(self.m.cfg.vnf_network, strict=False)
            if ip not in net:
                raise DescriptorError(f"invalid VNF descriptor: network.address {ip} is outside "
                                      f"the data network {net}; pick an address in it")
        if d.network.gateway is not None and ipaddress.IPv4Address(d.network.gateway) == ip:
            raise DescriptorError(f"invalid VNF descriptor: network.gateway {ip} is the VNF's "
                                  "own address")
        held: dict[ipaddress.IPv4Address, str] = {}
        for url, what in [(self.m.cfg.base_url, "the manager"),
                          (self.m.cfg.forwarder_url, "the steering forwarder")]:
            if url:
                with contextlib.suppress(ValueError):
                    held[ipaddress.IPv4Address(httpx.URL(url).host)] = what
        if self.m.cfg.liveness_listen is not None:
            with contextlib.suppress(ValueError):
                held[ipaddress.IPv4Address(self.m.cfg.liveness_listen[0])] = "the manager"
        for reserved, holder in self.m.cfg.reserved_addresses.items():
            held[ipaddress.IPv4Address(reserved)] = holder
        for h in self.m.store.list("host"):
            with contextlib.suppress(ValueError, TypeError):
                held[ipaddress.IPv4Address(httpx.URL(str(h.data.get("url"))).host)] = \
                    f"host {h.id} (its agent)"
        for rec in self.m.store.list("vnf"):
            if rec.id == vnf_id or rec.data["haState"] == VnfState.NOT_INSTANTIATED:
                continue
            other = self.m._vnfd(rec.data)
            held.setdefault(ipaddress.IPv4Address(other.network.ip),
                            f"VNF instance {rec.id} ({rec.data['haState']})")
            if other.network.service is not None and other.network.service.address:
                held.setdefault(ipaddress.IPv4Address(other.network.service.address),
                                f"VNF instance {rec.id} (its service address)")
        for addr, what in mine.items():
            if addr in held:
                raise AddressConflict(f"{what} {addr} is held by {held[addr]}; give {vnf_id}'s "
                                      "VNFD another address, or terminate the holder first")

    async def _instantiate(self, vnf_id: str, op_id: str) -> None:
        self.m.ops.update(op_id, operationState="PROCESSING")
        data = self.get_vnf(vnf_id)
        d = self.m._vnfd(data)
        try:
            p = place(self.m.hosts_view(), memory=d.resources.memory, backups=d.ha.backups)
            self.m._update_vnf(vnf_id, set_fields(placedOn=p.primary))  # no await since place()
            log_decision(log, "place", f"place {vnf_id} on {p.primary}, backups "
                         f"{list(p.backups)}", reason=p.reason, vnf=vnf_id, host=p.primary,
                         backups=list(p.backups))
            if d.ha.replay:
                if self.m.forwarder is None or d.network.service is None:
                    raise NfvhaError("ha.replay needs a steering forwarder: start the manager "
                                     "with --forwarder URL (nfvha up does)")
                await self.m.forwarder.add(vnf_id, d.network.service.address,
                                           d.network.service.port, d.network.ip,
                                           d.network.service.exactly_once,
                                           after=d.network.service.after)
            created = await self.m.agent(p.primary).create(d.model_dump(mode="json"), vnf_id)
            await self.m.probes.wait_serving(vnf_id, p.primary, d, time.time())  # it answers
        except NfvhaError as exc:
            self.m._update_vnf(
                vnf_id, lambda dd: {**dd, "haState": VnfState.NOT_INSTANTIATED},
                op=(op_id, OpChange("FAILED", error=problem(409, str(exc), of=exc))))
            return
        self.m._update_vnf(vnf_id, lambda dd: {
            **dd, "haState": VnfState.ACTIVE, "instantiationState": "INSTANTIATED",
            "host": p.primary, "backups": list(p.backups), "generation": 1,
            "pid": created.pid, "incarnation": created.started_at,
            "placementReason": p.reason}, op=(op_id, OpChange("COMPLETED")))
        self.m._rt(vnf_id).next_checkpoint = time.monotonic()  # first checkpoint right away

    def _request(self, req: Request, vnf_id: str) -> tuple[Any, RequestPlan]:
        """The planner's word on an operator's request; a refusal changes nothing."""
        rt = self.m._rt(vnf_id)
        step = plan_request(req, self.m._facts(self.get_vnf(vnf_id), rt))
        if step.refusal is not None:
            raise InstanceStateError(step.refusal)
        return rt, step

    def start_heal(self, vnf_id: str, cause: str | None) -> str:
        rt, step = self._request(Request.HEAL, vnf_id)
        op_id = self.m.ops.new(vnf_id, "HEAL", False)
        if step.cancel_running:
            self.m._cancel(rt.busy, f"cancelled by a manual heal (operation {op_id})")
        rt.busy = self.m._spawn_op(op_id, self.m.healing.recover(
            vnf_id, "manual", time.time(), cause or "heal requested", auto=False, op_id=op_id))
        return op_id

    def start_move(self, vnf_id: str, to_host: str | None) -> str:
        """A planned move (maintenance, rebalancing) of an ACTIVE VNF to another host.

        Unlike a recovery nothing is lost: the VNF is dumped a last time and stopped with
        its network still locked (TCP peers see neither a FIN nor a RST), the images go
        to the target, and it is restored there with every established connection. Its
        clients see one pause: the dump, the transfer and the restore. Checked here, so a
        move that cannot work is refused before anything is touched.
        """
        rt, step = self._request(Request.MOVE, vnf_id)
        data = self.get_vnf(vnf_id)
        source = data["host"]
        d = self.m._vnfd(data)
        views = self.m.hosts_view()
        if to_host is not None:
            if to_host not in views:
                raise InstanceNotFound(f"no host {to_host!r} (hosts: {', '.join(sorted(views))})")
            if to_host == source:
                raise InstanceStateError(f"{vnf_id} already runs on {to_host}; name another "
                                         "host, or none to let placement choose")
            if not self.m.detector.is_up(to_host):
                raise InstanceStateError(f"host {to_host} is "
                                         f"{self.m.detector.state_of(to_host) or 'DOWN'}: a VNF "
                                         "can only be moved to a host that is UP")
        try:
            target = place(views, memory=d.resources.memory, backups=0,
                           exclude=[source], prefer=to_host).primary
        except PlacementError as exc:
            raise InstanceStateError(f"cannot move {vnf_id}: {exc}") from None
        if to_host is not None and target != to_host:
            raise InstanceStateError(f"host {to_host} has no room for {vnf_id} "
                                     f"({d.resources.memory // 2**20} MiB)")
        self.m._update_vnf(vnf_id, set_fields(haState=VnfState.MOVING))
        op_id = self.m.ops.new(vnf_id, "MOVE", False)
        previous = rt.busy if step.wait_running else None
        rt.busy = self.m._spawn_op(op_id, self._move(vnf_id, source, target, op_id, previous))
        return op_id

    async def _move(self, vnf_id: str, source: str, target: str, op_id: str,
                    previous: asyncio.Task[None] | None) -> None:
        """The steps of a planned move. Every way out leaves the VNF ACTIVE on one host,
        or, if it could be brought back nowhere, failed and handed to recovery."""
        if previous is not None:  # a periodic checkpoint under way finishes first
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the move itself was cancelled (a heal, a terminate)
            except BaseException:  # how the checkpoint ended does not matter here
                pass
        self.m.ops.update(op_id, operationState="PROCESSING", nfvha={
            "sourceHost": source, "targetHost": target})
        rec = self.m.store.get("vnf", vnf_id)
        d = self.m._vnfd(rec.data)
        replaying = d.ha.replay and self.m.forwarder is not None
        position: int | None = None
        t0 = time.time()
        stopped = False
        meta: CheckpointMeta | None = None
        try:
            if replaying and self.m.forwarder is not None:
                try:
                    position = await self.m.forwarder.hold(vnf_id)
                except ForwarderError as exc:
                    self.m.healing.forwarder_alarm(str(exc))
            extra = {} if position is None else {"log_position": position}
            meta = await self.m.agent(source).checkpoint(vnf_id, drain=position is not None,
                                                         extra=extra, stop=True)
            stopped = True
            dumped = time.time()
            self.m.checkpoints.record(vnf_id, meta, source, [source], position, rec.data,
                                      dumped - t0)
            await self.m.agent(source).push(vnf_id, meta.seq,
                                            self.m.store.get("host", target).data["url"])
            pushed = time.time()
            await self.m.agent(source).delete(vnf_id)  # same address and MAC: one copy at a time
            async with self.m.healing.restore_slot(target):
                res = await self.m.agent(target).restore(vnf_id, meta.seq)
            restored = time.time()
        except NfvhaError as exc:
            await self._move_failed(vnf_id, source, op_id, exc, stopped, meta, position)
            return
        finally:
            if position is not None and self.m.forwarder is not None:
                with contextlib.suppress(ForwarderError):
                    await self.m.forwarder.release(vnf_id)
        cp_id = f"{vnf_id}/{meta.seq}"
        with contextlib.suppress(StoreError):
            self.m.store.update("checkpoint", cp_id,
                                lambda c: {**c, "replicas": sorted({*c["replicas"], target})})
        answered = await self.m.probes.wait_serving(vnf_id, target, d, restored)
        decision = RecoveryDecision(strategy="move", target_host=target, seqs=(meta.seq,),
                                    reason=f"planned move from {source}")
        self.m.healing.finish_recovery(
            vnf_id, decision, {"instance": res, "seq": meta.seq}, source, moved=True,
            op=(op_id, OpChange("COMPLETED", nfvha_merge={
                "checkpoint": meta.seq,
                "phases": {"dumpMs": (dumped - t0) * 1e3, "transferMs": (pushed - dumped) * 1e3,
                           "restoreMs": (restored - pushed) * 1e3,
                           "pauseMs": ((answered or restored) - t0) * 1e3}})))
        log.info("moved %s from %s to %s: paused %.0f ms (dump %.0f, transfer %.0f, restore "
                 "%.0f)", vnf_id, source, target, ((answered or restored) - t0) * 1e3,
                 (dumped - t0) * 1e3, (pushed - dumped) * 1e3, (restored - pushed) * 1e3)

    async def _move_failed(self, vnf_id: str, source: str, op_id: str, exc: Exception,
                           stopped: bool, meta: CheckpointMeta | None,
                           position: int | None) -> None:
        """A move that failed half-way: the VNF goes back to its source, as it was."""
        log.warning("moving %s from %s failed: %s", vnf_id, source, exc)
        back = "still running on its source host"
        if stopped and meta is not None:
            try:
                with contextlib.suppress(NfvhaError):
                    await self.m.agent(source).delete(vnf_id)
                async with self.m.healing.restore_slot(source):
                    res = await self.m.agent(source).restore(vnf_id, meta.seq)
                self.m._update_vnf(vnf_id, set_fields(pid=res.pid))
                back = f"restored on {source} from its final checkpoint {meta.seq}"
            except NfvhaError as exc2:
                back = f"could not be restored on {source} ({exc2}): recovery takes over"
                rt = self.m._rt(vnf_id)
                rt.failure = ("process-exit", time.time(), f"planned move failed and the VNF "
                              f"could not be brought back on {source}: {exc2}")
                rt.failed_at = time.time()
        self.m._rt(vnf_id).next_checkpoint = time.monotonic()
        self.m._update_vnf(vnf_id, set_fields(haState=VnfState.ACTIVE, host=source), op=(
            op_id, OpChange("FAILED", error=problem(
                409, f"moving {vnf_id} failed: {exc}; the VNF is {back}", code="move-failed",
                of=exc))))
        self.m._wake.set()

    def start_terminate(self, vnf_id: str) -> str:
        rt, step = self._request(Request.TERMINATE, vnf_id)
        self.m._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.TERMINATING})
        op_id = self.m.ops.new(vnf_id, "TERMINATE", False)
        if step.cancel_running:
            self.m._cancel(rt.busy, f"cancelled by terminate (operation {op_id})")
        rt.busy = self.m._spawn_op(op_id, self._terminate(vnf_id, op_id))
        return op_id

    async def _terminate(self, vnf_id: str, op_id: str) -> None:
        self.m.ops.update(op_id, operationState="PROCESSING")
        hosts = {h for h in self.m._up_hosts()}
        for h in hosts:
            with contextlib.suppress(NfvhaError):
                await self.m.agent(h).delete(vnf_id, purge=True)
        for cp in self.m.store.list("checkpoint", where={"vnfInstanceId": vnf_id}):
            self.m.store.delete("checkpoint", cp.id)
        if self.m.forwarder is not None and self.m._vnfd(self.get_vnf(vnf_id)).ha.replay:
            with contextlib.suppress(ForwarderError):
                await self.m.forwarder.remove(vnf_id)
        self.m._clear_alarm(f"vnf:{vnf_id}")
        self.m._clear_alarm(f"checkpoint:{vnf_id}")
        self.m._clear_alarm(f"replay-gap:{vnf_id}")
        self.m._update_vnf(vnf_id, lambda d: {
            **d, "haState": VnfState.NOT_INSTANTIATED, "instantiationState": "NOT_INSTANTIATED",
            "host": None, "backups": []}, op=(op_id, OpChange("COMPLETED")))

    def delete_vnf(self, vnf_id: str) -> None:
        data = self.get_vnf(vnf_id)
        if data["haState"] != VnfState.NOT_INSTANTIATED:
            raise InstanceStateError(f"VNF instance {vnf_id} is {data['haState']}: terminate "
                                     "it before deleting it")
        self.m.store.delete("vnf", vnf_id)
        self.m.events.publish(EventKind.VNF_DELETED, {"id": vnf_id})
        self.m._forget_vnf(vnf_id)

    async def inject(self, vnf_id: str, fault: str) -> dict[str, Any]:
        data = self.get_vnf(vnf_id)
        if not data.get("host"):
            raise InstanceStateError(f"VNF instance {vnf_id} runs nowhere")
        self.m._rt(vnf_id).injected_at = time.monotonic()
        view = await self.m.agent(data["host"]).inject(vnf_id, fault)
        return view.model_dump(mode="json", exclude_unset=True)
