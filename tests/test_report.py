"""compare(): baselines + methods x seeds -> results.csv, report.md (table, Δm%) and figures."""

from __future__ import annotations

import csv
import io
import re

import pytest

from mtgrad.bench.benchmarks import get_benchmark
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
    with pytest.raises(ValueError, match="specs 'gd' and 'mean' are the same method"):
        compare("linear", ["gd", "mean"], [0], out=tmp_path, jobs=1, progress=False)
    num_tasks = get_benchmark("linear").num_tasks  # compare passes it to the methods
    with pytest.raises(ValueError, match=f"specs 'uw' and 'uw:num_tasks={num_tasks}' are the same method"):
        compare("linear", ["uw", f"uw:num_tasks={num_tasks}"], [0], out=tmp_path, jobs=1, progress=False)
    assert not (tmp_path / "runs").exists()
    # Nothing is written (not even the folder) before every spec is known to build.
    with pytest.raises(ValueError, match="does not take option"):
        compare("linear", ["cagrad:cc=1"], [0], out=tmp_path / "new", jobs=1, progress=False)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="method 'gls' cannot accumulate micro-batches"):
        compare("linear", ["pcgrad", "gls"], [0], out=tmp_path / "new", micro_batches=2, jobs=1, progress=False)
    with pytest.raises(ValueError, match="more than the 16 examples of a batch"):
        compare("linear", ["pcgrad"], [0], out=tmp_path / "new", batch_size=16, micro_batches=20, jobs=1, progress=False)
    assert not (tmp_path / "new").exists()


def test_worker_processes_give_the_same_numbers(tmp_path):
    kw = dict(epochs=1, batch_size=16, lr=1e-2, data_options=TINY, progress=False, plots=False)
    one = compare("linear", ["pcgrad"], [0, 1], out=tmp_path / "one", jobs=1, stream=io.StringIO(), **kw)
    two = compare("linear", ["pcgrad"], [0, 1], out=tmp_path / "two", jobs=2, stream=io.StringIO(), **kw)
    assert one.final == two.final and one.delta == two.delta


# --------------------------------------------------------------------------------------------
# The table and the figures as a paper would print them (issue 13)
# --------------------------------------------------------------------------------------------

from mtgrad.bench import report
from mtgrad.bench.report import CompareResult, format_table, table_caption, table_note


def _synthetic(seeds, baseline, value, metric="task0/mse", hib=False):
    """A CompareResult with one method and one metric, no runs: enough for the table and its note."""
    res = CompareResult("linear", ["gd"], list(seeds), [metric], {metric: hib})
    res.final = {BASELINE: {s: {metric: baseline} for s in seeds}, "gd": {s: {metric: value + 0.01 * s} for s in seeds}}
    res.delta = {"gd": {s: delta_m(res.final["gd"][s], res.final[BASELINE][s], {metric: hib}) for s in seeds}}
    return res


def test_one_seed_table_prints_no_spread_and_says_n1():
    one = _synthetic([0], 0.5, 0.6)
    table = format_table(one)
    assert "±" not in table and "| gd | 0.6000 | +20.00 |" in table
    assert "n=1 seed, no spread" in table_caption(one)
    two = _synthetic([0, 1], 0.5, 0.6)
    assert "0.6050 ± 0.0071" in format_table(two) and "n=2 seeds" in table_caption(two)


def test_delta_note_says_what_it_compares_and_flags_a_near_zero_baseline():
    calm = table_note(_synthetic([0, 1], 0.5, 0.6))
    assert "single-task" in calm and "B_k" in calm and "Lower is better" in calm
    assert "Caution" not in calm
    # the linear benchmark's case: a baseline MSE of ~0.01 next to a method's ~0.7 gives ~+6900%
    wild = table_note(_synthetic([0], 0.0102, 0.71))
    assert "Caution" in wild and "task0/mse" in wild and "near 0" in wild and "+6861%" in wild
    # one method: its Δm% is one number, not "+x% to +x%"
    assert re.search(r"\(here [+-]\d+%\)", wild), wild


