"""The JSON the daemons exchange, as pydantic models both sides import: the agent's API
and its reports to the manager, checkpoint metadata, and the forwarder's control API.

A route declares its request and answer with these (a malformed body is a 422 problem
naming the field, never a 500), and a client parses every answer into them, so neither
side compares strings or digs in dicts. Field names are the JSON's, as they always were.
Models the manager receives from agents (reports, events) keep fields they do not name
(``extra="allow"``): an agent newer than its manager loses nothing on the way.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from nfvha.web import http_url

__all__ = [
    "HOST_ID",
    "LIVE_STATES",
    "META_FILE",
    "AgentEvent",
    "AgentHealth",
    "CgroupUsage",
    "CheckpointMeta",
    "CheckpointPushed",
    "CheckpointRequest",
    "CheckpointSummary",
    "CommitResult",
    "CreateInstanceRequest",
    "ExecProbeResult",
    "ExitView",
    "Fault",
    "FenceResult",
    "FileEntry",
    "ForwarderAnswer",
    "ForwarderBeat",
    "HeartbeatAck",
    "HoldResult",
    "HostResources",
    "HostStatusReport",
    "HttpUrl",
    "InjectRequest",
    "InstanceState",
    "InstanceView",
    "PeerProbeResult",
    "PositionRequest",
    "PushRequest",
    "ReleaseResult",
    "ReplayPace",
    "ReplayPacing",
    "ReplayRequest",
    "ReplayResult",
    "RestoreRequest",
    "RestoreStatsView",
    "RxQueue",
    "ServiceRequest",
    "ServiceStatus",
    "TakeoverRequest",
    "validate_instance_id",
]

#: Host ids name network namespaces and cgroups (``nfvha-<host>-…``): short, no spaces.
HOST_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

HttpUrl = Annotated[str, Field(max_length=2048), AfterValidator(http_url)]


def _ipv4(v: str) -> str:
    """Parsed when the body arrives: later (binding, sending) a bad one was a 500."""
    try:
        return str(ipaddress.IPv4Address(v))
    except ValueError as exc:
        raise ValueError(f"is not an IPv4 address: {exc}") from None


IPv4 = Annotated[str, AfterValidator(_ipv4)]


# -- instances ------------------------------------------------------------------------------


class InstanceState(enum.StrEnum):
    """Where a VNF instance is on its agent (the agent's own view, not the manager's)."""

    CREATING = "CREATING"
    RUNNING = "RUNNING"
    CHECKPOINTING = "CHECKPOINTING"
    RESTORING = "RESTORING"
    EXITED = "EXITED"  # the VNF ended on its own (crash, kill): recoverable
    STOPPED = "STOPPED"  # stopped on purpose (API)
    FENCED = "FENCED"  # stopped by the agent itself after losing the manager
    STANDBY = "STANDBY"  # sandbox built, link down, waiting for a restore
    FAILED = "FAILED"  # could not be started or restored


#: States in which the instance's process is (or is about to be) alive.
LIVE_STATES = frozenset({InstanceState.CREATING, InstanceState.RUNNING,
                         InstanceState.CHECKPOINTING, InstanceState.RESTORING})


class Fault(enum.StrEnum):
    """A fault the agent injects on request (tests, demos)."""

    KILL = "kill"
    HANG = "hang"


class ExitView(BaseModel):
    """How an instance's process ended (the agent's ``ExitStatus``)."""

    model_config = ConfigDict(extra="allow")
    code: int | None = None
    signal: int | None = None
    at: float | None = None
    oom: bool = False
    reason: str | None = Field(default=None, max_length=1024)


class CheckpointSummary(BaseModel):
    """An instance's last checkpoint, as its view shows it."""

    model_config = ConfigDict(extra="allow")
    seq: int = Field(ge=1)
    created_at: float
    cut_at: float | None = None
    total_bytes: int = Field(ge=0)


class CgroupUsage(BaseModel):
    """What a live instance's cgroup uses (full status reports only)."""

    model_config = ConfigDict(extra="allow")
    memory_bytes: int | None = Field(default=None, ge=0)
    cpu_seconds: float | None = Field(default=None, ge=0)
    pids: int | None = Field(default=None, ge=0)


class RestoreStatsView(BaseModel):
    """CRIU's account of a restore plus the wall time (the agent's ``RestoreStats``)."""

    model_config = ConfigDict(extra="allow")
    pid: int
    restore_time_us: int = 0
    forking_time_us: int = 0
    pages_restored: int = 0
    pages_compared: int = 0
    pages_skipped_cow: int = 0
    wall_seconds: float = 0.0


