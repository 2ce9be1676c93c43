"""Gradient accumulation: four micro-batches give exactly the step on the whole batch.

    python docs/examples/accumulation.py      # CPU, a second

Each line printed is a claim of docs/accumulation.md, checked on a small float64 problem.
"""

from collections.abc import Callable

import torch
from torch import nn

import mtgrad

X = torch.randn(32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"trunk": nn.Linear(8, 16), "a": nn.Linear(16, 1), "b": nn.Linear(16, 1)}).double()


def task_losses(m: nn.ModuleDict, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
    z = torch.tanh(m["trunk"](x))
    # Each micro-batch's mean loss ÷ their number: the sums are the whole batch's mean losses.
    return [m["a"](z).pow(2).mean() / parts, (m["b"](z) - 1).pow(2).mean() / parts]


def accumulated(
    method: Callable[[], mtgrad.Method], parts: int, clip: float | None = None, steps: int = 1
) -> list[torch.Tensor]:
    """Parameters after ``steps`` steps, each on ``parts`` micro-batches through MTLOptimizer.backward."""
    m = model()
    weighting = method()
    learned = list(getattr(weighting, "parameters", list)())  # UW's log-variances learn too
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*m.parameters(), *learned], lr=0.1), m["trunk"].parameters(), weighting)
    for _ in range(steps):
        opt.zero_grad()
        for part in X.chunk(parts):
            opt.backward(task_losses(m, part, parts))
        if clip is None:
            opt.step()  # the method once, on the accumulated task gradients (or losses); then SGD
        else:
            opt.apply()  # the update in .grad, to clip before stepping
            nn.utils.clip_grad_norm_(m.parameters(), clip)
            opt.step()
    return [p.detach().clone() for p in [*m.parameters(), *learned]]


def per_micro_batch(method: Callable[[], mtgrad.Method], parts: int) -> list[torch.Tensor]:
    """Parameters after mtgrad.backward on every micro-batch (a surgery each), then one step."""
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.zero_grad()
    weighting = method()
    for part in X.chunk(parts):
        mtgrad.backward(task_losses(m, part, parts), m["trunk"].parameters(), weighting)
    opt.step()
    return [p.detach().clone() for p in m.parameters()]


def difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def relative(a: list[torch.Tensor], b: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    step = max((x - s).abs().max().item() for x, s in zip(b, start))
    return difference(a, b) / step


start = [p.detach().clone() for p in model().parameters()]

diff = difference(accumulated(lambda: mtgrad.CAGrad(0.4), 1), accumulated(lambda: mtgrad.CAGrad(0.4), 4))
print(f"4 micro-batches = the whole batch: {diff < 1e-12} (max abs difference {diff:.1e})")

off = relative(per_micro_batch(mtgrad.PCGrad, 4), accumulated(mtgrad.PCGrad, 1), start)
print(f"mtgrad.backward per micro-batch is not the whole-batch step: {off > 1e-3} (off by {off:.1%} of the step)")

diff = difference(accumulated(lambda: mtgrad.CAGrad(0.4), 1, clip=0.05), accumulated(lambda: mtgrad.CAGrad(0.4), 4, clip=0.05))
print(f"apply(), clip, step() on 4 micro-batches = on the whole batch: {diff < 1e-12} (max abs difference {diff:.1e})")

# Five steps: UW's log-variances move, and DWA's weights leave 1 after its first two.
for name, weighting in [("UW", lambda: mtgrad.UW(2)), ("DWA", lambda: mtgrad.DWA(window=1))]:
    diff = difference(accumulated(weighting, 1, steps=5), accumulated(weighting, 4, steps=5))
    print(f"{name} accumulates exactly (linear in the losses): {diff < 1e-12} (max abs difference {diff:.1e})")

try:
    accumulated(lambda: mtgrad.GLS(), 4)
except ValueError as error:  # the refusal, with its reason
    refused = "cannot accumulate it" in str(error)
    print(f"GLS is refused under accumulation: {refused} ({str(error)[:90]}…)")
else:
    print("GLS is refused under accumulation: False")
