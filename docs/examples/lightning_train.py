"""PCGrad in a LightningModule, with the conflict diagnostics in the logger.

    python docs/examples/lightning_train.py                                 # one CPU process
    python docs/examples/lightning_train.py --devices 2 --strategy ddp      # 2 CPU processes (gloo)
    python docs/examples/lightning_train.py --precision bf16-mixed
    python docs/examples/lightning_train.py --accumulate 3                  # one step per 3 batches

``--check`` compares the trained parameters with plain PyTorch + mtgrad.backward on the global
batches (exact in float32 precision; under DDP each step's global batch is both ranks' rows; with
``--accumulate k``, MTLOptimizer.backward on k batches, then one step).
"""

import argparse
import os

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mtgrad
import mtgrad.lightning

TASKS, ROWS, BATCH = 3, 64, 8


class MultiTask(lightning.LightningModule):
    def __init__(self, accumulate: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False  # mtgrad runs the backward
        self.accumulate = accumulate  # batches per optimizer step
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(TASKS))
        self.method = mtgrad.PCGrad(generator=torch.Generator().manual_seed(0))

    def task_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.stack([(h(z).squeeze(-1).float() - y[:, i]).pow(2).mean() for i, h in enumerate(self.heads)])

    def training_step(self, batch, batch_idx):
        losses = self.task_losses(*batch)
        # Summed over the accumulated batches, as loss.backward() sums: ÷ k makes them the mean.
        mtgrad.lightning.surgery_step(
            self, losses / self.accumulate, self.trunk.parameters(), self.method, accumulate=self.accumulate
        )
        self.log("loss", losses.sum(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)

    def train_dataloader(self):
        # Rank r takes rows r, r + W, …: step k's global batch is rows [k·W·B, (k+1)·W·B).
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data(), num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(data(), batch_size=BATCH, sampler=sampler)


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 6, generator=g)
    y = torch.stack([torch.sin(x[:, 0] + i) * (1 - 2 * (i % 2)) + 0.3 * x[:, i] for i in range(TASKS)], dim=1)
    return TensorDataset(x, y)


def whole_batch_reference(devices: int, epochs: int, precision: str, accumulate: int) -> list[torch.Tensor]:
    """The same training with plain PyTorch on the global batches of ``devices × BATCH`` rows
    (the forward under bf16 autocast for ``bf16-mixed``, as Lightning runs it); with
    ``accumulate`` k, one step per k batches (and one on the epoch's last batches)."""
    torch.manual_seed(0)
    model = MultiTask()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.2), model.trunk.parameters(), model.method)
    for _ in range(epochs):
        batches = list(DataLoader(data(), batch_size=BATCH * devices))
        for start in range(0, len(batches), accumulate):
            opt.zero_grad()
            for x, y in batches[start : start + accumulate]:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
                    losses = model.task_losses(x, y)
                if accumulate == 1:  # one mtgrad.backward, as surgery_step runs it
                    opt.step(losses)
                else:
                    opt.backward(losses / accumulate)
            if accumulate > 1:
                opt.step()
    return [p.detach() for p in model.parameters()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (default 1)")
    ap.add_argument("--logs", default="results/lightning", help="CSV logs folder (default results/lightning)")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, precision=args.precision,
        max_epochs=args.epochs, logger=lightning.pytorch.loggers.CSVLogger(args.logs, name="run"),
        callbacks=[mtgrad.lightning.ConflictLogger()], log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,  # the module shards the data itself (train_dataloader)
    )  # fmt: skip
    # The precision Lightning resolved: on a CPU it runs "16-mixed" as bf16-mixed.
    precision = trainer.precision_plugin.precision
    # Before fit, in every process: no process group yet, so the reference is one process's run.
    reference = whole_batch_reference(args.devices, args.epochs, precision, args.accumulate) if args.check else []
    torch.manual_seed(0)
    model = MultiTask(args.accumulate)
    trainer.fit(model)
    if trainer.global_rank == 0:
        print("metrics:", os.path.join(trainer.logger.log_dir, "metrics.csv"))
        print("optimizer steps:", trainer.global_step)
        if args.check:
            diff = max((a.detach() - b).abs().max().item() for a, b in zip(model.parameters(), reference))
            # One process takes the reference's steps to rounding; under DDP each rank's weight
            # gradients are rounded (to bf16 under bf16-mixed) before they are averaged.
            tolerance = 1e-7 if args.devices == 1 else 1e-5 if precision == "32-true" else 1e-2
            print(f"matches the whole-batch run: {diff < tolerance} (max abs difference {diff:.1e})")


if __name__ == "__main__":
    main()
