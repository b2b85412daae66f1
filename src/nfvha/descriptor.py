"""VNF descriptors (VNFD): what to run, where it attaches, what it may use, how to protect it.

Shaped after ETSI SOL001 where that is natural (``vnfd`` identity, one VDU with its
compute resources, one connection point with its address) but flat and concise. Errors
name the field and say what is expected.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nfvha.errors import DescriptorError

__all__ = [
    "FAILURE_TYPES",
    "STRATEGIES",
    "HaPolicy",
    "HealthProbe",
    "Network",
    "Resources",
    "ServiceAddress",
    "VnfDescriptor",
    "load_descriptor",
    "parse_descriptor",
]

FAILURE_TYPES = ("process-exit", "hang", "host-loss")
STRATEGIES = ("restart", "restore-local", "restore-remote", "standby")
Strategy = Literal["restart", "restore-local", "restore-remote", "standby"]

_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|k|ki|kb|m|mi|mb|g|gi|gb)\s*$", re.IGNORECASE)
_ADDR_HINT = "expected an IPv4 address with prefix like 10.250.1.10/16, got {!r}"
_SIZE_MULT = {"": 1, "k": 1000, "kb": 1000, "ki": 1024, "m": 1000**2, "mb": 1000**2,
              "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gi": 1024**3}


def parse_size(value: int | str) -> int:
    """``256Mi``, ``1G``, ``1048576`` -> bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like 256Mi, 1Gi or a number of bytes, got {value!r}")
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).lower()])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceAddress(_Strict):
    """Where clients reach the VNF through the steering forwarder (needed for replay)."""

    address: str | None = Field(default=None, description="IPv4 address the forwarder owns "
                                "for this VNF (the head of a chain)")
    after: str | None = Field(default=None, description="instance id of the VNF before this "
                              "one in a service function chain: its outputs are our inputs")
    port: int = Field(ge=1, le=65535, description="UDP port, the same on the VNF")
    exactly_once: bool = Field(default=False, description="hold replies until the "
                               "checkpoint covering their inputs commits")

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ip = ipaddress.IPv4Address(v)
        except ValueError as exc:
            raise ValueError(f"expected an IPv4 address like 10.250.2.10, got {v!r}") from exc
        why = unusable_host_address(ip)
        if why is not None:
            raise ValueError(f"{v} cannot be a service address: {why}")
        return str(ip)

    @model_validator(mode="after")
    def _head_or_member(self) -> ServiceAddress:
        if (self.address is None) == (self.after is None):
            raise ValueError("give exactly one of address (the chain head's service address) "
                             "and after (the VNF instance this one follows)")
        return self


def unusable_host_address(ip: ipaddress.IPv4Address) -> str | None:
    """Why ``ip`` can never be one host's unicast address, or None if it can."""
    if ip.is_unspecified:
        return "it is the unspecified address"
    if ip.is_loopback:
        return "it is a loopback address (127.0.0.0/8)"
    if ip.is_multicast:
        return "it is a multicast address (224.0.0.0/4)"
    if ip.is_link_local:
        return "it is a link-local address (169.254.0.0/16)"
    if ip == ipaddress.IPv4Address("255.255.255.255") or ip.is_reserved:
        return "it is in the reserved range 240.0.0.0/4"
    return None


