"""Exact solvers for the small T×T problems of gradient-manipulation methods.

Every solver here works on a batch of Gramians ``G`` of shape ``(..., T, T)`` in float64 on
whatever device ``G`` lives, with torch operations only (no numpy, scipy or cvxpy).

* :func:`simplex_qp` — ``min_w ½ wᵀQw + pᵀw`` over the probability simplex, by a primal
  active-set method. Each iteration solves the equality-constrained problem of the current free
  set exactly, so the answer is exact up to rounding once the support is found (finite
  termination), however badly the task-gradient norms are scaled.
* :func:`min_norm_weights` — MGDA's min-norm point of the convex hull (``Q = G, p = 0``).
* :func:`cagrad_weights` — CAGrad's dual (Liu et al. 2021, Alg. 1), reduced to a one-dimensional
  root search over a family of simplex QPs whose solution is affine in the root variable on a
  fixed support, which makes the final step exact.
* :func:`dual_cone_qp` — ``min vᵀGv`` s.t. ``v ≥ lower`` (projections onto the dual cone of the
  task gradients: UPGrad, DualProj), block principal pivoting with an active-set fallback.
* :func:`bargaining_weights` — positive ``w`` with ``(Gw)_i = w_i^{−1/α}`` (Nash-MTL for α = 1,
  FairGrad), damped Newton on a convex potential.
* :func:`config_weights` — ConFIG's equal-projection direction through the cosine matrix.

On the CPU the iterations stop as soon as every problem of the batch has converged (checking
costs nothing there); on an accelerator they run for the fixed maximum number of iterations with
converged problems frozen by ``torch.where``, so no step synchronises with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["simplex_qp", "min_norm_weights", "cagrad_weights", "cagrad_mtrl_weights"]

_EPS = torch.finfo(torch.float64).eps
# Eigenvalues of the equilibrated KKT matrix below this fraction of the largest are treated as 0.
_PINV_RTOL = 1e-12
# Relative tolerance of the optimality test on the multipliers.
_KKT_TOL = 1e4 * _EPS
# Relative accuracy of a norm ‖Σ w_i g_i‖ computed from the Gramian (√ε, with a margin of 4).
_NORM_NOISE = 4 * _EPS**0.5


def _host_sync_is_free(t: Tensor) -> bool:
    return t.device.type == "cpu"


def _diag_scale(Q: Tensor) -> Tensor:
    """D with D_i = 1/√Q_ii (1/√max_j Q_jj for a zero row), so that D Q D has a unit diagonal."""
    diag = Q.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    top = diag.amax(dim=-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    return torch.where(diag > top * _EPS**2, diag, top).rsqrt()


def _equilibrate(Q: Tensor, D: Tensor) -> Tensor:
    """``D Q D``, exactly symmetric and with an exact unit diagonal where ``D_i = 1/√Q_ii``.

    Computed as it stands, ``(Q_ij·D_i)·D_j`` and ``(Q_ji·D_j)·D_i`` differ by an ulp and so does
    ``Q_ii·D_i²`` from 1. For two nearly opposite gradients (1 + cos ~ 1e-9) such an ulp is a
    relative error of 1e-7 in the quantities the solution is made of, enough for an update that
    should balance the two to conflict with one of them.
    """
    Qs = Q * D.unsqueeze(-1) * D.unsqueeze(-2)
    Qs = 0.5 * (Qs + Qs.mT)
    diag = Q.diagonal(dim1=-2, dim2=-1)
    unit = (diag * D * D - 1).abs() < 1e-12  # the rows D normalised (not the zero rows)
    eye = torch.eye(Q.shape[-1], dtype=torch.bool, device=Q.device)
    return torch.where(eye & unit.unsqueeze(-1), 1.0, Qs)


class _Faces:
    """Exact solutions of ``min ½wᵀQw + pᵀw`` s.t. ``Σ_{i∈F} w_i = s``, ``w_i = 0`` off the free set F.

    The problem is solved in equilibrated variables ``w = Dŵ`` (``DQD`` has a unit diagonal), so
    gradients whose norms differ by orders of magnitude are treated alike. With ``x = Q̂⁻¹D`` and
    ``y = Q̂⁻¹Dp`` the solution is ``ŵ = νx − y``, ``ν = (s + Dᵀy)/(Dᵀx)`` (a Schur complement), via
    a Cholesky factorisation of the free block. A face whose free gradients are affinely dependent
    (duplicates, colinear rows, T > rank) has a singular block; there the minimum-norm solution of
    the full KKT system is used (eigendecomposition), which is exact because the system is
    consistent. On an accelerator that route is always taken, so no step reads a flag on the host.
    """

    def __init__(self, Q: Tensor) -> None:
        self.Q = Q
        self.D = _diag_scale(Q)
        self.Qs = _equilibrate(Q, self.D)
        self.eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)

    def solve(self, p: Tensor, s: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
        """``p`` (..., K, T) and sums ``s`` (..., K) → ``w`` (..., K, T) and multipliers ``ν`` (..., K)."""
        D = torch.where(free, self.D, torch.zeros_like(self.D))
        pair = free.unsqueeze(-1) & free.unsqueeze(-2)
        Qs = torch.where(pair, self.Qs, self.eye)
        rhs = torch.cat([D.unsqueeze(-1), (D.unsqueeze(-2) * p).transpose(-1, -2)], dim=-1)  # (..., T, 1+K)
        if _host_sync_is_free(Qs):
            L, info = torch.linalg.cholesky_ex(Qs)
            if not bool(info.any()):
                sol = torch.cholesky_solve(rhs, L)
                x, y = sol[..., :1], sol[..., 1:]
                dx = (D.unsqueeze(-1) * x).sum(-2)  # (..., 1)
                dy = (D.unsqueeze(-1) * y).sum(-2)  # (..., K)
                nu = (s + dy) / dx
                w_hat = nu.unsqueeze(-2) * x - y  # (..., T, K)
                return (self.D.unsqueeze(-1) * w_hat).transpose(-1, -2), nu
        return self._solve_singular(Qs, D, p, s)

    def _solve_singular(self, Qs: Tensor, D: Tensor, p: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        gamma = D.amax(dim=-1, keepdim=True)  # keeps the constraint row's entries O(1)
        a = D / gamma
        top = torch.cat([Qs, a.unsqueeze(-1)], dim=-1)
        bottom = torch.cat([a, torch.zeros_like(a[..., :1])], dim=-1).unsqueeze(-2)
        M = torch.cat([top, bottom], dim=-2)
        b = torch.cat([-p * D.unsqueeze(-2), (s / gamma).unsqueeze(-1)], dim=-1)
        x = (torch.linalg.pinv(M, rtol=_PINV_RTOL, hermitian=True) @ b.transpose(-1, -2)).transpose(-1, -2)
        T = Qs.shape[-1]
        # The scaled column is D/γ, so its unknown is −γν.
        return x[..., :T] * self.D.unsqueeze(-2), -x[..., T] / gamma

    def multipliers(self, w: Tensor, p: Tensor, nu: Tensor) -> Tensor:
        """``(Qw + p)_i − ν``: non-negative off the free set at a minimiser."""
        return (self.Q @ w.unsqueeze(-1)).squeeze(-1) + p - nu.unsqueeze(-1)


def _solve_face(Q: Tensor, rhs_p: Tensor, rhs_one: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """One-off :meth:`_Faces.solve` (``rhs_p`` (..., K, T), sums ``rhs_one`` (..., K))."""
    return _Faces(Q).solve(rhs_p, rhs_one, free)


def _kkt_tolerance(Q: Tensor, p: Tensor, w: Tensor) -> Tensor:
    """Per-coordinate rounding bound of ``(Qw + p)_i``: ε·(|p_i| + √Q_ii·Σ_j √Q_jj w_j)."""
    root = Q.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    spread = (root * w.abs()).sum(-1, keepdim=True)
    return _KKT_TOL * (p.abs() + root * spread + spread.square())


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
        if _host_sync_is_free(nxt) and bool((nxt == free).all()):
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
        if _host_sync_is_free(done) and bool(done.all()):
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


def _cagrad_two_tasks(G: Tensor, mean: Tensor, c: float | Tensor) -> Tensor:
    """Closed-form CAGrad weights for T = 2, written in Gramian entries (a hot path: the 2-D toys
    call it every step, so it is kept to elementwise operations on the batch).

    With g_w = g₂ + x(g₁ − g₂), a = g₁ − g₂, u = ‖a‖²x + aᵀg₂ and D = det G, the dual objective's
    derivative is k + ρ‖a‖·u/√(u² + D) with k = g₀ᵀa = b₁ − b₂ (``b = Gm``); its root is
    u = r√(D/(1 − r²)), r = −k/(ρ‖a‖), clipped to x ∈ [0, 1]; the weights are
    ``m + (ρ/‖g_w‖)(x, 1 − x)``.

    ‖g_w*‖ = 0 happens only for two opposite non-zero gradients (the path limit is d = 0) or a zero
    gradient (the limit is d = g₀); both are returned exactly.

    The formula is solved with the smaller gradient second (g₂), and the weights swapped back: x
    is then the weight of the larger one and small, so ``1 − x`` keeps the small task's weight
    exactly; the other order loses it (left the ball at a norm ratio of 1e7, d = 0 at 1e8).
    """
    swap = G[..., 0, 0] < G[..., 1, 1]
    G = torch.where(swap.unsqueeze(-1).unsqueeze(-1), G.flip(-1, -2), G)
    mean = torch.where(swap.unsqueeze(-1), mean.flip(-1), mean)
    w = _cagrad_two_tasks_ordered(G, mean, c)
    return torch.where(swap.unsqueeze(-1), w.flip(-1), w)


def _cagrad_two_tasks_ordered(G: Tensor, mean: Tensor, c: float | Tensor) -> Tensor:
    tiny = torch.finfo(G.dtype).tiny
    g11, g22, g12 = G[..., 0, 0], G[..., 1, 1], G[..., 0, 1]
    m1, m2 = mean[..., 0], mean[..., 1]
    b1, b2 = m1 * g11 + m2 * g12, m1 * g12 + m2 * g22
    rho = c * (m1 * b1 + m2 * b2).clamp_min(0.0).sqrt()
    aa = (g11 + g22 - 2 * g12).clamp_min(0.0)
    ae = g12 - g22
    det = (g11 * g22 - g12 * g12).clamp_min(0.0)
    r = (b2 - b1) / (rho * aa.sqrt()).clamp_min(tiny)
    r2 = r * r
    u = r * (det / (1 - r2).clamp_min(tiny)).sqrt()
    x = torch.where(r2 < 1, (u - ae) / aa.clamp_min(tiny), (r >= 1).to(G.dtype))
    x = torch.where(aa > 0, x.clamp(0.0, 1.0), 0.5)
    gw = ((aa * x + 2 * ae) * x + g22).clamp_min(0.0).sqrt()
    noise = _NORM_NOISE * (x * g11.clamp_min(0.0).sqrt() + (1 - x) * g22.clamp_min(0.0).sqrt())
    ok = (rho > 0) & (gw > noise)
    scale = torch.where(ok, rho / gw.clamp_min(tiny), 0.0)
    w = torch.stack([m1 + scale * x, m2 + scale * (1 - x)], dim=-1)
    opposite = (g11 > 0) & (g22 > 0) & (rho > 0) & ~ok
    return torch.where(opposite.unsqueeze(-1), 0.0, w)


def cagrad_weights(G: Tensor, c: float | Tensor, mean_weights: Tensor | None = None) -> Tensor:
    """Weights ``a`` with ``d* = Σ_i a_i g_i`` for CAGrad's update (Liu et al. 2021, Alg. 1).

    ``d* = g₀ + (c‖g₀‖/‖g_w*‖) g_w*`` where ``w* = argmin_{w∈Δ} g_wᵀg₀ + c‖g₀‖‖g_w‖`` (eq. 11),
    so ``a = m + (c‖g₀‖/‖g_w*‖) w*`` with ``g₀ = Σ_i m_i g_i``; ``m = 1/T`` (the average gradient)
    unless ``mean_weights`` says otherwise — CAGrad-Fast (eq. 4) passes the weights that rebuild
    the full average from sampled tasks and one pseudo-task. ``c`` may be a tensor of the batch
    shape (one radius per problem).

    Solved through the Lagrangian of eq. (3): for a multiplier λ > 0 the inner problem is the
    simplex QP ``w(λ) = argmin ½‖g_w‖² + λ g_wᵀg₀`` and the optimal λ* is the root of
    ``ρλ = ‖g_w(λ)‖`` (ρ = c‖g₀‖), an increasing function of λ; then ``d* = g₀ + g_w(λ*)/λ*``.
    On a fixed support ``w(λ)`` is affine in λ, so each step solves the root exactly on the current
    support (a safeguarded Newton step on a piecewise-smooth function) and the last one is exact.

    Degenerate cases: ``c‖g₀‖ = 0`` gives ``d* = g₀``. When ``0`` lies in the convex hull and
    ‖g_w*‖ = 0 (no direction in the ball improves every task), the root is λ* → 0 and the update
    is the limit ``g₀ + lim g_w(λ)/λ`` along the path, a point of the ball maximising
    ``min_i⟨g_i, d⟩``.
    """
    T = G.shape[-1]
    if mean_weights is None:
        mean = G.new_full(G.shape[:-1], 1.0 / T)
    else:
        mean = mean_weights.to(G).expand(G.shape[:-1]).clone()
    if T == 2:
        return _cagrad_two_tasks(G, mean, c)
    b = (G @ mean.unsqueeze(-1)).squeeze(-1)  # b_i = ⟨g_i, g₀⟩
    g0_sq = (mean * b).sum(-1).clamp_min(0.0)
    rho = c * g0_sq.sqrt()
    if T == 1:
        # The simplex is one point: g_w = g₀ and d = (1 + c) g₀.
        return mean * (1 + c * (rho > 0).to(G.dtype).unsqueeze(-1))
    return _cagrad_general(G, b, rho, mean)


def _cagrad_general(G: Tensor, b: Tensor, rho: Tensor, mean: Tensor) -> Tensor:
    T = G.shape[-1]
    batch = G.shape[:-2]
    active = rho > 0
    safe_rho = torch.where(active, rho, 1.0)
    top = G.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(0.0).sqrt()
    lo = torch.zeros_like(rho)
    hi = 2 * top / safe_rho + torch.finfo(G.dtype).tiny  # ‖g_w‖ ≤ max_i ‖g_i‖ < ρλ there
    lam = (G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(0.0).sqrt() / safe_rho).clamp_min(1e-300)
    w = G.new_full((*batch, T), 1.0 / T)
    free = torch.ones(*batch, T, dtype=torch.bool, device=G.device)
    done = ~active
    result = mean.clone()
    norms = G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    floor = 1e-14 * hi
    sums = torch.stack([G.new_ones(batch), G.new_zeros(batch)], dim=-1)  # Σw = 1 for w_a, 0 for w_b
    zero_p = torch.zeros_like(b)
    for _ in range(100):
        w, free, settled = _simplex_qp(G, lam.unsqueeze(-1) * b, free_guess=free)
        # On this support w(λ) = w_a + λ w_b exactly: two right-hand sides, one factorisation.
        sol, nus = _solve_face(G, torch.stack([zero_p, b], dim=-2), sums, free)
        wa, wb = sol[..., 0, :], sol[..., 1, :]
        Gwa, Gwb = (G @ wa.unsqueeze(-1)).squeeze(-1), (G @ wb.unsqueeze(-1)).squeeze(-1)
        A = (wa * Gwa).sum(-1).clamp_min(0.0)
        B = (wa * Gwb).sum(-1)
        C = (wb * Gwb).sum(-1).clamp_min(0.0)
        gw = (w * (G @ w.unsqueeze(-1)).squeeze(-1)).sum(-1).clamp_min(0.0).sqrt()
        # ‖g_w‖ from the Gramian is only known to about √ε·Σ|w_i|‖g_i‖: below that it is 0.
        gw = torch.where(gw > _norm_noise(w, norms), gw, 0.0)
        flat = A.sqrt() <= _norm_noise(wa, norms)
        A = torch.where(flat, 0.0, A)
        B = torch.where(flat, 0.0, B)
        # If the search never certifies an exact root (faces so ill-conditioned that the active
        # set cannot settle, e.g. gradients equal up to rounding), Alg. 1's formula on the last
        # dual iterate is the answer: it is what the official code computes from its solver.
        last = mean + torch.where(gw > 0, rho / torch.where(gw > 0, gw, 1.0), 0.0).unsqueeze(-1) * w
        below = rho * lam < gw
        lo = torch.where(below, lam, lo)
        hi = torch.where(below, hi, lam)
        # Root of (ρ² − C)λ² − 2Bλ − A = 0 on this support.
        qa = rho * rho - C
        disc = (B * B + qa * A).clamp_min(0.0)
        root = (B + disc.sqrt()) / torch.where(qa > 0, qa, 1.0)
        root = torch.where((qa > 0) & (B + disc.sqrt() > 0) & ~flat, root, torch.full_like(root, float("nan")))
        w_root = wa + root.unsqueeze(-1) * wb
        slack = 1e-12 * hi  # the bracket ends are themselves rounded roots
        in_bracket = (root >= lo - slack) & (root <= hi + slack) & (root > floor)
        # The root is the answer if its weights stay feasible on this support; the QP at the root
        # then has the same support, so it is optimal there.
        valid = in_bracket & ((w_root >= -1e-12) | ~free).all(-1)
        mult_ok = _face_is_optimal(G, root, b, w_root, free)
        exact = valid & mult_ok & active & ~done
        scale = torch.where(exact, 1.0 / torch.where(exact, root, 1.0), 0.0)
        candidate = mean + w_root.clamp_min(0.0) * scale.unsqueeze(-1)
        result = torch.where(exact.unsqueeze(-1), candidate, result)
        # λ* → 0 (no root on a support whose path starts at g_w = 0): the update is the limit of
        # g₀ + g_w(λ)/λ, i.e. g₀ + J w_b, provided this support is the one the path has as λ → 0⁺:
        # weights w_a + λw_b ≥ 0 and multipliers λ(Gw_b + b − ν_b) ≥ 0 for small λ.
        mult_b = Gwb + b - nus[..., 1].unsqueeze(-1)
        tol_b = _kkt_tolerance(G, b, wb)
        # w_i(λ) → w_a,i as λ → 0⁺: positive, or zero and not decreasing.
        positive_near_zero = (wa > 1e-12) | ((wa.abs() <= 1e-12) & (wb >= -1e-12))
        starts_at_zero = (positive_near_zero | ~free).all(-1) & (free | (mult_b >= -tol_b)).all(-1)
        limit = active & ~done & ~exact & flat & ~below & starts_at_zero
        limit = limit | (active & ~done & ~exact & (hi <= floor))
        result = torch.where(limit.unsqueeze(-1), mean + wb, result)
        # A QP that cannot settle (faces ill-conditioned to rounding level) will not settle at
        # the next λ either: stop there with Alg. 1's formula on that dual iterate.
        stuck = active & ~done & ~exact & ~limit & ~settled
        result = torch.where(stuck.unsqueeze(-1), last, result)
        done = done | exact | limit | stuck
        if _host_sync_is_free(done) and bool(done.all()):
            break
        bisect = torch.where(lo > 0, (lo * hi).sqrt(), hi / 16)
        # The root on the current support is a Newton-like estimate even when that support changes.
        nxt = torch.where((root > lo) & (root < hi), root, bisect)
        lam = torch.where(done, lam, nxt)
    return torch.where(done.unsqueeze(-1), result, last)


def _norm_noise(w: Tensor, norms: Tensor) -> Tensor:
    """Rounding level of ``‖Σ_i w_i g_i‖`` computed from the Gramian and a solved ``w``."""
    return _NORM_NOISE * (w.abs() * norms).sum(-1) + 1e3 * _EPS * norms.amax(-1)


def _face_is_optimal(G: Tensor, lam: Tensor, b: Tensor, w: Tensor, free: Tensor) -> Tensor:
    """KKT test of the QP ``min ½wᵀGw + λbᵀw`` over the simplex at ``w`` (free set ``free``)."""
    p = torch.nan_to_num(lam).unsqueeze(-1) * b
    grad = (G @ w.unsqueeze(-1)).squeeze(-1) + p
    nu = torch.where(free, grad, torch.zeros_like(grad)).sum(-1) / free.sum(-1).clamp_min(1)
    mult = grad - nu.unsqueeze(-1)
    tol = _kkt_tolerance(G, p, w)
    # Free coordinates hold with equality by construction; the others need a non-negative multiplier.
    return (free | (mult >= -tol)).all(-1) & torch.isfinite(lam)


def cagrad_mtrl_weights(G: Tensor, c: float, steps: int = 20, momentum: float = 0.5) -> Tensor:
    """CAGrad as the official Meta-World code solves it (``mtrl_files/cagrad.py::cagrad``).

    The Gramian is normalised by ``(mean_i √(G_ii + 1e-4))²``; ``w = softmax(z)`` with ``z₀ = 0``
    takes ``steps`` momentum-SGD steps (lr 25, or 50 when T = 50, momentum 0.5) on
    ``wᵀG1/T + c'√(wᵀGw + 1e-4)`` with ``c' = c√(mean(G) + 1e-4)``, keeping the best of the
    evaluated objectives; the weights are ``1/T + w·c'/(‖g_w‖ + 1e-4)`` (no rescale: the official
    code then divides by 1 + c², which is ``rescale=1``).
    """
    T = G.shape[-1]
    scale = (G.diagonal(dim1=-2, dim2=-1) + 1e-4).sqrt().mean(-1)
    Gn = G / scale.square().unsqueeze(-1).unsqueeze(-1)
    Gg = Gn.mean(-1)
    gg = Gg.mean(-1)
    cn = (gg + 1e-4).sqrt() * c
    lr = 50.0 if T == 50 else 25.0
    z = torch.zeros_like(Gg)
    buf = torch.zeros_like(Gg)
    best_obj = torch.full_like(gg, float("inf"))
    best_z = z.clone()
    for i in range(steps + 1):
        w = torch.softmax(z, dim=-1)
        Gw = (Gn @ w.unsqueeze(-1)).squeeze(-1)
        root = ((w * Gw).sum(-1) + 1e-4).sqrt()
        obj = (w * Gg).sum(-1) + cn * root
        better = obj < best_obj
        best_obj = torch.where(better, obj, best_obj)
        best_z = torch.where(better.unsqueeze(-1), z, best_z)
        if i == steps:
            break
        dw = Gg + (cn / root).unsqueeze(-1) * Gw
        dz = w * (dw - (w * dw).sum(-1, keepdim=True))
        buf = dz if i == 0 else momentum * buf + dz
        z = z - lr * buf
    w = torch.softmax(best_z, dim=-1)
    gw = ((w * (Gn @ w.unsqueeze(-1)).squeeze(-1)).sum(-1) + 1e-4).sqrt()
    lam = cn / (gw + 1e-4)
    return 1.0 / T + w * lam.unsqueeze(-1)


# ------------------------------------------------------------------------------------------------
# Dual-cone projections (UPGrad, DualProj), α-fair bargaining weights (Nash-MTL, FairGrad) and
# ConFIG's pseudo-inverse direction. Same conventions as above: batched float64, on G's device,
# early exits on the CPU only.
# ------------------------------------------------------------------------------------------------

__all__ += ["bargaining_weights", "config_weights", "dual_cone_qp"]

# A Cholesky pivot² below this (on a unit-diagonal matrix) marks the face as numerically singular.
_PIVOT_TOL = 1e-13
# Júdice & Pires' backup count: non-improving full exchanges allowed before single pivots.
_BPP_BACKUP = 3


def _masked_psd_solve(A: Tensor, rhs: Tensor, free: Tensor) -> Tensor:
    """``x`` with ``A_FF x_F = rhs_F`` and ``x = 0`` off ``F``, for PSD ``A`` with a unit-ish diagonal.

    ``A`` (..., T, T), ``rhs`` and ``free`` (..., T). A well-conditioned block is factorised by
    Cholesky; a (numerically) singular one — duplicate, colinear or T > rank gradients — gets the
    minimum-norm solution through an eigendecomposition, exact when the system is consistent. On
    the CPU the eigendecomposition runs only if some block needs it; on an accelerator it always
    runs and ``torch.where`` picks per problem, so nothing is read on the host.
    """
    T = A.shape[-1]
    eye = torch.eye(T, dtype=A.dtype, device=A.device)
    M = torch.where(free.unsqueeze(-1) & free.unsqueeze(-2), A, eye)
    b = torch.where(free, rhs, torch.zeros_like(rhs)).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(M)
    good = (info == 0) & (L.diagonal(dim1=-2, dim2=-1).square() > _PIVOT_TOL).all(-1)
    x = torch.cholesky_solve(b, L).squeeze(-1)
    if not _host_sync_is_free(A) or not bool(good.all()):
        xp = (torch.linalg.pinv(M, rtol=_PINV_RTOL, hermitian=True) @ b).squeeze(-1)
        x = torch.where(good.unsqueeze(-1), x, xp)
    return torch.where(free, x, torch.zeros_like(x))


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
    y = (Gs @ zf.unsqueeze(-1)).squeeze(-1) + q
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
    G = G.expand(*batch, T, T).reshape(-1, T, T)
    lower = lower.to(dtype=G.dtype, device=G.device).expand(*batch, T).reshape(-1, T)
    N = G.shape[0]
    D = _diag_scale(G)
    Gs = _equilibrate(G, D)
    q = D * (G @ lower.unsqueeze(-1)).squeeze(-1)  # the objective's gradient at z = 0
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
    cpu = _host_sync_is_free(G)
    for it in range(cap):
        switch = it + 1 == pivots
        any_primal = not cpu or bool(primal.any())
        if cpu and N >= 8:  # a large batch: work on the unsolved problems only
            idx = (~done).nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            opt, zf, last, f2, z2, b2, k2, p2 = _pivot_round(
                Gs[idx], q[idx], scale[idx], free[idx], z[idx], best[idx], backup[idx], primal[idx], switch,
                any_primal,
            )
            result[idx] = torch.where(opt.unsqueeze(-1), zf, last)
            done[idx] = opt
            free[idx], z[idx], best[idx], backup[idx], primal[idx] = f2, z2, b2, k2, p2
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
    live = diag > top * _EPS**2
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

    absC = C.abs()
    steps = 0.5 ** torch.arange(12, dtype=G.dtype, device=G.device)  # backtracking candidates
    done = torch.zeros(G.shape[:-2] + (1,), dtype=torch.bool, device=G.device)
    cpu = _host_sync_is_free(G)
    for _ in range(max_iter):
        Cb = (C @ beta.unsqueeze(-1)).squeeze(-1)
        inv = beta.reciprocal()
        bp = inv if p == 1.0 else torch.exp(-p * torch.log(beta))  # β^{-p}
        grad = Cb - c * bp
        L, _ = torch.linalg.cholesky_ex(C + torch.diag_embed(p * c * bp * inv))
        # The gradient's rounding error is ~ε·s_i, s_i = (|C|β)_i + c_i β_i^{-p} (its terms'
        # sizes); H⁻¹s maps it to the attainable accuracy of each weight.
        absCb = (absC @ beta.unsqueeze(-1)).squeeze(-1)
        sol = torch.cholesky_solve(torch.stack([grad, absCb + c * bp], dim=-1), L)
        delta, reach = -sol[..., 0], sol[..., 1].abs()
        dec = -(grad * delta).sum(-1, keepdim=True)  # Newton decrement², ≥ 0
        # Longest step keeping β > 0 (99% of the way to the boundary), then Armijo backtracking
        # over a batch of candidate steps. The decrease f(β + tδ) − f(β) is evaluated as
        # t·(Cβ)ᵀδ + ½t²δᵀCδ − Σ c_i [h(β_i + tδ_i) − h(β_i)], with log1p/expm1 for the h terms,
        # so it stays accurate when f itself is a cancellation of huge terms.
        Cd = (C @ delta.unsqueeze(-1)).squeeze(-1)
        rel = delta * inv
        t = (0.99 / (-rel).amax(-1, keepdim=True).clamp_min(0.99)) * steps  # (..., K)
        log_ratio = torch.log1p(t.unsqueeze(-1) * rel.unsqueeze(-2))  # log((β + tδ)/β)
        if p == 1.0:
            dh = log_ratio
        else:
            dh = torch.exp((1.0 - p) * torch.log(beta)).unsqueeze(-2) * torch.expm1((1.0 - p) * log_ratio) / (1.0 - p)
        df = t * ((Cb * delta).sum(-1, keepdim=True) + 0.5 * t * (delta * Cd).sum(-1, keepdim=True))
        df = df - (c.unsqueeze(-2) * dh).sum(-1)
        ok = df <= -0.1 * t * dec
        # The rounding of df is ~t·ε·Σ|δ_i|(|C|β)_i (the error of Cβ): once the decrement is within
        # 1e3 of it the line search cannot judge a step any more, and the full step is taken.
        noisy = dec <= 1e3 * _EPS * (delta.abs() * absCb).sum(-1, keepdim=True)
        pick = torch.where(ok.any(-1, keepdim=True), ok.to(torch.int8).argmax(-1, keepdim=True), steps.shape[0] - 1)
        step = torch.where(noisy & ~ok.any(-1, keepdim=True), t[..., :1], t.gather(-1, pick))
        beta = beta + torch.where(done, 0.0, step) * delta
        # Converged once the Newton step moves no weight by more than 1e-9 relative (the step just
        # taken then leaves errors of order 1e-18) or than its rounding floor 1e3·ε·(H⁻¹s)_i
        # (reached only by degenerate problems).
        done = done | (delta.abs() <= 1e-9 * beta + 1e3 * _EPS * reach).all(-1, keepdim=True)
        if cpu and bool(done.all()):
            break
    return torch.where(live, d * beta, torch.zeros_like(beta))


def config_weights(G: Tensor, pref: Tensor | None = None) -> Tensor:
    """ConFIG's update as task weights (Liu, Chu & Thuerey 2024): ``d = (Σ_i g_iᵀ ĝ) ĝ``.

    ``ĝ`` is the unit vector of ``U⁺ w`` where ``U`` stacks the unit gradients ``g_i/‖g_i‖`` and
    ``w`` is the preference (ones). With ``D = diag(1/‖g_i‖)`` and ``C = DGD`` (the cosine
    matrix), ``U⁺w = Uᵀ C⁺ w = Σ_i a_i g_i`` with ``a = D C⁺ w``, ``‖U⁺w‖² = wᵀC⁺w``, so
    ``d = Σ_i [a_i (1ᵀGa)/(aᵀGa)] g_i``. Zero gradients get zero unit vectors (weight 0), as in
    torchjd; if ``U⁺w = 0`` (e.g. two opposite gradients) the update is 0.
    """
    G = 0.5 * (G + G.mT)
    diag = G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    top = diag.amax(-1, keepdim=True)
    live = diag > top * _EPS**2
    d = torch.where(live, torch.where(live, diag, 1.0).rsqrt(), 0.0)
    C = G * d.unsqueeze(-1) * d.unsqueeze(-2)
    w = G.new_ones(G.shape[:-1]) if pref is None else pref.to(G).expand(G.shape[:-1])
    s = _masked_psd_solve(C, w, live)
    a = d * s
    Ga = (G @ a.unsqueeze(-1)).squeeze(-1)
    norm2 = (a * Ga).sum(-1, keepdim=True)  # = sᵀCs = ‖U⁺w‖²
    length = Ga.sum(-1, keepdim=True)  # = Σ_i g_iᵀ(U⁺w)
    # U⁺w = 0 (w ⊥ the span of the unit gradients) leaves only rounding noise in s.
    ok = norm2 > 1e-18 * w.square().sum(-1, keepdim=True)
    return torch.where(ok, a * length / torch.where(ok, norm2, 1.0), torch.zeros_like(a))
