"""compare(): baselines + methods x seeds -> results.csv, report.md (table, Δm%) and figures."""

from __future__ import annotations

import csv
import io

import pytest

from mtgrad.bench.report import BASELINE, compare
from mtgrad.bench.trainer import delta_m

TINY = {"n_train": 64, "n_test": 32}


def test_compare_writes_table_csv_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    stream = io.StringIO()
    res = compare(
        "linear", ["gd", "pcgrad"], [0, 1], epochs=2, out=tmp_path, batch_size=16, lr=1e-2,
        data_options=TINY, jobs=1, progress=False, stream=stream,
    )
    printed = stream.getvalue()
    assert "| method | task0/mse ↓ | task1/mse ↓ | Δm% ↓ |" in printed
    for name in (BASELINE, "gd", "pcgrad"):
        assert f"| {name} |" in printed

    report = (tmp_path / "report.md").read_text()
    assert res.table in report and "![curves.png](curves.png)" in report
    for fig in ("curves.png", "weights.png", "conflict.png"):
        assert (tmp_path / fig).stat().st_size > 1000

    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # (baseline + 2 methods) x 2 seeds x 2 metrics, plus one Δm% row per method and seed
    assert len(rows) == 3 * 2 * 2 + 2 * 2
    by = {(r["method"], int(r["seed"]), r["metric"]): float(r["value"]) for r in rows}
    hib = {"task0/mse": False, "task1/mse": False}
    for seed in (0, 1):
        base = {m: by[(BASELINE, seed, m)] for m in hib}
        got = {m: by[("pcgrad", seed, m)] for m in hib}
        assert by[("pcgrad", seed, "delta_m%")] == pytest.approx(delta_m(got, base, hib))
        # the baselines are single-task runs: each reached its own task's error on its own
        assert base["task0/mse"] == res.runs[BASELINE][(seed, 0)].test["task0/mse"]

    # Finished runs are reused: a second compare trains nothing and gives the same numbers.
    again = compare(
        "linear", ["gd", "pcgrad"], [0, 1], epochs=2, out=tmp_path, batch_size=16, lr=1e-2,
        data_options=TINY, jobs=1, progress=False, plots=False, stream=io.StringIO(),
    )
    assert again.final == res.final
    assert all(run.resumed_from == 2 for run in again.runs["pcgrad"].values())


def test_compare_rejects_bad_input_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        compare("linear", ["gd", "nope"], [0], out=tmp_path, jobs=1, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        compare("linear", ["gd"], [0, 0], out=tmp_path, jobs=1, progress=False)
    assert not (tmp_path / "runs").exists()


def test_worker_processes_give_the_same_numbers(tmp_path):
    kw = dict(epochs=1, batch_size=16, lr=1e-2, data_options=TINY, progress=False, plots=False)
    one = compare("linear", ["pcgrad"], [0, 1], out=tmp_path / "one", jobs=1, stream=io.StringIO(), **kw)
    two = compare("linear", ["pcgrad"], [0, 1], out=tmp_path / "two", jobs=2, stream=io.StringIO(), **kw)
    assert one.final == two.final and one.delta == two.delta