class InstanceView(BaseModel):
    """One instance on an agent: its API answers (create, read, stop, restore, standby,
    inject) and each entry of its status reports. Only ``id`` and ``state`` are always
    there; ``usage`` comes in status reports, ``restore_stats`` in a restore's answer.
    Sent with ``exclude_unset``: a field the agent did not set is not sent."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=64)
    state: InstanceState
    pid: int | None = Field(default=None, ge=1)
    vnfd_id: str | None = None
    address: str | None = None
    mac: str | None = None
    started_at: float | None = None
    exit: ExitView | None = None
    restored_from: str | None = None
    last_checkpoint: CheckpointSummary | None = None
    error: str | None = None
    netns: str | None = None
    log: str | None = None
    usage: CgroupUsage | None = None
    restore_stats: RestoreStatsView | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class CreateInstanceRequest(BaseModel):
    descriptor: dict[str, Any] = Field(description="the VNFD, as JSON")
    instance_id: str | None = None


class InjectRequest(BaseModel):
    fault: Fault


class ExecProbeResult(BaseModel):
    ok: bool


class PeerProbeResult(BaseModel):
    url: str
    reachable: bool


class FenceResult(BaseModel):
    """The instances an agent stopped when told to fence itself."""

    stopped: list[str]


class AgentHealth(BaseModel):
    ok: bool
    host_id: str


# -- checkpoints ----------------------------------------------------------------------------

#: The metadata file of a checkpoint directory; no checkpoint file may have its name.
META_FILE = "meta.json"

_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_instance_id(instance_id: str) -> str:
    """Return ``instance_id`` if it is safe as one path component, else raise ValueError."""
    if not _INSTANCE_ID_RE.fullmatch(instance_id):
        raise ValueError(
            f"invalid instance id {instance_id!r}: use 1-64 characters of letters, digits,"
            " '_', '.', '-', starting with a letter or digit"
        )
    return instance_id


def _validate_file_name(name: str) -> str:
    # Names come from peers too: they must stay inside the checkpoint directory.
    parts = name.split("/")
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"unsafe file name {name!r} in checkpoint metadata")
    if name == META_FILE:
        raise ValueError(f"{META_FILE} is reserved and cannot be listed as a checkpoint file")
    return name


class FileEntry(BaseModel):
    """Size and sha256 (hex) of one checkpoint file."""

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CheckpointMeta(BaseModel):
    """One committed checkpoint: what its ``meta.json`` records, what a dump (``POST
    .../checkpoints``), a list of checkpoints and a received push answer."""

    instance_id: str
    vnf_name: str
    seq: int = Field(ge=1)
    created_at: float
    #: Wall time just before CRIU froze the VNF: everything it had processed by then is
    #: in the images. ``created_at`` (the commit) can be much later, after the dump and
    #: hashing, so it is no bound on what the state holds. None for older checkpoints.
    cut_at: float | None = None
    host_id: str
    files: dict[str, FileEntry]
    total_bytes: int = Field(ge=0)
    criu_stats: dict[str, Any] = Field(default_factory=dict)
    descriptor: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("instance_id")
    @classmethod
    def _check_instance_id(cls, value: str) -> str:
        return validate_instance_id(value)

    @field_validator("files")
    @classmethod
    def _check_file_names(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in value:
            _validate_file_name(name)
        return value

    @model_validator(mode="after")
    def _check_total(self) -> CheckpointMeta:
        listed = sum(entry.size for entry in self.files.values())
        if listed != self.total_bytes:
            raise ValueError(
                f"total_bytes is {self.total_bytes} but the listed files add up to {listed}"
            )
        return self

    @property
    def name(self) -> str:
        """``<instance_id>/<seq:06d>``: how messages and logs name this checkpoint."""
        return f"{self.instance_id}/{self.seq:06d}"


class CheckpointRequest(BaseModel):
    drain: bool = Field(default=False, description="wait until the VNF read every datagram")
    extra: dict[str, Any] = Field(default_factory=dict, description="stored in the metadata")


PeerUrl = Annotated[str, Field(max_length=2048), AfterValidator(http_url)]


class PushRequest(BaseModel):
    peer_url: PeerUrl = Field(description="base URL of the peer agent, e.g. "
                              "http://10.250.0.12:8700")


class CheckpointPushed(BaseModel):
    """A checkpoint copied to a peer agent."""

    instance_id: str
    seq: int
    bytes: int = Field(ge=0)
    seconds: float
    peer: str


class RestoreRequest(BaseModel):
    seq: int | None = Field(default=None, description="checkpoint sequence; latest if absent")


class RxQueue(BaseModel):
    """The receive queue of a VNF's UDP socket on ``port``, as the kernel of its netns
    holds it: what the forwarder paces a replay by (``nfvha.dataplane.pacing``).

    Bytes are the kernel's memory charge (each datagram's buffer, ``skb->truesize``,
    several hundred bytes even for an empty one), which is what ``capacity`` limits.
    With several sockets on the port (``SO_REUSEPORT``) the fullest queue and the smallest
    buffer are given: a flow lands on one of them, and either may be its.
    """

    port: int = Field(ge=1, le=65535)
    sockets: int = Field(ge=0, description="UDP sockets bound to the port (0: none)")
    queued: int = Field(ge=0, description="bytes held by unread datagrams (rx_queue)")
    capacity: int = Field(ge=0, description="the socket's receive buffer (SO_RCVBUF), bytes")
    drops: int = Field(ge=0, description="datagrams the socket dropped since it was made")
    rcvbuf_errors: int | None = Field(
        default=None, ge=0, description="the netns's RcvbufErrors (UDP and UDP6): datagrams "
        "dropped by full receive buffers of any socket there")
    backlog: int | None = Field(
        default=None, ge=0, description="packets in the kernel's per-CPU receive backlogs, "
        "on their way to some socket (None where the kernel does not say)")
    waited_ms: float = Field(default=0.0, ge=0,
                             description="how long the agent waited for the queue to fall")


# -- reports to the manager -----------------------------------------------------------------


class HostResources(BaseModel):
    model_config = ConfigDict(extra="allow")
    load1: float | None = None
    mem_available_bytes: int = Field(default=0, ge=0)
    cpus: int | None = Field(default=None, ge=1)
    checkpoint_bytes: int | None = Field(default=None, ge=0)


class HostStatusReport(BaseModel):
    """An agent's status report (``Agent.status()``, POSTed to the manager's
    ``/nfvha/v1/hosts/{host}/heartbeat``); ``full: false`` says only "alive, nothing
    changed since the last full one"."""

    model_config = ConfigDict(extra="allow")
    host_id: str | None = Field(default=None, pattern=HOST_ID)
    url: HttpUrl | None = None
    started_at: float | None = None
    time: float | None = None
    full: bool = True
    lease: float | None = Field(default=None, ge=0)
    agent_pid: int | None = Field(default=None, ge=1)
    instances: list[InstanceView] = Field(default_factory=list, max_length=10_000)
    resources: HostResources = Field(default_factory=HostResources)

    def as_dict(self) -> dict[str, Any]:
        """The report as the manager keeps it: only what was sent, extra fields too."""
        return self.model_dump(mode="json", exclude_unset=True)


