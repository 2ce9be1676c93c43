"""CAGrad (Liu et al. 2021): the exact support search on eq. 3, the root search on its dual (eq. 11) for
degenerate problems, and the official Meta-World solver."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common
from ._common import _EPS, _NORM_NOISE, _kkt_tolerance, _solve_face
from .simplex import _simplex_qp

__all__ = ["cagrad_weights", "cagrad_mtrl_weights"]


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

    Solved on the primal (eq. 3) by a search over supports (:func:`_cagrad_supports`): on a guessed
    support the optimum is one Cholesky factorisation of the unit-norm gradients' Gramian and a
    quadratic, and block pivoting settles the support in 2–5 rounds on ordinary problems — a few
    dozen tensor operations, exact to rounding at norm ratios of 1e24 and beyond. Problems it does
    not certify (zero or duplicate gradients, singular faces, Pareto-stationary points) go to the
    root search of the Lagrangian (:func:`_cagrad_general`): for a multiplier λ > 0 the inner
    problem is the simplex QP ``w(λ) = argmin ½‖g_w‖² + λ g_wᵀg₀`` and the optimal λ* is the root of
    ``ρλ = ‖g_w(λ)‖`` (ρ = c‖g₀‖); then ``d* = g₀ + g_w(λ*)/λ*``.

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
    rho = rho.expand(G.shape[:-2])
    result, solved = _cagrad_supports(G, b, rho, mean)
    if _common._host_sync_is_free(solved):
        if bool(solved.all()):
            return result
        # The few problems the support search does not certify (zero or duplicate gradients, a
        # singular face, Pareto-stationary points) go to the root search, alone.
        todo = ~solved
        result = result.clone()
        result[todo] = _cagrad_general(G[todo], b[todo], rho[todo], mean[todo])
        return result
    # Branch-free (accelerator, torch.compile): the root search runs on every problem, the certified
    # ones replaced by the identity (whose pseudo-inverses cannot fail to converge, unlike those of
    # faces spanning 24 decades) and then discarded.
    keep = solved.unsqueeze(-1)
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    fallback = _cagrad_general(torch.where(keep.unsqueeze(-1), eye, G), torch.where(keep, mean, b), rho, mean)
    return torch.where(keep, result, fallback)


# Block-pivoting rounds of the support search before a problem is handed to the root search
# (which is not exact beyond norm ratios of ~1e12): it needs 2–5 on well-conditioned problems, up
# to ~27 measured at T = 64 with dim T + 2 and norms over 24 decades. On the CPU, where the search
# stops as soon as every problem is certified, at most 2T + 8; on the branch-free route
# (accelerators, torch.compile), where every round runs, T + 8.
# A Cholesky pivot² below this (the face's Gramian has a unit diagonal) marks the face as singular.
_SUPPORT_PIVOT = 1e-13
# Relative tolerance of the optimality test (a task's value below the minimum, per unit norm).
_SUPPORT_TOL = 1e4 * _EPS


def _cagrad_supports(G: Tensor, b: Tensor, rho: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """The primal of eq. 3 solved on a guessed support S, the guess improved by block pivoting.

    Work in the unit-norm gradients ``ĝ_i = g_i/‖g_i‖`` (``Ĝ = DGD``, ``D = diag(1/‖g_i‖)``,
    ``b̂ = Db``), so that tasks whose norms differ by 1e24 are treated alike. On a support S the
    optimal update is ``d = g₀ + Σ_{i∈S} v_i ĝ_i`` with every task of S at the same value
    ``⟨g_i, d⟩ = F`` and ``‖d − g₀‖ = ρ``: ``Ĝ_S v = F D_S − b̂_S``. With ``Ĝ_S = LLᵀ``,
    ``p = L⁻¹D_S`` and ``q = L⁻¹b̂_S`` that is ``v = L⁻ᵀ(Fp − q)`` and
    ``‖Fp − q‖ = ρ``, whose larger root is ``F = (pᵀq + ‖p‖√(ρ² − ‖q_⊥‖²))/‖p‖²`` (``q_⊥`` the part
    of ``q`` orthogonal to ``p``). That is the optimum (strong duality: ``v = w*/λ*`` with the dual
    weights of eq. 11 and ``λ* = ‖g_w*‖/ρ``) iff ``v ≥ 0`` on S and every other task has
    ``⟨g_i, d⟩ ≥ F``. The next guess keeps the positive ``v_i`` and adds the tasks below ``F``
    (Júdice & Pires' block pivoting); it usually settles in two to five rounds.

    Returns the weights ``a = m + Dv`` and whether each problem was certified optimal on a
    regular face (``ρ = 0`` is certified with ``a = m``).
    """
    T = G.shape[-1]
    diag = G.diagonal(dim1=-2, dim2=-1)
    top = diag.amax(-1, keepdim=True)
    regular = (diag > top * _common._ZERO_ROW).all(-1)
    D = torch.where(diag > 0, diag, 1.0).rsqrt()
    Gh = G * (D.unsqueeze(-1) * D.unsqueeze(-2))
    Gh.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    bh = b * D
    rhs = torch.stack([D, bh], dim=-1)  # (..., T, 2)
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    rho_sq = (rho * rho).unsqueeze(-1)
    free = torch.ones_like(D, dtype=torch.bool)
    host = _common._host_sync_is_free(G)
    for k in range(2 * T + 8 if host else T + 8):
        if k == 0:
            M, r = Gh, rhs
        else:
            M = torch.where(free.unsqueeze(-1) & free.unsqueeze(-2), Gh, eye)
            r = rhs * free.unsqueeze(-1)
        L, info = torch.linalg.cholesky_ex(M)
        z = torch.linalg.solve_triangular(L, r, upper=False)
        p, q = z[..., 0], z[..., 1]
        pp = (p * p).sum(-1, keepdim=True)
        pq = (p * q).sum(-1, keepdim=True)
        q_perp = q - (pq / pp) * p
        disc = rho_sq - (q_perp * q_perp).sum(-1, keepdim=True)
        F = (pq + (pp * disc.clamp_min(0.0)).sqrt()) / pp
        v = torch.linalg.solve_triangular(L.mT, (F * p - q).unsqueeze(-1), upper=True).squeeze(-1)
        # (⟨g_i, d⟩ − F)/‖g_i‖, to rounding: 0 on S, ≥ 0 off S at the optimum.
        mult = (Gh @ v.unsqueeze(-1)).squeeze(-1) + bh - F * D
        tol = _SUPPORT_TOL * (v.abs().sum(-1, keepdim=True) + bh.abs() + F.abs() * D)
        # The largest v_i stays, so that no guess is empty (with no root on S, ρ² ≤ ‖q_⊥‖², v is
        # the direction the face's dual weights take as λ → ∞, of zero sum: some v_i > 0 in exact
        # arithmetic, maybe none after rounding); a certified support has v_i > 0 throughout.
        top_v = v.amax(-1, keepdim=True)
        nxt = (v > 0) | (v == top_v) | ((mult < -tol) & ~free)
        solved = (nxt == free).all(-1) & ((disc > 0) & (top_v > 0)).squeeze(-1) & (info == 0)
        if host and bool(solved.all()):
            break
        free = nxt
    solved = solved & regular & (L.diagonal(dim1=-2, dim2=-1).amin(-1).square() > _SUPPORT_PIVOT)
    weights = mean + D * v.clamp_min(0.0)
    idle = rho <= 0
    return torch.where(idle.unsqueeze(-1), mean, weights), solved | idle


def _cagrad_general(G: Tensor, b: Tensor, rho: Tensor, mean: Tensor) -> Tensor:
    """The root search on λ (see :func:`cagrad_weights`): the fallback for the degenerate problems."""
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
        if _common._host_sync_is_free(done) and bool(done.all()):
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
