"""α-fair bargaining weights (Nash-MTL for α = 1, FairGrad): positive ``w`` with ``(Gw)_i = w_i^{−1/α}``."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common
from ._common import _EPS, _ZERO_ROW, _equilibrate

__all__ = ["bargaining_weights"]

_FIXED_POINT_STEPS = 5


def bargaining_weights(
    G: Tensor,
    alpha: float = 1.0,
    *,
    ridge: float = 1e-10,
    w0: Tensor | None = None,
    max_iter: int = 100,
) -> Tensor:
    r"""Positive weights ``w`` with ``(Gw)_i = w_i^{-1/α}`` (α-fair bargaining; α = 1 is Nash-MTL).

    The equations are the stationarity condition of the strictly convex function

        f(w) = ½ wᵀ(G + ρ·diag G) w − Σ_i h(w_i),    h'(w) = w^{-1/α},

    (``h = log`` for α = 1, ``h(w) = w^{1-1/α}/(1 − 1/α)`` otherwise; ``−h`` is convex and its
    derivative diverges at 0, so the minimiser is interior), minimised by Newton's method with a
    batched Armijo backtracking line search that keeps ``w > 0``. The iterates are quadratically
    convergent; the loop stops (on the CPU) after a step that moved no weight by more than 1e-9
    relative, i.e. at full float64 accuracy.

    Scaling: the problem is solved in ``w = Dβ``, ``D = diag(G)^{-1/2}``, on the unit-diagonal
    ``DGD``; for α = 1 the solution is then exactly invariant to rescaling any task's gradient.

    Degenerate inputs: the equations have a solution iff no non-negative combination
    ``Σ n_i g_i = 0`` exists (e.g. two opposite gradients). The relative ridge ``ρ·diag G``
    (``ρ = 1e-10`` by default, far below the float32 rounding of a Gramian's entries) makes ``f``
    coercive, so a unique solution always exists; elsewhere it moves the weights by ``O(ρ)``
    relative (``O(ρ/(1 + cos))`` for two nearly opposite gradients).
    Zero gradients (``G_ii ≤ ε²·max_j G_jj``) cannot satisfy the equation and get weight 0.

    Args:
        G: Gramians ``(..., T, T)``.
        alpha: fairness ``α > 0``.
        ridge: ``ρ > 0``.
        w0: optional positive warm start ``(..., T)`` (e.g. the previous step's weights).
        max_iter: Newton iteration cap (reached only by extremely degenerate inputs).
    """
    T = G.shape[-1]
    G = 0.5 * (G + G.mT)  # exact symmetry: degenerate problems amplify any asymmetry
    p = 1.0 / alpha
    diag = G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    top = diag.amax(-1, keepdim=True)
    live = diag > top * _ZERO_ROW
    d = torch.where(live, diag, 1.0).rsqrt()
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    pair = live.unsqueeze(-1) & live.unsqueeze(-2)
    # Exactly symmetric with a unit diagonal (_equilibrate): otherwise β₁ ≠ β₂ by 1e-7 relative
    # for nearly opposite gradients, and d ∝ ĝ₁ + ĝ₂ conflicts with one of them.
    C = torch.where(pair, _equilibrate(G, d), eye) + ridge * eye
    if alpha == 1.0 and T <= 2:
        # Symmetric solution β₁ = β₂ = (1 + ρ + C₁₂)^{-1/2} (and β = (1 + ρ)^{-1/2} for T = 1).
        beta = (C.sum(-1) if T == 2 else C[..., 0]).clamp_min(ridge).rsqrt()
        return torch.where(live, d * beta, torch.zeros_like(beta))
    c = d ** (1.0 - p)  # h(Dβ) = c·h(β) + const

    def h(b: Tensor) -> Tensor:
        return torch.log(b) if p == 1.0 else torch.exp((1.0 - p) * torch.log(b)) / (1.0 - p)

    # Start: the per-coordinate solution β_i^{1+p} = c_i (exact for orthogonal gradients), or the
    # warm start, then the best multiple of it (closed form: t^{1+p} = Σ c_i b_i^{1-p} / bᵀCb).
    base = c ** (1.0 / (1.0 + p))
    if w0 is not None:
        b0 = w0.to(G) / d
        ok = ((torch.isfinite(b0) & (b0 > 0)) | ~live).all(-1, keepdim=True)
        base = torch.where(ok & live, b0, base)
    quad = (base * (C @ base.unsqueeze(-1)).squeeze(-1)).sum(-1, keepdim=True)
    beta = base * ((c * base ** (1.0 - p)).sum(-1, keepdim=True) / quad) ** (1.0 / (1.0 + p))

    # A few multiplicative fixed-point steps β_i ← β_i (c_i β_i^{-p} / (Cβ)_i)^{1/(1+p)} (exact in one
    # step for orthogonal gradients) bring the start close where Newton's first steps are slow
    # (β far from its quadratic region: widely spread norms, small p): e.g. skewed T = 40, α = 2,
    # 12 -> 6 Newton steps. Only a start: Newton's line search keeps the descent and the answer.
    # A warm start (Nash-MTL's previous weights) is usually in Newton's quadratic region already.
    for _ in range(_FIXED_POINT_STEPS if w0 is None else 0):
        Cb = _mv(C, beta)
        ratio = (c * beta.pow(-p) / Cb).clamp_(1e-2, 1e2).pow_(1.0 / (1.0 + p))
        beta = torch.where(Cb > 0, beta * ratio, beta)
    absC = C.abs()
    C_diag = C.diagonal(dim1=-2, dim2=-1)
    K = 12
    neg_steps = -0.99 * 0.5 ** torch.arange(K, dtype=G.dtype, device=G.device)  # backtracking candidates
    # The last candidate is taken when none passes, unless the line search is noisy (then the first).
    last = torch.arange(K, device=G.device) == K - 1
    done = torch.zeros(G.shape[:-2] + (1,), dtype=torch.bool, device=G.device)
    cpu = _common._host_sync_is_free(G)
    pc = p * c
    for _ in range(max_iter):
        Cb = _mv(C, beta)
        inv = beta.reciprocal()
        bp = inv if p == 1.0 else torch.exp(torch.log(beta).mul_(-p))  # β^{-p}
        cbp = c * bp
        grad = Cb - cbp
        # C + diag(p c β^{-p-1}), the Hessian
        H = torch.diagonal_scatter(C, C_diag + pc * bp * inv, dim1=-2, dim2=-1)
        L, _ = torch.linalg.cholesky_ex(H)
        # The gradient's rounding error is ~ε·s_i, s_i = (|C|β)_i + c_i β_i^{-p} (its terms'
        # sizes); H⁻¹s maps it to the attainable accuracy of each weight.
        absCb = _mv(absC, beta)
        sol = torch.cholesky_solve(torch.stack([grad, absCb + cbp], dim=-1), L)
        neg_delta = sol[..., 0]
        delta, reach = neg_delta.neg(), sol[..., 1].abs()
        dec = _dot(grad, neg_delta)  # Newton decrement², ≥ 0
        # Longest step keeping β > 0 (99% of the way to the boundary), then Armijo backtracking
        # over a batch of candidate steps. The decrease f(β + tδ) − f(β) is evaluated as
        # t·(Cβ)ᵀδ + ½t²δᵀCδ − Σ c_i [h(β_i + tδ_i) − h(β_i)], with log1p/expm1 for the h terms,
        # so it stays accurate when f itself is a cancellation of huge terms.
        rel = delta * inv
        t = neg_steps / rel.amin(-1, keepdim=True).clamp_max(-0.99)  # (..., K)
        log_ratio = torch.log1p(_outer(t, rel))  # log((β + tδ)/β)
        if p == 1.0:
            dh_sum = _mv(log_ratio, c)
        else:  # c_i [h(β_i + tδ_i) − h(β_i)] = c_i β_i^{1-p} expm1((1 − p) log_ratio) / (1 − p)
            dh_sum = _mv(torch.expm1(log_ratio.mul_(1.0 - p)), cbp * beta * (1.0 / (1.0 - p)))
        half_dCd = 0.5 * _dot(delta, _mv(C, delta))
        df = t * (_dot(Cb, delta) + t * half_dCd) - dh_sum
        ok = df <= t * (-0.1 * dec)
        # The rounding of df is ~t·ε·Σ|δ_i|(|C|β)_i (the error of Cβ): once the decrement is within
        # 1e3 of it the line search cannot judge a step any more, and the full step is taken.
        quiet = (dec <= 1e3 * _EPS * _dot(delta.abs(), absCb)).logical_not_()
        pick = (ok | (last & quiet)).to(torch.int8).argmax(-1, keepdim=True)  # the first passing step
        step = t.gather(-1, pick).masked_fill_(done, 0.0)
        beta = torch.addcmul(beta, step, delta)
        # Converged once the Newton step moves no weight by more than 1e-9 relative (the step just
        # taken then leaves errors of order 1e-18) or than its rounding floor 1e3·ε·(H⁻¹s)_i
        # (reached only by degenerate problems).
        done = done | (delta.abs() <= torch.add(1e-9 * beta, reach, alpha=1e3 * _EPS)).all(-1, keepdim=True)
        if cpu and bool(done.all()):
            break
    return torch.where(live, d * beta, torch.zeros_like(beta))


def _mv(A: Tensor, x: Tensor) -> Tensor:
    """``A x`` over the last dimension: one ``mv`` for an unbatched ``x`` (T,), else batched."""
    return A @ x if x.dim() == 1 else (A @ x.unsqueeze(-1)).squeeze(-1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_i a_i b_i`` over the last dimension, kept as a size-1 dimension (a scalar if unbatched)."""
    return torch.dot(a, b) if a.dim() == 1 else (a * b).sum(-1, keepdim=True)


def _outer(t: Tensor, x: Tensor) -> Tensor:
    """``t_k x_i`` (..., K, T) from ``t`` (..., K) and ``x`` (..., T)."""
    return torch.outer(t, x) if x.dim() == 1 else t.unsqueeze(-1) * x.unsqueeze(-2)
