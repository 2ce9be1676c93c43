"""Shared helpers of the benchmarks: interleaved timing, medians of ratios, markdown tables.

Timing protocol (every benchmark here): the candidates of one comparison are run once each per
*round*, in a fresh random order every round, so that a slow spell of a shared machine hits all of
them alike; a ratio ``a/b`` is the median over rounds of the per-round ratios, and a time is the
median over rounds. Warm-up rounds are run and discarded.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import torch


def set_threads(n: int) -> None:
    """Fix torch's intra-op (and inter-op, where still allowed) thread count."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or parallel work already started
        pass


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    seed: int = 0,
    number: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every function, ``rounds`` samples each, taken round-robin in random order.

    Each sample is the mean of ``number`` back-to-back calls (for calls too short to time alone).
    """
    rng = random.Random(seed)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(warmup + rounds):
            order = names[:]
            rng.shuffle(order)
            gc.collect()  # once per round, untimed; no collection inside a timed call
            gc.disable()
            for name in order:
                fn = fns[name]
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                elapsed = (time.perf_counter() - start) / number
                if r >= warmup:
                    times[name].append(elapsed)
            if gc_was_enabled:
                gc.enable()
            if progress is not None:
                progress(f"round {r + 1 - warmup}/{rounds}" if r >= warmup else f"warm-up {r + 1}/{warmup}")
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def median_ms(samples: Sequence[float]) -> float:
    return 1e3 * statistics.median(samples)


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[r] / den[r]`` (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def load_torchjd() -> ModuleType | None:
    """The ``torchjd`` module if installed (comparison only; never a dependency of mtgrad)."""
    try:
        import torchjd
        import torchjd.aggregation
        import torchjd.autojac
    except ImportError:
        return None
    return torchjd


def torchjd_cagrad_available() -> bool:
    """torchjd's CAGrad needs the optional ``torchjd[cagrad]`` extras (cvxpy, clarabel)."""
    try:
        import clarabel  # noqa: F401
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


def machine_line() -> str:
    import mtgrad

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load avg n/a"
    tj = load_torchjd()
    tj_version = getattr(tj, "__version__", None) if tj else None
    if tj is not None and tj_version is None:
        from importlib.metadata import version

        tj_version = version("torchjd")
    return (
        f"torch {torch.__version__}, mtgrad {mtgrad.__version__}, "
        f"torchjd {tj_version or 'not installed'}; {cpu}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}; {load} at start"
    )


def tune_malloc() -> str:
    """Make glibc's allocator reuse freed memory deterministically (timing runs only).

    By default glibc serves allocations above a *dynamic* threshold (128 KiB, raised up to 32 MiB
    as large blocks are freed) with fresh ``mmap`` pages and returns the top of the heap to the
    system once more than twice that is free. Whether a fresh output vector then costs page faults
    (about 0.7 ms per MiB on a virtual machine) depends on the allocation history, which flips
    the ratios of small cases from run to run. Fixing the mmap threshold at its maximum (32 MiB)
    and never trimming makes every allocation up to 32 MiB reuse heap memory once warm and every
    larger one page-fault every time, for every candidate alike. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "malloc: default (not glibc)"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1 and mallopt(M_TRIM_THRESHOLD, 2**30) == 1
    return "malloc: glibc, mmap threshold 32 MiB, no trimming" if ok else "malloc: default (mallopt failed)"
