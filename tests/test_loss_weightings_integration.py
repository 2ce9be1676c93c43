"""Loss weightings through ``mtgrad.backward`` and ``mtgrad.MTLOptimizer`` on a tiny 2-task model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mtgrad
from mtgrad.methods.dwa import DWA
from mtgrad.methods.famo import FAMO
from mtgrad.methods.gls import GLS
from mtgrad.methods.gradnorm import GradNorm
from mtgrad.methods.imtll import IMTLL
from mtgrad.methods.uw import UW

D64 = torch.float64


class TwoTask(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5))
        self.heads = nn.ModuleList([nn.Linear(5, 1), nn.Linear(5, 1)])
        self.double()

    def losses(self, x, ys) -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        return torch.stack([((head(h).squeeze(-1) - y) ** 2).mean() for head, y in zip(self.heads, ys)])


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=g, dtype=D64)
    return x, [torch.randn(8, generator=g, dtype=D64), 3.0 * torch.randn(8, generator=g, dtype=D64) + 1.0]


METHODS = {
    "uw": lambda model: UW(2, dtype=D64),
    "uw-libmtl": lambda model: UW(2, init=-0.5, dtype=D64),
    "imtll": lambda model: IMTLL(2, dtype=D64),
    "gls": lambda model: GLS(),
    "dwa": lambda model: DWA(window=1),
    "dwa-sliding": lambda model: DWA(window=1, sliding=True),
    "famo": lambda model: FAMO(2, dtype=D64),
    "gradnorm": lambda model: GradNorm(2, last_shared=model.trunk[-1].weight, alpha=1.5),
}


def learnable_state(method) -> list[torch.Tensor]:
    """The tensors a method learns, wherever they live."""
    if isinstance(method, FAMO):
        return [method.logits]
    if isinstance(method, GradNorm):
        return [method.weights]
    return method.parameters()


@pytest.mark.parametrize("name", list(METHODS))
def test_backward_writes_the_gradient_of_the_objective(name):
    model = TwoTask()
    method = METHODS[name](model)
    x, ys = batch(1)
    for step in range(3):  # later steps exercise the stateful rules (DWA windows, GradNorm w)
        model.zero_grad()
        for p in method.parameters():
            p.grad = None
        record = mtgrad.backward(model.losses(x, ys), model.trunk.parameters(), method)
        last = (x, ys)
        assert record.gramian is None and record.weights.dtype == torch.float64
        a = record.weights
        # Manual: Σ_i a_i ∇_θ L_i for every model parameter, shared and head alike.
        params = list(model.parameters())
        losses = model.losses(x, ys)
        per_task = [torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True) for i in range(2)]
        for k, p in enumerate(params):
            grads = [torch.zeros_like(p) if g[k] is None else g[k] for g in per_task]
            expected = a[0] * grads[0] + a[1] * grads[1]
            torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-14)
        if isinstance(method, FAMO):
            method.after_step(model.losses(x, ys).detach() * 0.9)
        x, ys = batch(2 + step)

    if isinstance(method, (UW, IMTLL)):  # their own parameters got the analytic gradient too
        s = method.parameters()[0].detach()
        L = model.losses(*last).detach()
        expected = 0.5 * (1 - torch.exp(-s) * L) if isinstance(method, UW) else torch.exp(s) * L - 1
        torch.testing.assert_close(method.parameters()[0].grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(METHODS))
def test_mtl_optimizer_trains_and_learns_the_weighting(name):
    model = TwoTask()
    method = METHODS[name](model)
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model.trunk.parameters(), method)
    if method.parameters():  # UW / IMTL-L: their s joined the optimizer as its own group
        assert any(p is method.parameters()[0] for g in opt.param_groups for p in g["params"])
    learned_before = [p.detach().clone() for p in learnable_state(method)]
    trunk_before = [p.detach().clone() for p in model.trunk.parameters()]
    first = None
    for step in range(6):
        x, ys = batch(10 + step % 2)
        opt.zero_grad()
        losses = model.losses(x, ys)
        first = losses.detach() if first is None else first
        record = opt.step(losses, closure=lambda: model.losses(x, ys))
        assert torch.isfinite(losses).all() and torch.isfinite(record.weights).all()
    for before, p in zip(trunk_before, model.trunk.parameters()):
        assert not torch.equal(before, p)
    for before, p in zip(learned_before, learnable_state(method)):
        assert not torch.equal(before, p.detach()), f"{name}: the weighting's state was not learned"
    if isinstance(method, DWA):
        assert not torch.allclose(record.weights, torch.ones(2, dtype=D64))
    x, ys = batch(10)
    assert model.losses(x, ys).sum() < first.sum() * 1.5  # sane, not diverging


@pytest.mark.parametrize("name", list(METHODS))
def test_interrupted_run_continues_identically(name):
    def train(model, opt, steps):
        out = []
        for step in steps:
            x, ys = batch(20 + step % 3)
            opt.zero_grad()
            out.append(opt.step(model.losses(x, ys), closure=lambda: model.losses(x, ys)).weights)
        return out

    def make():
        model = TwoTask()
        method = METHODS[name](model)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        return model, mtgrad.MTLOptimizer(opt, model.trunk.parameters(), method)

    model_a, opt_a = make()
    train(model_a, opt_a, range(4))
    saved_model = copy.deepcopy(model_a.state_dict())
    saved_opt = copy.deepcopy(opt_a.state_dict())
    rest_a = train(model_a, opt_a, range(4, 8))

    model_b, opt_b = make()
    train(model_b, opt_b, range(2))  # some other history, overwritten by the load
    model_b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved_opt)
    rest_b = train(model_b, opt_b, range(4, 8))

    for wa, wb in zip(rest_a, rest_b):
        assert torch.equal(wa, wb)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(learnable_state(opt_a.method), learnable_state(opt_b.method)):
        assert torch.equal(pa, pb)
