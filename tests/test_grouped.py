"""Grouped rows: per-task gradients from each task's own rows equal a per-task autograd loop."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import mtgrad


def make(T: int = 4, rows: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5 + T, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).double()
    obs = torch.randn(T, rows, 5, dtype=torch.float64)
    onehot = torch.eye(T, dtype=torch.float64)[:, None, :].expand(T, rows, T)
    x = torch.cat([obs, onehot], dim=-1)
    y = torch.randn(T, rows, 2, dtype=torch.float64)
    return model, (x, y)


def task_loss(model):
    def loss(params, rows):
        x, y = rows
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return loss


def loop_gradients(model, batch):
    x, y = batch
    rows = []
    for t in range(x.shape[0]):
        L = ((model(x[t]) - y[t]) ** 2).mean()
        rows.append(torch.autograd.grad(L, list(model.parameters())))
    return [torch.stack([r[k] for r in rows]) for k in range(len(rows[0]))]


def test_grouped_gradients_equal_per_task_autograd():
    model, batch = make()
    losses, grads = mtgrad.grouped_task_gradients(model, task_loss(model), batch)
    for got, want in zip(grads.values(), loop_gradients(model, batch)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    x, y = batch
    torch.testing.assert_close(losses, ((model(x) - y) ** 2).mean(dim=(1, 2)))


@pytest.mark.parametrize("method", [mtgrad.PCGrad(order="fixed"), mtgrad.CAGrad(0.9), mtgrad.MGDA()])
def test_grouped_backward_writes_the_aggregate(method):
    model, batch = make()
    record = mtgrad.grouped_backward(model, task_loss(model), batch, method)
    blocks = loop_gradients(model, batch)
    G = sum(b.flatten(1) @ b.flatten(1).T for b in blocks)
    torch.testing.assert_close(record.gramian, G, rtol=1e-10, atol=1e-12)
    w = method.weights(G)
    for p, b in zip(model.parameters(), blocks):
        torch.testing.assert_close(p.grad, torch.tensordot(w, b, dims=1), rtol=1e-9, atol=1e-12)


def test_non_shared_parameters_get_the_plain_sum():
    model, batch = make()
    mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.CAGrad(0.5), shared=["0.weight", "0.bias"])
    blocks = loop_gradients(model, batch)
    torch.testing.assert_close(model[2].weight.grad, blocks[2].sum(0))
    with pytest.raises(ValueError, match="not trainable parameters"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.Mean(), shared=["nope"])


def test_batch_needs_the_task_dimension_first():
    model, (x, y) = make()
    with pytest.raises(ValueError, match="leading dimension"):
        mtgrad.grouped_task_gradients(model, task_loss(model), (x, y[:2]))