class HeartbeatAck(BaseModel):
    """The manager's answer to a status report: ``need_full`` asks for a full one now;
    ``lease`` is how long the host may keep running its VNFs unheard."""

    model_config = ConfigDict(extra="allow")
    peers: list[Any] = Field(default_factory=list)
    need_full: bool = False
    lease: float | None = None


class ForwarderBeat(BaseModel):
    """A forwarder pair member's beat to the managers (``nfvha.dataplane.pair``)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["active", "standby", "demoted"]
    term: int = Field(ge=0)
    #: A standby's: it follows the active's mirror stream, snapshot received.
    in_sync: bool | None = None
    #: The active's: its standby follows its stream.
    standby_in_sync: bool | None = None
    #: The lease the active asks for (the manager answers at most its own bound).
    lease_s: float = Field(default=0.0, ge=0.0, le=60.0)


class TakeoverRequest(BaseModel):
    """A standby asks for the active's place: ``term`` is the last term it knows."""

    model_config = ConfigDict(extra="forbid")
    term: int = Field(ge=0)
    reason: str = Field(default="", max_length=500)


class ForwarderAnswer(BaseModel):
    """The leader's answer to a beat or a granted takeover: the active, its term, and,
    to the active's beat, its lease (0: none)."""

    active: str | None
    term: int
    lease_s: float = 0.0
    #: How long ago the active last beat, as the leader saw it (None: never, this term).
    active_beat_age_s: float | None = None


