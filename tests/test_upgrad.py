"""UPGrad (Quinton & Rey 2024) against tests/reference_cone.py and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import reference_cone as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch, checked_weights
from reference_cone import single_thread  # noqa: F401  (module fixture)

from mtgrad.methods.pcgrad import PCGrad
from mtgrad.methods.upgrad import UPGrad
from mtgrad.solvers import dual_cone_qp

FAMILIES = tuple(sorted(set(ADVERSARIAL) | {"benign"}))


def weights(J: np.ndarray, method) -> np.ndarray:
    Jt = to_torch(J)
    return checked_weights(method, Jt @ Jt.T)


def assert_no_conflict(J: np.ndarray, w: np.ndarray) -> None:
    d = w @ J
    norms = np.linalg.norm(J, axis=1)
    slack = 1e-9 * norms * (np.abs(w) @ norms)
    assert np.all(J @ d >= -slack), f"conflict: min g_i·d = {(J @ d).min():.3e}"


@settings(max_examples=ref.examples(30))
@given(jacobians(families=FAMILIES, max_T=5), st.sampled_from(["mean", "sum"]))
def test_matches_reference(case, pref):
    _, J = case
    T = J.shape[0]
    u = np.full(T, 1.0 / T) if pref == "mean" else np.ones(T)
    w = weights(J, UPGrad(pref=None if pref == "mean" else [1.0] * T))
    assert ref.update_error(w @ J, ref.upgrad(J, u), J, w) <= 1e-6
    assert_no_conflict(J, w)


@settings(max_examples=ref.examples(20))
@given(jacobians(families=("gaussian", "lognorm", "conflict", "opposite", "colinear", "zero_row"), max_T=2))
def test_two_tasks_with_unit_preference_is_pcgrad(case):
    _, J = case
    w = weights(J, UPGrad(pref=[1.0, 1.0]))
    w_pc = weights(J, PCGrad(order="fixed"))
    expected = ref.pcgrad_two(J) if np.all(np.linalg.norm(J, axis=1) > 0) else w_pc @ J
    assert ref.same_update(w @ J, w_pc @ J, J, w)
    assert ref.same_update(w @ J, expected, J, w)


def test_torchjd_example():
    # torchjd's docstring example; exact: (−0.2632, 0.7895, 0.7895) + (0.5556, 1.1111, 1.1111).
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    exact = [5 / 9 - 5 / 19, 15 / 19 + 10 / 9, 15 / 19 + 10 / 9]
    np.testing.assert_allclose(weights(J, UPGrad()) @ J, exact, rtol=1e-13)
    # With torchjd's default safeguards (norm_eps = reg_eps = 1e-4) its documented output.
    parity = weights(J, UPGrad(norm_eps=1e-4, reg_eps=1e-4)) @ J
    np.testing.assert_allclose(parity, [0.2929, 1.9004, 1.9004], atol=1e-4)


@settings(max_examples=ref.examples(20))
@given(jacobians(families=("gaussian", "lognorm"), max_T=5), st.floats(1e-6, 1e-2))
def test_regularised_matches_reference_on_augmented_jacobian(case, reg):
    # G/tr(G) + reg·I is the Gramian of [J/√tr, √reg·I]; its weights are unique.
    _, J = case
    T = J.shape[0]
    aug = np.hstack([J / np.sqrt(np.trace(J @ J.T)), np.sqrt(reg) * np.eye(T)])
    w = weights(J, UPGrad(norm_eps=1e-12, reg_eps=reg))
    w_ref = np.linalg.lstsq(aug.T, ref.upgrad(aug), rcond=None)[0]
    np.testing.assert_allclose(w, w_ref, rtol=1e-8, atol=1e-10 * np.abs(w_ref).max())


@settings(max_examples=ref.examples(20))
@given(jacobians(families=("benign", "gaussian"), max_T=6))
def test_no_conflict_returns_the_preference(case):
    _, J = case
    J = np.abs(J)  # all pairwise products ≥ 0
    np.testing.assert_array_equal(weights(J, UPGrad()), np.full(J.shape[0], 1.0 / J.shape[0]))


@settings(max_examples=ref.examples(20))
@given(jacobians(families=FAMILIES, max_T=5), st.randoms(use_true_random=False))
def test_permutation_invariance(case, random):
    _, J = case
    perm = list(range(J.shape[0]))
    random.shuffle(perm)
    w = weights(J, UPGrad())
    w_perm = weights(J[perm], UPGrad())
    if ref.unique_weights(J):  # otherwise only the update is unique
        np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9, atol=1e-12 * np.abs(w).max())
    assert ref.same_update(w_perm @ J[perm], w @ J, J, w)


@settings(max_examples=ref.examples(20))
@given(jacobians(families=FAMILIES, max_T=5), st.floats(1e-3, 1e3))
def test_scaling_all_gradients_scales_the_update(case, s):
    _, J = case
    w = weights(J, UPGrad())
    w_s = weights(s * J, UPGrad())
    if ref.unique_weights(J):  # weights invariant, so the update is × s
        np.testing.assert_allclose(w_s, w, rtol=1e-9, atol=1e-12 * np.abs(w).max())
    assert ref.same_update(w_s @ J, w @ J, J, w)


@pytest.mark.parametrize("J", [
    np.array([[3.0, 4.0]]),
    np.zeros((3, 4)),
    np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]),
    np.array([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]]),
    np.array([[1.0, 2.0, 3.0]] * 4),
], ids=["T=1", "all-zero", "zero-and-opposite", "colinear", "identical"])
def test_degenerate_inputs(J):
    w = weights(J, UPGrad())
    assert_no_conflict(J, w)
    assert ref.same_update(w @ J, ref.upgrad(J), J, w)


def test_batched_gramians_match_single_calls():
    Js = [make_jacobian(kind, 4, 7, seed) for seed, kind in enumerate(FAMILIES)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    batched = UPGrad().weights(G)
    for i, J in enumerate(Js):
        torch.testing.assert_close(batched[i], torch.as_tensor(weights(J, UPGrad())), rtol=1e-12, atol=1e-12)


def test_float32_gramian_gives_float32_weights():
    J = torch.randn(3, 10)
    assert UPGrad().weights(J @ J.T).dtype == torch.float32


def test_solver_lower_bounds_hold_and_kkt():
    g = torch.Generator().manual_seed(0)
    J = torch.randn(5, 3, generator=g, dtype=torch.float64)  # T > d: singular Gramian
    G = J @ J.T
    lower = torch.rand(8, 5, generator=g, dtype=torch.float64)
    v = dual_cone_qp(G, lower)
    assert v.shape == (8, 5) and bool((v >= lower).all())
    y = v @ G  # multipliers: ≥ 0, zero where the bound is not active
    scale = (v.abs() * G.diagonal().sqrt()).sum(-1, keepdim=True) * G.diagonal().sqrt()
    assert bool((y >= -1e-10 * scale).all())
    assert bool((((v - lower) * y).abs() <= 1e-10 * scale * v.abs().sum(-1, keepdim=True)).all())


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6), st.sampled_from([0, 1, 2]))
def test_active_set_fallback_matches_reference(case, pivot_rounds):
    # pivot_rounds=0: the primal active-set method alone; 1, 2: a switch after block pivoting.
    _, J = case
    T = J.shape[0]
    G = to_torch(J) @ to_torch(J).T
    lower = torch.diag_embed(torch.full((T,), 1.0 / T, dtype=torch.float64))
    w = dual_cone_qp(G.unsqueeze(-3), lower, pivot_rounds=pivot_rounds).sum(-2).numpy()
    assert ref.update_error(w @ J, ref.upgrad(J), J, w) <= 1e-6


@pytest.mark.parametrize("pivot_rounds", [None, 0, 1])
def test_accelerator_path_is_sync_free_and_identical(monkeypatch, pivot_rounds):
    Js = [make_jacobian(kind, 5, 4, seed) for seed, kind in enumerate(FAMILIES)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    lower = torch.diag_embed(torch.full((5,), 0.2, dtype=torch.float64))
    expected = dual_cone_qp(G.unsqueeze(-3), lower, pivot_rounds=pivot_rounds)
    on_cpu = UPGrad(norm_eps=1e-4, reg_eps=1e-4).weights(G)
    ref.accelerator_mode(monkeypatch)
    got = dual_cone_qp(G.unsqueeze(-3), lower, pivot_rounds=pivot_rounds)
    assert torch.equal(got, expected)
    assert torch.equal(UPGrad(norm_eps=1e-4, reg_eps=1e-4).weights(G), on_cpu)


@pytest.mark.parametrize("kwargs, match", [
    ({"pref": [1.0, -1.0]}, "pref"),
    ({"pref": [[1.0]]}, "pref"),
    ({"pref": [float("nan")]}, "pref"),
    ({"norm_eps": -1.0}, "norm_eps"),
    ({"reg_eps": float("inf")}, "reg_eps"),
    ({"max_iter": 0}, "max_iter"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UPGrad(**kwargs)


def test_preference_length_is_checked():
    with pytest.raises(ValueError, match="pref has 2 entries"):
        UPGrad(pref=[1.0, 1.0]).weights(torch.eye(3, dtype=torch.float64))


def test_repr():
    assert repr(UPGrad(pref=[1, 2])) == "UPGrad(pref=[1.0, 2.0], norm_eps=0.0, reg_eps=0.0, max_iter=None)"
