"""Precision campaign: non-finite, conflicting and inexact answers of every weighting, by input dtype.

    .venv/bin/python benchmarks/precision.py [--draws N] [--dtypes float32,float16,bfloat16,float64]

For each family of task Jacobians J (T × d) below, each input dtype and each Gramian weighting,
``mtgrad.aggregate(J.to(dtype), method)`` is compared with the float64 answer for the *same
numbers* (``J.to(dtype).double()``). Counted per (method, dtype), over all draws:

* ``nonfinite``  the answer has a NaN or inf entry, or the call raised;
* ``conflict``   a method that promises non-conflict (MGDA, UPGrad, DualProj, CAGrad with c ≥ 1;
  Nash-MTL and FairGrad where J has full row rank, so that their solution exists) returns d with
  ``⟨g_i, d⟩ < −16 ε ‖g_i‖ Σ_j |w_j|‖g_j‖`` for some task: beyond the rounding of
  ``d = Σ_j w_j g_j`` itself (ε of the input dtype, w the method's float64 weights);
* ``inexact``    ``‖d − d₆₄‖ > 64 ε Σ_j |w_j|‖g_j‖``: further from the float64 answer than the
  rounding of the combination in the input dtype explains (float64 answers are compared with the
  rescaled answer for ``sJ`` at s = 2⁻⁶⁰ instead, ``A(sJ)/s^(1+2k)`` for a method of Gramian
  degree k — positive homogeneity — with 1e3 ε);
* ``raised``     how many of the non-finite ones were exceptions.

Families: iid (T > d, degenerate Gramians), norms over 8 decades, one nearly opposite pair,
tiny (×1e-30) and huge (×1e30) gradients, T = 2 with norm ratios up to 1e8, and rank deficiency.
Everything runs on the CPU, one thread; the numbers are deterministic (seeded).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

import torch

import mtgrad

FAMILIES = ("iid_wide", "skewed", "near_opposite", "tiny", "huge", "two_ratio", "rankdef")
NON_CONFLICTING = {"mgda", "upgrad", "dualproj", "cagrad_c2"}
NON_CONFLICTING_AT_FULL_RANK = {"nashmtl", "fairgrad"}


def methods() -> dict[str, Callable[[], mtgrad.Weighting]]:
    return {
        "mean": mtgrad.Mean,
        "mgda": mtgrad.MGDA,
        "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
        "cagrad": lambda: mtgrad.CAGrad(c=0.4),
        "cagrad_c2": lambda: mtgrad.CAGrad(c=2.0),
        "imtlg": mtgrad.IMTLG,
        "gradvac": lambda: mtgrad.GradVac(order="fixed"),
        "alignedmtl": mtgrad.AlignedMTL,
        "upgrad": mtgrad.UPGrad,
        "dualproj": mtgrad.DualProj,
        "nashmtl": mtgrad.NashMTL,
        "fairgrad": mtgrad.FairGrad,
        "config": mtgrad.ConFIG,
    }


def jacobians(family: str, draws: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(sum(map(ord, family)))
    for k in range(draws):
        T = int(torch.randint(2, 9, (), generator=gen))
        d = int(torch.randint(2, 40, (), generator=gen))
        J = torch.randn(T, d, generator=gen, dtype=torch.float64)
        if family == "iid_wide":
            J = torch.randn(T + 2, max(1, T // 2), generator=gen, dtype=torch.float64)
        elif family == "skewed":
            J = J * 10.0 ** (8 * torch.rand(T, 1, generator=gen, dtype=torch.float64) - 4)
        elif family == "near_opposite":
            J[1] = -J[0] * (1 + 1e-6 * torch.randn((), generator=gen, dtype=torch.float64))
            J[1, 0] += 1e-6 * J[0].norm()
        elif family == "tiny":
            J = J * 1e-30
        elif family == "huge":
            J = J * 1e30
        elif family == "two_ratio":
            J = J[:2] * torch.tensor([[1.0], [10.0 ** (-(k % 9))]], dtype=torch.float64)
            if k % 2:
                J = J.flip(0)
        elif family == "rankdef":
            r = max(1, T // 2)
            J = torch.randn(T, r, generator=gen, dtype=torch.float64) @ torch.randn(r, d, generator=gen, dtype=torch.float64)
        yield J


def _degree(name: str, method: mtgrad.Weighting) -> float:
    # Versions before Weighting.gramian_degree existed (for runs on an earlier commit).
    return getattr(method, "gramian_degree", {"nashmtl": -0.5, "fairgrad": -0.5}.get(name, 0.0))


def _aggregate(J: torch.Tensor, make: Callable[[], mtgrad.Weighting]) -> torch.Tensor | None:
    try:
        return mtgrad.aggregate(J, make()).double()
    except (ValueError, RuntimeError):
        return None


def campaign(draws: int, dtypes: list[torch.dtype]) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for name, make in methods().items():
        for dtype in dtypes:
            c = counts[(name, str(dtype).removeprefix("torch."))] = dict.fromkeys(
                ("draws", "nonfinite", "raised", "conflict", "inexact"), 0
            )
            eps = torch.finfo(dtype).eps
            for family in FAMILIES:
                for J in jacobians(family, draws):
                    if family == "huge" and dtype in (torch.float16,):
                        continue  # not representable in the input dtype
                    Jq = J.to(dtype)
                    Jd = Jq.double()
                    if not bool(torch.isfinite(Jd).all()) or not bool((Jd.abs().amax(1) > 0).all()):
                        continue  # rounded to inf or to a zero row: another problem
                    c["draws"] += 1
                    d = _aggregate(Jq, make)
                    if d is None or not bool(torch.isfinite(d).all()):
                        c["nonfinite"] += 1
                        c["raised"] += d is None
                        continue
                    norms = Jd.norm(dim=1)
                    size = (make().weights(Jd @ Jd.T).abs() * norms).sum()  # Σ_j |w_j| ‖g_j‖
                    full_rank = int(torch.linalg.matrix_rank(Jd)) == Jd.shape[0]
                    if name in NON_CONFLICTING or (name in NON_CONFLICTING_AT_FULL_RANK and full_rank):
                        c["conflict"] += bool((Jd @ d < -16 * eps * norms * size).any())
                    if dtype == torch.float64:
                        s = 2.0**-60
                        ref = _aggregate(Jd * s, make)
                        ref = None if ref is None else ref / s ** (1 + 2 * _degree(name, make()))
                    else:
                        ref = _aggregate(Jd, make)
                    if ref is None or not bool(torch.isfinite(ref).all()):
                        continue
                    c["inexact"] += bool((d - ref).norm() > (1e3 if dtype == torch.float64 else 64) * eps * size)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=30, help="Jacobians per family (default 30)")
    parser.add_argument("--dtypes", default="float32,float64", help="input dtypes, comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    counts = campaign(args.draws, dtypes)
    print(f"draws per family: {args.draws}; families: {', '.join(FAMILIES)}; torch threads: 1")
    print("| method | dtype | draws | non-finite (raised) | conflicting | inexact |")
    print("|---|---|---|---|---|---|")
    bad = 0
    for (name, dtype), c in counts.items():
        conflict = str(c["conflict"]) if name in NON_CONFLICTING | NON_CONFLICTING_AT_FULL_RANK else "—"
        print(f"| {name} | {dtype} | {c['draws']} | {c['nonfinite']} ({c['raised']}) | {conflict} | {c['inexact']} |")
        bad += c["nonfinite"] + c["conflict"]
    total = sum(c["draws"] for c in counts.values())
    print(f"\nnon-finite or conflicting: {bad} of {total} answers ({100 * bad / max(total, 1):.2f}%)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
