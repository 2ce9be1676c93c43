"""Simplex-constrained QPs: ``min ½wᵀQw + pᵀw`` over the probability simplex; MGDA's min-norm point."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common
from ._common import _Faces, _kkt_tolerance

__all__ = ["simplex_qp", "min_norm_weights"]


def _simplex_qp(
    Q: Tensor,
    p: Tensor | None = None,
    *,
    free_guess: Tensor | None = None,
    max_iter: int | None = None,
    guess_rounds: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact minimiser of ``½ wᵀQw + pᵀw`` over the probability simplex (primal active set).

    A few block-pivoting rounds first guess the support (free set ← positive weights plus
    negative multipliers, Júdice & Pires 1994), starting from every task free or from
    ``free_guess``. Then the primal active-set method finishes from a feasible point of that face:
    each iteration solves the equality-constrained problem on the free set exactly; a feasible
    solution is accepted and the most violated multiplier joins the free set, an infeasible one is
    approached until the first weight hits zero, which leaves. That phase terminates finitely with
    the exact minimiser; the guess only makes it short (typically one or two iterations).

    Args:
        Q: positive semi-definite matrices, shape ``(..., T, T)``, float64.
        p: linear terms, shape ``(..., T)``; zero when omitted.
        free_guess: optional boolean ``(..., T)`` guess of the support (e.g. a previous solution's).
        max_iter: cap on the active-set iterations; default ``4T + 20``.
        guess_rounds: block-pivoting rounds before the active-set phase.

    Returns:
        ``(w, free, converged)``: the minimiser, its free set (a superset of its support) and
        whether the optimality test passed within ``max_iter`` (it can fail only on faces so
        ill-conditioned that rounding makes the active set cycle).
    """
    T = Q.shape[-1]
    batch = Q.shape[:-2]
    faces = _Faces(Q)
    if p is None:
        p = Q.new_zeros(*batch, T)
    ones = Q.new_ones(*batch, 1)
    free = torch.ones(*batch, T, dtype=torch.bool, device=Q.device) if free_guess is None else free_guess.clone()
    free = torch.where(free.any(-1, keepdim=True), free, torch.ones_like(free))
    v = faces.solve(p.unsqueeze(-2), ones, free)[0].squeeze(-2)
    for _ in range(guess_rounds):
        nu = ((Q @ v.unsqueeze(-1)).squeeze(-1) + p).masked_fill(~free, 0).sum(-1) / free.sum(-1)
        mult = faces.multipliers(v, p, nu)
        nxt = torch.where(free, v > 0, mult < -_kkt_tolerance(Q, p, v))
        nxt = torch.where(nxt.any(-1, keepdim=True), nxt, free)
        if _common._host_sync_is_free(nxt) and bool((nxt == free).all()):
            break
        free = nxt
        v = faces.solve(p.unsqueeze(-2), ones, free)[0].squeeze(-2)
    # A feasible start inside the guessed face: the positive part of its solution.
    free = free & (v > 0)
    free = torch.where(free.any(-1, keepdim=True), free, torch.zeros_like(free).scatter(-1, v.argmax(-1, keepdim=True), True))
    w = torch.where(free, v, torch.zeros_like(v))
    w = w / w.sum(-1, keepdim=True)
    done = torch.zeros(batch, dtype=torch.bool, device=Q.device)
    cap = 4 * T + 20 if max_iter is None else max_iter
    for _ in range(cap):
        v, nu = faces.solve(p.unsqueeze(-2), ones, free)
        v, nu = v.squeeze(-2), nu.squeeze(-1)
        feasible = ((v >= 0) | ~free).all(dim=-1)
        # Feasible face optimum: move there, then add the most violated multiplier, if any.
        mult = faces.multipliers(v, p, nu)
        violation = torch.where(free, torch.zeros_like(mult), mult + _kkt_tolerance(Q, p, v))
        worst = violation.argmin(dim=-1, keepdim=True)
        optimal = violation.gather(-1, worst).squeeze(-1) >= 0
        add = torch.zeros_like(free).scatter(-1, worst, True) & ~optimal.unsqueeze(-1)
        # Infeasible: step from w towards v until the first free weight hits zero, drop it.
        shrink = free & (v < 0)
        ratio = torch.where(shrink, w / (w - v).clamp_min(torch.finfo(w.dtype).tiny), torch.inf)
        alpha, block = ratio.min(dim=-1, keepdim=True)
        stepped = (w + alpha.clamp(0, 1) * (v - w)).clamp_min(0.0)
        stepped = stepped.scatter(-1, block, 0.0)
        drop = torch.zeros_like(free).scatter(-1, block, True)

        keep = done.unsqueeze(-1)
        fea = feasible.unsqueeze(-1)
        w = torch.where(keep, w, torch.where(fea, v, stepped))
        free = torch.where(keep, free, torch.where(fea, free | add, free & ~drop))
        done = done | (feasible & optimal)
        if _common._host_sync_is_free(done) and bool(done.all()):
            break
    # Remove the rounding dust of the face solve.
    w = w.clamp_min(0.0)
    return w / w.sum(-1, keepdim=True), free, done


def simplex_qp(
    Q: Tensor,
    p: Tensor | None = None,
    *,
    free_guess: Tensor | None = None,
    max_iter: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact minimiser of ``½ wᵀQw + pᵀw`` over the probability simplex, and its free set.

    See :func:`_simplex_qp` for the method (block-pivoting guess, then a primal active set).
    """
    w, free, _ = _simplex_qp(Q, p, free_guess=free_guess, max_iter=max_iter)
    return w, free


def min_norm_weights(G: Tensor) -> Tensor:
    """MGDA (Désidéri 2012; Sener & Koltun 2018): ``w* = argmin_{w∈Δ} ‖Σ_i w_i g_i‖²``.

    Two tasks use the closed form ``γ* = clip(((g₂ − g₁)·g₂)/‖g₁ − g₂‖², 0, 1)``, with each weight
    from its own numerator (``1 − γ`` would lose a weight of 1e-12 and below to cancellation).
    """
    if G.shape[-1] == 2:
        g11, g22, g12 = G[..., 0, 0], G[..., 1, 1], G[..., 0, 1]
        den = g11 + g22 - 2 * g12
        safe = torch.where(den > 0, den, 1.0)
        w1 = torch.where(den > 0, (g22 - g12) / safe, 0.5)
        w2 = torch.where(den > 0, (g11 - g12) / safe, 0.5)
        w = torch.stack([w1, w2], dim=-1)
        # Outside [0, 1] the minimum is a vertex: the weight that went negative is 0.
        return torch.where((w1 < 0).unsqueeze(-1), torch.stack([torch.zeros_like(w1), torch.ones_like(w1)], -1),
                           torch.where((w2 < 0).unsqueeze(-1), torch.stack([torch.ones_like(w1), torch.zeros_like(w1)], -1), w))
    return simplex_qp(G)[0]
