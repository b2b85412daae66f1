"""Leader failover of `nfvha.ha.election` alone: a leader that stops dead (no resign, no
revoke: what SIGKILL leaves etcd with) to the next leader elected, on a throwaway etcd.

Three candidates in one process; the leader is frozen (its tasks and timer cancelled) at a
random phase of its keepalive cycle. Writes ``results/election_failover.json``. Usage::

    python benchmarks/election_failover.py [--runs 20] [--ttl 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfvha.ha.election import ElectionTimings, LeaderElection
from nfvha.store.etcd import EtcdClient

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find _etcd
from _etcd import etcd_cluster

REPO = Path(__file__).resolve().parent.parent


async def _until_one_leads(elections: Sequence[LeaderElection], timeout: float,
                           exclude: LeaderElection | None = None) -> LeaderElection:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in elections:
            if e is not exclude and e.is_leader():
                return e
        await asyncio.sleep(0.002)
    raise RuntimeError(f"no leader within {timeout} s")


async def _trial(url: str, ttl: int, poll: float) -> dict[str, float]:
    key = f"/nfvt-bench/{uuid.uuid4().hex}/leader"
    timings = ElectionTimings.from_ttl(ttl, poll_interval=poll)
    elections = [LeaderElection(EtcdClient([url], timeout=timings.renew_interval), key,
                                f"m{i}", ttl, timings=timings)
                 for i in range(3)]
    try:
        for e in elections:
            await e.start()
        old = await _until_one_leads(elections, 5)
        await asyncio.sleep(random.uniform(0.5, 1.0) * ttl)  # a random renewal phase
        killed = time.monotonic()
        deadline = old.leadership_deadline or killed
        for task in (old._runner, old._renewer):  # what SIGKILL does to it
            if task is not None:
                task.cancel()
        if old._timer is not None:
            old._timer.cancel()
        new = await _until_one_leads(elections, 5 * ttl, exclude=old)
        won = new.takeover_at or time.monotonic()
        return {"failover": won - killed, "old_demoted_after": deadline - killed,
                "gap_old_deadline_to_new_win": won - deadline}
    finally:
        for e in elections:
            await e.close()
            e.client.close()


async def _run(runs: int, ttl: int, poll: float) -> dict[str, Any]:
    with etcd_cluster(1) as etcd:  # one member, fast lease timings (see _etcd)
        trials = [await _trial(etcd.url, ttl, poll) for _ in range(runs)]
    out: dict[str, Any] = {"ttl": ttl, "poll_interval": poll, "runs": runs, "trials": trials}
    for name in trials[0]:
        values = sorted(t[name] for t in trials)
        out[name] = {"min": values[0], "median": statistics.median(values),
                     "p90": values[int(0.9 * (len(values) - 1))], "max": values[-1]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ttl", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.05)
    args = ap.parse_args(argv)
    result = asyncio.run(_run(args.runs, args.ttl, args.poll))
    out = REPO / "results" / "election_failover.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name in ("failover", "old_demoted_after", "gap_old_deadline_to_new_win"):
        s = result[name]
        print(f"{name:30s} min {s['min']:.3f}  median {s['median']:.3f}  p90 {s['p90']:.3f}"
              f"  max {s['max']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
