"""The compute-node agent: VNF instances in sandboxes, checkpoints, transfers, heartbeats.

One ``Agent`` per host. It is the only thing that touches CRIU, namespaces and cgroups
there; the HTTP API (``nfvha.vim.api``) is a thin layer over these coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.descriptor import VnfDescriptor, parse_descriptor
from nfvha.errors import (
    AddressInUse,
    CheckpointCorrupt,
    CheckpointError,
    InstanceNotFound,
    InstanceStateError,
    NfvhaError,
    SandboxError,
)
from nfvha.vim.cgroups import CgroupDriver
from nfvha.vim.criu import CriuRunner, DumpStats, RestoreStats
from nfvha.vim.hostnet import HostNetwork
from nfvha.vim.metrics import AgentMetrics
from nfvha.vim.sandbox import (
    ExitStatus,
    ProcessWatch,
    Sandbox,
    SandboxConfig,
    become_subreaper,
    proc_state,
)
from nfvha.vim.store import CheckpointMeta, CheckpointStore
from nfvha.vim.transfer import PushResult, push_checkpoint

__all__ = ["Agent", "AgentConfig", "Instance", "InstanceState"]

log = logging.getLogger(__name__)

_INSTANCE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


class InstanceState(enum.StrEnum):
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    CHECKPOINTING = "CHECKPOINTING"
    RESTORING = "RESTORING"
    EXITED = "EXITED"  # the VNF ended on its own (crash, kill): recoverable
    STOPPED = "STOPPED"  # stopped on purpose (API)
    FENCED = "FENCED"  # stopped by the agent itself after losing the manager
    STANDBY = "STANDBY"  # sandbox built, link down, waiting for a restore
    FAILED = "FAILED"  # could not be started or restored


LIVE_STATES = {InstanceState.CREATING, InstanceState.RUNNING, InstanceState.CHECKPOINTING,
               InstanceState.RESTORING}


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    state_dir: Path
    bridge: str = "br0"
    token: str = ""
    manager_url: str | None = None
    advertise_url: str | None = None
    heartbeat_interval: float = 0.1
    #: A full heartbeat (every instance with its cgroup usage, the host's resources) goes
    #: out when something changed and at least this often; the others only say "alive".
    full_status_every: float = 1.0
    fencing_timeout: float = 0.0  # >0: stop own VNFs after losing the manager this long
    keep_checkpoints: int = 3
    netns_prefix: str | None = None
    cgroup_parent: str | None = None
    log_dir: Path = Path("/var/log/nfvha/vnf")
    work_root: Path = Path("/var/lib/nfvha/vnf")
    criu_binary: str | None = None

    @property
    def effective_netns_prefix(self) -> str:
        return self.netns_prefix or f"nfvha-{self.host_id}-"

    @property
    def effective_cgroup_parent(self) -> str:
        return self.cgroup_parent or f"nfvha/{self.host_id}/vnf"


@dataclass
class Instance:
    id: str
    descriptor: VnfDescriptor
    sandbox: Sandbox
    state: InstanceState = InstanceState.CREATING
    pid: int | None = None
    started_at: float | None = None
    exit: ExitStatus | None = None
    restored_from: str | None = None
    last_checkpoint: CheckpointMeta | None = None
    last_restore: RestoreStats | None = None
    error: str | None = None
    watch: ProcessWatch | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> dict[str, Any]:
        """The JSON shape of an instance in API answers and heartbeats."""
        return {
            "id": self.id,
            "vnfd_id": self.descriptor.id,
            "state": self.state.value,
            "pid": self.pid,
            "address": self.descriptor.network.address,
            "mac": self.descriptor.network.effective_mac,
            "started_at": self.started_at,
            "exit": None if self.exit is None else {
                "code": self.exit.code, "signal": self.exit.signal, "at": self.exit.at,
                "reason": self.exit.describe()},
            "restored_from": self.restored_from,
            "last_checkpoint": None if self.last_checkpoint is None else {
                "seq": self.last_checkpoint.seq, "created_at": self.last_checkpoint.created_at,
                "cut_at": self.last_checkpoint.cut_at,
                "total_bytes": self.last_checkpoint.total_bytes},
            "error": self.error,
            "netns": self.sandbox.netns,
            "log": str(self.sandbox.log_path),
        }


EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class Agent:
    """Owns every VNF instance on this host. All public methods are coroutines."""

    def __init__(self, cfg: AgentConfig, *, criu: CriuRunner | None = None,
                 net: HostNetwork | None = None, cgroups: CgroupDriver | None = None,
                 store: CheckpointStore | None = None) -> None:
        self.cfg = cfg
        self.criu = criu or CriuRunner(cfg.criu_binary)
        self.net = net or HostNetwork()
        self.cgroups = cgroups or CgroupDriver.detect()
        self.store = store or CheckpointStore(cfg.state_dir / "checkpoints",
                                              keep=cfg.keep_checkpoints)
        self.sandbox_cfg = SandboxConfig(
            host_id=cfg.host_id, bridge=cfg.bridge, netns_prefix=cfg.effective_netns_prefix,
            cgroup_parent=cfg.effective_cgroup_parent, run_dir=cfg.state_dir / "run",
            log_dir=cfg.log_dir, work_root=cfg.work_root)
        self.instances: dict[str, Instance] = {}
        self.started_at = time.time()
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._last_manager_ok: float | None = None  # monotonic time of the last 2xx heartbeat
        self._peers: dict[str, str] = {}  # other agents (id -> url) as the manager lists them
        self._last_peer_ok: float | None = None  # monotonic send time of the last answered ping
        self.peer_last_heard: dict[str, float] = {}  # peer id -> when it last pinged us
        self.fenced_at: float | None = None
        self._usage, self._usage_at = 0, -1e9  # cached checkpoint disk use
        self._sent_signature: tuple[Any, ...] | None = None  # of the last full status accepted
        self._sent_full_at = -1e9
        self._need_full = True
        # The lease the manager granted with its last answer: fence after this long
        # without an answer from it or a peer. fencing_timeout until it says otherwise.
        self.lease = cfg.fencing_timeout
        self.metrics = AgentMetrics(self)

    @property
    def last_manager_ok(self) -> float | None:
        """Monotonic send time of the last heartbeat the manager accepted."""
        return self._last_manager_ok

    # -- life of the agent ---------------------------------------------------------------

    async def start(self) -> None:
        """Check CRIU, adopt orphans, clear leftovers of a previous run, start heartbeats."""
        await self.criu.require_usable()
        become_subreaper()
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        stale = await asyncio.to_thread(self.store.cleanup_pending)
        if stale:
            log.info("removed %d incomplete checkpoint(s) left by a previous run", stale)
        await self._remove_stale_sandboxes()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0))
        if self.cfg.manager_url:
            self._spawn(self._heartbeat_loop())
            self._spawn(self._event_loop())
            self._spawn(self._peer_loop())
            if self.cfg.fencing_timeout > 0:
                self._spawn(self._fencing_loop())

    async def close(self, *, stop_instances: bool = True) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if stop_instances:
            for inst in list(self.instances.values()):
                with contextlib.suppress(NfvhaError):
                    await self.delete_instance(inst.id)
        if self._http is not None:
            await self._http.aclose()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_stale_sandboxes(self) -> None:
        """A restarted agent must not leave orphaned sandboxes of its previous life around."""
        prefix = self.cfg.effective_netns_prefix
        for ns in await self.net.list_netns(prefix):
            iid = ns[len(prefix):]
            if iid in self.instances:
                continue
            log.warning("removing stale sandbox %s of a previous agent run", ns)
            cg = self.cgroups.cgroup(f"{self.cfg.effective_cgroup_parent}/{iid}")
            with contextlib.suppress(NfvhaError):
                await asyncio.to_thread(cg.delete)
            with contextlib.suppress(NfvhaError):
                await self.net.delete_netns(ns)

    # -- instances -----------------------------------------------------------------------

    def get(self, instance_id: str) -> Instance:
        try:
            return self.instances[instance_id]
        except KeyError:
            known = ", ".join(sorted(self.instances)) or "none"
            raise InstanceNotFound(
                f"no VNF instance {instance_id!r} on host {self.cfg.host_id} (instances: {known})"
            ) from None

    def _check_address_free(self, d: VnfDescriptor, instance_id: str) -> None:
        for other in self.instances.values():
            if other.id == instance_id or other.state not in LIVE_STATES:
                continue
            if other.descriptor.network.ip == d.network.ip:
                raise AddressInUse(
                    f"address {d.network.ip} is already used by live instance {other.id} on "
                    f"host {self.cfg.host_id}; stop or delete it first")
            if other.descriptor.network.effective_mac == d.network.effective_mac:
                raise AddressInUse(
                    f"MAC {d.network.effective_mac} is already used by live instance {other.id}")

    def _new_instance(self, descriptor: VnfDescriptor, instance_id: str | None) -> Instance:
        iid = instance_id or f"{descriptor.id}-{uuid.uuid4().hex[:8]}"
        if not _INSTANCE_ID_RE.match(iid):
            raise InstanceStateError(
                f"instance id {iid!r} is invalid: use 1-40 chars of a-z, 0-9 and '-'")
        existing = self.instances.get(iid)
        if existing is not None and existing.state in LIVE_STATES:
            raise InstanceStateError(
                f"instance {iid} already exists here in state {existing.state}; "
                "delete it first")
        self._check_address_free(descriptor, iid)
        sandbox = Sandbox(self.sandbox_cfg, iid, descriptor, self.net, self.cgroups, self.criu)
        return Instance(id=iid, descriptor=descriptor, sandbox=sandbox)

    async def create_instance(self, descriptor: VnfDescriptor | dict[str, Any],
                              instance_id: str | None = None) -> Instance:
        """Build a sandbox and start the VNF in it. Nothing is left behind on failure."""
        d = descriptor if isinstance(descriptor, VnfDescriptor) else parse_descriptor(descriptor)
        old = self.instances.get(instance_id or "")
        inst = self._new_instance(d, instance_id)
        if old is not None:
            await self._discard(old)
        self.instances[inst.id] = inst
        try:
            async with inst.lock:
                await inst.sandbox.build()
                pid = await inst.sandbox.start()
                self._watch(inst, pid)
                inst.state = InstanceState.RUNNING
        except BaseException as exc:
            self.instances.pop(inst.id, None)
            with contextlib.suppress(NfvhaError):
                await inst.sandbox.destroy()
            if isinstance(exc, NfvhaError):
                log.error("instance %s could not start: %s", inst.id, exc)
            raise
        log.info("instance %s (%s) running as pid %s at %s", inst.id, d.id, inst.pid,
                 d.network.address)
        return inst

    def _watch(self, inst: Instance, pid: int) -> None:
        inst.pid = pid
        inst.started_at = time.time()
        inst.exit = None
        inst.watch = ProcessWatch(pid, lambda st: self._on_exit(inst, st))

    def _on_exit(self, inst: Instance, status: ExitStatus) -> None:
        inst.exit = status
        inst.watch = None
        if inst.state in (InstanceState.RUNNING, InstanceState.CHECKPOINTING):
            inst.state = InstanceState.EXITED
        log.warning("instance %s %s", inst.id, status.describe())
        self._emit({"type": "instance-exit", "host_id": self.cfg.host_id, "instance": inst.view()})

    async def stop_instance(self, instance_id: str, grace: float = 2.0) -> Instance:
        inst = self.get(instance_id)
        async with inst.lock:
            if inst.pid is not None and inst.state in LIVE_STATES:
                inst.state = InstanceState.STOPPED
                await inst.sandbox.terminate(inst.pid, grace)
            inst.state = InstanceState.STOPPED
        return inst

    async def delete_instance(self, instance_id: str, *, purge_checkpoints: bool = False) -> None:
        inst = self.get(instance_id)
        await self._discard(inst)
        if purge_checkpoints:
            await asyncio.to_thread(self.store.delete, instance_id)

    async def _discard(self, inst: Instance) -> None:
        async with inst.lock:
            inst.state = InstanceState.STOPPED
            if inst.watch is not None:
                inst.watch.close()
                inst.watch = None
            try:
                await inst.sandbox.destroy()
            finally:
                self.instances.pop(inst.id, None)

    async def stop_all(self, reason: str,
                       state: InstanceState = InstanceState.STOPPED) -> list[str]:
        """Kill every VNF here at once (fencing): a second live copy must never exist."""
        stopped = []
        for inst in list(self.instances.values()):
            if inst.state in LIVE_STATES:
                inst.state = state
                inst.error = reason
                with contextlib.suppress(NfvhaError):
                    await inst.sandbox.kill()
                stopped.append(inst.id)
        if stopped:
            log.warning("stopped %s: %s", ", ".join(stopped), reason)
        return stopped

    # -- checkpoints ---------------------------------------------------------------------

    async def checkpoint(self, instance_id: str, *, stop: bool = False, drain: bool = False,
                         extra: dict[str, Any] | None = None) -> CheckpointMeta:
        """Dump the running VNF and commit the images atomically.

        The VNF is left running, unless ``stop``: then CRIU kills it at the end of the dump
        with its network still locked, so TCP peers see no FIN or RST and the checkpoint
        can be restored with every established connection intact (a planned move).

        With ``drain`` (the forwarder holds delivery meanwhile) the dump waits until the
        VNF has read every datagram already delivered, so the checkpoint is an exact cut
        at the log position recorded in ``extra``.
        """
        inst = self.get(instance_id)
        async with inst.lock:
            if inst.state != InstanceState.RUNNING or inst.pid is None:
                raise InstanceStateError(
                    f"instance {instance_id} is {inst.state}: only a RUNNING VNF can be "
                    "checkpointed")
            if proc_state(inst.pid) in ("T", "t"):
                raise InstanceStateError(
                    f"instance {instance_id} is stopped (SIGSTOP or traced): a checkpoint "
                    "would save it stopped; heal it instead")
            inst.state = InstanceState.CHECKPOINTING
            started = time.monotonic()
            pending = await asyncio.to_thread(self.store.begin, instance_id)
            try:
                if drain:
                    await _wait_udp_drained(inst.pid)
                if stop:
                    inst.state = InstanceState.STOPPED  # the exit CRIU causes is no failure
                cut_at = time.time()
                stats: DumpStats = await inst.sandbox.dump(inst.pid, pending.path,
                                                           leave_running=not stop)
                if not stop and proc_state(inst.pid) in ("T", "t"):
                    # Stopped during the dump (e.g. SIGSTOP): the images hold a stopped
                    # VNF, and restoring them would restore the hang.
                    raise InstanceStateError(
                        f"instance {instance_id} was stopped during its dump; checkpoint "
                        "discarded")
                meta = await asyncio.to_thread(
                    self.store.commit, pending, vnf_name=inst.descriptor.id,
                    host_id=self.cfg.host_id, criu_stats=stats.as_dict(),
                    descriptor=inst.descriptor.model_dump(mode="json"), extra=extra or {},
                    cut_at=cut_at)
            except BaseException:
                self.metrics.checkpoint_failures.inc()
                await asyncio.to_thread(pending.abort)
                if stop and inst.watch is not None:
                    inst.state = InstanceState.CHECKPOINTING  # still alive: back to RUNNING
                raise
            finally:
                if inst.state == InstanceState.CHECKPOINTING:
                    inst.state = InstanceState.RUNNING
            inst.last_checkpoint = meta
        self.metrics.checkpoint_duration.observe(time.monotonic() - started)
        self.metrics.checkpoint_frozen.observe(stats.frozen_time_us / 1e6)
        self.metrics.checkpoint_size.observe(meta.total_bytes)
        log.info("checkpoint %s: %d bytes, frozen %.1f ms", meta.name, meta.total_bytes,
                 stats.frozen_time_us / 1000)
        return meta

    async def list_checkpoints(self, instance_id: str | None = None) -> list[CheckpointMeta]:
        return await asyncio.to_thread(self.store.list, instance_id)

    async def push(self, instance_id: str, seq: int | None, peer_url: str) -> PushResult:
        meta = await self._resolve_checkpoint(instance_id, seq)
        return await push_checkpoint(self.store, instance_id, meta.seq, peer_url, self.cfg.token,
                                     client=self._http)

    async def _resolve_checkpoint(self, instance_id: str, seq: int | None) -> CheckpointMeta:
        if seq is None:
            meta = await asyncio.to_thread(self.store.latest, instance_id)
            if meta is None:
                raise CheckpointError(
                    f"no checkpoint of instance {instance_id} on host {self.cfg.host_id}")
            return meta
        return await asyncio.to_thread(self.store.get, instance_id, seq)

    async def restore(self, instance_id: str, seq: int | None = None) -> Instance:
        """Restore a checkpoint into a sandbox with the VNF's network identity.

        The sandbox of a dead, stopped or standby instance is reused (its netns, veth and
        cgroup are already there); otherwise a fresh one is built. Every image file is
        verified against its SHA-256 meanwhile: a corrupt checkpoint is refused
        (``CheckpointCorrupt``) before CRIU runs, and nothing of the attempt is left.
        """
        started = time.monotonic()
        meta = await self._resolve_checkpoint(instance_id, seq)
        d = parse_descriptor(meta.descriptor)
        old = self.instances.get(instance_id)
        if old is not None and old.state in LIVE_STATES:
            raise InstanceStateError(
                f"instance {instance_id} is {old.state} on host {self.cfg.host_id}; stop it "
                "before restoring over it")
        reusable = {InstanceState.STANDBY, InstanceState.EXITED, InstanceState.STOPPED,
                    InstanceState.FENCED}
        reuse = old if (old is not None and old.state in reusable and old.sandbox.built
                        and old.descriptor == d) else None
        if reuse is not None:
            self._check_address_free(d, instance_id)
            inst = reuse
            if inst.watch is not None:
                inst.watch.close()
                inst.watch = None
        else:
            inst = self._new_instance(d, instance_id)
            if old is not None:
                await self._discard(old)
        was_standby = inst.state == InstanceState.STANDBY
        inst.state = InstanceState.RESTORING
        self.instances[inst.id] = inst
        try:
            async with inst.lock:
                # Hashing (a thread) and sandbox preparation (ip, cgroups) overlap.
                verified, _ = await asyncio.gather(
                    asyncio.to_thread(self.store.verify, instance_id, meta.seq),
                    self._prepare_sandbox(inst, reused=reuse is not None,
                                          standby=was_standby))
                meta = verified
                stats = await inst.sandbox.restore(self.store.path(instance_id, meta.seq))
                if proc_state(stats.pid) in ("T", "t"):
                    raise CheckpointCorrupt(
                        f"checkpoint {meta.name} holds a stopped VNF (it was stopped while "
                        "being dumped); restore the previous checkpoint",
                        checkpoint=meta.name, file="core-1.img")
                self._watch(inst, stats.pid)
                await inst.sandbox.announce()
                inst.last_restore = stats
                inst.restored_from = meta.name
                inst.last_checkpoint = meta
                inst.state = InstanceState.RUNNING
        except BaseException as exc:
            self.metrics.restore_duration.labels("failure").observe(time.monotonic() - started)
            self.instances.pop(inst.id, None)
            with contextlib.suppress(NfvhaError):
                await inst.sandbox.destroy()
            if isinstance(exc, NfvhaError):
                log.error("restore of %s failed: %s", meta.name, exc)
            raise
        self.metrics.restore_duration.labels("success").observe(time.monotonic() - started)
        log.info("instance %s restored from %s as pid %d (criu %.1f ms, wall %.1f ms%s)",
                 inst.id, meta.name, stats.pid, stats.restore_time_us / 1000,
                 stats.wall_seconds * 1000, ", sandbox reused" if reuse else "")
        return inst

    @staticmethod
    async def _prepare_sandbox(inst: Instance, *, reused: bool, standby: bool) -> None:
        if not reused:
            await inst.sandbox.build()
        elif standby:
            await inst.sandbox.activate()
        else:
            await inst.sandbox.kill()  # whatever is left of the dead copy goes first

    async def prepare_standby(self, instance_id: str, seq: int | None = None) -> Instance:
        """Build the sandbox of a replicated checkpoint with its link down, so that a later
        restore here skips namespace, veth and cgroup set-up (the ``standby`` strategy)."""
        meta = await self._resolve_checkpoint(instance_id, seq)
        d = parse_descriptor(meta.descriptor)
        old = self.instances.get(instance_id)
        if old is not None:
            if old.state == InstanceState.STANDBY and old.descriptor == d:
                return old
            if old.state in LIVE_STATES:
                raise InstanceStateError(
                    f"instance {instance_id} is {old.state} here; a standby needs it elsewhere")
            await self._discard(old)
        inst = self._new_instance(d, instance_id)
        inst.state = InstanceState.STANDBY
        self.instances[inst.id] = inst
        try:
            await inst.sandbox.build(standby=True)
        except BaseException:
            self.instances.pop(inst.id, None)
            raise
        return inst

    async def inject(self, instance_id: str, fault: str) -> Instance:
        """Fault injection for tests and demos: ``kill`` (SIGKILL) or ``hang`` (SIGSTOP)."""
        inst = self.get(instance_id)
        if inst.pid is None or inst.state not in LIVE_STATES:
            raise InstanceStateError(f"instance {instance_id} is {inst.state}: nothing to "
                                     "inject a fault into")
        sig = {"kill": signal.SIGKILL, "hang": signal.SIGSTOP}.get(fault)
        if sig is None:
            raise InstanceStateError(f"unknown fault {fault!r}: use kill or hang")
        os.kill(inst.pid, sig)
        log.warning("injected %s into instance %s (pid %d)", fault, instance_id, inst.pid)
        return inst

    async def probe_peer(self, url: str, timeout: float = 0.2) -> bool:
        """The second path to a suspected host: can this host reach its agent?"""
        assert self._http is not None
        try:
            r = await self._http.get(f"{url.rstrip('/')}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    # -- status, heartbeats, events ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        instances = []
        for inst in self.instances.values():
            v = inst.view()
            if inst.state in LIVE_STATES and inst.sandbox.cgroup.exists():
                with contextlib.suppress(SandboxError, OSError):
                    u = inst.sandbox.cgroup.usage()
                    v["usage"] = {"memory_bytes": u.memory_bytes, "cpu_seconds": u.cpu_seconds,
                                  "pids": u.pids}
            instances.append(v)
        load1, _, _ = os.getloadavg()
        return {
            "host_id": self.cfg.host_id,
            "url": self.cfg.advertise_url,
            "started_at": self.started_at,
            "time": time.time(),
            "instances": instances,
            "lease": self.lease,  # held now: a restarted manager learns it from here
            "resources": {"load1": load1, "mem_available_bytes": _mem_available(),
                          "cpus": os.cpu_count() or 1,
                          "checkpoint_bytes": self._checkpoint_bytes()},
        }

    def _signature(self) -> tuple[Any, ...]:
        """What the manager acts on in a full status, cheaply: when this changes, the next
        heartbeat is full at once rather than within ``full_status_every``."""
        return tuple((i, inst.state, inst.pid,
                      inst.last_checkpoint.seq if inst.last_checkpoint else None)
                     for i, inst in self.instances.items())

    def light_status(self) -> dict[str, Any]:
        """A heartbeat that says only "alive, nothing changed". A full status costs a
        cgroup read per instance and a JSON body that grows with them, twenty times a
        second: at 20 VNFs per host, most of an idle agent's CPU."""
        return {"host_id": self.cfg.host_id, "url": self.cfg.advertise_url,
                "started_at": self.started_at, "time": time.time(), "full": False,
                "lease": self.lease}

    def _checkpoint_bytes(self) -> int:
        """Disk used by checkpoints; walking the store is too slow for every heartbeat
        (20 a second), so the figure is at most two seconds old."""
        now = time.monotonic()
        if now - self._usage_at > 2.0:
            self._usage = self.store.usage_bytes()
            self._usage_at = now
        return self._usage

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("at", time.time())
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def _event_loop(self) -> None:
        """Report exits to the manager at once; retried briefly, then dropped (heartbeats
        carry the same state, so a lost event delays detection but never hides it)."""
        assert self._http is not None
        while True:
            event = await self._events.get()
            for attempt in range(5):
                try:
                    r = await self._http.post(f"{self.cfg.manager_url}/nfvha/v1/events",
                                              json=event, headers=self._auth())
                    if r.status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05 * (attempt + 1))

    async def _heartbeat_loop(self) -> None:
        assert self._http is not None
        url = f"{self.cfg.manager_url}/nfvha/v1/hosts/{self.cfg.host_id}/heartbeat"
        timeout = max(self.cfg.heartbeat_interval * 2, 0.2)
        if self.cfg.fencing_timeout > 0:
            timeout = min(timeout, self.cfg.fencing_timeout / 2)
        while True:
            sent_at = time.monotonic()  # the lease runs from sending, not from the answer
            signature = self._signature()
            full = self._need_full or signature != self._sent_signature or \
                sent_at - self._sent_full_at >= self.cfg.full_status_every
            try:
                r = await self._http.post(url, json=self.status() if full else
                                          self.light_status(), headers=self._auth(),
                                          timeout=timeout)
                self.metrics.heartbeats.labels("ok" if r.status_code < 300 else
                                               "refused").inc()
                if r.status_code < 300:
                    self._last_manager_ok = sent_at
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        answer = r.json()
                        self._peers = {str(p["id"]): str(p["url"]) for p in answer["peers"]}
                        # A manager that (re)started knows nothing yet: it asks for it.
                        self._need_full = bool(answer.get("need_full", False))
                        if self.cfg.fencing_timeout > 0 and "lease" in answer:
                            # Never shorter than configured, never past a sane bound.
                            self.lease = min(max(float(answer["lease"]),
                                                 self.cfg.fencing_timeout), _MAX_LEASE_S)
                    if full:
                        self._sent_signature, self._sent_full_at = signature, sent_at
                    if self.fenced_at is not None:
                        log.info("manager reachable again; fenced instances stay stopped "
                                 "until the manager decides")
                        self.fenced_at = None
            except httpx.HTTPError as exc:
                self.metrics.heartbeats.labels("failed").inc()
                log.debug("heartbeat to %s failed: %s", url, exc)
            finally:
                await asyncio.sleep(self.cfg.heartbeat_interval)

    async def _peer_loop(self) -> None:
        """Ping every peer agent each heartbeat interval. The pings are the second path:
        the manager asks peers when they last heard a suspected host, and this agent
        counts a peer's answer as contact, so a host cut off from the manager alone is
        neither declared lost nor fenced, while an isolated host is both."""
        assert self._http is not None
        while True:
            peers = dict(self._peers)
            sent_at = time.monotonic()
            results = await asyncio.gather(*[self._ping_peer(u) for u in peers.values()])
            if any(results):
                self._last_peer_ok = sent_at
            await asyncio.sleep(self.cfg.heartbeat_interval)

    async def _ping_peer(self, url: str) -> bool:
        assert self._http is not None
        try:
            r = await self._http.post(f"{url}/v1/peer-ping", params={"host": self.cfg.host_id},
                                      headers=self._auth(),
                                      timeout=max(self.cfg.heartbeat_interval * 2, 0.1))
        except httpx.HTTPError:
            return False
        return r.status_code < 300

    def peer_heard(self, host_id: str) -> None:
        self.peer_last_heard[host_id] = time.monotonic()

    def peer_silences(self) -> dict[str, float]:
        """Seconds since each peer last pinged this agent."""
        now = time.monotonic()
        return {h: now - t for h, t in self.peer_last_heard.items()}

    async def _fencing_loop(self) -> None:
        """Stop every VNF here once neither the manager nor any peer has answered for the
        fencing timeout. Contact is counted from when a request was *sent*, so this fires
        before the manager's deadline (fencing timeout + margin after the last contact
        anyone *received*): there are never two live copies of one VNF."""
        period = min(self.cfg.fencing_timeout / 10, 0.02)
        while True:
            await asyncio.sleep(period)
            contacts = [t for t in (self._last_manager_ok, self._last_peer_ok) if t is not None]
            if not contacts or self.fenced_at is not None:
                continue
            silent = time.monotonic() - max(contacts)
            if silent > self.lease:
                self.fenced_at = time.time()
                self.metrics.fencings.inc()
                await self.stop_all(f"fenced: neither the manager nor any peer answered for "
                                    f"{silent * 1000:.0f} ms", state=InstanceState.FENCED)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}


