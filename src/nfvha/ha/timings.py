"""The timings of detection, fencing and leases: one validated object for the manager,
the agent, its lease guard and the CLI, so that a default is declared once and a
combination that cannot work is refused at start with what to change.

Stdlib only: the lease guard imports it and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfvha.errors import ConfigError

__all__ = ["DEFAULT_TIMINGS", "FaultTimings", "check_host_timings"]


@dataclass(frozen=True)
class FaultTimings:
    """Detection and fencing times. Defaults aim at host-loss detection <= 300 ms.

    The agent stops its own VNFs after ``fencing_timeout`` without reaching the manager;
    the manager restores them elsewhere only ``fencing_timeout + fencing_margin`` after it
    last heard the host, which covers the heartbeat's one-way delay and the agent's check
    period: at that moment the old copy is known to be stopped.

    Invariants (``ConfigError`` naming the flag to change otherwise): every time is
    positive; a host is suspected only after at least two heartbeats are missed
    (``suspect_after >= 2 * heartbeat_interval``), and before it fences itself
    (``suspect_after < fencing_timeout``); leases stretch, never shrink
    (``max_lease >= fencing_timeout``).
    """

    heartbeat_interval: float = 0.05
    suspect_after: float = 0.15
    confirm_timeout: float = 0.06
    fencing_timeout: float = 0.25
    fencing_margin: float = 0.1  # > heartbeat latency + agent check period + peer probe
    #: Leases stretch up to this under strain (= fencing_timeout: never stretched).
    max_lease: float = 2.0
    #: A lease is this many times the longest silence the host recently came back from.
    lease_factor: float = 3.0
    #: How long a silence that ended keeps its host's lease and suspicion stretched.
    strain_window: float = 30.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "suspect_after", "confirm_timeout",
                     "fencing_timeout", "fencing_margin", "max_lease", "lease_factor",
                     "strain_window"):
            v = getattr(self, name)
            if not v > 0:  # NaN too
                raise ConfigError(f"timings: {name} must be > 0, got {v}")
        if self.suspect_after < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"timings: --suspect-after {self.suspect_after:g} s is less than two "
                f"heartbeats (--heartbeat-interval {self.heartbeat_interval:g} s): one late "
                "datagram would make a host suspect; raise --suspect-after")
        if self.suspect_after >= self.fencing_timeout:
            raise ConfigError(
                f"timings: --suspect-after {self.suspect_after:g} s must be below "
                f"--fencing-timeout {self.fencing_timeout:g} s, or a cut-off host fences its "
                "own VNFs before the manager even suspects it")
        if self.max_lease < self.fencing_timeout:
            raise ConfigError(
                f"timings: --max-lease {self.max_lease:g} s is below --fencing-timeout "
                f"{self.fencing_timeout:g} s: leases stretch under strain, never shrink")

    def fenced_after(self) -> float:
        return self.fencing_timeout + self.fencing_margin


DEFAULT_TIMINGS = FaultTimings()


def check_host_timings(heartbeat_interval: float, fencing_timeout: float) -> None:
    """What an agent and its guard are given: heartbeats, and a lease (0: never fence on
    it) that spans at least two of them."""
    if not heartbeat_interval > 0:
        raise ConfigError(f"--heartbeat-interval must be > 0, got {heartbeat_interval}")
    if fencing_timeout < 0 or (0 < fencing_timeout < 2 * heartbeat_interval):
        raise ConfigError(
            f"--fencing-timeout {fencing_timeout:g} s must be 0 (never fence) or at least "
            f"two heartbeats ({2 * heartbeat_interval:g} s)")
