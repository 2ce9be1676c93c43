"""FairGrad: α-fair resource allocation in multi-task learning (Ban & Ji, ICML 2024)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..solvers import bargaining_weights
from ._loss_checks import check_bool
from .base import Weighting
from .nashmtl import _check_max_iter, _check_ridge

__all__ = ["FairGrad"]


#: Smallest accepted α: at α = 0.02 the solve overflowed on 54 of 840 campaign inputs
#: (benchmarks/precision.py families, fp32 and fp64), at 0.05 on none.
MIN_ALPHA = 0.05


class FairGrad(Weighting):
    r"""FairGrad of Ban & Ji (2024), "Fair Resource Allocation in Multi-Task Learning" (arXiv:2402.15638).

    The update ``d = Σ_i w_i g_i`` maximises the α-fair utility ``Σ_i (g_iᵀd)^{1−α}/(1−α)`` of
    the tasks' loss decreases (``Σ log g_iᵀd`` for α = 1) over a ball; its optimality condition,
    the paper's ``GᵀGw = w^{−1/α}``, reads here::

        (Gw)_i = w_i^{−1/α}   for every task,   w > 0,    G = JJᵀ.

    α = 1 is Nash-MTL's condition (proportional fairness); α → 0 tends to ``w = 1`` (the sum of
    the gradients, linear scalarisation); α → ∞ tends to ``Gw = 1``, an equal decrease
    ``g_iᵀd`` for every task (max-min fairness). The solution is the unique minimiser of the
    strictly convex ``½wᵀGw − Σ_i h(w_i)`` with ``h'(w) = w^{−1/α}`` (``h = log`` for α = 1, else
    ``w^{1−1/α}/(1−1/α)``), computed exactly by damped Newton steps
    (:func:`mtgrad.solvers.bargaining_weights`). Scaling all gradients by ``s`` scales ``d`` by
    ``s^{(1−α)/(1+α)}``.

    Official code (OptMN-Lab/fairgrad, ``FairGrad``): ``scipy.optimize.least_squares`` on
    ``Gw − w^{−1/α}`` from ``w = 1/T`` with bounds ``w ≥ 0`` (an approximate root), then the update
    is multiplied by T ("to match the sum loss", ``scale_by_tasks=True`` here) and the training loop
    calls ``clip_grad_norm_(shared_parameters, max_norm=1.0)``, which is not done here. LibMTL's
    ``FairGrad`` uses the same ``least_squares`` but neither the factor T nor clipping.

    Degenerate inputs (no NaN): a zero gradient gets weight 0; ``T = 1`` gives
    ``w = ‖g‖^{−2α/(1+α)}``. When a non-negative combination of the gradients vanishes no
    solution exists; the relative ridge ``G + ρ·diag(G)`` (``ridge = ρ = 1e-10``) makes one exist
    always, moving regular solutions by ``O(ρ)`` relative, and keeps the weights finite in the
    degenerate case, where (as for :class:`~mtgrad.methods.nashmtl.NashMTL`) they are determined
    only to ~ε/ρ relative and the small cancelling update has a rounding-dependent direction.

    Args:
        alpha: fairness ``α ≥ 0.05`` (paper and official default 1.0); smaller α overflow
            ``w^{−1/α}`` in float64 (the α → 0 limit is :class:`~mtgrad.Sum`).
        scale_by_tasks: multiply the weights by T (official code); LibMTL does not.
        ridge: ``ρ > 0`` above.
        max_iter: Newton iteration cap; the CPU stops at convergence (4–8 iterations typically,
            up to ~30 on degenerate inputs and ~70 seen for T = 100, α = 5), an accelerator runs
            all of them.
    """

    def __init__(
        self, alpha: float = 1.0, scale_by_tasks: bool = False, ridge: float = 1e-10, max_iter: int = 100
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (MIN_ALPHA <= alpha < math.inf):
            raise ValueError(
                f"alpha must be a finite number ≥ {MIN_ALPHA}, got {alpha!r}: below it w^(−1/α) overflows float64 "
                "(for the α → 0 limit, linear scalarisation, use mtgrad.Sum())"
            )
        self.alpha = float(alpha)
        self.scale_by_tasks = check_bool(scale_by_tasks, "scale_by_tasks")
        self.ridge = _check_ridge(ridge)
        self.max_iter = _check_max_iter(max_iter)

    @property
    def gramian_degree(self) -> float:
        # λG w' = w'^{−1/α} with w' = λ^k w needs 1 + k = −k/α.
        return -self.alpha / (1.0 + self.alpha)

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        w = bargaining_weights(gramian, self.alpha, ridge=self.ridge, max_iter=self.max_iter)
        return w * gramian.shape[-1] if self.scale_by_tasks else w

    def _config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "scale_by_tasks": self.scale_by_tasks,
            "ridge": self.ridge,
            "max_iter": self.max_iter,
        }
