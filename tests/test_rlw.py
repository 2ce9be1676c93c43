"""RLW (Lin et al., TMLR 2022): softmax of standard normal draws, redrawn every call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
import reference_baselines as rb
from jacobians import make_jacobian, to_torch
from mtgrad.methods.rlw import RLW


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_weights_are_softmax_of_normal_draws(T, seed):
    w = RLW(generator=seeded(seed)).weights(torch.eye(T, dtype=torch.float64)).numpy()
    eps = torch.randn(T, generator=seeded(seed), dtype=torch.float64).numpy()
    np.testing.assert_allclose(w, rb.rlw(eps), rtol=1e-14)
    assert np.all(w > 0) and abs(w.sum() - 1) < 1e-14


@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_reproducible_with_seeded_generator(T, seed):
    G = torch.eye(T, dtype=torch.float64)
    a, b = RLW(generator=seeded(seed)), RLW(generator=seeded(seed))
    for _ in range(3):
        assert torch.equal(a.weights(G), b.weights(G))


def test_redrawn_every_call_and_global_seed():
    G = torch.eye(4, dtype=torch.float64)
    m = RLW(generator=seeded(0))
    assert not torch.equal(m.weights(G), m.weights(G))
    torch.manual_seed(3)
    a = RLW().weights(G)
    torch.manual_seed(3)
    assert torch.equal(a, RLW().weights(G))


def test_ignores_gramian_values_and_single_task():
    J = make_jacobian("conflict", 3, 5, 0)
    G1, G2 = torch.as_tensor(J @ J.T), torch.zeros(3, 3, dtype=torch.float64)
    assert torch.equal(RLW(generator=seeded(1)).weights(G1), RLW(generator=seeded(1)).weights(G2))
    assert torch.equal(RLW().weights(torch.zeros(1, 1, dtype=torch.float64)), torch.ones(1, dtype=torch.float64))


def test_batched_draws_are_independent_and_on_the_simplex():
    G = torch.eye(5, dtype=torch.float64).expand(3, 2, 5, 5)
    W = RLW(generator=seeded(2)).weights(G)
    assert W.shape == (3, 2, 5)
    torch.testing.assert_close(W.sum(-1), torch.ones(3, 2, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (W > 0).all() and len({tuple(w.tolist()) for w in W.reshape(6, 5)}) == 6
    eps = torch.randn(3, 2, 5, generator=seeded(2), dtype=torch.float64).numpy()
    np.testing.assert_allclose(W.numpy(), rb.rlw(eps), rtol=1e-14)


def test_dtype_follows_gramian():
    w = RLW(generator=seeded(0)).weights(torch.eye(3, dtype=torch.float32))
    assert w.dtype == torch.float32


def test_state_dict_round_trip():
    G = torch.eye(6, dtype=torch.float64)
    a = RLW(generator=seeded(7))
    a.weights(G)
    state = a.state_dict()
    b = RLW(generator=seeded(8))
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(a.weights(G), b.weights(G))
    assert RLW().state_dict() == {}
    with pytest.raises(ValueError, match="generator"):
        RLW().load_state_dict(state)
    with pytest.raises(ValueError, match="unexpected"):
        RLW(generator=seeded(0)).load_state_dict({"eps": 1})


def test_through_aggregate():
    J = make_jacobian("gaussian", 3, 4, 0)
    w = RLW(generator=seeded(4)).weights(torch.eye(3, dtype=torch.float64)).numpy()
    out = mtgrad.aggregate(to_torch(J), RLW(generator=seeded(4))).numpy()
    np.testing.assert_allclose(out, w @ J, rtol=1e-13)


def test_invalid_generator_and_repr():
    with pytest.raises(TypeError, match="generator"):
        RLW(generator=1)  # type: ignore[arg-type]
    assert repr(RLW()) == "RLW()"