class Network(_Strict):
    """The VNF's one connection point: the same IP and MAC on every host it runs on."""

    address: str = Field(description="IPv4 address with prefix, e.g. 10.250.1.10/16")
    mac: str | None = Field(default=None, description="unicast MAC; derived from the IP if absent")
    gateway: str | None = Field(default=None, description="default route inside the sandbox")
    service: ServiceAddress | None = Field(default=None, description="steered service address")

    @field_validator("address")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            iface = ipaddress.ip_interface(v)
        except ValueError as exc:
            raise ValueError(_ADDR_HINT.format(v)) from exc
        if iface.version != 4 or "/" not in v:
            raise ValueError(_ADDR_HINT.format(v))
        why = unusable_host_address(iface.ip)
        if why is None and iface.network.prefixlen > 30:
            why = "the prefix leaves no room for a gateway and a peer (use /30 or shorter)"
        if why is None and iface.ip == iface.network.network_address:
            why = f"it is the network address of {iface.network}"
        if why is None and iface.ip == iface.network.broadcast_address:
            why = f"it is the broadcast address of {iface.network}"
        if why is not None:
            raise ValueError(f"{v} cannot be a VNF's address: {why}")
        return str(iface)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.lower()
        if not _MAC_RE.match(v) or int(v[:2], 16) & 1:
            raise ValueError(f"expected a unicast MAC like 02:00:0a:fa:01:0a, got {v!r}")
        return v

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
        return v

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def effective_mac(self) -> str:
        """A locally administered MAC derived from the IP, stable across hosts."""
        if self.mac:
            return self.mac
        octets = ipaddress.IPv4Address(self.ip).packed
        return "02:00:" + ":".join(f"{b:02x}" for b in octets)


