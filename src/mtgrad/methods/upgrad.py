"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, arXiv:2406.16232)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..solvers import dual_cone_qp
from .base import Weighting

__all__ = ["UPGrad"]

Preference = Sequence[float] | Tensor | None


class UPGrad(Weighting):
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
        norm_eps, reg_eps: torchjd's and LibMTL's numerical safeguards, for parity runs: ``G`` is
            divided by its trace (set to 0 when the trace is below ``norm_eps``) and
            ``reg_eps·I`` is added before solving. Both default to 1e-4 there; here to 0, the
            exact projection (dividing by the trace alone changes nothing).
        max_iter: cap on the solver's rounds (default ``6T + 30``; see ``dual_cone_qp``).
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
        v = dual_cone_qp(G.unsqueeze(-3), torch.diag_embed(u), max_iter=self.max_iter)  # (..., T, T)
        return v.sum(-2)

    def _config(self) -> dict[str, Any]:
        return {
            "pref": None if self.pref is None else self.pref.tolist(),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
            "max_iter": self.max_iter,
        }


def _check_pref(pref: Preference) -> Tensor | None:
    if pref is None:
        return None
    if isinstance(pref, (str, bytes)):
        raise TypeError(f"pref must be a sequence of numbers or a tensor, got {pref!r}")
    try:
        u = torch.as_tensor(pref, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"pref must be a sequence of numbers or a tensor, got {pref!r}") from exc
    if u.dim() != 1 or u.numel() == 0:
        raise ValueError(f"pref must be a non-empty 1-D sequence (one entry per task), got shape {tuple(u.shape)}")
    if not bool(torch.isfinite(u).all()) or bool((u < 0).any()):
        raise ValueError(f"pref must hold finite numbers ≥ 0, got {u.tolist()}")
    return u


def _pref_for(pref: Tensor | None, gramian: Tensor) -> Tensor:
    T = gramian.shape[-1]
    if pref is None:
        return gramian.new_full((T,), 1.0 / T)
    if pref.numel() != T:
        raise ValueError(f"pref has {pref.numel()} entries but the Gramian has T = {T} tasks")
    return pref.to(device=gramian.device, dtype=gramian.dtype)


def _check_eps(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def _regularize(G: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """torchjd's ``regularize(normalize(G, norm_eps), reg_eps)``, batched and without host syncs."""
    if norm_eps == 0 and reg_eps == 0:
        return G
    trace = G.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    keep = (trace >= norm_eps) & (trace > 0)
    G = torch.where(keep, G / torch.where(keep, trace, 1.0), 0.0)
    return G + reg_eps * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
