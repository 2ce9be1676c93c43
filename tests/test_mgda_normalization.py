"""MGDA's gradient normalisation (Sener & Koltun's ``gradient_normalizers``) against the exact
min-norm point of the normalised gradients (tests/reference.py, by enumeration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtgrad
import reference_baselines as rb
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch
from mtgrad.methods.mgda import MGDA

MODES = ("none", "l2", "loss", "loss+")
# Every example runs the exact active-set QP (and the reference enumerates faces): keep it short.
few = settings(max_examples=15)


def weights(J: np.ndarray, losses=None, **kwargs) -> np.ndarray:
    G = torch.as_tensor(J @ J.T)  # formed in numpy: torch's tiny matmuls are slow when loaded
    L = None if losses is None else torch.as_tensor(losses)
    w = MGDA(**kwargs).weights(G, L)
    assert w.dtype == torch.float64 and w.shape == (J.shape[0],)
    assert np.all(np.isfinite(w.numpy()))
    return w.numpy()


def positive_losses(T: int, seed: int) -> np.ndarray:
    return 10.0 ** np.random.default_rng(seed).uniform(-2, 2, size=T)


def close(got, expected, J, rtol=1e-6, atol_rel=1e-9) -> None:
    err = np.linalg.norm(got - expected)
    assert err <= rtol * np.linalg.norm(expected) + atol_rel * np.linalg.norm(J, axis=1).max(), err


# --------------------------------------------------------------------------------------------


@few
@given(jacobians(families=ADVERSARIAL, max_T=5), st.sampled_from(MODES), st.integers(0, 2**31 - 1))
def test_normalized_update_is_min_norm_point_of_normalized_gradients(case, mode, seed):
    """apply_to="normalized" (LibMTL): Σ w_i g_i/s_i is the (unique) min-norm point of conv{g_i/s_i}."""
    _, J = case
    L = positive_losses(J.shape[0], seed)
    expected, _ = rb.mgda_normalized(J, L, mode, "normalized")
    got = weights(J, L, normalization=mode, apply_to="normalized") @ J
    close(got, expected, J)


@few
@given(
    jacobians(families=("gaussian", "lognorm", "conflict"), max_T=5, min_d=6),
    st.sampled_from(MODES),
    st.integers(0, 2**31 - 1),
)
def test_original_update_uses_the_weights_on_the_raw_gradients(case, mode, seed):
    """apply_to="original" (Sener & Koltun, nash-mtl): Σ w_i g_i with w from the normalised problem
    (unique here: the normalised rows are affinely independent)."""
    _, J = case
    L = positive_losses(J.shape[0], seed)
    expected, w_ref = rb.mgda_normalized(J, L, mode, "original")
    w = weights(J, L, normalization=mode)
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
    assert abs(w.sum() - 1) < 1e-12
    close(w @ J, expected, J)


@few
@given(jacobians(families=ADVERSARIAL, max_T=6))
def test_none_is_plain_mgda(case):
    _, J = case
    G = torch.as_tensor(J @ J.T)
    assert torch.equal(MGDA(normalization="none").weights(G), MGDA().weights(G))
    assert torch.equal(MGDA(normalization="none", apply_to="normalized").weights(G), MGDA().weights(G))


@few
@given(
    jacobians(families=("gaussian", "conflict"), max_T=5, min_d=6),
    st.lists(st.floats(-3, 3), min_size=5, max_size=5),
)
def test_l2_is_invariant_to_per_task_scaling(case, logs):
    """With "l2" the solve sees only unit gradients: scaling g_i by s_i > 0 leaves the weights of
    "original" unchanged, and the "normalized" update unchanged."""
    _, J = case
    s = 10.0 ** np.array(logs[: J.shape[0]])
    np.testing.assert_allclose(weights(s[:, None] * J, normalization="l2"), weights(J, normalization="l2"), atol=1e-9)
    a = weights(J, normalization="l2", apply_to="normalized") @ J
    b = weights(s[:, None] * J, normalization="l2", apply_to="normalized") @ (s[:, None] * J)
    close(b, a, J / np.linalg.norm(J, axis=1, keepdims=True), rtol=1e-8)


def test_loss_modes_need_losses():
    assert MGDA().needs_losses is False
    assert MGDA(normalization="l2").needs_losses is False
    assert MGDA(normalization="loss").needs_losses is True
    assert MGDA(normalization="loss+").needs_losses is True
    assert MGDA.needs_losses is False  # the class default is untouched
    with pytest.raises(ValueError, match="loss"):
        MGDA(normalization="loss").weights(torch.eye(2, dtype=torch.float64))


def test_loss_scaling_explicit():
    """Two orthogonal gradients, losses (1, 4): "loss" solves on (g1, g2/4)."""
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = weights(J, [1.0, 4.0], normalization="loss")  # min-norm of (e1, e2/4): w ∝ (1/16, 1) → (1/17, 16/17)
    np.testing.assert_allclose(w, [1 / 17, 16 / 17], rtol=1e-14)
    wn = weights(J, [1.0, 4.0], normalization="loss", apply_to="normalized")
    np.testing.assert_allclose(wn, [1 / 17, 4 / 17], rtol=1e-14)


def test_degenerate_scales_are_replaced_by_one():
    """A zero gradient (l2, loss+) or a loss ≤ 0 / non-finite (loss, loss+) is not divided by."""
    J = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    for mode in ("l2", "loss+"):
        w = weights(J, [1.0, 1.0, 1.0], normalization=mode)
        assert w[1] == pytest.approx(1.0)  # the zero gradient is the min-norm point
    J = make_jacobian("gaussian", 3, 5, 0)
    for losses in ([0.0, 1.0, 2.0], [-1.0, 1.0, 2.0], [np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0]):
        for mode in ("loss", "loss+"):
            scale = MGDA(normalization=mode).scales(torch.as_tensor(J @ J.T), torch.tensor(losses, dtype=torch.float64))
            assert scale[0] == 1.0 and torch.isfinite(scale).all()
            weights(J, losses, normalization=mode)


def test_batched_equals_single():
    Js = [make_jacobian(kind, 4, 6, s) for s, kind in enumerate(["gaussian", "zero_row", "conflict", "lognorm"])]
    G = torch.stack([torch.as_tensor(J @ J.T) for J in Js])
    L = torch.as_tensor(np.stack([positive_losses(4, s) for s in range(4)]))
    for mode, apply_to in [("l2", "original"), ("loss", "normalized"), ("loss+", "original")]:
        m = MGDA(normalization=mode, apply_to=apply_to)
        W = m.weights(G, L)
        for b in range(4):
            torch.testing.assert_close(W[b], m.weights(G[b], L[b]), rtol=1e-10, atol=1e-12)


def test_through_backward_receives_losses():
    """mtgrad.backward passes the loss values to a method whose *instance* needs them."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    x = torch.randn(2, 3, dtype=torch.float64)
    losses = [(x[0] @ w - 1.0) ** 2 + 0.5, 3.0 * (x[1] @ w + 2.0) ** 2 + 0.1]
    grads = torch.stack([torch.autograd.grad(loss, w, retain_graph=True)[0] for loss in losses])
    L = torch.stack([loss.detach() for loss in losses])
    result = mtgrad.backward(losses, [w], MGDA(normalization="loss+"))
    expected = MGDA(normalization="loss+").weights(grads @ grads.T, L)
    torch.testing.assert_close(result.weights, expected)
    torch.testing.assert_close(w.grad, expected @ grads)


def test_through_aggregate():
    J = make_jacobian("conflict", 4, 9, 1)
    out = mtgrad.aggregate(to_torch(J), MGDA(normalization="l2")).numpy()
    np.testing.assert_allclose(out, weights(J, normalization="l2") @ J, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, word",
    [(dict(normalization="norm"), "normalization"), (dict(apply_to="raw"), "apply_to")],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        MGDA(**kwargs)


def test_repr():
    assert repr(MGDA()) == "MGDA()"
    expected = "MGDA(normalization='loss+', apply_to='normalized')"
    assert repr(MGDA(normalization="loss+", apply_to="normalized")) == expected
