"""Self-tests of the float64 numpy reference (tests/reference.py). No mtgrad import here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from jacobians import ADVERSARIAL, jacobians, make_jacobian

# --------------------------------------------------------------------------------------------
# PCGrad
# --------------------------------------------------------------------------------------------


def pcgrad_two_task_closed_form(J):
    g1, g2 = J
    dot = g1 @ g2
    if dot < 0:
        return g1 + g2 - dot * (g1 / (g1 @ g1) + g2 / (g2 @ g2))
    return g1 + g2


@given(jacobians(families=("gaussian", "lognorm", "conflict", "opposite"), min_T=2, max_T=2))
def test_pcgrad_two_task_closed_form(case):
    _, J = case
    expected = pcgrad_two_task_closed_form(J)
    got = ref.pcgrad(J, ref.fixed_orders(2))
    scale = np.abs(J).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * scale)


def test_pcgrad_two_task_explicit_numbers():
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    # g1.g2 = -1: g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    np.testing.assert_allclose(ref.pcgrad(J, ref.fixed_orders(2)), [0.5, 1.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ref.pcgrad(J, ref.fixed_orders(2), reduction="mean"), [0.25, 0.75], atol=1e-15)


@given(jacobians(families=("benign",)), st.booleans())
def test_pcgrad_no_conflict_is_sum(case, include_self):
    _, J = case
    J = np.abs(J)  # nonnegative entries => all pairwise dots >= 0
    got = ref.pcgrad(J, ref.fixed_orders(J.shape[0], include_self), include_self=include_self)
    np.testing.assert_allclose(got, J.sum(0), rtol=1e-13, atol=0)


def test_pcgrad_order_matters_for_three_tasks():
    J = make_jacobian("conflict", 3, 5, seed=3)
    results = {tuple(np.round(ref.pcgrad(J, o), 9)) for o in ref.all_order_combinations(3)}
    assert len(results) > 1


def test_pcgrad_zero_row_is_skipped():
    J = np.array([[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]])
    out = ref.pcgrad(J, ref.fixed_orders(3))
    assert np.all(np.isfinite(out))


def test_pcgrad_rejects_bad_orders():
    J = np.eye(3)
    with pytest.raises(ValueError):
        ref.pcgrad(J, [[0, 1, 2], [0, 2], [0, 1]])  # self visited without include_self


# --------------------------------------------------------------------------------------------
# MGDA
# --------------------------------------------------------------------------------------------


@given(jacobians(min_T=2, max_T=2))
def test_mgda_two_task_closed_form(case):
    _, J = case
    g1, g2 = J
    diff = g1 - g2
    if diff @ diff == 0:
        return
    gamma = np.clip(((g2 - g1) @ g2) / (diff @ diff), 0.0, 1.0)
    expected = gamma * g1 + (1 - gamma) * g2
    x, w = ref.mgda(J)
    scale = np.linalg.norm(J, axis=1).max()
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-10 * scale)


@given(jacobians())
def test_mgda_kkt_certificate(case):
    """x is the min-norm point of conv(rows) iff x in conv and <g_i, x> >= ||x||^2 for all i."""
    _, J = case
    x, w = ref.mgda(J)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    scale2 = np.linalg.norm(J, axis=1).max() ** 2
    np.testing.assert_allclose(w @ J, x, rtol=0, atol=1e-9 * np.sqrt(scale2))
    assert np.all(J @ x >= x @ x - 1e-9 * scale2)


def test_mgda_opposite_rows_give_zero():
    J = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0], [5.0, 0.0, 1.0]])
    x, _ = ref.mgda(J)
    np.testing.assert_allclose(x, 0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------


def test_cagrad_torchjd_docs_example():
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    d, v = ref.cagrad(J, 0.5)
    np.testing.assert_allclose(d, [0.1835, 1.2041, 1.2041], atol=1e-4)
    assert v == pytest.approx(ref.cagrad_dual_value_2task(J, 0.5), rel=1e-9)


@given(jacobians())
def test_cagrad_c_zero_is_mean(case):
    _, J = case
    d, _ = ref.cagrad(J, 0.0)
    np.testing.assert_allclose(d, J.mean(0), rtol=0, atol=1e-14 * np.abs(J).max())


def _mgda_norm_ratio(J):
    x, _ = ref.mgda(J)
    return np.linalg.norm(x) / np.linalg.norm(J, axis=1).max()


@given(jacobians(), st.sampled_from([0.1, 0.4, 0.5, 0.9, 2.0]))
def test_cagrad_constraint_active_and_feasible(case, c):
    _, J = case
    g0 = J.mean(0)
    rho = c * np.linalg.norm(g0)
    d, v = ref.cagrad(J, c)
    assert np.linalg.norm(d - g0) <= rho * (1 + 1e-9) + 1e-12 * np.abs(J).max()
    assert v == pytest.approx(ref.cagrad_value(J, d))
    if _mgda_norm_ratio(J) > 1e-6 and rho > 0:
        # 0 not in conv{g_i}: the optimum is unique and lies on the sphere
        assert np.linalg.norm(d - g0) == pytest.approx(rho, rel=1e-9)


@given(jacobians(), st.sampled_from([0.1, 0.5, 0.9, 2.0]), st.integers(0, 2**32 - 1))
def test_cagrad_weak_duality_and_random_feasible_points(case, c, seed):
    """opt >= value of any feasible point, and opt <= F(w) for every w on the simplex."""
    _, J = case
    T, dim = J.shape
    rng = np.random.default_rng(seed)
    g0 = J.mean(0)
    rho = c * np.linalg.norm(g0)
    d, v = ref.cagrad(J, c)
    tol = 1e-9 * np.linalg.norm(J, axis=1).max() * (np.linalg.norm(g0) * (1 + c) + 1e-300)
    # random feasible points (sphere and interior, plus perturbations of d*)
    u = rng.standard_normal((400, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    radii = rho * rng.uniform(0, 1, size=(400, 1)) ** (1.0 / dim)
    pts = np.concatenate([g0 + rho * u[:200], g0 + radii[200:] * u[200:]])
    near = d + 1e-3 * rho * u
    near = g0 + (near - g0) * np.minimum(1.0, rho / np.maximum(np.linalg.norm(near - g0, axis=1, keepdims=True), 1e-300))
    for p in np.concatenate([pts, near]):
        assert ref.cagrad_value(J, p) <= v + tol
    # weak duality: F(w) = g_w . g0 + rho ||g_w|| >= opt on the simplex
    W = rng.dirichlet(np.ones(T), size=300)
    W = np.concatenate([W, np.eye(T)])
    GW = W @ J
    F = GW @ g0 + rho * np.linalg.norm(GW, axis=1)
    assert np.all(F >= v - tol)


@given(jacobians(min_T=2, max_T=2), st.sampled_from([0.1, 0.4, 0.5, 0.9, 2.0]))
def test_cagrad_two_task_strong_duality(case, c):
    _, J = case
    d, v = ref.cagrad(J, c)
    dual = ref.cagrad_dual_value_2task(J, c)
    scale = np.linalg.norm(J, axis=1).max() * np.linalg.norm(J.mean(0)) * (1 + c)
    assert abs(v - dual) <= 1e-8 * scale + 1e-300


def test_cagrad_two_task_vector_from_dual():
    """d* = g0 + rho g_w / ||g_w|| with w the (brute-force) dual minimiser (Alg. 1 / Lemma A.2)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        J = make_jacobian("conflict", 2, 7, int(rng.integers(1 << 30)))
        c = 0.5
        g0 = J.mean(0)
        rho = c * np.linalg.norm(g0)
        xs = np.linspace(0, 1, 200001)
        GX = xs[:, None] * J[0] + (1 - xs[:, None]) * J[1]
        F = GX @ g0 + rho * np.linalg.norm(GX, axis=1)
        gw = GX[np.argmin(F)]
        expected = g0 + rho * gw / np.linalg.norm(gw)
        d, _ = ref.cagrad(J, c)
        np.testing.assert_allclose(d, expected, rtol=0, atol=1e-4 * np.linalg.norm(d))


