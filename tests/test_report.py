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
        {f"{n}.png" for n in report.EXPERIMENTS}


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
