"""Meta-World task sets as one gymnasium vector environment, vector index i = task i.

Benchmarks (``SACConfig.benchmark``):

* ``"mt10"``, ``"mt50"`` — ``gymnasium.make_vec("Meta-World/MT10" | "Meta-World/MT50", ...)``;
* ``"custom:reach-v3,push-v3"`` — any list of Meta-World v3 environments, one task each;
* ``"goals:reach-v3:4"`` — goal-conditioned: one environment, each task a fixed goal (the first
  4 of its 50 goal variations, drawn from the seed), as in PCGrad's goal-conditioned experiment
  where every goal is a task. The goal position is part of the observation. The same seed gives
  the same goals, in training and in evaluation.

Training environments do not reset themselves (``AutoresetMode.DISABLED``): the trainer resets
all tasks together at the end of each episode, which is where checkpoints are taken, so that a
resumed run restores the environments' random state and continues identically. Evaluation
environments use Meta-World's default same-step autoreset, which its evaluation protocol expects.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

__all__ = ["TaskSet", "parse_benchmark", "check_environments", "make_envs", "fixed_goal_index", "require_metaworld"]


@dataclass(frozen=True)
class TaskSet:
    """A parsed benchmark: which Meta-World environments, and whether tasks are goals of one."""

    kind: str  #: "mt10", "mt50", "custom" or "goals"
    envs: tuple[str, ...]  #: environment names (for "goals": the one environment)
    num_goals: int = 0

    @property
    def num_tasks(self) -> int:
        return {"mt10": 10, "mt50": 50}.get(self.kind, self.num_goals or len(self.envs))


def parse_benchmark(spec: str) -> TaskSet:
    """``"mt10"`` / ``"mt50"`` / ``"custom:a-v3,b-v3"`` / ``"goals:a-v3:K"`` → :class:`TaskSet`."""
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind in ("mt10", "mt50") and not rest:
        return TaskSet(kind, ())
    if kind == "custom":
        names = tuple(n.strip() for n in rest.split(",") if n.strip())
        if not names:
            raise ValueError(f"custom benchmark needs environment names, e.g. 'custom:reach-v3,push-v3', got {spec!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"custom benchmark names a task twice: {spec!r}")
        return TaskSet("custom", names)
    if kind == "goals":
        name, _, count = rest.partition(":")
        if not name or not count.isdigit() or not 1 <= int(count) <= 50:
            raise ValueError(f"goal-conditioned benchmark is 'goals:<env>:<1..50 goals>', got {spec!r}")
        return TaskSet("goals", (name,), int(count))
    raise ValueError(f"unknown benchmark {spec!r}: use mt10, mt50, custom:<env,...> or goals:<env>:<K>")


def require_metaworld() -> Any:
    """Import Meta-World (it registers the gymnasium ids) or explain how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import metaworld  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "multi-task RL needs Meta-World: pip install 'mtgrad[rl]' (metaworld, gymnasium, packaging)"
        ) from err
    return metaworld


def check_environments(tasks: TaskSet) -> Any:
    """Refuse a task set naming environments Meta-World does not have; returns ``metaworld``."""
    metaworld = require_metaworld()
    known = set(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
    unknown = [n for n in tasks.envs if n not in known]
    if unknown:
        raise ValueError(f"unknown Meta-World environments {unknown}; e.g. {sorted(known)[:4]} …")
    return metaworld


def make_envs(
    tasks: TaskSet,
    seed: int,
    max_episode_steps: int,
    use_one_hot: bool = True,
    evaluation: bool = False,
    fixed_goals: bool = False,
) -> Any:
    """A synchronous vector environment over the task set, seeded.

    ``fixed_goals``: every task keeps one of its 50 goal variations for the whole run, the one
    :func:`fixed_goal_index` draws from ``seed`` (mtrl sets one task per environment once); the
    training and evaluation environments of one seed hold the same variations, so they get the
    same goals. Otherwise Meta-World draws a variation at every reset.
    """
    metaworld = check_environments(tasks)
    import gymnasium as gym

    mode = gym.vector.AutoresetMode.SAME_STEP if evaluation else gym.vector.AutoresetMode.DISABLED
    common = dict(vector_strategy="sync", autoreset_mode=mode, max_episode_steps=max_episode_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Meta-World's Box bounds warn about float64 → float32
        if tasks.kind in ("mt10", "mt50"):
            envs = gym.make_vec(f"Meta-World/{tasks.kind.upper()}", seed=seed, use_one_hot=use_one_hot, **common)
            return _fix_goals(envs, seed) if fixed_goals else envs
        if tasks.kind == "custom":
            # The package's custom entry point seeds task i with ``seed + i`` but treats seed 0 as
            # "unseeded"; shifting by one keeps every seed reproducible.
            envs = gym.make_vec(
                "Meta-World/custom-mt-envs", envs_list=list(tasks.envs), seed=seed + 1, use_one_hot=use_one_hot, **common
            )
            return _fix_goals(envs, seed) if fixed_goals else envs
        makers = [
            partial(_goal_env, metaworld, tasks.envs[0], k, tasks.num_goals, seed, max_episode_steps, use_one_hot)
            for k in range(tasks.num_goals)
        ]
        return gym.vector.SyncVectorEnv(makers, autoreset_mode=mode)


def fixed_goal_index(seed: int, task: int, variations: int) -> int:
    """Which of task ``task``'s ``variations`` goal variations a fixed-goal run of ``seed`` keeps."""
    import numpy as np

    return int(np.random.default_rng([seed, task]).integers(variations))


def _fix_goals(envs: Any, seed: int) -> Any:
    # Meta-World's task wrapper draws from its list at every reset; a list of one is a fixed goal.
    # The list is part of the environments' checkpoint, so a resumed run keeps the same goals.
    for i, env in enumerate(envs.envs):
        variations = env.get_wrapper_attr("tasks")
        env.set_wrapper_attr("tasks", [variations[fixed_goal_index(seed, i, len(variations))]])
    return envs


def _goal_env(metaworld: Any, name: str, goal: int, num_goals: int, seed: int, max_steps: int, one_hot: bool) -> Any:
    # Every copy draws the same 50 goal variations from ``seed`` and keeps only its own, so task
    # k is always goal k (Meta-World's reset ignores its seed argument: ``seed()`` seeds).
    env = metaworld.make_mt_envs(
        name, seed=seed, max_episode_steps=max_steps, use_one_hot=one_hot, env_id=goal, num_tasks=num_goals
    )
    goals = env.get_wrapper_attr("tasks")
    env.set_wrapper_attr("tasks", [goals[goal]])
    return env


def task_names(envs: Any) -> list[str]:
    """The tasks' names in vector order (a goal-conditioned set: ``reach-v3/goal3``)."""
    metaworld = require_metaworld()
    by_class = {cls.__name__: name for name, cls in metaworld.env_dict.ALL_V3_ENVIRONMENTS.items()}
    names = [by_class.get(n, n) for n in envs.get_attr("task_name")]
    if len(set(names)) < len(names):
        names = [f"{n}/goal{i}" for i, n in enumerate(names)]
    return names
