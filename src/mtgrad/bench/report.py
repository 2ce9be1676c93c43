"""Compare methods over seeds on one benchmark and report like a paper (mean ± std, Δm%).

:func:`compare` trains the single-task baselines (one run per task and seed, the same
architecture with one head, equal weighting) and every method × seed with
:func:`mtgrad.bench.trainer.train`, then writes into ``out``:

* ``results.csv``: one row per method / seed / metric with the final test value (the baselines
  as method ``single-task``; each method/seed's Δm% as metric ``delta_m%``);
* ``report.md``: the table (mean ± sample std over seeds of every final test metric and of Δm%
  against the same seed's baselines; one seed: the values alone, captioned n=1), a note under it
  saying what Δm% compares (and which metrics dominate it when a baseline is near 0), and the
  figures;
* ``curves.png`` (test metrics per epoch, accuracies in % as in the table), ``weights.png``
  (task weights per step), ``conflict.png`` (mean gradient cosine and conflict rate per step) and
  ``cosines.png`` (T = 2: histogram of cos(g_1, g_2) over the steps; T > 2: mean cosine of every
  task pair), if matplotlib is installed. Seed means are drawn with a ± 1 sample-std band and
  ``n`` in the legend, per-step curves as a :data:`SMOOTH`-step trailing mean, panels in rows of
  at most four (:mod:`mtgrad.bench.figures`);
* ``runs/<method>/seed<k>/``: each run's CSVs and checkpoint. Runs that already finished there
  are not trained again (their checkpoint is complete), so an interrupted compare resumes.

Runs are independent, so ``jobs`` > 1 trains them in that many worker processes (each with
``threads`` torch threads); the numbers do not depend on ``jobs``.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch

from ..methods.spec import check_distinct
from .benchmarks import get_benchmark
from .figures import SPREAD, legend_columns, mean_band, panel_grid, pyplot, wrap_title
from .reporting import progress_bar, tensorboard_available
from .settings import COMPARE_METHODS as DEFAULT_METHODS
from .settings import COMPARE_SEEDS as DEFAULT_SEEDS
from .trainer import RunResult, TrainConfig, check_accumulable, check_resumable, delta_m, make_method, train

__all__ = [
    "BASELINE",
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "CompareResult",
    "compare",
    "format_table",
    "table_caption",
    "table_note",
]

BASELINE = "single-task"
"""Method name of the single-task baselines in the results."""


@dataclass
class CompareResult:
    """``final[method][seed]``: final test metrics; ``delta[method][seed]``: Δm% vs the baselines;
    ``runs[method][seed]``: the :class:`~mtgrad.bench.trainer.RunResult` (baselines: one per task
    under ``BASELINE``, keyed ``(seed, task)``)."""

    benchmark: str
    methods: list[str]
    seeds: list[int]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    final: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    delta: dict[str, dict[int, float]] = field(default_factory=dict)
    runs: dict[str, dict[Any, RunResult]] = field(default_factory=dict)
    seconds: float = 0.0
    table: str = ""


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", spec.replace(":", "_").replace(",", "_"))


def _run_job(kwargs: dict[str, Any]) -> RunResult:
    """Worker entry point (module level, so it pickles)."""
    return train(TrainConfig(**kwargs))


def _run_bar(total: int, desc: str, enabled: bool):
    """A progress bar counting finished runs (the workers show none)."""
    return progress_bar(total, desc, enabled, unit="run")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _scale(metric: str) -> float:
    """Accuracies are reported in % (×100), every other metric as is."""
    return 100.0 if metric.endswith("/acc") else 1.0


def _cell(values: Sequence[float], digits: int, signed: bool = False) -> str:
    """``mean ± std`` over seeds; one seed has no spread, so only its value (the caption says n=1)."""
    mean, std = _mean_std(values)
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if len(values) == 1 else f"{text} ± {std:.{digits}f}"


def format_table(result: CompareResult) -> str:
    """The markdown table: one row per method, mean ± std over seeds (one seed: the value alone);
    arrows give the direction. :func:`table_caption` and :func:`table_note` go with it."""
    arrows = {m: ("↑" if result.higher_is_better[m] else "↓") for m in result.metrics}
    scale = {m: _scale(m) for m in result.metrics}
    header = ["method"] + [f"{m}{' %' if scale[m] == 100 else ''} {arrows[m]}" for m in result.metrics] + ["Δm% ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in [BASELINE, *result.methods]:
        cells = [method]
        per_seed = result.final[method]
        for m in result.metrics:
            cells.append(_cell([per_seed[s][m] * scale[m] for s in result.seeds], 2 if scale[m] == 100 else 4))
        if method == BASELINE:
            cells.append("0 (ref.)")
        else:
            cells.append(_cell([result.delta[method][s] for s in result.seeds], 2, signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_caption(result: CompareResult) -> str:
    """One line above the table: what its numbers are and over how many seeds."""
    seeds = ", ".join(map(str, result.seeds))
    acc = "; accuracies (/acc) in %" if any(_scale(m) == 100 for m in result.metrics) else ""
    if len(result.seeds) == 1:
        return f"{result.benchmark}: final test metrics of seed {seeds} (n=1 seed, no spread){acc}."
    return (f"{result.benchmark}: final test metrics, mean ± sample std over n={len(result.seeds)} "
            f"seeds ({seeds}){acc}.")


EXPLODES = 100.0
"""A metric whose relative change against its baseline exceeds this many % (the method's value
more than doubles it, or the baseline is near 0 next to the change) dominates the Δm% average."""


def _relative_changes(result: CompareResult) -> dict[str, tuple[float, float, str]]:
    """Per metric: the largest |relative change| (%) of any method's seed mean against the
    baselines' seed mean, that baseline and the method reaching it."""
    out: dict[str, tuple[float, float, str]] = {}
    for m in result.metrics:
        base = statistics.fmean(result.final[BASELINE][s][m] for s in result.seeds)
        for method in result.methods:
            value = statistics.fmean(result.final[method][s][m] for s in result.seeds)
            rel = 100.0 * (value - base) / base if base else math.inf
            if m not in out or abs(rel) > abs(out[m][0]):
                out[m] = (rel, base, method)
    return out


