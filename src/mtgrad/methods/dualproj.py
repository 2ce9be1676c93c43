"""DualProj: the preference-weighted mean gradient projected onto the dual cone of the gradients
(Lopez-Paz & Ranzato's GEM projection, eq. 11; as an aggregator in torchjd)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..solvers import dual_cone_qp
from .base import Weighting
from .upgrad import Preference, _check_eps, _check_pref, _pref_for, _regularize

__all__ = ["DualProj"]


class DualProj(Weighting):
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
        norm_eps, reg_eps: torchjd's safeguards (trace normalisation, ``+ reg_eps·I``), default 0
            here (exact); torchjd uses 1e-4 and 1e-4.
        max_iter: cap on the solver's rounds (default ``6T + 30``).
    """

    def __init__(
        self,
        pref: Preference = None,
        norm_eps: float = 0.0,
        reg_eps: float = 0.0,
        max_iter: int | None = None,
    ) -> None:
        self.pref = _check_pref(pref)
        self.norm_eps = _check_eps("norm_eps", norm_eps)
        self.reg_eps = _check_eps("reg_eps", reg_eps)
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
            raise ValueError(f"max_iter must be a positive int or None, got {max_iter!r}")
        self.max_iter = max_iter

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        u = _pref_for(self.pref, gramian)
        G = _regularize(gramian, self.norm_eps, self.reg_eps)
        return dual_cone_qp(G, u, max_iter=self.max_iter)

    def _config(self) -> dict[str, Any]:
        return {
            "pref": None if self.pref is None else self.pref.tolist(),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
            "max_iter": self.max_iter,
        }
