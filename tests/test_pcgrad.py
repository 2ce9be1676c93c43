"""mtgrad.PCGrad against Algorithm 1 of Yu et al. (2020) as implemented in tests/reference.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference as ref
from jacobians import ADVERSARIAL, family_samples, jacobians, make_jacobian, to_torch


def run(J: np.ndarray, method) -> np.ndarray:
    out = mtgrad.aggregate(to_torch(J), method)
    assert out.dtype == torch.float64 and out.shape == (J.shape[1],)
    return out.numpy()


def tol(J: np.ndarray, expected: np.ndarray, rtol: float = 1e-9) -> float:
    """rtol relative to the result, with an absolute floor relative to the input scale."""
    return rtol * np.linalg.norm(expected) + 1e-12 * np.linalg.norm(J, axis=1).sum()


def assert_close(got, expected, J, rtol=1e-9):
    err = np.linalg.norm(got - expected)
    assert err <= tol(J, expected, rtol), f"|err|={err:.3e}, |ref|={np.linalg.norm(expected):.3e}"


def closed_form_two_tasks(J):
    g1, g2 = J
    dot = g1 @ g2
    if dot < 0:
        return g1 + g2 - dot * (g1 / (g1 @ g1) + g2 / (g2 @ g2))
    return g1 + g2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------


@given(jacobians(families=("gaussian", "lognorm", "conflict", "opposite", "colinear"), max_T=2), st.integers(0, 1000))
def test_two_tasks_closed_form_any_order(case, seed):
    _, J = case
    expected = closed_form_two_tasks(J)
    assert_close(run(J, mtgrad.PCGrad(order="fixed")), expected, J)
    assert_close(run(J, mtgrad.PCGrad(order="random", generator=seeded(seed))), expected, J)
    assert_close(run(J, mtgrad.PCGrad()), expected, J)  # defaults: random order, global RNG


def test_two_tasks_explicit_numbers():
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(run(J, mtgrad.PCGrad(order="fixed")), [0.5, 1.5], atol=1e-15)
    np.testing.assert_allclose(run(J, mtgrad.PCGrad(order="fixed", reduction="mean")), [0.25, 0.75], atol=1e-15)


@given(jacobians(families=("benign", "gaussian")), st.integers(0, 1000))
def test_no_conflict_is_plain_sum(case, seed):
    _, J = case
    J = np.abs(J)  # nonnegative entries: every pairwise dot product is >= 0
    for method in (
        mtgrad.PCGrad(order="fixed"),
        mtgrad.PCGrad(order="random", generator=seeded(seed)),
        mtgrad.PCGrad(order="fixed", include_self=True),
    ):
        np.testing.assert_allclose(run(J, method), J.sum(0), rtol=1e-12, atol=0)


@given(jacobians())
def test_fixed_order_matches_algorithm_1(case):
    _, J = case
    expected = ref.pcgrad(J, ref.fixed_orders(J.shape[0]))
    got = run(J, mtgrad.PCGrad(order="fixed"))
    assert np.all(np.isfinite(got))
    assert_close(got, expected, J)


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_fixed_order_matches_algorithm_1_deterministic_sweep(kind):
    for _, J in family_samples((kind,), n_per_family=10, seed=3):
        assert_close(run(J, mtgrad.PCGrad(order="fixed")), ref.pcgrad(J, ref.fixed_orders(J.shape[0])), J)


@given(jacobians())
def test_fixed_order_include_self_matches_reference(case):
    _, J = case
    expected = ref.pcgrad(J, ref.fixed_orders(J.shape[0], include_self=True), include_self=True)
    got = run(J, mtgrad.PCGrad(order="fixed", include_self=True))
    assert_close(got, expected, J)


def test_include_self_changes_result_on_a_known_case():
    """Visiting j = i matters once g_i^PC . g_i < 0 after earlier projections (doc: ~3% of cases)."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        J = make_jacobian("conflict", 4, 3, int(rng.integers(1 << 31)))
        a = ref.pcgrad(J, ref.fixed_orders(4))
        b = ref.pcgrad(J, ref.fixed_orders(4, True), include_self=True)
        if np.linalg.norm(a - b) > 1e-3 * np.linalg.norm(a):
            break
    else:
        pytest.skip("no distinguishing case found")
    assert_close(run(J, mtgrad.PCGrad(order="fixed")), a, J)
    assert_close(run(J, mtgrad.PCGrad(order="fixed", include_self=True)), b, J)


