"""Placement: a primary host and backup hosts for each VNF (anti-affinity, capacity)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["HostView", "Placement", "PlacementError", "place"]


class PlacementError(NfvhaError):
    """No host can take the VNF."""

    problem_type = PROBLEM_PREFIX + "no-host"


@dataclass(frozen=True)
class HostView:
    """What placement needs to know of a host."""

    host_id: str
    up: bool
    instances: int
    mem_available: int


@dataclass(frozen=True)
class Placement:
    primary: str
    backups: tuple[str, ...]
    reason: str


def place(hosts: Mapping[str, HostView], *, memory: int, backups: int,
          exclude: Iterable[str] = (), prefer: str | None = None) -> Placement:
    """Least-loaded host with room as primary, the next ones as backups (never the same
    host twice: a backup on the primary's host protects nothing)."""
    excluded = set(exclude)
    fits = [h for h in hosts.values()
            if h.up and h.host_id not in excluded and (h.mem_available == 0
                                                       or h.mem_available >= memory)]
    if not fits:
        raise PlacementError(
            f"no host is up with {memory // 2**20} MiB free (excluded: "
            f"{', '.join(sorted(excluded)) or 'none'}); add a host or lower resources.memory")
    fits.sort(key=lambda h: (h.instances, h.host_id))
    primary = fits[0]
    if prefer is not None:
        for h in fits:
            if h.host_id == prefer:
                primary = h
    rest = [h.host_id for h in fits if h.host_id != primary.host_id][:backups]
    reason = f"{primary.host_id} has the fewest instances ({primary.instances})"
    if prefer is not None and primary.host_id == prefer:
        reason = f"{prefer} was asked for"
    if len(rest) < backups:
        reason += f"; only {len(rest)} of {backups} backup host(s) available"
    return Placement(primary=primary.host_id, backups=tuple(rest), reason=reason)
