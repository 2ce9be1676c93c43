"""Benchmark architectures: output shapes, the shared/task parameter split, gradient isolation,
and that ``mtgrad.backward`` runs on each (also with ``representation=`` where exposed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgrad
from mtgrad.bench.models import (
    MTAN,
    CrossStitch,
    CrossStitchUnit,
    HardParameterSharing,
    MMoE,
    RoutingNetwork,
    cross_stitch_convnet,
    cross_stitch_mlp,
    mlp_hard_sharing,
    multimnist_lenet,
)

OUT = (10, 3, 1)  # three tasks: 10-way classification, 3-way classification, a regression


def _image(channels: int = 1, size: int = 28, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, size, size)


# name -> (model factory, input factory, expected output widths)
CASES = {
    "lenet": (lambda: multimnist_lenet(num_tasks=2), lambda: _image(), (10, 10)),
    "mlp_hps": (lambda: mlp_hard_sharing(20, OUT, hidden=(32, 16), head_hidden=(8,)), lambda: torch.randn(5, 20), OUT),
    "mtan28": (lambda: MTAN(1, OUT), lambda: _image(1, 28), OUT),
    "mtan32": (lambda: MTAN(3, OUT[:2]), lambda: _image(3, 32), OUT[:2]),
    "cross_stitch_conv": (lambda: cross_stitch_convnet(3, OUT), lambda: _image(3, 32), OUT),
    "cross_stitch_mlp": (lambda: cross_stitch_mlp(12, OUT, hidden=(16, 16, 8)), lambda: torch.randn(5, 3, 4), OUT),
    "routing": (
        lambda: RoutingNetwork(20, OUT, hidden=16, num_layers=3, num_blocks=4),
        lambda: torch.randn(5, 20),
        OUT,
    ),
    "routing_images": (lambda: RoutingNetwork(28 * 28, OUT[:2]), lambda: _image(), OUT[:2]),
    "mmoe": (lambda: MMoE(20, OUT), lambda: torch.randn(5, 20), OUT),
}


def _build(name: str):
    make_model, make_input, widths = CASES[name]
    torch.manual_seed(0)
    return make_model(), make_input(), widths


def _losses(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(out**2).mean() + out.mean() for out in outputs]


@pytest.mark.parametrize("name", CASES)
def test_one_output_per_task_with_the_right_shape(name):
    model, x, widths = _build(name)
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == model.num_tasks == len(widths)
    for out, width in zip(outputs, widths):
        assert out.shape == (x.shape[0], width)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CASES)
def test_shared_and_task_parameters_partition_the_model(name):
    model, _, _ = _build(name)
    groups = [list(model.shared_parameters())] + [list(model.task_parameters(i)) for i in range(model.num_tasks)]
    assert all(groups), "every group (shared, each task) has parameters"
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)), "no parameter is in two groups (or twice in one)"
    assert set(ids) == {id(p) for p in model.parameters()}, "every parameter is in a group"


@pytest.mark.parametrize("name", list(CASES))
def test_a_task_loss_has_no_gradient_on_other_tasks_parameters(name):
    model, x, _ = _build(name)
    losses = _losses(model(x))
    for s, loss in enumerate(losses):
        for t in range(model.num_tasks):
            params = list(model.task_parameters(t))
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            if t == s:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or not g.any() for g in grads), f"task {s}'s loss reaches task {t}"


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda a: cross_stitch_convnet(3, OUT, alpha_self=a), torch.randn(4, 3, 32, 32)),
        (lambda a: cross_stitch_mlp(12, OUT, alpha_self=a), torch.randn(4, 12)),
    ],
    ids=["conv", "mlp"],
)
def test_cross_stitch_gradients_cross_columns_only_through_the_units(make, x):
    torch.manual_seed(0)
    identity, mixed = make(1.0), make(0.9)
    for model, isolated in [(identity, True), (mixed, False)]:
        losses = _losses(model(x))
        for s, loss in enumerate(losses):
            for t in range(model.num_tasks):
                if t == s:
                    continue
                head = torch.autograd.grad(
                    loss, list(model.task_heads[t].parameters()), retain_graph=True, allow_unused=True
                )
                assert all(g is None or not g.any() for g in head), "heads are reached by their own task only"
                column = torch.autograd.grad(
                    loss, list(model.columns[t].parameters()), retain_graph=True, allow_unused=True
                )
                reached = any(g is not None and g.any() for g in column)
                assert reached != isolated  # α = I isolates the columns; the default init mixes them


def test_cross_stitch_unit_init_and_mixing():
    unit = CrossStitchUnit(3, alpha_self=0.8)
    assert torch.allclose(unit.alpha.sum(1), torch.ones(3))
    assert torch.allclose(unit.alpha.diagonal(), torch.full((3,), 0.8))
    xs = [torch.full((2, 4), float(v)) for v in (1, 2, 3)]
    out = unit(xs)
    assert torch.allclose(out[0], torch.full((2, 4), 0.8 * 1 + 0.1 * 2 + 0.1 * 3))
    assert torch.equal(CrossStitchUnit(1).alpha, torch.ones(1, 1))
    with pytest.raises(ValueError, match="expected 3 task activations"):
        unit(xs[:2])


@pytest.mark.parametrize("name", CASES)
def test_mtgrad_backward_with_pcgrad_fills_the_shared_gradients(name):
    model, x, _ = _build(name)
    shared = list(model.shared_parameters())
    record = mtgrad.backward(_losses(model(x)), model.shared_parameters(), mtgrad.PCGrad())
    assert record.gramian.shape == (model.num_tasks, model.num_tasks)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in shared)
    assert any(p.grad.abs().sum() > 0 for p in shared)
    for t in range(model.num_tasks):  # the task-specific parameters get their own task's gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task_parameters(t))


def _hps_representation(model, x):
    z = model.features(x)
    return z, model.heads(z)


def _mmoe_representation(model, x):
    z = model.features(x)
    return z, model.heads(z, x)


@pytest.mark.parametrize(
    "name, split", [("lenet", _hps_representation), ("mlp_hps", _hps_representation), ("mmoe", _mmoe_representation)]
)
def test_representation_backward_matches_the_direct_gradient_for_mean_weighting(name, split):
    model, x, _ = _build(name)
    z, outputs = split(model, x)
    assert all(torch.equal(a, b) for a, b in zip(outputs, model(x)))  # features + heads = forward
    # With the Mean weighting surgery is linear, so both routes give ∇_θ mean_i L_i exactly.
    mtgrad.backward(_losses(outputs), model.shared_parameters(), mtgrad.Mean(), representation=z)
    via_z = [p.grad.clone() for p in model.shared_parameters()]
    model.zero_grad()
    mtgrad.backward(_losses(model(x)), model.shared_parameters(), mtgrad.Mean())
    for a, p in zip(via_z, model.shared_parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    model.zero_grad()
    z, outputs = split(model, x)
    record = mtgrad.backward(_losses(outputs), model.shared_parameters(), mtgrad.PCGrad(), representation=z)
    assert record.gramian.shape == (model.num_tasks, model.num_tasks)
    assert all(p.grad is not None for p in model.shared_parameters())


def test_routing_weights_are_per_task_softmaxes():
    model = RoutingNetwork(8, (2, 2, 2), hidden=4, num_layers=2, num_blocks=5)
    w = model.routing_weights()
    assert w.shape == (3, 2, 5)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2))


def test_mmoe_gates_are_per_task_softmaxes():
    model = MMoE(6, (1, 1), num_experts=3)
    g = model.gate_weights(torch.randn(4, 6))
    assert g.shape == (2, 4, 3)
    assert torch.allclose(g.sum(-1), torch.ones(2, 4))


def test_errors_name_the_problem():
    trunk = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="at least one task"):
        HardParameterSharing(trunk, [])
    with pytest.raises(ValueError, match="belongs to both shared and task 0"):
        HardParameterSharing(trunk, [trunk])
    head = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="belongs to both task 0 and task 1"):
        HardParameterSharing(trunk, [head, head])
    with pytest.raises(IndexError, match="task index 2 out of range"):
        list(HardParameterSharing(trunk, [nn.Linear(4, 1), nn.Linear(4, 1)]).task_parameters(2))
    with pytest.raises(ValueError, match="same non-zero number of layers"):
        CrossStitch(list, [nn.Linear(4, 1)])
    with pytest.raises(ValueError, match="alpha_self"):
        CrossStitchUnit(2, alpha_self=1.5)
