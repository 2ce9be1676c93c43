"""Independent float64 numpy reference for PCGrad, MGDA and CAGrad.

Written from the papers' equations (see /work/shared/reference/algorithms.md, sections 1-3), NOT
from the mtgrad implementation. Slow but exact (enumeration over subsets of tasks), intended for
small T (<= 6). numpy only: no torch import here.

* ``pcgrad``  -- literal Algorithm 1 of Yu et al. (2020), with explicit visiting orders.
* ``mgda``    -- exact min-norm point of the convex hull of the rows (Sener & Koltun's QP),
                 by enumerating faces and projecting the origin onto their affine hulls.
* ``cagrad``  -- exact maximiser of the CAGrad primal (Liu et al. 2021, eq. 3)
                 max_d min_i <g_i, d>  s.t. ||d - g0|| <= c ||g0||,
                 by enumerating active sets.
* ``cagrad_dual_value_2task`` -- brute-force 1-D minimisation of the CAGrad dual for T = 2,
                 an independent route to the optimal value (strong duality).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "pcgrad",
    "fixed_orders",
    "all_order_combinations",
    "mgda",
    "cagrad",
    "cagrad_value",
    "cagrad_dual_value_2task",
    "null_space_projector",
]


def _as_jacobian(J) -> np.ndarray:
    J = np.array(J, dtype=np.float64)  # copy
    if J.ndim != 2 or J.shape[0] == 0:
        raise ValueError(f"J must be a non-empty (T, d) matrix, got shape {J.shape}")
    return J


# --------------------------------------------------------------------------------------------
# PCGrad
# --------------------------------------------------------------------------------------------


def fixed_orders(T: int, include_self: bool = False) -> list[list[int]]:
    """Ascending visiting order 0..T-1 for every task (skipping i unless include_self)."""
    return [[j for j in range(T) if include_self or j != i] for i in range(T)]


def all_order_combinations(T: int, include_self: bool = False) -> Iterable[tuple[tuple[int, ...], ...]]:
    """Every combination of per-task visiting orders (one permutation of the others per task)."""
    per_task = [list(itertools.permutations(o)) for o in fixed_orders(T, include_self)]
    return itertools.product(*per_task)


def pcgrad(J, orders: Sequence[Sequence[int]], include_self: bool = False, reduction: str = "sum") -> np.ndarray:
    """Algorithm 1 of PCGrad, literally.

    For each task i: g <- g_i; for j in orders[i]: if g . g_j < 0: g <- g - (g . g_j / ||g_j||^2) g_j,
    always projecting onto the ORIGINAL g_j (only g, the vector being built, changes).
    Returns sum_i g_i^PC (reduction="sum") or the mean.
    """
    J = _as_jacobian(J)
    T = J.shape[0]
    if len(orders) != T:
        raise ValueError("need one order per task")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    projected = []
    for i in range(T):
        order = list(orders[i])
        expected = sorted(j for j in range(T) if include_self or j != i)
        if sorted(order) != expected:
            raise ValueError(f"orders[{i}]={order} is not a permutation of {expected}")
        g = J[i].copy()
        for j in order:
            gj = J[j]
            sq = float(gj @ gj)
            if sq == 0.0:
                continue
            dot = float(g @ gj)
            if dot < 0.0:
                g = g - (dot / sq) * gj
        projected.append(g)
    total = np.sum(projected, axis=0)
    return total / T if reduction == "mean" else total


# --------------------------------------------------------------------------------------------
# MGDA: exact min-norm element of conv{rows of J}
# --------------------------------------------------------------------------------------------


def mgda(J, coord_tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Exact min-norm point of the convex hull of the rows of J.

    Enumerates every non-empty subset S of rows; projects the origin onto the affine hull of
    {J[i], i in S} by a least-squares solve in J-space (x = J[k] + D^T a, D = J[S\\k] - J[k],
    a = argmin ||J[k] + D^T a||), keeps the candidates whose barycentric coordinates are all
    >= -coord_tol (i.e. that lie in conv(S)), and returns the one of smallest norm.

    Correctness: the min-norm point x* lies in the relative interior of conv(S*) for some
    affinely independent S* (Caratheodory), and optimality implies x* is orthogonal to
    aff(S*) - x*, so x* is the projection of 0 onto aff(S*). Every kept candidate lies in the
    hull, so none is shorter than x*.

    Returns (vector, weights) with weights (T,) on the simplex (weights are not unique when the
    rows are affinely dependent; the vector is unique).
    """
    J = _as_jacobian(J)
    T, _ = J.shape
    best_x, best_w, best_n = None, None, np.inf
    for size in range(1, T + 1):
        for S in itertools.combinations(range(T), size):
            k, others = S[0], list(S[1:])
            if not others:
                x = J[k].copy()
                coords = np.array([1.0])
            else:
                D = J[others] - J[k]  # (|S|-1, d)
                a, *_ = np.linalg.lstsq(D.T, -J[k], rcond=None)
                x = J[k] + D.T @ a
                coords = np.concatenate([[1.0 - a.sum()], a])
            if coords.min() < -coord_tol:
                continue
            n = float(np.linalg.norm(x))
            if n < best_n:
                best_n, best_x = n, x
                best_w = np.zeros(T)
                best_w[list(S)] = np.clip(coords, 0.0, None)
                best_w /= best_w.sum()
    assert best_x is not None
    return best_x, best_w


