"""The three kinds of method and the interface each implements.

* :class:`Weighting` — most methods (PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL, …): the Gramian
  ``G = J Jᵀ`` of the task gradients (T×T, optionally with leading batch dimensions) → task
  weights ``w`` (T,); the update is ``d = Jᵀw = Σ_i w_i g_i``. Separating the weighting from the
  Jacobian lets one method serve every engine: a stored Jacobian, a Gramian accumulated layer by
  layer, or a batch of small problems (the 2-D toys).
* :class:`JacobianAggregator` — methods that work coordinate-wise on the task gradients
  themselves (GradDrop): per-parameter blocks ``(T, *shape)`` → per-parameter updates.
* :class:`LossWeighting` — methods that need only the losses (uncertainty weighting, DWA, FAMO,
  …): the losses → one scalar to backpropagate once; no per-task gradients at all.

State (running averages, logits, random streams) lives in one explicit place per method and is
what ``state_dict`` saves; nothing else about a method changes between steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from .. import solvers

__all__ = ["Method", "Weighting", "JacobianAggregator", "LossWeighting"]


class Method(ABC):
    """What every method shares: a readable ``repr`` and ``state_dict``/``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue a run identically (random streams, running averages)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


class Weighting(Method):
    """Gramian ``(..., T, T)`` → task weights ``(..., T)``.

    Subclasses implement :meth:`_weights` on a validated float64 Gramian whose largest diagonal
    entry lies in [1, 4) — :meth:`weights` checks the input, promotes it to float64 (the T×T
    problems are tiny, and their answers must not depend on the gradients' precision), divides it
    by a power of two ``λ`` (exact), and maps the answer back with the method's
    :attr:`gramian_degree` ``k``: ``w(G) = λ^k · w(G/λ)``. The solvers therefore see the same
    numbers whether the gradients have norms of 1e-30 or 1e30, which makes every method
    positively homogeneous where its math is (``A(sJ) = s·A(J)`` for ``k = 0``) and leaves their
    tolerances meaningful. Weights are returned in the Gramian's dtype.

    A weighting that also needs the loss values (e.g. MGDA's ``"loss"`` normalisation) sets
    ``needs_losses = True`` and receives them as a float64 tensor ``(..., T)``.
    """

    needs_losses: bool = False

    @property
    def gramian_degree(self) -> float:
        """``k`` with ``w(λG) = λ^k w(G)`` for every ``λ > 0``: 0 when the update ``Σ w_i g_i``
        scales with the gradients (PCGrad, CAGrad, MGDA, …), −½ when it does not depend on their
        scale (Nash-MTL)."""
        return 0.0

    def weights(self, gramian: Tensor, losses: Tensor | None = None, *, validate: bool | None = None) -> Tensor:
        """Task weights ``w`` such that the update is ``Σ_i w_i g_i``.

        ``validate`` checks that ``gramian`` is finite, symmetric and positive semi-definite up to
        rounding (an eigen-decomposition of the T×T matrix, then a read on the host) and raises a
        ``ValueError`` otherwise. ``None`` (default) validates where that read costs nothing, on
        the CPU, and not on an accelerator, where the call then never synchronises with the host.
        The backward engines, which form ``G`` themselves and check it for overflow, pass False.
        """
        _check_gramian(gramian)
        if losses is not None:
            losses = losses.detach().to(device=gramian.device, dtype=torch.float64)
            if losses.shape != gramian.shape[:-1]:
                raise ValueError(f"losses must have shape {tuple(gramian.shape[:-1])}, got {tuple(losses.shape)}")
        elif self.needs_losses:
            raise ValueError(f"{type(self).__name__} needs the loss values: call weights(gramian, losses)")
        G = gramian.detach().to(torch.float64)
        if validate or (validate is None and solvers._common._host_sync_is_free(G)):
            _check_psd(G, torch.finfo(gramian.dtype).eps)
        G = 0.5 * (G + G.transpose(-1, -2))
        scale = _power_of_two_scale(G)
        w = self._weights(G / scale.unsqueeze(-1), losses)
        if self.gramian_degree != 0.0:
            w = w * scale.pow(self.gramian_degree)
        return w.to(gramian.dtype)

    __call__ = weights

    @abstractmethod
    def _weights(self, gramian: Tensor, losses: Tensor | None) -> Tensor: ...


def unit_scaled(gramian: Tensor) -> Tensor:
    """``G/λ`` with ``λ`` the power of four of :meth:`Weighting.weights` (largest diagonal in [1, 4)).

    For solvers called outside :meth:`Weighting.weights` on a scale-invariant problem.
    """
    return gramian / _power_of_two_scale(gramian).unsqueeze(-1)


def _power_of_two_scale(G: Tensor) -> Tensor:
    """``λ = 4^e`` (..., 1) with ``max_i G_ii / λ ∈ [1, 4)``; 1 for a zero Gramian.

    A power of four, so that ``λ^½`` (Nash-MTL's degree) is exact too.
    """
    top = G.diagonal(dim1=-2, dim2=-1).amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
    return torch.ldexp(torch.ones_like(top), torch.div(exponent - 1, 2, rounding_mode="floor") * 2)


