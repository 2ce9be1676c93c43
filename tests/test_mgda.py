"""mtgrad.MGDA: the exact min-norm element of conv{g_i} (Sener & Koltun 2018; CAGrad paper eq. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference as ref
from jacobians import ADVERSARIAL, family_samples, jacobians, make_jacobian, to_torch


def run(J: np.ndarray) -> np.ndarray:
    out = mtgrad.aggregate(to_torch(J), mtgrad.MGDA())
    assert out.dtype == torch.float64 and out.shape == (J.shape[1],)
    return out.numpy()


def weights(J: np.ndarray) -> np.ndarray:
    Jt = to_torch(J)
    w = mtgrad.MGDA().weights(Jt @ Jt.T)
    assert w.dtype == torch.float64 and w.shape == (J.shape[0],)
    return w.numpy()


def vec_tol(J, expected, rtol=1e-6, atol_rel=1e-9):
    """rtol relative to ||ref||, with an absolute floor atol_rel * max row norm (for ||ref|| ~ 0)."""
    return rtol * np.linalg.norm(expected) + atol_rel * np.linalg.norm(J, axis=1).max()


# --------------------------------------------------------------------------------------------


@given(jacobians())
def test_matches_exact_min_norm_point(case):
    _, J = case
    x_ref, _ = ref.mgda(J)
    got = run(J)
    err = np.linalg.norm(got - x_ref)
    assert err <= vec_tol(J, x_ref), f"|err|={err:.3e} |ref|={np.linalg.norm(x_ref):.3e}"


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_matches_exact_min_norm_point_deterministic_sweep(kind):
    for _, J in family_samples((kind,), n_per_family=10, seed=2):
        x_ref, _ = ref.mgda(J)
        assert np.linalg.norm(run(J) - x_ref) <= vec_tol(J, x_ref)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6])
def test_identical_rows(T):
    g = np.array([1.0, 2.0, -0.5])
    np.testing.assert_allclose(run(np.tile(g, (T, 1))), g, rtol=1e-12)


@given(jacobians())
def test_kkt_conditions(case):
    """w on the simplex, d = w^T J, <g_i, d> >= ||d||^2 for all i, with equality where w_i > 0."""
    _, J = case
    w = weights(J)
    d = w @ J
    norms = np.linalg.norm(J, axis=1)
    gmax = norms.max()
    assert np.all(w >= 0), w
    assert abs(w.sum() - 1) <= 1e-12
    np.testing.assert_allclose(run(J), d, rtol=1e-12, atol=1e-14 * gmax)
    slack = J @ d - d @ d
    tol_i = 1e-9 * gmax * (norms + np.linalg.norm(d))
    assert np.all(slack >= -tol_i), slack / (gmax * (norms + 1e-300))
    support = w > 1e-6
    assert np.all(np.abs(slack[support]) <= tol_i[support]), slack[support] / (gmax * norms[support])


@given(jacobians(max_T=2))
def test_two_task_closed_form(case):
    _, J = case
    g1, g2 = J
    diff = g1 - g2
    gamma = 0.5 if diff @ diff == 0 else np.clip(((g2 - g1) @ g2) / (diff @ diff), 0.0, 1.0)
    expected = gamma * g1 + (1 - gamma) * g2
    got = run(J)
    assert np.linalg.norm(got - expected) <= vec_tol(J, expected)


def test_two_task_explicit_numbers():
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(run(J), [0.5, 0.5], atol=1e-15)
    np.testing.assert_allclose(weights(J), [0.5, 0.5], atol=1e-15)
    J = np.array([[1.0, 0.0], [3.0, 0.0]])  # colinear, same direction: the shorter one
    np.testing.assert_allclose(run(J), [1.0, 0.0], atol=1e-15)
    J = np.array([[1.0, 2.0], [-1.0, -2.0]])  # opposite: 0
    np.testing.assert_allclose(run(J), [0.0, 0.0], atol=1e-15)


@given(jacobians(), st.randoms(use_true_random=False))
def test_permutation_invariance(case, rnd):
    _, J = case
    T = J.shape[0]
    perm = list(range(T))
    rnd.shuffle(perm)
    a = run(J)
    b = run(J[perm])
    x_ref, _ = ref.mgda(J)
    assert np.linalg.norm(a - b) <= 2 * vec_tol(J, x_ref)


@given(jacobians(families=("gaussian", "lognorm", "conflict"), max_T=4, min_d=6), st.randoms(use_true_random=False))
def test_permutation_permutes_weights(case, rnd):
    """With affinely independent rows (T <= d, generic) the weights are unique."""
    _, J = case
    T = J.shape[0]
    perm = list(range(T))
    rnd.shuffle(perm)
    np.testing.assert_allclose(weights(J[perm]), weights(J)[perm], rtol=1e-6, atol=1e-9)


@given(jacobians(), st.sampled_from([1e-3, 7.0, 1e3]))
def test_positive_homogeneity(case, alpha):
    _, J = case
    x_ref, _ = ref.mgda(J)
    a = run(J)
    b = run(alpha * J)
    assert np.linalg.norm(b - alpha * a) <= 2 * alpha * vec_tol(J, x_ref)


def test_duplicate_rows_do_not_change_the_vector():
    J = make_jacobian("conflict", 3, 5, 2)
    J2 = np.concatenate([J, J[:1], J[:1]])
    x_ref, _ = ref.mgda(J)
    np.testing.assert_allclose(run(J2), x_ref, rtol=1e-6, atol=1e-12)


def test_single_task():
    J = np.array([[3.0, -1.0, 2.0]])
    np.testing.assert_allclose(run(J), J[0], rtol=1e-15)
    np.testing.assert_allclose(weights(J), [1.0])


@pytest.mark.parametrize("T", [1, 3])
def test_zero_jacobian(T):
    J = np.zeros((T, 4))
    got = run(J)
    assert np.array_equal(got, np.zeros(4))
    w = weights(J)
    assert np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-12


def test_batched_gramians_match_one_at_a_time():
    Js = [make_jacobian(kind, 5, 8, s) for s, kind in enumerate(ADVERSARIAL)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    W = mtgrad.MGDA().weights(G)
    assert W.shape == (len(Js), 5)
    for b, J in enumerate(Js):
        x_ref, _ = ref.mgda(J)
        assert np.linalg.norm(W[b].numpy() @ J - x_ref) <= vec_tol(J, x_ref)
        wb = mtgrad.MGDA().weights(G[b])
        assert np.linalg.norm((W[b] - wb).numpy() @ J) <= vec_tol(J, x_ref)
    W2 = mtgrad.MGDA().weights(G.reshape(len(Js), 1, 5, 5))
    assert W2.shape == (len(Js), 1, 5)


def test_a_negative_diagonal_entry_is_named():
    G = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"negative diagonal entry \(G\[1, 1\] = -1\)"):
        mtgrad.MGDA().weights(G)
    batched = torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    batched[2, 0, 0] = -2.0
    with pytest.raises(ValueError, match=r"negative diagonal entry \(G\[2, 0, 0\] = -2\)"):
        mtgrad.MGDA().weights(batched)
