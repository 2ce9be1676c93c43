"""GradDrop against Algorithm 1 of Chen et al. (2020) run coordinate by coordinate on the same
uniform draws (tests/reference_baselines.py), and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference_baselines as rb
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch
from mtgrad.methods.graddrop import GradDrop


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_columns_close(got, expected, J) -> None:
    """Per coordinate, up to the rounding of a sum of T terms (its order differs from numpy's)."""
    bound = 1e-14 * np.abs(J).sum(0)
    assert np.all(np.abs(got - expected) <= bound), np.abs(got - expected).max()


def run(J: np.ndarray, **kwargs) -> np.ndarray:
    out = GradDrop(**kwargs).aggregate_blocks([to_torch(J)])[0]
    assert out.dtype == torch.float64 and out.shape == (J.shape[1],)
    assert np.all(np.isfinite(out.numpy()))
    return out.numpy()


@given(jacobians(families=ADVERSARIAL, max_T=6), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.3, 1.0]))
def test_matches_algorithm_1(case, seed, leak):
    _, J = case
    U = torch.rand(J.shape[1], generator=seeded(seed), dtype=torch.float64).numpy()
    assert_columns_close(run(J, leak=leak, generator=seeded(seed)), rb.graddrop(J, U, leak), J)


@given(jacobians(families=("gaussian", "conflict"), max_T=5), st.integers(0, 2**31 - 1), st.data())
def test_per_task_leak_matches_algorithm_1(case, seed, data):
    _, J = case
    leak = data.draw(st.lists(st.floats(0, 1), min_size=J.shape[0], max_size=J.shape[0]))
    U = torch.rand(J.shape[1], generator=seeded(seed), dtype=torch.float64).numpy()
    assert_columns_close(run(J, leak=leak, generator=seeded(seed)), rb.graddrop(J, U, leak), J)


@given(jacobians(families=("gaussian", "benign", "lognorm"), max_T=6), st.integers(0, 2**31 - 1))
def test_same_sign_per_coordinate_is_plain_sum(case, seed):
    _, J = case
    rng = np.random.default_rng(seed)
    J = np.abs(J) * rng.choice([-1.0, 1.0], size=(1, J.shape[1]))  # one sign per column
    assert_columns_close(run(J, generator=seeded(seed)), J.sum(0), J)


@given(jacobians(families=ADVERSARIAL, max_T=6), st.integers(0, 2**31 - 1))
def test_full_leak_is_plain_sum(case, seed):
    _, J = case
    assert_columns_close(run(J, leak=1.0, generator=seeded(seed)), J.sum(0), J)


@given(jacobians(families=ADVERSARIAL, max_T=6), st.integers(0, 2**31 - 1), st.randoms(use_true_random=False))
def test_task_permutation_invariance(case, seed, rnd):
    """P and the masks are symmetric in the tasks: permuting them (same U) changes nothing."""
    _, J = case
    perm = list(range(J.shape[0]))
    rnd.shuffle(perm)
    assert_columns_close(run(J[perm], generator=seeded(seed)), run(J, generator=seeded(seed)), J)


@given(jacobians(families=ADVERSARIAL, max_T=6), st.integers(0, 2**31 - 1), st.sampled_from([1e-3, 0.5, 1e3]))
def test_positive_homogeneity(case, seed, c):
    """P is invariant to a common positive scale, so the same U keeps the same entries."""
    _, J = case
    assert_columns_close(run(c * J, generator=seeded(seed)), c * run(J, generator=seeded(seed)), c * J)


