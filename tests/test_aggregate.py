"""mtgrad.aggregate / mtgrad.backward: Mean, Sum, dtype/device handling, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtgrad
from jacobians import ADVERSARIAL, jacobians, make_jacobian, to_torch


def all_methods():
    return [
        mtgrad.Mean(),
        mtgrad.Sum(),
        mtgrad.PCGrad(order="fixed"),
        mtgrad.PCGrad(order="random", generator=torch.Generator().manual_seed(0)),
        mtgrad.CAGrad(c=0.4),
        mtgrad.CAGrad(c=0.4, solver="mtrl"),
        mtgrad.MGDA(),
    ]


METHOD_IDS = ["mean", "sum", "pcgrad-fixed", "pcgrad-random", "cagrad", "cagrad-mtrl", "mgda"]


# --------------------------------------------------------------------------------------------
# Mean / Sum
# --------------------------------------------------------------------------------------------


@given(jacobians(families=ADVERSARIAL + ("benign",)), st.sampled_from([torch.float32, torch.float64]))
def test_mean_and_sum(case, dtype):
    _, J = case
    Jt = to_torch(J, dtype)
    tol = dict(rtol=0, atol=8 * torch.finfo(dtype).eps * float(Jt.abs().sum(0).max()) + 1e-30)
    torch.testing.assert_close(mtgrad.aggregate(Jt, mtgrad.Mean()), Jt.mean(0), **tol)
    torch.testing.assert_close(mtgrad.aggregate(Jt, mtgrad.Sum()), Jt.sum(0), **tol)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_mean_sum_weights(T):
    G = torch.eye(T, dtype=torch.float64)
    torch.testing.assert_close(mtgrad.Mean().weights(G), torch.full((T,), 1.0 / T, dtype=torch.float64))
    torch.testing.assert_close(mtgrad.Sum().weights(G), torch.ones(T, dtype=torch.float64))
    Gb = torch.eye(T, dtype=torch.float64).expand(2, 3, T, T)
    assert mtgrad.Mean().weights(Gb).shape == (2, 3, T)
    assert mtgrad.Sum().weights(Gb).shape == (2, 3, T)


# --------------------------------------------------------------------------------------------
# dtype / device
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", all_methods(), ids=METHOD_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_and_device_follow_J(method, dtype):
    J = to_torch(make_jacobian("conflict", 4, 9, 0), dtype)
    out = mtgrad.aggregate(J, method)
    assert out.dtype == dtype and out.device == J.device and out.shape == (9,)
    assert torch.isfinite(out).all()
    w = method.weights(J @ J.T)
    assert w.dtype == dtype and w.shape == (4,)


@pytest.mark.parametrize("method", all_methods(), ids=METHOD_IDS)
@pytest.mark.parametrize("seed", range(3))
def test_fp32_agrees_with_fp64_on_benign_J(method, seed):
    J = make_jacobian("benign", 4, 20, seed) + 0.5 * make_jacobian("conflict", 4, 20, seed + 100)
    if isinstance(method, mtgrad.PCGrad):
        method = mtgrad.PCGrad(order="fixed")  # same order in both precisions
    out64 = mtgrad.aggregate(to_torch(J, torch.float64), method).numpy()
    out32 = mtgrad.aggregate(to_torch(J, torch.float32), method).double().numpy()
    assert np.linalg.norm(out32 - out64) <= 1e-5 * np.linalg.norm(out64)


@pytest.mark.parametrize("method", all_methods(), ids=METHOD_IDS)
@given(case=jacobians())
def test_fp32_adversarial_is_finite(method, case):
    _, J = case
    out = mtgrad.aggregate(to_torch(J, torch.float32), method)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", METHOD_IDS)
def test_cuda_output_follows_J(name):
    method = dict(zip(METHOD_IDS, all_methods()))[name]
    if name == "pcgrad-random":
        method = mtgrad.PCGrad(order="random")
    J = to_torch(make_jacobian("conflict", 4, 9, 0)).cuda()
    out = mtgrad.aggregate(J, method)
    assert out.device == J.device and torch.isfinite(out).all()
    if name != "pcgrad-random":
        torch.testing.assert_close(out.cpu(), mtgrad.aggregate(J.cpu(), method), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------
# aggregate validation
# --------------------------------------------------------------------------------------------


def test_nan_in_J_is_rejected():
    J = torch.ones(3, 4, dtype=torch.float64)
    J[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mtgrad.aggregate(J, mtgrad.MGDA())


def test_inf_in_J_is_rejected():
    J = torch.ones(3, 4, dtype=torch.float64)
    J[0, 0] = float("inf")
    with pytest.raises(ValueError, match="(?i)inf|finite"):
        mtgrad.aggregate(J, mtgrad.CAGrad())


def test_empty_J_is_rejected():
    with pytest.raises(ValueError, match="(?i)empty|no rows"):
        mtgrad.aggregate(torch.zeros(0, 4, dtype=torch.float64), mtgrad.Mean())
    # (the message names the problem; "empty" or "no rows" both accepted)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_J_must_be_2d(shape):
    with pytest.raises(ValueError, match="(?i)2-?d|dim|shape|matrix"):
        mtgrad.aggregate(torch.ones(shape, dtype=torch.float64), mtgrad.Mean())


def test_J_must_be_a_tensor():
    with pytest.raises(TypeError, match="(?i)tensor"):
        mtgrad.aggregate(np.ones((2, 3)), mtgrad.Mean())


def test_method_must_be_a_method():
    with pytest.raises(TypeError):
        mtgrad.aggregate(torch.ones(2, 3, dtype=torch.float64), "mean")


def test_integer_J_is_rejected():
    with pytest.raises((TypeError, ValueError), match="(?i)float|dtype"):
        mtgrad.aggregate(torch.ones(2, 3, dtype=torch.int64), mtgrad.Mean())


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 3, 4)])
def test_weights_rejects_non_square_gramian(shape):
    with pytest.raises(ValueError, match="(?i)square|shape|dim"):
        mtgrad.MGDA().weights(torch.ones(shape, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


# make_problem's `only_task0` is listed as shared on purpose (zero rows for the other tasks), and
# backward rightly warns that one task alone reaches it.
pytestmark = pytest.mark.filterwarnings("ignore:.*one task alone reaches:UserWarning")


def make_problem(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=g, dtype=dtype)
    y = torch.randn(16, generator=g, dtype=dtype)
    W = torch.randn(5, 4, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(4, generator=g, dtype=dtype).requires_grad_()
    heads = [torch.randn(4, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]
    only_task0 = torch.randn(4, generator=g, dtype=dtype).requires_grad_()  # shared, used by task 0 only

    def losses():
        h = torch.tanh(x @ W + b)
        return [
            ((h + only_task0) @ heads[0] - y).pow(2).mean(),
            (h @ heads[1]).pow(2).mean() - (h @ heads[1] - y).abs().mean(),
            (h @ heads[2] + y).pow(2).mean(),
        ]

    return losses, [W, b, only_task0], heads


def per_task_grads(losses_fn, params):
    rows = []
    for L in losses_fn():
        gs = torch.autograd.grad(L, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows)


def flat_grad(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize(
    "method",
    [mtgrad.Mean(), mtgrad.Sum(), mtgrad.PCGrad(order="fixed"), mtgrad.CAGrad(c=0.4), mtgrad.MGDA()],
    ids=["mean", "sum", "pcgrad", "cagrad", "mgda"],
)
def test_backward_writes_weighted_shared_grads_and_plain_head_grads(method):
    losses_fn, shared, heads = make_problem()
    J = per_task_grads(losses_fn, shared)
    head_grads = torch.autograd.grad(sum(losses_fn()), heads)

    result = mtgrad.backward(losses_fn(), shared, method)
    torch.testing.assert_close(result.gramian, J @ J.T, rtol=1e-10, atol=1e-12)
    assert result.weights.shape == (3,)
    torch.testing.assert_close(result.weights, method.weights(J @ J.T), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(flat_grad(shared), result.weights @ J, rtol=1e-10, atol=1e-12)
    for h, g in zip(heads, head_grads):
        torch.testing.assert_close(h.grad, g, rtol=1e-10, atol=1e-12)


def test_backward_accumulates_into_existing_grad():
    losses_fn, shared, heads = make_problem(1)
    J = per_task_grads(losses_fn, shared)
    for p in shared:
        p.grad = torch.full_like(p, 0.25)
    result = mtgrad.backward(losses_fn(), shared, mtgrad.MGDA())
    torch.testing.assert_close(flat_grad(shared), result.weights @ J + 0.25, rtol=1e-10, atol=1e-12)


def test_backward_heads_accumulate_like_autograd():
    losses_fn, shared, heads = make_problem(2)
    head_grads = torch.autograd.grad(sum(losses_fn()), heads)
    for h in heads:
        h.grad = torch.ones_like(h)
    mtgrad.backward(losses_fn(), shared, mtgrad.Mean())
    for h, g in zip(heads, head_grads):
        torch.testing.assert_close(h.grad, g + 1, rtol=1e-10, atol=1e-12)


def test_backward_accepts_stacked_losses_tensor():
    losses_fn, shared, _ = make_problem(3)
    J = per_task_grads(losses_fn, shared)
    result = mtgrad.backward(torch.stack(losses_fn()), shared, mtgrad.Sum())
    torch.testing.assert_close(flat_grad(shared), J.sum(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.weights, torch.ones(3, dtype=torch.float64))


def test_backward_rejects_non_scalar_loss():
    losses_fn, shared, _ = make_problem()
    L = losses_fn()
    with pytest.raises(ValueError, match="(?i)scalar"):
        mtgrad.backward([L[0], torch.stack([L[1], L[2]])], shared, mtgrad.Mean())


def test_backward_rejects_empty_losses():
    _, shared, _ = make_problem()
    with pytest.raises(ValueError, match="(?i)empty"):
        mtgrad.backward([], shared, mtgrad.Mean())


def test_backward_rejects_empty_shared_params():
    losses_fn, _, _ = make_problem()
    with pytest.raises(ValueError, match="(?i)shared"):
        mtgrad.backward(losses_fn(), [], mtgrad.Mean())


def test_backward_skips_frozen_shared_params():
    """A shared tensor with requires_grad=False (frozen) takes no update; the others are unchanged."""
    losses_fn, shared, _ = make_problem(5)
    J = per_task_grads(losses_fn, shared)
    frozen = torch.zeros(3, dtype=torch.float64)  # requires_grad=False
    result = mtgrad.backward(losses_fn(), [*shared, frozen], mtgrad.MGDA())
    assert frozen.grad is None
    torch.testing.assert_close(flat_grad(shared), result.weights @ J, rtol=1e-10, atol=1e-12)


def test_backward_rejects_only_frozen_shared_params():
    losses_fn, _, _ = make_problem()
    with pytest.raises(ValueError, match="(?i)shared"):
        mtgrad.backward(losses_fn(), [torch.zeros(3, dtype=torch.float64)], mtgrad.Mean())


def test_backward_rejects_nan_loss():
    losses_fn, shared, _ = make_problem()
    L = losses_fn()
    L[1] = L[1] * float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mtgrad.backward(L, shared, mtgrad.Mean())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_backward_rejects_mixed_devices():
    losses_fn, shared, _ = make_problem()
    L = losses_fn()
    L[0] = L[0].cuda()
    with pytest.raises(ValueError, match="(?i)device"):
        mtgrad.backward(L, shared, mtgrad.Mean())


def test_backward_fp32_model():
    losses_fn, shared, heads = make_problem(4, dtype=torch.float32)
    result = mtgrad.backward(losses_fn(), shared, mtgrad.CAGrad(c=0.4))
    for p in shared + heads:
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert result.weights.shape == (3,) and math.isfinite(float(result.weights.sum()))


@pytest.mark.parametrize("method", all_methods(), ids=METHOD_IDS)
@pytest.mark.parametrize("T", [3, 6])
def test_fp32_identical_rows_agree_with_fp64(method, T):
    """Identical task gradients: the fp32 Gramian is all-equal only up to rounding (it can even be
    slightly asymmetric/indefinite); the update must still match the fp64 one."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        row = torch.randn(18, generator=g, dtype=torch.float64) * 0.1
        J = row.repeat(T, 1)
        if isinstance(method, mtgrad.PCGrad):
            method = mtgrad.PCGrad(order="fixed")
        out64 = mtgrad.aggregate(J, method)
        out32 = mtgrad.aggregate(J.float(), method).double()
        assert torch.linalg.norm(out32 - out64) <= 1e-5 * torch.linalg.norm(out64)
