"""mtgrad.CAGrad against the exact primal solution of Liu et al. (2021), eq. 3 (tests/reference.py).

Note on uniqueness: the primal optimum d* is unique whenever 0 is not in conv{g_i}; when the
gradients are Pareto-stationary (0 in conv, e.g. two exactly opposite rows) the optimal value is 0
and the optimal set is {d : ||d - g0|| <= rho, J d >= 0}, which can be a whole region. The vector
comparison is therefore only made when the MGDA min-norm point is not tiny; the optimal value and
feasibility are checked always.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import mtgrad
import reference as ref
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch

CS = [0.1, 0.4, 0.5, 0.9, 2.0]


def run(J: np.ndarray, method) -> np.ndarray:
    out = mtgrad.aggregate(to_torch(J), method)
    assert out.dtype == torch.float64 and out.shape == (J.shape[1],)
    return out.numpy()


def mgda_ratio(J) -> float:
    x, _ = ref.mgda(J)
    return float(np.linalg.norm(x) / max(np.linalg.norm(J, axis=1).max(), 1e-300))


def check_against_reference(J, c, d, rtol=1e-6):
    """Feasibility, optimal value and (where unique and well conditioned) the vector."""
    g0 = J.mean(0)
    rho = c * np.linalg.norm(g0)
    gmax = np.linalg.norm(J, axis=1).max()
    d_ref, v_ref = ref.cagrad(J, c)
    assert np.all(np.isfinite(d))
    # primal feasibility
    assert np.linalg.norm(d - g0) <= rho * (1 + rtol) + 1e-12 * gmax
    # optimal value min_i <g_i, d>
    v = ref.cagrad_value(J, d)
    v_scale = gmax * np.linalg.norm(g0) * (1 + c)
    assert abs(v - v_ref) <= rtol * v_scale + 1e-300, f"value {v!r} vs {v_ref!r} (scale {v_scale:.2e})"
    if mgda_ratio(J) > 1e-3:
        err = np.linalg.norm(d - d_ref)
        assert err <= rtol * np.linalg.norm(d_ref) + 1e-12 * gmax, f"|d-d*|/|d*| = {err / np.linalg.norm(d_ref):.3e}"
        if rho > 0:
            assert np.linalg.norm(d - g0) == pytest.approx(rho, rel=rtol)


# --------------------------------------------------------------------------------------------


def test_torchjd_docs_example():
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.5)), [0.1835, 1.2041, 1.2041], atol=1e-4)


def test_default_c_is_0_4():
    J = make_jacobian("conflict", 3, 6, 0)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad()), run(J, mtgrad.CAGrad(c=0.4)), rtol=0, atol=0)


@given(jacobians(), st.sampled_from(CS))
def test_matches_exact_primal(case, c):
    _, J = case
    check_against_reference(J, c, run(J, mtgrad.CAGrad(c=c)))


@given(jacobians(families=("gaussian", "conflict", "benign"), max_T=4, max_d=10), st.sampled_from(CS))
def test_matches_two_task_dual_value(case, c):
    _, J = case
    J = J[:2]
    d = run(J, mtgrad.CAGrad(c=c))
    v = ref.cagrad_value(J, d)
    dual = ref.cagrad_dual_value_2task(J, c)
    scale = np.linalg.norm(J, axis=1).max() * np.linalg.norm(J.mean(0)) * (1 + c)
    assert abs(v - dual) <= 1e-7 * scale + 1e-300


@given(jacobians(), st.sampled_from(CS))
def test_constraint_active_when_not_pareto_stationary(case, c):
    _, J = case
    assume(mgda_ratio(J) > 1e-3)
    g0 = J.mean(0)
    d = run(J, mtgrad.CAGrad(c=c))
    assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)


@given(jacobians(families=ADVERSARIAL + ("benign",)))
def test_c_zero_is_mean(case):
    _, J = case
    Jt = to_torch(J)
    got = mtgrad.aggregate(Jt, mtgrad.CAGrad(c=0.0))
    torch.testing.assert_close(got, Jt.mean(0), rtol=0, atol=1e-14 * float(Jt.abs().max()))


@given(jacobians(families=("gaussian", "conflict", "benign", "lognorm")))
def test_large_c_gives_mgda_direction(case):
    _, J = case
    assume(mgda_ratio(J) > 0.05)
    x, _ = ref.mgda(J)
    d = run(J, mtgrad.CAGrad(c=1e3))
    cos = d @ x / (np.linalg.norm(d) * np.linalg.norm(x))
    assert cos >= 0.9999


@given(jacobians(families=ADVERSARIAL + ("benign",)), st.sampled_from(CS))
def test_rescale_and_scale_by_tasks(case, c):
    _, J = case
    T = J.shape[0]
    base = run(J, mtgrad.CAGrad(c=c, rescale=0))
    atol = 1e-13 * (np.abs(base).max() + np.abs(J).max())
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, rescale=1)), base / (1 + c**2), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, rescale=2)), base / (1 + c), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, scale_by_tasks=True)), T * base, rtol=1e-12, atol=T * atol)
    np.testing.assert_allclose(
        run(J, mtgrad.CAGrad(c=c, rescale=1, scale_by_tasks=True)), T * base / (1 + c**2), rtol=1e-12, atol=T * atol
    )


def test_default_rescale_is_paper_algorithm_1():
    J = make_jacobian("conflict", 3, 6, 1)
    d_ref, _ = ref.cagrad(J, 0.4)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.4)), d_ref, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_mtrl_solver_close_to_exact_on_benign_case(seed):
    J = make_jacobian("benign", 3, 10, seed)
    exact = run(J, mtgrad.CAGrad(c=0.5, solver="exact"))
    mtrl = run(J, mtgrad.CAGrad(c=0.5, solver="mtrl"))
    assert np.all(np.isfinite(mtrl))
    cos = exact @ mtrl / (np.linalg.norm(exact) * np.linalg.norm(mtrl))
    assert cos > 0.99


@given(jacobians(families=ADVERSARIAL), st.sampled_from(CS))
def test_mtrl_solver_finite_and_feasible_direction(case, c):
    _, J = case
    d = run(J, mtgrad.CAGrad(c=c, solver="mtrl"))
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_zero_jacobian_gives_zeros(solver, rescale, T):
    J = torch.zeros(T, 7, dtype=torch.float64)
    out = mtgrad.aggregate(J, mtgrad.CAGrad(c=0.4, rescale=rescale, solver=solver))
    assert torch.equal(out, torch.zeros(7, dtype=torch.float64))
    w = mtgrad.CAGrad(c=0.4, rescale=rescale, solver=solver).weights(J @ J.T)
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
def test_opposite_pair_has_zero_mean_and_zero_update(solver):
    """g0 = 0 => rho = 0 => d* = g0 = 0 (no 0/0 from ||g_w|| = 0)."""
    g = np.array([1.0, -2.0, 0.5])
    J = np.stack([g, -g])
    d = run(J, mtgrad.CAGrad(c=0.4, solver=solver))
    np.testing.assert_allclose(d, 0.0, atol=1e-12)


def test_single_task_is_identity():
    J = np.array([[3.0, -1.0, 2.0]])
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.4)), J[0] * (1 + 0.4), rtol=1e-12)


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
def test_batched_gramians_match_one_at_a_time(solver):
    Js = [make_jacobian(kind, 4, 6, s) for s, kind in enumerate(ADVERSARIAL)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    method = mtgrad.CAGrad(c=0.5, solver=solver)
    W = method.weights(G)
    assert W.shape == (len(Js), 4)
    for b in range(len(Js)):
        torch.testing.assert_close(W[b], method.weights(G[b]), rtol=1e-9, atol=1e-12)
    W2 = method.weights(G.reshape(len(Js), 1, 4, 4))  # several batch dims
    torch.testing.assert_close(W2.reshape(len(Js), 4), W, rtol=1e-9, atol=1e-12)


@given(jacobians(), st.sampled_from(CS), st.sampled_from([1e-3, 7.0, 1e3]))
def test_weights_invariant_to_gramian_scale(case, c, alpha):
    _, J = case
    assume(mgda_ratio(J) > 1e-3)
    G = to_torch(J) @ to_torch(J).T
    method = mtgrad.CAGrad(c=c)
    a = method.weights(G).numpy() @ J
    b = method.weights(alpha**2 * G).numpy() @ J
    assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a) + 1e-12 * np.linalg.norm(J, axis=1).max()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(c=-0.1), r"\bc\b"),
        (dict(c=float("nan")), r"\bc\b"),
        (dict(rescale=3), "rescale"),
        (dict(solver="cvxpy"), "solver"),
    ],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mtgrad.CAGrad(**kwargs)
