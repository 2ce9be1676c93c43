"""Independent float64 numpy references for IMTL-G, GradVac, Aligned-MTL, GradDrop, RLW and MGDA's
gradient normalisation.

Written from the papers' equations (and the official code where the paper leaves a choice; see
/work/shared/reference/algorithms.md §3), NOT from the mtgrad implementation: they work on the
task-gradient vectors themselves, literally and sequentially, where the library works on the
Gramian, batched. numpy only (and mpmath for ``imtlg_highprec``): no torch import here.

* ``imtlg``        -- IMTL-G's closed form (Liu et al. 2021): alpha_{2:T} = g_1 U^T (D U^T)^{-1}.
* ``imtlg_unit``   -- the same update by another route: the minimum-norm d with u_i . d = 1 for
                      all i (lstsq on the unit gradients), rescaled so that the weights sum to 1.
* ``imtlg_highprec`` -- the closed form in 40-digit arithmetic (mpmath), an arbiter.
* ``gradvac``      -- Algorithm 1 of Wang et al. (2021), literal loops, explicit orders/targets.
* ``aligned_mtl``  -- Algorithm 1 of Senushkin et al. (2023) through the SVD of J (J = U S V^T:
                      the aligned gradients are sqrt(lambda_s) U_k V_k^T), not the Gramian's eigh.
* ``graddrop``     -- Algorithm 1 of Chen et al. (2020) on given uniforms, coordinate by coordinate.
* ``rlw``          -- softmax of given normal draws (Lin et al. 2022).
* ``mgda_normalized`` -- Sener & Koltun's gradient_normalizers + the exact min-norm point of
                      ``reference.mgda`` (enumeration), then the two ways of applying the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import reference as ref

__all__ = ["imtlg", "imtlg_unit", "imtlg_highprec", "gradvac", "aligned_mtl", "graddrop", "rlw", "mgda_normalized"]


def _as_jacobian(J) -> np.ndarray:
    J = np.array(J, dtype=np.float64)
    if J.ndim != 2 or J.shape[0] == 0:
        raise ValueError(f"J must be a non-empty (T, d) matrix, got shape {J.shape}")
    return J


# --------------------------------------------------------------------------------------------
# IMTL-G
# --------------------------------------------------------------------------------------------


def imtlg(J) -> tuple[np.ndarray, np.ndarray]:
    """The paper's closed form. D = [g_1 - g_i]_{i>=2}, U = [u_1 - u_i]_{i>=2}:
    alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum(alpha_{2:T}). Returns (update, alpha).
    Needs nonzero rows and an invertible D U^T."""
    J = _as_jacobian(J)
    T = J.shape[0]
    norms = np.linalg.norm(J, axis=1)
    if np.any(norms == 0):
        raise ValueError("the closed form needs nonzero gradients")
    if T == 1:
        return J[0].copy(), np.ones(1)
    units = J / norms[:, None]
    D = J[0] - J[1:]
    U = units[0] - units[1:]
    # alpha_{2:T} (D U^T) = g_1 U^T  <=>  (D U^T)^T alpha_{2:T}^T = (g_1 U^T)^T
    tail = np.linalg.solve((D @ U.T).T, U @ J[0])
    alpha = np.concatenate([[1.0 - tail.sum()], tail])
    return alpha @ J, alpha


def imtlg_unit(J) -> tuple[np.ndarray, np.ndarray]:
    """IMTL-G by the unit gradients: d0 = argmin ||d|| s.t. u_i . d = 1 (lstsq), which has equal
    projections onto every u_i; then alpha with J^T alpha = d0 (lstsq), rescaled to sum 1.
    Equal to the closed form whenever the rows are linearly independent."""
    J = _as_jacobian(J)
    units = J / np.linalg.norm(J, axis=1)[:, None]
    d0, *_ = np.linalg.lstsq(units, np.ones(J.shape[0]), rcond=None)
    alpha, *_ = np.linalg.lstsq(J.T, d0, rcond=None)
    alpha = alpha / alpha.sum()
    return alpha @ J, alpha


# --------------------------------------------------------------------------------------------
# GradVac
# --------------------------------------------------------------------------------------------


def gradvac(
    J,
    orders: Sequence[Sequence[int]],
    targets: np.ndarray | None = None,
    beta: float = 0.5,
    target_update: str = "always",
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 of GradVac, literally, for one step. Returns (update, new targets).

    For each task i: g <- g_i; for j in orders[i]: phi = cos(g, g_j) (0 when a norm is 0);
    if phi < target_ij (and the target is not +-1): g += |g| (t sqrt(1-phi^2) - phi sqrt(1-t^2))
    / (|g_j| sqrt(1-t^2)) g_j; then target_ij <- (1-beta) target_ij + beta phi ("always"), or only
    when the correction was made ("below_target", LibMTL). Corrections are along the ORIGINAL g_j.
    """
    J = _as_jacobian(J)
    T = J.shape[0]
    phi_hat = np.zeros((T, T)) if targets is None else np.array(targets, dtype=np.float64)
    new = phi_hat.copy()
    total = np.zeros(J.shape[1])
    for i in range(T):
        order = list(orders[i])
        if sorted(order) != [j for j in range(T) if j != i]:
            raise ValueError(f"orders[{i}]={order} is not a permutation of the other tasks")
        g = J[i].copy()
        for j in order:
            gj = J[j]
            ni, nj = np.linalg.norm(g), np.linalg.norm(gj)
            phi = float(np.clip(g @ gj / (ni * nj), -1.0, 1.0)) if ni > 0 and nj > 0 else 0.0
            t = phi_hat[i, j]
            below = phi < t
            if below and nj > 0 and 1.0 - t * t > 0:
                rt = np.sqrt(1.0 - t * t)
                g = g + ni * (t * np.sqrt(max(1.0 - phi * phi, 0.0)) - phi * rt) / (nj * rt) * gj
            if target_update == "always" or below:
                new[i, j] = (1.0 - beta) * t + beta * phi
        total += g
    return total, new


