"""Regenerate docs/evaluation.md from the benchmarks' JSON results, and nothing else.

Every number in the report is read from ``results/<experiment>.json`` as written by the
scripts in this directory; the prose around the numbers is fixed here. A missing file, a
file that is not JSON, or a value the report needs that is absent or of the wrong type
stops the run with a message naming the file, the value and the command that makes it,
and leaves the previous report untouched: a report that silently skipped a section would
misstate what was measured.

    .venv/bin/python benchmarks/report.py [--results results] [--out docs/evaluation.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Experiment name -> the command that (re)creates its JSON.
EXPERIMENTS: dict[str, str] = {
    "checkpoint_cost": "benchmarks/checkpoint_cost.py",
    "recovery": "benchmarks/recovery.py",
    "rpo": "benchmarks/rpo.py",
    "dataplane": "benchmarks/dataplane.py",
    "campaign": "benchmarks/campaign.py",
    "scale": "benchmarks/scale.py",
    "idle_cost": "benchmarks/idle_cost.py",
    "tcp_lock": "benchmarks/tcp_lock.py",
    "manager_failover": "benchmarks/manager_failover.py",
}


class ReportError(RuntimeError):
    """The results cannot support the report; the message says which file and value."""


class Result:
    """One experiment's JSON with typed, path-addressed access that fails loudly."""

    def __init__(self, name: str, path: Path, data: dict[str, Any]) -> None:
        self.name, self.path, self.data = name, path, data

    def _where(self, keys: str) -> str:
        return (f"{self.path}: {keys}; rerun `.venv/bin/python {command(self.name)}` "
                "(or `make bench`) to regenerate it")

    def get(self, dotted: str, kind: type | tuple[type, ...] = object) -> Any:
        cur: Any = self.data
        for part in dotted.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
                cur = cur[int(part)]
            else:
                raise ReportError(self._where(f"missing value `{dotted}` (no `{part}`)"))
        if kind is float:
            kind = (int, float)
        if not isinstance(cur, kind) or (isinstance(cur, bool) and kind in ((int, float),)):
            raise ReportError(self._where(
                f"value `{dotted}` is {type(cur).__name__} {cur!r:.60}, expected "
                f"{getattr(kind, '__name__', kind)}"))
        return cur

    def num(self, dotted: str) -> float:
        return float(self.get(dotted, float))

    def opt(self, dotted: str) -> float | None:
        """A number that may legitimately be absent or NaN (nothing measured)."""
        try:
            v = self.num(dotted)
        except ReportError:
            return None
        return None if math.isnan(v) else v

    @property
    def quick(self) -> bool:
        return bool(self.get("config.quick", bool))


def load(results: Path, name: str) -> Result:
    path = results / f"{name}.json"
    if not path.is_file():
        raise ReportError(f"{path}: missing; run `.venv/bin/python {command(name)} "
                          "--quick` (or `make bench`) to create it")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc}); rerun "
                          f"`.venv/bin/python {command(name)}`") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: top level is {type(data).__name__}, expected an object")
    r = Result(name, path, data)
    if r.get("benchmark", str) != name:
        raise ReportError(r._where(f"`benchmark` is {data.get('benchmark')!r}, not {name!r}"))
    if r.get("complete", bool) is not True:
        raise ReportError(r._where("the run did not complete (`complete` is false)"))
    for key in ("machine.date", "machine.kernel", "machine.nproc"):
        r.get(key)
    r.get("summary", dict)
    return r


# -- formatting ------------------------------------------------------------------------------


