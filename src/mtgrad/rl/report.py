"""Run several methods (× seeds) of multi-task SAC and draw their success curves side by side."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .config import SACConfig

__all__ = ["run_methods", "plot_success", "summary_table", "run_dir"]


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
    os.makedirs(out, exist_ok=True)
    # Parallel runs print progress lines (with an ETA) instead of fighting over one terminal bar.
    shown: bool | str = progress if jobs == 1 else ("plain" if progress else False)
    runs = [(cfg, m, s, run_dir(out, m, s), device, resume, shown, threads) for m in methods for s in seeds]
    if jobs == 1:
        summaries = [_one(job) for job in runs]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            summaries = list(pool.map(_one, runs))
    table = summary_table(summaries)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table + "\n")
    if plots:
        plot_success({f"{m} (seed {s})" if len(seeds) > 1 else m: run_dir(out, m, s) for m in methods for s in seeds},
                     os.path.join(out, "success.png"), title=cfg.benchmark)
    return summaries


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown: final success and return, best success over the run, throughput per run."""
    lines = ["| method | seed | env steps | final success | best success | final return | env steps/s | updates/s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        last = s.get("final_eval") or {}
        best = s.get("best_success")
        lines.append(
            f"| {s['method']} | {s['seed']} | {s['env_steps']:,} | {_fmt(last.get('mean_success'))} | {_fmt(best)} | "
            f"{_fmt(last.get('mean_return'), 1)} | {_fmt(s.get('env_steps_per_s'), 0)} | {_fmt(s.get('updates_per_s'), 1)} |"
        )
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    return f"{float(value):.{digits}f}"


def read_eval(run: str) -> list[dict[str, float]]:
    with open(os.path.join(run, "eval.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_success(runs: dict[str, str], path: str, title: str = "") -> None:
    """Mean evaluation success and return over environment steps (per task), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, run in runs.items():
        rows = read_eval(run)
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["mean_success"] for r in rows], marker="o", ms=3, label=label)
        axes[1].plot(steps, [r["mean_return"] for r in rows], marker="o", ms=3, label=label)
    axes[0].set_ylabel("mean success rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("mean episode return")
    for ax in axes:
        ax.set_xlabel("environment steps per task")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"multi-task SAC, {title}" if title else "multi-task SAC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_success(run: str) -> float | None:
    rows = read_eval(run)
    return max(r["mean_success"] for r in rows) if rows else None


def load_summary(run: str) -> dict[str, Any]:
    with open(os.path.join(run, "summary.json")) as f:
        return json.load(f)
