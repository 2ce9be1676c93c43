"""ConFIG: conflict-free inverse gradients (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free
Training of Physics Informed Neural Networks", ICLR 2025, arXiv:2408.11104)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..solvers import config_weights
from .base import Weighting
from ._dual_cone import Preference, _check_pref, _pref_for

__all__ = ["ConFIG"]


class ConFIG(Weighting):
    r"""Conflict-Free Inverse Gradients, ConFIG (Liu, Chu & Thuerey 2024).

    The paper's update (eq. 2 of arXiv:2408.11104, the equation torchjd cites)::

        g_ConFIG = (Σ_i g_iᵀ ĝ) ĝ,    ĝ = U[ [U(g_1), …, U(g_T)]^{-ᵀ} w ],    U(x) = x/‖x‖,

    where ``M^{-ᵀ}`` is the pseudo-inverse of ``Mᵀ`` and ``w = 1`` (equal weights). When the unit
    gradients are linearly independent the projections ``U(g_i)ᵀĝ`` are proportional to ``w_i``:
    equal and positive for ``w = 1``, so no task conflicts with the update. Its length is the sum
    of the gradients' projections on ``ĝ``.
    On the Gramian: with ``D = diag(1/‖g_i‖)`` and the cosine matrix ``C = DGD``,
    ``[U(g_i)]^{-ᵀ}w = Σ_i a_i g_i`` with ``a = D C⁺ w``, so the weights are
    ``a·(1ᵀGa)/(aᵀGa)`` (:func:`mtgrad.solvers.config_weights`). The direction is invariant to
    rescaling any task's gradient; the length scales with the gradients.

    Official code (tum-pbs/ConFIG, ``ConFIG_update``): ``U(x) = x/(‖x‖ + ε)`` and a least-squares
    solve instead of the pseudo-inverse (the same minimum-norm solution); torchjd uses
    ``pinv(units)`` with zero unit vectors for zero rows. Here ``U`` is exact (no ε); a zero
    gradient gets weight 0, and when ``U⁺w = 0`` (e.g. two exactly opposite gradients) the update
    is 0, as in torchjd. With ``T = 1`` the update is ``g_1``. On singular cosine matrices
    eigenvalues below ``1e-12·λ_max`` are treated as 0 (``σ < 1e-6·σ_max`` for the unit gradients).

    Args:
        pref: the weight vector ``w`` (T non-negative numbers; default ones, the official
            ``EqualWeight``). Only its direction matters.
    """

    def __init__(self, pref: Preference = None) -> None:
        self.pref = _check_pref(pref)

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        pref = None if self.pref is None else _pref_for(self.pref, gramian)
        return config_weights(gramian, pref)

    def _config(self) -> dict[str, Any]:
        return {"pref": None if self.pref is None else self.pref.tolist()}
