"""``MTLOptimizer``: ``opt.step(losses)`` for those who prefer an optimizer-shaped surface."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .backward import BackwardResult, backward
from .methods.base import LossWeighting, Method

__all__ = ["MTLOptimizer"]


class MTLOptimizer:
    """Wraps any ``torch.optim.Optimizer``: ``step(losses)`` runs :func:`mtgrad.backward` then steps.

    Example::

        opt = mtgrad.MTLOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3),
                                  shared_params=model.trunk.parameters(), method=mtgrad.PCGrad())
        opt.zero_grad()
        record = opt.step([loss_a, loss_b])   # record.weights, record.gramian

    ``state_dict`` holds the inner optimizer's state and the method's (e.g. PCGrad's generator),
    so a run restored with ``load_state_dict`` continues identically.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        shared_params: Iterable[Tensor],
        method: Method,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(method, Method):
            raise TypeError(f"method must be an mtgrad method (e.g. mtgrad.PCGrad()), got {type(method).__name__}")
        self.optimizer = optimizer
        self.shared_params = list(shared_params)
        if not self.shared_params:
            raise ValueError("shared_params is empty: give the parameters all tasks share")
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [i for i, p in enumerate(self.shared_params) if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"shared_params {missing} are not managed by the optimizer, so they would never be updated")
        self.method = method
        #: With a ``torch.amp.GradScaler``, :meth:`backward` scales the losses and gives the method
        #: the unscaled task gradients, and :meth:`step` is ``scaler.step`` + ``scaler.update``.
        self.scaler = scaler
        if isinstance(method, LossWeighting):
            own = [p for p in method.parameters() if id(p) not in in_optimizer]
            if own:  # learned jointly with the model, as in Kendall et al. (2018)
                optimizer.add_param_group({"params": own})

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def backward(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> BackwardResult:
        """Only the gradient part of :meth:`step` (e.g. to clip gradients before stepping)."""
        if self.scaler is not None:
            kwargs.setdefault("scaler", self.scaler)
        return backward(losses, self.shared_params, self.method, **kwargs)

    def step(
        self,
        losses: Sequence[Tensor] | Tensor,
        closure: Callable[[], Sequence[Tensor] | Tensor] | None = None,
        **kwargs: Any,
    ) -> BackwardResult:
        """:func:`mtgrad.backward` on ``losses``, then one step of the inner optimizer.

        ``closure``, if given, recomputes the task losses after the step (same batch); a loss
        weighting that learns from them (FAMO) receives them through ``after_step``.
        """
        if closure is None and getattr(self.method, "needs_closure", False):
            raise ValueError(
                f"{type(self.method).__name__} learns from the losses after the step: "
                "pass closure=... that recomputes them on the same batch"
            )
        record = self.backward(losses, **kwargs)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step on an overflow and adjusts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if closure is not None and isinstance(self.method, LossWeighting):
            with torch.no_grad():
                new = closure()
            self.method.after_step(torch.stack(list(new)) if not isinstance(new, Tensor) else new)
        return record

    def end_epoch(self) -> None:
        """Tell an epoch-windowed method (DWA) that an epoch ended; a no-op for the others."""
        end = getattr(self.method, "end_epoch", None)
        if callable(end):
            end()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"optimizer", "method"} - set(state)
        if missing:
            raise ValueError(f"MTLOptimizer state is missing {sorted(missing)}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])

    def __repr__(self) -> str:
        return f"MTLOptimizer({type(self.optimizer).__name__}, method={self.method!r}, shared={len(self.shared_params)} tensors)"
