"""The experiments' names and defaults that the command line shows, without importing torch.

``mtgrad --help`` builds every subcommand's parser; reading these from here rather than from the
modules that run the experiments keeps it from importing torch (seconds) just to print help.
"""

from __future__ import annotations

__all__ = [
    "CAGRAD_METHODS", "PCGRAD_METHODS", "DEFAULT_STEPS", "DEFAULT_PCGRAD_STEPS", "PAPER_STEPS", "BENCHMARK_NAMES",
    "COMPARE_METHODS", "COMPARE_SEEDS",
]

CAGRAD_METHODS: tuple[str, ...] = (
    "gd",
    "mgda",
    "pcgrad",
    "cagrad:c=0",
    "cagrad:c=0.2",
    "cagrad:c=0.5",
    "cagrad:c=0.8",
    "cagrad:c=10",
)
"""The methods of CAGrad Fig. 3: GD, MGDA, PCGrad and CAGrad with c ∈ {0, 0.2, 0.5, 0.8, 10}."""

PCGRAD_METHODS: tuple[str, ...] = ("gd", "pcgrad")
"""PCGrad Fig. 1 compares Adam on L1 + L2 ("gd" = Sum here) with Adam + PCGrad."""

DEFAULT_STEPS = 100_000
"""Default Adam steps for the CAGrad toy: the official code's 100,000, which CAGrad (c = 0.2-0.8)
needs to reach the L0 minimiser from every start (from (9, 9) it takes ~58k-95k steps at lr 1e-3).
All CAGrad variants are solved in one call per step (:class:`_MergedCAGrad`), which keeps the
default ``mtgrad toy`` near a minute on two cores."""

DEFAULT_PCGRAD_STEPS = 300_000
"""Default Adam steps for the PCGrad toy (the PCGrad paper runs 500,000; Adam + PCGrad reaches
the meeting of the valleys after ~250k)."""

PAPER_STEPS = {"cagrad": 100_000, "pcgrad": 500_000}
"""Adam steps (lr 1e-3) the papers used: CAGrad ``toy.py`` n_iter, PCGrad App. D."""

BENCHMARK_NAMES: tuple[str, ...] = ("linear", "multimnist", "qm9", "shapes")
"""The supervised benchmarks' names, the keys of :data:`mtgrad.bench.benchmarks.BENCHMARKS`."""

COMPARE_METHODS: tuple[str, ...] = ("gd", "mgda", "pcgrad", "cagrad:c=0.4")
"""``mtgrad compare``'s default methods: equal weighting, MGDA, PCGrad and CAGrad (the CAGrad
paper's c = 0.4)."""

COMPARE_SEEDS: tuple[int, ...] = (0, 1, 2)
"""``mtgrad compare``'s default seeds."""
