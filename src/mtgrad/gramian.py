"""The Gramian ``G = J Jᵀ`` of task gradients, accumulated block by block."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["gramian", "cross_gramian", "combine"]

# Columns per block: small enough to stay in cache-friendly GEMMs, large enough to amortise calls.
BLOCK_COLUMNS = 1 << 16
# Numbers per float64 chunk copy of a low-precision block (4 MiB): below glibc's mmap threshold.
CHUNK_FLOAT64 = 1 << 19


def gramian(blocks: Iterable[Tensor]) -> Tensor:
    """``Σ_k J_k J_kᵀ`` over column blocks ``J_k`` (T, n_k) of the task-gradient matrix.

    Every chunk of columns is promoted to float64 *before* it is multiplied:
    the product of two fp32, bf16 or fp16 numbers is exact in float64 and their squares can
    neither overflow nor underflow there, so ``G`` is the Gramian of the given numbers up to
    float64 summation error (positive semi-definite to ~1e-16 relative). Formed in fp32 instead,
    a degenerate Gramian is indefinite by ~1e-7 relative, fp32 gradients overflow above norms of
    ~1e19 and underflow below ~1e-21, and fp16 ones overflow at entries of ~52/√d. The price is
    a float64 GEMM: about 2× an fp32 one on this CPU (11 → 23 ms at T = 10, d = 1e6; see
    ``benchmarks/README.md``, precision).

    A chunk holds about ``CHUNK_FLOAT64`` numbers (4096 columns at least), copied into one reused
    float64 buffer: a fresh copy of 64k columns at T = 50 is 26 MB, above glibc's mmap threshold,
    and its page faults doubled the Gramian's cost (T = 50, d = 340k: 98 → 52 ms; fp32 GEMM
    28 ms). Few tasks get long chunks, where the per-call overhead of a 2 × 2 product dominated
    (T = 2, d = 1e6: 65k columns 2.1 ms, 262k columns 1.5 ms). Float64 blocks are multiplied
    in place, ``BLOCK_COLUMNS`` columns at a time.
    """
    total: Tensor | None = None
    buffer: Tensor | None = None
    for block in blocks:
        flat = block.reshape(block.shape[0], -1)
        T = flat.shape[0]
        if total is None:
            total = torch.zeros((T, T), dtype=torch.float64, device=flat.device)
        if flat.dtype == torch.float64:
            for chunk in flat.split(BLOCK_COLUMNS, dim=1):
                total.addmm_(chunk, chunk.T)
            continue
        columns = max(4096, CHUNK_FLOAT64 // max(T, 1))
        if buffer is None or buffer.numel() < T * columns or buffer.device != flat.device:
            buffer = torch.empty(T * columns, dtype=torch.float64, device=flat.device)
        for chunk in flat.split(columns, dim=1):
            copy = buffer[: chunk.numel()].view(chunk.shape)
            copy.copy_(chunk)
            total.addmm_(copy, copy.T)
    if total is None:
        raise ValueError("no gradient blocks given: the Gramian of zero parameters is undefined")
    return total


def cross_gramian(left: Tensor, right: Tensor) -> Tensor:
    """``L Rᵀ`` (float64) for ``left`` and ``right`` of shape (T, n): ``[i, j] = ⟨L_i, R_j⟩``.

    Each ``BLOCK_COLUMNS`` chunk of the n columns is one product in the inputs' dtype, the chunks
    summed in float64. (Unlike :func:`gramian`, no float64 copy: the Gramian engine's kernel route
    calls it on (R, B·out) output gradients, which it has scaled into range first, where the
    copies measured 0.66 → 0.73× the loop on the benchmark MLP's step.)
    """
    total = left.new_zeros((left.shape[0], right.shape[0]), dtype=torch.float64)
    for a, b in zip(left.split(BLOCK_COLUMNS, dim=1), right.split(BLOCK_COLUMNS, dim=1)):
        total += (a @ b.T).to(torch.float64)
    return total


def combine(weights: Tensor, block: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``Σ_i w_i J_i`` for one block ``J`` of shape (T, *shape), returned in ``dtype`` (default:
    the block's).

    Computed in at least float32: a half-precision weight overflows at 65504 (PCGrad's
    coefficients ``⟨g_i, g_j⟩/‖g_j‖²`` reach that at a norm ratio of ~1e5) while the update fits.
    Float64 weights outside float32's normal range (a method homogeneous of degree −1 such as
    FairGrad on gradients of norm ~1e30 has weights ~1e-40, subnormal in float32, where they keep
    only a few digits) are first scaled by the power of two ``2^e`` that brings the largest into
    [0.5, 1): an exact rescaling, undone on the result (exact too while it is a normal number).
    """
    result = block.dtype if dtype is None else dtype
    dtype = torch.promote_types(block.dtype, torch.float32)
    w = weights.to(dtype) if weights.dtype == dtype else None
    if w is None:
        _, e = torch.frexp(weights.abs().max())
        if _host_sync_is_free(weights) and -100 <= int(e) <= 100:
            w = weights.to(dtype)  # in range: no rescaling pass over the result
        else:
            scale = torch.ldexp(torch.ones((), dtype=weights.dtype, device=weights.device), e.clamp(-149, 127))
            out = torch.tensordot((weights / scale).to(dtype), block.to(dtype), dims=1)
            return (out * scale.to(dtype)).to(result)
    return torch.tensordot(w, block.to(dtype), dims=1).to(result)


def _host_sync_is_free(t: Tensor) -> bool:
    # The solvers' rule (mtgrad.solvers._common): read a flag on the host only on the CPU and
    # outside torch.compile's tracing; elsewhere take the branch-free route.
    return t.device.type == "cpu" and not torch.compiler.is_compiling()