def f(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f(x, 1 if abs(x) < 10 else 0)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or ("l" + "r" * (len(head) - 1))
    sep = ["---:" if a == "r" else ":---" if a == "l" else ":---:" for a in align]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def run_note(r: Result) -> str:
    m = r.data["machine"]
    load = m.get("loadavg_at_start")
    load_s = f", load average at start {load[0]:.2f}" if isinstance(load, list) and load else ""
    mode = "**quick run** (few samples: indicative only)" if r.quick else "full run"
    elapsed = r.opt("elapsed_s")
    took = f", {elapsed / 60:.1f} min" if elapsed is not None else ""
    return f"*Source: `results/{r.name}.json`, {mode}, {m['date']}{took}{load_s}.*"


def image(r: Result, results: Path, img_dir: Path, out: Path) -> str:
    """Copy the experiment's plot next to the report; a missing plot is an error too."""
    src = results / f"{r.name}.png"
    if not src.is_file():
        raise ReportError(f"{src}: missing plot; rerun `.venv/bin/python "
                          f"{command(r.name)}`")
    img_dir.mkdir(parents=True, exist_ok=True)
    dst = img_dir / src.name
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    rel = os.path.relpath(dst, out.parent)
    return f"![{r.name}]({rel})"


def targets(r: Result) -> list[tuple[str, bool, str]]:
    out = []
    for i in range(len(r.get("targets", list)) if "targets" in r.data else 0):
        name = r.get(f"targets.{i}.target", str)
        ok = r.get(f"targets.{i}.pass", bool)
        v = r.opt(f"targets.{i}.value")
        whole = v is None or float(v).is_integer() or abs(v) >= 10
        out.append((name, ok, f(v, 0 if whole else 2)))
    return out


# -- sections --------------------------------------------------------------------------------


def sec_checkpoint(r: Result) -> tuple[str, list[str]]:
    cond = "warm"
    sizes = sorted(r.get(f"summary.{cond}", dict), key=int)
    if not sizes:
        raise ReportError(r._where(f"`summary.{cond}` has no sizes"))
    rows = []
    for s in sizes:
        p = f"summary.{cond}.{s}"
        rows.append([
            s, f(r.num(f"{p}.nfvha.image_bytes.median") / 2**20, 1),
            ms(r.num(f"{p}.nfvha.frozen_ms.median")), ms(r.num(f"{p}.bare.frozen_ms.median")),
            ms(r.num(f"{p}.nfvha.checkpoint_api_s.median") * 1000),
            ms(r.num(f"{p}.bare.dump_wall_s.median") * 1000),
            f"{r.num(f'{p}.ratios.dump_api.median'):.2f}×",
            ms(r.num(f"{p}.nfvha.push_s.median") * 1000),
            ms(r.num(f"{p}.nfvha.restore_api_s.median") * 1000),
            ms(r.num(f"{p}.bare.restore_wall_s.median") * 1000),
            f"{r.num(f'{p}.ratios.restore_api.median'):.2f}×",
        ])
    big, small = sizes[-1], sizes[0]
    frozen_small = r.num(f"summary.{cond}.{small}.nfvha.frozen_ms.median")
    sha_big = r.num(f"attribution.{big}.sha256_s")
    img_mib_big = r.num(f"summary.{cond}.{big}.nfvha.image_bytes.median") / 2**20
    sha_per_mib = sha_big * 1000 / img_mib_big
    frozen_big = r.num(f"summary.{cond}.{big}.nfvha.frozen_ms.median")
    push_big = r.num(f"summary.{cond}.{big}.nfvha.push_s.median")
    img_big = r.num(f"summary.{cond}.{big}.nfvha.image_bytes.median") / 2**20
    text = f"""\
A stateful UDP VNF holding 1 MiB to {big} MiB of state is checkpointed through the agent's
API (nfvha) and with the same `criu` command lines run by hand (bare, the baseline), then
the images are pushed to a second host and restored; {r.get('config.repeats', int)} repeats
per size, warm memory, medians in ms. *Dump ratio* and *restore ratio* are nfvha over bare
CRIU, measured side by side in the same run.

{table(["State MiB", "Image MiB", "Frozen nfvha", "Frozen bare", "Checkpoint nfvha",
        "Dump bare", "Dump ratio", "Transfer", "Restore nfvha", "Restore bare",
        "Restore ratio"], rows)}

The classic C/R curve: frozen time, dump, transfer and restore all grow with the memory
the VNF has touched, since CRIU copies every dirty page while the VNF is frozen
({ms(frozen_big)} ms frozen at {big} MiB) and the transfer is a copy of the images
({f(img_big, 0)} MiB in {f(push_big, 2)} s). Small VNFs are dominated by CRIU's fixed
cost ({ms(frozen_small)} ms frozen at {small} MiB: the parasite, the sockets, the network
lock). nfvha adds integrity work bare CRIU does not do: a SHA-256 of every image file at
commit and again before a restore. That is why the dump and restore ratios grow with size:
hashing the {f(img_mib_big, 0)} MiB of images took {ms(sha_big * 1000)} ms
({f(sha_per_mib, 2)} ms per MiB).""" + _containment_cost(r, cond, sizes)
    return text, []


def _containment_cost(r: Result, cond: str, sizes: Sequence[str]) -> str:
    """The nfvha/previous table of a run that measured the previous sandbox too."""
    rows = []
    for s in sizes:
        p = f"summary.{cond}.{s}"
        if "containment" not in r.get(p, dict):
            continue

        def cell(key: str, name: str, scale: float = 1000.0, p: str = p) -> str:
            return (f"{ms(r.num(f'{p}.nfvha.{key}.median') * scale)} / "
                    f"{ms(r.num(f'{p}.previous.{key}.median') * scale)} "
                    f"({r.num(f'{p}.containment.{name}.median'):.2f}×)")

        rows.append([s, cell("checkpoint_api_s", "checkpoint_api"),
                     cell("frozen_ms", "frozen", 1.0), cell("push_api_s", "push_api"),
                     cell("restore_api_s", "restore_api"),
                     cell("restore_to_answer_s", "restore_to_answer")])
    if not rows:
        return ""
    return f"""

**The cost of containment and TLS.** The same VNF, in the same run and interleaved, on a
second testbed run as before issue 12 (*previous*: the host's file system, every
capability, no seccomp filter, plain HTTP between the daemons). nfvha / previous, medians
in ms, ratio in brackets (target ≤ 1.1× on checkpoint and restore):

{table(["State MiB", "Checkpoint API", "Frozen", "Push API", "Restore API",
        "Restore to answer"], rows)}

The private root adds one tmpfs (`/tmp`, `/run`, `/dev/shm`) that CRIU dumps as a tar
while the VNF is frozen, and a few external bind mounts it records without reading;
the push of the images to the replica host now goes over mutual TLS."""


def sec_recovery(r: Result) -> tuple[str, list[str]]:
    rows = []
    scns = r.get("summary", dict)
    for key in scns:
        p = f"summary.{key}"
        runs = r.get(f"{p}.runs", int)
        kept = scns[key].get("state_kept")
        state = (f"{kept}/{runs} kept" if isinstance(kept, int) and kept > 0
                 else "lost (restarted empty)" if isinstance(kept, int) else "–")
        rows.append([
            r.get(f"{p}.label", str), str(runs),
            ms(r.opt(f"{p}.downtime_ms.median")), ms(r.opt(f"{p}.downtime_ms.p95")),
            ms(r.opt(f"{p}.detect_ms.median")), ms(r.opt(f"{p}.decide_ms.median")),
            ms(r.opt(f"{p}.restore_ms.median")), ms(r.opt(f"{p}.redirect_ms.median")),
            ms(r.opt(f"{p}.fence_wait_ms.median")), state])
    supervisor = ""
    if "crash-supervisor" in scns and "crash-local" in scns:
        sv = r.num("summary.crash-supervisor.downtime_ms.median")
        lo = r.num("summary.crash-local.downtime_ms.median")
        kept = r.get("summary.crash-supervisor.state_kept", int)
        supervisor = f"""

The external restart-only supervisor brings a killed process back in {ms(sv)} ms, against
{ms(lo)} ms for nfvha's restore-local ({lo / sv:.1f}×): it only forks and execs on the
same host, while nfvha rebuilds the process from its checkpoint. It kept the state in
{kept} of its runs — the counter starts again from zero — and it cannot survive the loss
of its host at all; Kubernetes' documented default evicts the pods of an unreachable node
only after 300 s."""
    text = f"""\
Each failure is injected for real into a flow-counting VNF probed by a client at 1 kHz:
SIGKILL (process crash), SIGSTOP (hang), or a host crash (uplink cut, then every process
of the emulated host killed). *Downtime* is what the client saw: the longest gap in its
replies around the failure. The phases come from the manager's HEAL operation occurrence:
*detect* = failure → manager knows, *decide* = choosing a strategy and host, *restore* =
the agent's restore (CRIU plus sandbox), *redirect* = restored → answering its health
probe; *fence wait* is the part of a host-crash recovery spent waiting until the lost host
is known to have killed its own copy. Rows marked *baseline* are the same failure handled
by a plain restart (nfvha's `restart` strategy, or an external restart-only supervisor
like systemd's `Restart=always`): fast enough, but the VNF's state is gone.

{table(["Scenario", "Runs", "Downtime p50", "p95", "Detect", "Decide", "Restore",
        "Redirect", "Fence wait", "State"], rows, "lrrrrrrrrl")}

A process crash is detected at once (the agent watches the VNF through a pidfd and pushes
the exit), so its downtime is almost all restore time. A hang is only visible through
missed health probes, which costs the probe interval times the failure threshold. A host
crash costs the heartbeat timeout plus the wait until the lost host is known fenced; the
restore itself (from a replica already on the target host, or into a pre-built standby
sandbox) is the smaller part.{supervisor}"""
    return text, []


def sec_dataplane(r: Result) -> tuple[str, list[str]]:
    s = "summary"
    rows = [
        ["Added round-trip latency, p50 / p99 (µs)",
         f"{f(r.num(f'{s}.added_rtt_p50_us'))} / {f(r.num(f'{s}.added_rtt_p99_us'))}"],
        ["Forwarder throughput per core of its CPU (datagrams/s)",
         f(r.num(f"{s}.fwd_pps_per_core_at_peak"))],
        ["Max sustained rate with ≤ 1 % loss, via forwarder / direct (datagrams/s)",
         f"{f(r.num(f'{s}.fwd_max_sustained_pps'))} / "
         f"{f(r.num(f'{s}.direct_max_sustained_pps'))}"],
        ["Delivery hold per checkpoint, p50 / max (ms)",
         f"{ms(r.num(f'{s}.hold_p50_ms'))} / {ms(r.num(f'{s}.hold_max_ms'))}"],
        ["Replay cost (ms per 1,000 datagrams)", f(r.num(f"{s}.replay_ms_per_1000"), 1)],
        ["Every replay exact (counter = datagrams sent)",
         "yes" if r.get(f"{s}.replay_all_exact", bool) else "**no**"],
    ]
    px = f"{s}.proxies"
    # A result from before the pair was measured has none: the section reads as it did.
    pair = "nfvha-pair" in r.get(px, dict)
    proxies = [("nfvha forwarder", "nfvha")]
    if pair:
        proxies.append(("nfvha forwarder pair (its active, the standby following)",
                        "nfvha-pair"))
    proxies.append(("nginx UDP stream proxy", "nginx"))
    peer_rows = [[name] + [f(r.num(f"{px}.{key}.{field}")) for field in
                           ("added_p50_us", "added_p99_us", "best_datagrams_per_core")]
                 for name, key in proxies]
    if pair:
        who = ("the `nfvha forwarder` daemon\nalone, a forwarder pair (its active mirroring "
               "every datagram to its standby) and nginx's\nUDP stream proxy (one worker) side "
               "by side in a network namespace of their own (local\naddresses) in front of the "
               "same echo server")
        standby = f"""

**What a standby costs**, in the same run: the pair's active adds
{f(r.num(f"{px}.pair_added_p50_extra_us"))} µs to the lone forwarder's added round-trip time at
p50 ({f(r.num(f"{px}.pair_added_p99_extra_us"))} µs at p99) and moves
{f(r.num(f"{px}.pair_per_core_ratio"), 2)}× its datagrams per core of its own CPU; the standby
spends {f(r.num(f"{px}.nfvha-pair.standby_us_per_mirrored_datagram"), 1)} µs of CPU per
datagram mirrored to it, and the mirror stream carries
{f(r.num(f"{px}.nfvha-pair.mirror_bytes_per_datagram"), 1)} bytes per datagram of
{f(r.num("proxies.payload_bytes"))} bytes (flows, reply counts and heartbeats included)."""
    else:
        who = ("the `nfvha forwarder` daemon and\nnginx's UDP stream proxy (one worker) side "
               "by side on loopback in front of the same echo\nserver")
        standby = ""
    peers = (f"**Against the peer a user would pick**, in the same run: {who}, request and "
             "reply both crossing the proxy (section 0 of the benchmark):")
    text = f"""\
Replay needs the steering forwarder in the data path: it logs every datagram a VNF is
sent, holds delivery for the instant of each checkpoint so that the checkpoint is an exact
cut of the log, and replays the log after a restore. Its costs, measured against sending
to the VNF directly in the same run:

{table(["What", "Value"], rows, "lr")}

{peers}

{table(["Proxy", "Added RTT p50 (µs)", "p99", "Datagrams/s per core"], peer_rows, "lrrr")}

nfvha adds {f(r.num(f"{px}.added_p50_ratio"), 2)}× nginx's round-trip time and moves
{f(r.num(f"{px}.per_core_ratio"), 2)}× its datagrams per core, while also logging each
datagram for replay ({f(r.num(f"{px}.log_bytes_per_datagram"), 1)} bytes of log per
datagram in this run). The forwarder reads and writes in batches (`recvmmsg`/`sendmmsg`
through ctypes, `nfvha.dataplane.batchio`), which is what the throughput gains; at the
latency test's rate a wake-up finds one or two datagrams, and the Python around each call
is most of the added time: a kernel path (XDP or an nftables redirect with a log
elsewhere) or a native forwarder would be needed for the 60 µs target. Replay is paced by
the restored VNF's receive queue: {f(r.num(f"{s}.replay_pps_largest_n"))} datagrams/s
into the flow monitor here, with {f(r.num(f"{s}.replay_rcvbuf_errors"))} datagrams
dropped in its socket buffer; the VNF (Python) is what limits it.{standby}"""
    return text, []


def _rows_by(r: Result, key: str) -> list[tuple[int, dict[str, Any]]]:
    rows = r.get(key, list)
    for i in range(len(rows)):
        r.get(f"{key}.{i}", dict)
    return list(enumerate(rows))


def sec_rpo(r: Result) -> tuple[str, list[str]]:
    rate = r.num("summary.rate_pps")
    lost: dict[tuple[str, float], int] = {}
    for i, row in _rows_by(r, "summary.state_lost"):
        iv = row.get("checkpoint_interval_s")
        if isinstance(iv, int | float):
            lost[(r.get(f"summary.state_lost.{i}.mode", str), float(iv))] = i
    tput: dict[tuple[str, float | None], int] = {}
    for i, row in _rows_by(r, "summary.throughput"):
        iv = row.get("checkpoint_interval_s")
        tput[(r.get(f"summary.throughput.{i}.mode", str),
              float(iv) if isinstance(iv, int | float) else None)] = i
    intervals = sorted({iv for (_, iv) in lost})
    if not intervals:
        raise ReportError(r._where("`summary.state_lost` has no interval rows"))
    rows = []
    for iv in intervals:
        nr, rp = lost.get(("no-replay", iv)), lost.get(("replay", iv))
        tn, tr = tput.get(("no-replay", iv)), tput.get(("replay", iv))
        base = "summary.state_lost"
        rows.append([
            f"{iv:g}",
            "–" if nr is None else
            f"{f(r.num(f'{base}.{nr}.lost.median'))} / {f(r.num(f'{base}.{nr}.lost.p95'))}"
            f" / {f(r.num(f'{base}.{nr}.lost.max'))}",
            "–" if nr is None else f(r.num(f"{base}.{nr}.theory_mean_simple")),
            "–" if nr is None else f(r.opt(f"{base}.{nr}.theory_mean_period")),
            "–" if rp is None else
            f"{r.get(f'{base}.{rp}.lost_zero_runs', int)}/{r.get(f'{base}.{rp}.runs', int)}"
            f" exact, max {f(r.num(f'{base}.{rp}.lost.max'))}",
            "–" if tn is None else
            f"{r.num(f'summary.throughput.{tn}.delivered_vs_baseline'):.2f}",
            "–" if tr is None else
            f"{r.num(f'summary.throughput.{tr}.delivered_vs_baseline'):.2f}",
            "–" if tr is None else ms(r.opt(f"summary.throughput.{tr}.rtt_p99_ms")),
        ])
    runs, n_exact = r.get("summary.replay.runs", int), r.get("summary.replay.exact", int)
    lost_total = r.num("summary.replay.lost_total")
    dups = r.num("summary.replay.duplicates_total")
    if n_exact == runs:
        verdict = (f"Replay made every one of the {runs} kills exact: the RPO with replay "
                   "is zero at every interval, and a longer interval then costs only log "
                   "memory and replay time.")
    else:
        verdict = (f"**Replay was exact in only {n_exact} of {runs} kills** "
                   f"({f(lost_total)} updates lost in total, {f(dups)} duplicated). For "
                   "each loss, `results/rpo.md` (anomalies) says whether the restored VNF's "
                   "socket dropped datagrams while being replayed, or the checkpoint's cut "
                   "fell short of its log position; see *Where nfvha falls short*.")
    text = f"""\
A counting VNF takes {f(rate)} updates per second (UDP datagrams) while it is
checkpointed every *I* seconds; it is then SIGKILLed at a random moment and restored
locally. Without replay, the updates lost are those counted before the kill but missing
after the restore: the recovery point objective (RPO) of periodic checkpointing. The
simple model rate × I/2 assumes a checkpoint is usable the moment it starts; the second
model, rate × (measured period/2 + dump time), accounts for the period stretching when a
checkpoint takes longer than the interval and for the dump and replication time before a
checkpoint is usable. With replay, the forwarder's log restores exactly what the
checkpoint missed. The cost side: delivered throughput relative to the same mode without
checkpoints (the VNF is frozen, and with replay delivery is held, at every checkpoint),
and the RTT p99 that the holds cause.

{table(["Interval s", "Lost without replay p50 / p95 / max", "rate × I/2",
        "rate × (P/2 + dump)", "With replay", "Throughput, no replay", "with replay",
        "RTT p99 with replay (ms)"], rows, "rrrrlrrr")}

Without replay the loss grows linearly with the interval, as the models say; the
measured means sit above the simple model because checkpoints queue behind one another
when the VNF is busy, so the real period is longer than the interval. A short interval
buys a small RPO at a throughput and latency price. {verdict}"""
    return text, []


def sec_campaign(r: Result) -> tuple[str, list[str]]:
    by = r.get("summary.by_type", dict)
    rows = []
    for t in by:
        p = f"summary.by_type.{t}"
        strat = r.get(f"{p}.strategies", dict)
        rows.append([
            r.get(f"{p}.label", str), str(r.get(f"{p}.faults", int)),
            str(r.get(f"{p}.vnf_failures", int)), str(r.get(f"{p}.recovered", int)),
            ", ".join(f"{k} ×{v}" for k, v in strat.items()) or "–",
            ms(r.opt(f"{p}.downtime_ms.median")), ms(r.opt(f"{p}.downtime_ms.p95")),
            ms(r.opt(f"{p}.downtime_ms.max")), ms(r.opt(f"{p}.detect_ms.median")),
            f(r.num(f"{p}.lost_replay.total")), f(r.opt(f"{p}.lost_direct.median"))])
    av = "summary.availability"
    vrows = [["**service**", f"{r.num(f'{av}.service.available') * 100:.3f} %",
              f"{r.num(f'{av}.service.nines'):.2f}",
              f"{r.num(f'{av}.service.available_failures_only') * 100:.3f} %",
              f"{r.num(f'{av}.service.nines_failures_only'):.2f}"]]
    for v in r.get(f"{av}.per_vnf", dict):
        q = f"{av}.per_vnf.{v}"
        vrows.append([v, f"{r.num(f'{q}.available') * 100:.3f} %", f"{r.num(f'{q}.nines'):.2f}",
                      f"{r.num(f'{q}.available_failures_only') * 100:.3f} %",
                      f"{r.num(f'{q}.nines_failures_only'):.2f}"])
    xrows = []
    for i, _row in _rows_by(r, "summary.extrapolation.scenarios"):
        q = f"summary.extrapolation.scenarios.{i}"
        xrows.append([r.get(f"{q}.assumption", str),
                      f"{f(r.num(f'{q}.downtime_s_per_vnf_year'))} s",
                      f"{r.num(f'{q}.vnf_nines'):.1f}",
                      f"{f(r.num(f'{q}.service_downtime_s_per_year'))} s",
                      f"{r.num(f'{q}.service_nines'):.1f}"])
    srows = []
    for v in r.get("summary.state", dict):
        q = f"summary.state.{v}"
        srows.append([v, "yes" if r.get(f"{q}.replay", bool) else "no",
                      f(r.num(f"{q}.sent")), f(r.opt(f"{q}.lost_over_run")),
                      f(r.opt(f"{q}.lost_in_failures")), f(r.opt(f"{q}.duplicate_replies"))])
    inv = "summary.invariants"
    two = r.get(f"{inv}.two_live_copies.count", int)
    lost_vnf = r.get(f"{inv}.vnf_lost.count", int)
    mism = r.get(f"{inv}.view_mismatch.count", int)
    gave_up = r.get(f"{inv}.manager_gave_up", int)
    scans = r.get(f"{inv}.watcher.scans", int)
    period = r.num(f"{inv}.watcher.scan_interval_ms_p50")
    fewest = min(r.get(f"summary.by_type.{t}.faults", int) for t in by)
    probe_min = r.num("summary.probe_s") / 60
    timings = r.data["config"].get("timings", r.data["config"].get("detection_timings", ""))
    text = f"""\
A service of several VNFs — some reached directly, some behind the forwarder with replay,
one a two-VNF chain — runs on emulated hosts under client traffic and a 200 Hz
availability probe per VNF for {f(probe_min, 1)} minutes, while faults of every type are
injected at random times into random targets (at least {fewest} of each type here). The
fault rate is accelerated by orders of magnitude over real life, so the measured
availability is that of a service failing every few seconds; the per-failure downtime is
the figure that carries over, and the extrapolation below applies it to stated real-life
failure rates. Detection timings: {timings or "as in the JSON's config"}.

{table(["Fault", "Faults", "VNF failures", "Recovered", "Strategies", "Downtime p50",
        "p95", "max", "Detect p50", "Lost with replay", "Lost direct p50"], rows,
       "lrrrlrrrrrr")}

*Lost with replay* sums, per failure of a replayed VNF, the datagrams its counter no
longer includes half a second after the recovery compared with before (negative where a
counter later ran ahead of that reference); the table below gives the unambiguous end
state: what each VNF counted against what its client sent over the whole run, where a
restart (no usable checkpoint), a VNF healed by hand, or a replay overflow all count.

{table(["VNF", "Replay", "Sent", "Lost over the run", "Of which in failures",
        "Duplicate replies"], srows, "llrrrr")}

**Availability measured during the campaign** (all downtime, and only the downtime that
overlaps an injected failure — the rest is checkpoint freezes and CPU stalls of this
2-vCPU machine):

{table(["", "Available", "Nines", "Failures only", "Nines"], vrows, "lrrrr")}

**Extrapolated to real-life failure rates** (downtime per failure as measured, times the
stated rate; the service sum is an upper bound since one host fault downs several VNFs):

{table(["Assumption", "Downtime per VNF-year", "Nines", "Service per year", "Nines"],
       xrows, "lrrrr")}

**Invariants**, watched for the whole run by a separate process scanning every host's
VNF cgroups ({scans} scans, every {ms(period)} ms median): two live copies of a VNF:
**{two}**; VNFs lost: **{lost_vnf}** (manager gave up: {gave_up}); manager's view not
matching what runs: **{mism}**."""
    return text + _campaign_every_component(r), []


def _campaign_every_component(r: Result) -> str:
    """The forwarder pair's and the agents' faults, in a campaign that injected them
    (results before it did render as they were)."""
    inv = "summary.invariants"
    if "two_forwarder_owners" not in r.get(inv, dict):
        return ""
    by = r.get("summary.by_type", dict)

    def mm(key: str) -> str:
        return f"{ms(r.opt(key + '.median'))} / {ms(r.opt(key + '.max'))}"

    frows, arows = [], []
    for t in by:
        p = f"summary.by_type.{t}"
        if "forwarder" in by[t]:
            q = f"{p}.forwarder"
            lost = r.get(f"{q}.lost_in_flight", dict)
            frows.append([r.get(f"{p}.label", str), str(r.get(f"{p}.faults", int)),
                          str(r.get(f"{q}.takeovers", int)), mm(f"{q}.grant_ms"),
                          mm(f"{q}.arp_ms"),
                          ", ".join(f"{k} {mm(f'{q}.silence_ms.{k}')}"
                                    for k in r.get(f"{q}.silence_ms", dict)) or "–",
                          ", ".join(f"{k} {f(r.num(f'{q}.lost_in_flight.{k}'))}"
                                    for k in lost) or "–"])
        if "agent" in by[t]:
            q = f"{p}.agent"
            e = f"{q}.expected"
            arows.append([r.get(f"{p}.label", str), str(r.get(f"{p}.faults", int)),
                          f"{f(r.opt(f'{q}.back_s.median'), 2)} / "
                          f"{f(r.opt(f'{q}.back_s.max'), 2)}",
                          f"{r.get(f'{e}.none', int)} / {r.get(f'{e}.either', int)} / "
                          f"{r.get(f'{e}.fence', int)}",
                          str(r.get(f"{q}.fenced_faults", int))])
    owners = r.get(f"{inv}.two_forwarder_owners.count", int)
    rounds = r.get(f"{inv}.two_forwarder_owners.rounds", int)
    unexpected = r.get(f"{inv}.unexpected_recoveries.count", int)
    un = r.get("summary.unavoidable_loss.total", dict)
    return f"""

**The forwarder pair and the agents fail too.** The replayed VNFs reach their clients
through a forwarder pair (one active, one standby); its active forwarder is killed, or
its ingress host loses power, only while the pair is whole and in sync. *Grant*: when the
manager gave the standby the active's place; *ARP*: when another forwarder first
answered ARP for the pair's upstream address; *silence*: the longest gap in a replayed
flow's replies (ms after the fault, median / max); *lost in flight*: datagrams the
VNFs' state lacks after the takeover, unavoidable (as through a router that fails) and
counted apart from replay's 0-lost invariant:

{table(["Fault", "Faults", "New active", "Grant", "ARP", "Silence", "Lost in flight"],
       frows, "lrrrrll")}

Agents are killed, restarted (SIGTERM) or stopped (SIGSTOP, 0.1–5 s); a stall must fence
the host's VNFs when longer than the agent grace, and nothing else may recover a VNF:

{table(["Fault", "Faults", "Agent back s (median / max)", "Stalls: none / either / fence",
        "Faults that fenced VNFs"], arows, "lrrlr")}

Two forwarders answering ARP for one address in one round: **{owners}** ({rounds} rounds,
every {f(r.num(f"{inv}.two_forwarder_owners.period_ms"))} ms). Recoveries without a fault
that may cause one: **{unexpected}**. Losses replay cannot prevent, per VNF:
{", ".join(f"{k} {f(r.num(f'summary.unavoidable_loss.total.{k}'))}" for k in un) or "none"}."""


def before_leases(r: Result) -> str:
    """The same experiment with the code before leases stretched, if its JSON is kept."""
    path = r.path.parent / "history" / "scale-n100-before-leases.json"
    if not path.is_file():
        return ""
    try:
        old = Result("scale", path, json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from exc
    p = "summary.points.100"
    return (
        "Before leases stretched under strain (docs/architecture.md), protection collapsed: "
        "a starved agent missed the fixed 250 ms fencing timeout and killed its own VNFs, "
        "whose recoveries added load. At N=100 with that code (`results/history/"
        f"{path.name}`, {old.get('machine.date', str)[:10]}): "
        f"{old.get(f'{p}.health.spurious_heals', int):,} recoveries without a fault, "
        f"{old.get(f'{p}.health.agent_fenced', int)} self-fencings, checkpoint lag "
        f"{f(old.opt(f'{p}.checkpoint.ratio.p95'), 2)}x at p95, host crashes detected "
        f"after {ms(old.opt(f'{p}.host_loss.detect_ms.median'))} ms (median). ")


def sec_scale(r: Result) -> tuple[str, list[str]]:
    counts = [str(c) for c in r.get("summary.counts", list)]
    rows = []
    for n in counts:
        p = f"summary.points.{n}"
        pt = r.get(p, dict)
        if pt.get("error"):
            rows.append([n, f"failed: {str(pt['error'])[:60]}"] + ["–"] * 8)
            continue
        rows.append([
            n, "yes" if pt.get("ok") is True else "no" if pt.get("ok") is False else "–",
            f"{r.num(f'{p}.checkpoint_interval_s'):g}",
            ms(r.opt(f"{p}.process_exit.detect_ms.median")),
            ms(r.opt(f"{p}.host_loss.detect_ms.median")),
            ms(r.opt(f"{p}.host_loss.all_answering_ms.median")),
            f"{f(r.opt(f'{p}.checkpoint.ratio.median'), 2)} / "
            f"{f(r.opt(f'{p}.checkpoint.ratio.p95'), 2)}",
            f"{f(r.opt(f'{p}.checkpoint.achieved_total_per_s'), 1)} / "
            f"{f(r.opt(f'{p}.checkpoint.required_total_per_s'), 1)}",
            f(r.opt(f"{p}.cpu_pct.manager_pct"), 1),
            f(r.opt(f"{p}.memory_mib.manager_rss_max"), 0),
        ])
    policy = r.get("summary.interval_policy", str)
    facts = []
    for n in counts:
        p = f"summary.points.{n}"
        if r.get(p, dict).get("error"):
            continue
        cost = r.opt(f"{p}.checkpoint.agents_cpu_ms_per_checkpoint")
        facts.append(
            f"at N={n} the machine was {f(r.opt(f'{p}.cpu_pct.machine_busy_pct'))} % busy, "
            f"checkpoints cost the agents {f(cost)} CPU-ms each, agents fenced themselves "
            f"{r.get(f'{p}.health.agent_fenced', int)} times and "
            f"{r.get(f'{p}.health.spurious_heals', int)} recoveries happened without a fault")
    collapsed = [n for n in counts if not r.get(f"summary.points.{n}", dict).get("error") and (
        r.get(f"summary.points.{n}.health.agent_fenced", int) > 0
        or r.get(f"summary.points.{n}.health.spurious_heals", int) > 0
        or (r.opt(f"summary.points.{n}.checkpoint.ratio.p95") or 0) > 1.5)]
    if collapsed:
        verdict = (f"At N={', '.join(collapsed)} protection degraded: starved agents missed "
                   "their lease and fenced themselves, or recoveries happened without a fault, "
                   "or checkpoints fell behind. ")
    else:
        verdict = ("At every N, no agent fenced itself and no recovery happened without a "
                   "fault, and checkpoints kept their interval. ")
    findings = ("All five emulated hosts share this machine's two vCPUs, so what limits the "
                "checkpoint rate here is the machine's CPU: " + "; ".join(facts) + ". "
                + verdict + before_leases(r) +
                "A host that stalled now gets a longer lease "
                "and a later suspicion, restores are queued two per host, and heartbeats only "
                "say \"alive\" unless something changed; the price is that a crash on a "
                "strained host is detected and moved later. The agents' own work per "
                "checkpoint (hashing the images, the tar push to the backup, in Python) still "
                "costs several times CRIU's dump.")
    text = f"""\
N protected VNFs (each with a backup and a health probe) on 5 emulated hosts, with the
daemons' default detection timings. Per N: the time to detect a killed VNF and a crashed
host (injection → the manager's `detected`), the time until every VNF of the crashed host
answers again, the checkpoint lag (actual interval between a VNF's consecutive
checkpoints over the configured one), and the manager's CPU (% of one core) and memory.
Checkpoint interval policy: {policy}.

{table(["VNFs", "OK", "Interval s", "Kill detect p50", "Host detect p50",
        "Host's VNFs all back p50", "Lag ratio p50 / p95", "Checkpoints/s done / needed",
        "Manager CPU %", "Manager RSS MiB"], rows)}

{findings}"""
    return text, []


def sec_idle_cost(r: Result) -> tuple[str, list[str]]:
    rows = []
    for n in r.get("summary.points", dict):
        p = f"summary.points.{n}"
        if "cpu_pct" not in r.get(p, dict):
            rows.append([n, f"failed: {str(r.data['summary']['points'][n].get('error'))[:60]}"]
                        + ["–"] * 5)
            continue

        def pair(key: str, p: str = p) -> str:
            return (f"{f(r.num(f'{p}.cpu_pct.{key}.mean'), 2)} / "
                    f"{f(r.num(f'{p}.cpu_pct.{key}.max'), 2)}")

        rows.append([n, pair("agent"), pair("guard"), pair("host"),
                     f(r.num(f"{p}.cpu_pct.manager"), 2),
                     str(r.get(f"{p}.false_suspicions", int)),
                     f(r.opt(f"{p}.rss_mib.agent.mean"))])
    drows = []
    for n in r.get("summary.detection", dict):
        p = f"summary.detection.{n}"
        drows.append([n, f"{r.get(f'{p}.ok', int)}/{r.get(f'{p}.runs', int)}",
                      ms(r.opt(f"{p}.detect_ms.median")), ms(r.opt(f"{p}.detect_ms.p95")),
                      ms(r.opt(f"{p}.detect_ms.max"))])
    window = r.num("config.window_s")
    detect = (f"""

A host crash (uplink deleted, every process of the host killed) is declared DOWN by the
manager after (ms, from the crash to its `host-down` decision):

{table(["Hosts", "Crashes", "DOWN p50", "p95", "max"], drows)}""" if drows else "")
    text = f"""\
The standing cost of membership: N emulated hosts with the manager and no VNF. Each host
runs its agent (an HTTP status report on a change, else every 5 s) and its lease guard
(20 authenticated UDP heartbeats a second to the manager, pings to up to 3 ring peers ten
times a second). CPU over an idle window of {f(window)} s, as % of one core
(utime+stime), mean over the hosts / the busiest host; *host* is the agent and its guard
together; *false suspicions* are host state changes the manager counted while nothing
failed. Before liveness moved to the guard (every agent pinging every other over HTTP 20
times a second), an idle 3-host testbed cost 13 % of a core per agent and 8 % for the
manager. What remains is mostly wake-ups (each costs ~150 µs on this VM): the guard wakes
20 times a second and reads what arrived then, each datagram at its kernel arrival time;
the manager reads them once per loop turn and sleeps until a host could next become
suspect, so it grows with the hosts' datagrams (about 0.3 % of a core per host).

{table(["Hosts", "Agent", "Guard", "Host (agent + guard)", "Manager", "False suspicions",
        "Agent RSS MiB"], rows)}{detect}{_tls_heartbeats(r)}"""
    return text, []


def _tls_heartbeats(r: Result) -> str:
    if "tls_compare" not in r.get("summary", dict):
        return ""
    p = "summary.tls_compare"
    rows = [[label] + [f(r.num(f"{p}.{k}.{side}"), 3) for k in
                       ("guard", "agent", "manager", "heartbeats")]
            for label, side in (("TLS, per-host keys", "tls"), ("no TLS, one key", "plain"))]
    rows.append(["ratio"] + [f"{r.num(f'{p}.{k}.ratio'):.2f}×" for k in
                             ("guard", "agent", "manager", "heartbeats")])
    return f"""

**The cost of TLS and per-host heartbeat keys** (issue 12): the same idle window at
N = {r.get(f"{p}.hosts", int)} on a testbed without TLS (one heartbeat key derived from the
cluster token, plain HTTP), in the same run. Mean % of a core; *heartbeats* is every guard
plus the manager (target ≤ 1.2×):

{table(["", "Guard", "Agent", "Manager", "Heartbeats"], rows)}"""


def sec_tcp_lock(r: Result) -> tuple[str, list[str]]:
    rows = []
    for i, _ in enumerate(r.get("scenarios", list)):
        p = f"scenarios.{i}"
        rows.append([r.get(f"{p}.scenario", str), r.get(f"{p}.lock", str),
                     str(r.get(f"{p}.checkpoints", int)),
                     f"{f(r.opt(f'{p}.frozen_ms.median'), 1)} / "
                     f"{f(r.opt(f'{p}.frozen_ms.p95'), 1)}",
                     f(r.opt(f"{p}.rtt_ms.p99"), 1), f(r.opt(f"{p}.rtt_ms.max")),
                     f(r.opt(f"{p}.stalls_per_checkpoint"), 2),
                     f"{r.get(f'{p}.lost', int)} of {r.get(f'{p}.requests', int)}"])
    text = f"""\
What the TCP network lock of a checkpoint costs. A VNF serving TCP and UDP echo is
checkpointed every {f(r.num("config.interval_s"), 1)} s while one client at a time talks
to it for {f(r.num("config.seconds"))} s. With `network_lock: auto` the dump locks the
VNF's netns (every packet dropped) only while the VNF holds an established TCP
connection, so that no byte is acknowledged after CRIU read the socket queues; *udp-locked*
is the UDP client while one idle TCP connection is held open, *tcp-unlocked* the TCP
client with `network_lock: skip` (unsafe for a restore; shown for the cost). A stall is a
request that took more than {f(r.num("config.stall_s") * 1000)} ms; a UDP request is lost
when no answer came within {f(r.num("config.udp_timeout_s"))} s.

{table(["Scenario", "Lock", "Checkpoints", "Frozen ms p50 / p95", "RTT p99 ms",
        "RTT max ms", "Stalls per checkpoint", "UDP lost"], rows)}

The lock adds the nftables set-up to the freeze (frozen time above). A TCP segment that
arrives during the freeze is dropped and resent by its sender after the retransmission
timeout (200 ms at least on Linux): a TCP client sees that pause on the checkpoints that
catch it in flight. A datagram is dropped for good: with a lock, a UDP client loses what
it sends during the freeze, which is why `auto` locks only while TCP connections exist.
Holding the packets instead of dropping them (a plug qdisc, absent from this kernel, or
an NFQUEUE) would remove both costs; it is not done."""
    return text, []


def _s_ms(r: Result, dotted: str) -> str:
    """A duration stored in seconds, shown in ms."""
    v = r.opt(dotted)
    return ms(None if v is None else v * 1000)


def _failover_rows(r: Result) -> list[list[str]]:
    rows = []
    for series, label in (("kill", "leader SIGKILL"),
                          ("hang", "leader SIGSTOP (hung; resumed after the takeover)")):
        p = f"summary.failover.{series}"
        rows.append([
            label, f"{r.get(f'{p}.ok', int)}/{r.get(f'{p}.reps', int)}",
            _s_ms(r, f"{p}.key_deleted_s.median"), _s_ms(r, f"{p}.deleted_to_leading_s.median"),
            f"{_s_ms(r, f'{p}.leading_s.median')} / {_s_ms(r, f'{p}.leading_s.p90')} / "
            f"{_s_ms(r, f'{p}.leading_s.max')}",
            f"**{_s_ms(r, f'{p}.write_s.median')}** / {_s_ms(r, f'{p}.write_s.p90')} / "
            f"{_s_ms(r, f'{p}.write_s.max')}"])
    return rows


def sec_manager_failover(r: Result) -> tuple[str, list[str]]:
    members = r.get("config.etcd_members", int)
    ttl = r.num("config.election_ttl_s")
    fo = "summary.failover"
    lat_rows = []
    for kind in r.get("summary.latency", dict):
        p = f"summary.latency.{kind}"
        lat_rows.append([
            kind, f"{f(r.num(f'{p}.sqlite.p50'), 2)} / {f(r.num(f'{p}.sqlite.p99'), 2)}",
            f"{f(r.num(f'{p}.etcd.p50'), 2)} / {f(r.num(f'{p}.etcd.p99'), 2)}",
            f"{r.num(f'{p}.ratio_p50'):.0f}×",
            f"{f(r.num(f'{p}.sqlite.cpu_ms_mean'), 2)} / {f(r.num(f'{p}.etcd.cpu_ms_mean'), 2)}"])
    c = "summary.cpu"
    procs = (("manager_sqlite", "manager, SQLite"), ("manager_etcd_leader", "manager, etcd leader"),
             ("manager_etcd_follower", "manager, etcd follower"),
             ("etcd_members", f"etcd ({members} members)"))
    cpu_rows = [[label, f(r.num(f"{c}.processes.{k}.mean"), 1),
                 f(r.num(f"{c}.processes.{k}.p90"), 1),
                 f(r.num(f"{c}.processes.{k}.runqueue_wait_pct"), 1),
                 f(r.num(f"{c}.processes.{k}.rss_mib"))] for k, label in procs]
    work_rows = []
    for key, label, digits in (("checkpoints_per_s", "checkpoints/s done", 2),
                               ("checkpoints_needed_per_s", "checkpoints/s due", 2),
                               ("probes_per_s", "health probes/s answered", 0),
                               ("probes_needed_per_s", "health probes/s due", 0),
                               ("status_reports_per_s", "agents' status reports/s", 1),
                               ("heals_in_window", "recoveries without a fault", 0)):
        work_rows.append([label] + [f(r.num(f"{c}.work.{store}.{key}"), digits)
                                    for store in ("sqlite", "etcd")])
    n = r.get(f"{c}.vnfs", int)
    reqs = r.get(f"{c}.etcd_requests_per_s", dict)
    top = ", ".join(f"{k} {f(float(v))}" for k, v in sorted(reqs.items(), key=lambda kv: -kv[1])
                    if isinstance(v, int | float) and v >= 0.5)
    sq, lead = r.num(f"{c}.manager_pct.sqlite"), r.num(f"{c}.manager_pct.etcd_leader")
    etcd_cpu = r.num(f"{c}.etcd_members_pct")
    key_share = r.num(f"{fo}.kill.key_deleted_s.median") / r.num(f"{fo}.kill.write_s.median")
    checks = "\n".join(f"- {'PASS' if ok else '**MISS**'}: {t} (measured {v})"
                        for t, ok, v in targets(r))
    text = f"""\
Three `nfvha manager --member-id mK --election-ttl {f(ttl)}` processes on a {members}-member
etcd cluster on loopback (etcd's raft timings halved, so that it grants the 1 s lease),
with an empty store and no agents. The leader is found through every member's
`GET /nfvha/v1/cluster`, polled every {f(r.num("config.poll_s") * 1000)} ms, then after a
random wait (a random phase of its renewal cycle) sent SIGKILL, or SIGSTOP (a hung
leader, resumed after the takeover); {r.get("config.reps", int)} repetitions each. *New
leader* is the first answer `leading: true` from another member, *write accepted* the
first `POST /nfvha/v1/vnfds` (sent every 10 ms to the surviving members, a 307 followed)
that a member accepted: the new leader acting. *Key removed* comes from a watch on the
leader key: when it was deleted (by a follower that saw no beat for `hold + margin`, or by
etcd when the lease ran out), and *→ new leader* the rest. Times in ms after the fault,
p50 (and p90 / max):

{table(["Fault", "OK", "Key removed", "→ new leader", "New leader", "Write accepted"],
       _failover_rows(r), "lrrrrr")}

Over {r.get(f"{fo}.samples_answered", int):,} answers of the members, two members answered
`leading: true` less than {f(r.num("config.fresh_s") * 1000)} ms apart
{r.get(f"{fo}.overlaps_total", int)} times, and a hung leader resumed after the takeover
answered `leading: true` {r.get(f"{fo}.hang.resumed_leading_answers", int)} times; it
followed the new leader {_s_ms(r, f"{fo}.hang.resumed_following_s.median")} ms after SIGCONT
(median). {key_share * 100:.0f} % of the median is the wait until the dead leader's key is
removed. The leader renews every {f(r.num("config.renew_s") * 1000)} ms: a keepalive of its
lease and a *beat*, a rewrite of its key that the followers read (every 50 ms). A follower
that has read the same beat for `hold + margin` ({f(r.num("config.takeover_s") * 1000)} ms)
removes the key, on condition that it still shows that beat, and campaigns: the leader's
own leadership ran out `margin` before (`nfvha.ha.election`). So the key goes between
`hold + margin` minus one renewal interval and `hold + margin` after the fault, plus a
read; then the follower wins the campaign (a lease grant and a create, two commits) and
starts its term from the store. Neither a SIGKILL nor a hang is told to etcd, so both
wait alike; a leader that resigns (a clean stop) revokes its lease and is replaced at the
next read. Before the beats a successor waited for etcd to expire the lease (up to the TTL
after the last keepalive, then etcd 3.4's 500 ms scan for expired leases): 1.28 s median
in the run of 2026-12-07 17:33 on this machine, a MISS of the 1 s target.

**State-store latency, SQLite against etcd.** The same sequence of record writes a manager
makes for {r.get("parts.latency.vnfs", int)} VNFs over {r.get("parts.latency.rounds", int)}
checkpoint rounds (create each VNF record; then per round: read it, update it as
`store.update` does — a read and a compare-and-set —, put a checkpoint record, delete the
oldest beyond the retention), each op on both stores back to back, the order alternating;
etcd with a leader `Guard` set, as a leading manager's store has it. ms per op, p50 / p99,
and the CPU the calling thread spent (what the manager's event loop pays per call):

{table(["Op", "SQLite p50 / p99", "etcd p50 / p99", "etcd / SQLite p50",
        "CPU ms SQLite / etcd"], lat_rows)}

SQLite commits in WAL mode with `synchronous=NORMAL` (the manager's setting: a commit is
not flushed to disk, so a power cut can lose the last ones but never corrupts the file);
an etcd write is committed once a majority of the members has written it to its log and
flushed it, and it is an HTTP round trip through etcd's JSON gateway (JSON and base64 at
both ends). Both write to the same file system ({r.get("config.filesystem", str)}).

**Manager CPU at {n} VNFs.** Two manager clusters at the same time: one manager on SQLite,
and a leader and a follower on etcd, each with {r.get(f"{c}.vnfs", int)} VNFs on
{r.get("parts.cpu.hosts_per_cluster", int)} hosts of its own. The hosts are fake agents in
the benchmark process: their HTTP API answers at once what a real agent answers (a
checkpoint, a push to the backup, a create), and they send what real ones send at the
daemons' rates (status reports when something changed, at least every 5 s; the lease
guards' authenticated UDP heartbeats 20 a second per host, to every manager of the
cluster). The VNFs are deployed through each manager's API as in the scale experiment (1
backup, a UDP health probe every 0.2 s, a checkpoint every
{f(r.num(f"{c}.checkpoint_interval_s"))} s), paced so that their checkpoints are spread
evenly, and their probes are answered from a network namespace holding every VNF address.
So each manager does all its work at {n} VNFs — its loop, the probes, the checkpoints with
their records, replication and pruning, the status reports and heartbeats — except waiting
for real dumps, and only the store differs; the follower shows what a standby costs. CPU is
utime+stime per process over the same {f(r.num(f"{c}.window_s"))} s window, % of one core;
with SQLite the store's work is inside the manager, with etcd part of it is in the etcd
members (shown apart):

{table(["Process", "CPU %", "per-second p90", "waiting for a CPU %", "RSS MiB"], cpu_rows)}

{table(["Work in the window", "SQLite", "etcd"], work_rows)}

On etcd the leading manager used {lead / sq:.1f}× the CPU of the manager on SQLite, and
{(lead + etcd_cpu) / sq:.1f}× counting the etcd members (the machine was
{f(r.num(f"{c}.machine_busy_pct"))} % busy over both its CPUs, the fake agents and the
responder included). Every store call is a synchronous
HTTP round trip on the manager's event loop, and the manager reads its store often: each
health probe re-reads its VNF's record, each turn of the loop lists every VNF record, each
status report looks up every instance it lists, each checkpoint lists the VNF's
checkpoints to prune them. So the leading manager reads from memory
(`EtcdStore.cache_reads`: while its guard holds it is the one writer, so what it wrote is
what etcd holds) and only its writes go to etcd; without that, the first full run of this
experiment had the etcd leader at 1.3× the SQLite manager's CPU (plus 36 % in etcd, 467
reads/s), answering 349 of the 500 probes/s due, and recovering one VNF without a fault.
etcd requests per second during the window, all managers:
{top or "none"}. The work rows show whether both managers kept up (a manager whose loop
falls behind probes and checkpoints less often than due).

{checks}"""
    return text, []



# -- the forwarder pair's takeover (benchmarks/pair_failover.py) -----------------------------

#: Experiments newer than the committed report: each is rendered when its JSON is in the
#: results and left out while it is not (the report then reads as before it existed).
#: Once its first full run is committed, move it to EXPERIMENTS: from then on a missing
#: result stops the report, as for every other experiment.
NEW_EXPERIMENTS: dict[str, str] = {"pair_failover": "benchmarks/pair_failover.py"}

PAIR_FAULTS = (("kill-active", "active forwarder SIGKILL"),
               ("crash-ingress", "its ingress host's power cut"))


def command(name: str) -> str:
    """The script that (re)creates an experiment's JSON."""
    return EXPERIMENTS.get(name) or NEW_EXPERIMENTS[name]


def load_new(results: Path) -> dict[str, Result]:
    """The new experiments whose JSON is there, loaded (and checked) as ``load`` does."""
    return {name: load(results, name) for name in NEW_EXPERIMENTS
            if (results / f"{name}.json").exists()}


def _ms_of(r: Result, dotted: str) -> str:
    """A duration in seconds that must be there (NaN: nothing measured), shown in ms."""
    v = r.num(dotted)
    return ms(None if math.isnan(v) else v * 1000)


def _pair_rows(r: Result) -> list[list[str]]:
    rows = []
    for fault, label in PAIR_FAULTS:
        p = f"summary.faults.{fault}"
        rows.append([
            label, f"{r.get(f'{p}.measured', int)}/{r.get(f'{p}.reps', int)}",
            f"**{_ms_of(r, f'{p}.back_s.p50')}** / {_ms_of(r, f'{p}.back_s.p90')} / "
            f"{_ms_of(r, f'{p}.back_s.max')}",
            f"{_ms_of(r, f'{p}.longest_silence_s.p50')} / "
            f"{_ms_of(r, f'{p}.longest_silence_s.max')}",
            f"{_ms_of(r, f'{p}.to_active_s.p50')} / {_ms_of(r, f'{p}.to_active_s.p90')} / "
            f"{_ms_of(r, f'{p}.to_active_s.max')}",
            f"{f(r.num(f'{p}.nat_lost.p50'))} / {f(r.num(f'{p}.nat_lost.max'))} "
            f"({r.get(f'{p}.nat_lost_outside_window', int)})",
            f"{f(r.num(f'{p}.fm_lost.p50'))} / {f(r.num(f'{p}.fm_lost.max'))}",
            f"{r.get(f'{p}.exact_after_kill', int)}/{r.get(f'{p}.kills_after', int)}"])
    return rows


#: VRRP (RFC 5798, section 6.1): a backup takes over after Master_Down_Interval =
#: 3 × Advertisement_Interval + Skew_Time, Skew_Time = (256 − priority) × interval / 256;
#: here at priority 100, with the default 1 s advertisements and with 100 ms ones.
VRRP_TAKEOVER_S = {1.0: 3 * 1.0 + 156 / 256 * 1.0, 0.1: 3 * 0.1 + 156 / 256 * 0.1}
#: FTMB (SIGCOMM 2015): "can reconstruct lost state in 40-275ms" (its abstract).
FTMB_RECOVERY_MS = (40, 275)
#: FTC (arXiv 2001.03321v1): "recovers lost state in 271 ms" (geo-distributed cloud).
FTC_RECOVERY_MS = 271


def _against(kill_ms: float) -> str:
    """Where the pair's median takeover stands beside VRRP's timers and FTMB's recovery."""
    lo, hi = FTMB_RECOVERY_MS
    vrrp_fast = VRRP_TAKEOVER_S[0.1] * 1000
    ftmb = ("within" if lo <= kill_ms <= hi else "above" if kill_ms > hi else "below")
    return (f"{VRRP_TAKEOVER_S[1.0] * 1000 / kill_ms:.0f}× less than VRRP's default timers, "
            f"{'less' if kill_ms < vrrp_fast else 'more'} than its timers with 100 ms "
            f"advertisements ({f(vrrp_fast)} ms), and {ftmb} the {lo}–{hi} ms FTMB reports")


def sec_pair_failover(r: Result) -> tuple[str, list[str]]:
    t = "config.pair_timings"
    sb = "summary.standby"
    kill, crash = "summary.faults.kill-active", "summary.faults.crash-ingress"
    kill_ms = r.num(f"{kill}.back_s.p50") * 1000
    rate = r.num("config.rate_hz")
    lost_at_rate = rate * r.num(f"{kill}.back_s.p50")
    checks = "\n".join(f"- {'PASS' if ok else '**MISS**'}: {t} (measured {v})"
                       for t, ok, v in targets(r))
    text = f"""\
Two forwarders on two ingress hosts, one active and one standby (`Testbed(forwarders=2)`),
with the manager and 3 hosts, in front of a flow monitor and a UDP NAT, each replayed
behind a service address (a checkpoint every
{f(r.num("config.checkpoint_interval_s"), 1)} s). Each repetition waits until the pair is
in sync and quiet (`GET /nfvha/v1/forwarders`: one active, one standby in sync; then
{f(r.num("config.quiet_s"), 1)} s, so that the active's leases of a lone forwarder have run
out), sends {f(rate)} numbered datagrams/s to each service from a flow of its own, and
after a random share of a checkpoint interval kills the active forwarder (SIGKILL: its
supervisor restarts it and it rejoins as the standby) or cuts its ingress host's power
(links first, then every process; powered on after the takeover);
{r.get("config.reps", int)} repetitions each. *Service back* is from the fault to the end of
the silence of the NAT's replies during which the takeover was granted; the *longest
silence* of the replies around the fault can be longer (a checkpoint's hold right after
the takeover, below);
*new active* is when the manager granted the takeover (its `takeovers` record). *Lost* counts
the NAT datagrams never answered (in parentheses: those sent outside the takeover window,
from the last datagram answered before the fault to service back, must be none) and
the flow monitor's count short of what was sent. After each takeover, once a checkpoint
was taken through the new active, the flow monitor is killed under traffic: *exact* counts
the repetitions whose counter came back equal to what it held before plus what was sent
since. Times in ms after the fault, p50 / p90 / max:

{table(["Fault", "OK", "Service back", "Longest silence p50 / max", "New active",
        "Lost NAT p50 / max",
        "Lost flow monitor p50 / max", "Exact after a VNF kill"], _pair_rows(r), "lrrrrrrr")}

Where the time goes: the standby counts the active lost after
{f(r.num(f"{t}.silence") * 1000)} ms without its heartbeat (one every
{f(r.num(f"{t}.beat") * 1000)} ms), waits until the last heartbeat it acknowledged is worth
nothing more ({f(r.num(f"{t}.lease") * 1000)} ms lease + {f(r.num(f"{t}.margin") * 1000)} ms
margin), and asks the manager, which grants the takeover once every lease it answered the
old active with has run out by the margin: {_ms_of(r, f"{kill}.to_active_s.p50")} ms after a
SIGKILL, {_ms_of(r, f"{crash}.to_active_s.p50")} ms after a power cut (medians). The new
active then opens the services' and flows' sockets and announces the addresses by
gratuitous ARP. The manager checkpoints every replayed VNF
{f(r.num("config.manager.reanchor_after_s"), 1)} s after it grants a takeover, once the
clients have their service back (until then a VNF failure is replayed across the takeover,
and flagged `acrossTakeover`): the flow
monitor's first checkpoint through the new active was cut
{f(r.num(f"{kill}.recheckpoint_s.p50"), 2)} s after the grant following a SIGKILL
({f(r.num(f"{kill}.recheckpoint_s.max"), 2)} s at most) and
{f(r.num(f"{crash}.recheckpoint_s.p50"), 2)} s after a power cut
({f(r.num(f"{crash}.recheckpoint_s.max"), 2)} s at most). A checkpoint holds delivery to its
VNF for its cut, a silence of the replies of its own: the longest silence in the steady
state before a SIGKILL was {_ms_of(r, f"{kill}.steady_max_gap_s.p50")} ms (median), and when
the hold of the checkpoint taken right after a takeover outlasts the takeover's silence,
it is the longest silence of that repetition. What is lost was in flight: from a SIGKILL
to service back {f(lost_at_rate)} datagrams are sent at {f(rate)}/s (median), and a median
{f(r.num(f"{kill}.nat_lost.p50"))} NAT datagrams went unanswered
({r.get(f"{kill}.nat_socket_drops_total", int)} and
{r.get(f"{crash}.nat_socket_drops_total", int)} in all were dropped by the NAT's own socket
buffer, RcvbufErrors, after a SIGKILL and a power cut). In flight includes what
the old active held for a checkpoint when it died:
the oldest datagram lost had been sent {_ms_of(r, f"{kill}.in_flight_s.p50")} ms before a
SIGKILL ({_ms_of(r, f"{kill}.in_flight_s.max")} ms at most) and
{_ms_of(r, f"{crash}.in_flight_s.p50")} ms before a power cut
({_ms_of(r, f"{crash}.in_flight_s.max")} ms at most).

**Standby loss**, under the same traffic: the standby killed (restarted, it resynchronised),
then its host's power cut; {f(r.num(f"{sb}.lost_total"))} datagrams lost, the active stayed
in {r.get(f"{sb}.active_stayed", int)} of {r.get(f"{sb}.measured", int)}, and the
`forwarder-standby-missing` alarm was raised {f(r.num(f"{sb}.alarm_s.p50"), 1)} s after the
power cut (it is raised once the pair has had no standby in sync for
{f(r.num("config.manager.alarm_after_s"), 1)} s), cleared
{f(r.num(f"{sb}.alarm_cleared_s.p50"), 1)} s after the host was back.

**Against other ways to fail over.** VRRP, as keepalived runs it, moves an address once the
backup has heard no advertisement for `3 × Advertisement_Interval + Skew_Time` (RFC 5798,
section 6.1; the skew is under one interval): with the default 1 s advertisements
(keepalived's `advert_int 1`) {f(VRRP_TAKEOVER_S[1.0], 1)} s at priority 100, and
{f(VRRP_TAKEOVER_S[0.1] * 1000)} ms with 100 ms advertisements, about the shortest that
implementations configure (Junos `fast-interval`: 100–999 ms). Those are the protocol's
timers, computed, not measured here, and VRRP moves the address only: a NAT's bindings stay
on the box that failed. FTMB (Sherry et al., SIGCOMM 2015) reconstructs a failed
middlebox's state in {FTMB_RECOVERY_MS[0]}–{FTMB_RECOVERY_MS[1]} ms, and FTC (Ghaznavi et
al., SIGCOMM 2020; arXiv 2001.03321v1) recovers lost state in {FTC_RECOVERY_MS} ms in a
geo-distributed cloud: the papers' own figures, on their hardware, for restoring a
middlebox rather than the address in front of it. The pair moved the address, with each
flow's upstream port and the packet log, and the service answered again {f(kill_ms)} ms
after a SIGKILL (median, on this shared 2-vCPU machine): {_against(kill_ms)}.

{checks}"""
    return text, []

SECTIONS: list[tuple[str, str, Callable[[Result], tuple[str, list[str]]]]] = [
    ("checkpoint_cost", "Checkpoint and restore cost against VNF memory", sec_checkpoint),
    ("recovery", "Recovery time per strategy and failure type", sec_recovery),
    ("rpo", "Checkpoint interval against throughput and state lost (RPO)", sec_rpo),
    ("dataplane", "The data path: forwarder, packet log and replay", sec_dataplane),
    ("campaign", "Availability campaign", sec_campaign),
    ("scale", "Scale: 10 to 100 VNFs on 5 hosts", sec_scale),
    ("idle_cost", "Idle cost of membership, and host-crash detection", sec_idle_cost),
    ("tcp_lock", "The TCP network lock during checkpoints", sec_tcp_lock),
    ("manager_failover", "The manager cluster: leader failover, and etcd against SQLite",
     sec_manager_failover),
    ("pair_failover", "The forwarder pair: takeover under traffic", sec_pair_failover),
]


# Published figures: the papers' own abstracts (citations in the first column).
PUBLISHED: list[list[str]] = [
    ["Remus (Cully et al., NSDI 2008)",
     "whole Xen VM; output buffered until its checkpoint commits", "no",
     "\"seconds of downtime\"", "checkpoints up to 40 per second; all output delayed"],
    ["Pico Replication (Rajagopalan et al., SoCC 2013)", "per-flow middlebox state",
     "yes (flow state API)", "near-instant flow reroute (OpenFlow)",
     "1000 Hz checkpoints; +15.5 % latency, 3.2 % throughput (VM replication: 280 %, "
     "99.5 %)"],
    ["FTMB (Sherry et al., SIGCOMM 2015)", "middlebox state, ordered logging + rollback",
     "yes (Click, annotated state)", "40–275 ms to reconstruct state",
     "+30 µs median latency, 5–30 % throughput"],
    ["FTC (Ghaznavi et al., SIGCOMM 2020)", "chains; state piggybacked along the chain",
     "yes", "–", "2–3.5× FTMB's throughput for chains of 2–5"],
    ["Restart-only supervisor (systemd `Restart=`, Kubernetes pod restart)", "the process",
     "no", "restart time on the same node; pods of a lost node are evicted after the "
     "default 300 s toleration", "none; all in-memory state lost"],
]

COMPARISON_TEXT = """\
The published figures are the papers' own, on their hardware and workloads (Click
middleboxes at 10 GbE line rate, Xen VMs); they are not remeasured here and compare
orders of magnitude, not percentages. What the table shows: nfvha is in the same failover
class as FTMB for state reconstruction without touching the VNF's code — a property only
Remus shares — but its data path is far slower than the Click-based systems', and its
checkpoints are periodic (hundreds of milliseconds apart) rather than per packet, so
without replay a failure loses the updates since the last checkpoint."""


def comparison(res: dict[str, Result]) -> str:
    rec = res["recovery"]
    local = rec.opt("summary.crash-local.downtime_ms.median")
    remote = rec.opt("summary.host-remote.downtime_ms.median")
    fenced = rec.opt("summary.host-remote-fenced.downtime_ms.median")
    dp = res["dataplane"]
    fail = (f"{ms(local)} ms (process crash, restore-local), {ms(remote)} ms (host crash, "
            "restore-remote after the lease)"
            + (f", {ms(fenced)} ms (the same, fenced)" if fenced is not None else "")
            + ": median downtime seen by a client")
    over = (f"+{f(dp.num('summary.added_rtt_p50_us'))} µs median RTT through the forwarder; "
            f"~{ms(dp.num('summary.hold_p50_ms'))} ms delivery hold per checkpoint")
    rows = [*PUBLISHED, ["**nfvha** (this report)", "unmodified Linux process tree with its "
                         "sockets (CRIU), plus a UDP packet log", "**no**", fail, over]]
    return table(["System", "What it protects", "VNF changes", "Failover / recovery",
                  "Normal-operation overhead"], rows, "lllll") + "\n\n" + COMPARISON_TEXT


def shortfalls(res: dict[str, Result]) -> str:
    missed = [(r.name, t, v) for r in res.values() for (t, ok, v) in targets(r) if not ok]
    lines = [f"- **{t}**: measured {v} (`results/{n}.json`)." for n, t, v in missed]
    rpo = res["rpo"]
    if rpo.get("summary.replay.exact", int) < rpo.get("summary.replay.runs", int):
        lines.append(
            "- **Replay under CPU overload.** The restored VNF is replayed at a fixed pace; a "
            "VNF starved of CPU cannot read that fast and its socket "
            "buffer overflows, and a checkpoint's cut can miss datagrams still in a CPU's "
            "backlog. Pacing by the VNF's socket queue (the agent can read it) is the fix.")
    camp = res["campaign"]
    lost = {t: camp.num(f"summary.by_type.{t}.lost_replay.total")
            for t in camp.get("summary.by_type", dict)}
    if any(v > 0 for v in lost.values()):
        lines.append("- **Replay in the campaign** lost datagrams in: " + ", ".join(
            f"{camp.get(f'summary.by_type.{t}.label', str)} ({f(v)})"
            for t, v in lost.items() if v > 0) + ".")
    inv = "summary.invariants"
    # A campaign over every component also counts recoveries nobody asked for.
    every = "two_forwarder_owners" in camp.get(inv, dict)
    broken = {k: camp.get(f"{inv}.{k}.count", int)
              for k in ("two_live_copies", "vnf_lost", "view_mismatch",
                        *(("two_forwarder_owners", "unexpected_recoveries") if every else ()))}
    if any(broken.values()):
        lines.append("- **Invariants broken in the campaign**: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in broken.items() if v) + ".")
    lines += [
        "- **Checkpoint overhead.** Hashing every image file (at commit and before a restore) "
        "comes on top of CRIU, so nfvha's checkpoint and restore cost more than bare CRIU's, "
        "the more so the larger the VNF (the ratios in section 1).",
        "- **Data-path speed.** The Python forwarder handles tens of thousands of datagrams "
        "per second per core, orders of magnitude below the Click/DPDK systems above.",
        "- **Fencing without STONITH or a watchdog.** The lease guard and the agent each "
        "enforce the host lease, so no single process death leaves a VNF running past it; "
        "but if both die at once on a live host, only a fence driver or the kernel "
        "watchdog (off in the testbed) stops the VNFs (docs/architecture.md, *The fencing "
        "guarantee*). Software timers are timers: a host starved of CPU beyond its lease "
        "fences late. Leases stretch under strain (up to 2 s), so a crash on a host that "
        "recently stalled is moved later without a fence driver. An agent that dies and "
        "does not return costs its VNFs the state since the last checkpoint before it died "
        "(no checkpoint is taken without an agent) plus the agent grace (3 s) of waiting.",
        "- **The forwarder pair's windows.** A takeover loses what was in flight (about "
        "0.2 s of traffic, plus what a checkpoint held at that moment), like a router that "
        "fails; a takeover in the first 2 s after a standby rejoined waits for the active's "
        "long lease; `exactly_once` replies the old active held are lost. The standby costs "
        "the active round-trip time and throughput per core (section 0). One forwarder "
        "(`nfvha up --forwarders 1`) still loses replay with its forwarder (an alarm says "
        "so).",
        "- **This machine.** 2 vCPUs shared with other work: absolute figures move by tens "
        "of percent between runs; the ratios measured side by side are the robust ones.",
    ]
    return "\n".join(lines)


def render(results: Path, out: Path, img_dir: Path) -> str:
    return render_all(results, out, img_dir)[0]


def render_all(results: Path, out: Path, img_dir: Path) -> tuple[str, dict[str, Result]]:
    res: dict[str, Result] = {}
    errors: list[str] = []
    for name in EXPERIMENTS:
        try:
            res[name] = load(results, name)
        except ReportError as exc:
            errors.append(str(exc))
    if errors:
        raise ReportError("cannot write the report:\n  " + "\n  ".join(errors))
    res.update(load_new(results))

    parts = [HEADER.format(date=max(r.data["machine"]["date"] for r in res.values()))]
    m = res["recovery"].data["machine"]
    parts.append(
        f"**Machine.** {m.get('os', '?')}, kernel {m['kernel']}, {m['nproc']} vCPUs "
        f"({m.get('cpu_model', '?')}), {f(m.get('memory_mib', 0) / 1024, 0)} GiB, "
        f"{m.get('criu_version', 'CRIU').replace('Version: ', 'CRIU ')}. Each section names "
        "its own run; the JSON files hold the full machine description, the configuration "
        "and every sample.\n")
    parts.append("## Headline figures and targets\n")
    rows = [[t, "PASS" if ok else "**MISS**", v, f"`{r.name}`"]
            for r in res.values() for (t, ok, v) in targets(r)]
    parts.append(table(["Target", "Result", "Measured", "From"], rows, "lcrl") if rows
                 else "No experiment states targets.")
    parts.append("")
    for i, (name, title, fn) in enumerate(SECTIONS, 1):
        if name not in res:
            continue
        r = res[name]
        text, _ = fn(r)
        parts += [f"## {i}. {title}\n", run_note(r), "", text, "",
                  image(r, results, img_dir, out), ""]
    parts += ["## Comparison with published systems\n", comparison(res), ""]
    parts += ["## Where nfvha falls short\n", shortfalls(res), ""]
    parts += [FOOTER]
    return "\n".join(parts), res


HEADER = """\
# Evaluation

<!-- Generated by benchmarks/report.py from results/*.json ({date}). Do not edit by hand:
     rerun `make bench` (quick) or `make bench FULL=1`, or just `.venv/bin/python
     benchmarks/report.py` to rebuild it from the JSON already there. -->

This report is regenerated from the JSON files the benchmarks write; every number in it
comes from those files. Each experiment runs alone (`.venv/bin/python benchmarks/<name>.py
[--quick]`) or all together with `make bench` (quick mode, a few minutes) or
`make bench FULL=1` (full mode, repeated runs for medians and p95).
"""

FOOTER = """\
## Reproducing

```
make bench            # every experiment in quick mode, then this report
make bench FULL=1     # full mode (about an hour and a half on 2 vCPUs)
.venv/bin/python benchmarks/report.py   # only rebuild this file from results/*.json
```
"""


README_BEGIN = "<!-- figures:begin (generated by benchmarks/report.py; do not edit) -->"
README_END = "<!-- figures:end -->"


def headline_rows(res: dict[str, Result]) -> list[list[str]]:
    """The README's table of headline figures, each from the JSON that measured it."""
    rec, cp, dp = res["recovery"], res["checkpoint_cost"], res["dataplane"]
    rows = [
        ["process crash, restore-local: downtime seen by a 1 kHz client",
         f"{ms(rec.num('summary.crash-local.downtime_ms.median'))} ms"],
        ["host crash, restore-remote / standby: downtime",
         f"{ms(rec.num('summary.host-remote.downtime_ms.median'))} / "
         f"{ms(rec.num('summary.host-standby.downtime_ms.median'))} ms"],
        *([["host crash, restore-remote, fenced (STONITH) instead of waiting out the lease",
            f"{ms(rec.num('summary.host-remote-fenced.downtime_ms.median'))} ms"]]
          if rec.opt("summary.host-remote-fenced.downtime_ms.median") is not None else []),
        ["host-crash detection (second path confirmed)",
         f"{ms(rec.num('summary.host-remote.detect_ms.median'))} ms"],
    ]
    sizes = sorted(cp.get("summary.warm", dict), key=int)
    at = "16" if "16" in sizes else sizes[0]
    rows.append([f"CRIU frozen time, {at} MiB VNF",
                 f"{ms(cp.num(f'summary.warm.{at}.nfvha.frozen_ms.median'))} ms"])
    rows.append(["forwarder: added RTT / CPU per datagram",
                 f"{f(dp.num('summary.added_rtt_p50_us'))} µs / "
                 f"{f(dp.num('summary.fwd_us_per_packet_at_peak'))} µs"])
    rows.append(["replay", f"{f(dp.num('summary.replay_ms_per_1000'))} ms per 1,000 datagrams"])
    rows += [row for fn in HEADLINE_EXTRA for row in fn(res)]
    return rows


def _headline_rpo(res: dict[str, Result]) -> list[list[str]]:
    r = res["rpo"]
    rows = []
    for i, row in _rows_by(r, "summary.state_lost"):
        if row.get("mode") == "no-replay" and row.get("checkpoint_interval_s") == 1:
            rows.append([f"updates lost without replay, 1 s checkpoints, "
                         f"{f(r.num('summary.rate_pps'))}/s",
                         f(r.num(f"summary.state_lost.{i}.lost.median"))])
    rows.append(["kills with replay that lost nothing",
                 f"{r.get('summary.replay.exact', int)} of {r.get('summary.replay.runs', int)}"])
    return rows


def _headline_campaign(res: dict[str, Result]) -> list[list[str]]:
    r = res["campaign"]
    faults = sum(r.get(f"summary.by_type.{t}.faults", int) for t in
                 r.get("summary.by_type", dict))
    inv = "summary.invariants"
    broken = (r.get(f"{inv}.two_live_copies.count", int) + r.get(f"{inv}.vnf_lost.count", int)
              + r.get(f"{inv}.view_mismatch.count", int)
              + (r.get(f"{inv}.two_forwarder_owners.count", int)
                 + r.get(f"{inv}.unexpected_recoveries.count", int)
                 if "two_forwarder_owners" in r.get(inv, dict) else 0))
    rows = [["availability campaign: faults injected / invariants broken",
             f"{faults} / {broken}"]]
    for i, _x in _rows_by(r, "summary.extrapolation.scenarios"):
        q = f"summary.extrapolation.scenarios.{i}"
        rows.append([f"VNF availability, {r.get(f'{q}.assumption', str)}",
                     f"{r.num(f'{q}.vnf_availability') * 100:.4f} %"])
        break
    return rows


def _headline_scale(res: dict[str, Result]) -> list[list[str]]:
    r = res["scale"]
    ok = [str(n) for n in r.get("summary.counts", list)
          if not r.get(f"summary.points.{n}", dict).get("error")]
    if not ok:
        return []
    n = max(ok, key=int)
    pt = f"summary.points.{n}"
    return [[f"{n} VNFs on 5 emulated hosts (2 vCPUs): recoveries without a fault / "
             "checkpoint lag p95", f"{r.get(f'{pt}.health.spurious_heals', int)} / "
             f"{f(r.opt(f'{pt}.checkpoint.ratio.p95'), 2)}x"],
            [f"manager CPU with {n} VNFs on 5 hosts",
             f"{f(r.opt(f'{pt}.cpu_pct.manager_pct'), 0)} % of a core"]]


def _headline_idle(res: dict[str, Result]) -> list[list[str]]:
    r = res.get("idle_cost")
    if r is None or r.opt("summary.points.3.cpu_pct.host.mean") is None:
        return []
    big = max(r.get("summary.counts", list))
    return [["idle, 3 hosts and no VNF: CPU per host (agent + its lease guard) / manager",
             f"{r.num('summary.points.3.cpu_pct.host.mean'):.1f} / "
             f"{r.num('summary.points.3.cpu_pct.manager'):.1f} % of a core"],
            [f"idle, {big} hosts: manager CPU",
             f"{r.num(f'summary.points.{big}.cpu_pct.manager'):.1f} % of a core"]]


def _headline_manager_failover(res: dict[str, Result]) -> list[list[str]]:
    r = res.get("manager_failover")
    if r is None:
        return []
    c = "summary.cpu"
    return [["manager cluster (3 managers, etcd, 1 s lease): leader SIGKILL to a write "
             "accepted by the new leader",
             f"{ms(r.num('summary.failover.kill.write_s.median') * 1000)} ms"],
            [f"manager CPU at {r.get(f'{c}.vnfs', int)} VNFs: SQLite / etcd leader (+ etcd)",
             f"{f(r.num(f'{c}.manager_pct.sqlite'))} / "
             f"{f(r.num(f'{c}.manager_pct.etcd_leader'))} "
             f"(+ {f(r.num(f'{c}.etcd_members_pct'))}) % of a core"]]


# Headline rows of the newer experiments; each takes the loaded results.
HEADLINE_EXTRA: list[Callable[[dict[str, Result]], list[list[str]]]] = [
    _headline_rpo, _headline_campaign, _headline_scale, _headline_idle,
    _headline_manager_failover]


def readme_block(res: dict[str, Result]) -> str:
    quick = sorted(r.name for r in res.values() if r.quick)
    note = (f" Quick-mode results for {', '.join(quick)}: indicative only." if quick else "")
    return "\n".join([
        README_BEGIN,
        table(["", "measured (medians)"], headline_rows(res), "lr"),
        "",
        f"From `results/*.json`; the full report is "
        f"[`docs/evaluation.md`](docs/evaluation.md).{note}",
        README_END])


def update_readme(text: str, block: str, path: Path) -> str:
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        raise ReportError(f"{path}: no `{README_BEGIN}` ... `{README_END}` block to update")
    return text[:a] + block + text[b + len(README_END):]


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation.md")
    ap.add_argument("--img-dir", type=Path, default=None,
                    help="where plots are copied (default: img/ next to --out)")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md",
                    help="whose figures block to update ('-' for none)")
    args = ap.parse_args(argv)
    img_dir = args.img_dir or args.out.parent / "img"
    readme = None if str(args.readme) == "-" else args.readme
    try:
        text, res = render_all(args.results, args.out, img_dir)
        new_readme = (update_readme(readme.read_text(), readme_block(res), readme)
                      if readme is not None else None)
    except (ReportError, OSError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        print(f"report: {args.out} was not changed", file=sys.stderr)
        return 2
    write_atomically(args.out, text)
    if readme is not None and new_readme is not None:
        write_atomically(readme, new_readme)
    print(f"report: wrote {args.out} from {args.results}/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