def table_note(result: CompareResult) -> str:
    """The note under the table: what Δm% compares and, when a baseline is near 0 next to the
    methods' values (its relative change explodes), which metrics dominate Δm%."""
    k = len(result.metrics)
    note = (
        f"Δm% = (100/K) Σ_k s_k (M_k − B_k) / B_k over the K = {k} metric{'s' if k > 1 else ''} "
        "(Maninis et al. 2019; CAGrad Sec. 5.2): M_k a method's final test value, B_k the single-task "
        "baseline's (the same architecture trained on task k alone, same seed), s_k = −1 for "
        "higher-is-better metrics and +1 otherwise; per seed, then averaged. Lower is better: "
        "0 is on par with single-task training, negative beats it."
    )
    big = {m: v for m, v in _relative_changes(result).items() if abs(v[0]) > EXPLODES}
    if big:
        parts = []
        for m, (rel, base, method) in big.items():
            s = _scale(m)
            value = statistics.fmean(result.final[method][x][m] for x in result.seeds)
            parts.append(f"{m} {base * s:.4g} (single-task) vs {value * s:.4g} ({method}), {rel:+.0f}%")
        deltas = [statistics.fmean(result.delta[m][x] for x in result.seeds) for m in result.methods]
        low, high = f"{min(deltas):+.0f}%", f"{max(deltas):+.0f}%"
        span = low if low == high else f"{low} to {high}"
        note += (
            f" Caution: a relative change beyond {EXPLODES:.0f}% of the single-task baseline (a method's "
            "value more than doubling it, or a baseline near 0) dominates the average: "
            f"{'; '.join(parts)}. These metrics dominate Δm% (here {span}); compare their columns directly."
        )
    return note


