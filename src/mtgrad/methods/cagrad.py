"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from ..solvers import cagrad_mtrl_weights, cagrad_weights
from ._loss_checks import check_bool
from .base import Weighting

__all__ = ["CAGrad"]

Solver = Literal["exact", "mtrl"]


def output_factor(c: float, rescale: int, scale_by_tasks: bool, num_tasks: int) -> float:
    """The factor the implementations put on ``d*``: 1 (Alg. 1), ``1/(1 + c²)`` (``rescale=1``) or
    ``1/(1 + c)`` (``rescale=2``), times T with ``scale_by_tasks`` (see :class:`CAGrad`)."""
    factor = (1.0, 1.0 / (1.0 + c**2), 1.0 / (1.0 + c))[rescale]
    return factor * num_tasks if scale_by_tasks else factor


class CAGrad(Weighting):
    r"""Conflict-Averse Gradient descent, Algorithm 1 of Liu et al. (2021).

    The update maximises the worst task's local improvement within a ball around the average
    gradient ``g₀ = (1/T) Σ g_i`` (eq. 3)::

        max_d min_i ⟨g_i, d⟩   s.t.   ‖d − g₀‖ ≤ c‖g₀‖,

    whose dual is ``w* = argmin_{w∈Δ} g_wᵀg₀ + c‖g₀‖‖g_w‖`` (eq. 11) and whose solution is
    ``d* = g₀ + (c‖g₀‖/‖g_w*‖) g_w*`` (Lemma A.2). ``c = 0`` gives ``d* = g₀`` exactly (GD on the
    average loss); ``c → ∞`` approaches the MGDA direction. The problem is solved exactly on the
    Gramian's device (see :func:`mtgrad.solvers.cagrad_weights`), in unit-norm gradients, so that
    the ball, the optimum and (c ≥ 1) non-conflict hold per task at norm ratios of 1e24
    (``tests/test_cagrad.py``, against a 50-digit reference).

    Edge cases: ``‖g₀‖ = 0`` gives ``d* = g₀ = 0``. When ``‖g_w*‖ = 0`` (the origin is in the
    convex hull and no direction in the ball improves every task) the formula is ``0/0``; the
    update is then the limit along the dual path, a point of the ball with ``min_i⟨g_i, d⟩ = 0``
    (e.g. ``d = 0`` for two exactly opposite gradients). The official code instead divides by
    ``‖g_w‖ + 1e-8`` (returning ≈ ``g₀``) and torchjd returns zero.

    Accuracy limit of any Gramian method: ``‖g₀‖`` and ``‖g_w*‖`` are quadratic forms of ``G``,
    known to ``ε‖g‖²`` absolute. Where they nearly cancel — a pair with ``1 + cos ≈ 1e-12`` —
    they are known only to ``ε‖g‖²/‖g_w*‖²`` relative, and the update meets its ball and
    non-conflict to that accuracy (measured: ``‖d − g₀‖`` up to 7e-4 relative beyond ``c‖g₀‖``
    on ``benchmarks/precision.py``'s nearly opposite family, before and after the precision work);
    at ordinary conditioning both hold to rounding (``tests/test_precision.py``).

    Args:
        c: radius of the ball relative to ``‖g₀‖``; ``c ∈ [0, 1)`` keeps the convergence
            guarantee to a minimum of the average loss (Thm. 3.2). Paper values: 0.4 (NYUv2,
            Cityscapes), 0.5 (toy), 0.9 (MT10), 0.5 (MT50), 0.2 (Multi-Fashion+MNIST).
        rescale: ``0`` — ``d*`` as in Alg. 1 (default); ``1`` — ``d*/(1 + c²)`` (official NYUv2,
            Cityscapes and Meta-World code, LibMTL's default); ``2`` — ``d*/(1 + c)`` (official
            toy and CAGrad-Fast code).
        scale_by_tasks: multiply by T "to match the sum loss" (official NYUv2/Cityscapes code and
            nash-mtl); LibMTL and torchjd do not.
        solver: ``"exact"`` (default) or ``"mtrl"`` — the official Meta-World inner solver, 20
            momentum-SGD steps on softmax logits of a normalised Gramian, for parity runs
            (official MT10/MT50 settings: ``CAGrad(c, rescale=1, solver="mtrl")``).
    """

    def __init__(
        self,
        c: float = 0.4,
        rescale: int = 0,
        scale_by_tasks: bool = False,
        solver: Solver = "exact",
    ) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 or c == float("inf"):
            raise ValueError(f"c must be a finite number ≥ 0, got {c!r}")
        if isinstance(rescale, bool) or rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0 (paper), 1 (÷(1+c²)) or 2 (÷(1+c)), got {rescale!r}")
        if solver not in ("exact", "mtrl"):
            raise ValueError(f"solver must be 'exact' or 'mtrl', got {solver!r}")
        self.c = float(c)
        self.rescale = rescale
        self.scale_by_tasks = check_bool(scale_by_tasks, "scale_by_tasks")
        self.solver: Solver = solver

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gramian.shape[-1]
        if self.solver == "mtrl":
            w = cagrad_mtrl_weights(gramian, self.c)
        elif self.c == 0:
            w = gramian.new_full(gramian.shape[:-1], 1.0 / T)
        else:
            w = cagrad_weights(gramian, self.c)
        factor = output_factor(self.c, self.rescale, self.scale_by_tasks, T)
        return w * factor if factor != 1.0 else w

    def _config(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale, "scale_by_tasks": self.scale_by_tasks, "solver": self.solver}
