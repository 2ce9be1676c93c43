"""How gradients reach ``.grad``: as after ``loss.backward()``, whatever the engine.

Every call ends in one ``torch.autograd.backward`` on the leaves (``Replicas.deliver``): these are
the cases where writing ``.grad`` by hand differs from what AccumulateGrad does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgrad
import mtgrad.autogram

ENGINES = ["loop", "batched", "gramian"]


def _losses(trunk: nn.Module, heads, x: torch.Tensor) -> list[torch.Tensor]:
    z = trunk(x)
    return [head(z) for head in heads]


@pytest.mark.parametrize("engine", ENGINES)
def test_two_leaves_of_one_sum_get_their_own_gradient_tensors(engine):
    # A LoRA-style head z @ (W0 + dW): autograd returns one tensor for both leaves of the sum.
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    W0, dW = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
    eng = mtgrad.GramianEngine(trunk) if engine == "gramian" else engine
    x = torch.randn(5, 3)

    def losses():
        z = torch.tanh(trunk(x))
        return [(z @ (W0 + dW)).mean(), z.square().mean()]

    for _ in range(2):  # accumulated twice: 2× each gradient, not 3× through a shared tensor
        mtgrad.backward(losses(), trunk.parameters(), mtgrad.MGDA(), engine=eng)
    assert W0.grad is not dW.grad
    expected = torch.autograd.grad(losses()[0], W0)[0] * 2
    torch.testing.assert_close(W0.grad, expected)
    torch.testing.assert_close(dW.grad, expected)
    W0.grad.mul_(0.5)  # clipping one leaf's gradient leaves the other's alone
    torch.testing.assert_close(dW.grad, expected)


def test_sparse_head_gradients_are_accumulated_as_sparse():
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    table = nn.Embedding(10, 4, sparse=True)
    x, idx = torch.randn(6, 3), torch.tensor([1, 2, 2, 7, 0, 1])
    for _ in range(2):
        z = trunk(x)
        losses = [(z * table(idx)).sum(), z.square().mean()]
        mtgrad.backward(losses, trunk.parameters(), mtgrad.PCGrad())
    assert table.weight.grad.is_sparse
    z = trunk(x)
    dense = torch.autograd.grad((z * table.weight[idx]).sum(), table.weight)[0]
    torch.testing.assert_close(table.weight.grad.to_dense(), 2 * dense)


@pytest.mark.parametrize("engine", ENGINES)
def test_post_accumulate_grad_hooks_run_once_per_leaf(engine):
    torch.manual_seed(0)
    trunk, heads = nn.Linear(3, 4), [nn.Linear(4, 1), nn.Linear(4, 1)]
    eng = mtgrad.GramianEngine(trunk) if engine == "gramian" else engine
    seen: list[int] = []
    params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
    for k, p in enumerate(params):
        p.register_post_accumulate_grad_hook(lambda p, k=k: seen.append(k))
    losses = [out.mean() for out in _losses(trunk, heads, torch.randn(5, 3))]
    mtgrad.backward(losses, trunk.parameters(), mtgrad.CAGrad(0.4), engine=eng)
    assert sorted(seen) == list(range(len(params)))


def test_gradients_follow_the_parameters_memory_layout():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    heads = [nn.Linear(3, 1), nn.Linear(3, 1)]
    z = conv(torch.randn(2, 2, 5, 5).to(memory_format=torch.channels_last)).mean((2, 3))
    mtgrad.backward([h(z).mean() for h in heads], conv.parameters(), mtgrad.MGDA())
    assert conv.weight.grad.stride() == conv.weight.stride()


@pytest.mark.parametrize("engine", ["loop", "batched", "default"])
def test_tensor_hooks_apply_once_as_with_loss_backward(engine):
    def run(use_mtgrad: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        trunk, heads = nn.Linear(3, 4), [nn.Linear(4, 1), nn.Linear(4, 1)]
        trunk.weight.register_hook(lambda g: 2 * g)
        heads[0].weight.register_hook(lambda g: 3 * g)
        if engine == "default":  # the module: mtgrad keeps the loop engine for hooked parameters
            mtgrad.autogram.engine_for(trunk)
        losses = [out.mean() for out in _losses(trunk, heads, torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))]
        if use_mtgrad and engine == "default":
            mtgrad.backward(losses, trunk, mtgrad.Sum())
            assert mtgrad.autogram.engine_for(trunk, create=False).last_num_calls == 0
        elif use_mtgrad:
            mtgrad.backward(losses, trunk.parameters(), mtgrad.Sum(), engine=engine)
        else:
            sum(losses).backward()
        return [trunk.weight.grad, heads[0].weight.grad]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b)


def test_the_gramian_engine_refuses_tensor_hooks_on_shared_parameters():
    # It never forms the per-task gradients a hook would transform: its weights would differ.
    torch.manual_seed(0)
    trunk, heads = nn.Linear(3, 4), [nn.Linear(4, 1), nn.Linear(4, 1)]
    trunk.weight.register_hook(lambda g: 2 * g)
    engine = mtgrad.GramianEngine(trunk)
    losses = [out.mean() for out in _losses(trunk, heads, torch.randn(5, 3))]
    with pytest.raises(ValueError, match=r"shared_params \[0\] have tensor hooks"):
        mtgrad.backward(losses, trunk.parameters(), mtgrad.MGDA(), engine=engine)
    assert all(p.grad is None for p in [*trunk.parameters(), *(q for h in heads for q in h.parameters())])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", [mtgrad.PCGrad, mtgrad.Mean], ids=["pcgrad", "mean"])
def test_a_shared_parameter_no_loss_reaches_keeps_its_grad(engine, method):
    # As after sum(losses).backward(): None stays None (an optimizer then skips the parameter
    # instead of stepping on zeros: momentum, weight decay) and an earlier value is untouched.
    torch.manual_seed(0)
    trunk = nn.ModuleDict({"used": nn.Linear(3, 4), "idle": nn.Linear(3, 4)})
    eng = mtgrad.GramianEngine(trunk) if engine == "gramian" else engine
    x = torch.randn(5, 3)
    trunk["idle"].bias.grad = torch.ones(4)

    def losses():
        z = torch.tanh(trunk["used"](x))
        return [z[:, 0].mean(), z[:, 1].square().mean()]

    mtgrad.backward(losses(), list(trunk.parameters()), method(), engine=eng)
    assert trunk["idle"].weight.grad is None
    assert torch.equal(trunk["idle"].bias.grad, torch.ones(4))
    assert all(p.grad is not None for p in trunk["used"].parameters())


def test_accumulated_task_gradients_leave_an_unreached_parameter_alone():
    torch.manual_seed(0)
    x = torch.randn(5, 3)

    def step(trunk, names):
        grads = None
        for name in names:
            z = torch.tanh(trunk[name](x))
            grads = mtgrad.accumulate_task_gradients([z[:, 0].mean(), z[:, 1].mean()], trunk.parameters(), into=grads)
        mtgrad.apply_task_gradients(grads, mtgrad.PCGrad())
        return [p.grad is None for p in trunk.parameters()]

    trunk = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(3, 4)})
    assert step(trunk, ["a", "a"]) == [False, False, True, True]
    trunk = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(3, 4)})
    assert step(trunk, ["a", "b"]) == [False, False, False, False]  # reached by a later micro-batch
