"""Figures for the toy problems (needs the optional extra ``mtgrad[plots]``, i.e. matplotlib).

* CAGrad toy, after CAGrad Fig. 3: one panel per method, contours of L0 = (L1 + L2)/2 on
  [-11, 11]², the Pareto set drawn as the official code draws it (θ1 ∈ [-7, 7], θ2 = -8.3552),
  a star at the L0 minimiser (0, -8.3552), and the trajectory from every start, coloured from red
  (start) to yellow (end) as in the official ``toy.py``.
* PCGrad toy, after PCGrad Fig. 1 (b)-(e): contours of L1 and of L2, then one panel per method
  with contours of L1 + L2 and its trajectory.

matplotlib is imported inside the functions, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mtgrad.bench.toy import CAGRAD_MINIMISER, PARETO_Y, ToyResult

__all__ = ["plot_result", "plot_cagrad", "plot_pcgrad"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_cagrad(result: ToyResult, path: str | os.PathLike, grid: int = 300, ncols: int = 4) -> str:
    """CAGrad Fig. 3 style figure of a CAGrad-toy :class:`ToyResult`; returns the path."""
    plt = _pyplot()
    prob = result.problem
    X, Y, L1, L2 = _grid(prob.losses, prob.xlim, prob.ylim, grid)
    L0 = 0.5 * (L1 + L2)
    levels = np.linspace(L0.min(), L0.max(), 20)
    n = len(result.methods)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.4 * ncols + 1.2, 3.5 * nrows + 0.5), squeeze=False,
        layout="constrained",
    )
    traj = result.trajectories.to(torch.float64).numpy()
    reached = result.reached
    cs = None
    for m, spec in enumerate(result.methods):
        ax = axes[m // ncols][m % ncols]
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
        ax.tick_params(labelsize=8)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    if cs is not None:
        fig.colorbar(cs, ax=axes.ravel().tolist(), shrink=0.6, label="L0 = (L1 + L2)/2")
    fig.suptitle(
        f"CAGrad toy: {result.steps} Adam steps (lr {result.lr:g}); gray: Pareto set, "
        "star: L0 minimiser; trajectories red (start, dot) to yellow (end, cross)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _levels(Z: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.percentile(Z, [1, 99])
    return np.linspace(lo, hi, n)


def plot_pcgrad(result: ToyResult, path: str | os.PathLike, grid: int = 300) -> str:
    """PCGrad Fig. 1 (b)-(e) style figure of a PCGrad-toy :class:`ToyResult`; returns the path."""
    plt = _pyplot()
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
    fig, axes = plt.subplots(
        1, n + 2, figsize=(3.8 * (n + 2), 4.2), squeeze=False, layout="constrained"
    )
    axes = axes[0]
    panels = [("task 1: L1", L1), ("task 2: L2", L2)]
    for ax, (title, Z) in zip(axes[:2], panels):
        ax.contourf(X, Y, Z, levels=_levels(Z, 30), cmap="viridis", extend="both")
        ax.set_title(title, fontsize=10)
    levels = _levels(L, 30)
    reached = result.reached
    for m, spec in enumerate(result.methods):
        ax = axes[2 + m]
        ax.contourf(X, Y, L, levels=levels, cmap="viridis", extend="both", zorder=0)
        for s in range(traj.shape[1]):
            _trajectory(ax, traj[m, s])
        label = {"gd": "Adam (gd: sum)", "pcgrad": "Adam + PCGrad"}.get(spec, spec)
        status = "at optimum" if bool(reached[m].all()) else "not at optimum"
        ax.set_title(f"{label}: L1 + L2 ({status})", fontsize=10)
    for ax in axes:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=8)
        ax.set_xlabel("θ1", fontsize=9)
    axes[0].set_ylabel("θ2", fontsize=9)
    fig.suptitle(
        f"PCGrad toy: {result.steps} Adam steps (lr {result.lr:g}) from "
        f"{tuple(result.starts[0].tolist())}; the valleys meet as θ2 → +∞ (θ1 → -2)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_result(result: ToyResult, path: str | os.PathLike) -> str:
    """Figure for any toy :class:`ToyResult` (dispatches on the problem); returns the path."""
    if result.problem.name == "pcgrad":
        return plot_pcgrad(result, path)
    return plot_cagrad(result, path)
