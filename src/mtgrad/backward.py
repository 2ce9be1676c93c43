"""``mtgrad.backward``: per-task gradients of the shared parameters, aggregated into ``.grad``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .autogram import GramianEngine
from .diagnostics import Diagnostics, diagnose
from .engine import (
    ENGINES,
    Engine,
    backward_through_representation,
    graph_leaves,
    reaches,
    representation_gradients,
    sampled_gradients,
    task_gradients,
    weighted_backward,
)
from .gramian import combine
from .methods.base import JacobianAggregator, LossWeighting, Method, Weighting
from .methods.schedules import CAGradFast, Reuse
from .stored import GramianPolicy, stored_weights

__all__ = ["backward", "BackwardResult"]


@dataclass(frozen=True)
class BackwardResult:
    """What one :func:`backward` call did.

    Attributes:
        weights: task weights ``w`` (T,), float64: the shared update was ``Σ_i w_i g_i`` (for a
            loss weighting, the backpropagated objective's weights). ``None`` for a
            :class:`~mtgrad.methods.base.JacobianAggregator`.
        gramian: ``G = J Jᵀ`` (T, T), float64, of the shared-parameter task gradients; ``None``
            when the step did not form it: a loss weighting, a reused step of
            :class:`~mtgrad.Reuse`, or a :class:`~mtgrad.CAGradFast` step that sampled tasks (its
            solver saw only the sampled rows' Gramian).
        losses: the per-task loss values ``(T,)``, detached, where the call computed them itself
            (:func:`mtgrad.grouped_backward`); ``None`` when the caller passed them in.
    """

    weights: Tensor | None
    gramian: Tensor | None
    losses: Tensor | None = None

    def diagnostics(self) -> Diagnostics:
        """Conflict statistics of this step's task gradients (cosines, conflict rate, Φ, ξ)."""
        if self.gramian is None:
            raise ValueError("this step computed no per-task gradients (a loss weighting or a reused step)")
        return diagnose(self.gramian)


def backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    method: Method,
    *,
    retain_graph: bool = False,
    check_finite: bool = True,
    engine: Engine | GramianEngine = "loop",
    representation: Tensor | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> BackwardResult:
    """Backpropagate T task losses with gradient surgery on the shared parameters.

    For a gradient method (a :class:`~mtgrad.methods.base.Weighting` such as PCGrad, or a
    :class:`~mtgrad.methods.base.JacobianAggregator`), each task's gradient
    ``g_i = ∇_θ L_i`` of the shared parameters θ is computed (one backward
    pass per task), the method turns their Gramian into weights ``w`` and ``Σ_i w_i g_i`` is
    **added** to ``p.grad`` of every shared parameter (so gradient accumulation over micro-batches
    behaves as with ``loss.backward()``). Every other leaf that requires grad — task heads, for
    instance — receives the ordinary gradient of ``Σ_i L_i``, i.e. each head its own task's
    gradient (PCGrad Sec. 3: surgery on shared parameters only). Any ``torch.optim`` optimizer
    can then step. A :class:`~mtgrad.methods.base.LossWeighting` instead backpropagates its
    combined objective once (its learnable parameters must be in the optimizer too;
    :class:`mtgrad.MTLOptimizer` adds them).

    Args:
        losses: T scalar losses (a sequence, or a 1-D tensor of T losses).
        shared_params: the parameters all tasks share (e.g. ``model.trunk.parameters()``).
        method: e.g. ``mtgrad.PCGrad()`` or ``mtgrad.CAGrad(c=0.4)``.
        retain_graph: keep the graph after the call (as in ``Tensor.backward``).
        check_finite: raise on NaN/inf losses or gradients. This reads T values on the host once
            per call; switch it off to avoid that synchronisation on accelerators.
        engine: how the per-task gradients are computed (see :mod:`mtgrad.engine`): ``"loop"``
            (T backward passes, lowest memory among the Jacobian engines, fastest on CPUs),
            ``"batched"`` (one vmapped backward), or a :class:`~mtgrad.GramianEngine` created on
            the trunk before the forward (the Gramian-only engine, :mod:`mtgrad.autogram`: ``G``
            from the linear layers' inputs and output gradients, then one backward of
            ``Σ_i w_i L_i``; never holds ``J``; Gramian weightings, ``Reuse`` and ``CAGradFast``
            only). All give the same answer up to rounding.
        representation: the shared representation ``Z`` (the trunk's output the heads read). If
            given, the method works on the gradients ``∂L_i/∂Z`` instead of ``∂L_i/∂θ`` (MGDA-UB
            style, Sener & Koltun 2018, Sec. 3.3): T cheap passes through the heads, one through
            the trunk, and the trunk receives ``(∂Z/∂θ)ᵀ Σ_i w_i ∂L_i/∂Z``. The returned Gramian is
            then that of the representation gradients.

    Raises:
        ValueError: empty or non-scalar losses, NaN/inf losses or gradients, a loss with no
            gradient path to the shared parameters, no shared parameters, mixed devices, an
            unknown engine, a GramianEngine with a Jacobian aggregator or ``representation``
            (or one that recorded no forward of these losses).
        TypeError: a loss or parameter that is not a floating-point tensor, or a bad method.
    """
    try:
        _check_method(method)
        _check_engine(engine, method, representation)
        return _backward(losses, shared_params, method, retain_graph, check_finite, engine, representation, scaler)
    finally:
        if isinstance(engine, GramianEngine) and not retain_graph:
            engine.reset()  # the recorded calls belong to this graph, done with now (or abandoned)


def _backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    method: Method,
    retain_graph: bool,
    check_finite: bool,
    engine: Engine | GramianEngine,
    representation: Tensor | None,
    scaler: torch.amp.GradScaler | None,
) -> BackwardResult:
    task_losses = _as_losses(losses)
    params = _as_params(shared_params)
    _check_devices(task_losses, params)
    values = torch.stack([loss.detach() for loss in task_losses])
    policy = GramianPolicy(check=check_finite, loss_scale=_loss_scale(scaler, values))
    if check_finite:
        _check_finite_losses(values)
    _check_paths(task_losses, params)
    if policy.loss_scale is not None and not isinstance(method, LossWeighting):
        task_losses = [loss * policy.loss_scale.to(loss.dtype) for loss in task_losses]

    with _all_or_nothing(graph_leaves(task_losses)):
        return _dispatch(task_losses, params, method, retain_graph, policy, engine, representation, values)


def _loss_scale(scaler: object, like: Tensor) -> Tensor | None:
    """The scaler's current scale as a tensor on the losses' device (no host read), or None."""
    if scaler is None:
        return None
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    if not scaler.is_enabled():
        return None
    return scaler.scale(torch.ones((), dtype=torch.float32, device=like.device))


def _check_finite_losses(values: Tensor) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"losses {idx} are NaN or inf ({values[bad].tolist()}); nothing was backpropagated")


