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


class WithSpare(torch.nn.Module):
    """The grouped test model plus a layer the forward never calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.spare = net, torch.nn.Linear(3, 3).double()

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", [mtgrad.PCGrad(order="fixed"), mtgrad.GradDrop(), mtgrad.Mean()])
@pytest.mark.parametrize("shared", [None, ["net.0.weight", "spare.weight"]])
def test_a_parameter_no_loss_reaches_keeps_its_grad(method, shared):
    net, batch = make()
    model = WithSpare(net)
    model.spare.bias.grad = torch.full((3,), 7.0, dtype=torch.float64)
    torch.manual_seed(1)  # GradDrop draws its signs
    mtgrad.grouped_backward(model, task_loss(model), batch, method, shared=shared)
    assert model.spare.weight.grad is None
    torch.testing.assert_close(model.spare.bias.grad, torch.full((3,), 7.0, dtype=torch.float64))
    # The reached parameters get what the model without the spare layer gets.
    twin, _ = make()
    reached = None if shared is None else ["0.weight"]
    torch.manual_seed(1)
    mtgrad.grouped_backward(twin, task_loss(twin), batch, method, shared=reached)
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def test_a_zero_gradient_that_is_reached_is_still_written():
    # The spare layer enters every loss as 0 · w: an exact zero gradient, yet reached. It is
    # written (as zeros), not mistaken for an unreached parameter.
    net, batch = make()
    model = WithSpare(net)

    def touches_spare(params, rows):
        x, y = rows
        spare = 0.0 * (params["spare.weight"].sum() + params["spare.bias"].sum())
        return spare + ((functional_call(model, params, (x,)) - y) ** 2).mean()

    mtgrad.grouped_backward(model, touches_spare, batch, mtgrad.PCGrad())
    assert model.spare.weight.grad is not None and not bool(model.spare.weight.grad.any())
    assert model.spare.bias.grad is not None


def test_a_task_loss_that_ignores_params_is_refused():
    model, batch = make()

    def ignores(params, rows):
        x, y = rows
        return ((model(x) - y) ** 2).mean()  # the module's own parameters, not ``params``

    with pytest.raises(ValueError, match="no gradient path to the shared parameters"):
        mtgrad.grouped_backward(model, ignores, batch, mtgrad.PCGrad())
    assert all(p.grad is None for p in model.parameters())


def test_shared_as_a_single_string_is_refused():
    model, batch = make()
    with pytest.raises(TypeError, match=r"use \['0.weight'\]"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad(), shared="0.weight")


def test_dropout_without_randomness_names_the_argument():
    model, batch = make()
    model = torch.nn.Sequential(*model, torch.nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match="randomness='different'"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad())
    mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad(), randomness="different")


def test_the_reachability_check_leaves_the_random_streams_alone():
    # The extra forward that tells an unreached parameter from a zero gradient draws dropout
    # masks of its own; the caller's stream must continue as if it had not run.
    net, batch = make()
    dropped = torch.nn.Sequential(*net, torch.nn.Dropout(0.5))
    model = WithSpare(dropped)
    torch.manual_seed(3)
    mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad(), randomness="different")
    after_spare = torch.rand(1)
    twin = torch.nn.Sequential(*make()[0], torch.nn.Dropout(0.5))
    torch.manual_seed(3)
    mtgrad.grouped_backward(twin, task_loss(twin), batch, mtgrad.PCGrad(), randomness="different")
    assert torch.equal(after_spare, torch.rand(1))
    for p, q in zip(dropped.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def test_shared_naming_no_parameter_is_refused():
    model, batch = make()
    with pytest.raises(ValueError, match="shared names no parameter"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad(), shared=[])


def test_a_loss_weighting_with_dropout_names_the_randomness_argument():
    model, batch = make()
    model = torch.nn.Sequential(*model, torch.nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match="randomness='different'"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.UW(num_tasks=4))


def test_an_unknown_randomness_is_refused_up_front():
    model, batch = make()
    with pytest.raises(ValueError, match="randomness must be 'error', 'different' or 'same', got 'sometimes'"):
        mtgrad.grouped_backward(model, task_loss(model), batch, mtgrad.PCGrad(), randomness="sometimes")
