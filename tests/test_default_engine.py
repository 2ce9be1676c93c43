"""The engine ``mtgrad.backward`` and ``MTLOptimizer`` choose when none is named.

Given the shared module, the Gramian-only engine (installed on the module at the first call, so
from the first forward after it) wherever the method can use it; the loop engine otherwise. The
reference is the loop engine: the same steps, the same parameters to rounding.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtgrad
from mtgrad.autogram import engine_for
from mtgrad.backward import GRAMIAN_ENGINE_WORK_SHARE

F64 = torch.float64


class Model(nn.Module):
    def __init__(self, T: int = 3) -> None:
        super().__init__()
        # Few rows (7) next to the linear layers' widths: the engine's estimated work is below the loop's.
        self.trunk = nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 128), nn.LayerNorm(128), nn.Tanh(),
            nn.Linear(128, 64), nn.Tanh(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(64, 1) for _ in range(T))

    def losses(self, x: Tensor, ys: Tensor) -> list[Tensor]:
        z = self.trunk(x)
        return [F.mse_loss(h(z).squeeze(-1), ys[:, i]) for i, h in enumerate(self.heads)]


def data(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(7, 2, 6, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)


def train(shared: str, method, steps: int = 3, **kwargs) -> tuple[Model, list[mtgrad.BackwardResult]]:
    torch.manual_seed(0)
    model = Model().double()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for step in range(steps):
        sgd.zero_grad()
        losses = model.losses(*data(step))
        target = model.trunk if shared == "module" else model.trunk.parameters()
        records.append(mtgrad.backward(losses, target, method(), **kwargs))
        sgd.step()
    return model, records


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", [lambda: mtgrad.PCGrad(order="fixed"), lambda: mtgrad.CAGrad(0.4), mtgrad.MGDA])
def test_a_module_gets_the_gramian_engine_from_its_second_step_with_the_same_steps(method):
    model, _ = train("module", method)
    engine = engine_for(model.trunk, create=False)
    assert isinstance(engine, mtgrad.GramianEngine)
    assert engine.last_num_calls == 4  # the conv, two linear layers, the LayerNorm: its last step ran on it
    assert engine.num_recorded == 0  # consumed
    reference, _ = train("params", method, engine="loop")
    assert_same_parameters(model, reference)


def test_the_choice_follows_the_estimated_work():
    torch.manual_seed(0)
    model = Model().double()
    engine = engine_for(model.trunk)
    model.losses(*data(0))
    loop, routes = engine.estimated_costs(3)
    assert routes < GRAMIAN_ENGINE_WORK_SHARE * loop
    # A convolution's rows are batch × positions: its Gramian route is its gradients, no saving.
    conv = nn.Sequential(nn.Conv1d(2, 8, 3), nn.Tanh(), nn.Conv1d(8, 8, 3), nn.Flatten()).double()
    x = torch.randn(7, 2, 9, dtype=F64)
    for step in range(2):
        z = conv(x)
        record = mtgrad.backward([z.sum(), z.square().sum(), z.sin().sum()], conv, mtgrad.MGDA())
    engine = engine_for(conv, create=False)
    assert engine.last_num_calls == 0 and engine.num_recorded == 0  # the loop engine ran; records dropped
    z = conv(x)
    loop, routes = engine.estimated_costs(3)
    assert routes >= loop
    ref = mtgrad.backward([z.sum(), z.square().sum(), z.sin().sum()], conv.parameters(), mtgrad.MGDA(), engine="loop")
    torch.testing.assert_close(record.gramian, ref.gramian)


def test_parameters_alone_keep_the_loop_engine():
    model, _ = train("params", mtgrad.MGDA)
    assert engine_for(model.trunk, create=False) is None


def test_methods_the_gramian_engine_cannot_serve_use_the_loop_engine():
    model, records = train("module", lambda: mtgrad.GradDrop(generator=torch.Generator().manual_seed(0)))
    engine = engine_for(model.trunk, create=False)
    assert engine is not None and engine.last_num_calls == 0 and engine.num_recorded == 0
    reference, _ = train("params", lambda: mtgrad.GradDrop(generator=torch.Generator().manual_seed(0)), engine="loop")
    assert_same_parameters(model, reference)


def test_a_module_without_a_supported_layer_keeps_the_loop_engine():
    trunk = nn.Sequential(nn.PReLU(), nn.Tanh()).double()
    x = torch.randn(5, 3, dtype=F64)
    for _ in range(2):
        z = trunk(x)
        mtgrad.backward([z.sum(), z.square().sum()], trunk, mtgrad.MGDA())
    assert engine_for(trunk, create=False) is None


def test_an_explicit_engine_is_respected():
    model, _ = train("module", mtgrad.MGDA, engine="batched")
    engine = engine_for(model.trunk, create=False)
    assert engine is None  # nothing installed when an engine is named


def test_forwards_no_backward_consumes_are_bounded():
    model, _ = train("module", mtgrad.MGDA, steps=2)
    engine = engine_for(model.trunk, create=False)
    assert engine.max_records == 1024  # from installation on; a step raises it to 4× its calls
    for step in range(300):  # an evaluation loop with grad enabled: 4 calls each
        model.losses(*data(step))
    assert engine.num_recorded == 1024


def test_a_step_that_names_another_engine_still_drops_the_records():
    model, _ = train("module", mtgrad.MGDA, steps=1)
    engine = engine_for(model.trunk, create=False)
    for step in range(3):
        mtgrad.backward(model.losses(*data(step)), model.trunk, mtgrad.MGDA(), engine="loop")
        assert engine.num_recorded == 0


def test_the_optimizer_installs_the_engine_before_its_first_step():
    torch.manual_seed(0)
    model = Model().double()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.trunk, mtgrad.CAGrad(0.4))
    engine = engine_for(model.trunk, create=False)
    assert engine is not None
    for step in range(2):
        opt.zero_grad()
        opt.step(model.losses(*data(step)))
        assert engine.last_num_calls == 4
    reference, _ = train("params", lambda: mtgrad.CAGrad(0.4), steps=2, engine="loop")
    assert_same_parameters(model, reference)


def test_micro_batches_through_the_optimizer_drop_their_records():
    torch.manual_seed(0)
    model = Model().double()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.trunk, mtgrad.MGDA())
    opt.backward(model.losses(*data(0)))
    assert engine_for(model.trunk, create=False).num_recorded == 0
    opt.step(model.losses(*data(1)))


def test_a_module_with_its_engine_saves_and_copies_whole():
    model, _ = train("module", mtgrad.MGDA, steps=2)
    model.losses(*data(5))  # records of a forward: not saved
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for clone in (loaded, copy.deepcopy(model)):
        engine = engine_for(clone.trunk, create=False)
        assert engine is not None and engine.num_recorded == 0
        assert all(any(layer is m for m in clone.trunk.modules()) for layer in engine.layers)  # hooks its own layers
        losses = clone.losses(*data(6))
        assert engine.num_recorded == 4
        mtgrad.backward(losses, clone.trunk, mtgrad.MGDA())
        assert engine.last_num_calls == 4
