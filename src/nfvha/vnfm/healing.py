"""Recovery execution: carry out the strategies ``ha.recovery`` decides, in order, until
one brings the VNF back serving; replay what its checkpoint missed; never two copies.

A part composed into the ``Manager``; it calls back through the manager's shared
services only (the contract is in ``nfvha.vnfm.manager``'s docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from nfvha.dataplane.client import ForwarderError, ReplayGapError
from nfvha.descriptor import VnfDescriptor
from nfvha.errors import CheckpointCorrupt, NfvhaError
from nfvha.ha.fault import HostState
from nfvha.ha.lifecycle import VnfState
from nfvha.ha.planner import RETRY_MAX_S
from nfvha.ha.recovery import RecoveryContext, RecoveryDecision, decide, strategy_chain
from nfvha.logs import decision as log_decision
from nfvha.nfvo.placement import PlacementError, place
from nfvha.vnfm.agent_client import AgentClient, AgentUnreachable
from nfvha.vnfm.records import OpChange, now_iso, problem
from nfvha.wire import InstanceState, ReplayPace, ReplayPacing, ServiceStatus

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

log = logging.getLogger("nfvha.manager")

__all__ = ["Healer"]

_RESTORES_PER_HOST = 2


class Healer:
    """Recovers one VNF per call (``recover``); also watches the forwarder's packet logs."""

    def __init__(self, m: Manager) -> None:
        self.m = m
        self._restore_slots: dict[str, asyncio.Semaphore] = {}
        self.forwarder_logs: dict[str, ServiceStatus] = {}  # last forwarder log stats

    async def recover(self, vnf_id: str, failure: str, detected_at: float, detail: str,
                      *, auto: bool, op_id: str | None = None) -> None:
        rec = self.m.store.get("vnf", vnf_id)
        old_host = rec.data.get("host")
        op_id = op_id or self.m.ops.new(vnf_id, "HEAL", auto)
        rt = self.m._rt(vnf_id)
        failed_at = rt.failed_at if failure != "manual" and rt.failed_at is not None and \
            rt.failed_at <= detected_at else None
        rt.failed_at = None
        self.m.ops.update(op_id, operationState="PROCESSING", nfvha={
            "failureType": failure, "detail": detail, "detectedAt": detected_at,
            "failedAt": failed_at, "timestamps": {"detected": detected_at}, "attempts": []})
        if failure != "manual":
            self.m._raise_alarm(f"vnf:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "CRITICAL",
                                failure, detail, {"host": old_host})
        self.m._update_vnf(vnf_id, lambda d: {**d, "haState": VnfState.RECOVERING})
        d = self.m._vnfd(rec.data)
        replaying = d.ha.replay and self.m.forwarder is not None
        if replaying and self.m.forwarder is not None:
            try:
                await self.m.forwarder.hold(vnf_id)  # new traffic waits until replay is done
            except ForwarderError as exc:
                replaying = False
                self.forwarder_alarm(f"{exc}; {vnf_id} is restored without replay")
        failed: set[tuple[str, str]] = set()
        retried: set[tuple[str, str]] = set()
        attempts: list[dict[str, Any]] = []
        for strategy in strategy_chain(d.ha.recovery, failure):
            while True:
                ctx = self.context(vnf_id, failure, old_host, rec.data.get("backups", []),
                                   d, frozenset(failed))
                decision = decide(strategy, ctx)
                if isinstance(decision, str):
                    log_decision(log, "strategy-skipped",
                                 f"{strategy} for {vnf_id} not applicable: {decision}",
                                 reason=decision, vnf=vnf_id, strategy=strategy,
                                 failure=failure)
                    attempts.append({"strategy": strategy, "applicable": False,
                                     "reason": decision})
                    break
                decided = time.time()
                log_decision(log, "recover", f"{failure} {vnf_id} -> {strategy} on "
                             f"{decision.target_host} ({decision.reason})",
                             reason=decision.reason, vnf=vnf_id, failure=failure,
                             strategy=strategy, host=decision.target_host, op=op_id)
                self.m.ops.update(op_id, nfvha_merge={"decision": decision.as_dict(),
                                                      "timestamps": {"decided": decided}})
                try:
                    result = await self._execute(vnf_id, d, decision, failure, old_host)
                except NfvhaError as exc:
                    log.warning("recovery of %s by %s on %s failed: %s", vnf_id, strategy,
                                decision.target_host, exc)
                    key = (strategy, decision.target_host)
                    if isinstance(exc, AgentUnreachable) and \
                            key not in retried and \
                            self.m.detector.is_up(decision.target_host):
                        # Unreachable although it heartbeats: typically a pooled connection
                        # to the agent's previous process (a host that just came back). Try
                        # the same once more before falling back to a strategy that may
                        # lose the state.
                        retried.add(key)
                        await asyncio.sleep(0.05)
                        continue
                    failed.add(key)
                    attempts.append({"strategy": strategy, "host": decision.target_host,
                                     "decidedAt": decided, "error": str(exc)})
                    self.m.ops.update(op_id, nfvha_merge={"attempts": attempts})
                    continue
                restored = time.time()
                if failure == "host-loss" and old_host is not None \
                        and decision.target_host != old_host \
                        and self.m.detector.is_up(old_host):
                    # The old host came back during the restore: its rejoin clean-up still
                    # saw the VNF as living there, so its copy is removed now.
                    try:
                        await self.m.agent(old_host).delete(vnf_id)
                    except NfvhaError as exc:
                        log.warning("could not remove the old copy of %s on %s after moving "
                                    "it: %s", vnf_id, old_host, exc)
                replay_info = await self._replay(vnf_id, result.get("seq"),
                                                 decision.target_host) if replaying else None
                answered = await self.m.probes.wait_serving(vnf_id, decision.target_host, d,
                                                            restored)
                if answered is None:
                    err = (f"restored by {strategy} on {decision.target_host} but it did not "
                           "answer its health probe within 3 s")
                    log.warning("recovery of %s: %s", vnf_id, err)
                    failed.add((strategy, decision.target_host))
                    attempts.append({"strategy": strategy, "host": decision.target_host,
                                     "decidedAt": decided, "error": err})
                    self.m.ops.update(op_id, nfvha_merge={"attempts": attempts})
                    with contextlib.suppress(NfvhaError):
                        await self.m.agent(decision.target_host).delete(vnf_id)
                    continue
                serving = answered
                attempts.append({"strategy": strategy, "host": decision.target_host,
                                 "decidedAt": decided, "checkpoint": result.get("seq"),
                                 "ok": True})
                rt.retries, rt.retry_at = 0, None
                ts = {"detected": detected_at, "decided": decided, "restored": restored,
                      "serving": serving}
                self.finish_recovery(vnf_id, decision, result, old_host, op=(op_id, OpChange(
                    "COMPLETED", nfvha_merge={
                    "stateLost": strategy == "restart",
                    "attempts": attempts, "timestamps": ts, "strategy": strategy,
                    "replay": replay_info,
                    **({"replayGap": replay_info["gap"]} if replay_info and
                       replay_info.get("gap") else {}),
                    "targetHost": decision.target_host, "checkpoint": result.get("seq"),
                    "phases": {"detect": detected_at,
                               "detectMs": None if failed_at is None
                               else (detected_at - failed_at) * 1e3,
                               "decideMs": (decided - detected_at) * 1e3,
                               "restoreMs": (restored - decided) * 1e3,
                               "redirectMs": (serving - restored) * 1e3,
                               "totalMs": (serving - detected_at) * 1e3,
                               "downtimeMs": None if failed_at is None
                               else (serving - failed_at) * 1e3}})))
                self.m._clear_alarm(f"vnf:{vnf_id}")
                log.info("recovered %s by %s on %s in %.0f ms (detect->serving)%s", vnf_id,
                         strategy, decision.target_host, (serving - detected_at) * 1000,
                         "; its state is lost (restarted from scratch)"
                         if strategy == "restart" else "")
                return
        if replaying and self.m.forwarder is not None:
            with contextlib.suppress(ForwarderError):
                await self.m.forwarder.release(vnf_id)
        self.m._update_vnf(vnf_id, lambda dd: {**dd, "haState": VnfState.FAILED}, op=(
            op_id, OpChange("FAILED", nfvha_merge={"attempts": attempts}, error=problem(
                500, f"every recovery strategy failed for {vnf_id}: "
                + "; ".join(a.get("error") or a.get("reason", "") for a in attempts),
                code="recovery-failed"))))
        if failure != "manual":
            # Not forever: overload or a host on its way back can make every strategy fail
            # once. Try again with back-off (2, 4, 8, 16, then every 30 s).
            rt.retries += 1
            rt.retry_failure = failure
            rt.retry_at = time.monotonic() + min(RETRY_MAX_S, 2.0 ** rt.retries)
        log_decision(log, "give-up", f"{vnf_id} FAILED: no strategy could recover it",
                     level=logging.ERROR, vnf=vnf_id, failure=failure, op=op_id,
                     reason="; ".join(str(a.get("error") or a.get("reason", "")) for a in attempts))

    def _pace(self, vnf_id: str, host: str) -> ReplayPace | None:
        """The agent the forwarder reads the restored VNF's receive queue from, to pace
        the replay by it: that of the host it was just restored on."""
        rec = self.m.store.find("host", host)
        url = None if rec is None else rec.data.get("url")
        return None if not url else ReplayPace(agent_url=url, instance_id=vnf_id)

    async def _replay(self, vnf_id: str, seq: int | None,
                      host: str) -> dict[str, Any] | None:
        """Replay what the restored checkpoint missed, then release held traffic."""
        assert self.m.forwarder is not None
        try:
            if seq is None:  # restarted without state: the log cannot help
                await self.m.forwarder.reset(vnf_id)
                return {"replayed": 0, "reason": "restart: state lost, log discarded"}
            cp = self.m.store.find("checkpoint", f"{vnf_id}/{seq}")
            position = None if cp is None else cp.data.get("logPosition")
            if position is None:
                await self.m.forwarder.release(vnf_id)
                return {"replayed": 0, "reason": f"checkpoint {seq} has no log position"}
            pace = self._pace(vnf_id, host)
            try:
                res = await self.m.forwarder.replay(vnf_id, int(position), pace)
            except ReplayGapError as gap:
                return await self._replay_gap(vnf_id, seq, int(position), gap, pace)
            log.log(_pacing_level(res.pacing), "replayed %d datagram(s) to %s after "
                    "checkpoint %s (position %s) in %.1f ms%s", res.replayed, vnf_id, seq,
                    position, res.replay_ms, _pacing_note(res.pacing))
            if res.across_takeover is not None:
                detail = (f"{vnf_id} was restored from checkpoint {seq} (log position "
                          f"{position}), taken before the forwarder pair's takeover at "
                          f"position {res.across_takeover}, and no checkpoint since: the "
                          "datagrams the old active forwarder delivered last without "
                          "mirroring them may be missing from the replay")
                log.warning("%s", detail)  # the operation says so too (acrossTakeover)
                return {**res.model_dump(), "fromPosition": position,
                        "acrossTakeover": detail}
            return {**res.model_dump(), "fromPosition": position}
        except ForwarderError as exc:
            self.forwarder_alarm(str(exc))
            return {"replayed": 0, "error": str(exc)}

    async def _replay_gap(self, vnf_id: str, seq: int, position: int,
                          gap: ReplayGapError, pace: ReplayPace | None) -> dict[str, Any]:
        """The forwarder no longer holds the log from the restored checkpoint's position
        (trimmed after a newer checkpoint that proved unusable): the datagrams in between
        are lost. Replay what it holds, so the VNF comes back with the least loss, and say
        so: in the heal's occurrence (``replayGap``) and by an alarm."""
        assert self.m.forwarder is not None
        info = {"from": position, "oldest": gap.oldest, "lost": gap.oldest - position}
        log_decision(log, "replay-gap", f"{vnf_id}: checkpoint {seq} is at log position "
                     f"{position}, but the forwarder holds the log from {gap.oldest} only: "
                     f"{gap.oldest - position} datagram(s) are lost; replaying from "
                     f"{gap.oldest}", level=logging.WARNING, vnf=vnf_id, seq=seq,
                     reason="the log was trimmed past the restored checkpoint (a newer one "
                            "was unusable)", **info)
        self.m._raise_alarm(f"replay-gap:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "MAJOR",
                            "replay-gap", f"{vnf_id} was restored from checkpoint {seq} (log "
                          f"position {position}) but the forwarder's log starts at "
                          f"{gap.oldest}: {gap.oldest - position} datagram(s) received in "
                          "between are lost to it", {"host": None, **info})
        res = await self.m.forwarder.replay(vnf_id, gap.oldest, pace)
        log.info("replayed %d datagram(s) to %s from position %s (checkpoint %s was at "
                 "%s)%s", res.replayed, vnf_id, gap.oldest, seq, position,
                 _pacing_note(res.pacing))
        return {**res.model_dump(), "fromPosition": gap.oldest, "gap": info}

    async def watch_forwarder(self) -> None:
        """Force a checkpoint before a log fills; alarm when one would be lost."""
        assert self.m.forwarder is not None
        while True:
            await asyncio.sleep(0.1)
            for rec in self.m.store.list("vnf"):
                d = self.m._vnfd(rec.data)
                if not d.ha.replay or rec.data["haState"] != VnfState.ACTIVE:
                    continue
                try:
                    st = await self.m.forwarder.status(rec.id)
                except ForwarderError as exc:
                    self.forwarder_alarm(str(exc))
                    continue
                self.m._clear_alarm("forwarder")
                self.forwarder_logs[rec.id] = st
                fill = max(st.log_fill, st.log_age_s / 60.0)
                if fill > 0.8:
                    rt = self.m._rt(rec.id)
                    if rt.next_checkpoint > time.monotonic():
                        log_decision(log, "checkpoint-now", f"checkpoint {rec.id} now",
                                     reason=f"its packet log is {fill * 100:.0f}% full",
                                     vnf=rec.id)
                        rt.next_checkpoint = time.monotonic()
                if fill > 0.9:
                    self.m._raise_alarm(f"log:{rec.id}", rec.id, "PROCESSING_ERROR_ALARM",
                                        "MAJOR", "packet-log-nearly-full",
                                        f"packet log of {rec.id} is {fill * 100:.0f}% full; "
                                      "checkpoints are not keeping up", {"host": None})
                elif fill < 0.5:
                    self.m._clear_alarm(f"log:{rec.id}")

    def forwarder_alarm(self, detail: str) -> None:
        self.m._raise_alarm("forwarder", None, "COMMUNICATIONS_ALARM", "MAJOR",
                            "forwarder-unavailable", detail, {"host": "forwarder"})

    def context(self, vnf_id: str, failure: str, old_host: str | None, backups: list[str],
                d: VnfDescriptor, failed: frozenset[tuple[str, str]]) -> RecoveryContext:
        # A merely suspected host is alive until confirmed lost: a backup being checked
        # must not be ruled out (if it is really gone, the attempt fails and escalates).
        up = frozenset(h for h in self.m.detector.hosts(HostState.UP, HostState.SUSPECTED)
                       if not (h == old_host and failure == "host-loss"))
        standby = frozenset(
            h for h in up
            for i in self.m.membership.host_status.get(h, {}).get("instances", [])
            if i["id"] == vnf_id and i["state"] == InstanceState.STANDBY)
        try:
            restart_host = place(self.m.hosts_view(), memory=d.resources.memory, backups=0,
                                 exclude=[old_host] if failure == "host-loss" and old_host
                                 else []).primary
        except PlacementError:
            restart_host = None
        return RecoveryContext(failure=failure, vnf_host=old_host, hosts_up=up,
                               backups=tuple(backups),
                               checkpoints=self.m.checkpoints.checkpoint_hosts(vnf_id),
                               standby_hosts=standby, restart_host=restart_host, failed=failed)

    async def _execute(self, vnf_id: str, d: VnfDescriptor, decision: RecoveryDecision,
                       failure: str, old_host: str | None) -> dict[str, Any]:
        target = self.m.agent(decision.target_host)
        if decision.target_host != old_host and old_host is not None:
            await self._ensure_old_copy_stopped(vnf_id, old_host)
        elif decision.strategy == "restart":
            await target.delete(vnf_id)
        elif failure in ("hang", "manual"):
            await target.kill(vnf_id)  # the hung copy dies; its sandbox is reused
        async with self.restore_slot(decision.target_host):
            return await self._restore_on(target, vnf_id, d, decision)

    @contextlib.asynccontextmanager
    async def restore_slot(self, host: str) -> AsyncIterator[None]:
        """At most ``_RESTORES_PER_HOST`` restores at once on a host, and the host counted
        as strained meanwhile. A lost host's VNFs all land on its backup at once: twenty
        CRIU restores starved that host's agent, whose silence then had it declared lost
        too (scale benchmark, 100 VNFs on 2 vCPUs). Queued, the first VNFs serve sooner."""
        sem = self._restore_slots.setdefault(host, asyncio.Semaphore(_RESTORES_PER_HOST))
        self.m.detector.loading(host, +1)
        try:
            async with sem:
                yield
        finally:
            self.m.detector.loading(host, -1)

    async def _restore_on(self, target: AgentClient, vnf_id: str, d: VnfDescriptor,
                          decision: RecoveryDecision) -> dict[str, Any]:
        if decision.strategy == "restart":
            res = await target.create(d.model_dump(mode="json"), vnf_id)
            return {"instance": res, "seq": None}
        last_error: CheckpointCorrupt | None = None
        for seq in decision.seqs:
            try:
                res = await target.restore(vnf_id, seq)
                return {"instance": res, "seq": seq}
            except CheckpointCorrupt as exc:
                log_decision(log, "skip-checkpoint", f"checkpoint {vnf_id}/{seq} on "
                             f"{decision.target_host} is corrupt; trying the previous one",
                             level=logging.WARNING, vnf=vnf_id, seq=seq,
                             host=decision.target_host,
                             reason=f"verification failed on {exc.file}")
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _ensure_old_copy_stopped(self, vnf_id: str, old_host: str) -> None:
        """Never two live copies. The old copy is known stopped when its host was fenced
        (STONITH confirmed off, or its guard reported a fence); or it is stopped through
        its agent; or, for a lost host, the longest lease it may hold has run out (its
        guard, or its agent if the guard is dead, stops the VNFs by then)."""
        if old_host in self.m.membership.fenced_hosts:
            return
        if self.m.detector.is_up(old_host):
            try:
                await self.m.agent(old_host).delete(vnf_id)
                return
            except AgentUnreachable as exc:
                # Alive (its guard beats) but its agent does not answer: the guard stops
                # the VNFs when the agent grace runs out, and says so.
                await self.m.membership.wait_guard_fence(old_host, vnf_id, exc)
                return
        logged = False
        while old_host not in self.m.membership.fenced_hosts:
            if self.m.detector.is_up(old_host):
                # It came back meanwhile: its fence deadline is gone and, heartbeating
                # again, its lease never runs out (this wait never ended, and the
                # recovery stayed PROCESSING for good). Its agent stops the copy below.
                break
            deadline = self.m.membership.fence_deadline.get(old_host)
            wait = (deadline - time.monotonic() if deadline is not None
                    else self.m.detector.fenced_in(old_host))
            if wait <= 0:
                break
            if not logged:
                logged = True
                how = ("or until its fence is confirmed"
                       if self.m.membership.fencing_under_way(old_host)
                       else "(no fence confirmed)")
                log_decision(log, "wait-fenced", f"waiting {wait * 1000:.0f} ms until {old_host}"
                             f" is known fenced before moving {vnf_id} {how}",
                             reason="never two live copies: the longest lease the old host may "
                                    "hold has not run out since it was last heard",
                             vnf=vnf_id, host=old_host)
            await asyncio.sleep(min(wait, 0.005))  # a confirmed fence ends the wait early
        if old_host not in self.m.membership.fenced_hosts and \
                self.m.detector.is_up(old_host):
            # It came back meanwhile (e.g. a partition shorter than its fencing timeout), so
            # it may not have fenced itself: its copy is stopped through its agent.
            await self.m.agent(old_host).delete(vnf_id)

    def finish_recovery(self, vnf_id: str, decision: RecoveryDecision, result: dict[str, Any],
                        old_host: str | None, *, moved: bool = False,
                        op: tuple[str, OpChange] | None = None) -> None:
        rec = self.m.store.get("vnf", vnf_id)
        d = self.m._vnfd(rec.data)
        try:
            backups = list(place(self.m.hosts_view(), memory=d.resources.memory,
                                 backups=d.ha.backups, prefer=decision.target_host).backups)
        except PlacementError:
            backups = []
        rt = self.m._rt(vnf_id)
        rt.next_checkpoint = time.monotonic()  # re-protect at once: new replicas, new standby
        rt.recovered_at = time.monotonic()
        rt.probe_failures = 0
        self.m._update_vnf(vnf_id, lambda dd: {
            **dd, "haState": VnfState.ACTIVE, "host": decision.target_host, "backups": backups,
            "generation": dd.get("generation", 0) + 1, "restoredFrom": result.get("seq"),
            "pid": result["instance"].pid, "incarnation": result["instance"].started_at,
            ("lastMove" if moved else "lastRecovery"): {
                "strategy": decision.strategy, "at": now_iso(), "fromHost": old_host}}, op=op)


def _pacing_level(p: ReplayPacing | None) -> int:
    """A warning when the replay may have lost datagrams in the VNF's socket buffer."""
    risky = p is not None and (p.paced_by == "rate" or p.forced > 0 or bool(p.drops))
    return logging.WARNING if risky else logging.INFO


def _pacing_note(p: ReplayPacing | None) -> str:
    """What the log line of a replay says of its pacing: whether it was paced by the VNF's
    queue, and anything that may have cost datagrams (a fixed rate, the floor, drops)."""
    if p is None:
        return ""
    if p.paced_by == "rate":
        return f"; at a fixed rate: {p.reason}"
    bad = [f"{p.forced} sent at the floor rate without room"] if p.forced else []
    if p.drops:
        bad.append(f"{p.drops} dropped by its socket")
    return f"; paced by its receive queue ({p.reads} readings" + \
        (f"; {', '.join(bad)})" if bad else ")")