def _check_paths(losses: list[Tensor], params: list[Tensor]) -> None:
    """Every loss reaches a shared parameter; warn (once) about a "shared" one only one task reaches."""
    targets = {id(p) for p in params}
    for i, loss in enumerate(losses):
        if not reaches(loss, targets):
            raise ValueError(
                f"losses[{i}] has no gradient path to the shared parameters: it does not depend on "
                "any of them (check shared_params, or a detach()/no_grad in that task's branch)"
            )
    _warn_once_about_task_specific(losses, params)


_CHECKED_LAYOUTS: set[tuple[int, ...]] = set()


def _warn_once_about_task_specific(losses: list[Tensor], params: list[Tensor]) -> None:
    """Warn (once per list of shared parameters) about a "shared" parameter that one task alone
    reaches: surgery would scale that head's own gradient by its task's weight ``w_i``.

    One full walk of each task's graph, done on the first call only.
    """
    key = tuple(id(p) for p in params)
    if len(losses) < 2 or key in _CHECKED_LAYOUTS:
        return
    _CHECKED_LAYOUTS.add(key)
    position = {id(p): k for k, p in enumerate(params)}
    reached_by: dict[int, set[int]] = {}
    for i, loss in enumerate(losses):
        for leaf in graph_leaves([loss]):
            if id(leaf) in position:
                reached_by.setdefault(id(leaf), set()).add(i)
    lonely = [(position[pid], tasks.pop()) for pid, tasks in reached_by.items() if len(tasks) == 1]
    if lonely:
        listed = ", ".join(f"shared_params[{k}] (shape {tuple(params[k].shape)}) only by task {t}" for k, t in sorted(lonely))
        warnings.warn(
            f"{listed}: a parameter one task alone reaches is task-specific, and as a shared parameter "
            "its gradient is scaled by that task's weight. Pass only the parameters all tasks share "
            "(e.g. model.trunk.parameters()); the heads get their own gradients anyway.",
            stacklevel=4,
        )


