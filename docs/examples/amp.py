"""Mixed precision: a GradScaler does not change what the method sees; an overflow skips the step.

    python docs/examples/amp.py      # CPU, a few seconds
"""

import torch
from torch import nn

import mtgrad


def model() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"trunk": nn.Linear(8, 16), "a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})


def losses(m: nn.ModuleDict, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the forward in bf16, as in training
        z = torch.relu(m["trunk"](x))
        return [m["a"](z).float().pow(2).mean(), (m["b"](z).float() - 1).pow(2).mean()]


x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
records = {}
for name, scaler in [("no scaler", None), ("scale 2^16", torch.amp.GradScaler("cpu", init_scale=2.0**16))]:
    m = model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m["trunk"].parameters(), mtgrad.NashMTL(), scaler=scaler)
    opt.zero_grad()
    records[name] = opt.step(losses(m, x))
    print(f"{name:>10}: Nash-MTL weights {records[name].weights.tolist()}")
same = torch.allclose(records["no scaler"].weights, records["scale 2^16"].weights, rtol=1e-6)
print("same weights with and without the scaler:", same)

# An overflowing step: the scaler skips it and backs off; no parameter changes, no exception.
m = model()
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
opt = mtgrad.MTLOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m["trunk"].parameters(), mtgrad.PCGrad(), scaler=scaler)
before = [p.detach().clone() for p in m.parameters()]
opt.zero_grad()
bad = losses(m, x)
opt.step([bad[0] * 1e38, bad[1]])  # ×1e38, then ×2^16 by the scaler: inf in float32
unchanged = all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
print(f"overflow skipped: {unchanged}, scale backed off to {scaler.get_scale():g}")