class Resources(_Strict):
    memory: int = Field(default=256 * 1024**2, description="memory limit, e.g. 256Mi")
    cpu: float = Field(default=1.0, gt=0, le=64, description="CPU limit in cores, e.g. 0.5")
    pids: int = Field(default=1024, ge=8, le=1 << 22, description="processes and threads "
                      "at most (cgroup pids.max): a fork bomb stops there")

    @field_validator("memory", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> int:
        n = parse_size(v)
        if n < 4 * 1024**2:
            raise ValueError(f"memory must be at least 4Mi, got {v!r}")
        return n


class HealthProbe(_Strict):
    type: Literal["udp", "tcp", "http", "exec", "none"] = "none"
    port: int | None = Field(default=None, ge=1, le=65535)
    send: str = "PING"
    expect: str | None = "PONG"
    path: str = "/"
    command: list[str] = Field(default_factory=list)
    interval: float = Field(default=0.2, gt=0, le=60)
    timeout: float = Field(default=0.1, gt=0, le=60)
    failure_threshold: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _needs(self) -> HealthProbe:
        if self.type in ("udp", "tcp", "http") and self.port is None:
            raise ValueError(f"a {self.type} probe needs a port")
        if self.type == "exec" and not self.command:
            raise ValueError("an exec probe needs a command")
        return self


#: Capabilities a VNF keeps unless its VNFD asks for more (``security.capabilities``):
#: what Docker grants by default, less MKNOD, AUDIT_WRITE and SETFCAP. Enough to bind
#: low ports, use raw sockets (ping, ARP), switch users and chroot; nothing that reaches
#: past the sandbox (no SYS_ADMIN, SYS_MODULE, SYS_PTRACE, SYS_RAWIO, SYS_TIME, BPF).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT")

#: Every capability a VNFD may name (Linux 6.x); the rest of the 41 are refused as typos.
CAPABILITIES: dict[str, int] = {n: i for i, n in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE"))}

#: Paths a VNF may not mount over or publish: the sandbox's own skeleton.
_RESERVED_TARGETS = ("/", "/proc", "/sys", "/dev", "/usr", "/etc", "/bin", "/sbin", "/lib",
                     "/lib64", "/tmp", "/run")


class Volume(_Strict):
    """A host directory or file mounted into the VNF's private root. It must exist at the
    same path on every host the VNF may run on, like its command."""

    source: str = Field(description="absolute path on the host")
    target: str | None = Field(default=None, description="path inside the VNF (default: "
                               "the same as source)")
    read_only: bool = True

    @field_validator("source", "target")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/") or "\x00" in v or any(p in ("..", ".") for p in v.split("/")):
            raise ValueError(f"expected an absolute path without '.' or '..', got {v!r}")
        return "/" + "/".join(p for p in v.split("/") if p)

    @property
    def inside(self) -> str:
        return self.target or self.source

    @model_validator(mode="after")
    def _not_reserved(self) -> Volume:
        t = self.inside
        if t in ("/", "/.stdout") or any(t == r or t.startswith(r + "/")
                                         for r in _RESERVED_TARGETS if r != "/"):
            raise ValueError(f"{t} is in the sandbox's own root (/, /usr, /etc, /proc, /sys, "
                             "/dev, /tmp, /run, /bin, /sbin, /lib*) and cannot be a volume's "
                             "target; mount it elsewhere, e.g. under /srv or /opt")
        return self


class Security(_Strict):
    """What the VNF may do beyond its sandbox's defaults (docs/security.md)."""

    capabilities: list[str] = Field(default_factory=list, description="capabilities added "
                                    "to the default set, e.g. [NET_ADMIN] for a firewall")
    drop_capabilities: list[str] = Field(default_factory=list, description="capabilities "
                                         "removed from the default set ('ALL' for every one)")
    run_as: str | None = Field(default=None, description="uid[:gid] to run as (numeric: the "
                               "user need not exist on the host)")
    seccomp: Literal["default", "unconfined"] = Field(
        default="default", description="default: refuse the system calls no network "
        "function needs (mount, module loading, kexec, bpf, ptrace, ...)")
    private_root: bool = Field(default=True, description="false: the host's whole file "
                               "tree is visible (only for trusted VNFs; docs/security.md)")

    @field_validator("capabilities", "drop_capabilities")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        out = []
        for c in v:
            name = c.upper().removeprefix("CAP_")
            if name != "ALL" and name not in CAPABILITIES:
                raise ValueError(f"unknown capability {c!r}; expected names like NET_ADMIN "
                                 "(see capabilities(7))")
            out.append(name)
        return out

    @field_validator("run_as")
    @classmethod
    def _run_as(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"\d{1,10}(:\d{1,10})?", v) \
                or any(int(x) > 0xFFFFFFFE for x in v.split(":")):
            raise ValueError(f"expected a numeric uid or uid:gid, e.g. 65534:65534, got {v!r}")
        return v

    def effective_capabilities(self) -> list[str]:
        """The set the VNF keeps: defaults, plus added, less dropped (added wins)."""
        drop = set(self.drop_capabilities)
        base = [] if "ALL" in drop else [c for c in DEFAULT_CAPABILITIES if c not in drop]
        added = set(CAPABILITIES) if "ALL" in self.capabilities else set(self.capabilities)
        return sorted(set(base) | added, key=CAPABILITIES.__getitem__)

    @model_validator(mode="after")
    def _checkpointable(self) -> Security:
        # Without a private root the VNF's /proc is the host's, not its PID namespace's;
        # CRIU's parasite must then mount one itself, which needs CAP_SYS_ADMIN in the VNF.
        if not self.private_root and "SYS_ADMIN" not in self.effective_capabilities():
            raise ValueError("private_root: false shows the VNF the host's /proc, and CRIU "
                             "can checkpoint such a VNF only with CAP_SYS_ADMIN: add "
                             "capabilities: [SYS_ADMIN] (or ALL), or keep the private root")
        return self


def _default_recovery() -> dict[str, list[Strategy]]:
    return {
        "process-exit": ["restore-local", "restore-remote", "restart"],
        "hang": ["restore-local", "restore-remote", "restart"],
        "host-loss": ["restore-remote", "restart"],
    }


class HaPolicy(_Strict):
    checkpoint_interval: float = Field(default=2.0, gt=0, le=86400,
                                       description="seconds between periodic checkpoints")
    retention: int = Field(default=3, ge=1, le=100, description="checkpoints kept per host")
    backups: int = Field(default=1, ge=0, le=8, description="backup hosts holding replicas")
    recovery: dict[str, list[Strategy]] = Field(default_factory=_default_recovery)
    probe: HealthProbe = Field(default_factory=HealthProbe)
    replay: bool = False

    @field_validator("recovery")
    @classmethod
    def _recovery(cls, v: dict[str, list[Strategy]]) -> dict[str, list[Strategy]]:
        for k, strategies in v.items():
            if k not in FAILURE_TYPES:
                raise ValueError(
                    f"unknown failure type {k!r}; expected one of {', '.join(FAILURE_TYPES)}")
            if not strategies:
                raise ValueError(f"recovery.{k} needs at least one strategy")
        return v


class VnfDescriptor(_Strict):
    """A VNFD. ``id`` names the VNF; instances get ids of their own."""

    id: str = Field(description="lower-case name, 1-32 chars of a-z, 0-9 and '-'")
    name: str | None = None
    version: str = "1.0"
    provider: str = "nfvha"
    command: list[str] = Field(min_length=1, description="program and arguments, as a list")
    workdir: str = "/"
    env: dict[str, str] = Field(default_factory=dict)
    network: Network
    resources: Resources = Field(default_factory=Resources)
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    security: Security = Field(default_factory=Security)
    network_lock: Literal["auto", "nftables", "iptables", "skip"] = Field(
        default="auto", description="auto: lock the network during a dump only when the VNF "
        "has established TCP connections (a lock drops UDP datagrams that would otherwise "
        "just wait in the socket buffer)")
    ha: HaPolicy = Field(default_factory=HaPolicy)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(
                f"expected 1-32 chars of a-z, 0-9 and '-' (not at the ends), got {v!r}")
        return v

    @model_validator(mode="after")
    def _replay_needs_service(self) -> VnfDescriptor:
        if self.ha.replay and self.network.service is None:
            raise ValueError("ha.replay needs network.service (the address the forwarder "
                             "steers to this VNF)")
        return self

    @model_validator(mode="after")
    def _distinct_volumes(self) -> VnfDescriptor:
        if self.security.private_root and self.workdir != "/":
            try:
                Volume(source=self.workdir)  # the same rules as a volume's target
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"workdir: {reason.replace('a volume', 'the workdir')}; or "
                                 "'/' for a private directory at /var/lib/vnf") from None
        seen: set[str] = set()
        for v in self.volumes:
            if v.inside in seen:
                raise ValueError(f"two volumes mount at {v.inside}")
            seen.add(v.inside)
        return self

    @field_validator("command")
    @classmethod
    def _cmd(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("the program name is empty")
        return v


def _format_error(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(descriptor)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against docs/descriptor.md"
        elif e["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"{loc}: {msg}")
    return "invalid VNF descriptor: " + "; ".join(parts)


def parse_descriptor(data: Any) -> VnfDescriptor:
    """Validate a mapping (YAML-loaded or JSON) as a VNFD; accepts an optional ``vnfd:`` root."""
    if isinstance(data, dict) and set(data) == {"vnfd"}:
        data = data["vnfd"]
    if not isinstance(data, dict):
        raise DescriptorError("invalid VNF descriptor: expected a mapping at the top level")
    try:
        return VnfDescriptor.model_validate(data)
    except ValidationError as exc:
        raise DescriptorError(_format_error(exc)) from None


def load_descriptor(path: str | Path) -> VnfDescriptor:
    """Read and validate a VNFD YAML file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise DescriptorError(f"cannot read descriptor {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise DescriptorError(f"descriptor {p} is not valid YAML: {exc}") from exc
    # In a file, a volume's relative source is relative to the file (examples/ ship their
    # programs beside their descriptors); the API takes absolute paths only.
    body = data.get("vnfd", data) if isinstance(data, dict) else None
    vols = body.get("volumes") if isinstance(body, dict) else None
    if isinstance(vols, list):
        for v in vols:
            if isinstance(v, dict) and isinstance(v.get("source"), str) \
                    and not v["source"].startswith("/"):
                v["source"] = str((p.resolve().parent / v["source"]).resolve())
    return parse_descriptor(data)