def compare(
    benchmark: str = "multimnist",
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    out: str | os.PathLike = "results/compare",
    *,
    batch_size: int | None = None,
    micro_batches: int = 1,
    lr: float | None = None,
    data_options: dict[str, Any] | None = None,
    jobs: int | None = None,
    threads: int = 1,
    plots: bool = True,
    progress: bool = True,
    stream: TextIO | None = None,
    fresh: bool = False,
) -> CompareResult:
    """Train the baselines and ``methods`` × ``seeds``; write ``results.csv``, ``report.md`` and
    the figures into ``out``; print the table to ``stream`` (stdout). ``micro_batches`` > 1 trains
    every run with gradient accumulation (:class:`~mtgrad.bench.trainer.TrainConfig`). ``jobs=None`` uses one
    worker process per CPU core (runs are independent); ``jobs=1`` runs in this process.
    Every method spec is checked before anything is trained; finished runs under ``out/runs``
    are reused (an interrupted compare resumes) unless ``fresh``. Returns the numbers."""
    stream = sys.stdout if stream is None else stream
    started = time.perf_counter()
    bench = get_benchmark(benchmark)
    methods, seeds = list(methods), [int(s) for s in seeds]
    if not methods:
        raise ValueError("no methods to compare")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    if BASELINE in methods:
        raise ValueError(f"{BASELINE!r} is the baseline every compare trains; it is not a method spec")
    # Validate every spec before spending minutes on the baselines (or writing anything).
    probe = bench.model(list(bench.tasks))
    for spec in methods:
        method = make_method(spec, bench.num_tasks, probe, 0, torch.device("cpu"))
        if micro_batches != 1:
            check_accumulable(method, spec, bench.num_tasks, torch.device("cpu"))
    check_distinct(methods, extra={"num_tasks": bench.num_tasks})
    # The training options too (e.g. more micro-batches than the batch has examples).
    TrainConfig(
        benchmark=bench.name, epochs=epochs, batch_size=batch_size, micro_batches=micro_batches, lr=lr, threads=threads
    ).resolved()
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    common = dict(
        tensorboard=tensorboard_available(),  # checked here so the note is printed once, not per worker
        benchmark=bench.name,
        epochs=epochs,
        batch_size=batch_size,
        micro_batches=micro_batches,
        lr=lr,
        threads=threads,
        data_options=dict(data_options or {}),
        progress=False,
        resume=not fresh,
    )

    jobs_list: list[tuple[str, Any, dict[str, Any]]] = []
    for s in seeds:
        for t in range(bench.num_tasks):
            path = os.path.join(out, "runs", BASELINE, f"{bench.tasks[t].name}", f"seed{s}")
            jobs_list.append((BASELINE, (s, t), dict(common, method="gd", seed=s, tasks=(t,), out=path)))
    for spec in methods:
        for s in seeds:
            path = os.path.join(out, "runs", _slug(spec), f"seed{s}")
            jobs_list.append((spec, s, dict(common, method=spec, seed=s, out=path)))

    # Every run's checkpoint is checked first: one from another experiment in ``out`` stops the
    # compare here, not after minutes of training the runs before it.
    for _, _, kw in jobs_list:
        check_resumable(TrainConfig(**kw))
    n_workers = (os.cpu_count() or 1) if jobs is None else jobs
    n_workers = max(1, min(n_workers, len(jobs_list)))
    bar = _run_bar(len(jobs_list), f"{bench.name} ({n_workers} worker{'s' if n_workers > 1 else ''})", progress)
    results: dict[str, dict[Any, RunResult]] = {}
    try:
        if n_workers == 1:
            for name, key, kw in jobs_list:
                results.setdefault(name, {})[key] = _run_job(kw)
                if bar is not None:
                    bar.update(1)
        else:
            from concurrent.futures import as_completed

            from .workers import worker_pool

            with worker_pool(n_workers) as pool:
                futures = {pool.submit(_run_job, kw): (name, key) for name, key, kw in jobs_list}
                for fut in as_completed(futures):
                    name, key = futures[fut]
                    results.setdefault(name, {})[key] = fut.result()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    metrics = bench.metric_names()
    hib = bench.higher_is_better()
    res = CompareResult(bench.name, methods, seeds, metrics, hib, runs=results)
    res.final[BASELINE] = {s: {} for s in seeds}
    for (s, _t), run in results[BASELINE].items():
        res.final[BASELINE][s].update(run.test)
    for spec in methods:
        res.final[spec] = {s: results[spec][s].test for s in seeds}
        res.delta[spec] = {s: delta_m(res.final[spec][s], res.final[BASELINE][s], hib) for s in seeds}
    res.seconds = time.perf_counter() - started
    res.table = format_table(res)

    _write_results(os.path.join(out, "results.csv"), res)
    figures, note = ([], "figures skipped (--no-plots)") if not plots else _plots(res, out)
    _write_report(os.path.join(out, "report.md"), res, figures, note, common)
    print(f"\n{table_caption(res)}\n", file=stream)
    print(res.table, file=stream)
    print(f"\n{table_note(res)}", file=stream)
    print(f"\nwrote {os.path.join(out, 'report.md')} and results.csv in {res.seconds:.1f} s", file=stream)
    if note:
        print(f"note: {note}", file=stream)
    return res


