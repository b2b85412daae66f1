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
    │   └── InstanceStopped          its process is stopped (SIGSTOP, traced): a hang
    ├── HostNetworkError             `ip` / netlink failures
    ├── StoreError                   (nfvha.store.base) state store backend failures
    │   ├── ConflictError            compare-and-set lost
    │   ├── NotFound
    │   └── LeadershipLost           a write made under a leader key no longer held
    ├── AgentCallError               (nfvha.vnfm.agent_client) an agent's answer of no
    │   │                            known problem type (an agent's problems are raised as
    │   │                            their own classes: CheckpointCorrupt, InstanceStopped…)
    │   └── AgentUnreachable         no answer at all
    ├── ForwarderError               (nfvha.dataplane.client) the forwarder is unreachable
    │   └── ReplayGapError           replay refused: the log was trimmed past the position
    ├── PlacementError               (nfvha.nfvo.placement) no host can take the VNF
    └── ApiError                     a problem answer with no class of its own (clients)
        ├── InvalidRequest           a body or parameter that does not validate
        ├── Unauthorized             no or wrong credential
        ├── Forbidden                a known caller this call is not for
        ├── BodyTooLarge
        ├── ResourceNotFound         no such path (not an instance: see InstanceNotFound)
        └── MethodNotAllowed

Every class has a stable ``problem_type``, the ``type`` URI of the RFC 9457 problem
details a daemon answers when it meets the error (``urn:nfvha:problem:<code>``, listed
in docs/api.md); a client maps the ``type`` back to the class (``error_for_problem``).
A class that declares ``problem_type`` registers it, and two classes cannot declare the
same one; a class that does not (a test's, say) answers with its parent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

__all__ = [
    "PROBLEM_PREFIX",
    "AddressConflict",
    "AddressInUse",
    "ApiError",
    "BodyTooLarge",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "ConfigError",
    "CriuError",
    "DescriptorError",
    "DumpError",
    "Forbidden",
    "HostCannotRun",
    "HostNetworkError",
    "InstanceNotFound",
    "InstanceStateError",
    "InstanceStopped",
    "InvalidRequest",
    "MethodNotAllowed",
    "NfvhaError",
    "NotLeader",
    "ResourceNotFound",
    "RestoreError",
    "SandboxError",
    "TransferError",
    "Unauthorized",
    "error_for_problem",
    "problem_class",
    "problem_type",
]

#: Every nfvha problem ``type`` starts with this.
PROBLEM_PREFIX = "urn:nfvha:problem:"
_BY_TYPE: dict[str, type[NfvhaError]] = {}


class NfvhaError(Exception):
    """Base of every error nfvha raises on purpose.

    ``problem`` holds the problem details the error arrived as, when a client made it from
    a daemon's answer (``error_for_problem``); None when raised here."""

    problem_type: ClassVar[str] = PROBLEM_PREFIX + "error"
    problem: dict[str, Any] | None = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("problem_type")
        if own is None:
            return
        if not own.startswith(PROBLEM_PREFIX):
            raise TypeError(f"{cls.__name__}.problem_type must start with {PROBLEM_PREFIX}")
        if own in _BY_TYPE and _BY_TYPE[own].__qualname__ != cls.__qualname__:
            raise TypeError(f"{cls.__name__}.problem_type {own} is already "
                            f"{_BY_TYPE[own].__name__}'s")
        _BY_TYPE[own] = cls

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        """The error a daemon described in ``problem`` (its problem details)."""
        exc = cls(_problem_text(problem))
        exc.problem = dict(problem)
        return exc


class ConfigError(NfvhaError):
    """The configuration or the machine cannot support the request."""

    problem_type = PROBLEM_PREFIX + "config"


class NotLeader(NfvhaError):
    """This manager may not act: it is a follower in a manager cluster, or it has just
    lost the leadership. The request goes to the leader (``leader_url``, when one is
    known) or is retried once one is elected."""

    problem_type = PROBLEM_PREFIX + "not-leader"

    def __init__(self, detail: str, *, leader_url: str | None = None) -> None:
        super().__init__(detail)
        self.leader_url = leader_url


class DescriptorError(NfvhaError):
    """A VNF descriptor failed validation; the message names the field."""

    problem_type = PROBLEM_PREFIX + "invalid-descriptor"


class CriuError(NfvhaError):
    """CRIU failed; ``log_lines`` holds the relevant lines of its log."""

    problem_type = PROBLEM_PREFIX + "criu-failed"

    def __init__(self, message: str, log_lines: list[str] | None = None,
                 log_path: str | None = None) -> None:
        self.log_lines = list(log_lines or [])
        self.log_path = log_path
        detail = ""
        if self.log_lines:
            detail = "\n  criu: " + "\n  criu: ".join(self.log_lines[-8:])
        super().__init__(message + detail)

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        exc = super().from_problem(problem)  # the detail holds the log lines already
        exc.log_lines = [str(x) for x in problem.get("criu_log") or []]
        exc.log_path = problem.get("criu_log_path")
        return exc


class DumpError(CriuError):
    """``criu dump`` failed; the VNF keeps running when it was dumped leave-running."""

    problem_type = PROBLEM_PREFIX + "dump-failed"


class RestoreError(CriuError):
    """``criu restore`` failed; nothing of the restored tree is left running."""

    problem_type = PROBLEM_PREFIX + "restore-failed"


class CheckpointError(NfvhaError):
    """A checkpoint could not be written, read or committed."""

    problem_type = PROBLEM_PREFIX + "checkpoint-failed"


class CheckpointNotFound(CheckpointError):
    """No such checkpoint in the store."""

    problem_type = PROBLEM_PREFIX + "checkpoint-not-found"


class CheckpointCorrupt(CheckpointError):
    """A checkpoint's files do not match its recorded checksums or sizes."""

    problem_type = PROBLEM_PREFIX + "checkpoint-corrupt"

    def __init__(self, message: str, checkpoint: str = "", file: str = "") -> None:
        self.checkpoint = checkpoint
        self.file = file
        super().__init__(message)

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        exc = cls(_problem_text(problem), checkpoint=str(problem.get("checkpoint") or ""),
                  file=str(problem.get("file") or ""))
        exc.problem = dict(problem)
        return exc


class TransferError(NfvhaError):
    """A checkpoint push to a peer agent failed; the peer keeps nothing partial."""

    problem_type = PROBLEM_PREFIX + "transfer-failed"


class SandboxError(NfvhaError):
    """Building, starting or tearing down a VNF sandbox failed."""

    problem_type = PROBLEM_PREFIX + "sandbox-failed"


class AddressInUse(SandboxError):
    """The VNF's address (IP or MAC) is already taken by another live instance."""

    problem_type = PROBLEM_PREFIX + "address-in-use"


class HostCannotRun(SandboxError):
    """What the descriptor asks for cannot be had on this host (a volume source it lacks,
    a ``run_as`` CRIU could not checkpoint here): refused before anything runs."""

    problem_type = PROBLEM_PREFIX + "host-cannot-run"


class AddressConflict(NfvhaError):
    """An address a VNF asks for is held by another VNF or by nfvha itself (cluster-wide
    address management, checked before anything is stored or started)."""

    problem_type = PROBLEM_PREFIX + "address-conflict"


class InstanceNotFound(NfvhaError):
    """No VNF instance with that id on this agent."""

    problem_type = PROBLEM_PREFIX + "instance-not-found"


class InstanceStateError(NfvhaError):
    """The operation does not apply to the instance in its current state."""

    problem_type = PROBLEM_PREFIX + "instance-state"


class InstanceStopped(InstanceStateError):
    """The instance's process is stopped (SIGSTOP, a tracer): it cannot be checkpointed,
    and it serves nothing; the manager treats it as a hang."""

    problem_type = PROBLEM_PREFIX + "instance-stopped"


class HostNetworkError(NfvhaError):
    """A host network operation (netns, veth, bridge, address) failed."""

    problem_type = PROBLEM_PREFIX + "host-network-failed"


_BY_TYPE[NfvhaError.problem_type] = NfvhaError


class ApiError(NfvhaError):
    """A daemon's problem answer (RFC 9457): ``status``, ``type``, ``title`` and
    ``detail`` as it sent them. Raised as such for a ``type`` no class here declares;
    its subclasses are the refusals of the HTTP layer itself."""

    problem_type = PROBLEM_PREFIX + "api-error"

    def __init__(self, detail: str, *, status: int = 0, type: str = "",
                 title: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.type = type or self.problem_type
        self.title = title
        self.detail = detail

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any]) -> Self:
        status = problem.get("status")
        exc = cls(_problem_text(problem), status=status if isinstance(status, int) else 0,
                  type=str(problem.get("type") or ""), title=str(problem.get("title") or ""))
        exc.problem = dict(problem)
        return exc


