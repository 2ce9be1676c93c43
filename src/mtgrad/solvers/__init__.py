"""Exact solvers for the small T×T problems of gradient-manipulation methods.

Every solver here works on a batch of Gramians ``G`` of shape ``(..., T, T)`` in float64 on
whatever device ``G`` lives, with torch operations only (no numpy, scipy or cvxpy).

* :func:`simplex_qp` — ``min_w ½ wᵀQw + pᵀw`` over the probability simplex, by a primal
  active-set method. Each iteration solves the equality-constrained problem of the current free
  set exactly, so the answer is exact up to rounding once the support is found (finite
  termination), however badly the task-gradient norms are scaled.
* :func:`min_norm_weights` — MGDA's min-norm point of the convex hull (``Q = G, p = 0``).
* :func:`cagrad_weights` — CAGrad (Liu et al. 2021, Alg. 1): a support search on the primal
  (eq. 3) in unit-norm gradients — on a support every task in it has the same value and the
  update lies on the ball, one Cholesky solve and a quadratic — settled by block pivoting and
  certified by an exact optimality test; problems it cannot certify (zero or duplicate rows,
  Pareto-stationary points) take the exact root search over the dual (eq. 11).
* :func:`dual_cone_qp` — ``min vᵀGv`` s.t. ``v ≥ lower`` (projections onto the dual cone of the
  task gradients: UPGrad, DualProj), block principal pivoting with an active-set fallback.
* :func:`bargaining_weights` — positive ``w`` with ``(Gw)_i = w_i^{−1/α}`` (Nash-MTL for α = 1,
  FairGrad), damped Newton on a convex potential.
* :func:`config_weights` — ConFIG's equal-projection direction through the cosine matrix.

On the CPU the iterations stop as soon as every problem of the batch has converged (checking
costs nothing there); on an accelerator they run for the fixed maximum number of iterations with
converged problems frozen by ``torch.where``, so no step synchronises with the host.
"""

from .bargaining import bargaining_weights
from .cagrad import cagrad_mtrl_weights, cagrad_weights
from .conflict_free import config_weights
from .dual_cone import dual_cone_qp
from .simplex import min_norm_weights, simplex_qp

__all__ = [
    "simplex_qp",
    "min_norm_weights",
    "cagrad_weights",
    "cagrad_mtrl_weights",
    "dual_cone_qp",
    "bargaining_weights",
    "config_weights",
]
