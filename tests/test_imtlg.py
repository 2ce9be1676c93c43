"""IMTLG against the closed form of Liu et al. (2021) (tests/reference_baselines.py) and its defining
property: equal projections of the update onto every unit task gradient, with Σα = 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference_baselines as rb
from jacobians import ADVERSARIAL, family_samples, jacobians, make_jacobian, to_torch, checked_weights
from mtgrad.methods.imtlg import IMTLG


def weights(J: np.ndarray) -> np.ndarray:
    # The Gramian is formed in numpy: torch's tiny matmuls are slow on a loaded 2-core machine.
    return checked_weights(IMTLG(), torch.as_tensor(J @ J.T))


def update(J: np.ndarray) -> np.ndarray:
    return weights(J) @ J


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


FULL_RANK = ("gaussian", "lognorm", "conflict", "benign")


# --------------------------------------------------------------------------------------------


@given(jacobians(families=FULL_RANK, max_T=6, min_d=6))
def test_matches_closed_form(case):
    """The closed form has its own rounding error (~1e-10 when norms span 1e6, see the
    high-precision test below), so the tolerance is the reference's, not ours."""
    _, J = case
    expected, alpha = rb.imtlg(J)
    assert rel(update(J), expected) < 1e-8
    np.testing.assert_allclose(weights(J), alpha, rtol=1e-7, atol=1e-8 * np.abs(alpha).max())


@given(jacobians(families=FULL_RANK, max_T=6, min_d=6))
def test_matches_unit_gradient_route(case):
    _, J = case
    expected, _ = rb.imtlg_unit(J)
    assert rel(update(J), expected) < 1e-8


@pytest.mark.parametrize("family", ["gaussian", "lognorm", "conflict"])
def test_exact_against_high_precision(family):
    """40-digit arithmetic as the arbiter: the library is at rounding level where the float64
    closed form is not (lognorm: norms over [1e-3, 1e3])."""
    pytest.importorskip("mpmath")
    worst = 0.0
    for _, J in family_samples((family,), n_per_family=12, min_T=2, max_T=5, max_d=12, seed=7):
        if J.shape[0] > J.shape[1]:
            continue
        worst = max(worst, rel(update(J), rb.imtlg_highprec(J)))
    assert worst < 1e-13, worst


@given(jacobians(families=ADVERSARIAL, max_T=6))
def test_equal_projections_and_unit_sum(case):
    """The defining property on every family (zero rows excluded: they have no direction)."""
    _, J = case
    w = weights(J)
    d = w @ J
    norms = np.linalg.norm(J, axis=1)
    live = norms > 0
    scale = (np.abs(w) * norms).sum()
    if scale == 0:  # zero weights: no update with Σα = 1 exists (or all rows are zero)
        return
    assert abs(w.sum() - 1) < 1e-12 * np.abs(w).sum()
    proj = J[live] @ d / norms[live]
    assert np.ptp(proj) <= 1e-10 * scale, (proj, scale)
    assert np.all(w[~live] == 0)


def test_two_tasks_explicit():
    # g1 = (1, 0), g2 = (0, 2): u1 = e1, u2 = e2; equal projections d = (a, a), Σα = 1 → α = (2/3, 1/3).
    J = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(weights(J), [2 / 3, 1 / 3], rtol=1e-15)
    np.testing.assert_allclose(update(J), [2 / 3, 2 / 3], rtol=1e-15)


def test_negative_common_projection_is_the_closed_form():
    """Σα = 1 does not imply α ≥ 0; here the common projection is negative (documented)."""
    J = np.array([[-10.0, 0.0, 20.0], [3.0, -3.0, 3.0], [0.0, -1.0, 1.0]])
    _, alpha = rb.imtlg(J)
    np.testing.assert_allclose(weights(J), alpha, rtol=1e-12)
    d = update(J)
    proj = J @ d / np.linalg.norm(J, axis=1)
    assert np.all(proj < -2.5) and np.ptp(proj) < 1e-12


# -- degenerate inputs -------------------------------------------------------------------------


def test_single_task():
    np.testing.assert_array_equal(weights(np.array([[3.0, -4.0]])), [1.0])
    np.testing.assert_array_equal(weights(np.zeros((1, 3))), [0.0])


def test_all_zero():
    np.testing.assert_array_equal(weights(np.zeros((3, 4))), np.zeros(3))


@given(jacobians(families=("gaussian", "lognorm", "conflict"), min_T=2, max_T=5, min_d=6), st.integers(0, 100))
def test_zero_row_is_ignored(case, pos):
    _, J = case
    k = pos % (J.shape[0] + 1)
    Z = np.insert(J, k, 0.0, axis=0)
    w, wz = weights(J), weights(Z)
    assert wz[k] == 0
    np.testing.assert_allclose(np.delete(wz, k), w, rtol=1e-9, atol=1e-12 * np.abs(w).max())


@pytest.mark.parametrize("k", [1.0, 0.3, 7.0])
def test_opposite_gives_zero_update(k):
    g = make_jacobian("gaussian", 1, 5, 3)[0]
    J = np.stack([g, -k * g])
    d = update(J)
    assert np.linalg.norm(d) <= 1e-15 * np.linalg.norm(J)


