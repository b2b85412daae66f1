"""The compute-node agent: VNF instances in sandboxes, checkpoints, transfers, heartbeats.

One ``Agent`` per host. It is the only thing that touches CRIU, namespaces and cgroups
there; the HTTP API (``nfvha.vim.api``) is a thin layer over these coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nfvha.descriptor import VnfDescriptor, parse_descriptor
from nfvha.errors import (
    AddressInUse,
    CheckpointCorrupt,
    CheckpointError,
    ConfigError,
    InstanceNotFound,
    InstanceStateError,
    InstanceStopped,
    NfvhaError,
    SandboxError,
)
from nfvha.follow import LeaderFollower, origin, split_urls
from nfvha.ha.fault import probe_vnf
from nfvha.ha.timings import DEFAULT_TIMINGS
from nfvha.tls import TlsConfig
from nfvha.vim.cgroups import CgroupDriver, join_procs_files
from nfvha.vim.criu import CriuRunner, DumpStats, RestoreStats
from nfvha.vim.guard import AgentSide, GuardSide, LeaseFile
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
from nfvha.vim.sockdiag import udp_meminfo
from nfvha.vim.store import CheckpointMeta, CheckpointStore
from nfvha.vim.transfer import PushResult, push_checkpoint
from nfvha.wire import (
    LIVE_STATES,
    AgentEvent,
    CgroupUsage,
    CheckpointSummary,
    ExitView,
    HeartbeatAck,
    HostResources,
    HostStatusReport,
    InstanceState,
    InstanceView,
    RestoreStatsView,
    RxQueue,
)

__all__ = ["Agent", "AgentConfig", "Instance", "InstanceState"]

log = logging.getLogger(__name__)

_INSTANCE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
#: How long an exit event is retried while no manager takes it: longer than a leader
#: change (an etcd lease of up to a few seconds, then a fresh term).
EVENT_RETRY_S = 15.0


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    state_dir: Path
    bridge: str = "br0"
    token: str = ""
    #: The manager, or every member of a manager cluster: ``URL[,URL...]``, as on the
    #: command line (``manager_urls`` is the list). Reports go to the leader among them.
    manager_url: str | None = None
    advertise_url: str | None = None
    heartbeat_interval: float = DEFAULT_TIMINGS.heartbeat_interval
    #: A full heartbeat (every instance with its cgroup usage, the host's resources) goes
    #: out when something changed and at least this often; the others only say "alive".
    full_status_every: float = 5.0
    fencing_timeout: float = 0.0  # >0: stop own VNFs after losing the manager this long
    #: How long the agent itself may be silent (dead, stopped, restarting) before its lease
    #: guard stops the host's VNFs; a restart within it is a non-event.
    agent_grace: float = 3.0
    #: The managers' UDP liveness addresses, ``ADDRESS:PORT[,ADDRESS:PORT...]`` (default:
    #: the host and port of each manager URL). The guard heartbeats to all of them: only
    #: the leader answers, and which one leads is not the guard's to know.
    manager_liveness: str | None = None
    #: Where this host's lease guard listens for peers (UDP; default: the advertised
    #: address, same port number as the API).
    liveness_listen: str | None = None
    token_file: Path | None = None
    #: This host's liveness keys for its guard (``nfvha pki issue --role agent``); None:
    #: derived from the token.
    liveness_key_file: Path | None = None
    #: Mutual TLS: the API serves it, and every call this agent makes presents it.
    tls: TlsConfig | None = None
    watchdog: Path | None = None  # kernel watchdog the guard feeds (off by default)
    watchdog_timeout: int = 0
    keep_checkpoints: int = 3
    netns_prefix: str | None = None
    cgroup_parent: str | None = None
    log_dir: Path = Path("/var/log/nfvha/vnf")
    work_root: Path = Path("/var/lib/nfvha/vnf")
    criu_binary: str | None = None
    #: Full status reports go out at most this often unless something changed; liveness
    #: is the guard's (UDP), so the agent itself stays quiet.
    status_interval: float = 0.5
    #: A daemon that stops (a restart, an upgrade) leaves its VNFs and guard running; the
    #: next run adopts them. In-process users (tests) stop everything with the agent.
    keep_vnfs_on_exit: bool = False

    def __post_init__(self) -> None:
        if self.manager_url:
            split_urls(self.manager_url)  # a mistyped URL fails here, not at every report

    @property
    def manager_urls(self) -> tuple[str, ...]:
        """The managers' URLs (empty: no manager, a standalone agent)."""
        return split_urls(self.manager_url) if self.manager_url else ()

    @property
    def manager_liveness_addrs(self) -> tuple[str, ...]:
        """Where the guard sends its heartbeats: ``manager_liveness``, or each manager
        URL's host and port (the manager's liveness port defaults to its HTTP port)."""
        if self.manager_liveness:
            return tuple(a.strip() for a in self.manager_liveness.split(",") if a.strip())
        return tuple(f"{host}:{port}" for _, host, port in map(origin, self.manager_urls))

    @property
    def guard_dir(self) -> Path:
        return self.state_dir / "guard"

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
    oom_base: int = 0  # OOM kills counted in its cgroup when it started
    restored_from: str | None = None
    last_checkpoint: CheckpointMeta | None = None
    last_restore: RestoreStats | None = None
    error: str | None = None
    watch: ProcessWatch | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> InstanceView:
        """The instance in API answers and status reports."""
        last = self.last_checkpoint
        return InstanceView(
            id=self.id, vnfd_id=self.descriptor.id, state=self.state, pid=self.pid,
            address=self.descriptor.network.address, mac=self.descriptor.network.effective_mac,
            started_at=self.started_at,
            exit=None if self.exit is None else ExitView(
                code=self.exit.code, signal=self.exit.signal, at=self.exit.at,
                oom=self.exit.oom, reason=self.exit.describe()),
            restored_from=self.restored_from,
            last_checkpoint=None if last is None else CheckpointSummary(
                seq=last.seq, created_at=last.created_at, cut_at=last.cut_at,
                total_bytes=last.total_bytes),
            error=self.error, netns=self.sandbox.netns, log=str(self.sandbox.log_path))

    def restored_view(self) -> InstanceView:
        """The view a restore answers: with CRIU's account of the restore."""
        v = self.view()
        if self.last_restore is not None:
            v.restore_stats = RestoreStatsView.model_validate(self.last_restore.as_dict())
        return v


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
        self._rcvbufs: dict[int, int] = {}  # socket inode -> receive buffer bytes
        self.started_at = time.time()
        self._http: httpx.AsyncClient | None = None
        #: Where reports go: the leader of the managers, followed (``nfvha.follow``).
        self._manager = LeaderFollower(cfg.manager_urls) if cfg.manager_urls else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Queue[AgentEvent] = asyncio.Queue(maxsize=1000)
        self._last_manager_ok: float | None = None  # monotonic time of the last 2xx heartbeat
        self.fenced_at: float | None = None
        self._usage, self._usage_at = 0, -1e9  # cached checkpoint disk use
        self._sent_signature: tuple[Any, ...] | None = None  # of the last full status accepted
        self._need_full = True
        self._asked_seen = 0  # the guard's need_full counter, as last answered
        self.lease_file: LeaseFile | None = None  # shared with this host's lease guard
        self._guard: subprocess.Popen[bytes] | None = None
        self._guard_watch: ProcessWatch | None = None
        self.guard_restarts = 0
        self.metrics = AgentMetrics(self)

    @property
    def last_manager_ok(self) -> float | None:
        """Monotonic send time of the last heartbeat the manager accepted."""
        return self._last_manager_ok

    # -- life of the agent ---------------------------------------------------------------

    async def start(self) -> None:
        """Check CRIU, adopt the VNFs a previous run left, start the guard and reports."""
        if self.cfg.manager_url:
            # First of all: the guard must not fence a restart. `criu check` alone took
            # seconds on a loaded host, past the agent grace (the availability campaign
            # saw every agent restart fence its host's VNFs).
            self.lease_file = LeaseFile(self.cfg.guard_dir / "lease")
            self._feed()
        await self.criu.require_usable()
        become_subreaper()
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        stale = await asyncio.to_thread(self.store.cleanup_pending)
        if stale:
            log.info("removed %d incomplete checkpoint(s) left by a previous run", stale)
        if self.cfg.manager_url:
            self._feed()
        await self._adopt_sandboxes()
        # With TLS: the manager and peers must show the cluster CA's certificates, and
        # this agent shows its own (reports to the manager, checkpoint pushes to peers).
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0),
                                       verify=self.cfg.tls.client_context() if self.cfg.tls
                                       else True)
        if self.cfg.manager_url:
            self._ensure_guard()
            self._spawn(self._lease_loop())
            await self._wait_guard_contact()
            self._spawn(self._heartbeat_loop())
            self._spawn(self._event_loop())

    async def close(self, *, stop_instances: bool = True) -> None:
        """Stop the agent. With ``stop_instances`` (tests, a host taken out of service)
        its VNFs and its guard go too; without (a daemon restart) both keep running, and
        the guard stops the VNFs only if no agent feeds it within the agent grace."""
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if stop_instances:
            for inst in list(self.instances.values()):
                with contextlib.suppress(NfvhaError):
                    await self.delete_instance(inst.id)
            self._stop_guard()
        elif self._guard_watch is not None:
            self._guard_watch.close()
        if self._http is not None:
            await self._http.aclose()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- adoption: a restarted agent takes over what its previous run left ------------------

    def _record_path(self, instance_id: str) -> Path:
        return self.cfg.state_dir / "instances" / f"{instance_id}.json"

    def _save_record(self, inst: Instance) -> None:
        """What a restarted agent needs to adopt the instance: written whenever it starts
        running (its pid and that pid's start time, against pid reuse) or stands by."""
        path = self._record_path(inst.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"id": inst.id, "descriptor": inst.descriptor.model_dump(mode="json"),
                "state": inst.state.value, "pid": inst.pid,
                "pid_start": _proc_start(inst.pid) if inst.pid else None,
                "started_at": inst.started_at, "restored_from": inst.restored_from}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _drop_record(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(instance_id).unlink()

    async def _adopt_sandboxes(self) -> None:
        """Adopt the sandboxes a previous run of this agent left (Kubernetes keeps pods
        across kubelet restarts): a VNF still running in its cgroup is RUNNING again,
        watched through a pidfd; a standby stays STANDBY; one whose process ended
        meanwhile is EXITED (the manager recovers it). A sandbox without a record, or
        whose record cannot be read, is removed."""
        prefix = self.cfg.effective_netns_prefix
        fenced = self._fence_pending()
        for ns in await self.net.list_netns(prefix):
            iid = ns[len(prefix):]
            if iid in self.instances:
                continue
            inst = self._adopt(iid, fenced)
            if inst is not None:
                self.instances[iid] = inst
                log.info("adopted instance %s (%s) left by a previous run: %s%s", iid,
                         inst.descriptor.id, inst.state,
                         f" as pid {inst.pid}" if inst.state == InstanceState.RUNNING else "")
                continue
            log.warning("removing stale sandbox %s of a previous agent run", ns)
            cg = self.cgroups.cgroup(f"{self.cfg.effective_cgroup_parent}/{iid}")
            with contextlib.suppress(NfvhaError):
                await asyncio.to_thread(cg.delete)
            with contextlib.suppress(NfvhaError):
                await self.net.delete_netns(ns)
            self._drop_record(iid)
        # Records whose sandbox is gone (a reboot): nothing to adopt.
        records = self.cfg.state_dir / "instances"
        for path in records.glob("*.json") if records.is_dir() else []:
            if path.stem not in self.instances:
                path.unlink(missing_ok=True)

    def _adopt(self, iid: str, fenced: bool) -> Instance | None:
        try:
            data = json.loads(self._record_path(iid).read_text())
            d = parse_descriptor(data["descriptor"])
        except (OSError, ValueError, KeyError, NfvhaError) as exc:
            log.warning("cannot adopt %s: no readable record (%s)", iid, exc)
            return None
        sandbox = Sandbox(self.sandbox_cfg, iid, d, self.net, self.cgroups, self.criu)
        sandbox.built = True
        inst = Instance(id=iid, descriptor=d, sandbox=sandbox,
                        restored_from=data.get("restored_from"),
                        started_at=data.get("started_at"))
        inst.last_checkpoint = self.store.latest(iid)
        pid = data.get("pid")
        if data.get("state") == InstanceState.STANDBY:
            inst.state = InstanceState.STANDBY
            return inst
        alive = isinstance(pid, int) and _proc_start(pid) == data.get("pid_start") \
            and pid in sandbox.cgroup.pids()
        if alive and not fenced:
            assert isinstance(pid, int)
            inst.pid = pid
            inst.state = InstanceState.RUNNING
            inst.watch = ProcessWatch(pid, lambda st: self._on_exit(inst, st))
            return inst
        inst.pid = pid if isinstance(pid, int) else None
        if fenced:
            inst.state = InstanceState.FENCED
            inst.error = "fenced by the lease guard while the agent was away"
        else:
            inst.state = InstanceState.EXITED
            inst.exit = ExitStatus(code=None, signal=None, at=time.time())
            inst.error = "ended while the agent was away"
        return inst

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
            self._drop_record(inst.id)
            with contextlib.suppress(NfvhaError):
                await inst.sandbox.destroy()
            if isinstance(exc, NfvhaError):
                log.error("instance %s could not start: %s", inst.id, exc)
            raise
        log.info("instance %s (%s) running as pid %s at %s", inst.id, d.id, inst.pid,
                 d.network.address)
        return inst

    def _watch(self, inst: Instance, pid: int) -> None:
        inst.oom_base = inst.sandbox.cgroup.oom_kills()  # a reused sandbox keeps its count
        inst.pid = pid
        inst.started_at = time.time()
        inst.exit = None
        inst.watch = ProcessWatch(pid, lambda st: self._on_exit(inst, st))
        self._save_record(inst)

    def _on_exit(self, inst: Instance, status: ExitStatus) -> None:
        if status.signal == signal.SIGKILL and inst.sandbox.cgroup.oom_kills() > inst.oom_base:
            status = dataclasses.replace(status, oom=True)
        inst.exit = status
        inst.watch = None
        if inst.state in (InstanceState.RUNNING, InstanceState.CHECKPOINTING):
            inst.state = InstanceState.EXITED
        log.warning("instance %s %s", inst.id, status.describe())
        self._emit(AgentEvent(type="instance-exit", host_id=self.cfg.host_id,
                              instance=inst.view()))

    async def stop_instance(self, instance_id: str, grace: float = 2.0) -> Instance:
        inst = self.get(instance_id)
        async with inst.lock:
            if inst.pid is not None and inst.state in LIVE_STATES:
                inst.state = InstanceState.STOPPED
                await inst.sandbox.terminate(inst.pid, grace)
            inst.state = InstanceState.STOPPED
        return inst

    async def delete_instance(self, instance_id: str, *, purge_checkpoints: bool = False) -> None:
        """Remove the instance; with ``purge_checkpoints`` also every checkpoint of it
        here, even where it never ran (a backup's replicas: gigabytes left behind by
        every terminate otherwise)."""
        if purge_checkpoints and instance_id not in self.instances:
            await asyncio.to_thread(self.store.delete, instance_id)
            return
        inst = self.get(instance_id)
        await self._discard(inst)
        if purge_checkpoints:
            await asyncio.to_thread(self.store.delete, instance_id)

    async def _discard(self, inst: Instance) -> None:
        async with inst.lock:
            inst.state = InstanceState.STOPPED
            watch, inst.watch = inst.watch, None
            if watch is not None:
                watch.mute()
            try:
                await inst.sandbox.destroy()
            finally:
                if watch is not None:
                    await watch.reap()
                self.instances.pop(inst.id, None)
                self._drop_record(inst.id)

    async def stop_all(self, reason: str,
                       state: InstanceState = InstanceState.STOPPED) -> list[str]:
        """Kill every VNF here at once (fencing): a second live copy must never exist."""
        stopped = []
        for inst in list(self.instances.values()):
            if inst.state in LIVE_STATES:
                inst.state = state
                inst.error = reason
                with contextlib.suppress(NfvhaError):
                    await (inst.sandbox.fence() if state == InstanceState.FENCED
                           else inst.sandbox.kill())
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
                raise InstanceStopped(
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
                    raise InstanceStopped(
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
                images = self.store.path(instance_id, meta.seq)
                # Established TCP connections in the images: until CRIU has recreated
                # them, a segment from a peer (retransmitting during a move or failover)
                # would meet the address without the socket, and the netns's kernel would
                # answer with a RST that kills the connection being restored.
                tcp = any(images.glob("tcp-stream-*.img"))
                verified, _ = await asyncio.gather(
                    asyncio.to_thread(self.store.verify, instance_id, meta.seq),
                    self._prepare_sandbox(inst, reused=reuse is not None,
                                          standby=was_standby, hold_tcp=tcp))
                meta = verified
                stats = await inst.sandbox.restore(images, release_hold=tcp)
                if tcp:
                    await inst.sandbox.hold_tcp(False)
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
                self._save_record(inst)
        except BaseException as exc:
            self.metrics.restore_duration.labels("failure").observe(time.monotonic() - started)
            self.instances.pop(inst.id, None)
            self._drop_record(inst.id)
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
    async def _prepare_sandbox(inst: Instance, *, reused: bool, standby: bool,
                               hold_tcp: bool) -> None:
        """A sandbox for a restore; with ``hold_tcp`` it drops TCP segments until the
        VNF's connections exist again (``Sandbox.hold_tcp``)."""
        if not reused:
            await inst.sandbox.build()
            if hold_tcp:
                await inst.sandbox.hold_tcp(True)
            return
        if not standby:
            await inst.sandbox.kill()  # whatever is left of the dead copy goes first
        if hold_tcp:
            await inst.sandbox.hold_tcp(True)
        await inst.sandbox.activate()  # a standby's or a fenced copy's link is down

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
        self._save_record(inst)
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
        if sig == signal.SIGSTOP:
            # A dump under way ends first: CRIU seizes the task and resumes it as it found
            # it, so a SIGSTOP sent meanwhile is swallowed and the "hang" never happens
            # (seen in fault campaigns as hangs the manager never had to detect).
            async with inst.lock:
                self._signal(inst, sig)
        else:
            self._signal(inst, sig)
        log.warning("injected %s into instance %s (pid %d)", fault, instance_id, inst.pid)
        return inst

    @staticmethod
    def _signal(inst: Instance, sig: signal.Signals) -> None:
        if inst.pid is None or inst.state not in LIVE_STATES:  # it changed while we waited
            raise InstanceStateError(f"instance {inst.id} is {inst.state}: nothing to "
                                     "inject a fault into")
        try:
            os.kill(inst.pid, sig)
        except ProcessLookupError:
            raise InstanceStateError(f"instance {inst.id} has just exited: nothing to "
                                     "inject a fault into") from None

    async def exec_probe(self, instance_id: str) -> bool:
        """The instance's own ``exec`` health probe, run inside its sandbox: its network,
        PID, UTS, IPC and mount namespaces, its cgroup (so the probe counts against the
        VNF's limits) and its capabilities, user and seccomp filter: a probe is the VNFD's
        code, never run beside the agent or the manager."""
        inst = self.get(instance_id)
        probe = inst.descriptor.ha.probe
        if probe.type != "exec":
            raise InstanceStateError(f"instance {instance_id} has a {probe.type} probe, not an "
                                     "exec one: the manager probes it over the network")
        if inst.pid is None or inst.state not in LIVE_STATES:
            return False
        procs = [str(p) for p in inst.sandbox.cgroup.procs_paths()]
        prefix = inst.sandbox.exec_prefix(inst.pid)
        return await probe_vnf(probe, inst.descriptor.network.ip, exec_prefix=prefix,
                               exec_preexec=lambda: join_procs_files(procs))

    async def rx_queue(self, instance_id: str, port: int, *, below: int | None = None,
                       wait: float = 0.0) -> RxQueue:
        """The receive queue of the VNF's UDP socket on ``port``, read in its netns, for
        the forwarder pacing a replay to it (``nfvha.dataplane.pacing``).

        With ``below``, the answer waits (``wait`` seconds at most) until the queue holds
        at most that many bytes: a long poll, so that while the VNF is slow this agent
        reads its own ``/proc`` every millisecond (some 30 µs each) rather than the
        forwarder asking over the network. The buffer's size is not in ``/proc``: it is
        asked of the kernel once per socket (sock_diag in the VNF's netns, some 0.5 ms;
        forking ``ss`` for it took 15-30 ms on a loaded host, which delayed every
        replay's first reading).
        """
        inst = self.get(instance_id)
        pid = inst.pid
        if pid is None or inst.state not in LIVE_STATES:
            raise InstanceStateError(f"instance {instance_id} is {inst.state}: it has no "
                                     "receive queue to read")
        started = time.monotonic()
        deadline = started + min(max(wait, 0.0), 0.2)
        while True:
            socks = _udp_sockets(pid, port)
            if socks is None:
                raise InstanceStateError(f"instance {instance_id}: its process {pid} is gone")
            queued = max((q for q, _, _ in socks), default=0)
            if below is None or queued <= below or not socks or \
                    time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.001)
        waited = time.monotonic() - started
        capacity = self._rcvbuf(pid, [ino for _, _, ino in socks])
        return RxQueue(port=port, sockets=len(socks), queued=queued,
                       capacity=min(capacity) if capacity else 0,
                       drops=max((d for _, d, _ in socks), default=0),
                       rcvbuf_errors=_rcvbuf_errors(pid), backlog=_softnet_backlog(),
                       waited_ms=waited * 1000)

    def _rcvbuf(self, pid: int, inodes: list[int]) -> list[int]:
        """The receive buffer sizes of these sockets, asked of the kernel of the netns of
        ``pid`` the first time a socket is asked about (cached by inode: a restored VNF's
        socket is a new one)."""
        if any(i not in self._rcvbufs for i in inodes):
            try:
                # Inline (under a millisecond): the default thread pool may be busy with
                # checkpoint transfers, and this reading holds up a replay.
                mem = udp_meminfo(f"/proc/{pid}/ns/net")
            except OSError as exc:
                raise ConfigError(f"cannot read the receive buffer size of the VNF's "
                                  f"sockets (sock_diag in its netns): {exc}") from exc
            if len(self._rcvbufs) > 1024:
                self._rcvbufs.clear()
            self._rcvbufs.update({ino: m.rcvbuf for ino, m in mem.items()})
        return [self._rcvbufs[i] for i in inodes if i in self._rcvbufs]

    async def probe_peer(self, url: str, timeout: float = 0.2) -> bool:
        """The second path to a suspected host: can this host reach its agent?"""
        assert self._http is not None
        try:
            r = await self._http.get(f"{url.rstrip('/')}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    # -- status, heartbeats, events ------------------------------------------------------

    def status(self) -> HostStatusReport:
        """The full status report sent to the manager (and answered on ``/v1/status``)."""
        instances = []
        for inst in self.instances.values():
            v = inst.view()
            if inst.state in LIVE_STATES and inst.sandbox.cgroup.exists():
                with contextlib.suppress(SandboxError, OSError):
                    u = inst.sandbox.cgroup.usage()
                    v.usage = CgroupUsage(memory_bytes=u.memory_bytes,
                                          cpu_seconds=u.cpu_seconds, pids=u.pids)
            instances.append(v)
        load1, _, _ = os.getloadavg()
        return HostStatusReport(
            host_id=self.cfg.host_id, url=self.cfg.advertise_url, started_at=self.started_at,
            time=time.time(), instances=instances,
            lease=self.lease,  # held now: a restarted manager learns it from here
            agent_pid=os.getpid(),  # the guard reports it: a restarted agent is told apart
            resources=HostResources(load1=load1, mem_available_bytes=_mem_available(),
                                    cpus=os.cpu_count() or 1,
                                    checkpoint_bytes=self._checkpoint_bytes()))

    def _signature(self) -> tuple[Any, ...]:
        """What the manager acts on in a full status, cheaply: when this changes, the next
        heartbeat is full at once rather than within ``full_status_every``."""
        return tuple((i, inst.state, inst.pid,
                      inst.last_checkpoint.seq if inst.last_checkpoint else None)
                     for i, inst in self.instances.items())

    def _checkpoint_bytes(self) -> int:
        """Disk used by checkpoints; walking the store is too slow for every heartbeat
        (20 a second), so the figure is at most two seconds old."""
        now = time.monotonic()
        if now - self._usage_at > 2.0:
            self._usage = self.store.usage_bytes()
            self._usage_at = now
        return self._usage

    def _emit(self, event: AgentEvent) -> None:
        if event.at is None:
            event.at = time.time()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def _event_loop(self) -> None:
        """Report exits to the manager at once. An event is retried until a manager takes
        it, for as long as a leader change can take (``EVENT_RETRY_S``), and dropped early
        once it is stale (the instance runs again or is gone): a status report carries
        the same state, but only as often as reports go, and an exit lost in a leader
        change was found seconds later than one delivered."""
        assert self._http is not None and self._manager is not None
        while True:
            event = await self._events.get()
            give_up = time.monotonic() + EVENT_RETRY_S
            for attempt in itertools.count():
                try:
                    # Idempotent: an exit reported twice is one exit to the manager.
                    r = await self._manager.send(self._http, "POST", "/nfvha/v1/events",
                                                 json=event.as_dict(), headers=self._auth(),
                                                 idempotent=True)
                    if r.status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > give_up or self._event_stale(event):
                    break
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.25))

    def _event_stale(self, event: AgentEvent) -> bool:
        """An exit event about a process this host no longer reports as exited."""
        inst = self.instances.get(event.instance.id)
        return inst is None or inst.state != InstanceState.EXITED \
            or inst.started_at != event.instance.started_at

    async def _heartbeat_loop(self) -> None:
        """Full status reports to the manager over HTTP: when something changed, when a
        (re)started manager asks (through the guard, or in an answer), and at least every
        ``full_status_every``. Liveness is the guard's (UDP), so nothing else is sent.
        Each report goes to the leader (``nfvha.follow``): a report is a state, not an
        action, so one that may have reached a manager that then failed is sent again to
        the next."""
        assert self._http is not None and self._manager is not None
        path = f"/nfvha/v1/hosts/{self.cfg.host_id}/heartbeat"
        timeout = max(self.cfg.status_interval * 2, 0.5)
        while True:
            sent_at = time.monotonic()
            signature = self._signature()
            asked = self.lease_file.guard().need_full if self.lease_file is not None else 0
            try:
                r = await self._manager.send(self._http, "POST", path,
                                             json=self.status().as_dict(),
                                             headers=self._auth(), timeout=timeout,
                                             idempotent=True)
                self.metrics.heartbeats.labels("ok" if r.status_code < 300 else
                                               "refused").inc()
                if r.status_code < 300:
                    self._last_manager_ok = sent_at
                    self._sent_signature = signature
                    self._asked_seen = asked
                    with contextlib.suppress(ValueError):  # ValidationError is one
                        self._need_full = HeartbeatAck.model_validate_json(r.content).need_full
            except httpx.HTTPError as exc:
                self.metrics.heartbeats.labels("failed").inc()
                log.debug("status report to the managers (%s first) failed: %s",
                          self._manager.leader, exc)
            finally:
                await self._until_report_due(sent_at)

    async def _until_report_due(self, last: float) -> None:
        """Wait until a report is due: a change (an exit, a restore) goes out within
        ``status_interval``, a failed report is retried then, the rest every
        ``full_status_every``."""
        period = self.cfg.status_interval
        await asyncio.sleep(period)
        while time.monotonic() - last < self.cfg.full_status_every:
            if self._need_full or self._sent_signature is None \
                    or self._signature() != self._sent_signature:
                return
            if self.lease_file is not None and \
                    self.lease_file.guard().need_full != self._asked_seen:
                return
            await asyncio.sleep(period)

    # -- the lease guard -----------------------------------------------------------------

    @property
    def lease(self) -> float:
        """The host lease the guard holds now (the manager's last grant)."""
        if self.lease_file is None:
            return self.cfg.fencing_timeout
        return self.lease_file.guard().lease or self.cfg.fencing_timeout

    def _feed(self) -> None:
        """Tell the guard this agent is alive for another ``agent_grace``. Called from the
        event loop only, so a blocked loop stops feeding it too."""
        if self.lease_file is None:
            return
        a = self.lease_file.agent()
        until = time.monotonic() + self.cfg.agent_grace if self.cfg.agent_grace > 0 else 0.0
        self.lease_file.write_agent(AgentSide(until, a.ack_seq, os.getpid()))

    def _fence_pending(self) -> bool:
        """The guard fenced and this agent has not yet seen it through."""
        if self.lease_file is None:
            return False
        return self.lease_file.guard().fence_seq > self.lease_file.agent().ack_seq

    def _guard_args(self) -> list[str]:
        cfg = self.cfg
        managers = ",".join(cfg.manager_liveness_addrs)
        listen = cfg.liveness_listen or httpx.URL(cfg.advertise_url or "http://0.0.0.0:8700"
                                                  ).netloc.decode()
        if cfg.liveness_key_file is not None:
            keys = ["--key-file", str(cfg.liveness_key_file)]
        else:
            token_file = cfg.token_file
            if token_file is None:
                token_file = cfg.guard_dir / "token"
                token_file.touch(mode=0o600, exist_ok=True)
                token_file.write_text(cfg.token)
            keys = ["--token-file", str(token_file)]
        args = [sys.executable, "-m", "nfvha.vim.guard", "--host-id", cfg.host_id,
                "--lease-file", str(cfg.guard_dir / "lease"),
                "--cgroup-parent", cfg.effective_cgroup_parent, "--listen", listen,
                "--manager", managers, *keys,
                "--heartbeat-interval", str(cfg.heartbeat_interval),
                "--fencing-timeout", str(cfg.fencing_timeout),
                "--agent-grace", str(cfg.agent_grace), "--bridge", cfg.bridge]
        if cfg.watchdog is not None:
            args += ["--watchdog", str(cfg.watchdog),
                     "--watchdog-timeout", str(cfg.watchdog_timeout)]
        return args

    def _ensure_guard(self) -> None:
        """Adopt the guard a previous run started (it outlives the agent by design), or
        start one; watch it, and start another when it dies."""
        assert self.lease_file is not None
        pid = self.lease_file.guard().pid
        if pid and _guard_running(self.cfg.guard_dir / "lease.lock"):
            try:
                self._guard_watch = ProcessWatch(pid, self._on_guard_exit)
                log.info("adopted the running lease guard (pid %d)", pid)
                return
            except SandboxError:
                pass  # it ended just now
        logf = open(self.cfg.guard_dir / "guard.log", "ab")  # noqa: SIM115
        with logf:
            # Its own session: a signal to the agent's process group must not reach it.
            self._guard = subprocess.Popen(self._guard_args(), stdin=subprocess.DEVNULL,
                                           stdout=logf, stderr=logf, start_new_session=True)
        self._guard_watch = ProcessWatch(self._guard.pid, self._on_guard_exit)
        log.info("lease guard started (pid %d)", self._guard.pid)

    async def _wait_guard_contact(self, timeout: float = 5.0) -> None:
        """Report to the manager only once the guard's heartbeats reach it: a host whose
        report registers it but whose liveness has not begun would be suspected."""
        assert self.lease_file is not None
        deadline = time.monotonic() + timeout
        while self.lease_file.guard().host_until <= 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _on_guard_exit(self, status: ExitStatus) -> None:
        self._guard_watch = None
        self.guard_restarts += 1
        log.error("lease guard %s; starting another (the agent enforces the host lease "
                  "meanwhile)", status.describe())
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, self._restart_guard)

    def _restart_guard(self) -> None:
        if self.lease_file is None or self._guard_watch is not None:
            return
        try:
            self._ensure_guard()
        except (OSError, SandboxError) as exc:
            log.error("cannot restart the lease guard: %s; retrying", exc)
            asyncio.get_running_loop().call_later(0.5, self._restart_guard)

    def _stop_guard(self) -> None:
        if self._guard_watch is not None:
            self._guard_watch.close()
            self._guard_watch = None
        if self._guard is not None and self._guard.poll() is None:
            self._guard.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._guard.wait(2)
        if self.lease_file is not None:
            self.lease_file.write_agent(AgentSide(0.0, self.lease_file.agent().ack_seq, 0))

    async def _lease_loop(self) -> None:
        """Feed the guard; see its fences through; and enforce the host lease here too,
        for when the guard itself is dead or stopped (no single process death may leave
        a VNF running past its lease)."""
        assert self.lease_file is not None
        feed_every = max(0.05, min(self.cfg.agent_grace / 10, 0.25))
        while True:
            # Fed at every wake: the wake-ups (what idling costs) are one per lease check.
            self._feed()
            now = time.monotonic()
            g = self.lease_file.guard()
            if g.fence_seq > self.lease_file.agent().ack_seq:
                await self._see_fence_through(g)
            expired = self.cfg.fencing_timeout > 0 and g.host_until > 0 and now > g.host_until
            if expired and self.fenced_at is None:
                # The guard fences at the same moment; if it is dead or stopped, this is
                # the only thing that does.
                self.fenced_at = time.time()
                self.metrics.fencings.inc()
                await self.stop_all(f"fenced: host lease ran out {(now - g.host_until) * 1000:.0f}"
                                    " ms ago (neither the manager nor any peer answered)",
                                    state=InstanceState.FENCED)
            elif not expired and self.fenced_at is not None and not g.fenced:
                log.info("host lease held again; fenced instances stay stopped until the "
                         "manager decides")
                self.fenced_at = None
            wake = now + feed_every
            if g.host_until > now:
                wake = min(wake, g.host_until + 0.002)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _see_fence_through(self, g: GuardSide) -> None:
        """The guard fenced: mark every instance FENCED (waiting for operations under way,
        such as a restore, to end, their result killed too), then acknowledge, which ends
        the guard's sweeping of the VNF cgroups."""
        assert self.lease_file is not None
        self.fenced_at = self.fenced_at or g.fenced_at or time.time()
        self.metrics.fencings.inc()
        for inst in list(self.instances.values()):
            async with inst.lock:
                if inst.state in LIVE_STATES or inst.state == InstanceState.EXITED:
                    inst.state = InstanceState.FENCED
                    inst.error = "fenced by the host's lease guard"
                    with contextlib.suppress(NfvhaError):
                        await inst.sandbox.fence()
        a = self.lease_file.agent()
        self.lease_file.write_agent(AgentSide(a.agent_until, g.fence_seq, os.getpid()))
        log.warning("fence %d by the lease guard seen through: every VNF here is FENCED",
                    g.fence_seq)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (pid reuse gives another)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _guard_running(lock: Path) -> bool:
    """A guard holds its lock file for as long as it lives."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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


def _udp_sockets(pid: int, port: int) -> list[tuple[int, int, int]] | None:
    """The UDP sockets bound to ``port`` in the netns of ``pid``: (bytes queued, datagrams
    dropped, inode) each, from ``/proc/<pid>/net/udp{,6}``; None if the process is gone."""
    found = []
    try:
        for table in ("udp", "udp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 12 and int(f[1].rpartition(":")[2], 16) == port:
                    found.append((int(f[4].split(":")[1], 16), int(f[12]), int(f[9])))
    except FileNotFoundError:
        if table == "udp6":  # no IPv6 in that kernel
            return found
        return None
    except (OSError, ValueError, IndexError):
        return None
    return found


def _rcvbuf_errors(pid: int) -> int | None:
    """The netns's ``RcvbufErrors`` of UDP and UDP6: datagrams dropped by a full receive
    buffer, whichever socket's; None if it cannot be read."""
    total = 0
    try:
        lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
        udp = [ln.split() for ln in lines if ln.startswith("Udp:")]
        if len(udp) >= 2:
            total += int(udp[1][udp[0].index("RcvbufErrors")])
        with contextlib.suppress(FileNotFoundError):
            for ln in Path(f"/proc/{pid}/net/snmp6").read_text().splitlines():
                if ln.startswith("Udp6RcvbufErrors"):
                    total += int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return total


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
