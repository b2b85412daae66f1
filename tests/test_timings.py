"""One timings object: defaults declared once, unsound combinations refused at start."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from nfvha.errors import ConfigError
from nfvha.ha.timings import DEFAULT_TIMINGS, FaultTimings, check_host_timings
from nfvha.vim.agent import AgentConfig
from nfvha.vim.guard import GuardConfig


def test_the_defaults_are_sound_and_shared() -> None:
    t = FaultTimings()
    assert 2 * t.heartbeat_interval <= t.suspect_after < t.fencing_timeout <= t.max_lease
    assert t.fenced_after() > t.suspect_after
    # The agent and its guard default to the very same heartbeat and lease.
    assert AgentConfig.heartbeat_interval == GuardConfig.heartbeat_interval \
        == DEFAULT_TIMINGS.heartbeat_interval
    assert GuardConfig.fencing_timeout == DEFAULT_TIMINGS.fencing_timeout


@pytest.mark.parametrize(("changes", "says"), [
    ({"heartbeat_interval": 0}, "heartbeat_interval must be > 0"),
    ({"fencing_margin": -0.1}, "fencing_margin must be > 0"),
    ({"suspect_after": math.nan}, "suspect_after must be > 0"),
    ({"suspect_after": 0.08}, "less than two heartbeats"),
    ({"suspect_after": 0.3, "fencing_timeout": 0.25}, "must be below --fencing-timeout"),
    ({"fencing_timeout": 3.0, "suspect_after": 2.0}, "--max-lease 2 s is below"),
])
def test_unsound_timings_are_refused_naming_what_to_change(changes: dict[str, float],
                                                           says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        FaultTimings(**changes)


def test_host_timings() -> None:
    check_host_timings(0.05, 0.25)
    check_host_timings(0.05, 0)  # never fence on the lease
    for hb, fence in ((0, 0.25), (0.05, -1), (0.1, 0.15)):
        with pytest.raises(ConfigError):
            check_host_timings(hb, fence)


def test_the_cli_refuses_a_manager_with_unsound_timings_before_starting() -> None:
    r = subprocess.run([sys.executable, "-m", "nfvha", "manager", "--listen", "127.0.0.1:1",
                        "--db", "/nonexistent/x.db", "--token-file", "/dev/null",
                        "--suspect-after", "0.5", "--fencing-timeout", "0.25"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0 and "--suspect-after 0.5 s must be below" in r.stderr, r.stderr


def test_a_long_fencing_timeout_raises_the_default_max_lease() -> None:
    # What benchmarks/dataplane.py runs: a 3 s lease with the default --max-lease.
    from nfvha.cli import build_parser

    args = build_parser().parse_args(["manager", "--suspect-after", "2", "--fencing-timeout",
                                      "3"])
    assert args.max_lease is None  # resolved to max(2.0, 3.0) when the manager starts