def test_compare_prints_and_writes_the_delta_note(tmp_path):
    stream = io.StringIO()
    res = compare("linear", ["gd"], [0], epochs=1, out=tmp_path, batch_size=16, lr=1e-2, data_options=TINY,
                  jobs=1, progress=False, plots=False, stream=stream)
    note = table_note(res)
    printed = stream.getvalue()
    assert "± 0.00" not in printed and "n=1 seed, no spread" in printed
    assert printed.index(res.table) < printed.index(note)  # under the table
    report_md = (tmp_path / "report.md").read_text()
    assert report_md.index(res.table) < report_md.index(note)


def test_compare_with_micro_batches_says_so_in_the_report(tmp_path):
    compare("linear", ["pcgrad"], [0], epochs=1, out=tmp_path, batch_size=16, micro_batches=2, lr=1e-2,
            data_options=TINY, jobs=1, progress=False, plots=False, stream=io.StringIO())
    assert "batch 16 (accumulated over 2 micro-batches)" in (tmp_path / "report.md").read_text()


@pytest.fixture(scope="module")
def mnist_two_seeds(tmp_path_factory):
    """Accuracy metrics (T = 2), two seeds, two methods: random-blob MultiMNIST, a few steps."""
    pytest.importorskip("matplotlib")
    return compare(
        "multimnist", ["gd", "pcgrad"], [0, 1], epochs=2, out=tmp_path_factory.mktemp("mm"), batch_size=16, lr=1e-3,
        data_options={"n_train": 64, "n_test": 32, "source": "random"}, jobs=1, progress=False, plots=False,
        stream=io.StringIO(),
    )


@pytest.fixture(scope="module")
def shapes_one_seed(tmp_path_factory):
    """T = 5 tasks, one seed, five methods (more panels than fit one row)."""
    pytest.importorskip("matplotlib")
    return compare(
        "shapes", ["gd", "mgda", "pcgrad", "cagrad:c=0.4", "upgrad"], [0], epochs=1, out=tmp_path_factory.mktemp("sh"),
        batch_size=16, data_options={"n_train": 64, "n_test": 64}, jobs=1, progress=False, plots=False,
        stream=io.StringIO(),
    )


def _one_seed(res):
    import dataclasses

    return dataclasses.replace(res, seeds=res.seeds[:1])


