"""Independent float64 numpy references for UPGrad, DualProj, Nash-MTL, FairGrad and ConFIG.

Written from the papers' definitions, NOT from the mtgrad implementation, and working on the task
Jacobian J (T x d) itself wherever possible rather than on its Gramian. Slow but exact; meant for
small T (<= 6). numpy only (torch is imported only by the ``single_thread`` fixture).

* ``dual_cone_projection`` -- the point of the dual cone {d : J d >= 0} closest to Jᵀl, in the
  weight form of Quinton & Rey's Prop. 1: min ||Jᵀv||² s.t. v >= l, solved by
  enumerating every face (free set F): on F the least-squares problem min ||Jᵀl + J_Fᵀx_F|| is
  solved with an SVD-based lstsq on J itself, and the face that violates the KKT conditions
  (x_F >= 0, J d >= 0 off F) least is kept. Returns the (unique) update d, not the weights.
* ``upgrad`` / ``dualproj`` -- Quinton & Rey (2024): sum over i of the projections of u_i g_i;
  DualProj: the projection of Jᵀu.
* ``bargaining`` -- the unique positive solution w of (G_ρ w)_i = w_i^{-1/α} for
  G_ρ = G + ρ diag(G) (Nash-MTL: α = 1), by cyclic coordinate descent on the convex potential
  (each coordinate a 1-D monotone equation solved by bisection in log space) followed by damped
  Newton steps with backtracking in the original (unscaled) coordinates.
* ``config`` -- Liu, Chu & Thuerey (2024): g_u = U⁺ 1 with U the unit gradients (numpy pinv on U
  itself), ĝ = g_u/||g_u||, update (Σ_i g_iᵀ ĝ) ĝ.
* ``hull_distance`` -- distance from 0 to the convex hull of the unit gradients (0 ⇔ the
  bargaining equations have no solution without a ridge).
* ``update_error`` / ``same_update`` -- comparisons of updates that allow for the rounding of
  Σ w_i g_i when large weights cancel.
* ``single_thread`` -- a module-scoped fixture for the test modules (see its docstring).
* ``accelerator_mode`` -- runs the solvers' sync-free accelerator path on the CPU and fails on any
  host synchronisation.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

__all__ = [
    "accelerator_mode",
    "bargaining",
    "config",
    "dual_cone_projection",
    "dualproj",
    "examples",
    "hull_distance",
    "pcgrad_two",
    "same_update",
    "single_thread",
    "unique_weights",
    "update_error",
    "upgrad",
]


def dual_cone_projection(J: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Update ``Jᵀv`` for ``v = argmin ||Jᵀv||²`` s.t. ``v >= lower`` (exhaustive over faces)."""
    J = np.asarray(J, dtype=np.float64)
    T = J.shape[0]
    base = J.T @ lower
    norms = np.linalg.norm(J, axis=1)
    scale = np.abs(lower) @ norms + 1e-300
    best, best_violation = None, np.inf
    for k in range(T + 1):
        for F in itertools.combinations(range(T), k):
            F = list(F)
            x = np.zeros(T)
            if F:
                sol, *_ = np.linalg.lstsq(J[F].T, -base, rcond=1e-13)
                x[F] = sol
            d = base + J.T @ x
            y = J @ d  # multipliers: the gradient of ½||Jᵀv||² with respect to v
            size = scale + np.abs(x) @ norms  # bounds ||d||
            off = [i for i in range(T) if i not in F]
            # KKT violation in the units of ||d||: x_F >= 0 and y >= 0 off F.
            violation = max(
                np.max(-x[F] * norms[F], initial=0.0) / size,
                np.max(-y[off] / np.maximum(norms[off], 1e-300), initial=0.0) / size,
            )
            if violation < best_violation:
                best, best_violation = d, violation
    assert best_violation <= 1e-9, f"no KKT face found (best violation {best_violation:.2e})"
    return best


def upgrad(J: np.ndarray, pref: np.ndarray | None = None) -> np.ndarray:
    T = J.shape[0]
    u = np.full(T, 1.0 / T) if pref is None else np.asarray(pref, dtype=np.float64)
    return sum(dual_cone_projection(J, u[i] * np.eye(T)[i]) for i in range(T))


