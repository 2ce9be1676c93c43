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


def test_cagrad_fast_on_grouped_rows_equals_eq4_on_the_sampled_and_pseudo_task_gradients():
    # Independent route: build the |S| + 1 gradient rows of eq. (4) explicitly from the loop's
    # per-task gradients and run CAGrad's dual on them with the full-average centre.
    model, batch = make(T=6)
    fast = mtgrad.CAGradFast(c=0.5, num_gradients=3, generator=torch.Generator().manual_seed(3))
    probe = mtgrad.CAGradFast(c=0.5, num_gradients=3, generator=torch.Generator().manual_seed(3))
    sampled = probe.sample(6)
    rest = [j for j in range(6) if j not in sampled]
    record = mtgrad.grouped_backward(model, task_loss(model), batch, fast)
    blocks = loop_gradients(model, batch)
    J = torch.cat([b.flatten(1) for b in blocks], dim=1)
    rows = torch.cat([J[sampled], J[rest].mean(0, keepdim=True)])
    centre = torch.tensor([1 / 6] * len(sampled) + [len(rest) / 6], dtype=torch.float64)
    a = mtgrad.solvers.cagrad_weights(rows @ rows.T, 0.5, centre)
    want = a @ rows
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(record.weights @ J, want, rtol=1e-8, atol=1e-10)
    # Only the reduced rows' Gramian was formed: no T×T Gramian of the task gradients to report
    # (reporting the (|S|+1)² one as if it were crashed the trainer's diagnostics).
    assert record.gramian is None


def test_graddrop_on_grouped_rows_uses_the_per_task_blocks():
    model, batch = make()
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.GradDrop(generator=gen_a))
    want = mtgrad.GradDrop(generator=gen_b).aggregate_blocks(loop_gradients(model, batch))
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-12)


def test_loss_weighting_on_grouped_rows_backpropagates_its_objective():
    model, batch = make()
    uw = mtgrad.UW(num_tasks=4)
    record = mtgrad.grouped_backward(model, task_loss(model), batch, uw)
    assert record.gramian is None
    x, y = batch
    losses = ((model(x) - y) ** 2).mean(dim=(1, 2))
    objective, _ = uw.combine(losses)
    want = torch.autograd.grad(objective, list(model.parameters()))
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-12)


def test_grouped_backward_reuses_the_weights_between_updates():
    model, batch = make()
    reuse = mtgrad.Reuse(mtgrad.PCGrad(order="fixed"), every=2)
    first = mtgrad.grouped_backward(model, task_loss(model), batch, reuse)
    assert first.gramian is not None
    second = mtgrad.grouped_backward(model, task_loss(model), batch, reuse)
    assert second.gramian is None  # reused: no per-task Gramian formed
    torch.testing.assert_close(second.weights, first.weights, rtol=0, atol=0)
