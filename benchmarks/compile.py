"""Compiled vs eager training steps (torch.compile, inductor) with each engine.

Model: trunk Linear 128→256→256 with ReLUs, T = 4 regression heads, batch 64, float32, one
thread. One step is ``zero_grad; forward; mtgrad.backward(losses, trunk, CAGrad(0.4), engine);
SGD step``, with the model eager or ``torch.compile(model)`` (the Gramian engine hooks the trunk
before compiling). Compilation happens in the untimed warm-up rounds; the table gives the median
step time over ``--rounds`` interleaved rounds and compiled ÷ eager per engine.

    python benchmarks/compile.py             # ~1 min (most of it compiling)
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import mtgrad
from _common import fmt_ms, fmt_ratio, interleaved, machine_line, markdown_table, median_ms, median_ratio, set_threads

ENGINES = ("loop", "batched", "gramian")


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(256, 1) for _ in range(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.stack([(h(z).squeeze(-1) - y[:, i]).pow(2).mean() for i, h in enumerate(self.heads)])


def _step(engine: str, compiled: bool, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    model = Model()
    hooked = mtgrad.GramianEngine(model.trunk) if engine == "gramian" else engine
    net = torch.compile(model) if compiled else model
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    method = mtgrad.CAGrad(c=0.4)
    trunk = list(model.trunk.parameters())

    def step() -> None:
        sgd.zero_grad()
        mtgrad.backward(net(x, y), trunk, method, engine=hooked)
        sgd.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    set_threads(1)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 128, generator=g), torch.randn(64, 4, generator=g)
    fns = {f"{e}-{'compiled' if c else 'eager'}": _step(e, c, x, y) for e in ENGINES for c in (False, True)}
    times = interleaved(fns, rounds=args.rounds, warmup=3)
    rows = []
    for e in ENGINES:
        eager, compiled = times[f"{e}-eager"], times[f"{e}-compiled"]
        rows.append([e, fmt_ms(median_ms(eager)), fmt_ms(median_ms(compiled)), fmt_ratio(median_ratio(compiled, eager))])
    print(f"CAGrad(c=0.4), batch 64, T = 4, float32, 1 thread; {machine_line()}")
    print(markdown_table(["engine", "eager (ms)", "compiled (ms)", "compiled ÷ eager"], rows))


if __name__ == "__main__":
    main()
