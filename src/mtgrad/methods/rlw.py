"""RLW: random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._state import check_state_keys, generator_state, load_generator_state
from .base import Weighting

__all__ = ["RLW"]


class RLW(Weighting):
    r"""Random loss weighting, Lin et al. (2022), with their default Normal distribution.

    At every call the weights are ``λ = softmax(ε)`` with a fresh ``ε ~ N(0, I_T)``; the update
    is ``Σ_i λ_i g_i`` (the gradient of ``Σ_i λ_i L_i``). The weights lie on the probability
    simplex and ignore the Gramian except for its shape and device, so a batch of Gramians
    ``(..., T, T)`` gets an independent draw per problem. T = 1 gives weight 1.

    RLW needs **no per-task gradients**: it is a :class:`Weighting` only so that it runs through
    the same entry points as the gradient methods. A loss-only fast path (one backward of
    ``Σ λ_i L_i``) gives the same update at the cost of a single backward pass.

    LibMTL, nash-mtl and torchjd (``Random``) use the same Normal/softmax draw; LibMTL also offers
    Uniform, Dirichlet and Bernoulli variants, not provided here.

    Args:
        generator: source of ``ε``, for reproducible runs; its state is part of
            :meth:`state_dict`. Defaults to torch's global generator of the Gramian's device.
            The draw is made in float64 on the generator's device and moved to the Gramian's.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        shape = gramian.shape[:-1]
        device = self.generator.device if self.generator is not None else gramian.device
        eps = torch.randn(shape, generator=self.generator, dtype=torch.float64, device=device)
        return torch.softmax(eps, dim=-1).to(gramian.device)

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, set(generator_state(self.generator)), "RLW")
        load_generator_state(self.generator, state, "RLW")
