"""GradVac against Algorithm 1 of Wang et al. (2021), run literally on the task-gradient vectors
(tests/reference_baselines.py), over several steps so that the EMA targets are exercised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import mtgrad
import reference as ref
import reference_baselines as rb
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch
from mtgrad.methods.gradvac import GradVac
from mtgrad.methods.pcgrad import PCGrad


def gram(J: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(J @ J.T)  # formed in numpy: torch's tiny matmuls are slow when loaded


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scale_of(J: np.ndarray) -> float:
    return float(np.linalg.norm(J, axis=1).sum())


def assert_update_close(got_w, J, expected, rtol=1e-9):
    got = got_w @ J
    err = np.linalg.norm(got - expected)
    assert err <= rtol * np.linalg.norm(expected) + 1e-12 * scale_of(J), (err, np.linalg.norm(expected))


def drawn_orders(T: int, seed: int, order: str = "random") -> list[list[int]]:
    """The visiting orders a GradVac/PCGrad with this seed draws first (PCGrad's own stream)."""
    return PCGrad(order=order, generator=seeded(seed)).visit_orders((), T, torch.device("cpu")).tolist()


# -- reduction to PCGrad -----------------------------------------------------------------------


@given(jacobians(families=ADVERSARIAL, max_T=6), st.sampled_from(["fixed", "random"]), st.integers(0, 2**31 - 1))
def test_beta_zero_is_pcgrad(case, order, seed):
    """φ̂ ≡ 0: PCGrad's weights for the same orders — bit for bit on generic inputs, within
    rounding where a projected gradient cancels to zero (colinear/opposite/rank-deficient rows)."""
    kind, J = case
    G = gram(J)
    gv, pc = GradVac(beta=0.0, order=order, generator=seeded(seed)), PCGrad(order=order, generator=seeded(seed))
    for _ in range(2):  # also on a second call: the targets stay 0
        a, b = gv.weights(G), pc.weights(G)
        if kind in ("gaussian", "lognorm", "conflict", "zero_row"):
            assert torch.equal(a, b)
        else:
            assert_update_close(a.numpy(), J, b.numpy() @ J, rtol=1e-12)
    assert torch.equal(gv.targets, torch.zeros_like(gv.targets))


@given(jacobians(families=("gaussian", "conflict"), max_T=5), st.integers(0, 2**31 - 1))
def test_zero_target_first_call_is_pcgrad_for_any_beta(case, seed):
    """On the first call every target is 0, so any β gives PCGrad's update (Alg. 1 with φ̂ = 0)."""
    _, J = case
    a = GradVac(beta=0.7, generator=seeded(seed)).weights(gram(J))
    b = PCGrad(generator=seeded(seed)).weights(gram(J))
    assert torch.equal(a, b)


# -- against the literal algorithm --------------------------------------------------------------


@given(
    jacobians(families=("gaussian", "conflict", "benign", "lognorm", "zero_row"), max_T=5),
    st.sampled_from([0.5, 0.1, 1.0]),
    st.sampled_from(["always", "below_target"]),
    st.integers(0, 2**31 - 1),
)
def test_three_steps_match_algorithm_1(case, beta, target_update, seed):
    """Three consecutive calls on perturbed Jacobians, random orders replayed to the reference."""
    _, J0 = case
    T = J0.shape[0]
    rng = np.random.default_rng(seed)
    method = GradVac(beta=beta, target_update=target_update, generator=seeded(seed))
    replay = seeded(seed)  # the same stream, to read off the orders of each call
    targets = np.zeros((T, T))
    for _ in range(3):
        J = J0 + 0.3 * rng.standard_normal(J0.shape) * np.linalg.norm(J0, axis=1, keepdims=True) / np.sqrt(J0.shape[1])
        orders = PCGrad(generator=replay).visit_orders((), T, torch.device("cpu")).tolist()
        expected, targets = rb.gradvac(J, orders, targets, beta=beta, target_update=target_update)
        w = method.weights(gram(J)).numpy()
        assert_update_close(w, J, expected)
        # Targets near ±1 amplify rounding by 1/√(1−φ̂²) in the next correction (seen: 1.3e-10).
        np.testing.assert_allclose(method.targets.numpy(), targets, rtol=0, atol=1e-8)


@given(jacobians(families=ADVERSARIAL, max_T=6))
def test_fixed_order_first_call_matches_reference_on_all_families(case):
    _, J = case
    expected, _ = rb.gradvac(J, ref.fixed_orders(J.shape[0]))
    method = GradVac(order="fixed")
    assert_update_close(method.weights(gram(J)).numpy(), J, expected)


@given(jacobians(families=("gaussian", "conflict", "lognorm"), max_T=5), st.sampled_from([1e-3, 7.0, 1e3]))
def test_weights_invariant_to_global_scale(case, c):
    """Cosines and the correction coefficients s (g_i' += s g_j, s ∝ ‖g_i'‖/‖g_j‖) do not change
    when every gradient is scaled by c > 0: same weights, same targets, over two calls."""
    _, J = case
    a, b = GradVac(order="fixed"), GradVac(order="fixed")
    for _ in range(2):
        wa, wb = a.weights(gram(J)).numpy(), b.weights(gram(c * J)).numpy()
        np.testing.assert_allclose(wb, wa, rtol=1e-9, atol=1e-9 * np.abs(wa).max())
    np.testing.assert_allclose(b.targets.numpy(), a.targets.numpy(), atol=1e-9)


def test_correction_reaches_the_target_exactly():
    """After g_i' += s g_j the cosine is exactly φ̂ (the point of eq. 2): one pair, T = 2."""
    J = np.array([[1.0, 0.2, 0.0], [-0.4, 1.0, 0.3]])
    method = GradVac(beta=1.0, order="fixed")
    method.load_state_dict({"targets": torch.tensor([[0.0, 0.6], [0.45, 0.0]], dtype=torch.float64)})
    w = method.weights(gram(J)).numpy()
    # weights = Σ_i C_i; row 0 of C is (1, s_01), row 1 is (s_10, 1).
    g0 = J[0] + (w[1] - 1.0) * J[1]
    g1 = J[1] + (w[0] - 1.0) * J[0]

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    assert abs(cos(g0, J[1]) - 0.6) < 1e-14 and abs(cos(g1, J[0]) - 0.45) < 1e-14
    # β = 1: the new target is the φ measured at the visit (before the correction).
    phi = cos(J[0], J[1])
    np.testing.assert_allclose(method.targets.numpy(), [[0.0, phi], [phi, 0.0]], rtol=1e-14)


def test_explicit_two_task_numbers():
    """g1 = (1, 0), g2 = (−1, 1) (cos = −1/√2); the first call is PCGrad: (0.5, 1.5); the targets
    become β·cos; the second call pushes both rows to cos = −β/√2 instead of 0."""
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    method = GradVac(beta=0.5, order="fixed")
    np.testing.assert_allclose(method.weights(gram(J)).numpy() @ J, [0.5, 1.5], atol=1e-15)
    c = -1 / np.sqrt(2)
    np.testing.assert_allclose(method.targets.numpy(), [[0, c / 2], [c / 2, 0]], rtol=1e-15)
    expected, _ = rb.gradvac(J, [[1], [0]], method.targets.numpy(), beta=0.5)
    np.testing.assert_allclose(method.weights(gram(J)).numpy() @ J, expected, rtol=1e-14)


# -- state -----------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_identically():
    Js = [make_jacobian("conflict", 4, 6, s) for s in range(5)]
    a = GradVac(beta=0.3, generator=seeded(1))
    for J in Js[:2]:
        a.weights(gram(J))
    state = a.state_dict()
    b = GradVac(beta=0.3, generator=seeded(999))
    b.load_state_dict(state)
    for J in Js[2:]:
        assert torch.equal(a.weights(gram(J)), b.weights(gram(J)))
    assert torch.equal(a.targets, b.targets)
    # The saved state is a copy: later calls did not change it.
    c = GradVac(beta=0.3, generator=seeded(5))
    c.load_state_dict(state)
    assert torch.equal(c.targets, state["targets"]) and not torch.equal(c.targets, a.targets)


def test_state_without_generator_and_fresh_state():
    m = GradVac(order="fixed")
    assert m.state_dict() == {"targets": None}
    m.weights(gram(make_jacobian("gaussian", 3, 4, 0)))
    assert set(m.state_dict()) == {"targets"} and m.state_dict()["targets"].shape == (3, 3)
    with pytest.raises(ValueError, match="generator"):
        m.load_state_dict({"targets": None, "generator": seeded(0).get_state()})
    with pytest.raises(ValueError, match="targets"):
        m.load_state_dict({"phi": None})
    with pytest.raises(ValueError, match="targets"):
        m.load_state_dict({"targets": torch.zeros(2, 3)})


def test_a_new_task_count_is_refused_not_a_silent_restart():
    # Its targets are a running average over the run: dropping them would change the method.
    m = GradVac(order="fixed")
    m.weights(gram(make_jacobian("conflict", 3, 4, 0)))
    assert m.targets.shape == (3, 3) and bool((m.targets != 0).any())
    with pytest.raises(ValueError, match="one GradVac serves one problem"):
        m.weights(gram(make_jacobian("conflict", 4, 4, 0)))


def test_batched_gramian_is_refused():
    G = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    with pytest.raises(ValueError, match="single Gramian"):
        GradVac().weights(G)


# -- degenerate inputs -------------------------------------------------------------------------


def test_degenerate_inputs_are_finite():
    m = GradVac(beta=0.5, order="fixed")
    np.testing.assert_array_equal(m.weights(gram(np.array([[1.0, 2.0]]))).numpy(), [1.0])
    for kind in ("zero_row", "opposite", "colinear", "rankdef"):
        m = GradVac(beta=0.5, order="fixed")
        J = make_jacobian(kind, 4, 3, 0)
        for _ in range(4):
            w = m.weights(gram(J))
            assert torch.isfinite(w).all() and torch.isfinite(m.targets).all()
    m = GradVac(order="fixed")
    np.testing.assert_array_equal(m.weights(gram(np.zeros((3, 2)))).numpy(), [1.0, 1.0, 1.0])
    assert torch.equal(m.targets, torch.zeros(3, 3, dtype=torch.float64))


def test_unreachable_target_is_skipped():
    """A target of exactly 1 cannot be reached by a finite correction: that pair is left alone."""
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = GradVac(order="fixed")
    m.load_state_dict({"targets": torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)})
    np.testing.assert_array_equal(m.weights(gram(J)).numpy(), [1.0, 1.0])
    np.testing.assert_allclose(m.targets.numpy(), [[0, 0.5], [0.5, 0]])


