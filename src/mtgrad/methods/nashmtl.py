"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..solvers import bargaining_weights
from ._state import check_state_keys
from .base import Weighting

__all__ = ["NashMTL"]


class NashMTL(Weighting):
    r"""Nash bargaining solution of Navon et al. (2022), "Multi-Task Learning as a Bargaining Game".

    The Nash bargaining solution of ``max_{‖d‖ ≤ ε} Σ_i log g_iᵀd`` is, up to scale,
    ``d = Σ_i α_i g_i`` with the positive ``α`` that solves the paper's bargaining condition
    ``GᵀGα = 1/α`` (their G stacks the gradients as columns)::

        (Gα)_i = 1/α_i   for every task,     G = JJᵀ,

    i.e. ``α_i g_iᵀd = 1``: every task gets the same "utility" ``α_i·g_iᵀd``. It is the unique
    minimiser of the strictly convex ``½αᵀGα − Σ_i log α_i`` and is computed exactly (to float64
    rounding) by damped Newton steps, :func:`mtgrad.solvers.bargaining_weights`. Consequences:
    ``‖d‖² = αᵀGα = T`` and the update is invariant to rescaling any task's gradient
    (``g_i → s_i g_i`` gives ``α_i → α_i/s_i``).

    What the official code (AvivNavon/nash-mtl, ``NashMTL``) does differently: it divides ``G`` by
    its Frobenius norm and runs up to ``optim_niter = 20`` cvxpy/ECOS convex programs (a
    concave-convex linearisation of ``Σ log α_i + log (Gα)_i``, warm-started from the previous
    ``α``), stopping when ``‖G̃α − 1/α‖ < 1e-3`` on the normalised ``G̃`` or when ``α`` moves less
    than 1e-6, and keeps the previous ``α`` when the solver fails — so its ``α`` is an
    approximation of the one here. After the backward it calls
    ``clip_grad_norm_(shared_parameters, max_norm=1.0)``: that clipping belongs to the training
    loop and is not done here. Since ``‖d‖ = √T``, it rescales every update to norm 1 for T ≥ 2.

    Degenerate inputs (no NaN): a zero gradient cannot meet the condition and gets weight 0; one
    task (``T = 1``) gets ``d = g/‖g‖``. When a non-negative combination of the gradients vanishes
    (two opposite gradients, 0 in their convex hull) no solution exists. The relative ridge
    ``G + ρ·diag(G)`` (``ridge = ρ = 1e-10``) makes one exist always — for regular inputs it moves
    ``α`` by ``O(ρ·α_i²G_ii)`` relative (≤ 1e-7 on the test families) — and keeps the weights
    finite, of order ``1/(√ρ‖g_i‖)``, in the degenerate case. There
    ``‖d‖² = T − ρ·Σ_i α_i²G_ii ≤ T`` still holds, but the ridged problem has condition ~1/ρ:
    the weights are determined to ~ε/ρ relative, and the part of ``d`` made of the cancelling
    huge weights depends on rounding (re-ordering the tasks moved ``d`` by up to 0.16·√T on the
    exactly degenerate test inputs; ``g₂ = −g₁`` gives ``d = 0`` exactly).

    State: the last computed ``α`` (warm start of the next solve, and the weights reused between
    updates) and the step counter; both are in :meth:`state_dict`.

    Args:
        update_weights_every: recompute ``α`` every this many calls and reuse it in between
            (official option, default 1).
        ridge: ``ρ > 0`` above.
        max_iter: Newton iteration cap. On the CPU the loop stops at convergence (4–8 iterations
            typically, warm-started 1–3, up to ~30 on degenerate inputs); on an accelerator all
            ``max_iter`` run (no host sync), so a smaller cap trades accuracy for time there.
    """

    def __init__(self, update_weights_every: int = 1, ridge: float = 1e-10, max_iter: int = 100) -> None:
        every = update_weights_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"update_weights_every must be an int ≥ 1, got {update_weights_every!r}")
        self.update_weights_every = update_weights_every
        self.ridge = _check_ridge(ridge)
        self.max_iter = _check_max_iter(max_iter)
        self._alpha: Tensor | None = None
        self._step = 0

    gramian_degree = -0.5  # (λG)(w/√λ) = 1/(w/√λ)

    def weights(self, gramian: Tensor, losses: Tensor | None = None, *, validate: bool | None = None) -> Tensor:
        shape = gramian.shape[:-1]
        stale = self._alpha is not None and self._alpha.shape != shape
        if self._alpha is None or self._step % self.update_weights_every == 0:
            self._alpha = super().weights(gramian, losses, validate=validate).to(torch.float64)
        elif stale:
            raise ValueError(
                f"NashMTL reuses its weights of shape {tuple(self._alpha.shape)} at this step "
                f"(update_weights_every={self.update_weights_every}), got a Gramian for shape {tuple(shape)}"
            )
        self._step += 1
        return self._alpha.to(device=gramian.device, dtype=gramian.dtype, copy=True)

    __call__ = weights

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        warm = self._alpha if self._alpha is not None and self._alpha.shape == gramian.shape[:-1] else None
        if warm is not None:
            warm = warm.to(gramian)  # a loaded state may come from another device
            # The last α is in the last Gramian's units; αᵀGα = T at the solution fixes its scale here.
            curvature = (warm.unsqueeze(-2) @ gramian @ warm.unsqueeze(-1)).squeeze(-1)
            warm = warm * torch.where(curvature > 0, (gramian.shape[-1] / curvature).sqrt(), torch.ones_like(curvature))
        return bargaining_weights(gramian, 1.0, ridge=self.ridge, w0=warm, max_iter=self.max_iter)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "alpha": None if self._alpha is None else self._alpha.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"step", "alpha"}, "NashMTL")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"NashMTL state 'step' must be an int ≥ 0, got {step!r}")
        alpha = state["alpha"]
        if alpha is not None and not isinstance(alpha, Tensor):
            raise TypeError(f"NashMTL state 'alpha' must be a tensor or None, got {type(alpha).__name__}")
        self._step = step
        self._alpha = None if alpha is None else alpha.detach().to(torch.float64).clone()

    def _config(self) -> dict[str, Any]:
        return {"update_weights_every": self.update_weights_every, "ridge": self.ridge, "max_iter": self.max_iter}


def _check_ridge(ridge: float) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (0 < ridge < math.inf):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    return float(ridge)


def _check_max_iter(max_iter: int) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int ≥ 1, got {max_iter!r}")
    return max_iter
