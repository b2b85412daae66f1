"""Periodic checkpoints: dump a VNF, replicate it to its backups, keep the newest few.

One dump at a time per host (a slot), so that checkpointing many VNFs cannot starve the
host and its heartbeats; the packet log is held around the dump for replay.

A part composed into the ``Manager``; it calls back through the manager's shared
services only (the contract is in ``nfvha.vnfm.manager``'s docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from nfvha.dataplane.client import ForwarderError
from nfvha.descriptor import VnfDescriptor
from nfvha.errors import CriuError, InstanceStopped, NfvhaError
from nfvha.ha.fault import HostState
from nfvha.vnfm.events import EventKind
from nfvha.wire import CheckpointMeta

if TYPE_CHECKING:
    from nfvha.vnfm.manager import Manager

log = logging.getLogger("nfvha.manager")

__all__ = ["Checkpointer"]

_DUMPS_PER_HOST = 1
_BEHIND_AFTER = 3  # checkpoints in a row slower than the interval before the alarm


class Checkpointer:
    """Takes, records, replicates and prunes checkpoints; says which host holds which."""

    def __init__(self, m: Manager) -> None:
        self.m = m
        self._dump_slots: dict[str, asyncio.Semaphore] = {}

    async def checkpoint(self, vnf_id: str) -> None:
        """One periodic checkpoint; at most ``_DUMPS_PER_HOST`` run at once on a host, so
        that checkpointing many VNFs cannot starve the host (and its heartbeats)."""
        host = self.m.store.get("vnf", vnf_id).data["host"]
        sem = self._dump_slots.setdefault(host, asyncio.Semaphore(_DUMPS_PER_HOST))
        rt = self.m._rt(vnf_id)
        rt.checkpointing = True
        try:
            async with sem:
                if rt.probe_failures > 0:
                    # It stopped answering while it waited for the host's dump slot: a
                    # checkpoint now might save a hang.
                    return
                await self._checkpoint_now(vnf_id)
        finally:
            rt.checkpointing = rt.dumping = False

    async def _checkpoint_now(self, vnf_id: str) -> None:
        started = time.monotonic()
        rec = self.m.store.get("vnf", vnf_id)
        host = rec.data["host"]
        d = self.m._vnfd(rec.data)
        position: int | None = None
        rt = self.m._rt(vnf_id)
        rt.dumping = True
        if d.ha.replay and self.m.forwarder is not None:
            try:
                position = await self.m.forwarder.hold(vnf_id)
            except ForwarderError as exc:
                self.m.healing.forwarder_alarm(str(exc))
        try:
            try:
                extra = {} if position is None else {"log_position": position}
                meta = await self.m.agent(host).checkpoint(vnf_id, drain=position is not None,
                                                           extra=extra)
            finally:
                if position is not None and self.m.forwarder is not None:
                    with contextlib.suppress(ForwarderError):
                        held_ms = await self.m.forwarder.release(vnf_id)
                        self.m._rt(vnf_id).last_hold_ms = held_ms
                rt.dumping = False
                rt.thawed_at = time.monotonic()
            replicas = [host]
            backups = [b for b in rec.data.get("backups", []) if b in self.m._up_hosts()]
            pushes = [self._replicate(vnf_id, host, meta.seq, b, d) for b in backups]
            for b, res in zip(backups, await asyncio.gather(*pushes, return_exceptions=True),
                              strict=True):
                if isinstance(res, Exception):
                    log.warning("replicating %s/%s to %s failed: %s", vnf_id, meta.seq, b,
                                res)
                else:
                    replicas.append(b)
        except NfvhaError as exc:  # the agent's refusal or failure, typed (agent_client)
            criu_tail = " | ".join(exc.log_lines[-4:]) if isinstance(exc, CriuError) else ""
            log.warning("checkpoint of %s on %s failed: %s%s", vnf_id, host, exc,
                        f" (CRIU: {criu_tail})" if criu_tail else "")
            rt = self.m._rt(vnf_id)
            if isinstance(exc, InstanceStopped) and rt.failure is None:
                # The agent found the VNF stopped (SIGSTOP, a debugger): a hang, known now
                # rather than after the probes' threshold.
                rt.failure = ("hang", time.time(), f"VNF found stopped by a checkpoint on "
                              f"{host}")
                rt.failed_at = rt.probe_failing_since
                self.m._wake.set()
            self.m._raise_alarm(f"checkpoint:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM", "MAJOR",
                                "checkpoint-failed", str(exc), {"host": host})
            self.m.events.publish(EventKind.CHECKPOINT_FAILED, {
                "vnfInstanceId": vnf_id, "host": host, "detail": str(exc)})
            return
        self.record(vnf_id, meta, host, replicas, position, rec.data,
                    time.monotonic() - started)
        if position is not None and self.m.forwarder is not None and \
                (len(replicas) > 1 or d.ha.backups == 0):
            # Once this checkpoint has a replica, the log may forget what the *previous* one
            # covers, not more (and exactly-once replies go out up to there): a restore
            # that finds this one unusable (the VNF stopped during its dump, a corrupt
            # image) falls back to the previous checkpoint, and replay must still reach
            # back to that one's cut. Trimming to this one lost a checkpoint interval of
            # datagrams on such a fallback (replay e2e, a SIGSTOP during a dump).
            older = [int(c.data["logPosition"]) for c in
                     self.m.store.list("checkpoint", where={"vnfInstanceId": vnf_id})
                     if int(c.data["seq"]) < meta.seq
                     and c.data.get("logPosition") is not None]
            if older:
                with contextlib.suppress(ForwarderError):
                    await self.m.forwarder.commit(vnf_id, max(older))
        self._prune(vnf_id, d.ha.retention)
        self.m._clear_alarm(f"checkpoint:{vnf_id}")
        took = time.monotonic() - started
        rt = self.m._rt(vnf_id)
        # Three in a row, either way, so that one slow checkpoint on a busy host does not
        # make the alarm flap.
        rt.slow_streak = (max(rt.slow_streak, 0) + 1 if took > d.ha.checkpoint_interval
                          else min(rt.slow_streak, 0) - 1)
        if rt.slow_streak >= _BEHIND_AFTER:
            # Each checkpoint takes longer than the interval: they run back to back, the
            # VNF is frozen far more often than planned, and what a failure loses grows.
            self.m._raise_alarm(f"checkpoint-behind:{vnf_id}", vnf_id, "PROCESSING_ERROR_ALARM",
                                "WARNING", "checkpoints-behind",
                                f"a checkpoint of {vnf_id} took {took * 1000:.0f} ms, longer "
                              f"than its interval ({d.ha.checkpoint_interval * 1000:.0f} ms): "
                              "raise ha.checkpoint_interval or lower the VNF's memory",
                                {"host": host, "checkpointMs": round(took * 1000)})
        elif rt.slow_streak <= -_BEHIND_AFTER:
            self.m._clear_alarm(f"checkpoint-behind:{vnf_id}")

    def record(self, vnf_id: str, meta: CheckpointMeta, host: str,
               replicas: list[str], position: int | None, vnf: dict[str, Any],
               seconds: float) -> None:
        cp = {"id": f"{vnf_id}/{meta.seq}", "vnfInstanceId": vnf_id, "seq": meta.seq,
              "createdAt": meta.created_at,
              # The state it holds is as of cutAt (the freeze), not createdAt (the commit).
              "cutAt": meta.cut_at or meta.created_at, "host": host, "replicas": replicas,
              "bytes": meta.total_bytes, "criuStats": meta.criu_stats,
              "generation": vnf.get("generation", 0), "logPosition": position,
              "holdMs": self.m._rt(vnf_id).last_hold_ms if position is not None else None,
              "durationMs": seconds * 1000}
        self.m.store.put("checkpoint", cp["id"], cp)
        self.m.events.publish(EventKind.CHECKPOINT, cp)

    async def _replicate(self, vnf_id: str, host: str, seq: int, backup: str,
                         d: VnfDescriptor) -> None:
        """Push the checkpoint to a backup (and build its standby there), given up as soon
        as the backup is declared DOWN: a push to a host that crashed meanwhile otherwise
        waits out its timeout (60 s), holding this host's checkpoints back all along."""

        async def push() -> None:
            await self.m.agent(host).push(vnf_id, seq,
                                          self.m.store.get("host", backup).data["url"])
            if "standby" in {s for chain in d.ha.recovery.values() for s in chain}:
                await self.m.agent(backup).standby(vnf_id, seq)

        task = asyncio.ensure_future(push())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=5 * self.m.cfg.tick)
                if not task.done() and self.m.detector.state_of(backup) in (HostState.DOWN,
                                                                            None):
                    raise NfvhaError(f"backup {backup} is lost: push abandoned")
            task.result()
        finally:
            task.cancel()

    def _prune(self, vnf_id: str, keep: int) -> None:
        cps = sorted(self.m.store.list("checkpoint", where={"vnfInstanceId": vnf_id}),
                     key=lambda r: r.data["seq"])
        for old in cps[:-keep] if len(cps) > keep else []:
            self.m.store.delete("checkpoint", old.id)

    def checkpoint_hosts(self, vnf_id: str, generation: int | None = None) -> dict[str, list[int]]:
        """Which live host holds which checkpoints of a VNF, newest first."""
        out: dict[str, list[int]] = {}
        for cp in self.m.store.list("checkpoint", where={"vnfInstanceId": vnf_id}):
            for h in cp.data.get("replicas", []):
                out.setdefault(h, []).append(int(cp.data["seq"]))
        return {h: sorted(s, reverse=True) for h, s in out.items()}
