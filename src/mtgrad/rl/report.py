"""Run several methods (× seeds) of multi-task SAC and draw their success curves side by side."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..bench.workers import worker_pool
from .config import SACConfig

__all__ = ["plot_success", "run_dir", "run_methods", "success_figure", "summary_table"]


def run_dir(out: str, method: str, seed: int) -> str:
    """``out/<method spec made filename-safe>-s<seed>``."""
    return os.path.join(out, f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', method)}-s{seed}")


def _one(job: tuple[SACConfig, str, int, str, str, bool, bool | str, int]) -> dict[str, Any]:
    cfg, method, seed, out, device, resume, progress, threads = job
    import torch

    from .train import train

    torch.set_num_threads(threads)
    return train(cfg, method, out, seed=seed, device=device, resume=resume, progress=progress)


def run_methods(
    cfg: SACConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str,
    *,
    jobs: int = 1,
    threads: int = 1,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = True,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Train every method × seed into ``run_dir(out, method, seed)``, then write ``summary.md``
    (and ``success.png`` with ``plots``); returns the runs' summaries."""
    from ..methods.spec import check_distinct
    from .envs import check_environments, parse_benchmark
    from .train import build_method, resolve_spec

    task_set = parse_benchmark(cfg.benchmark)
    check_environments(task_set)  # before any run's folder is made
    num_tasks = task_set.num_tasks
    for method in methods:  # a bad spec is refused before any run trains
        build_method(method, cfg, num_tasks, seed=0)
    # Two names of one method (after the benchmark's defaults) would train it twice.
    check_distinct([resolve_spec(m, cfg) for m in methods], methods, extra={"num_tasks": num_tasks})
    os.makedirs(out, exist_ok=True)
    # Parallel runs print progress lines (with an ETA) instead of fighting over one terminal bar.
    shown: bool | str = progress if jobs == 1 else ("plain" if progress else False)
    runs = [(cfg, m, s, run_dir(out, m, s), device, resume, shown, threads) for m in methods for s in seeds]
    if jobs == 1:
        summaries = [_one(job) for job in runs]
    else:
        with worker_pool(jobs) as pool:
            summaries = list(pool.map(_one, runs))
    table = summary_table(summaries)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table + "\n")
    if plots:  # one curve per method: the mean over its seeds, with their spread
        plot_success({m: [run_dir(out, m, s) for s in seeds] for m in methods},
                     os.path.join(out, "success.png"), title=cfg.benchmark)
    return summaries


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown: final and best evaluation success (in %, as in ``success.png``), final return and
    throughput, one row per run."""
    lines = ["| method | seed | env steps | final success (%) | best success (%) | final return | env steps/s | updates/s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        last = s.get("final_eval") or {}
        lines.append(
            f"| {s['method']} | {s['seed']} | {s['env_steps']:,} | {_pct(last.get('mean_success'))} | "
            f"{_pct(s.get('best_success'))} | {_fmt(last.get('mean_return'), 1)} | {_fmt(s.get('env_steps_per_s'), 0)} | "
            f"{_fmt(s.get('updates_per_s'), 1)} |"
        )
    return "\n".join(lines)


def _pct(rate: Any) -> str:
    """A success rate in [0, 1] as a percentage with one decimal (``–`` when missing)."""
    return "–" if rate is None or rate == "" else f"{100.0 * float(rate):.1f}"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    return f"{float(value):.{digits}f}"


def read_eval(run: str) -> list[dict[str, float]]:
    with open(os.path.join(run, "eval.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _seed_curves(runs: Sequence[str], key: str, scale: float = 1.0) -> tuple[list[float], list[list[float]]]:
    """The evaluation steps every seed reached and each seed's ``key`` at them (a run that was
    stopped early would otherwise cut the mean short or mix seeds at its end)."""
    tables = [{r["step"]: r[key] * scale for r in read_eval(run)} for run in runs]
    tables = [t for t in tables if t]
    steps = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    return steps, [[t[x] for x in steps] for t in tables]


def plot_success(runs: Mapping[str, str | Sequence[str]], path: str, title: str = "") -> None:
    """Mean evaluation success (in %) and return over environment steps per task, one line per
    label: ``runs`` maps a label (a method) to its run folder or to the folders of its seeds,
    drawn as their mean with a ± 1 sample-std band (none for one seed), ``n`` in the legend."""
    from mtgrad.bench.figures import pyplot

    fig = success_figure(runs, title)
    fig.savefig(path, dpi=130)
    pyplot().close(fig)


def success_figure(runs: Mapping[str, str | Sequence[str]], title: str = "") -> Any:
    """The figure of :func:`plot_success` (a matplotlib ``Figure``), unsaved."""
    from mtgrad.bench.figures import SPREAD, legend_columns, mean_band, panel_grid, wrap_title

    fig, axes = panel_grid(2, panel=(4.4, 3.2), extra=(0.0, 0.6))
    counts: set[int] = set()
    for k, (label, dirs) in enumerate(runs.items()):
        dirs = [dirs] if isinstance(dirs, str) else list(dirs)
        for ax, key, scale, clip in ((axes[0], "mean_success", 100.0, (0.0, 100.0)),
                                     (axes[1], "mean_return", 1.0, None)):
            steps, series = _seed_curves(dirs, key, scale)
            if steps:
                mean_band(ax, steps, series, label=label, color=f"C{k}", clip=clip, marker="o", ms=3)
                counts.add(len(series))
    axes[0].set_ylabel("evaluation success, mean over tasks (%)")
    axes[0].set_ylim(-2, 102)
    axes[1].set_ylabel("evaluation return, mean over tasks")
    for ax in axes:
        ax.set_xlabel("environment steps per task")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(fig, len(labels)), fontsize=8,
                   frameon=False)
    seeds = "one seed each, no band" if counts <= {1} else f"mean over seeds (n in the legend), {SPREAD}"
    fig.suptitle(wrap_title(f"multi-task SAC{', ' + title if title else ''}: {seeds}", fig.get_figwidth()),
                 fontsize=10)
    return fig


def best_success(run: str) -> float | None:
    rows = read_eval(run)
    return max(r["mean_success"] for r in rows) if rows else None


def load_summary(run: str) -> dict[str, Any]:
    with open(os.path.join(run, "summary.json")) as f:
        return json.load(f)
