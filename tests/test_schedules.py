"""Cost controls: Reuse (every-k, warm-up) and CAGrad-Fast (eq. 4), and the engines' agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtgrad
from mtgrad.solvers import cagrad_weights


def make_problem(T: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 8)).double()
    heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(T)).double()
    x = torch.randn(24, 5, dtype=torch.float64)
    ys = torch.randn(T, 24, 1, dtype=torch.float64)

    def losses():
        z = trunk(x)
        return [torch.nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]

    return trunk, heads, losses


def clear(*modules):
    for m in modules:
        for p in m.parameters():
            p.grad = None


def grads(*modules):
    return [p.grad.clone() for m in modules for p in m.parameters()]


def jacobian(trunk, losses):
    rows = []
    for L in losses():
        g = torch.autograd.grad(L, list(trunk.parameters()), retain_graph=True)
        rows.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("method", [mtgrad.CAGrad(0.4), mtgrad.MGDA(), mtgrad.PCGrad(order="fixed")])
def test_batched_engine_equals_loop(method):
    trunk, heads, losses = make_problem()
    results = []
    for engine in ("loop", "batched"):
        clear(trunk, heads)
        mtgrad.backward(losses(), trunk.parameters(), method, engine=engine)
        results.append(grads(trunk, heads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unknown_engine_is_rejected():
    trunk, _, losses = make_problem()
    with pytest.raises(ValueError, match="engine"):
        mtgrad.backward(losses(), trunk.parameters(), mtgrad.Mean(), engine="magic")


def test_reuse_schedule_matches_its_definition():
    """warm-up steps use 1/T; compute steps equal the inner method; reuse steps apply the last weights."""
    trunk, heads, losses = make_problem()
    T = 4
    reuse = mtgrad.Reuse(mtgrad.CAGrad(0.5), every=3, warmup=2)
    last = None
    for step in range(9):
        clear(trunk, heads)
        record = reuse_record = mtgrad.backward(losses(), trunk.parameters(), reuse)
        got = grads(trunk, heads)
        J = jacobian(trunk, losses)
        if step < 2:
            expected_w = torch.full((T,), 1.0 / T, dtype=torch.float64)
            assert record.gramian is None
        elif (step - 2) % 3 == 0:
            expected_w = mtgrad.CAGrad(0.5).weights(J @ J.T)
            last = expected_w
            assert reuse_record.gramian is not None
        else:
            expected_w = last
            assert record.gramian is None
        torch.testing.assert_close(record.weights, expected_w, rtol=1e-9, atol=1e-12)
        shared = torch.cat([g.flatten() for g in got[: len(list(trunk.parameters()))]])
        torch.testing.assert_close(shared, expected_w @ J, rtol=1e-9, atol=1e-12)
        # Heads always get their own task's plain gradient.
        clear(trunk, heads)
        sum(losses()).backward()
        for a, b in zip(got[len(list(trunk.parameters())) :], grads(heads)):
            torch.testing.assert_close(a, b)


def test_reuse_state_round_trip():
    trunk, heads, losses = make_problem()
    a = mtgrad.Reuse(mtgrad.MGDA(), every=2)
    mtgrad.backward(losses(), trunk.parameters(), a)
    b = mtgrad.Reuse(mtgrad.MGDA(), every=2)
    b.load_state_dict(a.state_dict())
    assert b.state.step == 1 and torch.equal(b.state.weights, a.state.weights)


def test_editing_a_records_weights_in_place_leaves_the_reused_ones_alone():
    trunk, heads, losses = make_problem()
    reuse = mtgrad.Reuse(mtgrad.MGDA(), every=3)
    computed = mtgrad.backward(losses(), trunk.parameters(), reuse).weights
    kept = computed.clone()
    computed.mul_(0)  # the caller's tensor, e.g. normalised for a log
    reused = mtgrad.backward(losses(), trunk.parameters(), reuse).weights
    torch.testing.assert_close(reused, kept, rtol=0, atol=0)
    reused.mul_(0)
    torch.testing.assert_close(mtgrad.backward(losses(), trunk.parameters(), reuse).weights, kept, rtol=0, atol=0)


def test_reuse_validates_arguments():
    with pytest.raises(ValueError, match="every"):
        mtgrad.Reuse(mtgrad.PCGrad(), every=0)
    with pytest.raises(TypeError, match="Gramian weighting"):
        mtgrad.Reuse(mtgrad.UW(2))


def test_cagrad_fast_solves_eq_4():
    rng = np.random.default_rng(0)
    K, d = 6, 9
    J = rng.standard_normal((K, d))
    sampled = [1, 4]
    method = mtgrad.CAGradFast(c=0.5, num_gradients=3)
    K_, s = K, len(sampled)
    rest = [j for j in range(K) if j not in sampled]
    pseudo = (K * J.mean(0) - J[sampled].sum(0)) / (K - s)
    rows = torch.tensor(np.vstack([J[sampled], pseudo]))
    w = method.task_weights(rows @ rows.T, sampled, K_)
    d = w.numpy() @ J
    # Defining properties of eq. (4): d lies on the sphere ‖d − g0‖ = c‖g0‖ and maximises the worst
    # of ⟨g_i, d⟩ (i ∈ S) and ⟨pseudo, d⟩; its dual solution reproduces it.
    g0 = J.mean(0)
    assert np.linalg.norm(d - g0) == pytest.approx(0.5 * np.linalg.norm(g0), rel=1e-9)
    m = np.full(s + 1, 1.0 / K)
    m[-1] = (K - s) / K
    a = cagrad_weights(rows @ rows.T, 0.5, torch.tensor(m)).numpy()
    np.testing.assert_allclose(a @ rows.numpy(), d, rtol=1e-9, atol=1e-12)
    # Every unsampled task gets the same weight, the pseudo-task's share.
    np.testing.assert_allclose(w.numpy()[rest], w.numpy()[rest[0]])
    # The worst objective cannot be improved by a small move along the sphere.
    objs = np.vstack([J[sampled], pseudo]) @ d
    for _ in range(200):
        u = rng.standard_normal(d.shape)
        e = d - g0 + 1e-4 * u
        e *= 0.5 * np.linalg.norm(g0) / np.linalg.norm(e)
        assert (np.vstack([J[sampled], pseudo]) @ (g0 + e)).min() <= objs.min() + 1e-9


def test_cagrad_fast_through_backward_matches_manual():
    trunk, heads, losses = make_problem(T=5)
    gen = torch.Generator().manual_seed(7)
    method = mtgrad.CAGradFast(c=0.4, num_gradients=3, generator=gen)
    sampled = mtgrad.CAGradFast(c=0.4, num_gradients=3, generator=torch.Generator().manual_seed(7)).sample(5)
    clear(trunk, heads)
    record = mtgrad.backward(losses(), trunk.parameters(), method)
    n_shared = len(list(trunk.parameters()))
    got = grads(trunk, heads)
    J = jacobian(trunk, losses)
    K, s = 5, len(sampled)
    pseudo = (J.sum(0) - J[sampled].sum(0)) / (K - s)
    rows = torch.vstack([J[sampled], pseudo])
    w = method.task_weights(rows @ rows.T, sampled, K)
    torch.testing.assert_close(record.weights, w)
    torch.testing.assert_close(torch.cat([g.flatten() for g in got[:n_shared]]), w @ J, rtol=1e-9, atol=1e-12)
    clear(trunk, heads)
    sum(losses()).backward()
    for a, b in zip(got[n_shared:], grads(heads)):
        torch.testing.assert_close(a, b)


def test_cagrad_fast_with_every_task_sampled_is_cagrad():
    trunk, heads, losses = make_problem(T=3)
    clear(trunk, heads)
    r1 = mtgrad.backward(losses(), trunk.parameters(), mtgrad.CAGradFast(c=0.4, num_gradients=3))
    g1 = grads(trunk)
    clear(trunk, heads)
    r2 = mtgrad.backward(losses(), trunk.parameters(), mtgrad.CAGrad(c=0.4))
    torch.testing.assert_close(r1.weights, r2.weights)
    for a, b in zip(g1, grads(trunk)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", [mtgrad.MGDA(), mtgrad.CAGrad(0.4), mtgrad.PCGrad(order="fixed")])
def test_representation_route_equals_its_definition(method):
    """Weights from the Gramian of ∂L_i/∂Z; trunk gets (∂Z/∂θ)ᵀ Σ w_i ∂L_i/∂Z; heads ∇ Σ L_i."""
    trunk, heads, _ = make_problem(T=3)
    x = torch.randn(24, 5, dtype=torch.float64)
    ys = torch.randn(3, 24, 1, dtype=torch.float64)

    def forward():
        z = trunk(x)
        return z, [torch.nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]

    clear(trunk, heads)
    z, losses = forward()
    record = mtgrad.backward(losses, trunk.parameters(), method, representation=z)
    got = grads(trunk, heads)

    z, losses = forward()
    gz = torch.stack([torch.autograd.grad(L, z, retain_graph=True)[0].flatten() for L in losses])
    torch.testing.assert_close(record.gramian, gz @ gz.T)
    w = method.weights(gz @ gz.T)
    combined = (w @ gz).reshape(z.shape)
    want = torch.autograd.grad(z, list(trunk.parameters()), grad_outputs=combined, retain_graph=True)
    n = len(want)
    for a, b in zip(got[:n], want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    clear(trunk, heads)
    sum(forward()[1]).backward()
    for a, b in zip(got[n:], grads(heads)):
        torch.testing.assert_close(a, b)


def test_representation_route_rejects_non_gradient_methods():
    trunk, heads, _ = make_problem(T=2)
    z = trunk(torch.randn(4, 5, dtype=torch.float64))
    losses = [h(z).pow(2).mean() for h in heads]
    with pytest.raises(TypeError, match="gradient methods"):
        mtgrad.backward(losses, trunk.parameters(), mtgrad.UW(2, dtype=torch.float64), representation=z)
