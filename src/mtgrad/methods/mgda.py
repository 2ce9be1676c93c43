"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ..solvers import min_norm_weights
from .base import Weighting

__all__ = ["MGDA"]

Normalization = Literal["none", "l2", "loss", "loss+"]
ApplyTo = Literal["original", "normalized"]


class MGDA(Weighting):
    """Multiple-gradient descent (Désidéri 2012; Sener & Koltun 2018, eq. 3 / CAGrad eq. 6).

    ``w* = argmin_{w ∈ Δ} ‖Σ_i w_i g_i‖²`` and the update is ``d = Σ_i w*_i g_i``, the min-norm
    element of the convex hull of the task gradients: ``d = 0`` exactly when the point is
    Pareto-stationary. Solved exactly by an active-set method (see :func:`mtgrad.solvers.simplex_qp`),
    including on Jacobians whose row norms span many orders of magnitude, where the Frank–Wolfe
    loops of other implementations stop early.

    Args:
        normalization: gradient normalisation before the min-norm solve, from Sener & Koltun's
            code (``gradient_normalizers``; "optional and not included in the paper"):
            ``"none"`` (default; also nash-mtl's and LibMTL's default), ``"l2"`` (``g_i/‖g_i‖``;
            nash-mtl calls it ``"norm"``), ``"loss"`` (``g_i/L_i``) or ``"loss+"``
            (``g_i/(L_i‖g_i‖)``). The two loss modes need the loss values
            (:attr:`needs_losses` is then True). A scale that is zero, negative or not finite
            (a zero gradient, a loss ≤ 0) is replaced by 1 — the official code would divide by
            it (NaN, or a flipped gradient).
        apply_to: which gradients the min-norm weights ``w`` of the normalised problem combine.
            ``"original"`` (default): ``d = Σ_i w_i g_i`` — Sener & Koltun's
            ``train_multi_task.py`` solves on the normalised gradients, then back-propagates
            ``Σ_i w_i L_i`` ("scaled back-propagation"), and nash-mtl's ``MGDA`` likewise returns
            ``Σ_i w_i L_i``. ``"normalized"``: ``d = Σ_i w_i g_i/s_i``, the min-norm element of the
            normalised gradients (LibMTL's ``MGDA`` with ``rep_grad=False``, which recombines the
            normalised ``grads``); the returned weights are then ``w_i/s_i``, for the original
            gradients. The two agree for ``normalization="none"``.

    nash-mtl also multiplies the weights by T ("sum to n_tasks"); multiply the result by T for
    that convention.
    """

    def __init__(self, normalization: Normalization = "none", apply_to: ApplyTo = "original") -> None:
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"normalization must be 'none', 'l2', 'loss' or 'loss+', got {normalization!r}")
        if apply_to not in ("original", "normalized"):
            raise ValueError(f"apply_to must be 'original' or 'normalized', got {apply_to!r}")
        self.normalization: Normalization = normalization
        self.apply_to: ApplyTo = apply_to
        self.needs_losses = normalization in ("loss", "loss+")

    @property
    def gramian_degree(self) -> float:
        # Dividing by the gradient norms (l2, loss+) and then applying to the normalised ones
        # takes one power of ‖g‖ = √λ out of the update.
        return -0.5 if self.apply_to == "normalized" and self.normalization in ("l2", "loss+") else 0.0

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        if self.normalization == "none":
            return min_norm_weights(gramian)
        scale = self.scales(gramian, losses)
        w = min_norm_weights(gramian / (scale.unsqueeze(-1) * scale.unsqueeze(-2)))
        return w / scale if self.apply_to == "normalized" else w

    def scales(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        """The normalisers ``s_i`` (..., T): the gradients used in the solve are ``g_i/s_i``."""
        if self.normalization == "none":
            return torch.ones_like(gramian[..., 0])
        if self.needs_losses and losses is None:
            raise ValueError(f"MGDA(normalization={self.normalization!r}) needs the loss values")
        norms = gramian.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
        if self.normalization == "l2":
            scale = norms
        else:
            assert losses is not None  # needs_losses is set for the loss modes
            scale = losses if self.normalization == "loss" else losses * norms
        usable = torch.isfinite(scale) & (scale > 0)
        return torch.where(usable, scale, 1.0)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.normalization != "none":
            config["normalization"] = self.normalization
        if self.apply_to != "original":
            config["apply_to"] = self.apply_to
        return config