def test_through_aggregate_and_repr():
    J = make_jacobian("conflict", 3, 5, 2)
    out = mtgrad.aggregate(to_torch(J), GradVac(order="fixed")).numpy()
    expected, _ = rb.gradvac(J, ref.fixed_orders(3))
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert repr(GradVac()) == "GradVac(beta=0.5, order='random', target_update='always')"


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(beta=-0.1), "beta"),
        (dict(beta=1.5), "beta"),
        (dict(beta=True), "beta"),
        (dict(order="sorted"), "order"),
        (dict(target_update="sometimes"), "target_update"),
    ],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GradVac(**kwargs)


def test_invalid_generator():
    with pytest.raises(TypeError, match="generator"):
        GradVac(generator=0)  # type: ignore[arg-type]


# -- launch count ----------------------------------------------------------------------------------


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _ops(method, T: int) -> int:
    G = gram(make_jacobian("conflict", T, T + 3, 0))
    method.weights(G)  # GradVac's targets exist from here on, as in training
    with _OpCounter() as counter:
        method.weights(G)
    return counter.ops


@pytest.mark.parametrize(
    "make, per_round", [(lambda: GradVac(generator=seeded(0)), 16), (lambda: PCGrad(generator=seeded(0)), 5)]
)
def test_tensor_ops_per_round(make, per_round):
    """Each of the T − 1 rounds dispatches a fixed, small number of tensor ops (kernel launches on
    an accelerator): one batched dot product, the step, and the updates of C and ‖g_i'‖²."""
    assert _ops(make(), 13) - _ops(make(), 9) == 4 * per_round