def _write_results(path: str, res: CompareResult) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "method", "seed", "metric", "value", "higher_is_better", "baseline"])
        for method in [BASELINE, *res.methods]:
            for s in res.seeds:
                for m in res.metrics:
                    w.writerow([res.benchmark, method, s, m, repr(res.final[method][s][m]), hib_str(res, m),
                                repr(res.final[BASELINE][s][m])])
                if method != BASELINE:
                    w.writerow([res.benchmark, method, s, "delta_m%", repr(res.delta[method][s]), "False", "0.0"])


def hib_str(res: CompareResult, metric: str) -> str:
    return str(bool(res.higher_is_better[metric]))


FIGURES = {
    "curves.png": "test metrics per epoch",
    "weights.png": "task weights per training step",
    "conflict.png": "gradient conflict per training step",
    "cosines.png": "cosine between the tasks' gradients over training",
}
"""The figures :func:`compare` draws, with the caption report.md gives each."""


def _in_micro_batches(cfg: TrainConfig) -> str:
    return "" if cfg.micro_batches == 1 else f" (accumulated over {cfg.micro_batches} micro-batches)"


def _write_report(path: str, res: CompareResult, figures: list[str], note: str, common: dict[str, Any]) -> None:
    any_run = res.runs[res.methods[0]][res.seeds[0]].config
    lines = [
        f"# {res.benchmark}: {', '.join(res.methods)}",
        "",
        f"{get_benchmark(res.benchmark).description}.",
        "",
        f"{table_caption(res)} Every run: {any_run.epochs} epochs, batch {any_run.batch_size}{_in_micro_batches(any_run)}, "
        f"Adam lr {any_run.lr}.",
        "",
        res.table,
        "",
        f"*{table_note(res)}*",
        "",
        f"Wall time: {res.seconds:.1f} s. Per-run logs (epochs.csv, steps.csv, checkpoint.pt) are under `runs/`.",
        "",
    ]
    if figures:
        spread = "one seed, no band" if len(res.seeds) == 1 else f"mean over n={len(res.seeds)} seeds, {SPREAD}"
        lines += [f"Figures ({spread}; per-step curves are a {SMOOTH}-step trailing mean):", ""]
    for fig in figures:
        lines += [f"![{fig}]({fig})", "", f"*{fig}: {FIGURES.get(fig, fig)}.*", ""]
    if note:
        lines += [f"Note: {note}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


SMOOTH = 10
"""Window (steps) of the trailing mean in the per-step figures: single steps are noisy."""


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc, q = [], 0.0, []  # trailing moving average, NaNs skipped
    for v in values:
        if not math.isnan(v):
            q.append(v)
            acc += v
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q) if q else math.nan)
    return out


