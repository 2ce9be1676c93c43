"""Figures for the toy problems (needs the optional extra ``mtgrad[plots]``, i.e. matplotlib).

* CAGrad toy, after CAGrad Fig. 3: one panel per method, contours of L0 = (L1 + L2)/2 on
  [-11, 11]², the Pareto set drawn as the official code draws it (θ1 ∈ [-7, 7], θ2 = -8.3552),
  a star at the L0 minimiser (0, -8.3552), and the trajectory from every start, coloured from red
  (start) to yellow (end) as in the official ``toy.py``.
* PCGrad toy, after PCGrad Fig. 1 (b)-(e): contours of L1 and of L2, then one panel per method
  with contours of L1 + L2 and its trajectory.

Panels wrap into rows of at most four (:func:`mtgrad.bench.figures.panel_grid`), every panel with
its axis labels. matplotlib is imported inside the functions, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mtgrad.bench.figures import MAX_COLS, panel_grid, pyplot, wrap_title
from mtgrad.bench.toy import CAGRAD_MINIMISER, PARETO_Y, ToyResult

__all__ = ["cagrad_figure", "pcgrad_figure", "plot_cagrad", "plot_pcgrad", "plot_result"]


def _grid(losses_fn, xlim, ylim, n):
    xs = np.linspace(xlim[0], xlim[1], n)
    ys = np.linspace(ylim[0], ylim[1], n)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))  # float64
    with torch.no_grad():
        L = losses_fn(pts).numpy()
    return X, Y, L[:, 0].reshape(n, n), L[:, 1].reshape(n, n)


def _trajectory(ax, traj: np.ndarray, zorder: int = 10) -> None:
    """Line through the recorded points coloured red -> yellow over time, start/end markers."""
    from matplotlib.collections import LineCollection

    finite = np.isfinite(traj).all(axis=1)
    traj = traj[finite]
    if len(traj) == 0:
        return
    if len(traj) > 1:
        segs = np.stack([traj[:-1], traj[1:]], axis=1)
        t = np.linspace(0.0, 1.0, len(segs))
        colours = np.stack([np.ones_like(t), t, np.zeros_like(t)], axis=1)
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=2.0, zorder=zorder))
    ax.plot(*traj[0], "o", ms=7, color="k", zorder=zorder + 1)
    ax.plot(*traj[-1], "X", ms=8, mfc="yellow", mec="k", zorder=zorder + 2)


def _axes_labels(ax) -> None:
    """θ1 and θ2 on every panel: in a wrapped grid no panel borrows another's labels."""
    ax.set_xlabel("θ1", fontsize=9)
    ax.set_ylabel("θ2", fontsize=9)
    ax.tick_params(labelsize=8)


def plot_cagrad(result: ToyResult, path: str | os.PathLike, grid: int = 300, ncols: int = MAX_COLS) -> str:
    """CAGrad Fig. 3 style figure of a CAGrad-toy :class:`ToyResult`; returns the path."""
    return _save(cagrad_figure(result, grid, ncols), path)


def cagrad_figure(result: ToyResult, grid: int = 300, ncols: int = MAX_COLS) -> Any:
    """The figure of :func:`plot_cagrad` (a matplotlib ``Figure``), unsaved."""
    prob = result.problem
    X, Y, L1, L2 = _grid(prob.losses, prob.xlim, prob.ylim, grid)
    L0 = 0.5 * (L1 + L2)
    levels = np.linspace(L0.min(), L0.max(), 20)
    fig, axes = panel_grid(len(result.methods), panel=(3.2, 3.1), max_cols=ncols, extra=(1.0, 0.6))
    traj = result.trajectories.to(torch.float64).numpy()
    reached = result.reached
    cs = None
    for m, (ax, spec) in enumerate(zip(axes, result.methods)):
        cs = ax.contour(X, Y, L0, levels=levels, cmap="viridis", linewidths=1.0, zorder=1)
        ax.plot([-7, 7], [PARETO_Y, PARETO_Y], lw=6, color="gray", alpha=0.7, zorder=2)
        ax.plot(*CAGRAD_MINIMISER, "*", ms=15, color="k", mec="w", mew=0.8, zorder=20)
        for s in range(traj.shape[1]):
            _trajectory(ax, traj[m, s])
        k = int(reached[m].sum())
        ax.set_title(f"{spec}  ({k}/{traj.shape[1]} at L0 min)", fontsize=10)
        ax.set_xlim(*prob.xlim)
        ax.set_ylim(*prob.ylim)
        ax.set_aspect("equal")
        _axes_labels(ax)
    if cs is not None:
        fig.colorbar(cs, ax=axes, shrink=0.6, label="L0 = (L1 + L2)/2")
    fig.suptitle(wrap_title(
        f"CAGrad toy: {result.steps:,} Adam steps (lr {result.lr:g}) from {traj.shape[1]} starts; gray: Pareto set, "
        "star: L0 minimiser; trajectories red (start, dot) to yellow (end, cross)", fig.get_figwidth()),
        fontsize=10,
    )
    return fig


