"""Small helpers for the shapes of the manager's store records, shared by its parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["OpChange", "now_iso", "problem", "set_fields"]


def now_iso(t: float | None = None) -> str:
    """A wall time as SOL003 writes it (UTC, milliseconds)."""
    t = time.time() if t is None else t  # once: two reads could straddle a second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def set_fields(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A store update that sets top-level fields."""
    return lambda d: {**d, **changes}


def problem(status: int, detail: str, *, code: str = "operation-failed",
            of: BaseException | None = None) -> dict[str, Any]:
    """The ``error`` of a failed operation occurrence (RFC 9457 shape), with a stable
    ``type`` a client can act on: the problem type of the nfvha error that failed it
    (``of``), or ``urn:nfvha:problem:<code>`` naming how it ended."""
    kind = of.problem_type if isinstance(of, NfvhaError) else PROBLEM_PREFIX + code
    return {"type": kind, "title": "Operation failed", "status": status, "detail": detail}


@dataclass
class OpChange:
    """A change of an operation occurrence, as a store update function (it may run more
    than once, on a lost compare-and-set; ``state_changed`` tells of the last run)."""

    operationState: str | None = None  # named as the SOL003 field it sets
    error: dict[str, Any] | None = None
    nfvha: dict[str, Any] | None = None
    nfvha_merge: dict[str, Any] | None = None
    state_changed: bool = False

    def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
        d = dict(d)
        self.state_changed = False
        if self.operationState is not None and self.operationState != d["operationState"]:
            d["operationState"] = self.operationState
            d["stateEnteredTime"] = now_iso()
            self.state_changed = True
        if self.error is not None:
            d["error"] = self.error
        if self.nfvha is not None:
            d["nfvha"] = self.nfvha
        if self.nfvha_merge:
            n = dict(d.get("nfvha", {}))
            for k, v in self.nfvha_merge.items():
                n[k] = {**n.get(k, {}), **v} if isinstance(v, dict) and \
                    isinstance(n.get(k), dict) else v
            d["nfvha"] = n
        return d
