"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from torch import Tensor

from ..solvers import min_norm_weights
from .base import Weighting

__all__ = ["MGDA"]


class MGDA(Weighting):
    """Multiple-gradient descent (Désidéri 2012; Sener & Koltun 2018, eq. 3 / CAGrad eq. 6).

    ``w* = argmin_{w ∈ Δ} ‖Σ_i w_i g_i‖²`` and the update is ``d = Σ_i w*_i g_i``, the min-norm
    element of the convex hull of the task gradients: ``d = 0`` exactly when the point is
    Pareto-stationary. Solved exactly by an active-set method (see :func:`mtgrad.solvers.simplex_qp`),
    including on Jacobians whose row norms span many orders of magnitude, where the Frank–Wolfe
    loops of other implementations stop early.
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        return min_norm_weights(gramian)