def _bands(ax):
    from matplotlib.collections import PolyCollection

    return [c for c in ax.collections if isinstance(c, PolyCollection)]  # fill_between's


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _check_layout(fig):
    """≤ 4 panel columns, every panel labelled on both axes, no tick label outside the canvas."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    for ax in _visible(fig):
        assert ax.get_subplotspec().get_gridspec().ncols <= 4
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        drawn = ax.get_tightbbox(renderer)  # the panel with its tick labels, axis labels and title
        assert box.x0 - 1 <= drawn.x0 and drawn.x1 <= box.x1 + 1, ax.get_title()
        assert box.y0 - 1 <= drawn.y0 and drawn.y1 <= box.y1 + 1, ax.get_title()


def test_curves_plot_accuracy_in_percent_with_a_band_over_seeds(mnist_two_seeds):
    res = mnist_two_seeds
    colors = {m: f"C{k}" for k, m in enumerate(res.methods)}
    fig = report._curves_figure(res, colors)
    _check_layout(fig)
    axes = _visible(fig)
    assert len(axes) == 2
    for ax, metric in zip(axes, res.metrics):
        assert ax.get_ylabel() == "test accuracy (%)"
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "gd (n=2)"]
        seeds = [[h[f"test/{metric}"] for h in res.runs["gd"][s].history] for s in res.seeds]
        expected = [100 * (a + b) / 2 for a, b in zip(*seeds)]  # ×100, as the table prints it
        assert list(line.get_ydata()) == pytest.approx(expected)
        assert len(_bands(ax)) == len(res.methods)  # one band per method
    assert "± 1 sample std" in fig._suptitle.get_text()

    single = report._curves_figure(_one_seed(res), colors)
    for ax in _visible(single):
        assert not _bands(ax)
        assert {ln.get_label() for ln in ax.get_lines()} >= {"gd (n=1)", "pcgrad (n=1)"}
    assert "n=1" in single._suptitle.get_text()


def test_per_step_figures_state_their_smoothing(mnist_two_seeds):
    res = mnist_two_seeds
    colors = {m: f"C{k}" for k, m in enumerate(res.methods)}
    for fig in (report._weights_figure(res), report._conflict_figure(res, colors)):
        _check_layout(fig)
        for ax in _visible(fig):
            assert f"{report.SMOOTH}-step trailing mean" in ax.get_xlabel()
    conflict = _visible(report._conflict_figure(res, colors))[1]
    assert "(%)" in conflict.get_ylabel()
    assert max(max(ln.get_ydata()) for ln in conflict.get_lines()) > 1  # a percentage, not a fraction


def test_two_task_cosine_figure_is_a_histogram_per_method(mnist_two_seeds):
    res = mnist_two_seeds
    fig = report._cosine_histograms(res, {m: f"C{k}" for k, m in enumerate(res.methods)})
    _check_layout(fig)
    axes = _visible(fig)
    assert len(axes) == len(res.methods)
    steps = sum(len(res.runs["gd"][s].steps) for s in res.seeds)
    for ax in axes:
        assert not ax.images  # not a 2×2 matrix of one number
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 30 and sum(heights) == pytest.approx(100.0)  # % of the steps
        assert "cos(g_left, g_right)" in ax.get_xlabel() and f"{steps} steps" in ax.get_title()


def test_many_task_cosines_are_heatmaps_and_panels_wrap(shapes_one_seed):
    res = shapes_one_seed
    fig = report._cosine_heatmaps(res)
    _check_layout(fig)
    axes = _visible(fig)
    assert len(axes) == 5  # 5 methods: a row of 4, then 1 (the rest of the grid hidden)
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
    import numpy as np

    C = np.asarray(axes[0].images[0].get_array(), dtype=float)
    assert C.shape == (5, 5) and np.isnan(np.diag(C)).all()  # the diagonal (1) left out
    for fig in (report._weights_figure(res), report._curves_figure(res, {m: f"C{k}" for k, m in enumerate(res.methods)})):
        _check_layout(fig)
    curves = _visible(report._curves_figure(res, {m: f"C{k}" for k, m in enumerate(res.methods)}))
    assert curves[0].get_ylabel() == "test accuracy (%)" and curves[1].get_ylabel() == "test scale MSE"


def test_plots_write_the_files_the_report_names(mnist_two_seeds, tmp_path):
    figures, note = report._plots(mnist_two_seeds, str(tmp_path))
    assert note == "" and figures == ["curves.png", "weights.png", "conflict.png", "cosines.png"]
    for name in figures:
        assert (tmp_path / name).stat().st_size > 1000


def test_compare_refuses_another_experiments_checkpoints_before_training_anything(tmp_path):
    from mtgrad.bench.trainer import TrainConfig, train

    kw = dict(epochs=1, out=tmp_path, batch_size=16, lr=1e-2, data_options=TINY, jobs=1, progress=False,
              plots=False, stream=io.StringIO())  # fmt: skip
    compare("linear", ["pcgrad"], [0], **kw)
    # Another experiment's run where this compare keeps its PCGrad run of seed 0.
    train(TrainConfig(benchmark="linear", method="mgda", epochs=1, batch_size=16, lr=1e-2, data_options=TINY,
                      out=str(tmp_path / "runs" / "pcgrad" / "seed0"), resume=False, progress=False, tensorboard=False))
    # Seed 1's baselines come first in the run order: they are not trained before the refusal.
    with pytest.raises(ValueError, match=r"runs/pcgrad/seed0/checkpoint\.pt belongs to a different run: method is 'mgda' there"):
        compare("linear", ["pcgrad"], [1, 0], **kw)
    assert not (tmp_path / "runs" / BASELINE / "task0" / "seed1").exists()
