"""Per-task gradients of the shared parameters: the engines behind :func:`mtgrad.backward`.

Each engine returns the task-gradient matrix as per-parameter blocks ``(T, *p.shape)`` (the
Jacobian is never concatenated) and leaves every non-shared leaf (task heads) holding the
ordinary gradient of ``Σ_i L_i``, added to whatever it held before.

* ``"loop"`` — one ``backward`` per task; the reference, lowest peak memory, and on CPUs the
  fastest for ordinary models. The heads' gradients accumulate during the same passes.
* ``"batched"`` — one vmapped backward over the T one-hot cotangents
  (``autograd.grad(..., is_grads_batched=True)``) for the shared parameters, then one backward of
  ``Σ L_i`` restricted to the other leaves (autograd prunes the trunk from it). Trades memory
  for fewer kernel launches; worth it on accelerators. Every op in the graph needs a vmap rule.

The Gramian-only engine, :class:`mtgrad.GramianEngine` (:mod:`mtgrad.autogram`), returns no
blocks: it computes ``G`` from the linear layers' inputs and output gradients and
:func:`mtgrad.backward` applies the weights with :func:`weighted_backward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Engine",
    "task_gradients",
    "weighted_backward",
    "sampled_gradients",
    "representation_gradients",
    "backward_through_representation",
    "graph_leaves",
    "reaches",
]

Engine = Literal["loop", "batched"]
ENGINES: tuple[str, ...] = ("loop", "batched")


def task_gradients(losses: list[Tensor], params: list[Tensor], engine: Engine, retain_graph: bool) -> list[Tensor]:
    """Blocks ``(T, *p.shape)`` of ``∇_p L_i`` for every shared parameter ``p``."""
    if engine == "loop":
        return _loop(losses, params, retain_graph)
    if engine == "batched":
        return _batched(losses, params, retain_graph)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def _loop(losses: list[Tensor], params: list[Tensor], retain_graph: bool) -> list[Tensor]:
    # Going through .grad rather than autograd.grad lets the same passes accumulate ∇ Σ_i L_i
    # into every non-shared leaf, so the heads cost no extra backward. Each task's gradient is
    # copied into a preallocated block at once, so only one set of per-task gradients is alive
    # besides the blocks (stacking T kept copies would double the peak and page-fault each step).
    T = len(losses)
    blocks = [p.new_empty((T, *p.shape)) for p in params]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        for i, loss in enumerate(losses):
            loss.backward(retain_graph=retain_graph or i < T - 1)
            for p, block in zip(params, blocks):
                if p.grad is None:
                    block[i].zero_()
                else:
                    block[i].copy_(p.grad)
                    p.grad = None
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    return blocks


def _batched(losses: list[Tensor], params: list[Tensor], retain_graph: bool) -> list[Tensor]:
    stacked = torch.stack(losses)
    T = stacked.shape[0]
    eye = torch.eye(T, dtype=stacked.dtype, device=stacked.device)
    grads = torch.autograd.grad(
        stacked, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
    )
    blocks = [p.new_zeros((T, *p.shape)) if g is None else g for g, p in zip(grads, params)]
    shared = {id(p) for p in params}
    others = [leaf for leaf in graph_leaves(losses) if id(leaf) not in shared]
    if others:
        torch.autograd.backward(stacked.sum(), inputs=others, retain_graph=retain_graph)
    return blocks


def representation_gradients(losses: list[Tensor], rep: Tensor) -> list[Tensor]:
    """One block ``(T, *rep.shape)`` of ``∂L_i/∂Z`` for the shared representation ``Z``.

    Each pass runs only through task i's head, so all T cost about one head backward each.
    """
    rows = [torch.autograd.grad(loss, rep, retain_graph=True, allow_unused=True)[0] for loss in losses]
    return [torch.stack([torch.zeros_like(rep) if g is None else g for g in rows])]


def backward_through_representation(
    losses: list[Tensor], rep: Tensor, params: list[Tensor], rep_update: Tensor, retain_graph: bool
) -> None:
    """Shared parameters get ``(∂Z/∂θ)ᵀ rep_update``; the other leaves ``∇ Σ_i L_i``."""
    grads = torch.autograd.grad(rep, params, grad_outputs=rep_update, retain_graph=True, allow_unused=True)
    _add_to_grad(params, grads)
    shared = {id(p) for p in params}
    others = [leaf for leaf in graph_leaves(losses) if id(leaf) not in shared]
    if others:
        torch.autograd.backward(torch.stack(losses).sum(), inputs=others, retain_graph=retain_graph)


def weighted_backward(losses: list[Tensor], params: list[Tensor], weights: Tensor, retain_graph: bool) -> None:
    """Add ``∇_θ Σ_i w_i L_i`` to the shared ``.grad`` and ``∇ Σ_i L_i`` to every other leaf.

    Two passes: the weighted objective restricted to the shared parameters, then the plain sum
    restricted to the other leaves, which autograd prunes to the heads' part of the graph.
    """
    stacked = torch.stack(losses)
    grads = torch.autograd.grad(
        (weights.to(stacked.dtype) * stacked).sum(), params, retain_graph=True, allow_unused=True
    )
    _add_to_grad(params, grads)
    shared = {id(p) for p in params}
    others = [leaf for leaf in graph_leaves(losses) if id(leaf) not in shared]
    if others:
        torch.autograd.backward(stacked.sum(), inputs=others, retain_graph=retain_graph)


def sampled_gradients(losses: list[Tensor], params: list[Tensor], sampled: list[int], retain_graph: bool) -> list[Tensor]:
    """Blocks ``(|S| + 1, *p.shape)``: ``g_i`` for the sampled tasks, then the pseudo-task
    ``(Σ_j g_j − Σ_{i∈S} g_i)/(K − |S|)`` (CAGrad-Fast, eq. 4).

    ``Σ_j g_j`` comes from one full backward of ``Σ_j L_j``, which also gives the heads their
    gradients; the sampled tasks cost one shared-parameter backward each.
    """
    K = len(losses)
    rows = [
        torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True) for i in sampled
    ]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        torch.stack(losses).sum().backward(retain_graph=retain_graph)
        total = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    blocks = []
    for k, p in enumerate(params):
        own = [torch.zeros_like(p) if row[k] is None else row[k] for row in rows]
        pseudo = (total[k] - sum(own, torch.zeros_like(p))) / (K - len(sampled))
        blocks.append(torch.stack([*own, pseudo]))
    return blocks


def _add_to_grad(params: list[Tensor], grads: tuple[Tensor | None, ...]) -> None:
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def _graph_leaves(roots: list[Tensor]) -> Iterator[Tensor]:
    """Leaf tensors of the autograd graphs of ``roots``, depth first, each once, lazily."""
    seen: set[int] = set()
    stack = [root.grad_fn for root in roots]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            yield variable
        stack.extend(fn for fn, _ in node.next_functions)


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
