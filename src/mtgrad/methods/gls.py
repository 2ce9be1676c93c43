"""GLS: the geometric loss strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LossWeighting
from ._loss_checks import check_losses

__all__ = ["GLS"]


class GLS(LossWeighting):
    r"""Geometric loss strategy, Chennupati et al. (2019): the geometric mean of the losses.

    The backpropagated objective is ``L = (Π_i L_i)^{1/T}``, computed as
    ``exp((1/T) Σ_i log L_i)`` so that a product of many small (or large) losses neither
    underflows nor overflows. Its gradient is ``Σ_i a_i ∇L_i`` with the effective weights

    ``a_i = ∂L/∂L_i = (Π_j L_j)^{1/T} / (T L_i)``,

    which is what :meth:`combine` reports: a task whose loss is small relative to the others gets
    a large weight. Rescaling one loss ``L_k → a L_k`` multiplies the objective by ``a^{1/T}``
    and leaves the update's direction unchanged (``∇L ∝ Σ_i ∇L_i / L_i``).

    LibMTL's ``GLS`` backpropagates the same objective (as ``prod(L) ** (1/T)``, without the log
    space) but reports ``L_i / (T Π_j L_j)`` as its weights, which are not the gradient weights;
    the update itself is identical. The losses must be positive. No options, no state. Set
    ``check_values = False`` on an instance to skip the per-call value check (one host read).
    """

    check_values: bool = True

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        losses = check_losses(losses, None, "GLS", positive=True, values=self.check_values)
        T = losses.shape[0]
        objective = torch.exp(torch.log(losses).mean())
        values = losses.detach()
        weights = torch.exp(torch.log(values).mean()) / (T * values)
        return objective, weights
