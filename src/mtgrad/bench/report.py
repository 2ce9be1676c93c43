"""Compare methods over seeds on one benchmark and report like a paper (mean ± std, Δm%).

:func:`compare` trains the single-task baselines (one run per task and seed, the same
architecture with one head, equal weighting) and every method × seed with
:func:`mtgrad.bench.trainer.train`, then writes into ``out``:

* ``results.csv``: one row per method / seed / metric with the final test value (the baselines
  as method ``single-task``; each method/seed's Δm% as metric ``delta_m%``);
* ``report.md``: the table (mean ± sample std over seeds of every final test metric and of Δm%
  against the same seed's baselines) and the figures;
* ``curves.png`` (test metrics per epoch), ``weights.png`` (task weights per step),
  ``conflict.png`` (mean gradient cosine and conflict rate per step), if matplotlib is installed;
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

from .reporting import progress_bar, tensorboard_available
from .benchmarks import get_benchmark
from .trainer import RunResult, TrainConfig, delta_m, make_method, train

__all__ = ["DEFAULT_METHODS", "DEFAULT_SEEDS", "BASELINE", "CompareResult", "compare", "format_table"]

DEFAULT_METHODS = ("gd", "mgda", "pcgrad", "cagrad:c=0.4")
"""Equal weighting, MGDA, PCGrad and CAGrad (the CAGrad paper's c = 0.4)."""

DEFAULT_SEEDS = (0, 1, 2)

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


def format_table(result: CompareResult) -> str:
    """The markdown table: one row per method, mean ± std over seeds; arrows give the direction."""
    arrows = {m: ("↑" if result.higher_is_better[m] else "↓") for m in result.metrics}
    scale = {m: (100.0 if m.endswith("/acc") else 1.0) for m in result.metrics}  # accuracies in %
    header = ["method"] + [f"{m}{' %' if scale[m] == 100 else ''} {arrows[m]}" for m in result.metrics] + ["Δm% ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in [BASELINE, *result.methods]:
        cells = [method]
        per_seed = result.final[method]
        for m in result.metrics:
            mean, std = _mean_std([per_seed[s][m] * scale[m] for s in result.seeds])
            digits = 2 if scale[m] == 100 else 4
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        if method == BASELINE:
            cells.append("0 (ref.)")
        else:
            mean, std = _mean_std([result.delta[method][s] for s in result.seeds])
            cells.append(f"{mean:+.2f} ± {std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(
    benchmark: str = "multimnist",
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    out: str | os.PathLike = "results/compare",
    *,
    batch_size: int | None = None,
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
    the figures into ``out``; print the table to ``stream`` (stdout). ``jobs=None`` uses one
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
    if len(set(methods)) != len(methods) or BASELINE in methods:
        raise ValueError(f"methods must be distinct and not {BASELINE!r}, got {methods}")
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    common = dict(
        tensorboard=tensorboard_available(),  # checked here so the note is printed once, not per worker
        benchmark=bench.name,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        threads=threads,
        data_options=dict(data_options or {}),
        progress=False,
        resume=not fresh,
    )
    # Validate every spec before spending minutes on the baselines.
    probe = bench.model(list(bench.tasks))
    for spec in methods:
        make_method(spec, bench.num_tasks, probe, 0, torch.device("cpu"))

    jobs_list: list[tuple[str, Any, dict[str, Any]]] = []
    for s in seeds:
        for t in range(bench.num_tasks):
            path = os.path.join(out, "runs", BASELINE, f"{bench.tasks[t].name}", f"seed{s}")
            jobs_list.append((BASELINE, (s, t), dict(common, method="gd", seed=s, tasks=(t,), out=path)))
    for spec in methods:
        for s in seeds:
            path = os.path.join(out, "runs", _slug(spec), f"seed{s}")
            jobs_list.append((spec, s, dict(common, method=spec, seed=s, out=path)))

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
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")  # never fork a process that runs torch
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
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
    print(f"\n{bench.name}: final test metrics, mean ± std over seeds {seeds} "
          f"(Δm% vs single-task baselines, lower is better)\n", file=stream)
    print(res.table, file=stream)
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


def _write_report(path: str, res: CompareResult, figures: list[str], note: str, common: dict[str, Any]) -> None:
    any_run = res.runs[res.methods[0]][res.seeds[0]].config
    lines = [
        f"# {res.benchmark}: {', '.join(res.methods)}",
        "",
        f"{get_benchmark(res.benchmark).description}.",
        "",
        f"Final test metrics after {any_run.epochs} epochs (batch {any_run.batch_size}, Adam lr {any_run.lr}), "
        f"mean ± sample std over seeds {res.seeds}. Δm% (Maninis et al. 2019, as in CAGrad Sec. 5.2) is the "
        "mean over metrics of the relative change against the same seed's single-task baselines, "
        "sign-flipped for higher-is-better metrics: lower is better, negative beats single-task.",
        "",
        res.table,
        "",
        f"Wall time: {res.seconds:.1f} s. Per-run logs (epochs.csv, steps.csv, checkpoint.pt) are under `runs/`.",
        "",
    ]
    for fig in figures:
        lines += [f"![{fig}]({fig})", ""]
    if note:
        lines += [f"Note: {note}", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


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


def _plots(res: CompareResult, out: str) -> tuple[list[str], str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "figures need matplotlib: pip install mtgrad[plots] (results.csv and the table were written)"
    figures = []
    colors = {m: f"C{k}" for k, m in enumerate(res.methods)}

    # Learning curves: test metric per epoch (mean over seeds), one panel per metric.
    fig, axes = plt.subplots(1, len(res.metrics), figsize=(4.2 * len(res.metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], res.metrics):
        for method in res.methods:
            hist = [res.runs[method][s].history for s in res.seeds]
            ep = [h["epoch"] for h in hist[0]]
            ys = [statistics.fmean(h[i][f"test/{m}"] for h in hist) for i in range(len(ep))]
            ax.plot(ep, ys, "o-", color=colors[method], label=method)
        base = statistics.fmean(res.final[BASELINE][s][m] for s in res.seeds)
        ax.axhline(base, color="k", ls="--", lw=1, label=BASELINE)
        ax.set_title(f"test {m}")
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    figures.append("curves.png")
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)

    # Task weights over time (seed of the first run), one panel per method.
    names = res.runs[res.methods[0]][res.seeds[0]].task_names
    fig, axes = plt.subplots(1, len(res.methods), figsize=(3.6 * len(res.methods), 3.2), squeeze=False, sharey=True)
    window = 10
    for ax, method in zip(axes[0], res.methods):
        steps = res.runs[method][res.seeds[0]].steps
        x = [r["step"] for r in steps]
        for k, name in enumerate(names):
            ax.plot(x, _smooth([r[f"w/{name}"] for r in steps], window), color=f"C{k}", label=name)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(f"task weight ({window}-step mean, seed {res.seeds[0]})")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    figures.append("weights.png")
    fig.savefig(os.path.join(out, "weights.png"), dpi=110)
    plt.close(fig)

    # Conflict diagnostics over time, mean over seeds.
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in res.methods:
        runs = [res.runs[method][s].steps for s in res.seeds]
        n = min(len(r) for r in runs)
        x = [runs[0][i]["step"] for i in range(n)]
        for ax, key in zip(axes, ("mean_cos", "conflict_rate")):
            vals = [statistics.fmean(r[i][key] for r in runs) for i in range(n)]
            ax.plot(x, _smooth(vals, window), color=colors[method], label=method)
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set_title("mean pairwise gradient cosine")
    axes[1].set_title("conflict rate (pairs with cos < 0)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    figures.append("conflict.png")
    fig.savefig(os.path.join(out, "conflict.png"), dpi=110)
    plt.close(fig)

    # Pairwise gradient cosines, averaged over steps and seeds: which tasks fight.
    if len(names) > 1:
        fig, axes = plt.subplots(1, len(res.methods), figsize=(3.4 * len(res.methods), 3.2), squeeze=False)
        image = None
        for ax, method in zip(axes[0], res.methods):
            rows = [r for s in res.seeds for r in res.runs[method][s].steps]
            C = [[1.0 if i == j else math.nan for j in range(len(names))] for i in range(len(names))]
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    vals = [r[f"cos/{names[i]}/{names[j]}"] for r in rows if not math.isnan(r[f"cos/{names[i]}/{names[j]}"])]
                    C[i][j] = C[j][i] = statistics.fmean(vals) if vals else math.nan
            image = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu")
            ax.set_title(method, fontsize=9)
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean cos(g_i, g_j)")
        figures.append("cosines.png")
        fig.savefig(os.path.join(out, "cosines.png"), dpi=110)
        plt.close(fig)
    return figures, ""
