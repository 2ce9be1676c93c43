"""Adam on one batched tensor: B independent 2-parameter runs of the toy problems at once."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BatchedAdam"]


class BatchedAdam:
    """Adam on one tensor, updated in place; the same arithmetic as ``torch.optim.Adam``
    (single-tensor path, no weight decay, no amsgrad) with ``x.grad = grad``.

    Because every element has its own moments, one ``(B, 2)`` tensor runs B independent
    2-parameter Adam optimisations at once.
    """

    def __init__(
        self,
        x: Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.x = x
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = torch.zeros_like(x)
        self.exp_avg_sq = torch.zeros_like(x)
        self.t = 0

    def step(self, grad: Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        bias_correction1 = 1 - b1**self.t
        bias_correction2_sqrt = math.sqrt(1 - b2**self.t)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.x.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)
