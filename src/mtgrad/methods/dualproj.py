"""DualProj: the preference-weighted mean gradient projected onto the dual cone of the gradients
(Lopez-Paz & Ranzato's GEM projection, eq. 11; as an aggregator in torchjd)."""

from __future__ import annotations

from torch import Tensor

from ..solvers import dual_cone_qp
from ._dual_cone import DualConeWeighting

__all__ = ["DualProj"]


class DualProj(DualConeWeighting):
    r"""Projection of ``Jᵀu`` onto the dual cone ``{d : g_jᵀd ≥ 0 ∀j}`` (torchjd ``DualProj``).

    The closest non-conflicting direction to the preference-weighted combination ``Σ u_i g_i``;
    it solves Lopez-Paz & Ranzato's GEM projection ("Gradient Episodic Memory for Continual
    Learning", NeurIPS 2017, eq. 11) with every task as a constraint. By Quinton & Rey's Prop. 1
    (arXiv:2406.16232) the projection is ``Jᵀv`` with

        v = argmin_{v ≥ u} vᵀGv,

    solved exactly by :func:`mtgrad.solvers.dual_cone_qp`; the weights are ``v``. If ``Jᵀu``
    already conflicts with no task, ``v = u``.

    Edge cases (no NaN in any of them): ``T = 1`` gives ``d = u_1 g_1``; a zero gradient keeps its
    weight ``u_i``; singular Gramians give the exact projection (the update is unique, the weights
    need not be).

    Args:
        pref: preference vector ``u`` (T non-negative numbers); default ``1/T`` (the mean, torchjd's
            default).
        norm_eps: torchjd's trace-normalisation safeguard; default 0 here (exact), 1e-4 there.
        reg_eps: torchjd's ``+ reg_eps·I`` safeguard; default 0 here (exact), 1e-4 there.
        max_iter: cap on the solver's rounds (default ``6T + 30``).
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        u, G = self._cone_problem(gramian)
        return dual_cone_qp(G, u, max_iter=self.max_iter)