class AgentEvent(BaseModel):
    """Something that happened on a host, reported at once (``instance-exit``)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["instance-exit"]
    host_id: str = Field(pattern=HOST_ID)
    instance: InstanceView
    at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# -- the forwarder --------------------------------------------------------------------------


class ServiceRequest(BaseModel):
    """A service the forwarder steers: a chain head (``listen_ip``) or the member after
    another service (``after``), never both."""

    name: str
    listen_ip: IPv4 | None = Field(default=None, description="chain head: service address")
    after: str | None = Field(default=None, description="chain member: previous service")
    port: int = Field(ge=1, le=65535)
    target_ip: IPv4
    exactly_once: bool = False
    max_log_bytes: int = Field(default=64 * 2**20, ge=4096)
    max_log_age: float = Field(default=60.0, gt=0)


class PositionRequest(BaseModel):
    position: int = Field(ge=0)


class ReplayPace(BaseModel):
    """Where the forwarder reads the restored VNF's receive queue while it replays: the
    agent of the host the VNF now runs on (``GET /v1/instances/{id}/rx-queue``)."""

    agent_url: PeerUrl = Field(description="base URL of that host's agent")
    instance_id: str = Field(pattern=_INSTANCE_ID_RE.pattern)


class ReplayRequest(PositionRequest):
    """Replay from ``position``; paced by the VNF's receive queue when ``pace`` says where
    to read it, else at a fixed rate."""

    pace: ReplayPace | None = None


class ReplayPacing(BaseModel):
    """How a replay was paced, and whether the VNF's socket dropped any of it."""

    paced_by: Literal["queue", "rate"] = Field(
        description="queue: by the VNF's receive queue; rate: at a fixed rate (``reason``)")
    reason: str | None = Field(default=None, description="why not by the queue")
    reads: int = Field(default=0, ge=0, description="readings of the queue")
    capacity: int | None = Field(default=None, ge=0,
                                 description="the VNF socket's receive buffer, bytes")
    peak_queued: int = Field(default=0, ge=0, description="the fullest queue read, bytes")
    fill: float = Field(default=0.0, ge=0, le=1,
                        description="share of the buffer the replay allowed itself at the "
                        "end (halved at each drop seen)")
    stalled_ms: float = Field(default=0.0, ge=0,
                              description="time spent waiting for the VNF to make room")
    first_reading_ms: float | None = Field(
        default=None, ge=0, description="from the start to the first reading's answer "
        "(nothing is sent before it): what of the stall was the start")
    rtt_ms: float | None = Field(default=None, ge=0,
                                 description="a reading's round trip, less the agent's wait")
    forced: int = Field(default=0, ge=0,
                        description="datagrams sent at the floor rate without room: the "
                        "VNF did not drain in time (they may have been dropped)")
    drops: int | None = Field(default=None, ge=0,
                              description="datagrams the VNF's socket dropped meanwhile")
    rcvbuf_errors: int | None = Field(default=None, ge=0,
                                      description="growth of the netns's RcvbufErrors")


class ServiceStatus(BaseModel):
    """A service's state in the forwarder: its log (position, what is committed), whether
    delivery is held, and counters (``stats``)."""

    model_config = ConfigDict(extra="allow")
    name: str
    listen: tuple[str, int] | None = None
    after: str | None = None
    target: tuple[str, int]
    exactly_once: bool = False
    position: int = Field(ge=0)
    committed: int = Field(ge=0)
    held: bool
    log_packets: int = Field(ge=0)
    log_bytes: int = Field(ge=0)
    log_age_s: float = Field(ge=0)
    log_fill: float = Field(ge=0)
    # What the log takes in the forwarder's memory: payloads, its index, allocation slack.
    log_memory: int = Field(default=0, ge=0)
    queued: int = Field(default=0, ge=0)
    flows: int = Field(default=0, ge=0)
    pending_replies: int = Field(default=0, ge=0)
    stats: dict[str, int | float] = Field(default_factory=dict)


class HoldResult(BaseModel):
    """Delivery is held from ``position`` on (the log position a checkpoint records)."""

    position: int = Field(ge=0)


class ReleaseResult(BaseModel):
    held_ms: float = Field(ge=0)


class CommitResult(BaseModel):
    trimmed: int = Field(ge=0)


class ReplayResult(BaseModel):
    """A replay done: ``replayed`` datagrams resent, then delivery released."""

    replayed: int = Field(ge=0)
    replay_ms: float = Field(ge=0)
    held_ms: float = Field(ge=0)
    pacing: ReplayPacing | None = None
    #: The replay started before the position at which this forwarder took over from
    #: its pair's old active: what that one delivered last, unmirrored, may be missing.
    across_takeover: int | None = None
