"""Task weights from stored per-task gradients: one dispatch for every Gramian-based method kind.

:func:`mtgrad.aggregate` (a stored Jacobian), :func:`mtgrad.grouped_backward` (vmapped per-task
gradients) and :func:`mtgrad.backward` (the loop and batched engines) all hold the task gradients
as per-parameter blocks ``(T, *p.shape)``; :func:`stored_weights` turns them into the weights
``w`` of the update ``Σ_i w_i g_i`` for a :class:`~mtgrad.Weighting`, :class:`~mtgrad.CAGradFast`
(eq. 4: the Gramian of the sampled rows and the pseudo-task only) or a :class:`~mtgrad.Reuse` of
either, so that every entry point accepts the same methods.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .gramian import gramian
from .methods.base import Weighting
from .methods.schedules import CAGradFast, Reuse

__all__ = ["stored_weights", "checked_gramian", "sampled_rows"]


def stored_weights(
    method: Weighting | CAGradFast | Reuse, blocks: list[Tensor], losses: Tensor | None, check_finite: bool = True
) -> tuple[Tensor, Tensor | None]:
    """``(w, G)``: task weights (T,) and the T×T Gramian of the task gradients, ``None`` when the
    step did not form it (a reused step, or CAGrad-Fast's Gramian of its sampled rows).

    ``losses`` (T,) go to a weighting that needs them (it raises if they are ``None``).
    """
    T = blocks[0].shape[0]
    if isinstance(method, Reuse):
        planned = method.planned_weights(T, blocks[0])
        if planned is not None:
            method.advance()
            return planned, None
        w, G = stored_weights(method.method, blocks, losses, check_finite)
        method.advance(w)
        return w, G
    if isinstance(method, CAGradFast):
        sampled = method.sample(T)
        G = checked_gramian((sampled_rows(block, sampled) for block in blocks), check_finite)
        return method.task_weights(G, sampled, T), G if len(sampled) == T else None
    G = checked_gramian(blocks, check_finite)
    return method.weights(G, losses if method.needs_losses else None, validate=False), G


def checked_gramian(blocks: Iterable[Tensor], check_finite: bool) -> Tensor:
    """:func:`mtgrad.gramian.gramian`, refusing a NaN or inf result when ``check_finite``."""
    G = gramian(blocks)
    if check_finite and not bool(torch.isfinite(G).all()):
        raise ValueError("a task gradient of the shared parameters is NaN or inf (an overflow?)")
    return G


def sampled_rows(block: Tensor, sampled: list[int]) -> Tensor:
    """The gradient rows the solver sees: every task's, or CAGrad-Fast's sampled tasks plus the
    pseudo-task ``g̃ = mean_{j∉S} g_j`` (eq. 4). Reducing before the Gramian makes it
    ``(|S| + 1)² d`` instead of ``T² d`` multiply-adds, the point of CAGrad-Fast."""
    T = block.shape[0]
    if len(sampled) == T:
        return block
    index = torch.tensor(sampled, device=block.device)
    own = block.index_select(0, index)
    pseudo = (block.sum(0) - own.sum(0)) / (T - len(sampled))
    return torch.cat([own, pseudo.unsqueeze(0)])