def dualproj(J: np.ndarray, pref: np.ndarray | None = None) -> np.ndarray:
    T = J.shape[0]
    u = np.full(T, 1.0 / T) if pref is None else np.asarray(pref, dtype=np.float64)
    return dual_cone_projection(J, u)


def pcgrad_two(J: np.ndarray) -> np.ndarray:
    """PCGrad (sum) for two tasks, closed form."""
    g1, g2 = J
    dot = g1 @ g2
    if dot < 0:
        return g1 + g2 - dot * (g1 / (g1 @ g1) + g2 / (g2 @ g2))
    return g1 + g2


def bargaining(J: np.ndarray, alpha: float = 1.0, ridge: float = 0.0) -> np.ndarray:
    """Weights w > 0 with ((G + ρ diag G) w)_i = w_i^{-1/α}; zero rows get weight 0.

    The equations are the stationarity condition of the strictly convex
    f(w) = ½ wᵀG_ρw − Σ h(w_i), h' = w^{-1/α}. A few sweeps of exact cyclic coordinate descent
    (each coordinate a 1-D monotone equation, solved by bisection on log w) give a start; then
    Boyd & Vandenberghe's damped Newton method (Alg. 9.5: backtracking 0.25/0.5, kept inside
    w > 0; pure Newton steps once the decrement is below 1e-12·T) in the original, unscaled
    coordinates, stopped when the decrement is below 1e-28·T or the iterate stops changing.
    """
    J = np.asarray(J, dtype=np.float64)
    G = J @ J.T
    G = G + ridge * np.diag(np.diag(G))
    T = G.shape[0]
    p = 1.0 / alpha
    diag = np.diag(G)
    live = diag > diag.max() * np.finfo(float).eps ** 2
    idx = np.flatnonzero(live)
    out = np.zeros(T)
    if idx.size == 0:
        return out
    Gl = G[np.ix_(idx, idx)]
    n = idx.size

    def f(w):
        h = np.log(w) if p == 1.0 else w ** (1.0 - p) / (1.0 - p)
        return 0.5 * w @ Gl @ w - h.sum()

    w = 1.0 / np.sqrt(np.diag(Gl))
    for _ in range(20):
        for i in range(n):
            b = Gl[i] @ w - Gl[i, i] * w[i]
            lo, hi = -200.0, 200.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                x = np.exp(mid)
                if Gl[i, i] * x + b - x ** (-p) > 0:
                    hi = mid
                else:
                    lo = mid
            w[i] = np.exp(0.5 * (lo + hi))
    for _ in range(200):
        grad = Gl @ w - w ** (-p)
        H = Gl + np.diag(p * w ** (-p - 1))
        step = -np.linalg.solve(H, grad)
        dec = -grad @ step
        if dec <= 1e-28 * n:
            break
        t = 1.0
        while np.any(w + t * step <= 0):
            t *= 0.5
        f0 = f(w)
        # (once the decrement is below f's rounding the full step is taken: pure Newton)
        while dec > 1e-12 * n and f(w + t * step) > f0 - 0.25 * t * dec and t > 1e-12:
            t *= 0.5
        w_new = w + t * step
        if np.array_equal(w_new, w):
            break
        w = w_new
    out[idx] = w
    return out


def config(J: np.ndarray, pref: np.ndarray | None = None, rcond: float = 1e-10) -> np.ndarray:
    """ConFIG update: (Σ_i g_iᵀ ĝ) ĝ, ĝ the unit vector of U⁺ w (zero rows -> zero unit vectors)."""
    J = np.asarray(J, dtype=np.float64)
    T = J.shape[0]
    w = np.ones(T) if pref is None else np.asarray(pref, dtype=np.float64)
    norms = np.linalg.norm(J, axis=1)
    live = norms > norms.max() * np.finfo(float).eps
    U = np.zeros_like(J)
    U[live] = J[live] / norms[live, None]
    gu = np.linalg.pinv(U, rcond=rcond) @ w
    n = np.linalg.norm(gu)
    if n <= 1e-10 * np.abs(w).sum() / max(np.linalg.norm(U, 2), 1e-300):
        return np.zeros(J.shape[1])
    unit = gu / n
    return (J @ unit).sum() * unit


