"""Property campaign over adversarial Jacobians, every Gramian weighting, float32 and float64.

Each example draws a family (the adversarial ones of ``jacobians.py`` plus nearly opposite pairs,
norms over 16 decades and T > d), T, d, a dtype and an overall scale 2^k (|k| ≤ 100) and checks:

* the answer is finite (norms over 24 decades included);
* its defining property: no conflict for MGDA, UPGrad, DualProj and CAGrad with c ≥ 1 (beyond
  the rounding of ``Σ w_j g_j``), equal projections ``⟨g_i, d⟩/‖g_i‖`` for IMTL-G at full row
  rank, the bargaining condition ``(Gw)_i = 1/w_i`` for Nash-MTL at full row rank;
* a float32 input gets the float64 answer for the same numbers, to the rounding of the float32
  combination.

Examples per method: 80 under the default profile, 40 under ``ci``, 800 under ``thorough``
(13 methods: 10,400 Jacobians). ``HYPOTHESIS_PROFILE=thorough bash scripts/test.sh
tests/test_campaign.py`` runs the large campaign.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_cone import examples

import mtgrad
from jacobians import ADVERSARIAL, make_jacobian

METHODS = {
    "mean": mtgrad.Mean,
    "mgda": mtgrad.MGDA,
    "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
    "cagrad": lambda: mtgrad.CAGrad(c=0.4),
    "cagrad_c1.5": lambda: mtgrad.CAGrad(c=1.5),
    "imtlg": mtgrad.IMTLG,
    "gradvac": lambda: mtgrad.GradVac(order="fixed"),
    "alignedmtl": mtgrad.AlignedMTL,
    "upgrad": mtgrad.UPGrad,
    "dualproj": mtgrad.DualProj,
    "nashmtl": mtgrad.NashMTL,
    "fairgrad": lambda: mtgrad.FairGrad(alpha=2.0),
    "config": mtgrad.ConFIG,
}
NON_CONFLICTING = {"mgda", "upgrad", "dualproj", "cagrad_c1.5"}
FAMILIES = (*ADVERSARIAL, "near_opposite", "decades", "extreme", "wide")


@st.composite
def problems(draw):
    family = draw(st.sampled_from(FAMILIES))
    T = draw(st.integers(1, 10))
    d = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    log2_scale = draw(st.integers(-100, 100))
    gen = torch.Generator().manual_seed(seed)
    if family in ADVERSARIAL:
        T = max(T, 2)
        J = torch.as_tensor(make_jacobian(family, T, max(d, 2), seed))
    elif family == "near_opposite":
        J = torch.randn(max(T, 2), max(d, 2), generator=gen, dtype=torch.float64)
        J[1] = -J[0] * (1 + 1e-5 * torch.randn((), generator=gen, dtype=torch.float64))
        J[1, 0] += 1e-5 * J[0].norm()  # 1 + cos ≈ 1e-10
    elif family in ("decades", "extreme"):  # norms over 12 or 24 decades
        span = 12 if family == "decades" else 24
        J = torch.randn(T, d, generator=gen, dtype=torch.float64)
        J = J * 10.0 ** (span * torch.rand(T, 1, generator=gen, dtype=torch.float64) - span / 2)
    else:  # wide: more tasks than parameters, a singular Gramian
        J = torch.randn(T + 2, max(1, T // 2), generator=gen, dtype=torch.float64)
    return family, (J * 2.0**log2_scale).to(dtype)


def _weights_and_size(method, Jd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = method.weights(Jd @ Jd.T)
    return w, (w.abs() * Jd.norm(dim=1)).sum()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_campaign(name):
    @settings(max_examples=examples(80))
    @given(problems())
    def check(problem):
        family, J = problem
        if not bool(torch.isfinite(J).all()):
            return  # the scale overflowed the dtype: not an input anyone has
        eps = torch.finfo(J.dtype).eps
        Jd = J.double()
        w, size = _weights_and_size(METHODS[name](), Jd)
        if float(w.abs().max()) > torch.finfo(J.dtype).max / 1e3:
            return  # the combination is formed in the gradients' dtype: its weights must fit there
        d = mtgrad.aggregate(J, METHODS[name]()).double()
        assert bool(torch.isfinite(d).all()), (name, family)
        norms = Jd.norm(dim=1)
        full_rank = J.shape[0] <= J.shape[1] and torch.linalg.matrix_rank(Jd / norms.clamp_min(1e-300).unsqueeze(1)) == J.shape[0]
        tol = 16 * eps * norms * size
        if not full_rank:
            # A singular face is solved by a pseudo-inverse that drops eigenvalues below 1e-12 of
            # the largest (mtgrad.solvers._common._PINV_RTOL): the constraints hold to that much.
            tol = tol + 1e-12 * norms * norms.max() * w.abs().max()
        if name in NON_CONFLICTING and not (name.startswith("cagrad") and family == "near_opposite"):
            # (CAGrad on nearly cancelling gradients meets its constraints only to the accuracy that
            # G carries there, ε‖g‖²/‖g_w‖²: see CAGrad's docstring. Norms over 24 decades hold.)
            assert bool((Jd @ d >= -tol).all()), (name, family, (Jd @ d).tolist())
        well_posed = bool(full_rank) and float(torch.linalg.svdvals(Jd / norms.unsqueeze(1))[-1]) > 1e-4
        if name == "imtlg" and well_posed:
            proj = (Jd @ d) / norms
            assert float((proj - proj.mean()).abs().max()) <= 1e-6 * float(proj.abs().max()) + 16 * eps * float(size), family
        if name == "nashmtl" and well_posed and J.dtype == torch.float64:
            G = Jd @ Jd.T
            residual = (G @ w) * w - 1  # (Gw)_i = 1/w_i, up to the ridge's O(ρ/σ²) move
            assert float(residual.abs().max()) <= 1e-5, family
        if J.dtype == torch.float32:
            ref = mtgrad.aggregate(Jd, METHODS[name]())
            assert float((d - ref).abs().max()) <= 64 * eps * float(size), (name, family)

    check()
