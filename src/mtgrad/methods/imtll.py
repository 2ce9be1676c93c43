"""IMTL-L: the loss-balance half of Impartial Multi-Task Learning (Liu et al., "Towards Impartial
Multi-task Learning", ICLR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LossWeighting
from ._loss_checks import check_finite_float, check_losses, check_num_tasks, load_into, make_parameter

__all__ = ["IMTLL"]


class IMTLL(LossWeighting):
    r"""IMTL-L, Liu et al. (2021): learnable loss scales that equalise the scaled losses.

    Each task gets a learnable ``s_i`` and the backpropagated objective is

    ``L = Σ_i (e^{s_i} L_i − s_i)``,

    so ``∂L/∂s_i = e^{s_i} L_i − 1 = 0`` drives every scaled loss ``e^{s_i} L_i`` towards 1 (the
    paper's scale-invariant balance; the ``−s_i`` term stops ``s_i → −∞``). ``s`` is learned
    jointly with the model: :meth:`parameters` returns ``[s]``, which :class:`mtgrad.MTLOptimizer`
    adds to the wrapped optimizer. The effective task weights are ``e^{s_i}``.

    This is LibMTL's form (its ``IMTL`` weighting applies it before IMTL-G; ``s`` starts at 0).
    IMTL-G, the gradient half, is a Gramian weighting of its own.

    Args:
        num_tasks: T, the number of losses.
        init: initial ``s_i`` (LibMTL: 0, scale 1).
        device, dtype: where ``s`` lives (default: torch's default device and dtype); it must be
            on the losses' device.

    ``s`` is created once; :meth:`load_state_dict` copies into it, so an optimizer that holds it
    keeps working. Set ``check_values = False`` on an instance to skip the per-call finiteness
    check of the losses (one host read).
    """

    check_values: bool = True

    def __init__(
        self,
        num_tasks: int,
        init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks)
        self.init = check_finite_float(init, "init")
        self.log_scales = make_parameter(self.num_tasks, self.init, device, dtype, "IMTLL")

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scales
        losses = check_losses(losses, self.num_tasks, "IMTLL", device=s.device, values=self.check_values)
        objective = (torch.exp(s) * losses - s).sum()
        return objective, torch.exp(s.detach())

    def parameters(self) -> list[Tensor]:
        return [self.log_scales]

    def state_dict(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_into(self.log_scales, state, "log_scales", "IMTLL")

    def _config(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "init": self.init}