def test_each_coordinate_keeps_one_sign():
    """With no leak every coordinate of the update is a sum of same-signed entries."""
    J = make_jacobian("conflict", 5, 400, 3)
    out = run(J, generator=seeded(0))
    pos, neg = np.where(J > 0, J, 0).sum(0), np.where(J < 0, J, 0).sum(0)
    assert np.all(np.isclose(out, pos, rtol=1e-14, atol=0) | np.isclose(out, neg, rtol=1e-14, atol=0))
    # Both signs occur, with frequencies following P.
    P = 0.5 * (1 + J.sum(0) / np.abs(J).sum(0))
    kept_pos = np.isclose(out, pos, rtol=1e-14, atol=0)
    assert 0.2 < kept_pos.mean() < 0.8
    assert abs(kept_pos.mean() - P.mean()) < 0.1


def test_zero_coordinates_give_zero():
    J = np.array([[1.0, 0.0, -2.0], [3.0, 0.0, 1.0]])
    out = run(J, generator=seeded(0))
    assert out[1] == 0 and out[0] == 4.0
    assert np.array_equal(run(np.zeros((3, 5))), np.zeros(5))
    np.testing.assert_array_equal(run(np.array([[1.0, -2.0, 0.0]])), [1.0, -2.0, 0.0])  # T = 1


def test_blocks_of_any_shape_and_dtype():
    gen = seeded(0)
    blocks = [
        torch.randn(3, 4, 5, generator=gen),
        torch.randn(3, 7, generator=gen, dtype=torch.float64),
        torch.randn(3, generator=gen),
    ]
    method = GradDrop(generator=seeded(11))
    outs = method.aggregate_blocks(blocks)
    assert [o.shape for o in outs] == [(4, 5), (7,), ()]
    assert [o.dtype for o in outs] == [torch.float32, torch.float64, torch.float32]
    # Block by block, U drawn in each block's (promoted) dtype, in order.
    replay = seeded(11)
    for block, out in zip(blocks, outs):
        U = torch.rand(block.shape[1:], generator=replay, dtype=block.dtype)
        J = block.reshape(3, -1).double().numpy()
        expected = rb.graddrop(J, U.reshape(-1).double().numpy())
        np.testing.assert_allclose(out.reshape(-1).double().numpy(), expected, rtol=1e-6)


def test_half_precision_block():
    block = torch.randn(3, 10, generator=seeded(0)).to(torch.bfloat16)
    out = GradDrop(generator=seeded(1)).aggregate_blocks([block])[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_state_dict_round_trip():
    J = to_torch(make_jacobian("conflict", 4, 50, 0))
    a = GradDrop(generator=seeded(5))
    a.aggregate_blocks([J])
    state = a.state_dict()
    b = GradDrop(generator=seeded(6))
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(a.aggregate_blocks([J])[0], b.aggregate_blocks([J])[0])
    assert GradDrop().state_dict() == {}
    with pytest.raises(ValueError, match="generator"):
        GradDrop().load_state_dict(state)


def test_through_aggregate_and_backward():
    J = make_jacobian("conflict", 3, 6, 4)
    out = mtgrad.aggregate(to_torch(J), GradDrop(generator=seeded(2))).numpy()
    np.testing.assert_allclose(out, run(J, generator=seeded(2)), rtol=1e-15)

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    losses = [(x[i] @ w - i) ** 2 for i in range(3)]
    grads = torch.stack([torch.autograd.grad(loss, w, retain_graph=True)[0] for loss in losses])
    mtgrad.backward(losses, [w], GradDrop(generator=seeded(3)))
    expected = GradDrop(generator=seeded(3)).aggregate_blocks([grads])[0]
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("leak", [-0.1, 1.5, float("nan"), [], [0.2, 2.0], "0.5x"])
def test_invalid_leak(leak):
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=leak)


def test_leak_length_mismatch_and_repr():
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=[0.1, 0.2]).aggregate_blocks([torch.zeros(3, 4)])
    assert repr(GradDrop()) == "GradDrop(leak=0.0)"
    assert repr(GradDrop(leak=[0.1, 0.2])) == "GradDrop(leak=(0.1, 0.2))"
    with pytest.raises(TypeError, match="generator"):
        GradDrop(generator="cpu")  # type: ignore[arg-type]
