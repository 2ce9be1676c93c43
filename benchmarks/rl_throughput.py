"""Multi-task SAC throughput: updates/s per method and environment steps/s, at T = 10 and T = 50.

Updates: one `MultiTaskSAC.update` (critic + actor with the method's surgery, temperatures,
target networks) with the papers' network sizes (actor and twin critics 3 × 400) on a synthetic
task-partitioned replay buffer of the right shapes (obs 39 + one-hot T, actions 4): MT10 sizes at
T = 10 (128 rows per task), MT50 sizes at T = 50 (26 rows per task). Methods:

* mean        — equal weights: one plain backward of the mean loss (multi-task SAC);
* pcgrad, cagrad (c = 0.9 / 0.5), cagrad_fast (4 / 8 gradients) — per-task gradients from each
  task's own rows (`mtgrad.grouped_backward`, one vmapped backward), Gramian, weights.

All methods are timed round-robin in a fresh random order per round; the table gives medians of
per-round times and of the per-round ratios to `mean`. With `--envs`, also the vector
environment's steps/s (random actions, and with the actor choosing them) for MT10 and MT50.

    python benchmarks/rl_throughput.py                # updates at T = 10 and 50, ~3 min
    python benchmarks/rl_throughput.py --envs         # + Meta-World MT10/MT50 env steps/s (~2 min more)
    python benchmarks/rl_throughput.py --tasks 10 --rounds 30 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import fmt_ms, fmt_ratio, interleaved, machine_line, markdown_table, median_ms, median_ratio, set_threads

import mtgrad
from mtgrad.rl import MultiTaskSAC, TaskReplayBuffer, preset
from mtgrad.rl.train import build_method

METHODS = ("mean", "pcgrad", "cagrad", "cagrad_fast")


def agents(T: int, device: str) -> tuple[dict[str, MultiTaskSAC], TaskReplayBuffer, int]:
    cfg = preset("mt10" if T <= 10 else "mt50")
    obs_dim = 39 + T
    buffer = TaskReplayBuffer(T, 2_000, obs_dim, 4, device)
    g = torch.Generator().manual_seed(0)
    for _ in range(2_000):
        onehot = torch.eye(T)
        buffer.add(torch.cat([torch.randn(T, 39, generator=g), onehot], 1).to(device),
                   (torch.rand(T, 4, generator=g) * 2 - 1).to(device), torch.randn(T, generator=g).to(device),
                   torch.cat([torch.randn(T, 39, generator=g), onehot], 1).to(device), torch.zeros(T, device=device))
    out = {}
    for name in METHODS:
        torch.manual_seed(0)
        out[name] = MultiTaskSAC(cfg, obs_dim, 4, T, build_method(name, cfg, T, 0), build_method(name, cfg, T, 1), device)
    return out, buffer, cfg.batch_per_task


def update_table(tasks: list[int], rounds: int, device: str) -> str:
    rows = []
    for T in tasks:
        sacs, buffer, batch = agents(T, device)

        def step(sac: MultiTaskSAC) -> None:
            sac.update(buffer.sample(batch))
            if device != "cpu":
                torch.cuda.synchronize()

        times = interleaved({name: (lambda s=sac: step(s)) for name, sac in sacs.items()}, rounds=rounds, warmup=3)
        for name in METHODS:
            rows.append([T, batch, name, fmt_ms(median_ms(times[name])), f"{1 / (median_ms(times[name]) / 1e3):.1f}",
                         fmt_ratio(median_ratio(times[name], times["mean"]))])
    return markdown_table(["T", "rows/task", "method", "update (ms)", "updates/s", "÷ mean"], rows)


def env_table(device: str, seconds: float) -> str:
    import numpy as np

    from mtgrad.rl import make_envs, parse_benchmark

    rows = []
    for bench in ("mt10", "mt50"):
        t0 = time.perf_counter()
        envs = make_envs(parse_benchmark(bench), 0, 500)
        built = time.perf_counter() - t0
        T = envs.num_envs
        obs, _ = envs.reset(seed=0)
        actor = MultiTaskSAC(preset("mt10" if T <= 10 else "mt50"), 39 + T, 4, T, mtgrad.Mean(), mtgrad.Mean(), device)
        for label, policy in (("random", None), ("actor", actor)):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                if policy is None:
                    action = np.random.uniform(-1, 1, (T, 4))
                else:
                    action = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
                obs, _, term, trunc, _ = envs.step(action)
                if (term | trunc).any():
                    obs, _ = envs.reset()
                n += 1
            rate = n * T / (time.perf_counter() - start)
            rows.append([bench, T, label, f"{rate:,.0f}", f"{built:.0f} s"])
        envs.close()
    return markdown_table(["benchmark", "T", "actions", "env steps/s", "build"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--envs", action="store_true", help="also time Meta-World MT10/MT50 environment steps")
    ap.add_argument("--env-seconds", type=float, default=15.0)
    args = ap.parse_args()
    set_threads(args.threads)
    print(machine_line())
    print(f"threads={args.threads}, device={args.device}, mtgrad {mtgrad.__version__}, rounds={args.rounds}\n")
    print(update_table(args.tasks, args.rounds, args.device))
    if args.envs:
        print()
        print(env_table(args.device, args.env_seconds))


if __name__ == "__main__":
    main()
