"""Gradient accumulation: per-task gradients summed over micro-batches, the method applied once,
equals the large-batch step; per-micro-batch surgery does not."""

from __future__ import annotations

import pytest
import torch

import mtgrad

T, B, K = 3, 24, 3  # tasks, batch, micro-batches


def _model():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(5, 8)
    heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(T))
    return trunk, heads


def _data():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(B, 5, generator=gen), torch.randn(B, T, generator=gen)


def _losses(trunk, heads, x, y, share):
    """Task losses as sums over the rows, times ``share``: micro-batch losses add up to the batch's."""
    z = torch.tanh(trunk(x))
    return [((h(z).squeeze(-1) - y[:, i]) ** 2).sum() * share * (i + 1) for i, h in enumerate(heads)]


def _grads(trunk, heads):
    return [p.grad.clone() for p in [*trunk.parameters(), *heads.parameters()]]


METHODS = {
    "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
    "cagrad": lambda: mtgrad.CAGrad(c=0.4),
    "mgda": mtgrad.MGDA,
    "nashmtl": mtgrad.NashMTL,
    "graddrop": lambda: mtgrad.GradDrop(generator=torch.Generator().manual_seed(0)),
    "cagrad_fast": lambda: mtgrad.CAGradFast(c=0.4, num_gradients=2, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("engine", ["loop", "batched"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_accumulated_micro_batches_give_the_large_batch_step(name, engine):
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), METHODS[name](), engine=engine)
    big = _grads(trunk, heads)

    trunk, heads = _model()
    grads = None
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), into=grads, engine=engine)
    assert grads.micro_batches == K and trunk.weight.grad is None  # shared .grad untouched until applied
    mtgrad.apply_task_gradients(grads, METHODS[name]())
    for a, b in zip(big, _grads(trunk, heads)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_per_micro_batch_surgery_is_not_the_large_batch_step():
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), mtgrad.PCGrad(order="fixed"))
    big = trunk.weight.grad.clone()
    trunk, heads = _model()
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        mtgrad.backward(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), mtgrad.PCGrad(order="fixed"))
    assert not torch.allclose(trunk.weight.grad, big, rtol=1e-3)


@pytest.mark.parametrize("name", ["pcgrad", "nashmtl"])
def test_mtl_optimizer_backward_then_step_is_the_large_batch_step(name):
    x, y = _data()
    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), METHODS[name]())
    opt.step(_losses(trunk, heads, x, y, 1.0 / B))
    big = [p.detach().clone() for p in trunk.parameters()]

    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), METHODS[name]())
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
    opt.step()
    for a, b in zip(big, trunk.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the losses"):
        opt.step()  # nothing accumulated any more


def test_accumulation_refuses_what_cannot_accumulate():
    x, y = _data()
    trunk, heads = _model()
    engine = mtgrad.GramianEngine(trunk)
    with pytest.raises(ValueError, match="Gramian-only engine"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), trunk.parameters(), engine=engine)
    engine.close()
    grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), trunk.parameters())
    with pytest.raises(TypeError, match="loss weighting"):
        mtgrad.apply_task_gradients(grads, mtgrad.UW(num_tasks=T))
    with pytest.raises(ValueError, match="tasks' gradients"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0)[:2], trunk.parameters(), into=grads)
    with pytest.raises(ValueError, match="other shared parameters"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), [trunk.weight], into=grads)


def test_accumulation_under_a_grad_scaler_matches_the_unscaled_large_batch():
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), mtgrad.NashMTL())
    big = _grads(trunk, heads)
    trunk, heads = _model()
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    grads = None
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), into=grads, scaler=scaler)
    mtgrad.apply_task_gradients(grads, mtgrad.NashMTL())
    scaler.unscale_(opt)
    for a, b in zip(big, _grads(trunk, heads)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_zero_grad_drops_what_backward_accumulated():
    x, y = _data()
    for method in (mtgrad.PCGrad(), mtgrad.UW(num_tasks=T)):
        trunk, heads = _model()
        opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), method)
        opt.backward(_losses(trunk, heads, x, y, 1.0 / B))
        opt.zero_grad()
        with pytest.raises(ValueError, match="needs the losses"):
            opt.step()
