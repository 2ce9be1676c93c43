"""Nash-MTL (Navon et al. 2022): the bargaining condition, the reference, invariances and state."""

from __future__ import annotations

import numpy as np
import pytest
import reference_cone as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch, checked_weights
from reference_cone import single_thread  # noqa: F401  (module fixture)

from mtgrad.methods.nashmtl import NashMTL

FAMILIES = tuple(sorted(set(ADVERSARIAL) | {"benign"}))
RIDGE = 1e-10  # NashMTL's default ridge


def weights(J: np.ndarray, method=None) -> np.ndarray:
    Jt = to_torch(J)
    return checked_weights(method or NashMTL(), Jt @ Jt.T, nonnegative=True)


def well_posed(J: np.ndarray, margin: float = 1e-2) -> bool:
    """The bargaining equations have a well-conditioned solution (0 far from the hull)."""
    return bool(np.all(np.linalg.norm(J, axis=1) > 0)) and ref.hull_distance(J) > margin


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6, min_d=6, max_d=40))
def test_bargaining_condition(case):
    # α_i (Gα)_i = 1 for every task: exactly for G + ρ·diag(G), and up to O(ρ·α_i²G_ii) for G.
    _, J = case
    assume(well_posed(J))
    G = J @ J.T
    a = weights(J)
    Gr = G + RIDGE * np.diag(np.diag(G))
    assert np.all(np.abs(a * (Gr @ a) - 1.0) <= 1e-10 * (1 + a * (np.abs(Gr) @ a)))
    np.testing.assert_allclose(a * (G @ a), 1.0, rtol=0, atol=2 * RIDGE * (a**2 * np.diag(G)).max() + 1e-10)
    d = a @ J
    assert np.all(J @ d > 0)  # every task improves ...
    # ... and ‖d‖² = αᵀGα = T (exactly T − ρ Σ α_i² G_ii with the ridge)
    np.testing.assert_allclose(d @ d, J.shape[0] - RIDGE * (a**2 * np.diag(G)).sum(), rtol=1e-9)


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6))
def test_matches_reference(case):
    _, J = case
    w = weights(J)
    w_ref = ref.bargaining(J, 1.0, ridge=RIDGE)
    if well_posed(J):
        assert ref.update_error(w @ J, w_ref @ J, J, w) <= 1e-6
        np.testing.assert_allclose(w, w_ref, rtol=1e-6)
    else:
        check_degenerate(J, w, w_ref)


def check_degenerate(J: np.ndarray, w: np.ndarray, w_ref: np.ndarray) -> None:
    """No solution exists without the ridge. The ridged weights (~1/(√ρ‖g_i‖)) are determined to
    a relative ~ε/ρ or worse (the condition number is ~1/ρ), so the update Σ w_i g_i —
    a cancellation of such weights — is set by rounding; it stays bounded: ‖d‖² = T − ρ‖β‖² ≤ T."""
    np.testing.assert_allclose(w, w_ref, rtol=1e-2, atol=1e-6 * np.abs(w_ref).max())
    d = w @ J
    assert d @ d <= J.shape[0] * (1 + 1e-6)


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6), st.randoms(use_true_random=False))
def test_permutation_invariance(case, random):
    _, J = case
    perm = list(range(J.shape[0]))
    random.shuffle(perm)
    w, w_perm = weights(J), weights(J[perm])
    if well_posed(J):
        np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9)
    else:
        check_degenerate(J, w_perm[np.argsort(perm)], w)


@settings(max_examples=ref.examples(25))
@given(jacobians(families=FAMILIES, max_T=6), st.lists(st.floats(1e-3, 1e3), min_size=6, max_size=6))
def test_per_task_scale_invariance(case, scales):
    # g_i → s_i g_i gives α_i → α_i / s_i: the update does not change.
    _, J = case
    s = np.array(scales[: J.shape[0]])
    w, w_s = weights(J), weights(s[:, None] * J)
    if well_posed(J):
        np.testing.assert_allclose(w_s * s, w, rtol=1e-9)
    else:
        check_degenerate(J, w_s * s, w)


