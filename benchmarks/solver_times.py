"""Per-call time and op count of every Gramian weighting (Gramian → weights) on the CPU.

For T = 2, 10, 40, 64 tasks: a random Jacobian J (T × 1000, float64) — iid Gaussian rows, or with
``--skewed`` rows whose norms are log-spaced over 1e-3…1e3 — G = J Jᵀ, and the median over
``--calls`` calls of ``method.weights(G)`` after 5 warm-up calls, with ``torch.set_num_threads(1)``.
Two clocks: wall time (``perf_counter``) and the calling thread's CPU time (``thread_time``), which
is less disturbed by other processes on a shared machine. Stateful methods (Nash-MTL's warm
start, GradVac's targets) are timed on one instance called repeatedly, as in training.

Ops per call: the ATen operators one call dispatches (counted by a ``TorchDispatchMode`` on the
next call of the same instance, outside the timed calls), i.e. what becomes a chain of kernel
launches on a GPU (views included, so it is an upper bound there); in brackets the host reads
among them (``aten._local_scalar_dense``: ``bool(t)``, ``.item()``; and ``.tolist()``), each a sync on a GPU.

    python benchmarks/solver_times.py [--calls 50] [--tasks 2 10 40 64] [--skewed] [--methods UPGrad PCGrad]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while active, and the host reads among them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> tuple[int, int]:
    """ATen ops of one call, and its host reads (``.tolist()`` reads without an ATen op on the CPU)."""
    tolist = torch.Tensor.tolist
    with OpCounter() as counter:

        def counted(self: torch.Tensor) -> object:
            counter.syncs += 1
            return tolist(self)

        torch.Tensor.tolist = counted  # type: ignore[method-assign]
        try:
            fn()
        finally:
            torch.Tensor.tolist = tolist  # type: ignore[method-assign]
    return counter.ops, counter.syncs


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
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40, 64])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--skewed", action="store_true", help="row norms log-spaced over 1e-3…1e3")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME")
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
    print("ms per call, wall / thread CPU; ATen ops per call (host reads among them)\n")
    print("| method | " + " | ".join(f"T = {T}" for T in args.tasks) + " | " + " | ".join(f"ops T = {T}" for T in args.tasks) + " |")
    print("|---|" + "---:|" * (2 * len(args.tasks)))
    for name in args.methods:
        make = METHODS[name]
        cells, ops = [], []
        for T in args.tasks:
            method, G = make(), grams[T]
            wall, cpu = medians_ms(lambda m=method, G=G: m.weights(G), args.calls)
            n, syncs = count_ops(lambda m=method, G=G: m.weights(G))
            cells.append(f"{wall:.3f} / {cpu:.3f}")
            ops.append(f"{n} ({syncs})")
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ops) + " |", flush=True)


if __name__ == "__main__":
    main()
