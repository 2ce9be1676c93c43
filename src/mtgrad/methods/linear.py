"""Linear scalarisation: the papers' "GD" baseline."""

from __future__ import annotations

from torch import Tensor

from .base import Weighting

__all__ = ["Mean", "Sum"]


class Mean(Weighting):
    """Equal weights ``w_i = 1/T``: the gradient of the average loss ``L₀ = (1/T) Σ L_i``.

    CAGrad (Liu et al. 2021, eq. 1) writes its theory for this average; its "GD" is this update.
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gramian.shape[-1]
        return gramian.new_full(gramian.shape[:-1], 1.0 / T)


class Sum(Weighting):
    """Unit weights ``w_i = 1``: the gradient of the summed loss ``Σ L_i``.

    PCGrad (Yu et al. 2020, Sec. 2.1) and the MTAN/CAGrad "equal weighting" use this sum.
    """

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        return gramian.new_ones(gramian.shape[:-1])
