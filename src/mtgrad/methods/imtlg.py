"""IMTL-G: impartial gradient weighting (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Weighting

__all__ = ["IMTLG"]

_EPS = torch.finfo(torch.float64).eps
# Eigenvalues of the bordered system below this fraction (× (T+1)) of the largest are treated as 0.
_PINV_RTOL = 1e3 * _EPS
# |Σ α| below this fraction of Σ |α| means no update with Σ α = 1 exists (zero weights returned).
_SUM_RTOL = 1e-12


class IMTLG(Weighting):
    r"""The gradient balance of IMTL (Liu et al., ICLR 2021), its closed-form solution.

    The update ``d = Σ_i α_i g_i`` has **equal projections onto every unit task gradient**
    ``u_i = g_i/‖g_i‖`` (``d·u_1 = d·u_i`` for all i) and ``Σ_i α_i = 1``. The paper solves
    this with ``D = [g_1 − g_2; …; g_1 − g_T]`` and ``U = [u_1 − u_2; …; u_1 − u_T]``:
    ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:T}`` (also nash-mtl's and LibMTL's code).

    Here the same equations are solved on the Gramian, in a form that stays exact where the
    closed form is ill-conditioned. With ``β_i = ‖g_i‖ α_i`` and the cosine matrix
    ``Ĝ_ij = G_ij/(‖g_i‖‖g_j‖)``, "equal projections" reads ``Ĝβ = c·1``. The symmetric bordered
    system ``[[Ĝ, 1], [1ᵀ, 0]] [β; −c] = [0; 1]`` fixes the scale by ``Σ β_i = 1`` (never
    degenerate: ``Σβ = 0`` with ``Ĝβ = c1`` forces ``d = 0``), after which ``α = β/‖g‖`` is
    rescaled to ``Σ α = 1``. Its conditioning is that of the *directions* only: the task norms
    never enter the solve, and nearly opposite gradients — where ``G`` is nearly singular and
    ``G⁻¹`` or ``G⁺`` loses every digit — stay well-conditioned. It equals the closed form
    whenever that is defined (e.g. linearly independent gradients).

    The line of ``d`` depends only on the unit gradients ``u_i``: scaling any ``g_i`` by
    ``s_i > 0`` keeps ``d`` on the same line (its length changes through ``Σα = 1``, and so can
    its orientation, with the sign of ``Σ_i β_i/‖g_i‖``); scaling all gradients by ``s > 0``
    leaves the weights unchanged and scales ``d`` by ``s``; permuting the tasks permutes the
    weights.

    Degenerate inputs (no NaN in any case):

    * a zero gradient has no direction; its task gets weight 0 and the others are balanced
      among themselves (the weights are those of IMTL-G without that task);
    * exactly opposite gradients (``g_2 = −k g_1``) admit only ``d = 0`` with equal
      projections; that is returned (the closed form gives the same);
    * linearly dependent gradients in general position (e.g. T > rank(J)): the only update
      with equal projections is ``d = 0``, and that is what the exact solve returns, up to
      rounding (so does the closed form when it is defined). torchjd's generalisation
      ``α ∝ G⁺ (‖g_1‖, …, ‖g_T‖)`` returns a least-squares compromise instead, whose projections
      are *not* equal (and whose least squares weighs task i by ``‖g_i‖²``, so its direction is
      not impartial);
    * positively colinear gradients (``g_2 = k g_1``, k > 0) make the equations
      underdetermined; the minimum-norm ``β`` (the pseudo-inverse of the bordered system) splits
      them equally, which for two tasks gives ``d`` = the harmonic mean of the two norms along
      the common direction — the limit of the closed form as a perpendicular perturbation of
      either gradient vanishes;
    * when the equal-projection direction has ``Σ α = 0`` no update with ``Σ α = 1`` exists
      (the paper's ``d`` is infinite); the weights are then 0, as in torchjd.

    Note that ``Σ α = 1`` does not make ``α ≥ 0``: for T ≥ 3 with very unequal gradient norms
    the common projection ``d·u_i`` can even be negative (an ascent direction for every task).
    That is the closed form itself (and LibMTL's and torchjd's result); it is reproduced, not
    altered.

    The paper applies IMTL-G to the gradients of the shared *representation* (like MGDA-UB) for
    speed; here it acts on whatever task gradients produced the Gramian. IMTL-L (the learned loss
    scales of the full IMTL) is a separate loss weighting.
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gramian.shape[-1]
        sq = gramian.diagonal(dim1=-2, dim2=-1)
        live = sq > 0
        inv_norm = torch.where(live, torch.where(live, sq, 1.0).rsqrt(), 0.0)
        cos = gramian * inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)
        # A zero gradient's row becomes β_i = 0: unit diagonal, no border entry.
        cos = cos + torch.diag_embed((~live).to(gramian.dtype))
        border = live.to(gramian.dtype)
        top = torch.cat([cos, border.unsqueeze(-1)], dim=-1)
        bottom = torch.cat([border, torch.zeros_like(border[..., :1])], dim=-1).unsqueeze(-2)
        system = torch.cat([top, bottom], dim=-2)
        # Minimum-norm solution of system · x = e_{T+1}, by its eigendecomposition (symmetric).
        lam, Q = torch.linalg.eigh(system)
        cutoff = lam.abs().amax(-1, keepdim=True) * (_PINV_RTOL * (T + 1))
        keep = lam.abs() > cutoff
        coeff = torch.where(keep, Q[..., T, :] / torch.where(keep, lam, 1.0), 0.0)
        beta = (Q[..., :T, :] * coeff.unsqueeze(-2)).sum(-1)
        alpha = beta * inv_norm
        total = alpha.sum(-1, keepdim=True)
        ok = total.abs() > _SUM_RTOL * alpha.abs().sum(-1, keepdim=True)
        return torch.where(ok, alpha / torch.where(ok, total, 1.0), 0.0)
