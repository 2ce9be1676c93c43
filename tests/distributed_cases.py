"""Training runs shared by the data-parallel tests: one code path for a rank and for the whole batch.

``run_case`` trains a small float64 multi-task model for a few SGD steps with one method and one
entry point of mtgrad, on the rows ``rows`` of a fixed global batch. Called by each of W ranks
on its slice (inside ``DistributedDataParallel`` where the entry point forwards through a
module), it must give the parameters that one process gets on all the rows.
"""

from __future__ import annotations

import datetime
import os
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

import mtgrad
from mtgrad.autogram import engine_for

TASKS = 3
GLOBAL_BATCH = 8
STEPS = 3
ENTRIES = ("loop", "batched", "gramian", "default", "representation", "grouped", "accumulate", "optimizer")
METHODS: dict[str, Callable[[int], mtgrad.Method]] = {
    # Rank 1 gets another seed: the ranks must still agree on PCGrad's task order.
    "pcgrad": lambda seed: mtgrad.PCGrad(generator=torch.Generator().manual_seed(seed)),
    "cagrad": lambda seed: mtgrad.CAGrad(c=0.4),
    "mgda": lambda seed: mtgrad.MGDA(),
    # Its weights read the losses: they must be the global batch's (averaged over ranks).
    "mgda-loss": lambda seed: mtgrad.MGDA(normalization="loss"),
    # Random draws of their own: one sampled task + the pseudo-task; GradDrop's sign masks.
    "cagradfast": lambda seed: mtgrad.CAGradFast(c=0.4, num_gradients=2, generator=torch.Generator().manual_seed(seed)),
    "graddrop": lambda seed: mtgrad.GradDrop(generator=torch.Generator().manual_seed(seed)),
}
#: Entry points a method cannot use (a Jacobian aggregator needs the gradients themselves).
UNSUPPORTED = {("graddrop", "gramian")}


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A convolution and a LayerNorm too: the Gramian engine's block pieces (averaged over the
        # ranks) beside the linear layers' rows (gathered).
        self.trunk = nn.Sequential(
            nn.Linear(5, 8), nn.Tanh(), nn.Unflatten(1, (2, 4)), nn.Conv1d(2, 2, 2, padding=1), nn.Flatten(),
            nn.LayerNorm(10), nn.Linear(10, 8), nn.Tanh(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(TASKS))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        z = self.trunk(x)
        losses = torch.stack([(head(z).squeeze(-1) - y[:, i]).pow(2).mean() for i, head in enumerate(self.heads)])
        return losses, z


def make_model() -> Model:
    torch.manual_seed(0)
    return Model().double()


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 5, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(x @ torch.randn(5, generator=g, dtype=torch.float64) + i) for i in range(TASKS)], 1)
    return x, y


