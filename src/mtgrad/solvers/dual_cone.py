"""Projections onto the dual cone of the task gradients (UPGrad, DualProj): ``min vᵀGv`` s.t. ``v ≥ lower``."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common
from ._common import _KKT_TOL, _diag_scale, _equilibrate, _masked_psd_solve

__all__ = ["dual_cone_qp"]

# Júdice & Pires' backup count: non-improving full exchanges allowed before single pivots.
_BPP_BACKUP = 3


def _pivot_round(
    Gs: Tensor,
    q: Tensor,
    scale: Tensor,
    free: Tensor,
    z: Tensor,
    best: Tensor,
    backup: Tensor,
    primal: Tensor,
    switch: bool,
    any_primal: bool,
) -> tuple[Tensor, ...]:
    """One round of :func:`dual_cone_qp` on the problems given (see there for the method).

    ``any_primal=False`` promises that no problem is in its primal active-set phase.
    """
    zf = _masked_psd_solve(Gs, -q, free)
    y = _matvec(Gs, zf) + q
    tol = _KKT_TOL * (scale + zf.abs().sum(-1, keepdim=True))
    negative = free & (zf < -tol)
    violated = ~free & (y < -tol)
    bad = negative | violated
    optimal = ~bad.any(-1)
    # Block principal pivoting with Júdice & Pires' backup rule: exchange every infeasible index;
    # once that stops reducing their number, pivot on the largest infeasible index alone.
    count = bad.sum(-1)
    improved = count < best
    full = (improved | (backup > 0)).unsqueeze(-1)
    best = torch.where(improved, count, best)
    backup = torch.where(improved, _BPP_BACKUP, (backup - 1).clamp_min(0))
    rank = torch.arange(1, Gs.shape[-1] + 1, device=Gs.device)
    single = torch.zeros_like(bad).scatter(-1, (bad * rank).argmax(-1, keepdim=True), True)
    free_bpp = free ^ torch.where(full, bad, single)
    last = zf.clamp_min(0.0)  # the fall-back answer if the round cap is reached
    if any_primal:
        free, z, last = _primal_step(zf, y, free, z, negative, violated, primal, free_bpp, last)
    else:
        free = free_bpp
    if switch:  # restart the unfinished pivoting problems as primal active set from z = 0
        sw = (~primal & ~optimal).unsqueeze(-1)
        free = free & ~sw
        z = torch.where(sw, 0.0, z)
        primal = primal | sw.squeeze(-1)
    return optimal, zf.clamp_min(0.0), last, free, z, best, backup, primal


def _matvec(Gs: Tensor, z: Tensor) -> Tensor:
    """``Gs z`` per problem: ``Gs`` (N, T, T), or one symmetric (T, T) shared by the N problems."""
    return z @ Gs if Gs.dim() == 2 else (Gs @ z.unsqueeze(-1)).squeeze(-1)


def _primal_step(
    zf: Tensor, y: Tensor, free: Tensor, z: Tensor, negative: Tensor, violated: Tensor,
    primal: Tensor, free_bpp: Tensor, last: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Primal active-set update of the problems flagged ``primal`` (the others keep ``free_bpp``)."""
    # Move to a feasible face optimum and free the most violated index, or step towards an
    # infeasible one until the first weight reaches its bound and fix it there.
    feasible = ~negative.any(-1, keepdim=True)
    worst = torch.where(violated, y, torch.inf).argmin(-1, keepdim=True)
    add = torch.zeros_like(free).scatter(-1, worst, True) & violated.any(-1, keepdim=True)
    ratio = torch.where(negative, z / (z - zf).clamp_min(torch.finfo(z.dtype).tiny), torch.inf)
    step, block = ratio.min(-1, keepdim=True)
    stepped = (z + step.clamp(0, 1) * (zf - z)).clamp_min(0.0).scatter(-1, block, 0.0)
    drop = torch.zeros_like(free).scatter(-1, block, True)
    z_primal = torch.where(feasible, zf.clamp_min(0.0), stepped)
    free_primal = torch.where(feasible, free | add, free & ~drop)
    pm = primal.unsqueeze(-1)
    return torch.where(pm, free_primal, free_bpp), torch.where(pm, z_primal, z), torch.where(pm, z_primal, last)


