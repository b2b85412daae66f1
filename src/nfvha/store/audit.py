"""Audit of a manager cluster's writes, from etcd's own history: each guarded write names
its term and writer (`EtcdStore.writer`), and etcd keeps every revision until it is
compacted. Two managers' writes accepted for one term, or a write of an older term
accepted after a newer term wrote, is a split brain the fencing token should have
refused; tests and the availability campaign check for both.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from nfvha.store.base import StoreError

__all__ = ["TermAudit", "audit_terms", "current_revision"]


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode("ascii")


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


@dataclass
class TermAudit:
    writes: int = 0  # guarded writes seen
    writers: dict[int, set[str]] = field(default_factory=dict)  # term -> who wrote in it
    #: Writes of a term older than one already seen, in revision order (never expected).
    stale: list[tuple[int, int, str]] = field(default_factory=list)  # (revision, term, by)

    @property
    def split_terms(self) -> dict[int, set[str]]:
        """Terms with more than one writer."""
        return {t: w for t, w in self.writers.items() if len(w) > 1}

    @property
    def ok(self) -> bool:
        return not self.split_terms and not self.stale


def current_revision(endpoint: str, timeout: float = 5.0) -> int:
    r = httpx.post(f"{endpoint}/v3/kv/range", json={"key": _b64("\0"), "limit": 1},
                   timeout=timeout)
    r.raise_for_status()
    return int(r.json()["header"]["revision"])


def audit_terms(endpoint: str, prefix: str, since_revision: int,
                timeout: float = 1.0) -> TermAudit:
    """Every write under ``prefix`` from ``since_revision`` up to now, from etcd's watch
    history (one member's gateway, ``http://HOST:PORT``). The watch stream has no end:
    it is read until the newest revision, or until ``timeout`` passes with no event."""
    until = current_revision(endpoint)
    audit = TermAudit()
    newest_term = 0
    body = {"create_request": {"key": _b64(prefix), "range_end": _range_end(prefix),
                               "start_revision": str(since_revision)}}
    seen_rev = since_revision - 1
    try:
        with httpx.stream("POST", f"{endpoint}/v3/watch", json=body,
                          timeout=httpx.Timeout(timeout)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.strip():
                    continue
                result: dict[str, Any] = json.loads(line).get("result", {})
                if result.get("compact_revision"):
                    raise StoreError(f"etcd compacted its history past revision "
                                     f"{since_revision}: nothing to audit from there")
                for ev in result.get("events", []):
                    kv = ev.get("kv", {})
                    rev = int(kv.get("mod_revision", 0))
                    seen_rev = max(seen_rev, rev)
                    if ev.get("type") == "DELETE" or not kv.get("value"):
                        continue
                    try:
                        env = json.loads(base64.b64decode(kv["value"]))
                    except (ValueError, TypeError):
                        continue  # not a record (the leader key, say)
                    if not isinstance(env, dict) or "term" not in env:
                        continue
                    term, by = int(env["term"]), str(env.get("by", "?"))
                    audit.writes += 1
                    audit.writers.setdefault(term, set()).add(by)
                    if term < newest_term:
                        audit.stale.append((rev, term, by))
                    newest_term = max(newest_term, term)
                if seen_rev >= until:
                    break
    except httpx.ReadTimeout:
        pass  # nothing more under the prefix up to now (the newest revision is elsewhere)
    return audit
