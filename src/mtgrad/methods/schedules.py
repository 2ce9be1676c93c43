"""Cost controls: methods that decide *which* gradients a step computes.

* :class:`Reuse` — recompute a Gramian weighting every k steps (after an optional warm-up with
  plain mean weights) and reuse the last weights in between, at the cost of one ordinary backward.
* :class:`CAGradFast` — CAGrad on a random subset of tasks plus the rest merged into one
  pseudo-task (Liu et al. 2021, Sec. 3.3, eq. 4), at the cost of |S| + 1 backward passes.

:func:`mtgrad.backward` runs the passes each of them asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..solvers import cagrad_weights
from ._loss_checks import check_bool
from ._state import check_state_keys, generator_state, load_generator_state
from .base import Method, Weighting, unit_scaled
from .cagrad import output_factor

__all__ = ["Reuse", "CAGradFast"]


@dataclass
class ReuseState:
    step: int = 0
    weights: Tensor | None = None


class Reuse(Method):
    """Compute ``method``'s weights every ``every`` steps and reuse them in between.

    Steps ``0 … warmup−1`` use plain mean weights ``1/T``; from then on, step ``warmup + n·every``
    computes the per-task gradients and ``method``'s weights, and the ``every − 1`` steps after it
    apply those weights with one ordinary backward pass (``Σ_i w_i L_i`` for the shared
    parameters; the heads still get ``∇ Σ_i L_i``). ``every = 1, warmup = 0`` is ``method`` itself.

    Args:
        method: any Gramian weighting (PCGrad, CAGrad, MGDA, …).
        every: recompute period k ≥ 1.
        warmup: number of initial steps with mean weights.
    """

    def __init__(self, method: Weighting, every: int = 1, warmup: int = 0) -> None:
        if not isinstance(method, Weighting):
            raise TypeError(f"Reuse needs a Gramian weighting (e.g. mtgrad.PCGrad()), got {type(method).__name__}")
        for name, value, low in (("every", every, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
        self.method = method
        self.every = every
        self.warmup = warmup
        self.state = ReuseState()

    def planned_weights(self, num_tasks: int, like: Tensor) -> Tensor | None:
        """The weights this step reuses, or ``None`` when it must compute them."""
        step = self.state.step
        if step < self.warmup:
            return like.new_full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        if (step - self.warmup) % self.every == 0 or self.state.weights is None:
            return None
        if self.state.weights.shape != (num_tasks,):
            raise ValueError(f"Reuse holds weights for {self.state.weights.shape[0]} tasks, got {num_tasks} losses")
        return self.state.weights.to(like.device, copy=True)  # the caller may edit what it is given

    def advance(self, computed: Tensor | None = None) -> None:
        """Count the step; remember freshly ``computed`` weights."""
        if computed is not None:
            self.state.weights = computed.detach().clone()  # not the caller's tensor
        self.state.step += 1

    def state_dict(self) -> dict[str, Any]:
        weights = self.state.weights
        return {"step": self.state.step, "weights": None if weights is None else weights.clone(), "method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"step", "weights", "method"}:
            raise ValueError(f"Reuse state must have keys ['method', 'step', 'weights'], got {sorted(state)}")
        weights = state["weights"]
        self.state = ReuseState(int(state["step"]), None if weights is None else weights.detach().clone())
        self.method.load_state_dict(state["method"])

    def _config(self) -> dict[str, Any]:
        return {"method": self.method, "every": self.every, "warmup": self.warmup}


class CAGradFast(Method):
    r"""CAGrad-Fast, the practical speed-up of Liu et al. (2021), Sec. 3.3, eq. (4).

    Each step samples a set S of tasks uniformly at random, computes their gradients ``g_i`` and
    the average gradient ``g₀`` (one extra backward of the mean loss), and merges the unsampled
    tasks into one pseudo-task ``g̃ = (K g₀ − Σ_{i∈S} g_i)/(K − |S|)``. CAGrad then solves::

        max_d min( ⟨g̃, d⟩, min_{i∈S} ⟨g_i, d⟩ )   s.t.   ‖d − g₀‖ ≤ c‖g₀‖,

    with the ball still centred at the full average, so the convergence guarantee is unchanged.
    Cost: |S| backward passes for the shared parameters plus one full backward. ``|S| ≥ K − 1``
    is plain CAGrad.

    ``num_gradients`` counts the gradients that enter the solver, ``|S| + 1``, as the official
    Meta-World code's ``cagrad_fast{k}`` does (the paper's "4 tasks on MT10, 8 on MT50" are
    ``num_gradients=4`` and ``8``). That code also drops task ``S[k−1]`` from the pseudo-task by an
    off-by-one and divides by ``(1 + c)``; here the pseudo-task is eq. (4) exactly and the rescale is
    an option as in :class:`~mtgrad.CAGrad` (official: ``rescale=2``).

    Args:
        c: the ball radius relative to ``‖g₀‖`` (paper: 0.9 on MT10, 0.5 on MT50).
        num_gradients: ``|S| + 1 ≥ 2``.
        rescale: as for :class:`~mtgrad.CAGrad`.
        scale_by_tasks: as for :class:`~mtgrad.CAGrad`.
        generator: source of the task samples; its state is in :meth:`state_dict`.
    """

    def __init__(
        self,
        c: float = 0.4,
        num_gradients: int = 4,
        rescale: int = 0,
        scale_by_tasks: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < float("inf"):
            raise ValueError(f"c must be a finite number ≥ 0, got {c!r}")
        if isinstance(num_gradients, bool) or not isinstance(num_gradients, int) or num_gradients < 2:
            raise ValueError(f"num_gradients must be an int ≥ 2 (sampled tasks + 1 pseudo-task), got {num_gradients!r}")
        if isinstance(rescale, bool) or rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = float(c)
        self.num_gradients = num_gradients
        self.rescale = rescale
        self.scale_by_tasks = check_bool(scale_by_tasks, "scale_by_tasks")
        self.generator = generator

    def sample(self, num_tasks: int) -> list[int]:
        """The sampled tasks S (sorted), or all tasks when ``num_gradients − 1 ≥ K − 1``."""
        size = self.num_gradients - 1
        if size >= num_tasks - 1:
            return list(range(num_tasks))
        perm = torch.randperm(num_tasks, generator=self.generator)
        return sorted(perm[:size].tolist())

    def task_weights(self, gramian: Tensor, sampled: list[int], num_tasks: int) -> Tensor:
        """Weights over all K tasks from the Gramian of ``[g_i for i in S] + [g̃]`` (or of all tasks).

        The solver's weights ``a`` over the rows give ``Σ_{i∈S} a_i g_i + a_p g̃``, i.e. ``a_i`` for a
        sampled task and ``a_p/(K − |S|)`` for every other task.
        """
        K, s = num_tasks, len(sampled)
        G = unit_scaled(gramian.to(torch.float64))  # CAGrad's weights do not depend on G's scale
        if s == K:
            a = cagrad_weights(G, self.c)
        else:
            mean = G.new_full((s + 1,), 1.0 / K)
            mean[-1] = (K - s) / K
            rows = cagrad_weights(G, self.c, mean)
            a = rows.new_full((K,), 0.0)
            a[:] = rows[-1] / (K - s)
            a[sampled] = rows[:-1]
        return a * output_factor(self.c, self.rescale, self.scale_by_tasks, K)

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, set(generator_state(self.generator)), "CAGradFast")
        load_generator_state(self.generator, state, "CAGradFast")

    def _config(self) -> dict[str, Any]:
        return {"c": self.c, "num_gradients": self.num_gradients, "rescale": self.rescale, "scale_by_tasks": self.scale_by_tasks}
