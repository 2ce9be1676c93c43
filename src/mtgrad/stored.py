"""Task weights from stored per-task gradients: one dispatch for every Gramian-based method kind.

:func:`mtgrad.aggregate` (a stored Jacobian), :func:`mtgrad.grouped_backward` (vmapped per-task
gradients) and :func:`mtgrad.backward` (the loop and batched engines) all hold the task gradients
as per-parameter blocks ``(T, *p.shape)``; :func:`stored_weights` turns them into the weights
``w`` of the update ``Σ_i w_i g_i`` for a :class:`~mtgrad.Weighting`, :class:`~mtgrad.CAGradFast`
(eq. 4: the Gramian of the sampled rows and the pseudo-task only) or a :class:`~mtgrad.Reuse` of
either, so that every entry point accepts the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .distributed import LOCAL, Replicas
from .gramian import gramian
from .methods.base import Weighting
from .methods.schedules import CAGradFast, Reuse

__all__ = ["GramianPolicy", "stored_weights", "sampled_rows"]


@dataclass(frozen=True)
class GramianPolicy:
    """How a freshly formed Gramian is checked and brought to the gradients' true units.

    ``check``: read G on the host and refuse NaN/inf (an overflow) with a ``ValueError``.
    ``loss_scale``: the loss scale ``s`` of a ``torch.amp.GradScaler`` the losses were multiplied
    by. G is then divided by ``s²`` — exact, ``s`` is a power of two — so the method sees the
    unscaled Gramian and its weights do not depend on ``s``, while the update written into
    ``.grad`` stays scaled, as the scaler expects (``scaler.step`` unscales it). An overflow is
    then no error: the weights fall back to the mean, the non-finite update reaches ``.grad`` and
    the scaler skips the step and backs off, as it does for a plain ``loss.backward()``.
    ``replicas``: the ranks sharing the step (:mod:`mtgrad.distributed`); the weights are rank 0's
    on every rank, so that a method drawing random numbers takes one step everywhere.
    """

    check: bool = True
    loss_scale: Tensor | None = None
    replicas: Replicas = LOCAL

    def gramian(self, blocks: Iterable[Tensor], tasks: Sequence[int] | None = None) -> Tensor:
        """:func:`mtgrad.gramian.gramian` of ``blocks``, through :meth:`prepared`."""
        return self.prepared(gramian(blocks), tasks)

    def prepared(self, G: Tensor, tasks: Sequence[int] | None = None) -> Tensor:
        """``G`` in the true units (÷ s²); without a scaler, a NaN/inf one is refused (``check``),
        naming the tasks whose rows it is (``tasks``: the task of each row, when not row i = task i;
        a row beyond them is CAGrad-Fast's pseudo-task)."""
        if self.loss_scale is not None:
            return G / self.loss_scale.to(G).square()
        if self.check and not bool(torch.isfinite(G).all()):
            raise ValueError(_nonfinite_message(G, tasks))
        return G

    def solve(self, G: Tensor, solve: Callable[[Tensor], Tensor]) -> Tensor:
        """``solve(G)`` on a :meth:`prepared` G, or equal weights when it overflowed under a scaler
        (which will skip the step)."""
        if self.loss_scale is not None and self.check and not bool(torch.isfinite(G).all()):
            return G.new_full(G.shape[:-1], 1.0 / G.shape[-1])
        return self.replicas.agree(solve(G))


def _nonfinite_message(G: Tensor, tasks: Sequence[int] | None) -> str:
    if G.dim() != 2:
        return "a task gradient of the shared parameters is NaN or inf (an overflow?)"
    bad = (~torch.isfinite(G.diagonal())).nonzero().flatten().tolist()
    if not bad:
        return "the task gradients' inner products overflow (gradients of norm ~1e154 or more?)"
    # Rows beyond ``tasks`` are CAGrad-Fast's pseudo-task. It is formed from every task's gradient
    # (or g₀), so a bad sampled task spoils it too: it is named only when no sampled row is bad.
    named = [i if tasks is None else tasks[i] for i in bad if tasks is None or i < len(tasks)]
    plural = len(named) > 1
    whose = f"task{'s' if plural else ''} {', '.join(map(str, named))}" if named else "the pseudo-task (the mean of the unsampled tasks)"
    return (
        f"the gradient{'s' if plural else ''} of {whose} with respect to the shared parameters "
        f"{'are' if plural else 'is'} NaN or inf (an overflow?)"
    )


def stored_weights(
    method: Weighting | CAGradFast | Reuse,
    blocks: list[Tensor],
    losses: Tensor | None,
    policy: GramianPolicy = GramianPolicy(),
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
        w, G = stored_weights(method.method, blocks, losses, policy)
        method.advance(w)
        return w, G
    if isinstance(method, CAGradFast):
        sampled = policy.replicas.agree_indices(method.sample(T), T)
        G = policy.gramian((sampled_rows(block, sampled) for block in blocks), sampled)
        return policy.solve(G, lambda G: method.task_weights(G, sampled, T)), G if len(sampled) == T else None
    G = policy.gramian(blocks)
    return policy.solve(G, lambda G: method.weights(G, losses if method.needs_losses else None, validate=False)), G


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
