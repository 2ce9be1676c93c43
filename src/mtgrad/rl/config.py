"""Hyperparameters of multi-task SAC in one dataclass, with the papers' settings as presets.

``mt10`` and ``mt50`` follow the setup the CAGrad paper ran on Meta-World (Liu et al. 2021,
App. B.3, through facebookresearch/mtrl as its ``run.sh`` configures it): actor and critic MLPs of
3 hidden layers × 400 units, Adam with learning rate 3e-4 for actor, critic and temperature,
initial temperature 1, discount 0.99, target smoothing τ = 0.005 every step, a batch of 1280 rows
(MT10: 128 per task; MT50: 26 per task ≈ 1280/50), 2M environment steps per task, CAGrad's
c = 0.9 on MT10 and 0.5 on MT50, CAGrad-Fast with 4 and 8 gradients. The temperature is learned
per task as in PCGrad's SAC (Yu et al. 2020, App. C), with target entropy −|A| = −4.

``quick`` is not from a paper: a 2-task set small enough to learn visibly in minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SACConfig", "PRESETS", "preset"]


@dataclass(frozen=True)
class SACConfig:
    """Everything a multi-task SAC run needs besides the gradient method.

    Steps count *vector* steps: one step acts once in every task's environment, so a run of
    ``total_steps`` collects ``total_steps`` transitions per task.
    """

    benchmark: str = "mt10"  #: "mt10", "mt50", "custom:reach-v3,push-v3" or "goals:reach-v3:4"
    total_steps: int = 2_000_000  #: vector steps (= environment steps per task)
    random_steps: int = 1_500  #: initial steps with uniformly random actions
    max_episode_steps: int = 500  #: Meta-World v3's episode length
    hidden: int = 400
    layers: int = 3  #: hidden layers of the actor and of each critic
    batch_per_task: int = 128
    buffer_per_task: int = 100_000
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_temperature: float = 1.0
    discount: float = 0.99
    tau: float = 0.005
    target_entropy: float | None = None  #: None means −|A|
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    updates_per_step: int = 1
    use_one_hot: bool = True
    eval_every: int = 10_000  #: vector steps between evaluations
    eval_episodes: int = 10  #: per task, with Meta-World's evaluation protocol
    checkpoint_every: int = 10  #: episodes between checkpoints (they are taken at episode ends)
    method_c: float = 0.9  #: CAGrad's c for this benchmark (used by the "cagrad" shorthands)
    fast_gradients: int = 4  #: CAGrad-Fast's number of gradients for this benchmark

    def __post_init__(self) -> None:
        positive = ("total_steps", "max_episode_steps", "hidden", "layers", "batch_per_task",
                    "buffer_per_task", "updates_per_step", "eval_every", "eval_episodes", "checkpoint_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
        if isinstance(self.random_steps, bool) or not isinstance(self.random_steps, int) or self.random_steps < 0:
            raise ValueError(f"random_steps must be an int ≥ 0, got {self.random_steps!r}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau!r}")
        # Training episodes only ever truncate, so γ = 1 would make the values unbounded.
        if not 0 <= self.discount < 1:
            raise ValueError(f"discount must be in [0, 1), got {self.discount!r}")
        if self.max_episode_steps > 500:
            raise ValueError(f"max_episode_steps must be ≤ 500 (Meta-World v3 ends every episode there), got {self.max_episode_steps}")
        if self.buffer_per_task < self.batch_per_task:
            raise ValueError(f"buffer_per_task ({self.buffer_per_task}) is smaller than batch_per_task ({self.batch_per_task})")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")

    def replace(self, **changes: Any) -> SACConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown SACConfig fields {unknown}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, SACConfig] = {
    "mt10": SACConfig(),
    "mt50": SACConfig(
        benchmark="mt50", batch_per_task=26, buffer_per_task=20_000, method_c=0.5, fast_gradients=8
    ),
    "quick": SACConfig(
        benchmark="custom:reach-v3,drawer-close-v3",
        total_steps=30_000,
        random_steps=1_000,
        max_episode_steps=200,
        hidden=256,
        layers=2,
        batch_per_task=64,
        buffer_per_task=30_000,
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha_lr=1e-3,
        eval_every=5_000,
        eval_episodes=5,
        checkpoint_every=10,
        log_std_min=-5.0,
    ),
}


def preset(name: str, **changes: Any) -> SACConfig:
    """A preset (``"mt10"``, ``"mt50"``, ``"quick"``) with ``changes`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)
