"""PCGrad: gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", 2020)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._loss_checks import check_bool
from ._state import check_state_keys, generator_state, load_generator_state
from .base import Weighting

__all__ = ["PCGrad"]

Reduction = Literal["sum", "mean"]
Order = Literal["random", "fixed"]


class PCGrad(Weighting):
    r"""Projecting conflicting gradients, Algorithm 1 of Yu et al. (2020).

    For every task i, starting from ``g_i^PC = g_i``, visit the other tasks j in a fresh random
    order; whenever ``g_i^PC · g_j < 0`` replace ``g_i^PC ← g_i^PC − (g_i^PC·g_j / ‖g_j‖²) g_j``
    (projection onto the normal plane of the *original* ``g_j``, Alg. 1 line 7). The update is
    ``Σ_i g_i^PC`` (line 8). A zero ``g_j`` never conflicts and is skipped.

    Every ``g_i^PC`` stays a combination of the original gradients, so the method is computed on
    the Gramian alone: the coefficient rows ``C`` (``g_i^PC = Σ_j C_ij g_j``) start at the identity
    and each round projects every task against its next partner at once (T − 1 rounds, no
    data-dependent branching, nothing leaves the device). The weights are ``Σ_i C_i``.

    Args:
        reduction: ``"sum"`` (paper, default; also official TF code, LibMTL, torchjd, nash-mtl) or
            ``"mean"`` (CAGrad paper's Alg. 2 restatement; Pytorch-PCGrad always does this).
        order: ``"random"`` (paper: an independent uniformly random order per task) or
            ``"fixed"`` (ascending task index for every i, what the official TF code effectively
            does because its shuffle result is discarded).
        include_self: also visit ``j = i`` (official TF code, Pytorch-PCGrad, LibMTL, nash-mtl).
            After earlier projections ``g_i^PC·g_i`` can turn negative (≈3% of strongly conflicting
            cases with T ≥ 3), which then changes the result. The paper excludes it.
        generator: source of the random orders, for reproducible runs; its state is part of
            :meth:`state_dict`. Defaults to torch's global generator.
    """

    def __init__(
        self,
        reduction: Reduction = "sum",
        order: Order = "random",
        include_self: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if order not in ("random", "fixed"):
            raise ValueError(f"order must be 'random' or 'fixed', got {order!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.reduction: Reduction = reduction
        self.order: Order = order
        self.include_self = check_bool(include_self, "include_self")
        self.generator = generator

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gramian.shape[-1]
        if T == 2:
            w = _two_tasks(gramian)
            return w / 2 if self.reduction == "mean" else w
        batch = gramian.shape[:-2]
        orders = self.visit_orders(batch, T, gramian.device)
        flat = gramian.reshape(-1, T, T)
        coef = _project_rounds(flat, orders.reshape(flat.shape[0], T, orders.shape[-1]))
        w = coef.sum(-2).reshape(*batch, T)
        return w / T if self.reduction == "mean" else w

    def visit_orders(self, batch: torch.Size | tuple[int, ...], T: int, device: torch.device) -> Tensor:
        """Visit orders, shape ``(*batch, T, R)``: row i lists the tasks i is projected against.

        ``R = T − 1`` (``j ≠ i``), or ``T`` with ``include_self``.
        """
        idx = torch.arange(T, device=device)
        if self.order == "fixed":
            full = idx.expand(T, T)
            if not self.include_self:
                # Row i: 0..T-1 without i, ascending.
                full = torch.stack([torch.cat([idx[:i], idx[i + 1 :]]) for i in range(T)]) if T > 1 else full[:, :0]
            return full.expand(*batch, *full.shape)
        gen_device = self.generator.device if self.generator is not None else device
        keys = torch.rand(*batch, T, T, generator=self.generator, device=gen_device).to(device)
        if not self.include_self:
            keys = keys + torch.eye(T, device=device) * 2.0  # self sorts last, then is cut off
        order = keys.argsort(dim=-1)
        return order if self.include_self else order[..., : T - 1]

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, set(generator_state(self.generator)), "PCGrad")
        load_generator_state(self.generator, state, "PCGrad")

    def _config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "order": self.order, "include_self": self.include_self}


def _partner_layout(G: Tensor, orders: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What every round needs about the partners, laid out round-major (R, N, T) so that round r
    reads contiguous slices: the partner rows ``G_j·`` (R, N, T, T), ``‖g_j‖²`` (R, N, T) and the
    flat index of the coefficient ``C_ij`` in an (N, T, T) tensor (R, N·T)."""
    N, T, R = orders.shape
    part = orders.permute(2, 0, 1)  # (R, N, T): the partner j of row i in round r
    row_of = (torch.arange(N, device=G.device) * T).view(1, N, 1) + part  # row (n, j) of G viewed (N·T, T)
    rows = G.reshape(N * T, T).index_select(0, row_of.reshape(-1)).view(R, N, T, T)
    sq_j = G.diagonal(dim1=-2, dim2=-1).reshape(-1)[row_of]
    flat = (torch.arange(N * T, device=G.device) * T).view(1, N, T) + part
    return rows, sq_j, flat.reshape(R, N * T)


def _project_rounds(G: Tensor, orders: Tensor) -> Tensor:
    """PCGrad's coefficient rows ``C`` (N, T, T) for Gramians ``G`` (N, T, T) and visit orders (N, T, R).

    Round r projects every row i against its partner ``j = orders[n, i, r]`` at once:
    ``C_ij −= min(C_i·G_j, 0)/‖g_j‖²`` (a zero ``g_j`` has ``C_i·G_j = 0``, no step). Five
    tensor ops a round, the partners' data gathered before the rounds.
    """
    N, T, R = orders.shape
    coef = torch.eye(T, dtype=G.dtype, device=G.device).expand(N, T, T).contiguous()
    if R == 0:
        return coef
    rows, sq_j, flat = _partner_layout(G, orders)
    rows = rows.view(R, N * T, T, 1)
    safe = torch.where(sq_j > 0, sq_j, 1.0).reshape(R, N * T, 1, 1)
    cflat, crows = coef.view(-1), coef.view(N * T, 1, T)
    for rows_r, safe_r, flat_r in zip(rows.unbind(0), safe.unbind(0), flat.unbind(0)):
        dots = torch.bmm(crows, rows_r)  # g_i^PC · g_partner(i), one (1 × T)(T × 1) product per row
        cflat.index_add_(0, flat_r, dots.clamp_max_(0.0).div_(safe_r).view(-1), alpha=-1.0)
    return coef


def _two_tasks(G: Tensor) -> Tensor:
    """T = 2 in closed form (the proof of PCGrad's Thm. 1): when ``g₁·g₂ < 0``,
    ``g^PC = g₁ + g₂ − (g₁·g₂)(g₁/‖g₁‖² + g₂/‖g₂‖²)``, else ``g₁ + g₂``. The order cannot matter
    and a self-visit never projects (``g₁^PC·g₁ = ‖g₁‖² − (g₁·g₂)²/‖g₂‖² ≥ 0``), so no random
    order is drawn."""
    g11, g22, g12 = G[..., 0, 0], G[..., 1, 1], G[..., 0, 1]
    conflict = g12 < 0  # implies both norms > 0
    w1 = 1 - torch.where(conflict, g12 / torch.where(conflict, g11, 1.0), 0.0)
    w2 = 1 - torch.where(conflict, g12 / torch.where(conflict, g22, 1.0), 0.0)
    return torch.stack([w1, w2], dim=-1)