def grouped_loss(model: Model) -> Callable[[dict[str, Tensor], tuple[Tensor, Tensor, Tensor]], Tensor]:
    def task_loss(params: dict[str, Tensor], rows: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, y, onehot = rows  # this task's rows; onehot (T,) picks its head and target
        losses, _ = torch.func.functional_call(model, params, (x, y))
        return (losses * onehot).sum()

    return task_loss


def run_case(
    method_name: str,
    entry: str,
    rows: slice,
    seed: int,
    wrap: Callable[[Model], nn.Module],
    data_parallel: bool | None = None,
) -> tuple[list[Tensor], list[Tensor | None]]:
    """The parameters after ``STEPS`` SGD steps on ``rows`` of each step's global batch, and
    each step's recorded Gramian (the weights alone would not show a wrong scale of G)."""
    model = make_model()
    net = wrap(model)
    method = METHODS[method_name](seed)
    sgd = torch.optim.SGD(model.parameters(), lr=0.3)
    engine = mtgrad.GramianEngine(model.trunk) if entry == "gramian" else None
    if entry == "default":
        engine_for(model.trunk)
    opt = mtgrad.MTLOptimizer(sgd, model.trunk.parameters(), method) if entry == "optimizer" else None
    gramians: list[Tensor | None] = []
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x[rows], y[rows]
        sgd.zero_grad()
        if entry == "grouped":
            # Every task owns all the rows here, with a one-hot picking its loss.
            onehot = torch.eye(TASKS, dtype=torch.float64)
            grouped = (x.expand(TASKS, *x.shape), y.expand(TASKS, *y.shape), onehot)
            trunk_names = [n for n, _ in model.named_parameters() if n.startswith("trunk")]
            record = mtgrad.grouped_backward(model, grouped_loss(model), grouped, method, shared=trunk_names)
        elif entry == "accumulate":
            # Two micro-batches; under DDP the first forward runs in no_sync(), as DDP recommends.
            half = x.shape[0] // 2
            grads = None
            for k, part in enumerate((slice(0, half), slice(half, None))):
                ctx = net.no_sync() if k == 0 and hasattr(net, "no_sync") else _nothing()
                with ctx:
                    losses, _ = net(x[part], y[part])
                    grads = mtgrad.accumulate_task_gradients(losses / 2, model.trunk.parameters(), into=grads)
            record = mtgrad.apply_task_gradients(grads, method)
        elif entry == "optimizer":
            half = x.shape[0] // 2
            losses, _ = net(x[:half], y[:half])  # outside no_sync: zeros reach DDP for the trunk
            opt.backward(losses / 2)
            losses, _ = net(x[half:], y[half:])
            gramians.append(opt.step(losses / 2).gramian)
            continue
        else:
            losses, z = net(x, y)
            kwargs: dict = {"data_parallel": data_parallel}
            shared: nn.Module | list[Tensor] = list(model.trunk.parameters())
            if entry == "gramian":
                kwargs["engine"] = engine
            elif entry == "representation":
                kwargs["representation"] = z
            elif entry == "default":
                # The module, no engine named; installed before the first forward so that it could
                # serve: under data parallelism every rank must still take the same engine.
                shared = model.trunk
            else:
                kwargs["engine"] = entry
            record = mtgrad.backward(losses, shared, method, **kwargs)
        gramians.append(record.gramian)
        sgd.step()
    return [p.detach().clone() for p in model.parameters()], gramians


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def worker(rank: int, world: int, store: str, out_dir: str, cases: list[tuple[str, str, str]]) -> None:
    """One rank: every case in ``cases`` (method, entry, mode); results saved to ``out_dir``."""
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
        )
        per_rank = GLOBAL_BATCH // world
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        results = {}
        for method_name, entry, mode in cases:
            if mode == "refusals":
                results[(method_name, entry, mode)] = refusals(rank)
                continue
            def wrap(model: Model) -> nn.Module:
                if entry == "grouped":
                    return model  # called functionally: no DDP wrapper involved
                return nn.parallel.DistributedDataParallel(model)

            # "local": a rank-local surgery, then DDP's average (only for backward's entries).
            dp = False if mode == "local" else None
            params = run_case(method_name, entry, rows, seed=7 + rank, wrap=wrap, data_parallel=dp)
            results[(method_name, entry, mode)] = params
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def refusals(rank: int) -> list[str]:
    """What each rank raised where only rank 1 has a bad input: both ranks must refuse together
    (a rank raising alone would leave the other in a collective until the timeout)."""
    model = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = batch(0)
    seen = []
    losses, _ = ddp(x[rank::2], y[rank::2])
    if rank == 1:
        losses = losses * torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)
    for call in (
        lambda: mtgrad.backward(losses, model.trunk.parameters(), mtgrad.PCGrad(), retain_graph=True),
        lambda: mtgrad.accumulate_task_gradients(losses, model.trunk.parameters(), retain_graph=True),
    ):
        try:
            call()
            seen.append("no error")
        except ValueError as error:
            seen.append("refused" if "NaN or inf" in str(error) else str(error))
    try:
        mtgrad.accumulate_task_gradients(losses, model.trunk.parameters(), data_parallel=False, check_finite=False)
        seen.append("no error")
    except ValueError as error:
        seen.append("refused" if "data_parallel=False" in str(error) else str(error))
    return seen
