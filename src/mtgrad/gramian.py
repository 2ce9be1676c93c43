"""The Gramian ``G = J Jᵀ`` of task gradients, accumulated block by block."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["gramian", "cross_gramian", "combine"]

# Columns per block: small enough to stay in cache-friendly GEMMs, large enough to amortise calls.
BLOCK_COLUMNS = 1 << 16


def gramian(blocks: Iterable[Tensor]) -> Tensor:
    """``Σ_k J_k J_kᵀ`` over column blocks ``J_k`` (T, n_k) of the task-gradient matrix.

    Blocks are split further into ``BLOCK_COLUMNS`` chunks and each partial product is accumulated
    in float64: summing many small fp32 products in fp64 keeps the diagonal (the squared norms
    that every method divides by) accurate where one long fp32 dot product would not.
    """
    total: Tensor | None = None
    for block in blocks:
        flat = block.reshape(block.shape[0], -1)
        for chunk in flat.split(BLOCK_COLUMNS, dim=1):
            part = (chunk @ chunk.T).to(torch.float64)
            total = part if total is None else total + part
    if total is None:
        raise ValueError("no gradient blocks given: the Gramian of zero parameters is undefined")
    return total


def cross_gramian(left: Tensor, right: Tensor) -> Tensor:
    """``L Rᵀ`` (float64) for ``left`` and ``right`` of shape (T, n): ``[i, j] = ⟨L_i, R_j⟩``.

    Accumulated over ``BLOCK_COLUMNS`` chunks of the n columns in float64, as :func:`gramian`.
    """
    total = left.new_zeros((left.shape[0], right.shape[0]), dtype=torch.float64)
    for a, b in zip(left.split(BLOCK_COLUMNS, dim=1), right.split(BLOCK_COLUMNS, dim=1)):
        total += (a @ b.T).to(torch.float64)
    return total


def combine(weights: Tensor, block: Tensor) -> Tensor:
    """``Σ_i w_i J_i`` for one block ``J`` of shape (T, *shape), in the block's dtype."""
    return torch.tensordot(weights.to(block.dtype), block, dims=1)
