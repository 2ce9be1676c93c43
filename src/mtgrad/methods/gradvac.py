"""GradVac: gradient vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._state import check_state_keys, generator_state, load_generator_state
from .base import Weighting
from .pcgrad import PCGrad, _partner_layout

__all__ = ["GradVac"]

Order = Literal["random", "fixed"]
TargetUpdate = Literal["always", "below_target"]

_EPS = torch.finfo(torch.float64).eps


class GradVac(Weighting):
    r"""Gradient Vaccine, Algorithm 1 of Wang et al. (2021).

    Like PCGrad, but every pair aims at an adaptive target similarity ``φ̂_ij`` instead of 0. For
    every task i, starting from ``g_i' = g_i``, visit the other tasks j in a fresh random order::

        φ_ij = cos(g_i', g_j)
        if φ_ij < φ̂_ij:
            g_i' += ‖g_i'‖ (φ̂_ij√(1−φ_ij²) − φ_ij√(1−φ̂_ij²)) / (‖g_j‖√(1−φ̂_ij²)) · g_j     (eq. 2)
        φ̂_ij ← (1 − β) φ̂_ij + β φ_ij                                                      (eq. 3)

    and return ``Σ_i g_i'``. The correction makes ``cos(g_i', g_j) = φ̂_ij`` exactly; it is added
    along the *original* ``g_j``, and ``φ̂`` starts at 0. With ``φ̂ ≡ 0`` (e.g. ``beta = 0``)
    the step is PCGrad's projection, and this class returns :class:`PCGrad`'s weights for the
    same visiting orders (same ``order``/``generator`` draws) bit for bit — except where some
    ``g_i'`` has cancelled to rounding level, which GradVac leaves alone (see below) and PCGrad
    may still project: both results are then rounding noise.

    **Which φ updates the target**: the one computed at the visit, from the current ``g_i'``
    before its correction (Alg. 1; torchjd). ``target_update="always"`` (paper,
    torchjd) updates ``φ̂_ij`` at every visit; ``"below_target"`` only when ``φ_ij < φ̂_ij``
    (LibMTL's code, whose EMA line sits inside the ``if``).

    Computed on the Gramian: ``g_i' = Σ_k C_ik g_k`` with ``C = I`` initially, so
    ``g_i'·g_j = (CG)_ij``; a correction ``g_i' += s g_j`` adds s to ``C_ij`` and
    ``2s g_i'·g_j + s²‖g_j‖²`` to ``‖g_i'‖² = C_i G C_iᵀ``. As in
    :class:`PCGrad`, T − 1 rounds each process every task against its next partner at once; a
    pair's target is read and written once per call, so the rounds equal the sequential loops
    exactly. Nothing leaves the device.

    Degenerate cases (no NaN): a zero ``g_j``, or a ``g_i'`` cancelled to rounding level
    (``‖g_i'‖² ≤ 16·T·ε`` times its largest value so far), has ``φ_ij = 0`` (what LibMTL's and
    torchjd's ``+1e-8`` give for an exact zero), is not corrected, and the target moves towards
    0; a target of exactly ±1 cannot be reached by adding a finite multiple of ``g_j`` and is
    skipped (LibMTL and torchjd divide by ``1e-8`` instead, i.e. add a huge multiple); ``φ`` is
    clipped to [−1, 1] against rounding. T = 1 returns ``[1]``.

    State: the T×T target matrix ``φ̂`` (created as zeros on the first call with a given T — a
    different T starts a new one — and kept on the Gramian's device) and the generator's state,
    both in :meth:`state_dict`. Because the targets belong to one problem, only a single Gramian
    ``(T, T)`` is accepted, not a batch.

    Args:
        beta: EMA rate ``β ∈ [0, 1]`` of the targets. 0.5 is LibMTL's and torchjd's default;
            ``β = 0`` keeps every target at 0 (PCGrad).
        order: ``"random"`` (paper: an independent random order per task) or ``"fixed"``
            (ascending task index), drawn exactly as :class:`PCGrad` draws them.
        target_update: ``"always"`` (paper) or ``"below_target"`` (LibMTL), see above.
        generator: source of the random orders; its state is part of :meth:`state_dict`.

    LibMTL and the paper also apply GradVac per layer or per parameter matrix (one target per
    group); here it acts on the gradients that produced the Gramian — call it per group for that.
    """

    def __init__(
        self,
        beta: float = 0.5,
        order: Order = "random",
        target_update: TargetUpdate = "always",
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
        if target_update not in ("always", "below_target"):
            raise ValueError(f"target_update must be 'always' or 'below_target', got {target_update!r}")
        self.beta = float(beta)
        self.target_update: TargetUpdate = target_update
        self._orders = PCGrad(order=order, generator=generator)  # validates order and generator
        self.order: Order = order
        self.generator = generator
        self.targets: Tensor | None = None  # φ̂, (T, T) float64

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        if gramian.dim() != 2:
            raise ValueError(
                f"GradVac keeps one target matrix per problem and takes a single Gramian (T, T), got shape "
                f"{tuple(gramian.shape)}; use one GradVac per problem"
            )
        T = gramian.shape[-1]
        device, dtype = gramian.device, gramian.dtype
        if self.targets is not None and self.targets.shape[-1] != T:
            raise ValueError(
                f"GradVac holds its targets φ̂ for {self.targets.shape[-1]} tasks, got a Gramian for {T}: one "
                "GradVac serves one problem (make a new one for another)"
            )
        if self.targets is None:
            self.targets = torch.zeros(T, T, dtype=dtype, device=device)
        targets = self.targets.to(device=device, dtype=dtype)
        orders = self._orders.visit_orders((), T, device)  # (T, R): row i lists its partners j
        R = orders.shape[-1]
        if R == 0:
            self.targets = targets
            return gramian.new_ones(T)
        # Everything about the partners is known before the rounds; laid out round-major (R, T),
        # so that round r reads contiguous slices. Per-row scalars are kept (T, 1, 1), the shape of
        # the batched dot products, so that no round reshapes anything but the step.
        rows_j, sq_j, flat = _partner_layout(gramian.unsqueeze(0), orders.unsqueeze(0))
        rows_j, sq_j = rows_j.view(R, T, T, 1), sq_j.reshape(R, T, 1, 1)  # G_j· and ‖g_j‖² per round
        part = orders.t()  # (R, T): the partner j of row i in round r
        target = targets.t().gather(0, part)  # φ̂_ij, read once per call
        root_target = (1.0 - target.square()).clamp_min(0.0).sqrt()
        # A zero g_j, or a target of exactly ±1 (no finite multiple of g_j reaches it), is never
        # corrected: dividing the (finite) step numerator by −∞ gives 0.
        target_r, root_r = target.view(R, T, 1, 1), root_target.view(R, T, 1, 1)
        reachable = (sq_j > 0) & (root_r > 0)
        slope = torch.where(reachable, target_r / torch.where(reachable, root_r, 1.0), 0.0)  # φ̂/√(1−φ̂²)
        neg_sq_j = torch.where(reachable, sq_j.neg(), -torch.inf)
        never = torch.full_like(sq_j[0], -torch.inf)
        scaled_eps = 16 * T * _EPS

        coef = torch.eye(T, dtype=dtype, device=device)  # g_i' = Σ_k C_ik g_k
        cflat, crows = coef.view(-1), coef.view(T, 1, T)
        norm_sq = gramian.diagonal().reshape(T, 1, 1)  # ‖g_i'‖², updated exactly along with C
        level = norm_sq * scaled_eps  # rounding level of norm_sq: ∝ the largest ‖g_i'‖² so far
        dots_r, norms_r, valid_r = [], [], []
        for rows, flat_r, sqj, neg_sqj, k in zip(rows_j, flat, sq_j, neg_sq_j, slope):
            dots = torch.bmm(crows, rows)  # g_i'·g_j, summed exactly as PCGrad does
            valid = norm_sq > level  # g_i' has not cancelled to rounding level
            # ‖g_i'‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²))
            #   = (φ̂/√(1−φ̂²) · √(‖g_i'‖²‖g_j‖² − (g_i'·g_j)²) − g_i'·g_j) / ‖g_j‖²,
            # whose numerator is positive exactly when φ < φ̂ (x ↦ x/√(1−x²) increases): Alg. 1's
            # test "φ < φ̂" is its sign, kept by clamping minus the numerator at 0. With φ̂ = 0 the
            # step is −min(g_i'·g_j, 0)/‖g_j‖², PCGrad's projection bit for bit.
            gap = torch.addcmul(norm_sq * sqj, dots, dots, value=-1.0).clamp_min_(0.0).sqrt_()
            minus_numerator = torch.addcmul(dots, k, gap, value=-1.0).clamp_max_(0.0)
            step = minus_numerator.div_(torch.where(valid, neg_sqj, never))
            cflat.index_add_(0, flat_r, step.view(T))
            dots_r.append(dots)
            norms_r.append(norm_sq)
            valid_r.append(valid)
            norm_sq = torch.addcmul(norm_sq, step, torch.addcmul(dots, step, sqj, value=0.5), value=2.0)
            level = torch.maximum(level, norm_sq * scaled_eps)
        # (R, T): φ_ij at the visit (0 where g_i' had cancelled).
        dots, norms, valid = (torch.stack(t).view(R, T) for t in (dots_r, norms_r, valid_r))
        inv_root_j = torch.where(sq_j > 0, sq_j.rsqrt(), 0.0).view(R, T)
        phi = torch.where(valid, (dots * norms.rsqrt()).mul_(inv_root_j), 0.0).clamp_(-1.0, 1.0)
        moved = torch.lerp(target, phi, self.beta)
        if self.target_update == "below_target":
            moved = torch.where(phi < target, moved, target)
        self.targets = targets.t().scatter(0, part, moved).t().contiguous()
        return coef.sum(-2)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": None if self.targets is None else self.targets.clone(), **generator_state(self.generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"targets", *generator_state(self.generator)}, "GradVac")
        targets = state["targets"]
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.shape[0] != targets.shape[1]:
                raise ValueError(f"GradVac state 'targets' must be a (T, T) tensor or None, got {targets!r}")
            targets = targets.detach().clone()
        load_generator_state(self.generator, state, "GradVac")
        self.targets = targets

    def _config(self) -> dict[str, Any]:
        return {"beta": self.beta, "order": self.order, "target_update": self.target_update}
