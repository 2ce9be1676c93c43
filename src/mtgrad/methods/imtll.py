"""IMTL-L: the loss-balance half of Impartial Multi-Task Learning (Liu et al., "Towards Impartial
Multi-task Learning", ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._learned import LearnedTaskVector

__all__ = ["IMTLL"]


class IMTLL(LearnedTaskVector):
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
        device: where ``s`` lives (default: torch's default device); it must be the losses' device.
        dtype: ``s``'s dtype (default: torch's default dtype).

    ``s`` is created once; :meth:`load_state_dict` copies into it, so an optimizer that holds it
    keeps working. Set ``check_values = False`` on an instance to skip the per-call finiteness
    check of the losses (one host read).
    """

    state_key = "log_scales"

    def __init__(
        self,
        num_tasks: int,
        init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:  # spelled out so that a missing argument is reported against this class
        super().__init__(num_tasks, init, device, dtype)

    @property
    def log_scales(self) -> Tensor:
        """The learned vector ``s`` (the tensor an optimizer holds)."""
        return self.vector

    def terms(self) -> tuple[Tensor, Tensor]:
        """``(e^s, −Σ_i s_i)``."""
        s = self.log_scales
        return torch.exp(s), -s.sum()
