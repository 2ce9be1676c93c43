"""The three kinds of method and the interface each implements.

* :class:`Weighting` — most methods (PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL, …): the Gramian
  ``G = J Jᵀ`` of the task gradients (T×T, optionally with leading batch dimensions) → task
  weights ``w`` (T,); the update is ``d = Jᵀw = Σ_i w_i g_i``. Separating the weighting from the
  Jacobian lets one method serve every engine: a stored Jacobian, a Gramian accumulated layer by
  layer, or a batch of small problems (the 2-D toys).
* :class:`JacobianAggregator` — methods that work coordinate-wise on the task gradients
  themselves (GradDrop): per-parameter blocks ``(T, *shape)`` → per-parameter updates.
* :class:`LossWeighting` — methods that need only the losses (uncertainty weighting, DWA, FAMO,
  …): the losses → one scalar to backpropagate once; no per-task gradients at all.

State (running averages, logits, random streams) lives in one explicit place per method and is
what ``state_dict`` saves; nothing else about a method changes between steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = ["Method", "Weighting", "JacobianAggregator", "LossWeighting"]


class Method(ABC):
    """What every method shares: a readable ``repr`` and ``state_dict``/``load_state_dict``."""

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


class Weighting(Method):
    """Gramian ``(..., T, T)`` → task weights ``(..., T)``.

    Subclasses implement :meth:`_weights` on a validated float64 Gramian; :meth:`weights` checks
    the input, promotes to float64 (the T×T problems are tiny, and their answers must not depend on
    the gradients' precision) and returns weights in the Gramian's dtype.

    A weighting that also needs the loss values (e.g. MGDA's ``"loss"`` normalisation) sets
    ``needs_losses = True`` and receives them as a float64 tensor ``(..., T)``.
    """

    needs_losses: bool = False

    def weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Task weights ``w`` such that the update is ``Σ_i w_i g_i``."""
        _check_gramian(gramian)
        if losses is not None:
            losses = losses.detach().to(device=gramian.device, dtype=torch.float64)
            if losses.shape != gramian.shape[:-1]:
                raise ValueError(f"losses must have shape {tuple(gramian.shape[:-1])}, got {tuple(losses.shape)}")
        elif self.needs_losses:
            raise ValueError(f"{type(self).__name__} needs the loss values: call weights(gramian, losses)")
        return self._weights(gramian.to(torch.float64), losses).to(gramian.dtype)

    __call__ = weights

    @abstractmethod
    def _weights(self, gramian: Tensor, losses: Tensor | None) -> Tensor: ...


class JacobianAggregator(Method):
    """Per-parameter task-gradient blocks ``(T, *shape)`` → per-parameter updates ``shape``.

    For methods that act on each coordinate of the gradients (GradDrop), which no Gramian can
    express. ``losses`` (T,) are given for methods that use them.
    """

    @abstractmethod
    def aggregate_blocks(self, blocks: list[Tensor], losses: Tensor | None = None) -> list[Tensor]: ...


class LossWeighting(Method):
    """Losses ``(T,)`` → one scalar to backpropagate; no per-task gradients are computed.

    ``combine`` returns ``(objective, weights)``: ``objective`` is backpropagated once (it may
    depend on the method's learnable :meth:`parameters`, e.g. uncertainty weighting's log-variances)
    and ``weights`` (T,) are the effective task weights, for logging. Methods that learn from the
    next losses (FAMO) do so in :meth:`after_step`, which :class:`mtgrad.MTLOptimizer` calls.
    """

    #: True for methods that learn from the losses recomputed after the model's step (FAMO):
    #: ``MTLOptimizer.step`` then requires a ``closure`` rather than silently not learning.
    needs_closure: bool = False

    @abstractmethod
    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]: ...

    def parameters(self) -> list[Tensor]:
        """Learnable tensors of the method, to be optimised with the model (empty by default)."""
        return []

    def after_step(self, losses: Tensor) -> None:
        """Hook called with the losses recomputed after the model's step (no-op by default)."""


def _check_gramian(gramian: Tensor) -> None:
    if not isinstance(gramian, Tensor):
        raise TypeError(f"gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if gramian.dim() < 2 or gramian.shape[-1] != gramian.shape[-2]:
        raise ValueError(f"gramian must have shape (..., T, T), got {tuple(gramian.shape)}")
    if gramian.shape[-1] == 0:
        raise ValueError("gramian has T = 0 tasks: there is nothing to weight")
    if not gramian.is_floating_point():
        raise TypeError(f"gramian must be a floating-point tensor, got dtype {gramian.dtype}")