def _metric_label(benchmark: str, metric: str) -> str:
    """The y-label of a test metric, with its unit: accuracies in % (as in the table)."""
    task, _, name = metric.partition("/")
    if name == "acc":
        return "test accuracy (%)"
    if name == "mae":
        unit = ""
        if benchmark == "qm9":
            from .data.qm9 import PAPER_UNITS

            unit = f" ({PAPER_UNITS.get(task, '')})" if PAPER_UNITS.get(task) else ""
        return f"test MAE{unit}"
    if name.endswith("mse"):
        attr = name[: -len("mse")].rstrip("_")
        return f"test {attr} MSE" if attr else "test MSE"
    return f"test {name}"


def _seeds_title(res: CompareResult) -> str:
    """How a figure aggregates the seeds, for its title."""
    if len(res.seeds) == 1:
        return f"seed {res.seeds[0]} (n=1, no spread)"
    return f"mean over n={len(res.seeds)} seeds, {SPREAD}"


def _legend_below(fig: Any, axes: list[Any]) -> None:
    """One legend for the figure, under the panels (a legend inside a panel hides curves)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(fig, len(labels)), fontsize=8,
                   frameon=False)


def _curves_figure(res: CompareResult, colors: dict[str, str]) -> Any:
    """Test metric per epoch, one panel per metric: each method's seed mean (band: ± std), the
    single-task baselines' final value as a dashed line (grey band: their ± std)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = panel_grid(len(res.metrics), extra=(0.0, 0.6))
    n = len(res.seeds)
    for ax, m in zip(axes, res.metrics):
        s = _scale(m)
        for method in res.methods:
            hist = [res.runs[method][seed].history for seed in res.seeds]
            epochs = [h["epoch"] for h in hist[0]]
            mean_band(ax, epochs, [[h[f"test/{m}"] * s for h in runs] for runs in hist],
                      label=method, color=colors[method], marker="o", ms=3)
        mean, std = _mean_std([res.final[BASELINE][seed][m] * s for seed in res.seeds])
        ax.axhline(mean, color="k", ls="--", lw=1, label=f"{BASELINE}, final (n={n})")
        if n > 1:
            ax.axhspan(mean - std, mean + std, color="k", alpha=0.08, lw=0)
        ax.set_title(m.partition("/")[0], fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_metric_label(res.benchmark, m))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle(wrap_title(f"{res.benchmark}: test metrics per epoch, {_seeds_title(res)}", fig.get_figwidth()),
                 fontsize=10)
    return fig


def _step_series(res: CompareResult, method: str, key: str, scale: float = 1.0) -> list[list[float]]:
    """One smoothed per-step series of ``key`` per seed."""
    return [_smooth([r[key] * scale for r in res.runs[method][s].steps], SMOOTH) for s in res.seeds]


def _steps_x(res: CompareResult, method: str) -> list[float]:
    return [r["step"] for r in res.runs[method][res.seeds[0]].steps]


