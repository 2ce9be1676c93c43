"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, arXiv:2406.16232)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers import dual_cone_qp
from ._dual_cone import DualConeWeighting

__all__ = ["UPGrad"]


class UPGrad(DualConeWeighting):
    r"""Unconflicting Projection of Gradients, UPGrad (Quinton & Rey 2024).

    Every gradient, scaled by its preference ``u_i``, is projected onto the dual cone of all the
    gradients, ``{d : g_jᵀd ≥ 0 ∀j}``, and the projections are summed. By their Prop. 1 the
    projection of ``Jᵀl`` is ``Jᵀv`` with ``v = argmin_{v ≥ l} vᵀGv``, so

        d = Σ_i π_J(u_i g_i) = Jᵀ Σ_i v⁽ⁱ⁾,    v⁽ⁱ⁾ = argmin_{v ≥ u_i e_i} vᵀGv,

    and the weights are ``Σ_i v⁽ⁱ⁾``. The T quadratic programs are solved exactly as one batch by
    :func:`mtgrad.solvers.dual_cone_qp`. The update never conflicts with a task (``g_jᵀd ≥ 0``);
    when no two gradients conflict it is ``Σ u_i g_i``; with two tasks and ``pref = [1, 1]`` it
    equals PCGrad's sum.

    Edge cases (no NaN in any of them): ``T = 1`` gives ``d = u_1 g_1``; a zero gradient keeps the
    weight ``u_i`` and contributes nothing; singular Gramians (duplicated or colinear gradients,
    T > rank) give the exact projection — the update is unique even where the weights are not.

    Args:
        pref: preference vector ``u`` (T non-negative numbers); default ``1/T`` for every task
            (torchjd's default, also LibMTL's). ``[1] * T`` sums the projections instead.
        norm_eps: torchjd's and LibMTL's numerical safeguard, for parity runs: ``G`` is divided by
            its trace, set to 0 when the trace is below ``norm_eps``. 1e-4 there; 0 here, the
            exact projection (dividing by the trace alone changes nothing).
        reg_eps: their other safeguard: ``reg_eps·I`` is added before solving. 1e-4 there; 0
            here (exact).
        max_iter: cap on the solver's rounds (default ``6T + 30``; see ``dual_cone_qp``).
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        u, G = self._cone_problem(gramian)
        v = dual_cone_qp(G.unsqueeze(-3), torch.diag_embed(u), max_iter=self.max_iter)  # (..., T, T)
        return v.sum(-2)