# --------------------------------------------------------------------------------------------
# CAGrad: exact primal solution by active-set enumeration
# --------------------------------------------------------------------------------------------


def null_space_projector(D: np.ndarray, dim: int, rtol: float = 1e-12) -> np.ndarray:
    """Orthogonal projector onto {x : D x = 0} (D has shape (m, dim)), via the pseudo-inverse
    of D (row-space projector pinv(D) D, computed from D's SVD with a relative cut-off)."""
    if D.shape[0] == 0:
        return np.eye(dim)
    _, s, Vt = np.linalg.svd(D, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return np.eye(dim)
    r = int(np.sum(s > rtol * max(D.shape) * s[0]))
    Vr = Vt[:r]
    P = np.eye(dim) - Vr.T @ Vr
    return 0.5 * (P + P.T)


def cagrad_value(J, d) -> float:
    """Primal objective min_i <g_i, d>."""
    return float(np.min(np.asarray(J, dtype=np.float64) @ np.asarray(d, dtype=np.float64)))


def cagrad(J, c: float) -> tuple[np.ndarray, float]:
    """Exact solution of the CAGrad primal (eq. 3)

        max_d min_i <g_i, d>   s.t.  ||d - g0|| <= rho,   rho = c ||g0||,  g0 = mean_i g_i,

    returned as (d*, optimal value).  No rescaling (paper Algorithm 1, d* = g0 + rho g_w/||g_w||).

    Candidates (every one of them is primal-feasible, so the best one is optimal as soon as the
    optimum is among them):

    (V) for each non-empty S with anchor k in S: V = {d : <g_i - g_k, d> = 0, i in S} (equal
        values on S), P its orthogonal projector; c' = P g0, r' = sqrt(rho^2 - ||g0 - c'||^2)
        (skip if negative); d_S = c' + r' P g_k / ||P g_k|| (d_S = c' if P g_k = 0).  d_S is the
        maximiser of <g_k, d> on V intersected with the ball, on the sphere ||d - g0|| = rho.
        This covers every optimum on the boundary at which the restricted problem is unique.
    (W) for each S (including the empty set): the projection of g0 onto
        W = {d : <g_i, d> = 0, i in S}, if it lies in the ball.  This covers the Pareto-stationary
        case (0 in conv{g_i}), where the optimal value is 0, the optimum may be interior and is
        in general NOT unique (optimal set = ball intersected with {d : J d >= 0}); the
        projection of g0 onto that cone is one optimal point and is found by (W).

    The optimum vector is unique whenever 0 is not in conv{g_i} (or rho = 0).
    """
    J = _as_jacobian(J)
    if not c >= 0:
        raise ValueError("c must be >= 0")
    T, dim = J.shape
    g0 = J.mean(axis=0)
    rho = float(c) * float(np.linalg.norm(g0))
    best_d, best_v = None, -np.inf

    def consider(d):
        nonlocal best_d, best_v
        # A projector built from nearly dependent rows can miss orthogonality; such a candidate
        # may leave the ball, and only feasible points may compete.
        if np.linalg.norm(d - g0) > rho * (1.0 + 1e-9) + 1e-12 * float(np.abs(J).max(initial=0.0)):
            return
        v = cagrad_value(J, d)
        if v > best_v:
            best_d, best_v = d, v

    for size in range(1, T + 1):
        for S in itertools.combinations(range(T), size):
            k, others = S[0], list(S[1:])
            P = null_space_projector(J[others] - J[k], dim)
            centre = P @ g0
            r2 = rho * rho - float(np.sum((g0 - centre) ** 2))
            if r2 < 0.0:
                continue
            u = P @ J[k]
            nu = float(np.linalg.norm(u))
            consider(centre + np.sqrt(r2) * u / nu if nu > 0.0 else centre)
    for size in range(0, T + 1):
        for S in itertools.combinations(range(T), size):
            P = null_space_projector(J[list(S)], dim)
            p = P @ g0
            if np.linalg.norm(g0 - p) <= rho * (1.0 + 1e-12):
                consider(p)
    assert best_d is not None
    return best_d, best_v


def cagrad_dual_value_2task(J, c: float, grid: int = 4001) -> float:
    """min over x in [0, 1] of F(x) = g_x . g0 + rho ||g_x||, g_x = x g_1 + (1 - x) g_2.

    Brute force: dense grid, then golden-section search on the bracketing cell (F is convex).
    By strong duality (Slater holds for c > 0) this equals the primal optimal value.
    """
    J = _as_jacobian(J)
    if J.shape[0] != 2:
        raise ValueError("2 tasks only")
    g1, g2 = J
    g0 = J.mean(axis=0)
    rho = float(c) * float(np.linalg.norm(g0))

    def F(x: float) -> float:
        gx = x * g1 + (1.0 - x) * g2
        return float(gx @ g0 + rho * np.linalg.norm(gx))

    xs = np.linspace(0.0, 1.0, grid)
    vals = np.array([F(x) for x in xs])
    i = int(np.argmin(vals))
    lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, grid - 1)]
    invphi = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    x1, x2 = b - invphi * (b - a), a + invphi * (b - a)
    f1, f2 = F(x1), F(x2)
    for _ in range(200):
        if f1 < f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - invphi * (b - a)
            f1 = F(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + invphi * (b - a)
            f2 = F(x2)
        if b - a < 1e-15:
            break
    return min(vals.min(), f1, f2, F(0.0), F(1.0), F(0.5 * (a + b)))
