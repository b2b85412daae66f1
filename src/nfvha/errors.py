"""The nfvha exception tree: every failure a caller can act on has one class here.

Third-party and OS errors are converted once, at the boundary that met them, with
``raise ... from``; the message says what was wrong and what to do.

    NfvhaError
    ├── ConfigError                  bad configuration or environment
    ├── DescriptorError              a VNFD that does not validate
    ├── CriuError                    CRIU missing, too old, or failed
    │   ├── DumpError
    │   └── RestoreError
    ├── CheckpointError              store problems
    │   ├── CheckpointNotFound
    │   └── CheckpointCorrupt        checksum or metadata mismatch
    ├── TransferError                pushing a checkpoint to a peer failed
    ├── SandboxError                 netns / veth / cgroup / process set-up failed
    │   ├── AddressInUse
    │   └── HostCannotRun            the descriptor asks what this host cannot give
    ├── InstanceNotFound
    ├── InstanceStateError           operation not valid in the instance's state
    ├── HostNetworkError             `ip` / netlink failures
    ├── StoreError                   (nfvha.store.base) state store backend failures
    │   ├── ConflictError            compare-and-set lost
    │   └── NotFound
    ├── AgentCallError               (nfvha.vnfm.agent_client) an agent call failed
    ├── ForwarderError               (nfvha.dataplane.client) the forwarder is unreachable
    │   └── ReplayGapError           replay refused: the log was trimmed past the position
    └── PlacementError               (nfvha.nfvo.placement) no host can take the VNF
"""

from __future__ import annotations

__all__ = [
    "AddressInUse",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "CriuError",
    "DescriptorError",
    "DumpError",
    "HostCannotRun",
    "HostNetworkError",
    "InstanceNotFound",
    "InstanceStateError",
    "NfvhaError",
    "RestoreError",
    "SandboxError",
    "TransferError",
]


class NfvhaError(Exception):
    """Base of every error nfvha raises on purpose."""


class ConfigError(NfvhaError):
    """The configuration or the machine cannot support the request."""


class DescriptorError(NfvhaError):
    """A VNF descriptor failed validation; the message names the field."""


class CriuError(NfvhaError):
    """CRIU failed; ``log_lines`` holds the relevant lines of its log."""

    def __init__(self, message: str, log_lines: list[str] | None = None,
                 log_path: str | None = None) -> None:
        self.log_lines = list(log_lines or [])
        self.log_path = log_path
        detail = ""
        if self.log_lines:
            detail = "\n  criu: " + "\n  criu: ".join(self.log_lines[-8:])
        super().__init__(message + detail)


class DumpError(CriuError):
    """``criu dump`` failed; the VNF keeps running when it was dumped leave-running."""


class RestoreError(CriuError):
    """``criu restore`` failed; nothing of the restored tree is left running."""


class CheckpointError(NfvhaError):
    """A checkpoint could not be written, read or committed."""


class CheckpointNotFound(CheckpointError):
    """No such checkpoint in the store."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its recorded checksums or sizes."""

    def __init__(self, message: str, checkpoint: str = "", file: str = "") -> None:
        self.checkpoint = checkpoint
        self.file = file
        super().__init__(message)


class TransferError(NfvhaError):
    """A checkpoint push to a peer agent failed; the peer keeps nothing partial."""


class SandboxError(NfvhaError):
    """Building, starting or tearing down a VNF sandbox failed."""


class AddressInUse(SandboxError):
    """The VNF's address (IP or MAC) is already taken by another live instance."""


class HostCannotRun(SandboxError):
    """What the descriptor asks for cannot be had on this host (a volume source it lacks,
    a ``run_as`` CRIU could not checkpoint here): refused before anything runs."""


class AddressConflict(NfvhaError):
    """An address a VNF asks for is held by another VNF or by nfvha itself (cluster-wide
    address management, checked before anything is stored or started)."""


class InstanceNotFound(NfvhaError):
    """No VNF instance with that id on this agent."""


class InstanceStateError(NfvhaError):
    """The operation does not apply to the instance in its current state."""


class HostNetworkError(NfvhaError):
    """A host network operation (netns, veth, bridge, address) failed."""
