"""The evaluation report is generated from the results JSON, and refuses bad results loudly."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nfvha_bench_report",
                                                  REPO / "benchmarks" / "report.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _report()


def _copy_results(tmp: Path) -> Path:
    out = tmp / "results"
    out.mkdir()
    for name in report.EXPERIMENTS:
        for ext in ("json", "png"):
            shutil.copy(RESULTS / f"{name}.{ext}", out / f"{name}.{ext}")
    return out


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _run(tmp: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    out = tmp / "docs" / "evaluation.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("the previous report\n")
    rc = report.main(["--results", str(results), "--out", str(out), "--readme", "-"])
    return rc, capsys.readouterr().err, out


def test_committed_report_is_exactly_what_the_committed_results_give(tmp_path: Path) -> None:
    """The numbers in docs/evaluation.md come from results/*.json and nowhere else."""
    text, res = report.render_all(RESULTS, tmp_path / "evaluation.md", tmp_path / "img")
    assert text == (REPO / "docs" / "evaluation.md").read_text(), \
        "docs/evaluation.md is stale: run `.venv/bin/python benchmarks/report.py`"
    assert report.readme_block(res) in (REPO / "README.md").read_text(), \
        "README.md's figures are stale: run `.venv/bin/python benchmarks/report.py`"
    assert {p.name for p in (tmp_path / "img").iterdir()} == \
        {f"{n}.png" for n in [*report.EXPERIMENTS, *report.load_new(RESULTS)]}



def _benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, loaded as report.py is: its own summary is what it writes."""
    spec = importlib.util.spec_from_file_location(f"nfvha_bench_{name}",
                                                  REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _pair_failover(results: Path, back_s: tuple[float, ...] = (0.2, 0.25, 0.4)) -> None:
    """results/pair_failover.{json,png} as the benchmark writes them, from repetitions
    made up here (``back_s``: each fault's service-back times) and its own summary."""
    pf = _benchmark("pair_failover")
    plan = pf.Plan(quick=False, reps=len(back_s), standby_reps=1)
    reps = [{"fault": fault, "rep": i, "measured": True, "back_s": back, "silence_s": back,
             "to_active_s": 0.18, "to_active_polled_s": 0.2, "nat_unanswered": 90 + i,
             "nat_unanswered_outside": 0, "nat_lost_counted": 90, "fm_lost": 95,
             "fm_lost_within_window": True, "nat_one_binding_per_flow": True,
             "exact_after_kill": True, "sync_wait_s": 1.0, "steady_max_gap_s": 0.13,
             "in_flight_s": 0.05 + i / 10, "recheckpoint_s": 0.1,
             "longest_silence_s": back + 0.1, "nat_socket_drops": 0}
            for fault in pf.FAULTS for i, back in enumerate(back_s)]
    standby = [{"fault": "standby-loss", "rep": 0, "measured": True, "fm_lost": 0,
                "nat_unanswered": 0, "active_stayed": True, "alarm_s": 3.1,
                "alarm_cleared_s": 2.2}]
    machine = json.loads((RESULTS / "rpo.json").read_text())["machine"]
    result: dict[str, Any] = {
        "benchmark": "pair_failover", "run": {"name": "pair_failover-test", "started": 0.0},
        "machine": machine, "config": pf.run_config(plan, 1), "reps": reps,
        "standby": standby, "unsettled": [], "log_warnings": {}, "complete": True,
        "elapsed_s": 600.0}
    result["summary"] = pf.summarize(result)
    result["targets"] = pf.evaluate_targets(result["summary"])
    (results / "pair_failover.json").write_text(json.dumps(result))
    pf.plot(result, [results / "pair_failover.png"])


def test_the_pair_failover_section_shows_each_fault_against_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    _pair_failover(results)
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc == 0, err
    text = out.read_text()
    assert "## 10. The forwarder pair: takeover under traffic" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| active forwarder SIGKILL |"))
    assert row.split(" | ")[1:4] == ["3/3", "**250** / 370 / 400", "350 / 500"]
    assert row.endswith("| 3/3 |")  # exact after each VNF kill
    assert "- PASS: service back ≤ 300 ms median: active forwarder SIGKILL (measured 250)" \
        in text
    assert "| service back ≤ 300 ms median: active's ingress host power cut | PASS | 250 |" \
        in text  # in the headline table too
    assert (tmp_path / "docs" / "img" / "pair_failover.png").is_file()


def test_a_slow_takeover_is_a_miss(tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    _pair_failover(results, back_s=(0.35, 0.45, 0.5))
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc == 0, err
    assert ("- **MISS**: service back ≤ 300 ms median: active forwarder SIGKILL "
            "(measured 450)") in out.read_text()


def test_a_pair_failover_figure_missing_fails_loudly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    _pair_failover(results)
    _edit(results / "pair_failover.json",
          lambda d: d["summary"]["faults"]["crash-ingress"]["to_active_s"].pop("p90"))
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc != 0
    assert "summary.faults.crash-ingress.to_active_s.p90" in err, err
    assert "benchmarks/pair_failover.py" in err  # says how to regenerate it
    assert out.read_text() == "the previous report\n"

def test_missing_results_fail_loudly_and_keep_the_old_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "results"
    empty.mkdir()
    rc, err, out = _run(tmp_path, empty, capsys)
    assert rc != 0
    for name in report.EXPERIMENTS:
        assert f"{name}.json: missing" in err
    assert "make bench" in err
    assert out.read_text() == "the previous report\n"


@pytest.mark.parametrize(("name", "change", "expect"), [
    ("recovery", None, "not readable JSON"),
    ("checkpoint_cost", lambda d: d["summary"]["warm"]["16"]["nfvha"].pop("frozen_ms"),
     "summary.warm.16.nfvha.frozen_ms.median"),
    ("dataplane", lambda d: d["summary"].__setitem__("added_rtt_p50_us", "fast"),
     "`summary.added_rtt_p50_us` is str"),
    ("campaign", lambda d: d.__setitem__("complete", False), "did not complete"),
    ("scale", lambda d: d.__setitem__("benchmark", "other"), "not 'scale'"),
    ("rpo", lambda d: d.pop("summary"), "missing value `summary`"),
])
def test_malformed_results_fail_loudly_and_name_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, change: Any,
        expect: str) -> None:
    results = _copy_results(tmp_path)
    path = results / f"{name}.json"
    if change is None:
        path.write_text('{"benchmark": "recovery", "summ')  # a torn write
    else:
        _edit(path, change)
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc != 0
    assert f"{name}.json" in err and expect in err, err
    assert f"benchmarks/{name}.py" in err  # says how to regenerate it
    assert out.read_text() == "the previous report\n"


def test_a_missing_plot_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    (results / "recovery.png").unlink()
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc != 0 and "recovery.png: missing plot" in err
    assert out.read_text() == "the previous report\n"


def _with_pair(d: dict[str, Any]) -> None:
    """A dataplane result whose section 0 measured the forwarder pair too."""
    px = d["summary"]["proxies"]
    px["nfvha-pair"] = {**px["nfvha"], "added_p50_us": 211.0, "added_p99_us": 400.0,
                        "best_datagrams_per_core": 123456.0,
                        "standby_us_per_mirrored_datagram": 4.3,
                        "mirror_bytes_per_datagram": 37.5}
    px["pair_added_p50_extra_us"] = 211.0 - px["nfvha"]["added_p50_us"]
    px["pair_added_p99_extra_us"] = 400.0 - px["nfvha"]["added_p99_us"]
    px["pair_per_core_ratio"] = 123456.0 / px["nfvha"]["best_datagrams_per_core"]


def test_the_forwarder_pair_shows_beside_the_lone_forwarder_and_nginx(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    _edit(results / "dataplane.json", _with_pair)
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc == 0, err
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| nfvha forwarder")
            or line.startswith("| nginx UDP")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| nfvha forwarder", "| nfvha forwarder pair (its active, the standby following)",
        "| nginx UDP stream proxy"]
    assert rows[1].split(" | ")[1:] == ["211", "400", "123,456 |"]
    assert "standby\nspends 4.3 µs of CPU per\ndatagram mirrored to it" in text
    assert "carries\n37.5 bytes per datagram of\n32 bytes" in text


def test_a_pair_figure_missing_fails_loudly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)

    def change(d: dict[str, Any]) -> None:
        _with_pair(d)
        del d["summary"]["proxies"]["nfvha-pair"]["mirror_bytes_per_datagram"]

    _edit(results / "dataplane.json", change)
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc != 0
    assert "summary.proxies.nfvha-pair.mirror_bytes_per_datagram" in err, err
    assert out.read_text() == "the previous report\n"


def _with_every_component(d: dict[str, Any]) -> None:
    """A campaign result that injected forwarder and agent faults too."""
    st = {"median": 230.0, "p95": 250.0, "max": 254.0, "mean": 231.0, "n": 2}
    by = d["summary"]["by_type"]
    base = next(iter(by.values()))
    by["forwarder-kill"] = {**base, "label": "active forwarder crash (SIGKILL)", "faults": 2,
                            "forwarder": {"takeovers": 2, "no_new_active": 0, "grant_ms": st,
                                          "arp_ms": {**st, "median": 265.0},
                                          "silence_ms": {"ch": {**st, "median": 681.0}},
                                          "lost_in_flight": {"ch1": 60},
                                          "lost_in_flight_max": {"ch1": 40}}}
    by["agent-stall"] = {**base, "label": "agent stall (SIGSTOP 0.1-5 s)", "faults": 3,
                         "agent": {"back_s": {**st, "median": 2.84, "max": 3.86},
                                   "expected": {"none": 1, "either": 1, "fence": 1},
                                   "fenced_faults": 1}}
    inv = d["summary"]["invariants"]
    inv["two_forwarder_owners"] = {"count": 0, "rounds": 2029, "period_ms": 20.0}
    inv["unexpected_recoveries"]["count"] = 3
    d["summary"]["unavoidable_loss"] = {"events": 2, "total": {"ch1": 60}}


def test_a_campaign_over_every_component_shows_the_pair_the_agents_and_what_broke(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _copy_results(tmp_path)
    _edit(results / "campaign.json", _with_every_component)
    rc, err, out = _run(tmp_path, results, capsys)
    assert rc == 0, err
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| active forwarder crash")
            or line.startswith("| agent stall")]
    assert rows[-2].split(" | ")[1:] == ["2", "2", "230 / 254", "265 / 254", "ch 681 / 254",
                                         "ch1 60 |"]
    assert rows[-1].split(" | ")[1:] == ["3", "2.84 / 3.86", "1 / 1 / 1", "1 |"]
    assert "one address in one round: **0** (2029 rounds" in text
    assert "that may cause one: **3**" in text
    assert "unexpected recoveries 3" in text  # among the shortfalls
