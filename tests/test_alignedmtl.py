"""AlignedMTL against Algorithm 1 of Senushkin et al. (2023) computed through the SVD of J
(tests/reference_baselines.py), and its defining property: the aligned task system is orthogonal
with equal norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference_baselines as rb
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch, checked_weights
from mtgrad.methods.alignedmtl import AlignedMTL

MODES = ("min", "median", "rmse")
F32_EPS = float(np.finfo(np.float32).eps)


def weights(J: np.ndarray, **kwargs) -> np.ndarray:
    return checked_weights(AlignedMTL(**kwargs), torch.as_tensor(J @ J.T))  # Gramian formed in numpy (fast)


def well_separated(J: np.ndarray, rtol: float = F32_EPS) -> bool:
    """No eigenvalue of J Jᵀ within a factor 10 of the rank cut-off (both routes then keep the
    same eigenpairs)."""
    lam = np.linalg.svd(J, compute_uv=False) ** 2
    if lam.size == 0 or lam.max() == 0:
        return True
    ratio = lam / (lam.max() * J.shape[0] * rtol)
    return bool(np.all((ratio > 10) | (ratio < 0.1)))


def aligned_system(J: np.ndarray, **kwargs) -> np.ndarray:
    """The aligned task gradients ĝ_t = Jᵀ B e_t, read off the weights with pref = e_t."""
    T = J.shape[0]
    return np.stack([weights(J, pref=np.eye(T)[t], **kwargs) @ J for t in range(T)])


# --------------------------------------------------------------------------------------------


@given(jacobians(families=ADVERSARIAL, max_T=6), st.sampled_from(MODES))
def test_matches_svd_reference(case, mode):
    _, J = case
    if not well_separated(J):
        return
    expected, _, _ = rb.aligned_mtl(J, scale_mode=mode)
    got = weights(J, scale_mode=mode) @ J
    scale = np.linalg.norm(J, axis=1).max()
    assert np.linalg.norm(got - expected) <= 1e-9 * np.linalg.norm(expected) + 1e-12 * scale


@given(jacobians(families=("gaussian", "conflict", "benign"), max_T=6, min_d=6), st.sampled_from(MODES))
def test_weights_match_svd_reference_full_rank(case, mode):
    _, J = case
    if not well_separated(J):
        return
    _, alpha, _ = rb.aligned_mtl(J, scale_mode=mode)
    np.testing.assert_allclose(weights(J, scale_mode=mode), alpha, rtol=1e-8, atol=1e-10 * np.abs(alpha).max())


@given(jacobians(families=("gaussian", "conflict", "benign", "lognorm"), max_T=5, min_d=5), st.sampled_from(MODES))
def test_aligned_system_is_orthogonal_with_equal_norms(case, mode):
    """Full rank (and every eigenvalue kept, rtol = 0): ĜĜᵀ = λ_s I."""
    _, J = case
    if np.linalg.matrix_rank(J) < J.shape[0]:
        return
    A = aligned_system(J, scale_mode=mode, rtol=0.0)
    M = A @ A.T
    lam = np.linalg.eigvalsh(J @ J.T)
    scale = {"min": lam.min(), "median": np.sort(lam)[(len(lam) - 1) // 2], "rmse": lam.mean()}[mode]
    cond = lam.max() / lam.min()
    np.testing.assert_allclose(M, scale * np.eye(J.shape[0]), atol=1e-12 * cond * scale)


@given(jacobians(families=("rankdef", "colinear", "zero_row", "gaussian"), max_T=6, max_d=8))
def test_rank_deficient_system_is_a_scaled_projector(case):
    """Dropped eigen-directions get weight 0: ĜĜᵀ = λ_s P, P the projector on the kept span."""
    _, J = case
    if not well_separated(J):
        return
    A = aligned_system(J)
    _, _, A_ref = rb.aligned_mtl(J)
    M, M_ref = A @ A.T, A_ref @ A_ref.T
    np.testing.assert_allclose(M, M_ref, atol=1e-9 * max(np.abs(M_ref).max(), 1e-300))
    if np.abs(M_ref).max() > 0:
        scale = np.trace(M_ref) / np.linalg.matrix_rank(M_ref)
        P = M_ref / scale
        np.testing.assert_allclose(P @ P, P, atol=1e-9)


def test_median_is_lower_median_and_rmse_is_mean():
    J = np.diag([1.0, 2.0, 3.0, 4.0])  # eigenvalues 1, 4, 9, 16
    for mode, scale in [("min", 1.0), ("median", 4.0), ("rmse", 7.5)]:
        # B = √λ_s diag(1/σ), α = B·1.
        np.testing.assert_allclose(weights(J, scale_mode=mode), np.sqrt(scale) / np.array([1, 2, 3, 4]), rtol=1e-14)


def test_pref():
    J = make_jacobian("gaussian", 3, 7, 0)
    w1 = weights(J)
    np.testing.assert_allclose(weights(J, pref=[1 / 3] * 3), w1 / 3, rtol=1e-13)  # torchjd's 1/T
    pref = np.array([0.5, 2.0, 1.0])
    _, alpha, _ = rb.aligned_mtl(J, pref=pref)
    np.testing.assert_allclose(weights(J, pref=pref), alpha, rtol=1e-10)
    np.testing.assert_allclose(weights(J, pref=torch.tensor(pref)), alpha, rtol=1e-10)


def test_official_tolerance_drops_float32_noise():
    """Rank tolerance λ_max·T·ε_float32 (official code): a direction 1e-9 below the top one in
    eigenvalue is noise there and dropped; rtol=0 keeps (and over-amplifies) it."""
    J = np.array([[1.0, 0.0], [1.0, 3e-5]])  # λ_min/λ_max ≈ 2e-10
    A = aligned_system(J)
    assert np.linalg.matrix_rank(A @ A.T, tol=1e-6) == 1
    A0 = aligned_system(J, rtol=0.0)
    np.testing.assert_allclose(A0 @ A0.T, np.eye(2) * np.linalg.eigvalsh(J @ J.T).min(), atol=1e-15)


# -- degenerate inputs, invariances -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_degenerate_inputs_are_finite(mode):
    assert np.array_equal(weights(np.zeros((3, 4)), scale_mode=mode), np.zeros(3))
    np.testing.assert_allclose(weights(np.array([[3.0, 4.0]]), scale_mode=mode), [1.0], rtol=1e-15)
    for kind in ("zero_row", "opposite", "colinear", "rankdef"):
        weights(make_jacobian(kind, 5, 3, 0), scale_mode=mode)


@given(jacobians(families=ADVERSARIAL, max_T=6), st.sampled_from([1e-3, 0.5, 7.0, 1e3]), st.sampled_from(MODES))
def test_weights_invariant_to_global_scale(case, c, mode):
    _, J = case
    if not well_separated(J):
        return
    w, wc = weights(J, scale_mode=mode), weights(c * J, scale_mode=mode)
    np.testing.assert_allclose(wc, w, rtol=1e-8, atol=1e-9 * max(np.abs(w).max(), 1e-300))


@given(jacobians(families=ADVERSARIAL, max_T=6), st.randoms(use_true_random=False), st.sampled_from(MODES))
def test_permutation_equivariance(case, rnd, mode):
    _, J = case
    if not well_separated(J):
        return
    perm = list(range(J.shape[0]))
    rnd.shuffle(perm)
    w, wp = weights(J, scale_mode=mode), weights(J[perm], scale_mode=mode)
    np.testing.assert_allclose(wp, w[perm], rtol=1e-8, atol=1e-9 * max(np.abs(w).max(), 1e-300))


def test_batched_equals_single():
    Js = [make_jacobian(kind, 4, 6, s) for s, kind in enumerate(["gaussian", "zero_row", "rankdef", "lognorm"])]
    G = torch.stack([torch.as_tensor(J @ J.T) for J in Js])
    for mode in MODES:
        W = AlignedMTL(scale_mode=mode).weights(G.reshape(2, 2, 4, 4)).reshape(4, 4)
        for b in range(4):
            torch.testing.assert_close(W[b], AlignedMTL(scale_mode=mode).weights(G[b]), rtol=1e-12, atol=1e-14)


def test_through_aggregate():
    J = make_jacobian("conflict", 4, 9, 1)
    np.testing.assert_allclose(mtgrad.aggregate(to_torch(J), AlignedMTL()).numpy(), weights(J) @ J, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(scale_mode="max"), "scale_mode"),
        (dict(pref=[[1.0, 2.0]]), "pref"),
        (dict(pref=[]), "pref"),
        (dict(pref=[1.0, float("nan")]), "pref"),
        (dict(rtol=-1e-3), "rtol"),
        (dict(rtol=2.0), "rtol"),
    ],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AlignedMTL(**kwargs)


def test_pref_length_mismatch():
    with pytest.raises(ValueError, match="pref"):
        AlignedMTL(pref=[1.0, 1.0]).weights(torch.eye(3, dtype=torch.float64))


def test_repr():
    assert repr(AlignedMTL()) == "AlignedMTL(scale_mode='min')"
    assert "pref=[1.0, 2.0]" in repr(AlignedMTL(pref=[1, 2]))