def dual_cone_qp(
    G: Tensor, lower: Tensor, *, max_iter: int | None = None, pivot_rounds: int | None = None
) -> Tensor:
    """Exact minimiser ``v`` of ``½ vᵀGv`` subject to ``v ≥ lower`` (batched, float64).

    With ``G = JJᵀ`` this is the projection onto the dual cone ``{d : Jd ≥ 0}``: ``Jᵀv`` is the
    point of the cone closest to ``Jᵀ lower`` (Quinton & Rey 2024, Prop. 1). The update ``Jᵀv`` is
    unique; when ``G`` is singular the weights ``v`` are not, and the solver returns the ones its
    minimum-norm face solves reach.

    Method: with ``v = lower + Dz`` (``D = diag(G)^{-1/2}`` equilibrates the Gramian) the problem is
    the linear complementarity problem ``y = Ĝz + q ≥ 0``, ``z ≥ 0``, ``zᵀy = 0``. Block principal
    pivoting (Júdice & Pires 1994, as in Kim & Park's NNLS) starts from the free set ``{q < 0}``
    and exchanges every infeasible index at once; it typically ends after 1–3 face solves. A
    problem not finished after ``pivot_rounds`` rounds (default ``2T + 10``; possible only with
    singular faces, where the pivoting rule has no finiteness guarantee) restarts as a primal
    active-set method from ``z = 0``, which frees one index at a time and decreases the objective
    monotonically to the optimum. Every round solves one face exactly (:func:`_masked_psd_solve`),
    so the answer is exact up to rounding once the optimal face is found. On the CPU the loop ends
    when every problem is solved (and in batches of 8 or more each round works on the unsolved
    ones only); on an accelerator every round runs on the whole batch, with solved problems
    frozen by ``torch.where``.

    Args:
        G: positive semi-definite Gramians ``(..., T, T)``.
        lower: lower bounds ``(..., T)``; broadcast against ``G``'s batch dimensions.
        max_iter: cap on rounds; default ``6T + 30``.
        pivot_rounds: rounds of block pivoting before the fall-back; ``0`` runs the primal
            active-set method alone (slower: it frees one index per round).

    Returns:
        ``v`` with shape ``broadcast(G.shape[:-2], lower.shape[:-1]) + (T,)``.
    """
    T = G.shape[-1]
    G = 0.5 * (G + G.mT)
    batch = torch.broadcast_shapes(G.shape[:-2], lower.shape[:-1])
    lower = lower.to(dtype=G.dtype, device=G.device).expand(*batch, T).reshape(-1, T)
    N = lower.shape[0]
    if G.shape[:-2].numel() == 1:
        # One Gramian for every problem (UPGrad's T bounds): kept (T, T), never copied N times.
        G = G.reshape(T, T)
        D = _diag_scale(G)
        Gs = _equilibrate(G, D)
        q = D * (lower @ G)  # the objective's gradient at z = 0 (G is exactly symmetric)
    else:
        G = G.expand(*batch, T, T).reshape(-1, T, T)
        D = _diag_scale(G)
        Gs = _equilibrate(G, D)
        q = D * (G @ lower.unsqueeze(-1)).squeeze(-1)
    # Size of the problem in the units of z (weight × ‖g‖): rounding is relative to it.
    scale = (lower.abs() * G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()).sum(-1, keepdim=True)

    cap = 6 * T + 30 if max_iter is None else max_iter
    pivots = 2 * T + 10 if pivot_rounds is None else pivot_rounds
    primal = torch.full((N,), pivots == 0, dtype=torch.bool, device=G.device)
    free = (q < -_KKT_TOL * scale) & ~primal.unsqueeze(-1)
    z = torch.zeros_like(q)
    result = torch.zeros_like(q)
    best = torch.full((N,), T + 1, dtype=torch.long, device=G.device)
    backup = torch.full((N,), _BPP_BACKUP, dtype=torch.long, device=G.device)
    done = torch.zeros(N, dtype=torch.bool, device=G.device)
    cpu = _common._host_sync_is_free(G)
    for it in range(cap):
        switch = it + 1 == pivots
        any_primal = not cpu or bool(primal.any())
        if cpu and N >= 8:  # a large batch: work on the unsolved problems only
            idx = (~done).nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            opt, zf, last, f2, z2, b2, k2, p2 = _pivot_round(
                Gs if Gs.dim() == 2 else Gs[idx], q[idx], scale[idx], free[idx], z[idx], best[idx], backup[idx],
                primal[idx], switch, any_primal,
            )
            result[idx] = torch.where(opt.unsqueeze(-1), zf, last)
            done[idx] = opt
            free[idx], z[idx], best[idx], backup[idx], primal[idx] = f2, z2, b2, k2, p2
        elif cpu and N == 1:  # one problem: nothing to freeze, it ends when solved
            opt, zf, last, free, z, best, backup, primal = _pivot_round(
                Gs, q, scale, free, z, best, backup, primal, switch, any_primal
            )
            result = torch.where(opt.unsqueeze(-1), zf, last)
            if bool(opt.all()):
                break
        else:
            opt, zf, last, f2, z2, b2, k2, p2 = _pivot_round(
                Gs, q, scale, free, z, best, backup, primal, switch, any_primal
            )
            live = ~done
            result = torch.where(live.unsqueeze(-1), torch.where(opt.unsqueeze(-1), zf, last), result)
            keep = done.unsqueeze(-1)
            free, z = torch.where(keep, free, f2), torch.where(keep, z, z2)
            best, backup = torch.where(done, best, b2), torch.where(done, backup, k2)
            primal = torch.where(done, primal, p2)
            done = done | opt
            if cpu and bool(done.all()):
                break
    return (lower + D * result).reshape(*batch, T)
