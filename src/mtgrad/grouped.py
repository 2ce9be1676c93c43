"""Grouped rows: per-task gradients when each task owns its own rows of the batch.

In multi-task RL (multi-task SAC on Meta-World) and multi-input MTL, task i's loss depends only
on task i's rows. Then the per-task gradients cost about one backward pass: the T per-task
forward/backward problems are vmapped into one batched computation (``torch.func``), where a
plain "one backward of each task's loss over the whole batch" would cost T passes.

    record = mtgrad.grouped_backward(model, task_loss, batch, mtgrad.CAGrad(0.9))

``task_loss(params, rows)`` computes one task's loss from its rows with
``torch.func.functional_call(model, params, ...)``; every tensor in ``batch`` has the task as its
leading dimension, ``(T, rows_per_task, ...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ._autocast import autocast_off
from .backward import BackwardResult, _check_finite_losses, _check_parallel_method
from .distributed import replicas
from .engine import graph_leaves
from .gramian import combine
from .methods.base import JacobianAggregator, LossWeighting, Method, Weighting
from .methods.schedules import CAGradFast, Reuse
from .stored import GramianPolicy, stored_weights

__all__ = ["grouped_task_gradients", "grouped_backward"]

Randomness = Literal["error", "different", "same"]


def grouped_task_gradients(
    model: torch.nn.Module,
    task_loss: Callable[[dict[str, Tensor], Any], Tensor],
    batch: Any,
    *,
    randomness: Randomness = "error",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-task losses ``(T,)`` and gradients ``{name: (T, *param.shape)}`` of every trainable
    parameter, with task ``i``'s loss computed from ``batch[..][i]`` only.

    Args:
        model: the module whose trainable parameters are differentiated.
        task_loss: ``task_loss(params, rows) -> scalar``, one task's loss from its rows, calling
            the model as ``torch.func.functional_call(model, params, inputs)``.
        batch: a tensor or a (nested) tuple/list/dict of tensors, each ``(T, rows, ...)``.
        randomness: passed to :func:`torch.func.vmap`: ``"different"`` when the loss draws random
            numbers (dropout, SAC's reparameterised actions) and each task should draw its own,
            ``"same"`` for one draw shared by every task; the default refuses random operations.

    A parameter the loss never reaches gets zeros here (``torch.func.grad`` cannot tell it from a
    zero gradient); :func:`grouped_backward` tells them apart.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameter that requires grad")
    leaves = torch.utils._pytree.tree_leaves(batch)
    if not leaves or not all(isinstance(x, Tensor) for x in leaves):
        raise TypeError("batch must be a tensor or a (nested) tuple/list/dict of tensors")
    sizes = {x.shape[0] if x.dim() else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"every tensor in batch needs the task as its leading dimension, got leading sizes {sorted(map(str, sizes))}"
        )
    detached = {name: p.detach() for name, p in params.items()}

    def one_task(p: dict[str, Tensor], rows: Any) -> tuple[Tensor, Tensor]:
        loss = task_loss(p, rows)
        if loss.dim() != 0:
            raise ValueError(f"task_loss must return a scalar, got shape {tuple(loss.shape)}")
        return loss, loss

    with _randomness_hint(randomness):
        grads, losses = torch.func.vmap(
            torch.func.grad(one_task, has_aux=True), in_dims=(None, 0), randomness=randomness
        )(detached, batch)
    return losses, grads


@contextlib.contextmanager
def _randomness_hint(randomness: Randomness) -> Iterator[None]:
    """Name this module's ``randomness`` argument in vmap's refusal of a random operation."""
    try:
        yield
    except RuntimeError as error:
        if randomness != "error" or "randomness" not in str(error):
            raise
        raise RuntimeError(
            "task_loss draws random numbers (dropout, sampling) under vmap: pass randomness='different' "
            "for each task its own draws, or randomness='same' for one draw shared by all tasks"
        ) from error


def _reached(
    model: torch.nn.Module,
    task_loss: Callable[[dict[str, Tensor], Any], Tensor],
    batch: Any,
    randomness: Randomness,
    names: list[str],
) -> set[str]:
    """Those of ``names`` that the vmapped losses' autograd graph reaches: one more forward, taken
    only for parameters whose gradient came back exactly zero for every task. It draws from
    forked random streams, so that a loss that samples leaves the caller's streams as they were."""
    # Fresh leaves, so that a loss reaching the module's own parameters (not ``params``) is not
    # mistaken for one that uses what it is given.
    params = {name: p.detach().requires_grad_() for name, p in model.named_parameters() if p.requires_grad}
    cuda = sorted({p.device.index or 0 for p in params.values() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.enable_grad(), _randomness_hint(randomness):
        losses = torch.func.vmap(task_loss, in_dims=(None, 0), randomness=randomness)(params, batch)
    leaves = {id(leaf) for leaf in graph_leaves([losses])}
    return {name for name in names if id(params[name]) in leaves}


def grouped_backward(
    model: torch.nn.Module,
    task_loss: Callable[[dict[str, Tensor], Any], Tensor],
    batch: Any,
    method: Method,
    *,
    shared: Iterable[str] | None = None,
    randomness: Randomness = "error",
    check_finite: bool = True,
    data_parallel: bool | dist.ProcessGroup | None = None,
) -> BackwardResult:
    """Gradient surgery with per-task gradients from each task's own rows.

    The shared parameters (all trainable ones unless ``shared`` names a subset) receive the
    method's combination of the per-task gradients ``g_i``; every other trainable parameter
    receives ``Σ_i g_i``. Gradients are added to ``.grad`` as in :func:`mtgrad.backward`.

    * a Gramian weighting (PCGrad, CAGrad, MGDA, …): ``Σ_i w_i g_i`` with ``w = method.weights(G)``;
    * :class:`~mtgrad.CAGradFast`: eq. (4) of Liu et al. (2021) on the sampled tasks plus the
      pseudo-task ``g̃ = mean_{j∉S} g_j`` (every ``g_i`` costs the same one vmapped backward here,
      so the saving is in the Gramian: ``(|S| + 1)² d`` instead of ``T² d``); ``gramian`` is then
      ``None`` (only those ``|S| + 1`` rows' Gramian was formed), as in :func:`mtgrad.backward`;
    * :class:`~mtgrad.Reuse` of either: the inner method every ``every`` steps, its weights between;
    * a Jacobian aggregator (GradDrop): its update from the per-task gradient blocks;
    * a loss weighting (UW, DWA, …): one backward of its combined objective into every trainable
      parameter, shared or not, as :func:`mtgrad.backward` does for loss weightings (the per-task
      losses are still each computed from their own rows); ``gramian`` is then ``None``.

    Under data parallelism (``data_parallel`` as in :func:`mtgrad.backward`; the model is called
    functionally, so no DDP wrapper is involved) every parameter's per-task gradients and the
    losses are averaged over the ranks first: every rank writes the same, global-batch ``.grad``.

    A parameter no task's loss reaches keeps its ``.grad`` (``None`` included), as after
    ``loss.backward()``; a ``task_loss`` that reaches none of the shared parameters (it ignores
    ``params``) is refused.

    Args:
        model: the module whose trainable parameters are updated.
        task_loss: ``task_loss(params, rows) -> scalar``: one task's loss from its own rows, calling
            the model as ``torch.func.functional_call(model, params, inputs)``.
        batch: a tensor or a (nested) tuple/list/dict of tensors, each ``(T, rows, ...)``: task
            ``i``'s rows are ``[i]`` of every tensor.
        method: what combines the per-task gradients (see above).
        shared: names (as in ``model.named_parameters()``) of the shared parameters; all trainable
            ones when ``None``.
        randomness: ``"error"`` (refuse random operations), ``"different"`` (each task its own
            draws: dropout, sampled actions) or ``"same"``; passed to :func:`torch.func.vmap`.
        check_finite: refuse NaN/inf losses and gradients before anything is written.
        data_parallel: as in :func:`mtgrad.backward`.
    """
    if randomness not in ("error", "different", "same"):
        raise ValueError(f"randomness must be 'error', 'different' or 'same', got {randomness!r}")
    if isinstance(shared, (str, bytes)):
        raise TypeError(f"shared must be an iterable of parameter names, got the string {shared!r} (use [{shared!r}])")
    if shared is not None:
        shared = list(shared)
        if not shared:
            raise ValueError("shared names no parameter: pass None (every trainable parameter) or at least one name")
    ranks = replicas(data_parallel)
    _check_parallel_method(method, ranks)
    if isinstance(method, LossWeighting):
        if shared is not None:
            known = {name for name, p in model.named_parameters() if p.requires_grad}
            unknown = sorted(set(shared) - known)
            if unknown:
                raise ValueError(f"shared names {unknown} are not trainable parameters of the model")
        return _loss_weighting_backward(model, task_loss, batch, method, randomness, check_finite)
    if not isinstance(method, (Weighting, CAGradFast, Reuse, JacobianAggregator)):
        raise TypeError(
            "grouped_backward needs a Gramian weighting (e.g. mtgrad.PCGrad()), CAGradFast, Reuse, a Jacobian "
            f"aggregator or a loss weighting, got {type(method).__name__}"
        )
    losses, grads = grouped_task_gradients(model, task_loss, batch, randomness=randomness)
    with autocast_off():  # the forward above is the caller's (autocast kept); the rest is mtgrad's
        names = list(grads)
        shared_names = names if shared is None else list(shared)
        unknown = sorted(set(shared_names) - set(names))
        if unknown:
            raise ValueError(f"shared names {unknown} are not trainable parameters of the model")
        if check_finite:
            _check_finite_losses(losses.detach(), ranks)
        losses = losses.detach().clone()
        ranks.mean_([*grads.values(), losses])
        grads = _drop_unreached(model, task_loss, batch, randomness, grads, shared_names)
        shared_names = [n for n in shared_names if n in grads]
        shared_set = set(shared_names)
        updates: dict[str, Tensor] = {name: g.sum(0) for name, g in grads.items() if name not in shared_set}
        blocks = [grads[n] for n in shared_names]
        w: Tensor | None
        policy = GramianPolicy(check=check_finite, replicas=ranks)
        G: Tensor | None
        if isinstance(method, JacobianAggregator):
            w, G = None, policy.gramian(blocks)
            updates.update(zip(shared_names, (ranks.agree(u) for u in method.aggregate_blocks(blocks, losses))))
        else:
            w, G = stored_weights(method, blocks, losses, policy)
            updates.update((name, combine(w, grads[name])) for name in shared_names)
        params = dict(model.named_parameters())
        ranks.deliver([params[name] for name in updates], list(updates.values()))
        return BackwardResult(weights=w, gramian=G, losses=losses)


_PROBE = 16  # leading entries per task read first when telling unreached parameters apart


def _drop_unreached(
    model: torch.nn.Module,
    task_loss: Callable[[dict[str, Tensor], Any], Tensor],
    batch: Any,
    randomness: Randomness,
    grads: dict[str, Tensor],
    shared: list[str],
) -> dict[str, Tensor]:
    """``grads`` without the parameters no loss reaches (their zeros would overwrite ``.grad``);
    a ``ValueError`` when that leaves no shared parameter.

    A reached parameter almost always has a nonzero entry among its first few, so those are read
    first (one host read, a few numbers per parameter); only a parameter whose first entries are
    all zero is read whole (a second read), and only one whose whole gradient is zero costs the
    forward of :func:`_reached`. Reading every gradient whole would cost ~10% of the step."""
    names = list(grads)
    probe = torch.stack([grads[n].reshape(grads[n].shape[0], -1)[:, :_PROBE].eq(0).all() for n in names]).tolist()
    suspects = [n for n, zero in zip(names, probe) if zero]
    if not suspects:
        return grads
    whole = torch.stack([grads[n].eq(0).all() for n in suspects]).tolist()
    candidates = [n for n, zero in zip(suspects, whole) if zero]
    if not candidates:
        return grads
    unreached = set(candidates) - _reached(model, task_loss, batch, randomness, candidates)
    if unreached.issuperset(shared):
        raise ValueError(
            "task_loss has no gradient path to the shared parameters: its losses do not depend on any of "
            f"{shared[:4]}{' …' if len(shared) > 4 else ''} (does it call "
            "torch.func.functional_call(model, params, ...) with the params it is given?)"
        )
    return {name: g for name, g in grads.items() if name not in unreached}


def _loss_weighting_backward(
    model: torch.nn.Module,
    task_loss: Callable[[dict[str, Tensor], Any], Tensor],
    batch: Any,
    method: LossWeighting,
    randomness: Randomness,
    check_finite: bool,
) -> BackwardResult:
    params: dict[str, Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameter that requires grad")
    with _randomness_hint(randomness):
        losses = torch.func.vmap(task_loss, in_dims=(None, 0), randomness=randomness)(params, batch)
    if check_finite and not bool(torch.isfinite(losses.detach()).all()):
        raise ValueError(f"task losses are NaN or inf: {losses.detach().tolist()}")
    objective, weights = method.combine(losses)
    objective.backward()
    return BackwardResult(weights=weights.detach().to(torch.float64), gramian=None, losses=losses.detach())