@contextmanager
def _all_or_nothing(leaves: list[Tensor]) -> Iterator[None]:
    """Every ``.grad`` of ``leaves`` gets this call's gradient added, or — on an exception — is left
    exactly as it was (no head holding a NaN from an aborted step).

    The leaves start the call with ``.grad = None`` and their previous gradients are added back at
    the end: no copy, and with ``zero_grad()`` before the step (``.grad = None``) no extra work.
    """
    saved = [leaf.grad for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    try:
        yield
    except BaseException:
        for leaf, grad in zip(leaves, saved):
            leaf.grad = grad
        raise
    for leaf, grad in zip(leaves, saved):
        if grad is not None:
            leaf.grad = grad if leaf.grad is None else grad.add_(leaf.grad)


def _dispatch(
    task_losses: list[Tensor],
    params: list[Tensor],
    method: Method,
    retain_graph: bool,
    policy: GramianPolicy,
    engine: Engine | GramianEngine,
    representation: Tensor | None,
    values: Tensor,
) -> BackwardResult:
    if representation is not None:
        return _representation_backward(task_losses, params, method, representation, values, retain_graph, policy)

    if isinstance(method, LossWeighting):
        # Its objective learns from the true losses; only what is backpropagated is scaled.
        objective, loss_weights = method.combine(torch.stack(task_losses))
        if policy.loss_scale is not None:
            objective = objective * policy.loss_scale.to(objective.dtype)
        objective.backward(retain_graph=retain_graph)
        return BackwardResult(weights=loss_weights.detach().to(torch.float64), gramian=None)

    if isinstance(method, Reuse):
        planned = method.planned_weights(len(task_losses), values)
        if planned is not None:
            weighted_backward(task_losses, params, planned, retain_graph)
            method.advance()
            return BackwardResult(weights=planned, gramian=None)
        record = _dispatch(task_losses, params, method.method, retain_graph, policy, engine, None, values)
        method.advance(record.weights)
        return record

    if isinstance(engine, GramianEngine):
        return _gramian_backward(task_losses, params, method, engine, values, retain_graph, policy)

    if isinstance(method, CAGradFast):
        sampled = method.sample(len(task_losses))
        if len(sampled) == len(task_losses):
            blocks = task_gradients(task_losses, params, engine, retain_graph)
        else:
            blocks = sampled_gradients(task_losses, params, sampled, retain_graph)
        G = policy.gramian(blocks)
        w = policy.solve(G, lambda G: method.task_weights(G, sampled, len(task_losses)))
        if len(sampled) == len(task_losses):
            _combine_into_grad(params, w, blocks)
            return BackwardResult(weights=w, gramian=G)
        _combine_into_grad(params, _row_weights(w, sampled), blocks)
        return BackwardResult(weights=w, gramian=None)  # only the sampled rows' Gramian was formed

    blocks = task_gradients(task_losses, params, engine, retain_graph)
    if isinstance(method, JacobianAggregator):
        G = policy.gramian(blocks)
        _apply(params, method.aggregate_blocks(blocks, values))
        return BackwardResult(weights=None, gramian=G)
    assert isinstance(method, Weighting)  # the kinds were checked on entry
    weights, G = stored_weights(method, blocks, values, policy)
    _combine_into_grad(params, weights, blocks)
    return BackwardResult(weights=weights, gramian=G)


def _gramian_backward(
    losses: list[Tensor],
    params: list[Tensor],
    method: Weighting | CAGradFast,
    engine: GramianEngine,
    values: Tensor,
    retain_graph: bool,
    policy: GramianPolicy,
) -> BackwardResult:
    """``G`` without ``J`` (:mod:`mtgrad.autogram`), the weights, then one weighted backward.

    CAGrad-Fast's rows ``[g_i, i ∈ S] + [g̃]`` are gradients of ``C L`` for the cotangents ``C``
    of :func:`_sampled_cotangents`, so their Gramian costs |S| + 1 batched cotangents, not K.
    """
    T = len(losses)
    sampled = method.sample(T) if isinstance(method, CAGradFast) else list(range(T))
    C = None if len(sampled) == T else _sampled_cotangents(sampled, T, values)
    G = policy.prepared(engine.gramian(losses, params, C, retain_graph=True))
    if isinstance(method, CAGradFast):
        weights = policy.solve(G, lambda G: method.task_weights(G, sampled, T))
    else:
        weights = policy.solve(G, lambda G: method.weights(G, values if method.needs_losses else None, validate=False))
    weighted_backward(losses, params, weights, retain_graph)
    return BackwardResult(weights=weights, gramian=G if C is None else None)


def _sampled_cotangents(sampled: list[int], num_tasks: int, like: Tensor) -> Tensor:
    """``C`` (|S| + 1, K): rows ``e_i`` for ``i ∈ S``, then ``(1 − Σ_{i∈S} e_i)/(K − |S|)`` (eq. 4)."""
    C = like.new_zeros((len(sampled) + 1, num_tasks))
    C[-1] = 1.0 / (num_tasks - len(sampled))
    for r, i in enumerate(sampled):
        C[r, i] = 1.0
        C[-1, i] = 0.0
    return C


def _combine_into_grad(params: list[Tensor], w: Tensor, blocks: list[Tensor]) -> None:
    """``p.grad += Σ_i w_i J_i`` without a temporary when ``.grad`` exists (gradient accumulation)."""
    for p, block in zip(params, blocks):
        if p.grad is None or not p.grad.is_contiguous() or block.element_size() < 4:  # half: see combine
            _apply([p], [combine(w, block)])
        else:
            p.grad.view(-1).addmv_(block.view(block.shape[0], -1).T, w.to(block.dtype))


def _representation_backward(
    losses: list[Tensor],
    params: list[Tensor],
    method: Method,
    rep: Tensor,
    values: Tensor,
    retain_graph: bool,
    policy: GramianPolicy,
) -> BackwardResult:
    if not isinstance(rep, Tensor) or not rep.requires_grad:
        raise ValueError("representation must be a tensor that requires grad (the trunk's output)")
    if isinstance(method, LossWeighting):
        raise TypeError(f"representation= works with gradient methods, not the loss weighting {type(method).__name__}")
    blocks = representation_gradients(losses, rep)
    weights: Tensor | None = None
    if isinstance(method, JacobianAggregator):
        G: Tensor | None = policy.gramian(blocks)
        update = method.aggregate_blocks(blocks, values)[0]
    else:
        weights, G = stored_weights(method, blocks, values, policy)
        update = combine(weights, blocks[0])
    backward_through_representation(losses, rep, params, update, retain_graph)
    return BackwardResult(weights=weights, gramian=G)


def _apply(params: list[Tensor], updates: list[Tensor]) -> None:
    for p, update in zip(params, updates):
        p.grad = update if p.grad is None else p.grad.add_(update)


def _row_weights(task_weights: Tensor, sampled: list[int]) -> Tensor:
    """Per-task weights → weights of the rows ``[g_i, i ∈ S] + [pseudo-task]``.

    Every unsampled task has the same weight ``a_p/(K − |S|)``; the pseudo-task row is their mean,
    so its weight is ``a_p``.
    """
    K = task_weights.shape[0]
    rest = [j for j in range(K) if j not in set(sampled)]
    return torch.cat([task_weights[sampled], task_weights[rest[:1]] * len(rest)])


def _check_engine(engine: object, method: Method, representation: Tensor | None) -> None:
    if isinstance(engine, GramianEngine):
        if isinstance(method, JacobianAggregator):
            raise ValueError(
                f"{type(method).__name__} works on the task gradients themselves, which the Gramian "
                "engine never forms: use engine='loop' or 'batched'"
            )
        if representation is not None:
            raise ValueError("representation= already works on a small Gramian; it takes no GramianEngine")
        return
    if engine == "gramian":
        raise ValueError(
            "the Gramian engine hooks the trunk before the forward: create engine = "
            "mtgrad.GramianEngine(model.trunk) once, then pass engine=engine"
        )
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} or a mtgrad.GramianEngine, got {engine!r}")


