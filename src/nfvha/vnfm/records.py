"""Small helpers for the shapes of the manager's store records, shared by its parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["now_iso", "problem", "set_fields"]


def now_iso(t: float | None = None) -> str:
    """A wall time as SOL003 writes it (UTC, milliseconds)."""
    t = time.time() if t is None else t  # once: two reads could straddle a second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def set_fields(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A store update that sets top-level fields."""
    return lambda d: {**d, **changes}


def problem(status: int, detail: str) -> dict[str, Any]:
    """The ``error`` of a failed operation occurrence (RFC 7807 shape)."""
    return {"type": "about:blank", "title": "Operation failed", "status": status,
            "detail": detail}