class InvalidRequest(ApiError):
    """A body or parameter that does not validate (the detail names each field), or a
    body nested too deeply to read."""

    problem_type = PROBLEM_PREFIX + "invalid-request"


class Unauthorized(ApiError):
    """No credential, or a wrong one (a bearer token, a client certificate)."""

    problem_type = PROBLEM_PREFIX + "unauthorized"


class Forbidden(ApiError):
    """A known caller that may not make this call (a role, a host reporting for another)."""

    problem_type = PROBLEM_PREFIX + "forbidden"


class BodyTooLarge(ApiError):
    """A request body over the daemon's limit (``--max-body``)."""

    problem_type = PROBLEM_PREFIX + "body-too-large"


class ResourceNotFound(ApiError):
    """No such path or resource (a service of the forwarder, a URL no route serves)."""

    problem_type = PROBLEM_PREFIX + "not-found"


class MethodNotAllowed(ApiError):
    """The path does not take this method (the ``Allow`` header says which do)."""

    problem_type = PROBLEM_PREFIX + "method-not-allowed"


def _problem_text(problem: Mapping[str, Any]) -> str:
    return str(problem.get("detail") or problem.get("title") or "no detail")


def problem_type(of: BaseException | type[BaseException]) -> str:
    """The problem ``type`` URI of an error or error class: its own or its nearest
    parent's; an error from outside nfvha is the base ``urn:nfvha:problem:error``."""
    cls = of if isinstance(of, type) else type(of)
    return getattr(cls, "problem_type", NfvhaError.problem_type)


def problem_class(type_uri: str) -> type[NfvhaError] | None:
    """The class that declares ``type_uri``, if one is loaded (the classes outside this
    module register when their module is imported)."""
    return _BY_TYPE.get(type_uri)


#: By status, for a problem whose ``type`` says nothing (``about:blank``, a proxy's).
_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 405: MethodNotAllowed,
    413: BodyTooLarge, 422: InvalidRequest}


def error_for_problem(status: int, problem: Mapping[str, Any]) -> NfvhaError:
    """The typed error for a problem answer: the class of its ``type``; failing that, one
    by its HTTP ``status`` (401, 403, 413, ...); failing that, an ``ApiError``."""
    body = {**problem}
    body.setdefault("status", status)
    cls: type[NfvhaError] = (problem_class(str(problem.get("type") or ""))
                             or _BY_STATUS.get(status) or ApiError)
    return cls.from_problem(body)
