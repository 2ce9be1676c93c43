"""PCGrad on 2 CPU processes with DistributedDataParallel: the exact global-batch step.

    python docs/examples/ddp.py        # spawns 2 gloo ranks on this machine, ~5 s

With torchrun instead, drop ``main`` and call ``train(rank, world)`` after
``dist.init_process_group("gloo" or "nccl")``.
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mtgrad


class TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(32, 1), nn.Linear(32, 1)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.stack([(head(z).squeeze(-1) - y[:, i]).pow(2).mean() for i, head in enumerate(self.heads)])


def train(rank: int, world: int) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    model = TwoTasks()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.trunk.parameters(), mtgrad.PCGrad())
    data = torch.Generator().manual_seed(1234 + rank)  # each rank its own shard of the batch
    for step in range(20):
        x = torch.randn(32, 10, generator=data)
        y = torch.stack([x[:, 0], -x[:, 0] + x[:, 1]], dim=1)
        opt.zero_grad()
        losses = ddp(x, y)  # forward through the wrapper
        record = opt.step(losses)  # PCGrad on the task gradients of the global batch (2 × 32 rows)
        if rank == 0 and step % 5 == 0:
            print(f"step {step:2d}  losses {[round(v, 4) for v in losses.tolist()]}  cos {record.diagnostics().cosine[0, 1].item():+.3f}")
    return [p.detach() for p in model.parameters()]


def _rank(rank: int, world: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    params = train(rank, world)
    # Every rank holds the same parameters: gather rank 1's and compare on rank 0.
    flat = torch.cat([p.flatten() for p in params])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    if rank == 0:
        print("ranks agree:", all(torch.equal(copies[0], c) for c in copies))
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(2, os.path.join(tmp, "store")), nprocs=2)


if __name__ == "__main__":
    main()