def test_near_opposite_is_stable():
    """g2 = −1.3 g1 + εp: the closed form is well-conditioned there, G (and torchjd's G⁺) is not."""
    rng = np.random.default_rng(0)
    g, p = rng.standard_normal(6), rng.standard_normal(6)
    for eps in [1e-2, 1e-5, 1e-8, 1e-11]:
        J = np.stack([g, -1.3 * g + eps * p])
        _, alpha = rb.imtlg(J)
        np.testing.assert_allclose(weights(J), alpha, rtol=1e-9)


@pytest.mark.parametrize("k", [2.0, 0.25, 1.0])
def test_positively_colinear_two_tasks_harmonic_mean(k):
    """g2 = k g1: the equations are underdetermined; the minimum-norm split gives the harmonic
    mean of the norms along the common direction (the limit of the closed form as a
    perpendicular perturbation of either gradient vanishes; the float64 closed form itself loses
    accuracy as ε → 0, so the convergence is checked at ε = 1e-3 and 1e-5)."""
    g = np.array([1.0, 2.0, -2.0])
    J = np.stack([g, k * g])
    n1, n2 = 3.0, 3.0 * k
    np.testing.assert_allclose(update(J), 2 * n1 * n2 / (n1 + n2) * g / 3.0, rtol=1e-12)
    side = np.cross(g, [0.0, 0.0, 1.0])  # ⟂ g
    for which in (0, 1):
        errs = []
        for eps in (1e-3, 1e-5):
            perturbed = J.copy()
            perturbed[which] += eps * side
            errs.append(rel(update(J), rb.imtlg(perturbed)[0]))
        assert errs[1] < 1e-3 and errs[1] < errs[0] / 10, errs


@given(jacobians(families=("gaussian", "rankdef"), min_T=3, max_T=6, max_d=4))
def test_more_tasks_than_rank_gives_zero_update(case):
    """T > rank(J) in general position: only d = 0 has equal projections (up to ~√ε rounding)."""
    _, J = case
    rank = np.linalg.matrix_rank(J)
    if rank >= J.shape[0] or rank < 2:  # rank 1: all colinear, a different degenerate case
        return
    w = weights(J)
    assert np.linalg.norm(w @ J) <= 1e-6 * (np.abs(w) * np.linalg.norm(J, axis=1)).sum() + 1e-300


# -- invariances -------------------------------------------------------------------------------


@given(jacobians(families=FULL_RANK, max_T=6, min_d=6), st.lists(st.floats(-3, 3), min_size=6, max_size=6))
def test_line_invariant_to_per_task_scaling(case, logs):
    """Scaling g_i by s_i > 0 keeps the line of d (equal projections depend on the u_i only); its
    length changes, and so can its orientation, through the sign of Σ_i β_i/‖g_i‖."""
    _, J = case
    s = 10.0 ** np.array(logs[: J.shape[0]])
    d, ds = update(J), update(s[:, None] * J)
    cos = d @ ds / (np.linalg.norm(d) * np.linalg.norm(ds))
    assert abs(cos) > 1 - 1e-10


@given(jacobians(families=ADVERSARIAL, max_T=6), st.sampled_from([1e-3, 0.5, 7.0, 1e3]))
def test_weights_invariant_to_global_scale(case, c):
    _, J = case
    w, wc = weights(J), weights(c * J)
    np.testing.assert_allclose(wc, w, rtol=1e-9, atol=1e-9 * max(np.abs(w).max(), 1e-300))


@given(jacobians(families=ADVERSARIAL, max_T=6), st.randoms(use_true_random=False))
def test_permutation_equivariance(case, rnd):
    _, J = case
    perm = list(range(J.shape[0]))
    rnd.shuffle(perm)
    w, wp = weights(J), weights(J[perm])
    np.testing.assert_allclose(wp, w[perm], rtol=1e-9, atol=1e-9 * max(np.abs(w).max(), 1e-300))


def test_batched_equals_single():
    Js = [make_jacobian(kind, 4, 6, s) for s, kind in enumerate(["gaussian", "zero_row", "opposite", "lognorm"])]
    G = torch.stack([torch.as_tensor(J @ J.T) for J in Js])
    W = IMTLG().weights(G.reshape(2, 2, 4, 4)).reshape(4, 4)
    for b in range(4):
        torch.testing.assert_close(W[b], IMTLG().weights(G[b]), rtol=1e-12, atol=1e-14)


def test_float32_gramian_gives_float32_weights():
    J = make_jacobian("gaussian", 3, 5, 0)
    w = IMTLG().weights(torch.as_tensor(J @ J.T, dtype=torch.float32))
    assert w.dtype == torch.float32 and torch.isfinite(w).all()


def test_through_aggregate():
    J = make_jacobian("conflict", 4, 9, 1)
    np.testing.assert_allclose(mtgrad.aggregate(to_torch(J), IMTLG()).numpy(), update(J), rtol=1e-12)


def test_repr_and_state():
    assert repr(IMTLG()) == "IMTLG()"
    assert IMTLG().state_dict() == {}
