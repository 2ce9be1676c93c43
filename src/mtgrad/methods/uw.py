"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._learned import LearnedTaskVector

__all__ = ["UW"]


class UW(LearnedTaskVector):
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
        device: where ``s`` lives (default: torch's default device); it must be the losses' device.
        dtype: ``s``'s dtype (default: torch's default dtype).

    ``s`` is created once and never replaced: :meth:`load_state_dict` copies into it, so an
    optimizer that holds it keeps working. Its values are the whole state. Set
    ``check_values = False`` on an instance to skip the per-call finiteness check of the losses
    (one host read).
    """

    state_key = "log_vars"

    def __init__(
        self,
        num_tasks: int,
        init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:  # spelled out so that a missing argument is reported against this class
        super().__init__(num_tasks, init, device, dtype)

    @property
    def log_vars(self) -> Tensor:
        """The learned vector ``s`` (the tensor an optimizer holds)."""
        return self.vector

    def terms(self) -> tuple[Tensor, Tensor]:
        """``(½ e^{−s}, ½ Σ_i s_i)``."""
        s = self.log_vars
        return 0.5 * torch.exp(-s), 0.5 * s.sum()