def update_error(d: np.ndarray, d_ref: np.ndarray, J: np.ndarray, w: np.ndarray) -> float:
    """||d - d_ref|| relative to ||d_ref||, floored at the rounding level of the combination.

    ``d = Σ w_i g_i`` is computed from weights that may be large with cancelling terms, and the
    solvers accept a face once its KKT conditions hold to 1e4·ε of that weighted scale
    S = Σ|w_i|·||g_i||. The floor is 1e-5·S (and 1e-14·Σ||g_i||): at a 1e-6 tolerance, absolute
    errors up to 1e-11·S (≈ 5e4·ε·S) count as rounding. It matters only when ||d|| << S, i.e.
    when the exact update is (nearly) 0.
    """
    norms = np.linalg.norm(J, axis=1)
    floor = 1e-5 * (np.abs(w) @ norms) + 1e-14 * norms.sum()
    return float(np.linalg.norm(d - d_ref) / max(np.linalg.norm(d_ref), floor, 1e-300))


def hull_distance(J: np.ndarray) -> float:
    """min over the simplex of ||Σ n_i u_i|| for the unit non-zero rows u_i (0 ⇔ some non-negative
    combination of the gradients vanishes, where the bargaining equations have no solution)."""
    J = np.asarray(J, dtype=np.float64)
    norms = np.linalg.norm(J, axis=1)
    U = J[norms > norms.max() * np.finfo(float).eps] / norms[norms > norms.max() * np.finfo(float).eps, None]
    best = np.inf
    for k in range(1, U.shape[0] + 1):
        for S in itertools.combinations(range(U.shape[0]), k):
            A = U[list(S)]
            K = np.block([[A @ A.T, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
            sol, *_ = np.linalg.lstsq(K, np.r_[np.zeros(k), 1.0], rcond=1e-13)
            n = sol[:k]
            if np.all(n >= -1e-12):
                best = min(best, float(np.linalg.norm(A.T @ n)))
    return best


def same_update(d1: np.ndarray, d2: np.ndarray, J: np.ndarray, w: np.ndarray, rtol: float = 1e-10) -> bool:
    """``||d1 − d2|| ≤ rtol·||d2|| + 1e-13·Σ|w_i|·||g_i||`` (relative, plus the rounding of Σ w_i g_i)."""
    slack = 1e-13 * (np.abs(w) @ np.linalg.norm(J, axis=1))
    return bool(np.linalg.norm(d1 - d2) <= rtol * np.linalg.norm(d2) + slack)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run a test module with one intra-op thread, restoring the setting afterwards.

    The T×T problems are tiny; on a loaded machine every parallel region of a batched LAPACK call
    (e.g. the ``tril`` inside ``cholesky_ex``) can wait milliseconds for a second thread.
    Import it into a test module to use it: ``from reference_cone import single_thread``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def accelerator_mode(monkeypatch) -> None:
    """Make the solvers take their accelerator code path on the CPU, and make every host sync
    (``bool(tensor)``, ``.item()``, ``.tolist()``, ``.nonzero()``, ``.numpy()``) raise, so a test
    can check that the path is correct and never reads a value on the host."""
    import torch

    import mtgrad.solvers

    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation on the accelerator path")

    monkeypatch.setattr(mtgrad.solvers._common, "_host_sync_is_free", lambda t: False)
    for name in ("__bool__", "item", "tolist", "nonzero", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)


def examples(n: int) -> int:
    """``n`` Hypothesis examples under the default "dev" profile (50), scaled with the active one
    (HYPOTHESIS_PROFILE=ci halves it, thorough multiplies it by 10)."""
    from hypothesis import settings

    return max(5, round(n * settings.default.max_examples / 50))


def unique_weights(J: np.ndarray, rcond: float = 1e-6) -> bool:
    """The rows of J are linearly independent (with margin), so G is invertible and the
    dual-cone weights are unique, not just the update."""
    J = np.asarray(J, dtype=np.float64)
    if J.shape[0] > J.shape[1]:
        return False
    s = np.linalg.svd(J, compute_uv=False)
    return bool(s[-1] > rcond * s[0])
