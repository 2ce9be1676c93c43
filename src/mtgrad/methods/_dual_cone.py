"""What UPGrad, DualProj and ConFIG share: a validated preference vector; and the base of the
dual-cone projections (torchjd's optional safeguards, the QP of :func:`mtgrad.solvers.dual_cone_qp`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Weighting

Preference = Sequence[float] | Tensor | None


class DualConeWeighting(Weighting):
    """Base of the dual-cone projections: validated ``pref``, ``norm_eps``, ``reg_eps``, ``max_iter``."""

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

    def _cone_problem(self, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """The preference ``u`` for this T and the (optionally regularised) Gramian."""
        return _pref_for(self.pref, gramian), _regularize(gramian, self.norm_eps, self.reg_eps)

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
