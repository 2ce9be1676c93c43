"""Per-call time of the baseline weightings (Gramian → weights) on this machine's CPU.

For T = 2, 10, 40 tasks: a random Jacobian J (T × 1000, float64), G = J Jᵀ, and the median over
50 calls of ``method.weights(G)`` (after 5 warm-up calls), with ``torch.set_num_threads(1)``.
GradDrop has no Gramian form: its row times ``aggregate_blocks([J])`` on the same J.
Prints a markdown table (milliseconds).

    python benchmarks/solver_times_baselines.py [--calls 50] [--tasks 2 10 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mtgrad.methods.alignedmtl import AlignedMTL
from mtgrad.methods.graddrop import GradDrop
from mtgrad.methods.gradvac import GradVac
from mtgrad.methods.imtlg import IMTLG
from mtgrad.methods.mgda import MGDA
from mtgrad.methods.pcgrad import PCGrad
from mtgrad.methods.rlw import RLW


def _median_ms(fn: Callable[[], object], calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--dim", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    methods = {
        "IMTLG()": lambda: IMTLG(),
        "GradVac(beta=0.5)": lambda: GradVac(generator=torch.Generator().manual_seed(0)),
        "AlignedMTL('min')": lambda: AlignedMTL(),
        "AlignedMTL('median')": lambda: AlignedMTL(scale_mode="median"),
        "AlignedMTL('rmse')": lambda: AlignedMTL(scale_mode="rmse"),
        "RLW()": lambda: RLW(generator=torch.Generator().manual_seed(0)),
        "MGDA('l2')": lambda: MGDA(normalization="l2"),
        "MGDA('loss+')": lambda: MGDA(normalization="loss+"),
        "PCGrad() (for comparison)": lambda: PCGrad(generator=torch.Generator().manual_seed(0)),
    }
    rows: dict[str, list[float]] = {name: [] for name in [*methods, "GradDrop() on J (T×d)"]}
    gen = torch.Generator().manual_seed(1234)
    for T in args.tasks:
        J = torch.randn(T, args.dim, generator=gen, dtype=torch.float64)
        G = J @ J.T
        losses = torch.rand(T, generator=gen, dtype=torch.float64) + 0.1
        for name, make in methods.items():
            method = make()
            extra = (losses,) if method.needs_losses else ()
            rows[name].append(_median_ms(lambda m=method, g=G, e=extra: m.weights(g, *e), args.calls))
        drop = GradDrop(generator=torch.Generator().manual_seed(0))
        rows["GradDrop() on J (T×d)"].append(_median_ms(lambda d=drop, j=J: d.aggregate_blocks([j]), args.calls))

    print(f"torch {torch.__version__}, 1 thread, J: T × {args.dim} float64, median of {args.calls} calls (ms)\n")
    print("| method | " + " | ".join(f"T = {T}" for T in args.tasks) + " |")
    print("|---|" + "---:|" * len(args.tasks))
    for name, times in rows.items():
        print(f"| {name} | " + " | ".join(f"{t:.3f}" for t in times) + " |")


if __name__ == "__main__":
    main()