def _save(fig: Any, path: str | os.PathLike) -> str:
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return str(path)


def _levels(Z: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.percentile(Z, [1, 99])
    return np.linspace(lo, hi, n)


def _colorbar(fig, contours, ax, label: str) -> None:
    """A slim colour bar beside ``ax`` with a few round ticks; every panel gets one, so the
    panels of a wrapped grid stay aligned."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = float(contours.levels[0]), float(contours.levels[-1])
    ticks = [t for t in MaxNLocator(5).tick_values(lo, hi) if lo <= t <= hi]  # none on the extend tips
    bar = fig.colorbar(contours, ax=ax, shrink=0.8, fraction=0.06, pad=0.03, ticks=ticks)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def plot_pcgrad(result: ToyResult, path: str | os.PathLike, grid: int = 300) -> str:
    """PCGrad Fig. 1 (b)-(e) style figure of a PCGrad-toy :class:`ToyResult`; returns the path."""
    return _save(pcgrad_figure(result, grid), path)


def pcgrad_figure(result: ToyResult, grid: int = 300) -> Any:
    """The figure of :func:`plot_pcgrad` (a matplotlib ``Figure``), unsaved."""
    prob = result.problem
    traj = result.trajectories.to(torch.float64).numpy()
    pts = traj[np.isfinite(traj).all(axis=-1)]
    xlim = [prob.xlim[0], prob.xlim[1]]
    ylim = [prob.ylim[0], prob.ylim[1]]
    if len(pts):  # widen the window if a trajectory leaves it
        xlim = [min(xlim[0], pts[:, 0].min() - 1), max(xlim[1], pts[:, 0].max() + 1)]
        ylim = [min(ylim[0], pts[:, 1].min() - 1), max(ylim[1], pts[:, 1].max() + 1)]
    X, Y, L1, L2 = _grid(prob.losses, xlim, ylim, grid)
    L = L1 + L2
    n = len(result.methods)
    # the two task losses, then one panel per method: rows of at most four, not one long row
    fig, axes = panel_grid(n + 2, panel=(3.4, 3.0), extra=(0.0, 0.5))
    for ax, (title, Z) in zip(axes[:2], [("task 1: L1", L1), ("task 2: L2", L2)]):
        cf = ax.contourf(X, Y, Z, levels=_levels(Z, 30), cmap="viridis", extend="both")
        _colorbar(fig, cf, ax, title.split(": ")[1])
        ax.set_title(title, fontsize=10)
    levels = _levels(L, 30)
    reached = result.reached
    for m, (ax, spec) in enumerate(zip(axes[2:], result.methods)):
        cf = ax.contourf(X, Y, L, levels=levels, cmap="viridis", extend="both", zorder=0)
        _colorbar(fig, cf, ax, "L1 + L2")
        for s in range(traj.shape[1]):
            _trajectory(ax, traj[m, s])
        label = {"gd": "Adam (gd: sum)", "pcgrad": "Adam + PCGrad"}.get(spec, spec)
        status = "at optimum" if bool(reached[m].all()) else "not at optimum"
        ax.set_title(f"{label}\n({status})", fontsize=10)
    for ax in axes:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        _axes_labels(ax)
    fig.suptitle(wrap_title(
        f"PCGrad toy: {result.steps:,} Adam steps (lr {result.lr:g}) from "
        f"{tuple(result.starts[0].tolist())}, red (start, dot) to yellow (end, cross); "
        "the valleys meet as θ2 → +∞ (θ1 → -2)", fig.get_figwidth()),
        fontsize=10,
    )
    return fig


def plot_result(result: ToyResult, path: str | os.PathLike) -> str:
    """Figure for any toy :class:`ToyResult` (dispatches on the problem); returns the path."""
    if result.problem.name == "pcgrad":
        return plot_pcgrad(result, path)
    return plot_cagrad(result, path)
