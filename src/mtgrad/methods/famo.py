"""FAMO: fast adaptive multitask optimization (Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive
Multitask Optimization", NeurIPS 2023)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._warnings import warn
from .base import LossWeighting
from ._loss_checks import check_finite_float, check_losses, check_num_tasks
from ._state import check_state_keys, state_tensor

__all__ = ["FAMO"]

EPS = 1e-8  # added to L_i − L_i^min before the logarithm, as in the official code and LibMTL


class FAMO(LossWeighting):
    r"""FAMO, Liu et al. (2023), Algorithm 1: balanced loss decrease with O(1) space and time.

    Task logits ξ (init 0) give ``z = softmax(ξ)``. With ``D_i = L_i − L_i^min + 10⁻⁸`` the
    backpropagated objective is

    ``Σ_i z_i log D_i / c``,  ``c = Σ_i z_i / D_i`` (held constant),

    whose gradient is ``Σ_i a_i ∇L_i`` with ``a_i = z_i / (c D_i)`` (Σ a_i = 1): one backward
    pass, no per-task gradients. :meth:`combine` reports ``a``.

    After the model's step, :meth:`after_step` receives the losses recomputed on the **same
    batch** (pass a ``closure`` to :meth:`mtgrad.MTLOptimizer.step`; after :func:`mtgrad.backward`
    and the optimizer's step, call it yourself — a second :meth:`combine` without it warns, as
    the logits then never learn) and learns ξ from how much
    each log-loss fell: with ``δ_i = log D_i(before) − log D_i(after)`` it sets
    ``ξ.grad = J_softmax(ξ)ᵀ δ = z ⊙ δ − z (zᵀδ)`` and takes one Adam step (weight decay γ).
    This is the logit update of the official code (``Cranial-XIX/FAMO``, ``famo.py`` and
    ``methods/weight_methods.py``) and LibMTL's ``FAMO.update_w``.

    Args:
        num_tasks: T, the number of losses.
        lr: Adam learning rate of the logits (official code and LibMTL ``FAMO_w_lr``: 0.025).
        weight_decay: γ, Adam's (L2) weight decay on the logits. 1e-3 is LibMTL's
            ``FAMO_w_gamma`` and the official QM9 script's ``--gamma``; the official ``famo.py``
            example uses 0.01 and its other benchmark scripts set their own γ.
        min_losses: ``L^min`` (T,), lower bounds of the losses (official ``set_min_losses``);
            default zeros, as in LibMTL and the official experiments. Losses below it are
            rejected (their log gap is undefined).
        device: where ξ lives (default: torch's default device); it must be the losses' device.
        dtype: ξ's dtype (default: torch's default dtype).

    State (saved by :meth:`state_dict`, exactly): ``logits`` ξ, the Adam state of ``optimizer``,
    and ``prev_losses``, the losses of the last :meth:`combine` not yet consumed by
    :meth:`after_step`. The official code also clips the shared gradient to norm 1 after the
    backward pass (``max_norm=1.0``); that is the training loop's choice, not this class's.
    Set ``check_values = False`` on an instance to skip the per-call value check (one host read).
    """

    needs_closure = True


    check_values: bool = True

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Tensor | Sequence[float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks)
        self.lr = check_finite_float(lr, "lr", positive=True)
        self.weight_decay = check_finite_float(weight_decay, "weight_decay", nonnegative=True)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"FAMO: dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.logits = torch.zeros(self.num_tasks, device=device, dtype=dtype, requires_grad=True)
        if min_losses is None:
            self.min_losses = torch.zeros_like(self.logits, requires_grad=False)
        else:
            m = torch.as_tensor(min_losses).detach().to(device=self.logits.device, dtype=dtype)
            if m.shape != (self.num_tasks,):
                raise ValueError(f"min_losses must have shape ({self.num_tasks},), got {tuple(m.shape)}")
            if not bool(torch.isfinite(m).all()):
                raise ValueError(f"min_losses must be finite, got {m.tolist()}")
            self.min_losses = m.clone()
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
        self.prev_losses: Tensor | None = None

    def _check(self, losses: Tensor) -> Tensor:
        return check_losses(
            losses, self.num_tasks, "FAMO", at_least=self.min_losses, device=self.logits.device,
            values=self.check_values,
        )

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        losses = self._check(losses)
        if self.prev_losses is not None:
            # mtgrad.backward cannot call after_step (it has no losses from after the step):
            # without it the logits never move and FAMO is a fixed weighting, silently.
            warn(
                "FAMO.combine() again before after_step(): the logits learned nothing from the previous step. "
                "After each optimizer step call method.after_step(losses recomputed on the same batch), or "
                "use MTLOptimizer.step(losses, closure=...), which does"
            )
        z = torch.softmax(self.logits.detach(), dim=-1)
        D = losses - self.min_losses + EPS
        c = (z / D.detach()).sum()
        objective = (torch.log(D) * z / c).sum()
        self.prev_losses = losses.detach().clone()
        return objective, z / (c * D.detach())

    def after_step(self, losses: Tensor) -> None:
        """One Adam step on the logits from the losses recomputed after the model's step."""
        if self.prev_losses is None:
            raise RuntimeError(
                "FAMO.after_step() needs the losses of a combine() before the model's step; none is pending"
            )
        new = self._check(losses).detach()
        delta = torch.log(self.prev_losses - self.min_losses + EPS) - torch.log(new - self.min_losses + EPS)
        with torch.no_grad():
            z = torch.softmax(self.logits, dim=-1)
            grad = z * delta - z * (z * delta).sum()  # J_softmax(ξ)ᵀ δ, J = diag(z) − z zᵀ
        self.optimizer.zero_grad()
        self.logits.grad = grad.to(self.logits.dtype)
        self.optimizer.step()
        self.prev_losses = None

    @property
    def task_weights(self) -> Tensor:
        """``z = softmax(ξ)``, the current task distribution (before the 1/(c D) scaling)."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "prev_losses": None if self.prev_losses is None else self.prev_losses.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"logits", "optimizer", "prev_losses"}, "FAMO")
        logits = state_tensor(state, "logits", self.logits, "FAMO")
        if logits is None:
            raise ValueError("FAMO state 'logits' is None")
        prev = state_tensor(state, "prev_losses", self.logits, "FAMO", cast=False)  # the losses' own dtype
        with torch.no_grad():
            self.logits.copy_(logits)
        # A copy, so that later in-place Adam updates never write into the caller's dictionary.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.prev_losses = prev

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"num_tasks": self.num_tasks, "lr": self.lr, "weight_decay": self.weight_decay}
        if bool((self.min_losses != 0).any()):
            config["min_losses"] = self.min_losses.tolist()
        return config
