"""Per-call time of UPGrad, DualProj, Nash-MTL, FairGrad and ConFIG (Gramian → weights) on the CPU.

For T = 2, 10, 40 tasks: a random Jacobian J (T × 1000, float64), G = J Jᵀ, and the median over
50 calls of ``method.weights(G)`` (after 5 warm-up calls), with ``torch.set_num_threads(1)``.
Two clocks: wall time (``perf_counter``) and the calling thread's CPU time (``thread_time``), which
is less disturbed by other processes on a shared machine. ``--profile`` adds, per method at the
largest T, the torch operators that take most of the time.

    python benchmarks/solver_times_cone.py [--calls 50] [--tasks 2 10 40] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mtgrad.methods.config import ConFIG
from mtgrad.methods.dualproj import DualProj
from mtgrad.methods.fairgrad import FairGrad
from mtgrad.methods.nashmtl import NashMTL
from mtgrad.methods.upgrad import UPGrad

# name → factory of a function G ↦ weights. NashMTL keeps its previous α as a warm start: "cold"
# builds a fresh instance per call; "warm" calls one instance on the same G again (a lower bound:
# the previous step's α is already the answer).
METHODS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "UPGrad()": lambda: UPGrad().weights,
    "DualProj()": lambda: DualProj().weights,
    "NashMTL() cold": lambda: lambda G: NashMTL().weights(G),
    "NashMTL() warm": lambda: NashMTL().weights,
    "FairGrad(alpha=2)": lambda: FairGrad(alpha=2.0).weights,
    "FairGrad(alpha=0.5)": lambda: FairGrad(alpha=0.5).weights,
    "ConFIG()": lambda: ConFIG().weights,
}


def _medians_ms(fn: Callable[[], object], calls: int, warmup: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    gen = torch.Generator().manual_seed(1234)
    grams = {}
    for T in args.tasks:
        J = torch.randn(T, args.dim, generator=gen, dtype=torch.float64)
        grams[T] = J @ J.T
    print(f"torch {torch.__version__}, 1 thread, J: T × {args.dim} float64 Gaussian, median of {args.calls} calls")
    print("ms per call, wall / thread CPU\n")
    print("| method | " + " | ".join(f"T = {T}" for T in args.tasks) + " |")
    print("|---|" + "---:|" * len(args.tasks))
    for name, make in METHODS.items():
        cells = []
        for T in args.tasks:
            call = make()
            G = grams[T]
            wall, cpu = _medians_ms(lambda call=call, G=G: call(G), args.calls)
            cells.append(f"{wall:.3f} / {cpu:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        T = max(args.tasks)
        for name, make in METHODS.items():
            call = make()
            call(grams[T])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    call(grams[T])
            print(f"\n{name}, T = {T}, top operators (self CPU, 10 calls):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


if __name__ == "__main__":
    main()