_MAX_LEASE_S = 30.0  # a manager granting more is broken; the agent fences by then anyway


def _udp_unread(pid: int) -> int | None:
    """Memory held by unread datagrams in the UDP sockets of the netns of ``pid`` (the
    ``rx_queue`` column, in bytes; 0 when all are read); None if that cannot be read (the
    process is gone)."""
    queued = 0
    try:
        for table in ("udp", "udp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 4:
                    queued += int(fields[4].split(":")[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return queued


def _softnet_backlog() -> int | None:
    """Packets waiting in the kernel's per-CPU receive backlogs, all CPUs together.

    A datagram sent through veth pairs and bridges (the way between hosts here) waits in
    one of these between hops until softirq processing, or a CPU-starved ksoftirqd,
    reaches it. Column 12 of ``/proc/net/softnet_stat`` (Linux >= 5.10) is that length.
    None where the kernel does not print it.
    """
    total = 0
    try:
        for line in Path("/proc/net/softnet_stat").read_text().splitlines():
            fields = line.split()
            if len(fields) < 13:
                return None
            total += int(fields[11], 16)
    except (OSError, ValueError):
        return None
    return total


async def _wait_udp_drained(pid: int, timeout: float = 0.5) -> None:
    """Wait until the VNF has read every datagram already sent to it (bounded).

    The forwarder holds delivery before this is called, but a datagram it sent just
    before may still be on its way, in a per-CPU receive backlog between two hops. So
    the VNF's sockets must be empty *and* no backlog hold a packet, in consecutive reads.

    Arrivals in the netns are deliberately not watched: probes and queries that do not
    pass the forwarder (a monitoring system's 500 Hz health check) arrive all the time,
    and waiting for them to pause refused nearly every checkpoint of such a VNF.
    """
    deadline = time.monotonic() + timeout
    quiet_reads = 0
    while time.monotonic() < deadline:
        queued = _udp_unread(pid)
        backlog = _softnet_backlog()
        quiet = queued == 0 and backlog in (0, None)
        quiet_reads = quiet_reads + 1 if quiet else 0
        if quiet_reads >= 2:
            return
        await asyncio.sleep(0.002)
    # Dumping now would cut the VNF's state short of the log position the forwarder
    # recorded, and replay would then miss what lies between: refuse rather than lose it.
    raise CheckpointError(
        f"the VNF (pid {pid}) still had unread datagrams, or the kernel's receive backlog "
        f"held packets, after {timeout * 1000:.0f} ms of held delivery; checkpoint skipped "
        "so that its cut stays exact (the next one is tried at the next interval)")


def _mem_available() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
