"""Shared pieces of the paper-style figures (compare report, RL success curves, toy problems).

Conventions every figure follows: panels wrap into rows of at most :data:`MAX_COLS`, laid out by
matplotlib's constrained layout (no clipped tick labels); a quantity averaged over seeds is drawn
as its mean with a band of ± one sample standard deviation (:data:`SPREAD`), the legend says how
many seeds (``"pcgrad (n=3)"``) and a single seed gets no band.

matplotlib is an optional extra (``mtgrad[plots]``): it is imported inside the functions, with the
non-interactive Agg backend, so importing this module needs only the standard library.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MAX_COLS", "SPREAD", "grid_shape", "legend_columns", "mean_band", "panel_grid", "pyplot", "seed_stats", "wrap_title",
]

MAX_COLS = 4
"""Panels per row: more would shrink every panel below a readable size on a page."""

SPREAD = "band: ± 1 sample std over seeds"
"""What the shaded band around a seed mean is (the tables' ± is the same sample std)."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_shape(n: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels in rows of at most ``max_cols``."""
    cols = max(1, min(max_cols, n))
    return (max(1, n) + cols - 1) // cols, cols


def panel_grid(
    n: int,
    *,
    panel: tuple[float, float] = (3.4, 2.8),
    max_cols: int = MAX_COLS,
    extra: tuple[float, float] = (0.0, 0.0),
    **subplots: Any,
) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels of about ``panel`` inches in rows of at most ``max_cols``
    (``extra`` inches added for a colour bar or a legend); the unused cells of the last row are
    hidden. Returns ``(figure, the n used axes in reading order)``."""
    plt = pyplot()
    rows, cols = grid_shape(n, max_cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel[0] * cols + extra[0], panel[1] * rows + extra[1]),
        squeeze=False, layout="constrained", **subplots,
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def seed_stats(series: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Point-wise mean and sample std over the seeds' series (truncated to the shortest); NaNs
    are skipped, the std is NaN where fewer than two values remain."""
    n = min((len(s) for s in series), default=0)
    means, stds = [], []
    for i in range(n):
        vals = [float(s[i]) for s in series if not math.isnan(float(s[i]))]
        means.append(statistics.fmean(vals) if vals else math.nan)
        stds.append(statistics.stdev(vals) if len(vals) > 1 else math.nan)
    return means, stds


def mean_band(
    ax: Any,
    x: Sequence[float],
    series: Sequence[Sequence[float]],
    *,
    label: str,
    color: Any = None,
    clip: tuple[float, float] | None = None,
    with_n: bool = True,
    **plot: Any,
) -> Any:
    """Draw the mean over ``series`` (one per seed, on ``x``) with a ± sample-std band when there
    are several; the legend label gets ``" (n=<seeds>)"`` unless ``with_n`` is false (the title
    says it instead). ``clip`` bounds the band (a success rate cannot leave [0, 100]). Returns the
    mean's line."""
    means, stds = seed_stats(series)
    x = list(x)[: len(means)]
    (line,) = ax.plot(x, means, color=color, label=f"{label} (n={len(series)})" if with_n else label, **plot)
    if len(series) > 1:
        lo = [m - s for m, s in zip(means, stds)]
        hi = [m + s for m, s in zip(means, stds)]
        if clip is not None:
            lo = [max(clip[0], v) for v in lo]
            hi = [min(clip[1], v) for v in hi]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def legend_columns(fig: Any, entries: int, entry_in: float = 1.3) -> int:
    """Columns for a legend under the panels: as many entries per row as the figure's width holds
    (about ``entry_in`` inches each), so a legend breaks into full rows, not a ragged one."""
    return max(1, min(entries, int(fig.get_figwidth() / entry_in)))


def wrap_title(text: str, width_in: float, fontsize: float = 10.0) -> str:
    """``text`` broken into lines that fit a figure ``width_in`` inches wide (a long suptitle
    would otherwise run off both edges)."""
    chars = max(30, int(width_in * 72 / (0.55 * fontsize)))  # ~0.55 em per character
    return "\n".join(textwrap.wrap(text, chars))
