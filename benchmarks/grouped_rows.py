"""Grouped rows: a per-task-gradient update vs a summed-loss update on a multi-task-SAC-sized critic.

Each task owns `rows` rows of the batch (one-hot task id in the input, as in multi-task SAC);
the per-task gradients come from `mtgrad.grouped_backward` (one vmapped backward). Compared side
by side, interleaved, in one process:

* sum     — one backward of the mean over all rows (equal weights), the baseline;
* grouped — `mtgrad.grouped_backward(..., method)` for PCGrad and CAGrad (per-task gradients,
            Gramian, weights, combination into .grad);
* naive   — one backward per task of that task's loss over the whole graph (the loop engine).

Run:  .venv/bin/python benchmarks/grouped_rows.py [--tasks 10 50] [--rows 128] [--repeats 15]
Prints medians (ms) and ratios to `sum`; torch.set_num_threads(1) unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import functional_call

import mtgrad


def critic(obs_dim: int, tasks: int, hidden: int, layers: int) -> torch.nn.Sequential:
    dims = [obs_dim + tasks + 4] + [hidden] * layers
    mods: list[torch.nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods, torch.nn.Linear(hidden, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rows", type=int, default=128, help="rows per task (PCGrad paper: 128)")
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}, rows/task={args.rows}, critic {args.layers}×{args.hidden}\n")
    print("| T | sum (ms) | grouped PCGrad | grouped CAGrad | naive loop PCGrad |")
    print("|---|---|---|---|---|")
    for T in args.tasks:
        torch.manual_seed(0)
        model = critic(39, T, args.hidden, args.layers)
        x = torch.cat(
            [torch.randn(T, args.rows, 39 + 4), torch.eye(T)[:, None, :].expand(T, args.rows, T)], dim=-1
        )
        y = torch.randn(T, args.rows, 1)

        def task_loss(params, rows):
            xs, ys = rows
            return ((functional_call(model, params, (xs,)) - ys) ** 2).mean()

        def run_sum():
            model.zero_grad(set_to_none=True)
            ((model(x) - y) ** 2).mean().backward()

        def run_grouped(method):
            def f():
                model.zero_grad(set_to_none=True)
                mtgrad.grouped_backward(model, task_loss, (x, y), method)

            return f

        def run_naive():
            model.zero_grad(set_to_none=True)
            out = model(x)
            losses = [((out[t] - y[t]) ** 2).mean() for t in range(T)]
            mtgrad.backward(losses, model.parameters(), mtgrad.PCGrad())

        cases = {
            "sum": run_sum,
            "pcgrad": run_grouped(mtgrad.PCGrad()),
            "cagrad": run_grouped(mtgrad.CAGrad(0.9)),
            "naive": run_naive,
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for f in cases.values():
            f()  # warm-up
        for _ in range(args.repeats):
            for name, f in cases.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["sum"]
        print(
            f"| {T} | {base * 1e3:.1f} | {med['pcgrad'] / base:.2f}× | {med['cagrad'] / base:.2f}× | {med['naive'] / base:.2f}× |"
        )


if __name__ == "__main__":
    main()
