"""FairGrad (Ban & Ji 2024): the α-fair condition (Gw)_i = w_i^{-1/α}, the reference, scaling."""

from __future__ import annotations

import numpy as np
import pytest
import reference_cone as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jacobians import ADVERSARIAL, jacobians, to_torch, checked_weights
from reference_cone import single_thread  # noqa: F401  (module fixture)

from mtgrad.methods.fairgrad import FairGrad
from mtgrad.methods.nashmtl import NashMTL

FAMILIES = tuple(sorted(set(ADVERSARIAL) | {"benign"}))
RIDGE = 1e-10
ALPHAS = st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0])


def weights(J: np.ndarray, method) -> np.ndarray:
    Jt = to_torch(J)
    return checked_weights(method, Jt @ Jt.T, nonnegative=True)


def well_posed(J: np.ndarray) -> bool:
    return bool(np.all(np.linalg.norm(J, axis=1) > 0)) and ref.hull_distance(J) > 1e-2


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6, min_d=6, max_d=40), ALPHAS)
def test_fairness_condition(case, alpha):
    _, J = case
    assume(well_posed(J))
    G = J @ J.T
    w = weights(J, FairGrad(alpha=alpha))
    Gr = G + RIDGE * np.diag(np.diag(G))
    rhs = w ** (-1.0 / alpha)
    # relative to the size of the terms of (Gw)_i, which may cancel
    assert np.all(np.abs(Gr @ w - rhs) <= 1e-10 * (np.abs(Gr) @ w + rhs))
    assert np.all(Gr @ w > -1e-10 * (np.abs(Gr) @ w))  # every task's loss decreases (= w_i^{-1/α} > 0)


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6), ALPHAS)
def test_matches_reference(case, alpha):
    _, J = case
    w = weights(J, FairGrad(alpha=alpha))
    w_ref = ref.bargaining(J, alpha, ridge=RIDGE)
    if well_posed(J):
        np.testing.assert_allclose(w, w_ref, rtol=1e-6)
        assert ref.update_error(w @ J, w_ref @ J, J, w) <= 1e-6
    else:  # no solution without the ridge: weights ~ρ^{-α/(1+α)}, determined to ~ε/ρ relative
        np.testing.assert_allclose(w, w_ref, rtol=1e-2, atol=1e-6 * np.abs(w_ref).max())
        assert np.all(np.isfinite(w @ J))


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6))
def test_alpha_one_is_nash_mtl(case):
    _, J = case
    np.testing.assert_allclose(weights(J, FairGrad(alpha=1.0)), weights(J, NashMTL()), rtol=1e-12, atol=0)


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6, min_d=6), ALPHAS, st.floats(1e-2, 1e2))
def test_global_scaling(case, alpha, s):
    # (s²G) w' = w'^{-1/α} with w' = s^{-2α/(1+α)} w, so the update scales by s^{(1-α)/(1+α)}.
    _, J = case
    assume(well_posed(J))
    w, w_s = weights(J, FairGrad(alpha=alpha)), weights(s * J, FairGrad(alpha=alpha))
    np.testing.assert_allclose(w_s, w * s ** (-2 * alpha / (1 + alpha)), rtol=1e-9)
    np.testing.assert_allclose(w_s @ (s * J), (w @ J) * s ** ((1 - alpha) / (1 + alpha)), rtol=1e-8, atol=1e-14)


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6), ALPHAS, st.randoms(use_true_random=False))
def test_permutation_invariance(case, alpha, random):
    _, J = case
    perm = list(range(J.shape[0]))
    random.shuffle(perm)
    w, w_perm = weights(J, FairGrad(alpha=alpha)), weights(J[perm], FairGrad(alpha=alpha))
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9 if well_posed(J) else 1e-2, atol=1e-300)


def test_scale_by_tasks_and_batching():
    J = torch.randn(4, 3, 8, dtype=torch.float64)
    G = J @ J.mT
    w = FairGrad(alpha=2.0).weights(G)
    torch.testing.assert_close(FairGrad(alpha=2.0, scale_by_tasks=True).weights(G), 3 * w, rtol=1e-15, atol=0)
    for i in range(4):
        torch.testing.assert_close(w[i], FairGrad(alpha=2.0).weights(G[i]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
@pytest.mark.parametrize("J", [
    np.array([[3.0, 4.0]]),
    np.zeros((2, 3)),
    np.array([[1.0, 2.0], [0.0, 0.0], [2.0, -1.0]]),
    np.array([[1.0, 2.0], [-2.0, -4.0]]),
    np.array([[1.0, 2.0, 3.0]] * 3),
], ids=["T=1", "all-zero", "zero-row", "opposite", "identical"])
def test_degenerate_inputs_are_finite(J, alpha):
    w = weights(J, FairGrad(alpha=alpha))
    assert np.all(w[np.linalg.norm(J, axis=1) == 0] == 0)
    if J.shape[0] == 1:  # w·‖g‖²(1 + ρ) = w^{-1/α}
        np.testing.assert_allclose(w[0], (25.0 * (1 + RIDGE)) ** (-alpha / (1 + alpha)), rtol=1e-14)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_accelerator_path_is_sync_free_and_identical(monkeypatch, alpha):
    J = torch.randn(5, 4, 7, dtype=torch.float64)
    G = J @ J.mT
    expected = FairGrad(alpha=alpha).weights(G)
    ref.accelerator_mode(monkeypatch)
    got = FairGrad(alpha=alpha).weights(G)
    monkeypatch.undo()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": float("inf")}, "alpha"),
    ({"ridge": -1.0}, "ridge"),
    ({"max_iter": 0}, "max_iter"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FairGrad(**kwargs)
