"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._loss_checks import check_num_tasks, check_finite_float, make_parameter, load_into, check_losses
from .base import LossWeighting

__all__ = ["UW"]


class UW(LossWeighting):
    r"""Homoscedastic-uncertainty weighting, Kendall et al. (2018).

    Each task gets a learnable log-variance ``s_i = log σ_i²`` and the backpropagated objective is

    ``L = Σ_i ½ (e^{−s_i} L_i + s_i)``  (= ``Σ_i L_i/(2σ_i²) + log σ_i``),

    learned jointly with the model: :meth:`parameters` returns ``[s]``, which
    :class:`mtgrad.MTLOptimizer` adds to the wrapped optimizer (with plain :func:`mtgrad.backward`
    put ``method.parameters()`` in your optimizer yourself). The effective task weights are
    ``∂L/∂L_i = ½ e^{−s_i}``. Regressing ``s`` instead of ``σ`` keeps the objective finite for
    every ``s`` (the paper's remark on numerical stability).

    The paper's classification likelihood gives ``L_i/σ_i² + log σ_i`` (no ½); every
    reference implementation (nash-mtl ``Uncertainty``, LibMTL ``UW``, the official MTAN code
    ``lorenmt/mtan``) uses the regression form above for all tasks, and so does this class.

    Args:
        num_tasks: T, the number of losses.
        init: initial ``s_i``. ``0.0`` (σ = 1) is nash-mtl's start;
            the official MTAN code (``logsigma = [-0.5, …]``, objective
            ``L_i/(2e^{s_i}) + s_i/2``, the same function) and LibMTL start from ``−0.5``.
        device, dtype: where ``s`` lives (default: torch's default device and dtype); it must be
            on the losses' device.

    ``s`` is created once and never replaced: :meth:`load_state_dict` copies into it, so an
    optimizer that holds it keeps working. Its values are the whole state. Set
    ``check_values = False`` on an instance to skip the per-call finiteness check of the losses
    (one host read).
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
        self.log_vars = make_parameter(self.num_tasks, self.init, device, dtype, "UW")

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        losses = check_losses(losses, self.num_tasks, "UW", device=self.log_vars.device, values=self.check_values)
        s = self.log_vars
        objective = 0.5 * (torch.exp(-s) * losses + s).sum()
        return objective, 0.5 * torch.exp(-s.detach())

    def parameters(self) -> list[Tensor]:
        return [self.log_vars]

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_into(self.log_vars, state, "log_vars", "UW")

    def _config(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "init": self.init}
