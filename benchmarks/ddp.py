"""Data-parallel steps on 2 CPU ranks (gloo): step time and bytes communicated per step vs plain DDP.

Every rank trains its own copy of the same model per candidate, wrapped in
``DistributedDataParallel``: trunk Linear 256→512→512 with ReLUs (394,240 parameters), T = 4
linear regression heads (512→1, MSE), ``--batch`` rows per rank (64). One step is
``zero_grad; forward through the DDP wrapper; <candidate>; SGD step``:

* ``plain``           — ``sum(losses).backward()``: DDP's own all-reduce, the reference (1.00×);
* ``pcgrad-loop``, ``pcgrad-batched`` — ``mtgrad.backward(losses, trunk, PCGrad(), engine=...)``:
  the exact global step (per-task trunk gradients all-reduced, T × d numbers);
* ``pcgrad-gramian``  — the Gramian-only engine: each linear layer's inputs and output gradients
  all-gathered (B·(in + T·out) numbers per layer and rank), then one weighted backward;
* ``pcgrad-representation`` — ``representation=z``: the T × B × 512 representation gradients
  all-gathered;
* ``pcgrad-local``    — ``data_parallel=False``: surgery on each rank's own gradients, then DDP's
  average (an approximation; see ``docs/ddp.md`` for its deviation).

Bytes per step and rank: DDP's (counted by a communication hook on its gradient buckets) plus
mtgrad's own collectives (:func:`mtgrad.distributed.bytes_sent`). Times are rank 0's, medians over
``--rounds`` rounds, candidates interleaved in one random order that both ranks share.

    python benchmarks/ddp.py                 # ~1 min
    python benchmarks/ddp.py --rounds 40 --batch 256
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import mtgrad
import mtgrad.distributed
from _common import fmt_ms, fmt_ratio, interleaved, machine_line, markdown_table, median_ms, median_ratio, set_threads

TASKS = 4
CANDIDATES = ("plain", "pcgrad-loop", "pcgrad-batched", "pcgrad-gramian", "pcgrad-representation", "pcgrad-local")


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(TASKS))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return torch.stack([(h(z).squeeze(-1) - y[:, i]).pow(2).mean() for i, h in enumerate(self.heads)]), z


def _counting_hook(state, bucket):  # unannotated: DDP checks the annotations' objects, not strings
    state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


def _candidate(name: str, x: torch.Tensor, y: torch.Tensor, counter: dict):
    torch.manual_seed(0)
    model = Model()
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(counter, _counting_hook)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    method = mtgrad.PCGrad(generator=torch.Generator().manual_seed(0))
    engine = mtgrad.GramianEngine(model.trunk) if name == "pcgrad-gramian" else None
    trunk = list(model.trunk.parameters())

    def step() -> None:
        sgd.zero_grad()
        losses, z = ddp(x, y)
        if name == "plain":
            losses.sum().backward()
        elif name == "pcgrad-gramian":
            mtgrad.backward(losses, trunk, method, engine=engine, check_finite=False)
        elif name == "pcgrad-representation":
            mtgrad.backward(losses, trunk, method, representation=z, check_finite=False)
        elif name == "pcgrad-local":
            mtgrad.backward(losses, trunk, method, data_parallel=False, check_finite=False)
        else:
            mtgrad.backward(losses, trunk, method, engine=name.split("-")[1], check_finite=False)
        sgd.step()

    return step


def _rank(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    set_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # fmt: skip
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 256, generator=g)
    y = torch.randn(args.batch, TASKS, generator=g)
    counters = {name: {"bytes": 0} for name in CANDIDATES}
    steps = {name: _candidate(name, x, y, counters[name]) for name in CANDIDATES}
    traffic = {}
    for name, step in steps.items():  # one counted step each, outside the timing
        before_ddp, before_mtgrad = counters[name]["bytes"], mtgrad.distributed.bytes_sent()
        step()
        traffic[name] = (counters[name]["bytes"] - before_ddp, mtgrad.distributed.bytes_sent() - before_mtgrad)
    times = interleaved(steps, rounds=args.rounds, warmup=2, seed=0)  # same seed: same order on both ranks
    if rank == 0:
        torch.save({"times": times, "traffic": traffic}, out)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="rows per rank")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(_rank, args=(2, os.path.join(tmp, "store"), args, out), nprocs=2)
        result = torch.load(out)
    times, traffic = result["times"], result["traffic"]
    rows = []
    for name in CANDIDATES:
        ddp_bytes, own = traffic[name]
        rows.append([
            name, fmt_ms(median_ms(times[name])), fmt_ratio(median_ratio(times[name], times["plain"])),
            f"{ddp_bytes / 2**20:.2f}", f"{own / 2**20:.2f}", f"{(ddp_bytes + own) / traffic['plain'][0]:.2f}×",
        ])  # fmt: skip
    print(f"2 ranks (gloo), 1 thread each, batch {args.batch}/rank, T = {TASKS}; {machine_line()}")
    print(markdown_table(["step", "time", "÷ plain", "DDP MiB", "mtgrad MiB", "bytes ÷ plain"], rows))


if __name__ == "__main__":
    main()
