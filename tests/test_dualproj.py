"""DualProj (projection of the preference-weighted mean onto the dual cone) against
tests/reference_cone.py and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import reference_cone as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jacobians import ADVERSARIAL, jacobians, to_torch, checked_weights
from reference_cone import single_thread  # noqa: F401  (module fixture)

from mtgrad.methods.dualproj import DualProj

FAMILIES = tuple(sorted(set(ADVERSARIAL) | {"benign"}))


def weights(J: np.ndarray, method) -> np.ndarray:
    Jt = to_torch(J)
    return checked_weights(method, Jt @ Jt.T)


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6), st.sampled_from(["mean", "random"]), st.randoms(use_true_random=False))
def test_matches_reference_and_never_conflicts(case, pref, random):
    _, J = case
    T = J.shape[0]
    u = np.full(T, 1.0 / T) if pref == "mean" else np.array([random.uniform(0.0, 2.0) for _ in range(T)])
    w = weights(J, DualProj(pref=None if pref == "mean" else u.tolist()))
    assert np.all(w >= u)  # the weights stay above the preference
    assert ref.update_error(w @ J, ref.dualproj(J, u), J, w) <= 1e-6
    norms = np.linalg.norm(J, axis=1)
    assert np.all(J @ (w @ J) >= -1e-9 * norms * (np.abs(w) @ norms))


def test_torchjd_example():
    # torchjd's docstring example. Exact: the mean (1, 1, 1) conflicts with g₁ only, and its
    # projection onto g₁·d = 0 is (1, 1, 1) + g₁/9 = (5/9, 10/9, 10/9).
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(weights(J, DualProj()) @ J, [5 / 9, 10 / 9, 10 / 9], rtol=1e-13)
    parity = weights(J, DualProj(norm_eps=1e-4, reg_eps=1e-4)) @ J
    np.testing.assert_allclose(parity, [0.5563, 1.1109, 1.1109], atol=1e-4)  # torchjd's output


@settings(max_examples=ref.examples(20))
@given(jacobians(families=("benign", "gaussian"), max_T=6))
def test_non_conflicting_mean_is_unchanged(case):
    _, J = case
    J = np.abs(J)
    np.testing.assert_array_equal(weights(J, DualProj()), np.full(J.shape[0], 1.0 / J.shape[0]))


@settings(max_examples=ref.examples(20))
@given(jacobians(families=FAMILIES, max_T=6), st.randoms(use_true_random=False), st.floats(1e-3, 1e3))
def test_permutation_and_scaling(case, random, s):
    _, J = case
    perm = list(range(J.shape[0]))
    random.shuffle(perm)
    w = weights(J, DualProj())
    w_perm = weights(s * J[perm], DualProj())
    if ref.unique_weights(J):  # otherwise only the update is unique
        np.testing.assert_allclose(w_perm, w[perm], rtol=1e-9, atol=1e-12 * np.abs(w).max())
    assert ref.same_update(w_perm @ J[perm], w @ J, J, w)  # weights are scale-invariant


@pytest.mark.parametrize("J", [
    np.array([[3.0, 4.0]]),
    np.zeros((2, 3)),
    np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]),
    np.array([[1.0, 2.0], [-2.0, -4.0]]),
    np.array([[1.0, 2.0, 3.0]] * 3),
], ids=["T=1", "all-zero", "zero-and-opposite", "opposite-colinear", "identical"])
def test_degenerate_inputs(J):
    w = weights(J, DualProj())
    assert ref.same_update(w @ J, ref.dualproj(J), J, w)


def test_batched():
    J = torch.randn(4, 3, 6, dtype=torch.float64)
    G = J @ J.mT
    batched = DualProj().weights(G)
    for i in range(4):
        torch.testing.assert_close(batched[i], DualProj().weights(G[i]), rtol=1e-12, atol=1e-12)


def test_accelerator_path_is_sync_free_and_identical(monkeypatch):
    J = torch.randn(6, 4, 3, dtype=torch.float64)
    G = J @ J.mT
    expected = DualProj().weights(G)
    ref.accelerator_mode(monkeypatch)
    assert torch.equal(DualProj().weights(G), expected)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="pref"):
        DualProj(pref=[-1.0])
    with pytest.raises(ValueError, match="reg_eps"):
        DualProj(reg_eps=-1e-3)
    with pytest.raises(ValueError, match="pref has 1 entries"):
        DualProj(pref=[1.0]).weights(torch.eye(2))
