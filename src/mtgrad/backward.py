"""``mtgrad.backward``: per-task gradients of the shared parameters, aggregated into ``.grad``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import torch.distributed as dist

from ._autocast import outside_autocast
from ._warnings import warn as warn_user
from .autogram import GramianEngine, engine_for
from .diagnostics import Diagnostics, diagnose
from .distributed import Replicas, replicas
from .engine import (
    ENGINES,
    Engine,
    OtherGrads,
    graph_leaves,
    reaches,
    representation_gradients,
    sampled_gradients,
    sum_gradients,
    task_gradients,
    through_representation,
    weighted_gradients,
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


@outside_autocast
def backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor] | nn.Module,
    method: Method,
    *,
    retain_graph: bool = False,
    check_finite: bool = True,
    engine: Engine | GramianEngine | None = None,
    representation: Tensor | None = None,
    scaler: torch.amp.GradScaler | None = None,
    data_parallel: bool | dist.ProcessGroup | None = None,
) -> BackwardResult:
    """Backpropagate T task losses with gradient surgery on the shared parameters.

    For a gradient method (a :class:`~mtgrad.methods.base.Weighting` such as PCGrad, or a
    :class:`~mtgrad.methods.base.JacobianAggregator`), each task's gradient
    ``g_i = ∇_θ L_i`` of the shared parameters θ is computed (one backward
    pass per task), the method turns their Gramian into weights ``w`` and ``Σ_i w_i g_i`` is
    **added** to ``p.grad`` of every shared parameter that a loss reaches (one no loss reaches
    keeps its ``.grad``, ``None`` included, as after ``loss.backward()``; under
    ``torch.distributed`` it gets zeros, which a DDP reducer expects). (Called once per micro-batch that is a
    surgery per micro-batch; for the large-batch step use :mod:`mtgrad.accumulate`.) Every other leaf that requires grad — task heads, for
    instance — receives the ordinary gradient of ``Σ_i L_i``, i.e. each head its own task's
    gradient (PCGrad Sec. 3: surgery on shared parameters only). Any ``torch.optim`` optimizer
    can then step. A :class:`~mtgrad.methods.base.LossWeighting` instead backpropagates its
    combined objective once (its learnable parameters must be in the optimizer too;
    :class:`mtgrad.MTLOptimizer` adds them).

    Args:
        losses: T scalar losses (a sequence, or a 1-D tensor of T losses).
        shared_params: the parameters all tasks share: the shared module itself (``model.trunk``,
            which lets mtgrad choose the Gramian-only engine, see ``engine``) or its parameters
            (``model.trunk.parameters()``).
        method: e.g. ``mtgrad.PCGrad()`` or ``mtgrad.CAGrad(c=0.4)``.
        retain_graph: keep the graph after the call (as in ``Tensor.backward``).
        check_finite: raise on NaN/inf losses or gradients. This reads T values on the host once
            per call; switch it off to avoid that synchronisation on accelerators.
        engine: how the per-task gradients are computed (see :mod:`mtgrad.engine`): ``"loop"``
            (T backward passes, lowest memory among the Jacobian engines), ``"batched"`` (one
            vmapped backward), or a :class:`~mtgrad.GramianEngine` created on the trunk before
            the forward (the Gramian-only engine, :mod:`mtgrad.autogram`: ``G`` and the update
            from the layers' inputs and output gradients; never holds ``J``; Gramian
            weightings, ``Reuse`` and ``CAGradFast`` only). All give the same answer up to
            rounding: float32 rounding, but under autocast the loop and batched engines' task
            gradients are autograd's, its weight-gradient products rounded to bf16/fp16, while the
            Gramian-only engine forms them in float32 (~2e-3 relative apart in bf16; ``docs/amp.md``).
            ``None`` (the default): the Gramian-only engine when ``shared_params`` is
            a module, the method can use it and it is estimated faster than the loop (its work
            on the recorded layers' weights below 0.7× the T weight gradients':
            :meth:`~mtgrad.GramianEngine.estimated_costs` — layers with few rows next to their
            width, as an MLP's); it is installed on the module at the first call
            (:func:`mtgrad.autogram.engine_for`), so it serves from the second step on. Else
            ``"loop"``.
        representation: the shared representation ``Z`` (the trunk's output the heads read). If
            given, the method works on the gradients ``∂L_i/∂Z`` instead of ``∂L_i/∂θ`` (MGDA-UB
            style, Sener & Koltun 2018, Sec. 3.3): T cheap passes through the heads, one through
            the trunk, and the trunk receives ``(∂Z/∂θ)ᵀ Σ_i w_i ∂L_i/∂Z``. The returned Gramian is
            then that of the representation gradients.
        scaler: a ``torch.amp.GradScaler`` (see ``docs/amp.md``): give the losses unscaled; the
            method sees unscaled task gradients, ``.grad`` holds the scaled update the scaler
            expects, and an overflow reaches ``.grad`` as inf for ``scaler.step`` to skip.
        data_parallel: under ``torch.distributed`` (see :mod:`mtgrad.distributed` and
            ``docs/ddp.md``), the method sees the task gradients of the *global* batch, averaged
            over the ranks, and every rank takes the same step. ``None``: all ranks of the default
            group when it is initialised with several; ``False``: a rank-local surgery (under DDP,
            then averaged: an approximation); a process group: its ranks. Wrap the model in
            ``DistributedDataParallel`` and forward through the wrapper: its reducer averages
            what this call delivers, as after ``loss.backward()``.

    Raises:
        ValueError: empty or non-scalar losses, NaN/inf losses or gradients, a loss with no
            gradient path to the shared parameters, no shared parameters, mixed devices, an
            unknown engine, a GramianEngine with a Jacobian aggregator or ``representation``
            (or one that recorded no forward of these losses).
        TypeError: a loss or parameter that is not a floating-point tensor, or a bad method.
    """
    # The module's engine: installed when mtgrad chooses the engine; reset after every call that
    # names the module, whichever engine ran, so that its records never outlive their step.
    module = shared_params if isinstance(shared_params, nn.Module) else None
    installed = None if module is None else engine_for(module, create=engine is None)
    try:
        _check_method(method)
        losses = _as_losses(losses)
        params = _as_params(shared_params)  # once: shared_params may be a generator
        ranks = replicas(data_parallel)
        if engine is None:
            engine = _default_engine(installed, method, representation, len(losses), params, ranks)
        _check_engine(engine, method, representation)
        record = _backward(
            losses, params, method, retain_graph, check_finite, engine, representation, scaler, ranks,
        )  # fmt: skip
        if installed is not None and engine is installed:
            # Forwards no backward consumes must not hold their graphs for long: a few steps' worth.
            installed.max_records = max(installed.max_records or 0, 4 * installed.last_num_calls)
        return record
    finally:
        for held in {id(e): e for e in (engine, installed) if isinstance(e, GramianEngine)}.values():
            if not retain_graph:
                held.reset()  # the recorded calls belong to this graph, done with now (or abandoned)


#: The Gramian-only engine is chosen when its estimated work on the weights is below this share
#: of the loop's weight-gradient work (``E < 0.7 L``, :meth:`GramianEngine.estimated_costs`):
#: then the step is estimated at ≤ 0.85× the loop's. Measured: the benchmark MLP (T = 10) has
#: E/L = 0.36 and a step of 0.67× the loop; the CNN, ResNet and Transformer E/L ≥ 1 and 1.1–1.4×.
GRAMIAN_ENGINE_WORK_SHARE = 0.7


def _default_engine(
    installed: GramianEngine | None,
    method: Method,
    representation: Tensor | None,
    num_tasks: int,
    params: list[Tensor],
    ranks: Replicas,
) -> Engine | GramianEngine:
    """The engine ``backward(..., engine=None)`` uses: the module's installed Gramian engine once
    it recorded a forward, when the method can use it and it is estimated faster; else the loop
    engine. Also the loop engine under data parallelism (every rank must take the same engine,
    and the estimate reads each rank's own batch) and when a shared parameter has tensor hooks
    (the Gramian engine refuses them, see :func:`_gramian_step`)."""
    inner = method.method if isinstance(method, Reuse) else method
    usable = isinstance(inner, (Weighting, CAGradFast)) and representation is None
    if installed is None or not usable or installed.num_recorded == 0 or ranks.parallel:
        return "loop"
    if _tensor_hooked(params):
        return "loop"
    loop, routes = installed.estimated_costs(num_tasks)
    return installed if routes < GRAMIAN_ENGINE_WORK_SHARE * loop else "loop"


def _backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor] | nn.Module,
    method: Method,
    retain_graph: bool,
    check_finite: bool,
    engine: Engine | GramianEngine,
    representation: Tensor | None,
    scaler: torch.amp.GradScaler | None,
    ranks: Replicas,
) -> BackwardResult:
    task_losses = _as_losses(losses)
    params = _as_params(shared_params)
    _check_devices(task_losses, params)
    values = torch.stack([loss.detach() for loss in task_losses])
    policy = GramianPolicy(check=check_finite, loss_scale=_loss_scale(scaler, values), replicas=ranks)
    if check_finite:
        _check_finite_losses(values, ranks)
    _check_paths(task_losses, params)
    _check_parallel_method(method, ranks)
    if policy.loss_scale is not None and not isinstance(method, LossWeighting):
        task_losses = [loss * policy.loss_scale.to(loss.dtype) for loss in task_losses]
    ranks.mean_([values])  # the global batch's losses, for the methods that read them
    leaves = graph_leaves(task_losses)
    shared = {id(p) for p in params}
    others = [leaf for leaf in leaves if id(leaf) not in shared]
    step = _dispatch(task_losses, params, others, method, retain_graph, policy, engine, representation, values)
    updates = step.shared if ranks.initialised else reached_only(params, step.shared, {id(leaf) for leaf in leaves})
    # Nothing was written before this point: an error above leaves every .grad as it was.
    ranks.deliver([*params, *others, *step.extra_leaves], [*updates, *step.others, *step.extra_grads])
    return step.record


def reached_only(params: Sequence[Tensor], updates: Sequence[Tensor | None], reached: set[int]) -> list[Tensor | None]:
    """``None`` for the shared parameters no loss reaches (the engines give them zeros): their
    ``.grad`` then stays as it was, as after ``loss.backward()``, so that an optimizer skips
    them rather than stepping on zero gradients (momentum, weight decay)."""
    return [u if id(p) in reached else None for p, u in zip(params, updates)]


@dataclass(frozen=True)
class _Step:
    """What one call computed: its record and the gradients to deliver: the shared parameters',
    the other leaves' (in the order given), and those of leaves only the method's objective
    reaches (a learned loss weighting's own parameters)."""

    record: BackwardResult
    shared: list[Tensor | None]
    others: OtherGrads
    extra_leaves: list[Tensor] = field(default_factory=list)
    extra_grads: OtherGrads = field(default_factory=list)


def _loss_scale(scaler: object, like: Tensor) -> Tensor | None:
    """The scaler's current scale as a tensor on the losses' device (no host read), or None."""
    if scaler is None:
        return None
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    if not scaler.is_enabled():
        return None
    return scaler.scale(torch.ones((), dtype=torch.float32, device=like.device))


def _check_finite_losses(values: Tensor, ranks: Replicas) -> None:
    """Refuse NaN/inf losses — on every rank at once when one rank has them (a rank raising alone
    would leave the others waiting in the next collective)."""
    own = ~torch.isfinite(values)
    bad = ranks.any_rank(own)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        where = f"this rank's values {values[own].tolist()}" if bool(own.any()) else "on another rank"
        raise ValueError(f"losses {idx} are NaN or inf ({where}); nothing was backpropagated")


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
        listed = ", ".join(f"shared_params[{k}] (shape {tuple(params[k].shape)}) is reached only by task {t}" for k, t in sorted(lonely))
        warn_user(
            f"{listed}: a parameter one task alone reaches is task-specific, and as a shared parameter "
            "its gradient is scaled by that task's weight. Pass only the parameters all tasks share "
            "(e.g. model.trunk.parameters()); the heads get their own gradients anyway."
        )


def _dispatch(
    task_losses: list[Tensor],
    params: list[Tensor],
    others: list[Tensor],
    method: Method,
    retain_graph: bool,
    policy: GramianPolicy,
    engine: Engine | GramianEngine,
    representation: Tensor | None,
    values: Tensor,
) -> _Step:
    if representation is not None:
        return _representation_step(task_losses, params, others, method, representation, values, retain_graph, policy)

    if isinstance(method, LossWeighting):
        # Its objective learns from the true losses; only what is backpropagated is scaled.
        objective, loss_weights = method.combine(torch.stack(task_losses))
        if policy.loss_scale is not None:
            objective = objective * policy.loss_scale.to(objective.dtype)
        known = {id(t) for t in (*params, *others)}
        own = [leaf for leaf in graph_leaves([objective]) if id(leaf) not in known]
        grads = torch.autograd.grad(objective, [*params, *others, *own], retain_graph=retain_graph, allow_unused=True)
        record = BackwardResult(weights=loss_weights.detach().to(torch.float64), gramian=None)
        n, m = len(params), len(params) + len(others)
        return _Step(record, list(grads[:n]), list(grads[n:m]), own, list(grads[m:]))

    if isinstance(method, Reuse):
        planned = method.planned_weights(len(task_losses), values)
        if planned is not None:
            shared, heads = weighted_gradients(task_losses, params, others, planned, retain_graph)
            method.advance()
            return _Step(BackwardResult(weights=planned, gramian=None), shared, heads)
        step = _dispatch(task_losses, params, others, method.method, retain_graph, policy, engine, None, values)
        method.advance(step.record.weights)
        return step

    if isinstance(engine, GramianEngine):
        assert isinstance(method, (Weighting, CAGradFast))  # _check_engine refused the others
        return _gramian_step(task_losses, params, others, method, engine, values, retain_graph, policy)

    ranks = policy.replicas
    if isinstance(method, CAGradFast):
        T = len(task_losses)
        sampled = ranks.agree_indices(method.sample(T), T)
        if len(sampled) == T:
            blocks, heads = task_gradients(task_losses, params, others, engine, retain_graph)
        else:
            blocks, heads = sampled_gradients(task_losses, params, others, sampled, retain_graph)
        ranks.mean_(blocks)
        rows_gramian = policy.gramian(blocks, sampled if len(sampled) < T else None)
        w = policy.solve(rows_gramian, lambda G: method.task_weights(G, sampled, T))
        if len(sampled) == T:
            return _Step(BackwardResult(weights=w, gramian=rows_gramian), _combined(w, blocks), heads)
        # Only the sampled rows' Gramian was formed: no gramian in the record.
        return _Step(BackwardResult(weights=w, gramian=None), _combined(_row_weights(w, sampled), blocks), heads)

    blocks, heads = task_gradients(task_losses, params, others, engine, retain_graph)
    ranks.mean_(blocks)
    if isinstance(method, JacobianAggregator):
        G: Tensor | None = policy.gramian(blocks)
        updates: list[Tensor | None] = [ranks.agree(u) for u in method.aggregate_blocks(blocks, values)]
        return _Step(BackwardResult(weights=None, gramian=G), updates, heads)
    assert isinstance(method, Weighting)  # the kinds were checked on entry
    weights, G = stored_weights(method, blocks, values, policy)
    return _Step(BackwardResult(weights=weights, gramian=G), _combined(weights, blocks), heads)


def _gramian_step(
    losses: list[Tensor],
    params: list[Tensor],
    others: list[Tensor],
    method: Weighting | CAGradFast,
    engine: GramianEngine,
    values: Tensor,
    retain_graph: bool,
    policy: GramianPolicy,
) -> _Step:
    """``G`` without ``J`` (:mod:`mtgrad.autogram`), the weights, then the update from the same
    layer output gradients (no second backward through the trunk); the heads get ``∇ Σ_i L_i``.

    CAGrad-Fast's rows ``[g_i, i ∈ S] + [g̃]`` are gradients of ``C L`` for the cotangents ``C``
    of :func:`_sampled_cotangents`, so their Gramian costs |S| + 1 batched cotangents, not K.
    Under data parallelism the engine gathers every rank's rows for ``G`` of the global batch;
    each rank's ``∇ Σ_i w_i L_i^r`` (from its own output gradients) is then what DDP averages
    into the global update.
    """
    hooked = _tensor_hooked(params)
    if hooked:
        raise ValueError(
            f"shared_params {hooked} have tensor hooks (register_hook): the Gramian-only engine never forms "
            "the per-task gradients they would transform, so its weights would differ from the loop engine's; "
            "remove the hooks or use engine='loop'"
        )
    T = len(losses)
    ranks = policy.replicas
    sampled = ranks.agree_indices(method.sample(T), T) if isinstance(method, CAGradFast) else list(range(T))
    C = None if len(sampled) == T else _sampled_cotangents(sampled, T, values)
    measured = engine.measure(losses, params, C, retain_graph=True, replicas=ranks)
    G = policy.prepared(measured.gramian, None if C is None else sampled)
    if isinstance(method, CAGradFast):
        weights = policy.solve(G, lambda G: method.task_weights(G, sampled, T))
    else:
        weights = policy.solve(G, lambda G: method.weights(G, values if method.needs_losses else None, validate=False))
    rows = weights if C is None else _row_weights(weights, sampled)
    shared = measured.update(rows, params)
    heads = sum_gradients(losses, others, retain_graph)
    return _Step(BackwardResult(weights=weights, gramian=G if C is None else None), shared, heads)


def _tensor_hooked(params: list[Tensor]) -> list[int]:
    """Positions of the parameters with tensor hooks (``p.register_hook``)."""
    return [k for k, p in enumerate(params) if p._backward_hooks]


def _sampled_cotangents(sampled: list[int], num_tasks: int, like: Tensor) -> Tensor:
    """``C`` (|S| + 1, K): rows ``e_i`` for ``i ∈ S``, then ``(1 − Σ_{i∈S} e_i)/(K − |S|)`` (eq. 4)."""
    C = like.new_zeros((len(sampled) + 1, num_tasks))
    C[-1] = 1.0 / (num_tasks - len(sampled))
    for r, i in enumerate(sampled):
        C[r, i] = 1.0
        C[-1, i] = 0.0
    return C


def _combined(w: Tensor, blocks: list[Tensor]) -> list[Tensor | None]:
    """``Σ_i w_i J_i`` per block."""
    return [combine(w, block) for block in blocks]


def _representation_step(
    losses: list[Tensor],
    params: list[Tensor],
    others: list[Tensor],
    method: Method,
    rep: Tensor,
    values: Tensor,
    retain_graph: bool,
    policy: GramianPolicy,
) -> _Step:
    """The method on ``∂L_i/∂Z``; the trunk then gets ``(∂Z/∂θ)ᵀ`` of the combination.

    Under data parallelism the representation gradients of the global batch are every rank's
    rows side by side, each ``1/W`` of the rank's own (its loss is ``1/W`` of the global one):
    they are all-gathered (T × B × k numbers per rank, small next to the parameters), the method
    sees them whole, and each rank backpropagates ``W ×`` its rows of the update, which DDP's
    average brings back to the global step.
    """
    if not isinstance(rep, Tensor) or not rep.requires_grad:
        raise ValueError("representation must be a tensor that requires grad (the trunk's output)")
    if isinstance(method, LossWeighting):
        raise TypeError(f"representation= works with gradient methods, not the loss weighting {type(method).__name__}")
    ranks = policy.replicas
    (local,) = representation_gradients(losses, rep)
    block = ranks.gather_rows(local, dim=1).div_(ranks.size) if ranks.parallel else local
    weights: Tensor | None = None
    if isinstance(method, JacobianAggregator):
        G: Tensor | None = policy.gramian([block])
        update = ranks.agree(method.aggregate_blocks([block], values)[0])
    else:
        assert isinstance(method, (Weighting, CAGradFast, Reuse))  # the kinds were checked on entry
        weights, G = stored_weights(method, [block], values, policy)
        update = combine(weights, block)
    if ranks.parallel:
        rank = dist.get_rank(ranks.group)
        update = update.narrow(0, rank * rep.shape[0], rep.shape[0]) * ranks.size
    shared, heads = through_representation(losses, rep, params, others, update, retain_graph)
    return _Step(BackwardResult(weights=weights, gramian=G), shared, heads)


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


def _check_parallel_method(method: Method, ranks: Replicas) -> None:
    if ranks.parallel and isinstance(method, LossWeighting):
        raise NotImplementedError(
            f"{type(method).__name__} is a loss weighting: across {ranks.size} ranks its weights would come "
            "from each rank's own losses (and a learned weighting's parameters are outside DDP), which is not "
            "the global-batch step; mtgrad does not support loss weightings under data parallelism yet. "
            "Use a gradient method, or pass data_parallel=False for the rank-local weighting"
        )


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


def _as_params(shared_params: Iterable[Tensor] | nn.Module) -> list[Tensor]:
    if isinstance(shared_params, nn.Module):
        shared_params = shared_params.parameters()
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
