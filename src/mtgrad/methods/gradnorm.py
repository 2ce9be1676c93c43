"""GradNorm: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import LossWeighting
from ._loss_checks import check_finite_float, check_losses, check_num_tasks
from ._state import check_state_keys, state_tensor

__all__ = ["GradNorm"]


class GradNorm(LossWeighting):
    r"""GradNorm, Chen et al. (2018), Algorithm 1: loss weights that equalise training rates.

    Loss weights ``w_i`` (init 1, ``Σ_i w_i = T``) scale the objective ``Σ_i w_i L_i``. At every
    call, on the **last shared layer** W:

    * ``G_W^(i) = ‖∇_W w_i L_i‖ = |w_i| ‖∇_W L_i‖`` and ``Ḡ_W = mean_i G_W^(i)``;
    * ``L̃_i = L_i / L_i(0)`` (the loss ratio) and ``r_i = L̃_i / mean_j L̃_j`` (the relative
      inverse training rate);
    * ``L_grad = Σ_i |G_W^(i) − Ḡ_W · r_i^α|``, the bracket ``Ḡ_W · r_i^α`` held constant;
    * ``w`` takes one step of its own Adam on ``∇_w L_grad`` and is renormalised to ``Σ w = T``.

    Because ``G_W^(i)`` is linear in ``|w_i|``, ``∂L_grad/∂w_i = sign(G_W^(i) − target_i) ·
    sign(w_i) · ‖∇_W L_i‖`` in closed form: the cost is T backward passes through the layers
    between the losses and W (``autograd.grad(L_i, W, retain_graph=True)``), no double backward.
    The model is trained on ``Σ_i w_i(t) L_i`` with the weights **before** this call's update, as
    in the paper's Algorithm 1 (``L(t) = Σ w_i(t) L_i(t)``; W and w are updated from the same
    step t) and in LibMTL (its ``loss_weight`` is taken before ``L_grad.backward()``);
    :meth:`combine` reports those weights.

    Args:
        num_tasks: T, the number of losses.
        last_shared: W — the last shared layer's weight tensor (e.g.
            ``model.trunk[-1].weight``), or several tensors whose joint gradient norm is used.
            LibMTL uses all shared parameters (pass them all for that variant).
        alpha: α, the asymmetry (restoring force); 1.5 is LibMTL's default. The paper tunes α
            per data set; ``alpha=0`` pulls every ``G_W^(i)`` to the same norm.
        lr: learning rate of the Adam optimiser that steps ``w``. Algorithm 1 updates ``w``
            with ``∇_w L_grad`` without fixing an optimiser for it; LibMTL steps its weights with
            the model's own optimiser (and learning rate). 0.025 is this class's choice, the
            rate FAMO uses for its logits; tune it like the model's learning rate.
        initial_losses: ``L(0)`` (T,). Default: the losses of the first :meth:`combine`
            (Algorithm 1's ``L_i(0)``). Pass fixed values for another reference: LibMTL uses the
            average training loss of epoch 0 (training with equal weights during that epoch),
            or a known initial loss such as ``log C`` for a C-class cross-entropy.

    A loss with no path to W counts as ``‖∇_W L_i‖ = 0`` (an error if no loss reaches W). The
    losses must be non-negative and ``L(0)`` positive. ``w`` is parametrised directly, as in
    the paper; it can turn negative with a large ``lr`` (LibMTL's ``w = T·softmax(ŵ)`` cannot).
    State (saved exactly by :meth:`state_dict`): ``weights`` w, ``initial_losses`` and the Adam
    state of ``optimizer``. ``w`` is not a model parameter: :meth:`parameters` is empty, so the
    model's optimiser never steps it. Set ``check_values = False`` on an instance to skip the
    per-call value check (one host read).
    """

    check_values: bool = True

    def __init__(
        self,
        num_tasks: int,
        last_shared: Tensor | Iterable[Tensor],
        alpha: float = 1.5,
        lr: float = 0.025,
        initial_losses: Tensor | Sequence[float] | None = None,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks)
        self.last_shared = _as_layer(last_shared)
        self.alpha = check_finite_float(alpha, "alpha", nonnegative=True)
        self.lr = check_finite_float(lr, "lr", positive=True)
        ref = self.last_shared[0]
        self.weights = torch.ones(self.num_tasks, device=ref.device, dtype=ref.dtype, requires_grad=True)
        self.initial_losses: Tensor | None = None
        if initial_losses is not None:
            L0 = torch.as_tensor(initial_losses).detach().to(device=ref.device, dtype=ref.dtype)
            if L0.shape != (self.num_tasks,):
                raise ValueError(f"initial_losses must have shape ({self.num_tasks},), got {tuple(L0.shape)}")
            if not bool((torch.isfinite(L0) & (L0 > 0)).all()):
                raise ValueError(f"initial_losses must be finite and positive, got {L0.tolist()}")
            self.initial_losses = L0.clone()
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)

    def linear_terms(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError(
            "GradNorm updates its weights at every call from that call's gradient norms at last_shared, "
            "so its objective is not Σ_i a_i L_i with weights fixed for the step"
        )

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        first = self.initial_losses is None  # then these losses are L(0), which must be positive
        losses = check_losses(
            losses, self.num_tasks, "GradNorm", positive=first, nonnegative=True,
            device=self.weights.device, values=self.check_values,
        )
        if not losses.requires_grad:
            raise ValueError("GradNorm: losses do not require grad; it needs their gradients on last_shared")
        values = losses.detach()
        if first:
            self.initial_losses = values.clone()

        grad_norms = self._grad_norms(losses)  # ‖∇_W L_i‖, (T,)
        w = self.weights.detach()
        used = w.clone()  # the weights of this step's objective (before the update)
        G = w.abs() * grad_norms.to(w)
        assert self.initial_losses is not None  # recorded on the first call above
        ratios = values.to(w) / self.initial_losses.to(w)
        r = ratios / ratios.mean()
        target = G.mean() * r.pow(self.alpha)  # constant in L_grad
        self.optimizer.zero_grad()
        self.weights.grad = torch.sign(G - target) * torch.sign(w) * grad_norms.to(w)
        self.optimizer.step()
        with torch.no_grad():
            self.weights.mul_(self.num_tasks / self.weights.sum())
        return (used.to(losses.dtype) * losses).sum(), used

    def _grad_norms(self, losses: Tensor) -> Tensor:
        norms = []
        for i in range(self.num_tasks):
            grads = torch.autograd.grad(losses[i], self.last_shared, retain_graph=True, allow_unused=True)
            if all(g is None for g in grads):
                raise ValueError(
                    f"GradNorm: losses[{i}] does not depend on last_shared, so its gradient norm there is "
                    "undefined; pass the last layer that every task shares"
                )
            sq = [g.pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(sq).sum().sqrt())
        return torch.stack(norms)

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.detach().clone(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {"weights", "initial_losses", "optimizer"}, "GradNorm")
        w = state_tensor(state, "weights", self.weights, "GradNorm")
        if w is None:
            raise ValueError("GradNorm state 'weights' is None")
        L0 = state_tensor(state, "initial_losses", self.weights.detach(), "GradNorm")
        with torch.no_grad():
            self.weights.copy_(w)
        # A copy, so that later in-place Adam updates never write into the caller's dictionary.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.initial_losses = L0

    def _config(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "alpha": self.alpha, "lr": self.lr}


def _as_layer(last_shared: Tensor | Iterable[Tensor]) -> list[Tensor]:
    tensors = [last_shared] if isinstance(last_shared, Tensor) else list(last_shared)
    if not tensors:
        raise ValueError("last_shared is empty: give the last shared layer's weight (e.g. model.trunk[-1].weight)")
    for i, p in enumerate(tensors):
        if not isinstance(p, Tensor):
            raise TypeError(f"last_shared[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_floating_point() or not p.requires_grad:
            raise ValueError(f"last_shared[{i}] must be a floating-point tensor that requires grad (a parameter)")
    devices = {p.device for p in tensors}
    if len(devices) > 1:
        raise ValueError(f"last_shared tensors live on different devices {sorted(map(str, devices))}")
    return tensors
