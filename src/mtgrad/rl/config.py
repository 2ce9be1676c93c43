"""Hyperparameters of multi-task SAC in one dataclass, with the papers' settings as presets.

``mt10`` and ``mt50`` follow the setup the CAGrad paper ran on Meta-World (Liu et al. 2021,
App. B.3, through facebookresearch/mtrl as its ``run.sh`` configures it): actor and critic MLPs of
3 hidden layers × 400 units, Adam with learning rate 3e-4 for actor, critic and temperature,
initial temperature 1, discount 0.99, target smoothing τ = 0.005 every step, a batch of 1280 rows
(MT10: 128 per task; MT50: 26 per task ≈ 1280/50), 2M environment steps per task, CAGrad's
c = 0.9 on MT10 and 0.5 on MT50, CAGrad-Fast with 4 and 8 gradients. Under the ``v3``
protocol the temperature is learned per task as in PCGrad's SAC (Yu et al. 2020, App. C); under
``paper`` one temperature is shared (mtrl); target entropy −|A| = −4 in both.

``quick`` is not from a paper: a 2-task set small enough to learn visibly in minutes on a CPU.

Every preset runs under one of two *protocols* (:data:`PROTOCOLS`), the settings that decide which
experiment it is rather than how large: ``"v3"`` (the default) is Meta-World 3 as it ships — a new
goal variation at every reset, raw rewards, a one-hot task id, one temperature per task, 500-step
episodes; ``"paper"`` is the experiment the papers ran through facebookresearch/mtrl and the
official CAGrad files — one fixed goal per task (the same in training and evaluation), rewards
divided by a running std, no task id, one shared temperature whose per-task gradients go through
the surgery, 150-step episodes, 1 evaluation episode, a burst of updates after the random
warm-up, xavier init and the official CAGrad solver and rescale. docs/rl.md tabulates both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SACConfig", "PRESETS", "PROTOCOLS", "preset"]


PROTOCOLS: dict[str, dict[str, Any]] = {
    # Meta-World 3 as it ships: the SACConfig defaults.
    "v3": {},
    # facebookresearch/mtrl's Meta-World setup as the CAGrad code runs it (docs/rl.md, "Protocols").
    "paper": dict(
        fixed_goals=True, normalize_rewards=True, reward_rate=0.001, use_one_hot=False, shared_alpha=True,
        max_episode_steps=150, eval_episodes=1, update_burst=True, init="xavier",
        cagrad_solver="mtrl", cagrad_rescale=1, fast_rescale=2, pcgrad_reduction="mean", protocol="paper",
    ),
}


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
    use_one_hot: bool = True  #: append the one-hot task id to the observation
    fixed_goals: bool = False  #: one goal variation per task for the whole run (mtrl); else one per reset
    normalize_rewards: bool = False  #: divide each task's reward by its running std (mtrl, rate ``reward_rate``)
    reward_rate: float = 0.001  #: the running statistics' rate (mtrl / garage ``reward_alpha``)
    shared_alpha: bool = False  #: one temperature for all tasks, its task gradients through the surgery (mtrl)
    update_burst: bool = False  #: after the random warm-up, as many updates at once as warm-up steps (mtrl)
    init: str = "torch"  #: "torch" (PyTorch's default) or "xavier" (xavier-uniform weights, zero biases; mtrl)
    cagrad_solver: str = "exact"  #: CAGrad's inner solver in the "cagrad" shorthand ("mtrl": the official one)
    cagrad_rescale: int = 0  #: CAGrad's rescale in the "cagrad" shorthand (official Meta-World code: 1, ÷(1+c²))
    fast_rescale: int = 0  #: CAGrad-Fast's rescale in the "cagrad_fast" shorthand (official code: 2, ÷(1+c))
    pcgrad_reduction: str = "sum"  #: PCGrad's reduction in the "pcgrad" shorthand (paper: sum; mtrl: mean)
    protocol: str = "v3"  #: the protocol these settings started from (a label: fields set after it win)
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
        if not 0 < self.reward_rate <= 1:
            raise ValueError(f"reward_rate must be in (0, 1], got {self.reward_rate!r}")
        if self.init not in ("torch", "xavier"):
            raise ValueError(f"init must be 'torch' or 'xavier', got {self.init!r}")
        if self.cagrad_solver not in ("exact", "mtrl"):
            raise ValueError(f"cagrad_solver must be 'exact' or 'mtrl', got {self.cagrad_solver!r}")
        if self.pcgrad_reduction not in ("sum", "mean"):
            raise ValueError(f"pcgrad_reduction must be 'sum' or 'mean', got {self.pcgrad_reduction!r}")
        for name in ("cagrad_rescale", "fast_rescale"):
            if getattr(self, name) not in (0, 1, 2):
                raise ValueError(f"{name} must be 0, 1 or 2, got {getattr(self, name)!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")

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


def preset(name: str, protocol: str = "v3", **changes: Any) -> SACConfig:
    """A preset (``"mt10"``, ``"mt50"``, ``"quick"``) under a protocol (``"v3"``, ``"paper"``),
    with ``changes`` applied last."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return PRESETS[name].replace(**{**PROTOCOLS[protocol], **changes})
