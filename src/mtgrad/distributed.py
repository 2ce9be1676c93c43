"""Data parallelism: gradient surgery on the global batch under ``torch.distributed``.

With the batch split over ``W`` ranks (DistributedDataParallel, or any data-parallel loop), each
rank's loss ``L_i^r`` is the mean over its own rows, and the loss of the global batch is
``L_i = (1/W) Σ_r L_i^r``. Its per-task gradients are the rank averages ``ḡ_i = (1/W) Σ_r g_i^r``,
and the exact step is the method applied to ``J̄ = (1/W) Σ_r J_r``, the same on every rank.
Surgery on each rank's own ``J_r`` and then an average (what DDP does with a plain
``mtgrad.backward``) is a different, rank-count-dependent step.

:class:`Replicas` is how :func:`mtgrad.backward` and its relatives reach that step:

* :meth:`Replicas.mean_` averages the T per-task gradients over ranks before the Gramian (one
  bucketed ``all_reduce``, T × d numbers);
* :meth:`Replicas.agree` broadcasts rank 0's weights (T numbers): a method that draws random
  numbers (PCGrad's task order, RLW, CAGrad-Fast's sample) takes the same step on every rank
  whatever the ranks' seeds;
* :meth:`Replicas.gather_rows` all-gathers the rows the Gramian-only engine needs (each linear
  layer's inputs and output gradients: ``G`` of the global batch has cross terms between ranks);
* :meth:`Replicas.deliver` writes every gradient at the end of a call; under
  ``torch.distributed`` with one ``torch.autograd.backward`` on the leaves, so
  DistributedDataParallel's reducer sees each parameter's gradient exactly once (as after
  ``loss.backward()``) and averages it. What it averages is, per parameter, a gradient
  whose rank average is that of the global batch: the global update itself for the shared
  parameters (identical on every rank), each rank's ``∇ Σ_i L_i^r`` for the heads.

Nothing here is home-made communication: these are ``torch.distributed`` collectives on the
process group the caller names (the default group unless told otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Replicas", "replicas", "bytes_sent"]

# Elements per all-reduce bucket (25 MiB of float32, DDP's default bucket size).
BUCKET_ELEMENTS = (25 << 20) // 4


@dataclass(frozen=True)
class Replicas:
    """The ranks one step is shared with (``size == 1``: this process alone).

    Attributes:
        group: the ``torch.distributed`` process group, ``None`` for the default one.
        size: its number of ranks.
        initialised: ``torch.distributed`` is initialised, so a DDP reducer may be waiting for
            every parameter's gradient (even for a rank-local step).
    """

    group: dist.ProcessGroup | None = None
    size: int = 1
    initialised: bool = False

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average ``tensors`` over the ranks, in place (bucketed: a few large all-reduces)."""
        if not self.parallel:
            return
        for bucket in _buckets(tensors):
            flat = torch.cat([t.reshape(-1) for t in bucket]) if len(bucket) > 1 else bucket[0].reshape(-1).clone()
            self._all_reduce(flat)
            flat.div_(self.size)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum(self, t: Tensor) -> Tensor:
        """``Σ_r t`` over the ranks (a new tensor)."""
        if not self.parallel:
            return t
        total = t.clone()
        self._all_reduce(total)
        return total

    def agree(self, t: Tensor) -> Tensor:
        """Rank 0's ``t`` on every rank (a new tensor): one answer where a method draws at random."""
        if not self.parallel:
            return t
        out = t.detach().clone().contiguous()
        _count(out.numel() * out.element_size())
        dist.broadcast(out, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0, group=self.group)
        return out

    def agree_indices(self, indices: list[int], bound: int) -> list[int]:
        """Rank 0's list of task indices (CAGrad-Fast's sample) on every rank."""
        if not self.parallel:
            return indices
        mask = torch.zeros(bound, dtype=torch.float32)
        mask[indices] = 1.0
        return self.agree(mask).nonzero().flatten().tolist()

    def gather_rows(self, t: Tensor, dim: int) -> Tensor:
        """Every rank's ``t`` concatenated along ``dim`` (rank order); the shapes must agree."""
        if not self.parallel:
            return t
        t = t.contiguous()
        shapes = [torch.zeros(t.dim(), dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(shapes, torch.tensor(t.shape, dtype=torch.int64), group=self.group)
        if any(s.tolist() != list(t.shape) for s in shapes):
            raise ValueError(
                "the Gramian-only engine under data parallelism needs the same batch size on every rank, got "
                f"input shapes {[tuple(s.tolist()) for s in shapes]} (drop the last incomplete batch, "
                "e.g. DistributedSampler(drop_last=True) and DataLoader(drop_last=True))"
            )
        parts = [torch.empty_like(t) for _ in range(self.size)]
        _count(t.numel() * t.element_size() * (self.size - 1))
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=dim)

    def deliver(self, leaves: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        """Add ``grads`` to the leaves' ``.grad`` (a ``None`` adds nothing) by AccumulateGrad's
        rules, as ``loss.backward()`` would.

        Under ``torch.distributed`` this is one ``torch.autograd.backward`` on the leaves, so that
        a DDP reducer sees each gradient exactly once. Elsewhere the gradients are written
        directly, because a leaf's tensor hooks (``p.register_hook``) already ran inside the
        engines' ``autograd.grad`` and a second pass would apply them twice; the rules are kept:
        a tensor delivered to two leaves (autograd returns one for both inputs of a sum) is
        copied, sparse gradients stay sparse, a dense gradient takes the parameter's memory
        layout, and post-accumulate-grad hooks run after the write.
        """
        pairs = [(leaf, g) for leaf, g in zip(leaves, grads) if g is not None]
        if not pairs:
            return
        if self.initialised:
            torch.autograd.backward([leaf for leaf, _ in pairs], [g for _, g in pairs])
            return
        taken: set[int] = set()
        for leaf, g in pairs:
            if id(g) in taken:
                g = g.clone()
            taken.add(id(g))
            _accumulate(leaf, g)
        for leaf, _ in pairs:
            for hook in (getattr(leaf, "_post_accumulate_grad_hooks", None) or {}).values():
                hook(leaf)

    def any_rank(self, flags: Tensor) -> Tensor:
        """``flags`` (bool) or-ed over the ranks: a refusal every rank makes together, so that no
        rank is left waiting in a collective the others abandoned."""
        if not self.parallel:
            return flags
        return self.sum(flags.to(torch.float32)) > 0

    def _all_reduce(self, t: Tensor) -> None:
        _count(t.numel() * t.element_size())
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)


LOCAL = Replicas()
_BYTES_SENT = 0


def bytes_sent() -> int:
    """Bytes this process has contributed to mtgrad's collectives so far (for benchmarks): an
    all-reduce or broadcast counts its tensor, an all-gather the W − 1 copies it receives."""
    return _BYTES_SENT


def _count(n: int) -> None:
    global _BYTES_SENT
    _BYTES_SENT += n


def replicas(data_parallel: bool | dist.ProcessGroup | None) -> Replicas:
    """The ranks a step is shared with.

    ``data_parallel``: ``None`` (the default) means every rank of the default process group when
    ``torch.distributed`` is initialised with more than one rank, this process alone otherwise;
    ``True`` the default group (it must be initialised); ``False`` this process alone (a rank-local
    surgery: under DDP, surgery per rank then DDP's average, an approximation); a process group,
    its ranks.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if data_parallel is False:
        return Replicas(initialised=initialised)
    if data_parallel is None or data_parallel is True:
        if not initialised:
            if data_parallel is True:
                raise ValueError("data_parallel=True needs torch.distributed initialised (init_process_group)")
            return LOCAL
        return Replicas(group=None, size=dist.get_world_size(), initialised=True)
    if not initialised:
        raise ValueError("data_parallel was given a process group, but torch.distributed is not initialised")
    if not isinstance(data_parallel, dist.ProcessGroup):
        raise TypeError(f"data_parallel must be None, a bool or a torch.distributed ProcessGroup, got {type(data_parallel).__name__}")
    return Replicas(group=data_parallel, size=dist.get_world_size(data_parallel), initialised=True)


def _buckets(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """Consecutive tensors of one dtype and device, about ``BUCKET_ELEMENTS`` at a time."""
    buckets: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        if last is None or size + t.numel() > BUCKET_ELEMENTS or (last[0].dtype, last[0].device) != (t.dtype, t.device):
            buckets.append([t])
            size = t.numel()
        else:
            last.append(t)
            size += t.numel()
    return buckets


def _accumulate(leaf: Tensor, g: Tensor) -> None:
    """``leaf.grad += g`` with AccumulateGrad's layout rules (no hooks)."""
    if leaf.grad is None:
        if g.is_sparse or (g.stride() == leaf.stride() and not _is_expanded(g)):
            leaf.grad = g
        else:  # an expanded view or another layout: a fresh tensor laid out like the parameter
            leaf.grad = torch.empty_like(leaf).copy_(g)
    elif leaf.grad.is_sparse or g.is_sparse or _is_expanded(leaf.grad):
        leaf.grad = leaf.grad + g
    else:
        leaf.grad.add_(g)


def _is_expanded(t: Tensor) -> bool:
    return not t.is_sparse and any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape))