def test_cagrad_large_c_approaches_mgda():
    for seed in range(10):
        J = make_jacobian("conflict", 4, 8, seed)
        x, _ = ref.mgda(J)
        d, _ = ref.cagrad(J, 1e3)
        cos = d @ x / (np.linalg.norm(d) * np.linalg.norm(x))
        assert cos >= 0.9999


def test_cagrad_pareto_stationary_value_is_zero():
    # 0 in conv: optimal value 0 (optimum not unique in general)
    J = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    d, v = ref.cagrad(J, 0.5)
    assert v == pytest.approx(0.0, abs=1e-15)
    assert np.linalg.norm(d - J.mean(0)) <= 0.5 * np.linalg.norm(J.mean(0)) + 1e-15


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_reference_handles_every_family(kind):
    J = make_jacobian(kind, 6, 5, 7)
    x, w = ref.mgda(J)
    d, v = ref.cagrad(J, 0.4)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(d)) and np.isfinite(v)


def _dual_certificate(J, c, d, v):
    """min over candidate simplex weights of F(w) = g_w . g0 + rho ||g_w|| (an upper bound on the
    primal optimum by weak duality). Candidates: MGDA weights, and for every subset S of the
    active set, the least-squares solution of  sum_S w_i g_i = t (d - g0),  sum_S w_i = 1
    (the KKT stationarity condition of Alg. 1 / Lemma A.2), clipped onto the simplex."""
    T, _ = J.shape
    g0 = J.mean(0)
    rho = c * np.linalg.norm(g0)
    gmax = np.linalg.norm(J, axis=1).max()
    u = d - g0
    active = [i for i in range(T) if J[i] @ d <= v + 1e-9 * gmax * (np.linalg.norm(d) + 1e-300)]
    cands = [ref.mgda(J)[1]]
    for size in range(1, len(active) + 1):
        for S in __import__("itertools").combinations(active, size):
            S = list(S)
            A = np.zeros((J.shape[1] + 1, size + 1))
            A[:-1, :size] = J[S].T
            A[:-1, size] = -u
            A[-1, :size] = gmax  # sum(w) = 1, scaled like the other rows
            b = np.zeros(J.shape[1] + 1)
            b[-1] = gmax
            sol, *_ = np.linalg.lstsq(A, b, rcond=None)
            w = np.zeros(T)
            w[S] = np.clip(sol[:size], 0, None)
            if w.sum() > 0:
                cands.append(w / w.sum())
    F = [float((w @ J) @ g0 + rho * np.linalg.norm(w @ J)) for w in cands]
    return min(F)


@given(jacobians(), st.sampled_from([0.1, 0.4, 0.9, 2.0]))
def test_cagrad_strong_duality_certificate(case, c):
    """A dual-feasible w with F(w) = primal value proves the reference's d* optimal (any T)."""
    _, J = case
    d, v = ref.cagrad(J, c)
    g0 = J.mean(0)
    scale = np.linalg.norm(J, axis=1).max() * np.linalg.norm(g0) * (1 + c)
    best_dual = _dual_certificate(J, c, d, v)
    assert best_dual >= v - 1e-9 * scale  # weak duality
    assert best_dual - v <= 1e-8 * scale + 1e-300, (best_dual - v) / scale
