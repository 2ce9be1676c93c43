"""Per-task gradients of the shared parameters: the engines behind :func:`mtgrad.backward`.

Each engine returns the task-gradient matrix as per-parameter blocks ``(T, *p.shape)`` (the
Jacobian is never concatenated) and the ordinary gradient of ``Σ_i L_i`` of every non-shared
leaf (task heads). Nothing here writes ``.grad``: :meth:`mtgrad.distributed.Replicas.deliver`
does that once the step is known, so that an error leaves every ``.grad`` as it was and a DDP
reducer sees each parameter's gradient exactly once.

* ``"loop"`` — one ``autograd.grad`` per task; the reference, lowest peak memory, and on CPUs the
  fastest for ordinary models. The heads' gradients come from the same passes.
* ``"batched"`` — one vmapped backward over the T one-hot cotangents
  (``autograd.grad(..., is_grads_batched=True)``) for the shared parameters, then one backward of
  ``Σ L_i`` restricted to the other leaves (autograd prunes the trunk from it). Trades memory
  for fewer kernel launches; worth it on accelerators. Every op in the graph needs a vmap rule.

The Gramian-only engine, :class:`mtgrad.GramianEngine` (:mod:`mtgrad.autogram`), returns no
blocks: it computes ``G`` from the layers' inputs and output gradients, and the update from the
same output gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, cast

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

__all__ = [
    "Engine",
    "task_gradients",
    "sum_gradients",
    "weighted_gradients",
    "sampled_gradients",
    "representation_gradients",
    "batched_vjp",
    "has_compiled_region",
    "through_representation",
    "graph_leaves",
    "other_leaves",
    "reaches",
]

Engine = Literal["loop", "batched"]
ENGINES: tuple[str, ...] = ("loop", "batched")

#: Gradients of the non-shared leaves (the heads), in the order of the ``others`` given; ``None``
#: where no loss reaches that leaf.
OtherGrads = list[Tensor | None]


def task_gradients(
    losses: list[Tensor], params: list[Tensor], others: list[Tensor], engine: Engine, retain_graph: bool
) -> tuple[list[Tensor], OtherGrads]:
    """Blocks ``(T, *p.shape)`` of ``∇_p L_i`` for every shared parameter ``p``, and
    ``∇ Σ_i L_i`` for every leaf in ``others``."""
    if engine == "loop":
        return _loop(losses, params, others, retain_graph)
    if engine == "batched":
        return _batched(losses, params, others, retain_graph)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def _loop(
    losses: list[Tensor], params: list[Tensor], others: list[Tensor], retain_graph: bool
) -> tuple[list[Tensor], OtherGrads]:
    # The same T passes give the heads' ∇ Σ_i L_i, so they cost no extra backward. Each task's
    # gradient is copied into a preallocated block at once, so only one set of per-task gradients
    # is alive besides the blocks (stacking T kept copies would double the peak).
    T = len(losses)
    blocks = [p.new_empty((T, *p.shape)) for p in params]
    heads: OtherGrads = [None] * len(others)
    inputs = [*params, *others]
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, inputs, retain_graph=retain_graph or i < T - 1, allow_unused=True)
        for block, g in zip(blocks, grads[: len(params)]):
            if g is None:
                block[i].zero_()
            else:
                block[i].copy_(g)
        heads = _summed(heads, grads[len(params) :])
    return blocks, heads


def _batched(
    losses: list[Tensor], params: list[Tensor], others: list[Tensor], retain_graph: bool
) -> tuple[list[Tensor], OtherGrads]:
    stacked = torch.stack(losses)
    T = stacked.shape[0]
    eye = torch.eye(T, dtype=stacked.dtype, device=stacked.device)
    grads = batched_vjp(stacked, params, eye)
    blocks = [p.new_zeros((T, *p.shape)) if g is None else g for g, p in zip(grads, params)]
    return blocks, sum_gradients(losses, others, retain_graph)


def batched_vjp(outputs: Tensor, inputs: Sequence[Tensor | GradientEdge], cotangents: Tensor) -> list[Tensor | None]:
    """``[∂(C_r · outputs)/∂x]_r`` stacked over the rows ``C_r`` of ``cotangents``, per input ``x``
    (``None`` where no row reaches it); the graph is kept.

    One vmapped backward (``is_grads_batched``), except through a ``torch.compile``'d region:
    its backward is one opaque compiled function without a batching rule, so there it is one
    backward per row — the same numbers, at the loop engine's cost.
    """
    targets = cast(Sequence[Tensor], inputs)  # autograd takes tensors and gradient edges mixed
    if not has_compiled_region([outputs]):
        return list(
            torch.autograd.grad(outputs, targets, grad_outputs=cotangents, is_grads_batched=True, retain_graph=True, allow_unused=True)
        )
    rows = [torch.autograd.grad(outputs, targets, grad_outputs=c, retain_graph=True, allow_unused=True) for c in cotangents]
    stacked: list[Tensor | None] = []
    for k in range(len(inputs)):
        column = [row[k] for row in rows]
        present = next((g for g in column if g is not None), None)
        if present is None:
            stacked.append(None)
        else:
            stacked.append(torch.stack([torch.zeros_like(present) if g is None else g for g in column]))
    return stacked


def has_compiled_region(roots: list[Tensor]) -> bool:
    """Whether the autograd graph of ``roots`` holds a ``torch.compile``'d region's backward."""
    return any(node.name() == "CompiledFunctionBackward" for node in _graph_nodes(roots))


def sum_gradients(losses: list[Tensor], leaves: list[Tensor], retain_graph: bool) -> OtherGrads:
    """``∇ Σ_i L_i`` for ``leaves``; autograd prunes the graph to what reaches them (the heads)."""
    if not leaves:
        return []
    return list(torch.autograd.grad(torch.stack(losses).sum(), leaves, retain_graph=retain_graph, allow_unused=True))


def representation_gradients(losses: list[Tensor], rep: Tensor) -> list[Tensor]:
    """One block ``(T, *rep.shape)`` of ``∂L_i/∂Z`` for the shared representation ``Z``.

    Each pass runs only through task i's head, so all T cost about one head backward each.
    """
    rows = [torch.autograd.grad(loss, rep, retain_graph=True, allow_unused=True)[0] for loss in losses]
    missing = [i for i, g in enumerate(rows) if g is None]
    if missing:
        # Silently zero rows would drop those tasks from the trunk's update.
        compiled = " (the losses come out of a torch.compile'd region that computes them from Z inside it: compile the trunk alone, or use an engine)" if has_compiled_region(losses) else ""
        raise ValueError(f"losses {missing} do not depend on the representation through autograd{compiled}")
    return [torch.stack(rows)]


def through_representation(
    losses: list[Tensor], rep: Tensor, params: list[Tensor], others: list[Tensor], rep_update: Tensor, retain_graph: bool
) -> tuple[list[Tensor | None], OtherGrads]:
    """``(∂Z/∂θ)ᵀ rep_update`` for the shared parameters; ``∇ Σ_i L_i`` for ``others``."""
    grads = torch.autograd.grad(rep, params, grad_outputs=rep_update, retain_graph=True, allow_unused=True)
    return list(grads), sum_gradients(losses, others, retain_graph)


def weighted_gradients(
    losses: list[Tensor], params: list[Tensor], others: list[Tensor], weights: Tensor, retain_graph: bool
) -> tuple[list[Tensor | None], OtherGrads]:
    """``∇_θ Σ_i w_i L_i`` for the shared parameters and ``∇ Σ_i L_i`` for ``others``.

    Two passes: the weighted objective restricted to the shared parameters, then the plain sum
    restricted to the other leaves, which autograd prunes to the heads' part of the graph.
    """
    stacked = torch.stack(losses)
    grads = torch.autograd.grad(
        (weights.to(stacked.dtype) * stacked).sum(), params, retain_graph=True, allow_unused=True
    )
    return list(grads), sum_gradients(losses, others, retain_graph)


def sampled_gradients(
    losses: list[Tensor], params: list[Tensor], others: list[Tensor], sampled: list[int], retain_graph: bool
) -> tuple[list[Tensor], OtherGrads]:
    """Blocks ``(|S| + 1, *p.shape)``: ``g_i`` for the sampled tasks, then the pseudo-task
    ``(Σ_j g_j − Σ_{i∈S} g_i)/(K − |S|)`` (CAGrad-Fast, eq. 4); and ``∇ Σ_j L_j`` for ``others``.

    ``Σ_j g_j`` comes from one full backward of ``Σ_j L_j``, which also gives the heads their
    gradients; the sampled tasks cost one shared-parameter backward each.
    """
    K = len(losses)
    rows = [
        torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True) for i in sampled
    ]
    everything = torch.autograd.grad(
        torch.stack(losses).sum(), [*params, *others], retain_graph=retain_graph, allow_unused=True
    )
    total = [torch.zeros_like(p) if g is None else g for p, g in zip(params, everything)]
    blocks = []
    for k, p in enumerate(params):
        own = [torch.zeros_like(p) if row[k] is None else row[k] for row in rows]
        pseudo = (total[k] - sum(own, torch.zeros_like(p))) / (K - len(sampled))
        blocks.append(torch.stack([*own, pseudo]))
    return blocks, list(everything[len(params) :])


def _summed(totals: OtherGrads, grads: tuple[Tensor | None, ...]) -> OtherGrads:
    # Out of place: a gradient autograd returns may be an expanded view, which add_ refuses.
    return [t if g is None else g if t is None else t + g for t, g in zip(totals, grads)]


def _graph_nodes(roots: list[Tensor]) -> Iterator[torch.autograd.graph.Node]:
    """The nodes of the autograd graphs of ``roots``, depth first, each once, lazily."""
    seen: set[int] = set()
    stack = [root.grad_fn for root in roots]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(fn for fn, _ in node.next_functions)


def _graph_leaves(roots: list[Tensor]) -> Iterator[Tensor]:
    """Leaf tensors of the autograd graphs of ``roots``, depth first, each once, lazily."""
    for node in _graph_nodes(roots):
        variable = getattr(node, "variable", None)
        if variable is not None:
            yield variable


def other_leaves(losses: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """The leaves requiring grad that the losses reach, other than the shared ``params`` (the heads)."""
    shared = {id(p) for p in params}
    return [leaf for leaf in graph_leaves(losses) if id(leaf) not in shared]


def graph_leaves(roots: list[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that the autograd graphs of ``roots`` reach, in discovery order."""
    leaves = {id(root): root for root in roots if root.grad_fn is None and root.requires_grad}
    for leaf in _graph_leaves(roots):
        leaves.setdefault(id(leaf), leaf)
    return list(leaves.values())


def reaches(loss: Tensor, targets: set[int]) -> bool:
    """Whether the autograd graph of ``loss`` contains a leaf whose id is in ``targets``.

    Depth-first with an early exit: from a task's loss the first shared parameter is typically a
    few nodes away, so the check costs little next to a backward pass.
    """
    return id(loss) in targets or any(id(leaf) in targets for leaf in _graph_leaves([loss]))
