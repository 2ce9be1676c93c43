"""Gradient accumulation: four micro-batches give exactly the step on the whole batch.

    python docs/examples/accumulation.py      # CPU, a second
"""

import torch
from torch import nn

import mtgrad


def run(micro_batches: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    m = nn.ModuleDict({"trunk": nn.Linear(8, 16), "a": nn.Linear(16, 1), "b": nn.Linear(16, 1)}).double()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m["trunk"].parameters(), mtgrad.CAGrad(0.4))
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    opt.zero_grad()
    for part in x.chunk(micro_batches):
        z = torch.tanh(m["trunk"](part))
        # Each micro-batch's mean loss ÷ their number: the sums are the whole batch's mean losses.
        opt.backward([m["a"](z).pow(2).mean() / micro_batches, (m["b"](z) - 1).pow(2).mean() / micro_batches])
    opt.step()  # CAGrad once, on the accumulated per-task gradients
    return [p.detach() for p in m.parameters()]


whole, accumulated = run(1), run(4)
diff = max((a - b).abs().max().item() for a, b in zip(whole, accumulated))
print(f"4 micro-batches = the whole batch: {diff < 1e-12} (max abs difference {diff:.1e})")