@given(jacobians(), st.sampled_from(["fixed", "random"]), st.integers(0, 1000))
def test_mean_is_sum_over_T(case, order, seed):
    _, J = case
    T = J.shape[0]
    s = run(J, mtgrad.PCGrad(order=order, reduction="sum", generator=seeded(seed)))
    m = run(J, mtgrad.PCGrad(order=order, reduction="mean", generator=seeded(seed)))
    np.testing.assert_allclose(m, s / T, rtol=1e-12, atol=1e-15 * np.abs(J).max())


@given(jacobians(), st.integers(0, 2**31 - 1))
def test_random_order_reproducible_with_seeded_generator(case, seed):
    _, J = case
    a = run(J, mtgrad.PCGrad(order="random", generator=seeded(seed)))
    b = run(J, mtgrad.PCGrad(order="random", generator=seeded(seed)))
    assert np.array_equal(a, b)


def test_random_order_reproducible_with_global_seed():
    J = make_jacobian("conflict", 5, 7, 11)
    torch.manual_seed(123)
    a = run(J, mtgrad.PCGrad(order="random"))
    torch.manual_seed(123)
    b = run(J, mtgrad.PCGrad(order="random"))
    assert np.array_equal(a, b)


def _combo_results(J):
    return [(combo, ref.pcgrad(J, combo)) for combo in ref.all_order_combinations(J.shape[0])]


def _matching_combos(got, combos, J):
    return [combo for combo, r in combos if np.linalg.norm(got - r) <= tol(J, r)]


@given(jacobians(min_T=3, max_T=3), st.integers(0, 2**31 - 1))
def test_random_order_is_some_valid_permutation_T3(case, seed):
    _, J = case
    combos = _combo_results(J)
    got = run(J, mtgrad.PCGrad(order="random", generator=seeded(seed)))
    assert _matching_combos(got, combos, J), "result matches no combination of per-task orders"


def _distinguishing_T3_jacobian():
    rng = np.random.default_rng(5)
    for _ in range(500):
        J = make_jacobian("conflict", 3, 4, int(rng.integers(1 << 31)))
        res = [r for _, r in _combo_results(J)]
        gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(res, 2)]
        if min(gaps) > 1e-3 * max(np.linalg.norm(r) for r in res):
            return J
    raise AssertionError("no T=3 matrix with 8 distinct PCGrad results found")


def test_random_orders_are_independent_per_task():
    """Alg. 1 draws a fresh random order of B \\ T_i for every i: all 2^3 = 8 combinations of
    per-task orders must occur (each has probability 1/8; 300 seeded draws)."""
    J = _distinguishing_T3_jacobian()
    combos = _combo_results(J)
    seen = set()
    for seed in range(300):
        got = run(J, mtgrad.PCGrad(order="random", generator=seeded(seed)))
        match = _matching_combos(got, combos, J)
        assert len(match) == 1, f"seed {seed}: result matches {len(match)} combinations"
        seen.add(match[0])
    assert len(seen) == 8, f"only {len(seen)} of the 8 order combinations ever occurred"


def test_random_order_varies_between_calls_of_one_instance():
    J = _distinguishing_T3_jacobian()
    method = mtgrad.PCGrad(order="random", generator=seeded(0))
    outs = {tuple(np.round(run(J, method), 8)) for _ in range(30)}
    assert len(outs) > 1


@given(jacobians(), st.sampled_from([1e-3, 0.5, 7.0, 1e3]))
def test_positive_homogeneity(case, alpha):
    _, J = case
    a = run(J, mtgrad.PCGrad(order="fixed"))
    b = run(alpha * J, mtgrad.PCGrad(order="fixed"))
    assert np.linalg.norm(b - alpha * a) <= alpha * tol(J, a)


def test_zero_row_and_all_zero_jacobian_are_finite():
    J = np.array([[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]])
    got = run(J, mtgrad.PCGrad(order="fixed"))
    np.testing.assert_allclose(got, ref.pcgrad(J, ref.fixed_orders(3)), rtol=1e-12)
    Z = np.zeros((3, 4))
    assert np.array_equal(run(Z, mtgrad.PCGrad()), np.zeros(4))


@pytest.mark.parametrize("order", ["fixed", "random"])
def test_weights_shape_and_batching(order):
    Js = [make_jacobian("conflict", 4, 6, s) for s in range(3)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    method = mtgrad.PCGrad(order="fixed") if order == "fixed" else mtgrad.PCGrad(order="random", generator=seeded(0))
    W = method.weights(G)
    assert W.shape == (3, 4) and W.dtype == torch.float64
    if order == "fixed":
        for b in range(3):
            torch.testing.assert_close(W[b], method.weights(G[b]), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(W[b].numpy() @ Js[b], ref.pcgrad(Js[b], ref.fixed_orders(4)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(reduction="avg"), "reduction"),
        (dict(order="sorted"), "order"),
    ],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mtgrad.PCGrad(**kwargs)
