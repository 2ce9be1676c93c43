"""Gradient accumulation: per-task gradients summed over micro-batches, one surgery per step.

``backward`` applies the method to the task gradients of the losses it is given. Called once per
micro-batch, that is a surgery per micro-batch — ``Σ_k A(J_k)``, which is not ``A(Σ_k J_k)``,
the large-batch step. Here the two halves are separate::

    grads = None
    for xb, yb in micro_batches:
        grads = mtgrad.accumulate_task_gradients(losses(xb, yb), trunk.parameters(), into=grads)
    record = mtgrad.apply_task_gradients(grads, mtgrad.PCGrad())   # writes .grad once
    opt.step()

The heads' ``.grad`` accumulates ``∇ Σ_i L_i`` over the micro-batches as ``loss.backward()``
does; the shared parameters get ``Σ_i w_i Σ_k g_i^(k)`` with ``w`` from the Gramian of the summed
task gradients — the step one process would take on the whole batch (losses summed, as
``loss.backward()`` sums gradients: divide each micro-batch's loss by their number for a mean).
:class:`mtgrad.MTLOptimizer` does this with ``backward(losses)`` per micro-batch and ``step()``.

The Gramian-only engine and ``representation=`` never hold the task gradients, so they cannot
accumulate; they raise here and work with ``backward`` on one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._autocast import outside_autocast
from .backward import (
    BackwardResult,
    _as_losses,
    _as_params,
    _check_devices,
    _check_finite_losses,
    _check_method,
    _check_paths,
    _combined,
    _loss_scale,
    reached_only,
)
from .distributed import Replicas, replicas
from .engine import ENGINES, Engine, graph_leaves, task_gradients
from .methods.base import JacobianAggregator, LossWeighting, Method
from .stored import GramianPolicy, stored_weights

__all__ = ["TaskGradients", "accumulate_task_gradients", "apply_task_gradients"]


@dataclass
class TaskGradients:
    """The shared parameters' task gradients summed over micro-batches.

    Attributes:
        params: the shared parameters, in order.
        blocks: per parameter, ``(T, *p.shape)``: row i is ``Σ_k ∇_p L_i^(k)``.
        losses: ``(T,)`` float64, ``Σ_k L_i^(k)`` (the losses whose gradients the blocks are).
        micro_batches: how many were added.
        loss_scale: the GradScaler's scale the losses were multiplied by (the same for every
            micro-batch: the scaler changes it only in ``update()``, after the step), or None.
        replicas: the ranks the step is shared with (:mod:`mtgrad.distributed`): the blocks
            and losses are this rank's until :func:`apply_task_gradients` averages them.
        reached: ids of the shared parameters some micro-batch's losses reached; outside
            ``torch.distributed`` the others keep their ``.grad`` (see :func:`mtgrad.backward`).
    """

    params: list[Tensor]
    blocks: list[Tensor]
    losses: Tensor
    micro_batches: int
    loss_scale: Tensor | None
    replicas: Replicas
    reached: set[int] = field(default_factory=set)


@outside_autocast
def accumulate_task_gradients(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor] | nn.Module,
    *,
    into: TaskGradients | None = None,
    engine: Engine = "loop",
    retain_graph: bool = False,
    check_finite: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    data_parallel: bool | dist.ProcessGroup | None = None,
) -> TaskGradients:
    """Add this micro-batch's per-task gradients of the shared parameters to ``into`` (or start).

    Every other leaf (the heads) gets ``∇ Σ_i L_i`` added to its ``.grad`` now, as in
    :func:`mtgrad.backward`; the shared parameters' ``.grad`` is left alone until
    :func:`apply_task_gradients`. On an error nothing is written or added.

    Under ``torch.distributed`` (``data_parallel`` as in :func:`mtgrad.backward`) nothing is
    communicated here but a finiteness flag (so that a NaN on one rank stops every rank);
    :func:`apply_task_gradients` averages the sums over the ranks once. A DDP reducer that
    prepared for this backward (a forward outside ``no_sync()``) still gets every parameter's
    gradient now, as it expects: the heads' own and zeros for the shared parameters.
    """
    if engine not in ENGINES:
        raise ValueError(
            f"engine must be one of {ENGINES} to accumulate task gradients, got {engine!r} (the Gramian-only "
            "engine never holds them: use mtgrad.backward on one batch with it)"
        )
    task_losses = _as_losses(losses)
    params = _as_params(shared_params)
    _check_devices(task_losses, params)
    values = torch.stack([loss.detach() for loss in task_losses]).to(torch.float64)
    ranks = replicas(data_parallel) if into is None else into.replicas
    if ranks.initialised and not ranks.parallel and dist.get_world_size() > 1:
        raise ValueError(
            "data_parallel=False with gradient accumulation under torch.distributed: the rank-local update "
            "is written after DDP has reduced, so nothing would average it and the ranks would drift apart; "
            "use the default (exact) data_parallel, or mtgrad.backward per micro-batch for rank-local surgery"
        )
    if check_finite:
        _check_finite_losses(values, ranks)
    _check_paths(task_losses, params)
    if into is not None:
        _check_compatible(into, params, len(task_losses))
    scale = _loss_scale(scaler, values)
    if scale is not None:
        task_losses = [loss * scale.to(loss.dtype) for loss in task_losses]
    leaves = graph_leaves(task_losses)
    shared = {id(p) for p in params}
    others = [leaf for leaf in leaves if id(leaf) not in shared]
    reached = {id(leaf) for leaf in leaves} & shared
    blocks, heads = task_gradients(task_losses, params, others, engine, retain_graph)
    if ranks.initialised:
        ranks.deliver([*params, *others], [*(p.new_zeros(()).expand_as(p) for p in params), *heads])
    else:
        ranks.deliver(others, heads)
    if into is None:
        return TaskGradients(params, blocks, values, 1, scale, ranks, reached)
    into.reached |= reached
    for total, block in zip(into.blocks, blocks):
        total.add_(block)
    into.losses = into.losses + values
    into.micro_batches += 1
    return into


@outside_autocast
def apply_task_gradients(grads: TaskGradients, method: Method, *, check_finite: bool = True) -> BackwardResult:
    """Apply ``method`` once to the accumulated task gradients: ``.grad += Σ_i w_i J_i``.

    Takes every method that works on task gradients (Gramian weightings, CAGradFast, Reuse,
    Jacobian aggregators); loss weightings need none: :meth:`mtgrad.MTLOptimizer.backward`
    accumulates those whose objective is linear in the losses.
    """
    if isinstance(method, LossWeighting):
        raise TypeError(
            f"{type(method).__name__} is a loss weighting: it computes no task gradients; accumulate it with "
            "MTLOptimizer.backward per micro-batch and step() (exact where its objective is linear in the losses)"
        )
    _check_method(method)
    if not isinstance(grads, TaskGradients):
        raise TypeError(f"grads must be the TaskGradients of accumulate_task_gradients, got {type(grads).__name__}")
    ranks = grads.replicas
    policy = GramianPolicy(check=check_finite, loss_scale=grads.loss_scale, replicas=ranks)
    ranks.mean_([*grads.blocks, grads.losses])
    G: Tensor | None
    if isinstance(method, JacobianAggregator):
        G = policy.gramian(grads.blocks)
        updates: list[Tensor | None] = [ranks.agree(u) for u in method.aggregate_blocks(grads.blocks, grads.losses)]
        ranks.deliver(grads.params, _reached(grads, updates))
        return BackwardResult(weights=None, gramian=G)
    weights, G = stored_weights(method, grads.blocks, grads.losses, policy)  # type: ignore[arg-type]
    ranks.deliver(grads.params, _reached(grads, _combined(weights, grads.blocks)))
    return BackwardResult(weights=weights, gramian=G)


def _reached(grads: TaskGradients, updates: list[Tensor | None]) -> list[Tensor | None]:
    return updates if grads.replicas.initialised else reached_only(grads.params, updates, grads.reached)


def _check_compatible(into: TaskGradients, params: list[Tensor], num_tasks: int) -> None:
    if [id(p) for p in into.params] != [id(p) for p in params]:
        raise ValueError("into holds the task gradients of other shared parameters than these")
    if into.blocks[0].shape[0] != num_tasks:
        raise ValueError(f"into holds {into.blocks[0].shape[0]} tasks' gradients, this micro-batch has {num_tasks} losses")