def _check_psd(G: Tensor, eps: float) -> None:
    """Refuse a Gramian that is not finite, or not symmetric / PSD beyond rounding.

    Rounding means that of ``eps`` (the Gramian's dtype) and at least float32's: a float64 ``G``
    is often formed from fp32 gradients, indefinite by ~1e-8 relative where they are degenerate.
    """
    T = G.shape[-1]
    raw = G.diagonal(dim1=-2, dim2=-1)
    diag = raw.clamp_min(0.0)
    root = diag.sqrt()
    bound = root.unsqueeze(-1) * root.unsqueeze(-2)  # |G_ij| ≤ √(G_ii G_jj)
    tol = 64 * T * max(eps, torch.finfo(torch.float32).eps)
    asym = (G - G.mT).abs()
    top = diag.amax(dim=-1)
    sym = 0.5 * (G + G.mT)
    # λ_min(G) ≥ −tol·top iff G + tol·top·I is positive definite: a Cholesky factorisation (a
    # fraction of an eigendecomposition's cost) decides it up to rounding far below tol·top;
    # only where it fails are the eigenvalues computed, and they decide as before.
    shifted = sym.clone()
    shifted.diagonal(dim1=-2, dim2=-1).add_((tol * top).unsqueeze(-1))
    info = torch.linalg.cholesky_ex(shifted)[1]
    finite, symmetric, factorised, nonnegative = torch.stack(
        [
            torch.isfinite(G).all(),
            (asym <= tol * bound + torch.finfo(torch.float64).tiny).all(),
            (info == 0).all(),
            (raw >= -tol * top.unsqueeze(-1)).all(),
        ]
    ).tolist()  # one read on the host
    if not finite:
        raise ValueError("gramian has NaN or inf entries (an overflow in the task gradients?)")
    if not nonnegative:
        where = (raw < -tol * top.unsqueeze(-1)).nonzero()[0].tolist()  # batch indices, then i
        index = ", ".join(map(str, [*where, where[-1]]))
        raise ValueError(
            f"gramian has a negative diagonal entry (G[{index}] = {float(raw[tuple(where)]):.3g}): "
            "its diagonal holds the squared norms ‖g_i‖²; pass G = J Jᵀ of the task gradients"
        )
    if not symmetric:
        raise ValueError(
            f"gramian is not symmetric (max |G - Gᵀ| = {float(asym.max()):.3g}): pass G = J Jᵀ of the task gradients"
        )
    if factorised:
        return
    lowest = torch.linalg.eigvalsh(sym)[..., 0]
    if bool((lowest < -tol * top).any()):
        raise ValueError(
            f"gramian is not positive semi-definite (eigenvalue {float(lowest.min()):.3g} against a largest "
            f"diagonal entry of {float(top.max()):.3g}): pass G = J Jᵀ of the task gradients"
        )


class JacobianAggregator(Method):
    """Per-parameter task-gradient blocks ``(T, *shape)`` → per-parameter updates ``shape``.

    For methods that act on each coordinate of the gradients (GradDrop), which no Gramian can
    express. ``losses`` (T,) are given for methods that use them.
    """

    @abstractmethod
    def aggregate_blocks(self, blocks: list[Tensor], losses: Tensor | None = None) -> list[Tensor]: ...


class LossWeighting(Method):
    """Losses ``(T,)`` → one scalar to backpropagate; no per-task gradients are computed.

    ``combine`` returns ``(objective, weights)``: ``objective`` is backpropagated once (it may
    depend on the method's learnable :meth:`parameters`, e.g. uncertainty weighting's log-variances)
    and ``weights`` (T,) are the effective task weights, for logging. Methods that learn from the
    next losses (FAMO) do so in :meth:`after_step`, which :class:`mtgrad.MTLOptimizer` calls.
    """

    #: True for methods that learn from the losses recomputed after the model's step (FAMO):
    #: ``MTLOptimizer.step`` then requires a ``closure`` rather than silently not learning.
    needs_closure: bool = False

    @abstractmethod
    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]: ...

    def parameters(self) -> list[Tensor]:
        """Learnable tensors of the method, to be optimised with the model (empty by default)."""
        return []

    def after_step(self, losses: Tensor) -> None:
        """Hook called with the losses recomputed after the model's step (no-op by default)."""

    def linear_terms(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(a, r)`` such that :meth:`combine` backpropagates ``Σ_i a_i L_i + r`` whatever the
        losses ``L``: ``a`` (T,) and ``r`` (a scalar, or ``None``) depend on the method's
        parameters and state only (``like``, the losses, gives T, dtype and device, not values).

        Gradient accumulation rests on it: ``Σ_i a_i L_i^(k)`` backpropagated per micro-batch and
        ``r`` once is the gradient of the large-batch objective, because the gradient of
        ``Σ_i a_i Σ_k L_i^(k)`` is the sum of the micro-batches' (:meth:`mtgrad.MTLOptimizer.backward`).
        What the method learns from the loss values goes to :meth:`observe`, once per step.

        The default raises ``NotImplementedError``: the objective is not linear in the losses
        (GLS's geometric mean, FAMO's logarithms) or its weights need more than the state
        (GradNorm's gradient norms, a DWA window that includes the current losses).
        """
        raise NotImplementedError(
            f"{type(self).__name__}'s objective is not Σ_i a_i L_i + r with a and r independent of the losses"
        )

    def observe(self, values: Tensor) -> None:
        """Learn from one step's loss values ``(T,)`` (detached), as :meth:`combine` does besides
        its objective (DWA's windows); with gradient accumulation, called once per step with the
        losses summed over its micro-batches. A no-op by default."""


def _check_gramian(gramian: Tensor) -> None:
    if not isinstance(gramian, Tensor):
        raise TypeError(f"gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if gramian.dim() < 2 or gramian.shape[-1] != gramian.shape[-2]:
        raise ValueError(f"gramian must have shape (..., T, T), got {tuple(gramian.shape)}")
    if gramian.shape[-1] == 0:
        raise ValueError("gramian has T = 0 tasks: there is nothing to weight")
    if not gramian.is_floating_point():
        raise TypeError(f"gramian must be a floating-point tensor, got dtype {gramian.dtype}")
