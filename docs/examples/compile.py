"""A torch.compile'd model with every engine gives the eager step.

    python docs/examples/compile.py      # CPU, ~20 s (inductor compiles)
"""

import warnings

import torch
from torch import nn

import mtgrad

warnings.filterwarnings("ignore")


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(32, 1), nn.Linear(32, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.stack([self.heads[0](z).pow(2).mean(), (self.heads[1](z) - 1).pow(2).mean()])


def step(engine: str, compiled: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = Model()
    hooked = mtgrad.GramianEngine(model.trunk) if engine == "gramian" else engine  # hook before compiling
    net = torch.compile(model) if compiled else model
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    mtgrad.backward(net(x), model.trunk.parameters(), mtgrad.MGDA(), engine=hooked)
    return [p.grad for p in model.parameters()]


for engine in ("loop", "batched", "gramian"):
    diff = max((a - b).abs().max().item() for a, b in zip(step(engine, True), step(engine, False)))
    print(f"{engine:>8}: compiled = eager: {diff < 1e-5} (max abs difference {diff:.1e})")
