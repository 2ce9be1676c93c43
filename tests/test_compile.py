"""torch.compile (inductor): a compiled model with every engine, and the weights compiled whole.

The references are the same steps on an eager copy of the model; float32, so agreement is to
rounding (the compiled kernels reorder sums).
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from torch import nn

import mtgrad

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(
        not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")), reason="inductor on the CPU needs a C++ compiler"
    ),
]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return torch.stack([(h(z).squeeze(-1) - y[:, i]).pow(2).mean() for i, h in enumerate(self.heads)]), z


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def _train(engine: str, compiled: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = Model()
    gramian = mtgrad.GramianEngine(model.trunk) if engine == "gramian" else None  # hooks before compiling
    if compiled == "model":
        net = torch.compile(model)
    else:
        net = model
        if compiled == "trunk":
            model.trunk = torch.compile(model.trunk)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    method = mtgrad.CAGrad(c=0.4)
    for step in range(2):
        x, y = _data(step)
        sgd.zero_grad()
        losses, z = net(x, y)
        if engine == "representation":
            mtgrad.backward(losses, model.trunk.parameters(), method, representation=z)
        else:
            mtgrad.backward(losses, model.trunk.parameters(), method, engine=gramian or engine)
        sgd.step()
    if gramian is not None:
        assert gramian.last_fallback_numel == 0  # the Gramian came from the hooked layers, no J
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("engine", ["loop", "batched", "gramian"])
def test_a_compiled_model_gives_the_eager_step(engine):
    torch._dynamo.reset()
    for a, b in zip(_train(engine, "model"), _train(engine, "none")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_representation_with_a_compiled_trunk_gives_the_eager_step():
    torch._dynamo.reset()
    for a, b in zip(_train("representation", "trunk"), _train("representation", "none")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_representation_inside_the_compiled_region_is_refused_not_zero():
    # The compiled region computes the losses from Z internally: autograd sees no path from a loss
    # to the Z it returns, and zero representation gradients would silently drop every task.
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="torch.compile"):
        _train("representation", "model")


@pytest.mark.parametrize("name", ["pcgrad", "imtlg", "mean"])
def test_weights_compile_whole(name):
    torch._dynamo.reset()
    method = mtgrad.from_spec(name)
    J = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    G = J @ J.T
    compiled = torch.compile(lambda G: method.weights(G, validate=False), fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = compiled(G)
    if name != "pcgrad":  # PCGrad draws a task order per call
        torch.testing.assert_close(w, method.weights(G), rtol=1e-12, atol=1e-14)
    else:
        assert w.shape == (4,) and bool(torch.isfinite(w).all())


def test_solvers_take_the_branch_free_route_while_compiling(monkeypatch):
    from mtgrad.solvers import _common

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not _common._host_sync_is_free(torch.zeros(1))


def test_autocast_off_traces_in_a_full_graph():
    # mtgrad's arithmetic leaves the caller's autocast even inside a compiled region.
    from mtgrad._autocast import autocast_off

    def f(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with autocast_off():
                return x @ x, torch.is_autocast_enabled("cpu")

    torch._dynamo.reset()
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y, enabled = torch.compile(f, fullgraph=True)(x)
    assert y.dtype == torch.float32 and not enabled
    torch.testing.assert_close(y, x @ x)
