"""The CPU's compacted face solves (T ≥ 16) and the validation's Cholesky test against the
in-place solves and the eigenvalue test they replace."""

from __future__ import annotations

import pytest
import torch

import mtgrad
from mtgrad.solvers import _common, dual_cone_qp


def _gramian(T: int, d: int, seed: int, skew: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, d, generator=g, dtype=torch.float64)
    if skew:
        J = J * torch.logspace(-3, 3, T, dtype=torch.float64).unsqueeze(1)
    return J @ J.T


@pytest.mark.parametrize("T, d", [(20, 50), (40, 1000), (24, 12)])  # (24, 12): T > rank, singular faces
def test_compacted_face_solve_matches_in_place_solve(monkeypatch, T, d):
    G = _gramian(T, d, T + d)
    D = _common._diag_scale(G)
    A = _common._equilibrate(G, D)
    g = torch.Generator().manual_seed(1)
    free = torch.rand(30, T, generator=g) < 0.5
    rhs = torch.randn(30, T, generator=g, dtype=torch.float64)
    compact = _common._masked_psd_solve(A, rhs, free)
    monkeypatch.setattr(_common, "_COMPACT_MIN_T", 10**9)
    full = _common._masked_psd_solve(A, rhs, free)
    assert bool((compact[~free] == 0).all())
    torch.testing.assert_close(compact, full, rtol=1e-9, atol=1e-9 * full.abs().max().item())


@pytest.mark.parametrize("T, skew", [(40, False), (40, True), (64, False)])
def test_upgrad_at_many_tasks_is_the_dual_cone_projection(T, skew):
    G = _gramian(T, 1000, T, skew)
    u = torch.full((T,), 1.0 / T, dtype=torch.float64)
    v = dual_cone_qp(G.unsqueeze(-3), torch.diag_embed(u))  # (T, T): one projection per task
    # KKT of min vᵀGv s.t. v ≥ u_i e_i: Gv ≥ 0, complementary to v − lower.
    y = v @ G
    root = G.diagonal().sqrt()
    scale = (v.abs() * root).sum(-1, keepdim=True) * root
    assert bool((v >= torch.diag_embed(u) - 1e-15).all())
    assert bool((y >= -1e-10 * scale).all())
    assert bool((((v - torch.diag_embed(u)) * y).abs() <= 1e-10 * scale * v.abs().sum(-1, keepdim=True)).all())
    w = mtgrad.UPGrad().weights(G)
    torch.testing.assert_close(w, v.sum(-2), rtol=0, atol=0)
    assert bool(((G @ w) >= -1e-10 * root * (w.abs() @ root)).all())  # no task conflicts with the update


@pytest.mark.parametrize("shift", [-1e-3, -1e-6, 0.0])
def test_psd_check_decides_as_the_eigenvalues(shift):
    # A Gramian made indefinite by a chosen amount: rejected iff λ_min < −tol·top (tol = 64·T·ε32).
    T = 12
    G = _gramian(T, 6, 3)  # rank 6: λ_min = 0
    v = torch.linalg.eigh(G)[1][:, 0]
    top = G.diagonal().max()
    bad = G + shift * top * torch.outer(v, v)
    tol = 64 * T * torch.finfo(torch.float32).eps
    if shift * top < -tol * top:
        with pytest.raises(ValueError, match="positive semi-definite"):
            mtgrad.Mean().weights(bad)
    else:
        mtgrad.Mean().weights(bad)
