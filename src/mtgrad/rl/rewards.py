"""Per-task reward normalisation by a running standard deviation (mtrl's Meta-World setup).

mtrl wraps every Meta-World environment in mtenv's ``NormalizedEnvWrapper(normalize_reward=True)``
(``mtenv/envs/metaworld/wrappers/normalized_env.py``, a copy of garage's ``NormalizedEnv``;
``reward_alpha = 0.001``), which for each new reward r updates

    μ ← (1 − a) μ + a r,        σ² ← (1 − a) σ² + a (r − μ)²        (μ₀ = 0, σ²₀ = 1)

with the *updated* μ, then hands the agent ``r / (σ + 1e-8)``. The mean is tracked but never
subtracted. Each task has its own μ and σ², so the normalisation changes the relative sizes of the
per-task gradients that the surgery acts on.

Meta-World 3's ``NormalizeRewardsExponential`` (``reward_normalization_method="exponential"``)
writes the same formula but updates twice per step (once in ``step`` and again inside
``_apply_normalize_reward``), and its statistics are not in its checkpoint; this module updates
once per step, as garage does, and its state goes into mtgrad's checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RewardNormalizer"]


class RewardNormalizer:
    """One running (μ, σ²) per task, in float64; ``normalize`` updates them and scales."""

    def __init__(self, num_tasks: int, rate: float = 0.001) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate!r}")
        self.rate = rate
        self.mean = np.zeros(num_tasks)
        self.var = np.ones(num_tasks)

    def normalize(self, reward: np.ndarray) -> np.ndarray:
        """``r / (σ + 1e-8)`` after updating each task's statistics with its reward ``r``."""
        r = np.asarray(reward, dtype=np.float64)
        if r.shape != self.mean.shape:
            raise ValueError(f"expected one reward per task, shape {self.mean.shape}, got {r.shape}")
        a = self.rate
        self.mean = (1 - a) * self.mean + a * r
        self.var = (1 - a) * self.var + a * (r - self.mean) ** 2
        return r / (np.sqrt(self.var) + 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "mean": self.mean.tolist(), "var": self.var.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean, var = np.asarray(state["mean"], dtype=np.float64), np.asarray(state["var"], dtype=np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(f"reward statistics for {mean.shape[0]} tasks do not fit {self.mean.shape[0]}")
        if state["rate"] != self.rate:
            raise ValueError(f"reward statistics at rate {state['rate']} do not fit rate {self.rate}")
        self.mean, self.var = mean, var