# --------------------------------------------------------------------------------------------
# Aligned-MTL
# --------------------------------------------------------------------------------------------


def aligned_mtl(J, scale_mode: str = "min", pref=None, rtol: float = float(np.finfo(np.float32).eps)):
    """Aligned-MTL via the SVD J = U S V^T. Kept: s_k^2 > s_max^2 * T * rtol. The aligned task
    gradients are A = sqrt(lambda_s) U_k V_k^T (orthogonal rows of norm sqrt(lambda_s) on the kept
    subspace) = B J with B = sqrt(lambda_s) U_k S_k^{-1} U_k^T; the update is A^T w = J^T (B w).
    lambda_s: min / lower median / mean of the kept s_k^2. Returns (update, alpha, A)."""
    J = _as_jacobian(J)
    T = J.shape[0]
    w = np.ones(T) if pref is None else np.asarray(pref, dtype=np.float64)
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    lam = s**2
    if lam.size == 0 or lam.max() <= 0:
        return np.zeros(J.shape[1]), np.zeros(T), np.zeros_like(J)
    k = lam > lam.max() * T * rtol
    kept = np.sort(lam[k])
    if scale_mode == "min":
        scale = kept[0]
    elif scale_mode == "median":
        scale = kept[(len(kept) - 1) // 2]  # lower median, as torch.median
    elif scale_mode == "rmse":
        scale = kept.mean()
    else:
        raise ValueError(scale_mode)
    Uk, sk, Vk = U[:, k], s[k], Vt[k]
    A = np.sqrt(scale) * Uk @ Vk  # aligned task gradients, (T, d)
    B = np.sqrt(scale) * (Uk / sk) @ Uk.T
    alpha = B @ w
    return A.T @ w, alpha, A


# --------------------------------------------------------------------------------------------
# GradDrop
# --------------------------------------------------------------------------------------------


def graddrop(J, uniforms, leak=0.0) -> np.ndarray:
    """Algorithm 1 of GradDrop on the columns of J with the given U ~ Unif(0,1) per column:
    P = (1 + sum g / sum |g|)/2 (1/2 where all are 0), M_i = [P > U][g_i > 0] + [P < U][g_i < 0],
    update = sum_i (l_i + (1 - l_i) M_i) g_i."""
    J = _as_jacobian(J)
    T, d = J.shape
    leak = np.broadcast_to(np.asarray(leak, dtype=np.float64), (T,))
    out = np.zeros(d)
    for c in range(d):
        col = J[:, c]
        mass = np.abs(col).sum()
        P = 0.5 * (1.0 + col.sum() / mass) if mass > 0 else 0.5
        u = uniforms[c]
        for i in range(T):
            m = float((P > u and col[i] > 0) or (P < u and col[i] < 0))
            out[c] += (leak[i] + (1.0 - leak[i]) * m) * col[i]
    return out


# --------------------------------------------------------------------------------------------
# RLW
# --------------------------------------------------------------------------------------------


def rlw(eps) -> np.ndarray:
    """softmax(eps) along the last axis."""
    e = np.asarray(eps, dtype=np.float64)
    z = np.exp(e - e.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# MGDA with Sener & Koltun's gradient normalisation
# --------------------------------------------------------------------------------------------


def mgda_normalized(J, losses=None, normalization: str = "none", apply_to: str = "original"):
    """gradient_normalizers (l2: |g_i|; loss: L_i; loss+: L_i |g_i|; none: 1; a scale that is not
    positive and finite is taken as 1), the exact min-norm point of the normalised rows, then
    update = sum w_i g_i ("original", Sener & Koltun's scaled back-propagation, nash-mtl) or
    sum w_i g_i / s_i ("normalized", LibMTL). Returns (update, weights on the original rows)."""
    J = _as_jacobian(J)
    norms = np.linalg.norm(J, axis=1)
    if normalization == "none":
        s = np.ones(len(J))
    elif normalization == "l2":
        s = norms
    elif normalization == "loss":
        s = np.asarray(losses, dtype=np.float64)
    elif normalization == "loss+":
        s = np.asarray(losses, dtype=np.float64) * norms
    else:
        raise ValueError(normalization)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    _, w = ref.mgda(J / s[:, None])
    weights = w / s if apply_to == "normalized" else w
    return weights @ J, weights


def imtlg_highprec(J, digits: int = 40) -> np.ndarray:
    """The closed form of ``imtlg`` evaluated in ``digits``-digit arithmetic (mpmath, installed
    with torch through sympy), rounded to float64 at the end: an arbiter for both the library and
    the float64 references, whose own rounding error reaches ~1e-10 when the norms span 1e6."""
    import mpmath as mp

    J = _as_jacobian(J)
    T, d = J.shape
    with mp.workdps(digits):
        rows = [[mp.mpf(float(x)) for x in J[i]] for i in range(T)]
        norms = [mp.sqrt(mp.fsum(x * x for x in r)) for r in rows]
        if T == 1:
            return J[0].copy()
        units = [[x / norms[i] for x in rows[i]] for i in range(T)]
        D = mp.matrix([[rows[0][k] - rows[i][k] for k in range(d)] for i in range(1, T)])
        U = mp.matrix([[units[0][k] - units[i][k] for k in range(d)] for i in range(1, T)])
        g1 = mp.matrix([rows[0]])
        tail = g1 * U.T * mp.inverse(D * U.T)
        alpha = [1 - mp.fsum(tail[0, i] for i in range(T - 1))] + [tail[0, i] for i in range(T - 1)]
        return np.array([float(mp.fsum(alpha[i] * rows[i][k] for i in range(T))) for k in range(d)])
