"""Shared pieces of the solvers: tolerances, the host-sync rule, equilibration, exact face solves."""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = torch.finfo(torch.float64).eps
# A task whose squared norm is below this fraction of the largest is a zero gradient. The Gramian
# is formed from exact products (mtgrad.gramian), so a zero gradient has G_ii = 0 exactly and any
# other, however small next to the rest (norm ratios of 1e24 and beyond), is a task to serve.
_ZERO_ROW = 1e-280
# Eigenvalues of the equilibrated KKT matrix below this fraction of the largest are treated as 0.
_PINV_RTOL = 1e-12
# Relative tolerance of the optimality test on the multipliers.
_KKT_TOL = 1e4 * _EPS
# Relative accuracy of a norm ‖Σ w_i g_i‖ computed from the Gramian (√ε, with a margin of 4).
_NORM_NOISE = 4 * _EPS**0.5


def _host_sync_is_free(t: Tensor) -> bool:
    """Whether a solver may read a flag on the host to skip work: on the CPU, and not while
    ``torch.compile`` traces it (a data-dependent branch breaks the graph; the branch-free
    route of the accelerators compiles whole)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _diag_scale(Q: Tensor) -> Tensor:
    """D with D_i = 1/√Q_ii (1/√max_j Q_jj for a zero row), so that D Q D has a unit diagonal."""
    diag = Q.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    top = diag.amax(dim=-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    return torch.where(diag > top * _ZERO_ROW, diag, top).rsqrt()


def _equilibrate(Q: Tensor, D: Tensor) -> Tensor:
    """``D Q D``, exactly symmetric and with an exact unit diagonal where ``D_i = 1/√Q_ii``.

    Computed as it stands, ``(Q_ij·D_i)·D_j`` and ``(Q_ji·D_j)·D_i`` differ by an ulp and so does
    ``Q_ii·D_i²`` from 1. For two nearly opposite gradients (1 + cos ~ 1e-9) such an ulp is a
    relative error of 1e-7 in the quantities the solution is made of, enough for an update that
    should balance the two to conflict with one of them.
    """
    Qs = Q * D.unsqueeze(-1) * D.unsqueeze(-2)
    Qs = 0.5 * (Qs + Qs.mT)
    diag = Q.diagonal(dim1=-2, dim2=-1)
    unit = (diag * D * D - 1).abs() < 1e-12  # the rows D normalised (not the zero rows)
    eye = torch.eye(Q.shape[-1], dtype=torch.bool, device=Q.device)
    return torch.where(eye & unit.unsqueeze(-1), 1.0, Qs)


class _Faces:
    """Exact solutions of ``min ½wᵀQw + pᵀw`` s.t. ``Σ_{i∈F} w_i = s``, ``w_i = 0`` off the free set F.

    The problem is solved in equilibrated variables ``w = Dŵ`` (``DQD`` has a unit diagonal), so
    gradients whose norms differ by orders of magnitude are treated alike. With ``x = Q̂⁻¹D`` and
    ``y = Q̂⁻¹Dp`` the solution is ``ŵ = νx − y``, ``ν = (s + Dᵀy)/(Dᵀx)`` (a Schur complement), via
    a Cholesky factorisation of the free block. A face whose free gradients are affinely dependent
    (duplicates, colinear rows, T > rank) has a singular block; there the minimum-norm solution of
    the full KKT system is used (eigendecomposition), which is exact because the system is
    consistent. On an accelerator that route is always taken, so no step reads a flag on the host.
    """

    def __init__(self, Q: Tensor) -> None:
        self.Q = Q
        self.D = _diag_scale(Q)
        self.Qs = _equilibrate(Q, self.D)
        self.eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)

    def solve(self, p: Tensor, s: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
        """``p`` (..., K, T) and sums ``s`` (..., K) → ``w`` (..., K, T) and multipliers ``ν`` (..., K)."""
        D = torch.where(free, self.D, torch.zeros_like(self.D))
        pair = free.unsqueeze(-1) & free.unsqueeze(-2)
        Qs = torch.where(pair, self.Qs, self.eye)
        rhs = torch.cat([D.unsqueeze(-1), (D.unsqueeze(-2) * p).transpose(-1, -2)], dim=-1)  # (..., T, 1+K)
        if _host_sync_is_free(Qs):
            L, info = torch.linalg.cholesky_ex(Qs)
            if not bool(info.any()):
                sol = torch.cholesky_solve(rhs, L)
                x, y = sol[..., :1], sol[..., 1:]
                dx = (D.unsqueeze(-1) * x).sum(-2)  # (..., 1)
                dy = (D.unsqueeze(-1) * y).sum(-2)  # (..., K)
                nu = (s + dy) / dx
                w_hat = nu.unsqueeze(-2) * x - y  # (..., T, K)
                return (self.D.unsqueeze(-1) * w_hat).transpose(-1, -2), nu
        return self._solve_singular(Qs, D, p, s)

    def _solve_singular(self, Qs: Tensor, D: Tensor, p: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        gamma = D.amax(dim=-1, keepdim=True)  # keeps the constraint row's entries O(1)
        a = D / gamma
        top = torch.cat([Qs, a.unsqueeze(-1)], dim=-1)
        bottom = torch.cat([a, torch.zeros_like(a[..., :1])], dim=-1).unsqueeze(-2)
        M = torch.cat([top, bottom], dim=-2)
        b = torch.cat([-p * D.unsqueeze(-2), (s / gamma).unsqueeze(-1)], dim=-1)
        x = (torch.linalg.pinv(M, rtol=_PINV_RTOL, hermitian=True) @ b.transpose(-1, -2)).transpose(-1, -2)
        T = Qs.shape[-1]
        # The scaled column is D/γ, so its unknown is −γν.
        return x[..., :T] * self.D.unsqueeze(-2), -x[..., T] / gamma

    def multipliers(self, w: Tensor, p: Tensor, nu: Tensor) -> Tensor:
        """``(Qw + p)_i − ν``: non-negative off the free set at a minimiser."""
        return (self.Q @ w.unsqueeze(-1)).squeeze(-1) + p - nu.unsqueeze(-1)


def _solve_face(Q: Tensor, rhs_p: Tensor, rhs_one: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """One-off :meth:`_Faces.solve` (``rhs_p`` (..., K, T), sums ``rhs_one`` (..., K))."""
    return _Faces(Q).solve(rhs_p, rhs_one, free)


def _kkt_tolerance(Q: Tensor, p: Tensor, w: Tensor) -> Tensor:
    """Per-coordinate rounding bound of ``(Qw + p)_i``: ε·(|p_i| + √Q_ii·Σ_j √Q_jj w_j)."""
    root = Q.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    spread = (root * w.abs()).sum(-1, keepdim=True)
    return _KKT_TOL * (p.abs() + root * spread + spread.square())


# A Cholesky pivot² below this (on a unit-diagonal matrix) marks the face as numerically singular.
_PIVOT_TOL = 1e-13


# Below this many tasks a face is solved in place (masked to the identity off the free set); from
# it on, the CPU gathers each problem's free block into the smallest common size first.
_COMPACT_MIN_T = 16


def _masked_psd_solve(A: Tensor, rhs: Tensor, free: Tensor) -> Tensor:
    """``x`` with ``A_FF x_F = rhs_F`` and ``x = 0`` off ``F``, for PSD ``A`` with a unit-ish diagonal.

    ``A`` (..., T, T) — or one matrix (T, T) shared by every problem —, ``rhs`` and ``free``
    (..., T). A well-conditioned block is factorised by Cholesky; a (numerically) singular one —
    duplicate, colinear or T > rank gradients — gets the minimum-norm solution through an
    eigendecomposition, exact when the system is consistent. On the CPU the eigendecomposition
    runs only if some block needs it; on an accelerator it always runs and ``torch.where`` picks
    per problem, so nothing is read on the host.

    On the CPU with ``T ≥ 16`` the free blocks are first gathered, free indices first, into
    ``K × K`` matrices (``K`` the largest free set of the batch, padded with the identity): the
    same solve at ``(K/T)³`` of the cost. It agrees with the in-place solve to rounding, not bit
    for bit (the factorisation's summation order depends on the size).
    """
    T = A.shape[-1]
    if _host_sync_is_free(A) and T >= _COMPACT_MIN_T and rhs.dim() == 2:
        if rhs.shape[0] == 1:  # one problem (DualProj): its free block by index, no padding
            return _single_psd_solve(A, rhs, free)
        K = int(free.sum(-1).max())
        if K < T:
            return _compact_psd_solve(A, rhs, free, K)
    eye = torch.eye(T, dtype=A.dtype, device=A.device)
    M = torch.where(free.unsqueeze(-1) & free.unsqueeze(-2), A, eye)
    b = torch.where(free, rhs, torch.zeros_like(rhs)).unsqueeze(-1)
    return torch.where(free, _psd_solve(M, b).squeeze(-1), 0.0)


def _psd_solve(M: Tensor, b: Tensor) -> Tensor:
    """``M⁻¹b`` by Cholesky, the minimum-norm solution where ``M`` is (numerically) singular."""
    L, info = torch.linalg.cholesky_ex(M)
    good = (info == 0) & (L.diagonal(dim1=-2, dim2=-1).square() > _PIVOT_TOL).all(-1)
    x = torch.cholesky_solve(b, L)
    if not _host_sync_is_free(M) or not bool(good.all()):
        xp = torch.linalg.pinv(M, rtol=_PINV_RTOL, hermitian=True) @ b
        x = torch.where(good[..., None, None], x, xp)
    return x


def _single_psd_solve(A: Tensor, rhs: Tensor, free: Tensor) -> Tensor:
    """:func:`_compact_psd_solve` for one problem (``rhs`` (1, T)): the same K × K block (free
    indices ascending), taken by index; bit for bit the same solution, in fewer ops."""
    T = rhs.shape[-1]
    idx = free.reshape(T).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return torch.zeros_like(rhs)
    M = A.reshape(T, T).index_select(0, idx).index_select(1, idx).unsqueeze(0)
    b = rhs.index_select(-1, idx).unsqueeze(-1)
    return torch.zeros_like(rhs).index_copy_(-1, idx, _psd_solve(M, b).squeeze(-1))


def _compact_psd_solve(A: Tensor, rhs: Tensor, free: Tensor, K: int) -> Tensor:
    """:func:`_masked_psd_solve` on ``N`` problems (``rhs`` (N, T)) with free sets of at most ``K``."""
    N, T = rhs.shape
    if K == 0:
        return torch.zeros_like(rhs)
    # Free indices first (ascending), then the others; the first K of each row.
    order = torch.sort(free.logical_not().to(torch.uint8), dim=-1, stable=True).indices[:, :K]
    valid = torch.arange(K, device=A.device) < free.sum(-1, keepdim=True)  # (N, K)
    if A.dim() == 2 or A.shape[0] == 1:
        rows = A.reshape(T, T).index_select(0, order.reshape(-1)).view(N, K, T)
    else:
        rows = A.gather(-2, order.unsqueeze(-1).expand(N, K, T))
    M = rows.gather(-1, order.unsqueeze(-2).expand(N, K, K))
    # The padding: identity rows and columns (in place: fewer large temporaries).
    M.masked_fill_((valid.unsqueeze(-1) & valid.unsqueeze(-2)).logical_not_(), 0.0)
    M.diagonal(dim1=-2, dim2=-1).masked_fill_(valid.logical_not(), 1.0)
    b = torch.where(valid, rhs.gather(-1, order), 0.0).unsqueeze(-1)
    xc = torch.where(valid, _psd_solve(M, b).squeeze(-1), 0.0)
    # Padding positions point at indices off the free set, where x is 0 anyway.
    return torch.zeros_like(rhs).scatter_(-1, order, xc)