def _weights_figure(res: CompareResult) -> Any:
    """Task weights per step, one panel per method, one line (seed mean, band) per task."""
    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    fig, axes = panel_grid(len(res.methods), extra=(0.0, 0.6))
    for ax, method in zip(axes, res.methods):
        x = _steps_x(res, method)
        drawn = False
        for k, name in enumerate(names):
            series = _step_series(res, method, f"w/{name}")
            if all(math.isnan(v) for s in series for v in s):
                continue
            mean_band(ax, x, series, label=name, color=f"C{k}", with_n=False)
            drawn = True
        if not drawn:  # a loss weighting or a method that logs no weights
            ax.text(0.5, 0.5, "no per-step task weights", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel(f"training step ({SMOOTH}-step trailing mean)", fontsize=9)
        ax.set_ylabel("task weight w_i")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle(wrap_title(f"{res.benchmark}: task weights of the update Σ_i w_i g_i, {_seeds_title(res)}",
                            fig.get_figwidth()), fontsize=10)
    return fig


def _pair_label(names: list[str]) -> str:
    return f"cos(g_{names[0]}, g_{names[1]})" if len(names) == 2 else "cos(g_i, g_j), mean over task pairs"


def _conflict_figure(res: CompareResult, colors: dict[str, str]) -> Any:
    """Per step, smoothed: the mean pairwise cosine of the task gradients and the share of task
    pairs in conflict (cos < 0), in %; one line (seed mean, band) per method."""
    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    fig, axes = panel_grid(2, panel=(4.2, 3.0), extra=(0.0, 0.6))
    for method in res.methods:
        x = _steps_x(res, method)
        mean_band(axes[0], x, _step_series(res, method, "mean_cos"), label=method, color=colors[method])
        mean_band(axes[1], x, _step_series(res, method, "conflict_rate", 100.0), label=method,
                  color=colors[method], clip=(0.0, 100.0))
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set_ylabel(_pair_label(names))
    axes[0].set_title("gradient cosine", fontsize=10)
    pairs = "steps" if len(names) == 2 else "task pairs"  # T = 2: one pair, so a share of steps
    axes[1].set_ylabel(f"{pairs} with cos < 0 (%)")
    axes[1].set_ylim(-3, 103)
    axes[1].set_title("conflict rate", fontsize=10)
    for ax in axes:
        ax.set_xlabel(f"training step ({SMOOTH}-step trailing mean)", fontsize=9)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    fig.suptitle(wrap_title(f"{res.benchmark}: gradient conflict, {_seeds_title(res)}", fig.get_figwidth()),
                 fontsize=10)
    return fig


def _cosine_values(res: CompareResult, method: str, a: str, b: str) -> list[float]:
    """cos(g_a, g_b) at every step of every seed (NaN steps left out)."""
    key = f"cos/{a}/{b}"
    return [r[key] for s in res.seeds for r in res.runs[method][s].steps if not math.isnan(r[key])]


def _cosine_histograms(res: CompareResult, colors: dict[str, str]) -> Any:
    """T = 2: the distribution of cos(g_1, g_2) over the training steps (all seeds pooled), one
    panel per method on shared axes; a 2×2 matrix of means would carry a single number."""
    import numpy as np

    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    values = {m: _cosine_values(res, m, names[0], names[1]) for m in res.methods}
    pooled = [v for vals in values.values() for v in vals]
    lo, hi = (min(pooled + [-0.05]), max(pooled + [0.05])) if pooled else (-1.0, 1.0)
    pad = 0.05 * (hi - lo)
    bins = np.linspace(max(-1.0, lo - pad), min(1.0, hi + pad), 31)
    fig, axes = panel_grid(len(res.methods), panel=(3.2, 2.6), extra=(0.0, 0.3))
    top = 0.0
    for ax, method in zip(axes, res.methods):
        vals = values[method]
        ax.axvline(0.0, color="k", lw=0.8)
        if vals:
            counts, _, _ = ax.hist(vals, bins=bins, weights=[100.0 / len(vals)] * len(vals), color=colors[method],
                                   alpha=0.8, edgecolor="white", linewidth=0.5)
            top = max(top, float(max(counts)))
            mean = statistics.fmean(vals)
            ax.axvline(mean, color="k", ls="--", lw=1)
            conflict = 100.0 * sum(v < 0 for v in vals) / len(vals)
            stats = f"\nmean {mean:+.2f}, cos < 0 at {conflict:.0f}% of steps"  # in the title: never on a bar
        else:
            stats = ""
            ax.text(0.5, 0.5, "no Gramian logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{method} (n={len(res.seeds)}, {len(vals)} steps){stats}", fontsize=9)
        ax.set_xlabel(f"{_pair_label(names)} per step", fontsize=9)
        ax.set_ylabel("steps (%)")
        ax.grid(alpha=0.3)
    for ax in axes:  # shared scales make the panels comparable (set by hand: a hidden panel
        ax.set_xlim(bins[0], bins[-1])  # would otherwise take the tick labels of the one above)
        ax.set_ylim(0, 1.08 * top if top else 1.0)
    seeds = f"seed {res.seeds[0]}, n=1" if len(res.seeds) == 1 else f"n={len(res.seeds)} seeds, pooled"
    fig.suptitle(wrap_title(f"{res.benchmark}: cosine between the two tasks' gradients over all training steps "
                            f"({seeds}); dashed line: mean", fig.get_figwidth()), fontsize=10)
    return fig


def _cosine_heatmaps(res: CompareResult) -> Any:
    """T > 2: the mean over steps and seeds of cos(g_i, g_j), one matrix per method, the
    diagonal (always 1) left blank so the colour scale spans the off-diagonal values."""
    import numpy as np

    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    T = len(names)
    mats = {}
    for method in res.methods:
        C = np.full((T, T), np.nan)
        for i in range(T):
            for j in range(i + 1, T):
                vals = _cosine_values(res, method, names[i], names[j])
                C[i, j] = C[j, i] = statistics.fmean(vals) if vals else np.nan
        mats[method] = C
    finite = [abs(v) for C in mats.values() for v in C[np.isfinite(C)]]
    vmax = max(0.05, math.ceil(20 * max(finite, default=1.0)) / 20)  # symmetric, to the next 0.05
    side = 1.6 + 0.3 * T
    fig, axes = panel_grid(len(res.methods), panel=(side + 0.3, side), extra=(1.0, 0.3))
    image = None
    for ax, method in zip(axes, res.methods):
        image = ax.imshow(mats[method], vmin=-vmax, vmax=vmax, cmap="RdBu")
        if T <= 8:  # the numbers themselves, while they fit in the cells
            for i in range(T):
                for j in range(T):
                    v = mats[method][i, j]
                    if i != j and np.isfinite(v):
                        ink = "white" if abs(v) > 0.6 * vmax else "black"  # readable on dark cells
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=ink)
        ax.set_title(f"{method} (n={len(res.seeds)})", fontsize=9)
        ax.set_xticks(range(T), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(T), names, fontsize=7)
        ax.set_xlabel("task j", fontsize=8)
        ax.set_ylabel("task i", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="cos(g_i, g_j), mean over steps")
    fig.suptitle(wrap_title(f"{res.benchmark}: cosine between task gradients, mean over all training steps of "
                            f"n={len(res.seeds)} seed{'s' if len(res.seeds) > 1 else ''}; diagonal (1) omitted",
                            fig.get_figwidth()), fontsize=10)
    return fig


def _plots(res: CompareResult, out: str) -> tuple[list[str], str]:
    try:
        plt = pyplot()
    except ImportError:
        return [], "figures need matplotlib: pip install 'mtgrad[plots]' (results.csv and the table were written)"
    colors = {m: f"C{k}" for k, m in enumerate(res.methods)}
    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    figures = {
        "curves.png": lambda: _curves_figure(res, colors),
        "weights.png": lambda: _weights_figure(res),
        "conflict.png": lambda: _conflict_figure(res, colors),
    }
    if len(names) == 2:
        figures["cosines.png"] = lambda: _cosine_histograms(res, colors)
    elif len(names) > 2:
        figures["cosines.png"] = lambda: _cosine_heatmaps(res)
    for name, draw in figures.items():
        fig = draw()
        fig.savefig(os.path.join(out, name), dpi=130)
        plt.close(fig)
    return list(figures), ""
