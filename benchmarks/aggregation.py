"""Aggregation alone: a stored task-gradient matrix J (T × d, float32) → the update vector.

For every T ∈ {2, 10, 40} and d ∈ {1e5, 1e6, 1e7} (combinations whose J exceeds ``--max-gb``
skipped), one fresh J ~ N(0, 1) and, interleaved in random order every round:

* ``two reads``   — ``J.sum()`` twice: the memory-traffic lower bound of any exact Gramian method
  (one pass over J for the Gramian, one for the combination ``Σ w_i g_i``);
* ``floor``       — ``J @ J.T`` then ``w @ J`` (MKL/BLAS Gramian + combination, no solver);
* ``mt G+c``      — mtgrad's own Gramian (``mtgrad.gramian.gramian``, 64k-column blocks, float64
  accumulation) + ``mtgrad.gramian.combine`` with fixed weights: mtgrad's floor, no solver;
* ``mtgrad.aggregate(J, m)`` for m = PCGrad(), CAGrad(c=0.4), MGDA();
* torchjd's ``PCGrad()``, ``CAGrad(c=0.4)``, ``MGDA()`` called on the same J, when torchjd is
  installed (``pip install "torchjd[cagrad]"``; never a dependency of mtgrad).

Each sample is the mean of 10 (J ≤ 1e6 entries), 3 (≤ 1e7) or 1 back-to-back calls.
Prints two markdown tables: medians in ms, and medians of per-round ratios (mtgrad ÷ two reads,
mtgrad ÷ floor, torchjd ÷ mtgrad). One intra-op thread unless ``--threads``.

    python benchmarks/aggregation.py            # full grid, ~1.5–2 min on a 2-core machine
    python benchmarks/aggregation.py --quick    # T ∈ {2, 10}, d ∈ {1e5, 1e6}, ~20 s
    python benchmarks/aggregation.py --tasks 10 --dims 1e6 --rounds 3   # 3× the default rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from _common import (
    fmt_ms,
    fmt_ratio,
    interleaved,
    load_torchjd,
    machine_line,
    markdown_table,
    median_ms,
    median_ratio,
    set_threads,
    torchjd_cagrad_available,
    tune_malloc,
)

import mtgrad
from mtgrad.gramian import combine, gramian

METHODS = ("PCGrad", "CAGrad", "MGDA")


def _rounds_for(numel: int, scale: float) -> int:
    """More rounds for small J (cheap, noisy), few for J of hundreds of MB."""
    if numel <= 10**6:
        base = 20
    elif numel <= 10**7:
        base = 12
    elif numel <= 10**8:
        base = 7
    else:
        base = 3
    return max(3, round(base * scale))


def _candidates(J: torch.Tensor, tj: object) -> dict[str, Callable[[], object]]:
    T = J.shape[0]
    w = torch.rand(T, generator=torch.Generator().manual_seed(1))
    fns: dict[str, Callable[[], object]] = {
        "two reads": lambda: (J.sum(), J.sum()),
        "floor": lambda: (J @ J.T, w @ J),
        "mt G+c": lambda: (gramian([J]), combine(w, J)),
        "mtgrad PCGrad": _bind(J, mtgrad.PCGrad(generator=torch.Generator().manual_seed(0))),
        "mtgrad CAGrad": _bind(J, mtgrad.CAGrad(c=0.4)),
        "mtgrad MGDA": _bind(J, mtgrad.MGDA()),
    }
    if tj is not None:
        from torchjd.aggregation import MGDA, PCGrad

        fns["torchjd PCGrad"] = _bind_tj(J, PCGrad())
        if torchjd_cagrad_available():
            from torchjd.aggregation import CAGrad

            fns["torchjd CAGrad"] = _bind_tj(J, CAGrad(c=0.4))
        fns["torchjd MGDA"] = _bind_tj(J, MGDA())
    return fns


def _bind(J: torch.Tensor, method: mtgrad.Method) -> Callable[[], object]:
    return lambda: mtgrad.aggregate(J, method)


def _bind_tj(J: torch.Tensor, aggregator: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
    return lambda: aggregator(J)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--dims", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--quick", action="store_true", help="T ∈ {2, 10}, d ∈ {1e5, 1e6}, fewer rounds")
    parser.add_argument("--rounds", type=float, default=1.0, help="scale the default round counts")
    parser.add_argument("--max-gb", type=float, default=1.6, help="skip J larger than this (GB, fp32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torchjd", action="store_true", help="skip torchjd even if installed")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default (noisier) allocator")
    args = parser.parse_args()
    if args.quick:
        args.tasks = [t for t in args.tasks if t <= 10] or args.tasks
        args.dims = [d for d in args.dims if d <= 1e6] or args.dims
        args.rounds *= 0.5
    set_threads(args.threads)
    malloc = "malloc: default" if args.default_malloc else tune_malloc()
    tj = None if args.no_torchjd else load_torchjd()

    print(f"# Aggregation: J (T×d, fp32) → update\n\n{machine_line()}; {malloc}\n", flush=True)
    ms_rows, ratio_rows = [], []
    for T in args.tasks:
        for d in (int(x) for x in args.dims):
            nbytes = 4 * T * d
            if nbytes > args.max_gb * 1e9:
                print(f"skip T={T}, d={d:.0e}: J is {nbytes / 2**30:.2f} GiB > --max-gb", file=sys.stderr)
                continue
            J = torch.randn(T, d, generator=torch.Generator().manual_seed(T * 7919 + d))
            fns = _candidates(J, tj)
            rounds = _rounds_for(T * d, args.rounds)
            number = 10 if T * d <= 10**6 else 3 if T * d <= 10**7 else 1
            start = time.perf_counter()
            times = interleaved(fns, rounds=rounds, warmup=1, seed=T + d, number=number)
            print(
                f"T={T:>2} d={d:.0e}: {rounds} rounds in {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            med = {name: median_ms(ts) for name, ts in times.items()}
            ms_rows.append(
                [T, f"{d:.0e}", f"{nbytes / 2**20:.0f}", rounds]
                + [fmt_ms(med[n]) for n in ("two reads", "floor", "mt G+c")]
                + [fmt_ms(med[f"mtgrad {m}"]) for m in METHODS]
                + [fmt_ms(med.get(f"torchjd {m}")) for m in METHODS]
            )
            row = [T, f"{d:.0e}"]
            row += [fmt_ratio(median_ratio(times[f"mtgrad {m}"], times["two reads"])) for m in METHODS]
            row += [fmt_ratio(median_ratio(times[f"mtgrad {m}"], times["floor"])) for m in METHODS]
            row += [fmt_ratio(median_ratio(times["mt G+c"], times["two reads"]))]
            for m in METHODS:
                tjn = f"torchjd {m}"
                row.append(fmt_ratio(median_ratio(times[tjn], times[f"mtgrad {m}"])) if tjn in times else "—")
            ratio_rows.append(row)
            del J, fns, times

    print("## Medians (ms)\n")
    print(
        markdown_table(
            ["T", "d", "J MiB", "rounds", "two reads", "floor J@Jᵀ+w@J", "mtgrad G+combine"]
            + [f"mtgrad {m}" for m in METHODS]
            + [f"torchjd {m}" for m in METHODS],
            ms_rows,
        )
    )
    print("\n## Medians of per-round ratios\n")
    print(
        markdown_table(
            ["T", "d"]
            + [f"{m} ÷ two reads" for m in METHODS]
            + [f"{m} ÷ floor" for m in METHODS]
            + ["mtgrad G+combine ÷ two reads"]
            + [f"torchjd ÷ mtgrad {m}" for m in METHODS],
            ratio_rows,
        )
    )
    print("\nTargets (issue): mtgrad ≤ 1.5× two reads for d ≥ 1e6; torchjd ÷ mtgrad ≥ 2 for T ≤ 10, d ≥ 1e6.")
    if tj is None:
        print('\n(torchjd skipped: --no-torchjd, or not installed (`pip install "torchjd[cagrad]"`).)')


if __name__ == "__main__":
    main()
