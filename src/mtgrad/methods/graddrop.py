"""GradDrop: gradient sign dropout (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models
with Gradient Sign Dropout", NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._state import check_state_keys, generator_state, load_generator_state
from .base import JacobianAggregator

__all__ = ["GradDrop"]


class GradDrop(JacobianAggregator):
    r"""Gradient sign dropout, Algorithm 1 of Chen et al. (2020).

    Coordinate by coordinate, with task gradients ``g_i``:

    * positive sign purity ``P = ½ (1 + Σ_i g_i / Σ_i |g_i|) ∈ [0, 1]``;
    * one ``U ~ Unif(0, 1)`` per coordinate; keep the positive entries if ``P > U`` and the
      negative ones if ``P < U``: ``M_i = 1[P > U]·1[g_i > 0] + 1[P < U]·1[g_i < 0]``;
    * update ``Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i`` with leak ``ℓ_i ∈ [0, 1]``.

    Where all ``g_i`` share a sign, ``P ∈ {0, 1}`` and every entry is kept (up to the
    probability-zero draw ``U = P``): the update is the plain sum. ``leak = 1`` is the plain sum.
    Coordinates where every ``g_i = 0`` give ``P = ½`` and an update of 0 (no NaN). T = 1 keeps
    the gradient wherever it is nonzero.

    **Where it is applied.** The paper applies GradDrop at a layer's *activations*: the
    per-task gradients with respect to the activations, multiplied by the sign of the layer's
    input and summed over the batch, give ``P``, and the masks act on the activation
    gradients (LibMTL implements exactly that, with ``rep_grad=True`` only). The CAGrad repository
    (the baseline in its tables) and torchjd instead apply it directly to the *parameter*
    gradients. This class works on whatever blocks it is given — per-parameter task-gradient
    blocks ``(T, *shape)`` through :func:`mtgrad.backward` / :func:`mtgrad.aggregate` — i.e. the
    parameter-gradient variant; P is computed per coordinate, so splitting into blocks does not
    change the result (only the order in which U is drawn).

    Args:
        leak: ``ℓ``, a number in [0, 1] for every task, or a sequence of T of them (the paper
            allows one per task). Default 0, no leak (LibMTL's and torchjd's default).
        generator: source of ``U``, drawn block by block in the promoted dtype of the block
            (at least float32) with ``torch.rand``; its state is part of :meth:`state_dict`.
            Defaults to torch's global generator of the blocks' device. A generator on another
            device than the gradients costs a copy of ``U`` per block.
    """

    def __init__(self, leak: float | Sequence[float] = 0.0, generator: torch.Generator | None = None) -> None:
        if isinstance(leak, (int, float)) and not isinstance(leak, bool):
            values = [float(leak)]
        else:
            try:
                if isinstance(leak, (str, bytes, bool)):
                    raise TypeError
                values = [float(v) for v in leak]  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ValueError(f"leak must be a number in [0, 1] or a sequence of them, got {leak!r}") from None
            if not values:
                raise ValueError("leak must not be an empty sequence")
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"leak must lie in [0, 1], got {leak!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.leak: float | tuple[float, ...] = values[0] if isinstance(leak, (int, float)) else tuple(values)
        self.generator = generator
        self._leak_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # per-task leaks, per device

    def aggregate_blocks(self, blocks: list[Tensor], losses: Tensor | None = None) -> list[Tensor]:
        return [self._block(block) for block in blocks]

    def _block(self, block: Tensor) -> Tensor:
        if block.dim() < 1 or block.shape[0] == 0:
            raise ValueError(
                f"a task-gradient block must have shape (T, *shape) with T ≥ 1, got {tuple(block.shape)}"
            )
        T = block.shape[0]
        dtype = torch.promote_types(block.dtype, torch.float32)
        g = block.to(dtype)
        if isinstance(self.leak, tuple):
            if len(self.leak) != T:
                raise ValueError(f"leak has {len(self.leak)} entries but the block has T = {T} tasks")
            key = (block.device, dtype)
            if key not in self._leak_on:
                self._leak_on[key] = torch.tensor(self.leak, dtype=dtype, device=block.device)
            leak: Tensor | float = self._leak_on[key].reshape(T, *([1] * (block.dim() - 1)))
        else:
            leak = self.leak
        total = g.sum(0)
        mass = g.abs().sum(0)
        purity = 0.5 * (1.0 + torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), 0.0))
        gen_device = self.generator.device if self.generator is not None else block.device
        u = torch.rand(purity.shape, generator=self.generator, dtype=dtype, device=gen_device).to(block.device)
        keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
        mask = keep.to(dtype)
        factor = mask if isinstance(leak, float) and leak == 0.0 else leak + (1.0 - leak) * mask
        return (factor * g).sum(0).to(block.dtype)

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, set(generator_state(self.generator)), "GradDrop")
        load_generator_state(self.generator, state, "GradDrop")

    def _config(self) -> dict[str, Any]:
        return {"leak": self.leak}