@pytest.mark.parametrize("J, expected", [
    (np.array([[3.0, 4.0]]), np.array([0.6, 0.8]) / np.sqrt(1 + RIDGE)),
    (np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 1.0]) / np.sqrt(1 + RIDGE)),
    (np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2)),
    (np.zeros((3, 2)), np.zeros(2)),
], ids=["T=1", "orthogonal", "opposite", "all-zero"])
def test_closed_forms(J, expected):
    w = weights(J)
    np.testing.assert_allclose(w @ J, expected, atol=1e-12)


@pytest.mark.parametrize("J", [
    np.array([[1.0, 2.0], [0.0, 0.0], [2.0, -1.0]]),
    np.array([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]]),
    np.array([[1.0, 2.0, 3.0]] * 4),
    make_jacobian("rankdef", 6, 10, 3),
], ids=["zero-row", "colinear-opposite", "identical", "rankdef"])
def test_degenerate_inputs_are_finite(J):
    w = weights(J)
    norms = np.linalg.norm(J, axis=1)
    assert np.all(w[norms == 0] == 0)  # a zero gradient gets weight 0
    assert (w @ J) @ (w @ J) <= J.shape[0] * (1 + 1e-9)  # ‖d‖² = T − ρ‖β‖² ≤ T


def test_update_every_reuses_weights_and_state_round_trips():
    g = torch.Generator().manual_seed(0)
    Js = [torch.randn(3, 8, generator=g, dtype=torch.float64) for _ in range(7)]
    Gs = [J @ J.T for J in Js]
    method = NashMTL(update_weights_every=3)
    out = [method.weights(G) for G in Gs[:4]]
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)  # steps 1, 2 reuse step 0's weights
    torch.testing.assert_close(out[2], out[0], rtol=0, atol=0)
    torch.testing.assert_close(out[3], NashMTL().weights(Gs[3]), rtol=1e-12, atol=0)  # step 3 recomputes
    state = method.state_dict()
    assert state["step"] == 4
    clone = NashMTL(update_weights_every=3)
    clone.load_state_dict(state)
    for G in Gs[4:]:
        torch.testing.assert_close(clone.weights(G), method.weights(G), rtol=0, atol=0)
    assert clone.state_dict()["step"] == method.state_dict()["step"] == 7
    state["alpha"].zero_()  # the state is a copy
    assert bool((method.state_dict()["alpha"] > 0).all())


def test_warm_start_does_not_change_the_answer():
    g = torch.Generator().manual_seed(1)
    J = torch.randn(5, 20, generator=g, dtype=torch.float64)
    G = J @ J.T
    cold = NashMTL().weights(G)
    method = NashMTL()
    method.load_state_dict({"step": 0, "alpha": torch.rand(5, generator=g, dtype=torch.float64) * 100})
    torch.testing.assert_close(method.weights(G), cold, rtol=1e-12, atol=0)


def test_reused_weights_need_the_same_tasks():
    method = NashMTL(update_weights_every=2)
    method.weights(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="reuses its weights"):
        method.weights(torch.eye(4, dtype=torch.float64))


def test_batched():
    J = torch.randn(4, 3, 6, dtype=torch.float64)
    G = J @ J.mT
    batched = NashMTL().weights(G)
    for i in range(4):
        torch.testing.assert_close(batched[i], NashMTL().weights(G[i]), rtol=1e-12, atol=0)


def test_accelerator_path_is_sync_free_and_identical(monkeypatch):
    Js = [make_jacobian(kind, 4, 6, seed) for seed, kind in enumerate(FAMILIES)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    method = NashMTL()
    expected = [method.weights(G), method.weights(G)]  # cold, then warm-started
    ref.accelerator_mode(monkeypatch)
    method = NashMTL()
    got = [method.weights(G), method.weights(G)]
    monkeypatch.undo()
    for a, b in zip(got, expected):  # the loop runs to max_iter there: same answer to rounding
        torch.testing.assert_close(a, b, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"update_weights_every": 0}, "update_weights_every"),
    ({"ridge": 0.0}, "ridge"),
    ({"max_iter": 0}, "max_iter"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NashMTL(**kwargs)


def test_invalid_state():
    with pytest.raises(ValueError, match=r"unexpected \['generator'\]; missing \['alpha', 'step'\]"):
        NashMTL().load_state_dict({"generator": 1})
    with pytest.raises(ValueError, match="'step'"):
        NashMTL().load_state_dict({"step": -1, "alpha": None})
