"""Per-call time of every Gramian weighting (Gramian → weights) on the CPU.

For T = 2, 10, 40 tasks: a random Jacobian J (T × 1000, float64) — iid Gaussian rows, or with
``--skewed`` rows whose norms are log-spaced over 1e-3…1e3 — G = J Jᵀ, and the median over
``--calls`` calls of ``method.weights(G)`` after 5 warm-up calls, with ``torch.set_num_threads(1)``.
Two clocks: wall time (``perf_counter``) and the calling thread's CPU time (``thread_time``), which
is less disturbed by other processes on a shared machine. Stateful methods (Nash-MTL's warm
start, GradVac's targets) are timed on one instance called repeatedly, as in training.

    python benchmarks/solver_times.py [--calls 50] [--tasks 2 10 40] [--skewed]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import mtgrad

METHODS: dict[str, Callable[[], mtgrad.Weighting]] = {
    "Mean": mtgrad.Mean,
    "PCGrad": mtgrad.PCGrad,
    "MGDA": mtgrad.MGDA,
    "CAGrad(0.4)": lambda: mtgrad.CAGrad(0.4),
    "CAGrad(0.4, mtrl)": lambda: mtgrad.CAGrad(0.4, solver="mtrl"),
    "IMTLG": mtgrad.IMTLG,
    "GradVac": mtgrad.GradVac,
    "AlignedMTL": mtgrad.AlignedMTL,
    "RLW": mtgrad.RLW,
    "UPGrad": mtgrad.UPGrad,
    "DualProj": mtgrad.DualProj,
    "NashMTL": mtgrad.NashMTL,
    "FairGrad(2)": lambda: mtgrad.FairGrad(alpha=2.0),
    "ConFIG": mtgrad.ConFIG,
}


def medians_ms(fn: Callable[[], object], calls: int, warmup: int = 5) -> tuple[float, float]:
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
    parser.add_argument("--skewed", action="store_true", help="row norms log-spaced over 1e-3…1e3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1234)
    grams = {}
    for T in args.tasks:
        J = torch.randn(T, args.dim, generator=gen, dtype=torch.float64)
        if args.skewed:
            J = J * torch.logspace(-3, 3, T, dtype=torch.float64).unsqueeze(1)
        grams[T] = J @ J.T
    kind = "skewed (norms 1e-3…1e3)" if args.skewed else "iid Gaussian"
    print(f"torch {torch.__version__}, 1 thread, J: T × {args.dim} float64 {kind}, median of {args.calls} calls")
    print("ms per call, wall / thread CPU\n")
    print("| method | " + " | ".join(f"T = {T}" for T in args.tasks) + " |")
    print("|---|" + "---:|" * len(args.tasks))
    for name, make in METHODS.items():
        cells = []
        for T in args.tasks:
            method, G = make(), grams[T]
            wall, cpu = medians_ms(lambda m=method, G=G: m.weights(G), args.calls)
            cells.append(f"{wall:.3f} / {cpu:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