def _check_method(method: object) -> None:
    if not isinstance(method, (Weighting, JacobianAggregator, LossWeighting, Reuse, CAGradFast)):
        raise TypeError(f"method must be an mtgrad method (e.g. mtgrad.PCGrad()), got {type(method).__name__}")


def _as_losses(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses given as one tensor must be 1-D (one loss per task), got shape {tuple(losses.shape)}"
            )
        items = list(losses.unbind())
    else:
        try:
            items = list(losses)
        except TypeError:
            raise TypeError(f"losses must be a sequence of scalar tensors, got {type(losses).__name__}") from None
    if not items:
        raise ValueError("losses is empty: give one scalar loss per task")
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(f"losses[{i}] must be a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1 or loss.dim() > 1:
            raise ValueError(f"losses[{i}] must be a scalar, got shape {tuple(loss.shape)} (reduce it, e.g. .mean())")
        if not loss.is_floating_point():
            raise TypeError(f"losses[{i}] must be floating point, got dtype {loss.dtype}")
        if not loss.requires_grad:
            raise ValueError(f"losses[{i}] does not require grad: it has no gradient path to the shared parameters")
    return [loss.reshape(()) for loss in items]


def _as_params(shared_params: Iterable[Tensor]) -> list[Tensor]:
    if isinstance(shared_params, Tensor):
        shared_params = [shared_params]
    params: list[Tensor] = []
    seen: set[int] = set()
    for i, p in enumerate(shared_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"shared_params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(f"shared_params[{i}] must be a floating-point tensor, got dtype {p.dtype}")
        if not p.requires_grad:
            continue  # frozen parameters take no update
        if not p.is_leaf:
            raise ValueError(f"shared_params[{i}] is not a leaf tensor; pass parameters, not results of operations")
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    if not params:
        raise ValueError("shared_params is empty (or none requires grad): there is nothing to aggregate")
    return params


def _check_devices(losses: list[Tensor], params: list[Tensor]) -> None:
    devices = {loss.device for loss in losses}
    if len(devices) > 1:
        raise ValueError(f"losses live on different devices {sorted(map(str, devices))}; move them to one device")
    param_devices = {p.device for p in params}
    if len(param_devices) > 1:
        raise ValueError(f"shared parameters live on different devices {sorted(map(str, param_devices))}")
    (loss_device,) = devices
    (param_device,) = param_devices
    if loss_device != param_device:
        raise ValueError(f"losses are on device {loss_device} but the shared parameters on {param_device}")
