"""ConFIG (Liu, Chu & Thuerey 2024) against tests/reference_cone.py and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import reference_cone as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jacobians import ADVERSARIAL, jacobians, to_torch, checked_weights
from reference_cone import single_thread  # noqa: F401  (module fixture)

from mtgrad.methods.conflict_free import ConFIG

FAMILIES = tuple(sorted(set(ADVERSARIAL) | {"benign"}))


def weights(J: np.ndarray, method=None) -> np.ndarray:
    Jt = to_torch(J)
    return checked_weights(method or ConFIG(), Jt @ Jt.T)


def independent_units(J: np.ndarray) -> bool:
    """Unit gradients linearly independent, with some margin: then U⁺1 exists exactly."""
    norms = np.linalg.norm(J, axis=1)
    if np.any(norms == 0):
        return False
    s = np.linalg.svd(J / norms[:, None], compute_uv=False)
    return bool(s[-1] > 1e-3 * s[0])


@settings(max_examples=ref.examples(40))
@given(jacobians(families=FAMILIES, max_T=6))
def test_matches_reference(case):
    _, J = case
    w = weights(J)
    assert ref.update_error(w @ J, ref.config(J), J, w) <= 1e-6


@settings(max_examples=ref.examples(30))
@given(jacobians(families=FAMILIES, max_T=6, min_d=6), st.randoms(use_true_random=False))
def test_equal_projections_and_no_conflict(case, random):
    _, J = case
    assume(independent_units(J))
    d = weights(J) @ J
    units = J / np.linalg.norm(J, axis=1, keepdims=True)
    proj = units @ d
    np.testing.assert_allclose(proj, proj.mean(), rtol=1e-9)  # the same for every task ...
    assert np.all(proj > 0)  # ... and positive
    np.testing.assert_allclose(np.linalg.norm(d), (J @ d).sum() / np.linalg.norm(d), rtol=1e-9)  # length
    # A preference w sets the ratio of the projections.
    pref = [random.uniform(0.1, 2.0) for _ in range(J.shape[0])]
    proj_w = units @ (weights(J, ConFIG(pref=pref)) @ J)
    np.testing.assert_allclose(proj_w / proj_w.sum(), np.array(pref) / sum(pref), rtol=1e-8)


@settings(max_examples=ref.examples(25))
@given(
    jacobians(families=FAMILIES, max_T=6),
    st.randoms(use_true_random=False),
    st.lists(st.floats(1e-2, 1e2), min_size=6, max_size=6),
)
def test_permutation_and_scaling(case, random, scales):
    _, J = case
    perm = list(range(J.shape[0]))
    random.shuffle(perm)
    w = weights(J)
    d = w @ J
    assert ref.same_update(weights(J[perm]) @ J[perm], d, J, w, rtol=1e-9)
    assert ref.same_update(weights(3.0 * J) @ (3.0 * J), 3.0 * d, J, 3.0 * w, rtol=1e-9)  # update × s
    # Rescaling single tasks keeps the direction (the length is the sum of the projections).
    s = np.array(scales[: J.shape[0]])
    d_s = weights(s[:, None] * J) @ (s[:, None] * J)
    if np.linalg.norm(d) > 1e-6 * np.abs(w) @ np.linalg.norm(J, axis=1):
        unit = d / np.linalg.norm(d)
        assert ref.same_update(d_s, (d_s @ unit) * unit, J, np.abs(w) * s.max(), rtol=1e-7)


@pytest.mark.parametrize("J, expected", [
    (np.array([[3.0, 4.0]]), np.array([3.0, 4.0])),
    (np.zeros((3, 2)), np.zeros(2)),
    (np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2)),
    (np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]), np.array([1.5, 1.5])),
    (np.array([[1.0, 2.0]] * 3), np.array([3.0, 6.0])),
    (np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), np.zeros(2)),
], ids=["T=1", "all-zero", "opposite", "zero-row", "identical", "cross"])
def test_closed_forms(J, expected):
    w = weights(J)
    np.testing.assert_allclose(w @ J, expected, atol=1e-12)
    np.testing.assert_allclose(ref.config(J), expected, atol=1e-12)
    assert np.all(w[np.linalg.norm(J, axis=1) == 0] == 0)


def test_only_the_direction_of_the_preference_matters():
    J = torch.randn(4, 9, dtype=torch.float64)
    G = J @ J.T
    torch.testing.assert_close(ConFIG(pref=[3.0] * 4).weights(G), ConFIG().weights(G), rtol=1e-12, atol=0)


def test_batched():
    J = torch.randn(5, 3, 6, dtype=torch.float64)
    G = J @ J.mT
    batched = ConFIG().weights(G)
    for i in range(5):
        torch.testing.assert_close(batched[i], ConFIG().weights(G[i]), rtol=1e-12, atol=1e-14)


def test_accelerator_path_is_sync_free_and_identical(monkeypatch):
    J = torch.randn(5, 4, 3, dtype=torch.float64)  # T > d: singular cosine matrices
    G = J @ J.mT
    expected = ConFIG().weights(G)
    ref.accelerator_mode(monkeypatch)
    assert torch.equal(ConFIG().weights(G), expected)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="pref"):
        ConFIG(pref=[1.0, -2.0])
    with pytest.raises(ValueError, match="pref has 2 entries"):
        ConFIG(pref=[1.0, 1.0]).weights(torch.eye(3))
