"""The interface every Gramian-based method implements.

A :class:`Weighting` maps the Gramian ``G = J Jᵀ`` of the task gradients (T×T, optionally with
leading batch dimensions) to task weights ``w`` (T,); the update is ``d = Jᵀw = Σ_i w_i g_i``.
Separating the weighting from the Jacobian lets one method serve every engine: a stored
Jacobian, a Gramian accumulated layer by layer, or a batch of small problems (the 2-D toys).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = ["Weighting"]


class Weighting(ABC):
    """Gramian ``(..., T, T)`` → task weights ``(..., T)``.

    Subclasses implement :meth:`_weights` on a validated float64 Gramian; :meth:`weights` checks
    the input, promotes to float64 (the T×T problems are tiny, and their answers must not depend on
    the gradients' precision) and returns weights in the Gramian's dtype.
    """

    def weights(self, gramian: Tensor) -> Tensor:
        """Task weights ``w`` such that the update is ``Σ_i w_i g_i``."""
        _check_gramian(gramian)
        return self._weights(gramian.to(torch.float64)).to(gramian.dtype)

    __call__ = weights

    @abstractmethod
    def _weights(self, gramian: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue a run identically (random streams, running averages)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


def _check_gramian(gramian: Tensor) -> None:
    if not isinstance(gramian, Tensor):
        raise TypeError(f"gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if gramian.dim() < 2 or gramian.shape[-1] != gramian.shape[-2]:
        raise ValueError(f"gramian must have shape (..., T, T), got {tuple(gramian.shape)}")
    if gramian.shape[-1] == 0:
        raise ValueError("gramian has T = 0 tasks: there is nothing to weight")
    if not gramian.is_floating_point():
        raise TypeError(f"gramian must be a floating-point tensor, got dtype {gramian.dtype}")
