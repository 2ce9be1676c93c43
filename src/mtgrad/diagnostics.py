"""Conflict diagnostics from the Gramian: the "tragic triad" measures of PCGrad (Yu et al. 2020).

All are functions of ``G = J Jᵀ`` (``(..., T, T)``), so they cost nothing beyond the Gramian that
every gradient method already computes; :meth:`mtgrad.BackwardResult.diagnostics` applies them to
a step's record. Pairs involving a zero gradient have no angle: their cosine is reported as 0
(no conflict) and their magnitude similarity as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "cosine_matrix",
    "conflict_rate",
    "magnitude_similarity",
    "curvature_bound",
    "multitask_curvature",
    "Diagnostics",
    "diagnose",
]


def _norms(G: Tensor) -> Tensor:
    return G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def cosine_matrix(G: Tensor) -> Tensor:
    """``cos φ_ij = g_i·g_j/(‖g_i‖‖g_j‖)`` (Def. 1: tasks conflict iff it is negative)."""
    n = _norms(G)
    outer = n.unsqueeze(-1) * n.unsqueeze(-2)
    return torch.where(outer > 0, G / torch.where(outer > 0, outer, 1.0), 0.0).clamp(-1.0, 1.0)


def conflict_rate(G: Tensor) -> Tensor:
    """Fraction of the ``T(T−1)/2`` task pairs whose gradients conflict (``cos φ_ij < 0``)."""
    T = G.shape[-1]
    if T < 2:
        return G.new_zeros(G.shape[:-2])
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool, device=G.device), diagonal=1)
    return ((cosine_matrix(G) < 0) & upper).sum((-2, -1)).to(G.dtype) / upper.sum()


def magnitude_similarity(G: Tensor) -> Tensor:
    """``Φ(g_i, g_j) = 2‖g_i‖‖g_j‖/(‖g_i‖² + ‖g_j‖²)`` ∈ [0, 1] (Def. 2; 1 for equal norms)."""
    n = _norms(G)
    sq = G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    den = sq.unsqueeze(-1) + sq.unsqueeze(-2)
    return torch.where(den > 0, 2 * n.unsqueeze(-1) * n.unsqueeze(-2) / torch.where(den > 0, den, 1.0), 0.0)


def curvature_bound(G: Tensor) -> Tensor:
    """``ξ(g_i, g_j) = (1 − cos²φ_ij)·‖g_i − g_j‖²/‖g_i + g_j‖²`` (Def. 5), pairwise.

    Theorem 2's condition (b′) is ``ξ ≤ 1``. Infinite where ``g_i = −g_j`` (the sum vanishes).
    """
    sq = G.diagonal(dim1=-2, dim2=-1)
    plus = sq.unsqueeze(-1) + sq.unsqueeze(-2) + 2 * G
    minus = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * G).clamp_min(0.0)
    sin2 = 1 - cosine_matrix(G).square()
    return torch.where(plus > 0, sin2 * minus / torch.where(plus > 0, plus, 1.0), torch.inf)


def multitask_curvature(loss_before: Tensor, loss_after: Tensor, grads: list[Tensor], steps: list[Tensor]) -> Tensor:
    """PCGrad's estimate of the multi-task curvature along a step (Sec. 5.3, from Def. 3):

    ``H(L; θ_t, θ_{t+1}) = 2·[L(θ_{t+1}) − L(θ_t) − ∇L(θ_t)ᵀ(θ_{t+1} − θ_t)]``,

    with ``L = Σ_i L_i`` evaluated on the same batch before and after the step, ``grads`` the
    gradient of that summed loss at ``θ_t`` and ``steps`` the parameter changes, tensor by tensor.
    It costs the second loss evaluation, which is why nothing computes it unless asked.
    """
    if len(grads) != len(steps):
        raise ValueError(f"grads and steps must pair up tensor by tensor, got {len(grads)} and {len(steps)}")
    directional = sum((g.double() * s.double()).sum() for g, s in zip(grads, steps))
    return 2 * (loss_after.double() - loss_before.double() - directional)


@dataclass(frozen=True)
class Diagnostics:
    """The conflict statistics of one Gramian (each a tensor; pairwise ones are T×T)."""

    cosine: Tensor
    conflict_rate: Tensor
    magnitude_similarity: Tensor
    curvature_bound: Tensor
    norms: Tensor


def diagnose(G: Tensor) -> Diagnostics:
    """All the measures of this module for ``G``."""
    return Diagnostics(cosine_matrix(G), conflict_rate(G), magnitude_similarity(G), curvature_bound(G), _norms(G))
