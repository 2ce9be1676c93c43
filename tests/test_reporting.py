"""Progress reporting: the plain fallback reports counts, a rate and an ETA."""

from __future__ import annotations

import re

from mtgrad.bench.reporting import PlainProgress, progress_bar


def test_plain_progress_lines_carry_count_rate_and_eta(capsys):
    bar = PlainProgress(total=10, desc="job", initial=2, interval=0.0)
    bar.set_postfix(success="0.50")
    bar.update(3)
    bar.update(5)
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"job: 5/10 steps, \S+ steps/s, ETA \S+ min success=0.50", lines[0].strip())
    assert lines[-1].startswith("job: 10/10 steps") and "ETA 0.0 min" in lines[-1]


def test_progress_bar_modes():
    assert progress_bar(5, "x", False) is None
    assert isinstance(progress_bar(5, "x", "plain"), PlainProgress)


# --------------------------------------------------------------------------------------------
# Figures (mtgrad.bench.figures) and the RL success plot
# --------------------------------------------------------------------------------------------

import csv
import subprocess
import sys

import pytest


def test_matplotlib_is_imported_only_when_a_figure_is_drawn():
    code = ("import sys, mtgrad.bench.figures, mtgrad.bench.report, mtgrad.bench.toy_plots, mtgrad.rl.report; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_panel_grid_wraps_into_rows_of_at_most_four():
    pytest.importorskip("matplotlib")
    from mtgrad.bench.figures import grid_shape, panel_grid

    assert [grid_shape(n) for n in (1, 2, 4, 5, 7, 8, 9, 11)] == [
        (1, 1), (1, 2), (1, 4), (2, 4), (2, 4), (2, 4), (3, 4), (3, 4)]
    fig, axes = panel_grid(7)
    assert len(axes) == 7 and len(fig.axes) == 8
    assert [ax.get_visible() for ax in fig.axes] == [True] * 7 + [False]  # the unused cell hidden
    assert fig.get_layout_engine() is not None  # constrained layout: tick labels are not clipped


def test_mean_band_draws_a_band_only_for_several_seeds():
    pytest.importorskip("matplotlib")
    from mtgrad.bench.figures import mean_band, panel_grid

    _, (ax,) = panel_grid(1)
    line = mean_band(ax, [0, 1, 2], [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], label="pcgrad")
    assert line.get_label() == "pcgrad (n=2)" and list(line.get_ydata()) == [2.0, 3.0, 4.0]
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(2.0 - 2**0.5) and ys.max() == pytest.approx(4.0 + 2**0.5)  # ± sample std
    _, (ax1,) = panel_grid(1)
    assert mean_band(ax1, [0, 1], [[1.0, 2.0]], label="gd").get_label() == "gd (n=1)"
    assert not ax1.collections


def _eval_csv(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "env_steps", "mean_success", "mean_return"])
        w.writerows([step, 2 * step, success, ret] for step, success, ret in rows)
    return str(folder)


def test_rl_success_figure_in_percent_with_seed_bands(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.collections import PolyCollection

    from mtgrad.rl.report import plot_success, success_figure

    seeds = [
        _eval_csv(tmp_path / "pcgrad-s0", [(0, 0.0, 1.0), (100, 0.5, 2.0), (200, 1.0, 3.0)]),
        _eval_csv(tmp_path / "pcgrad-s1", [(0, 0.2, 1.0), (100, 0.7, 4.0), (200, 0.8, 5.0)]),
        _eval_csv(tmp_path / "pcgrad-s2", [(0, 0.1, 1.0), (100, 0.6, 3.0)]),  # stopped early
    ]
    single = _eval_csv(tmp_path / "mean-s0", [(0, 0.1, 1.0), (100, 0.2, 1.0), (200, 0.3, 1.0)])
    fig = success_figure({"pcgrad": seeds, "mean": single}, title="custom")
    success, ret = fig.axes[:2]
    assert "(%)" in success.get_ylabel() and "%" not in ret.get_ylabel()
    for ax in (success, ret):
        assert ax.get_xlabel() == "environment steps per task"
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1  # pcgrad's only
    lines = {ln.get_label(): ln for ln in success.get_lines()}
    assert set(lines) == {"pcgrad (n=3)", "mean (n=1)"}
    assert list(lines["pcgrad (n=3)"].get_xdata()) == [0, 100]  # the steps every seed reached
    assert list(lines["pcgrad (n=3)"].get_ydata()) == pytest.approx([10.0, 60.0])
    assert list(lines["mean (n=1)"].get_ydata()) == pytest.approx([10.0, 20.0, 30.0])
    plot_success({"mean": single}, str(tmp_path / "success.png"))  # a plain folder still works
    assert (tmp_path / "success.png").stat().st_size > 1000


def test_rl_summary_table_gives_success_in_percent():
    from mtgrad.rl.report import summary_table

    table = summary_table([{"method": "pcgrad", "seed": 0, "env_steps": 2000, "best_success": 0.75,
                            "final_eval": {"mean_success": 0.5, "mean_return": 12.34}}])
    assert "final success (%)" in table and "| pcgrad | 0 | 2,000 | 50.0 | 75.0 | 12.3 | – | – |" in table


def test_an_interrupted_worker_pool_stops_its_workers_instead_of_waiting():
    # Leaving a plain ProcessPoolExecutor waits for every queued job (Ctrl-C in `compare` went on
    # for minutes); worker_pool cancels the queue and stops the running workers.
    import time

    from mtgrad.bench.workers import worker_pool

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with worker_pool(2) as pool:
            for _ in range(4):
                pool.submit(time.sleep, 60)
            workers = list(pool._processes.values())  # started by the first submissions
            raise KeyboardInterrupt
    assert time.monotonic() - started < 30  # the jobs alone would take 120 s
    assert workers and not any(w.is_alive() for w in workers)
    with worker_pool(2) as pool:  # an uninterrupted pool returns its results
        assert list(pool.map(abs, [-1, -2])) == [1, 2]
