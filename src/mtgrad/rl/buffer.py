"""A replay buffer partitioned by task: task i's transitions are only ever sampled as task i's rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["TaskReplayBuffer", "Batch"]

Batch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
"""``(obs, action, reward, next_obs, terminated)``, each ``(T, rows, ...)``; reward and
terminated are ``(T, rows)``."""


class TaskReplayBuffer:
    """T ring buffers of equal capacity in preallocated tensors, filled in lockstep.

    Every environment step adds one transition per task, so all tasks always hold the same number
    of transitions and one ``(T, rows)`` index draw samples every task's rows at once.
    """

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, action_dim: int, device: torch.device | str = "cpu") -> None:
        shape = (num_tasks, capacity)
        self.obs = torch.zeros((*shape, obs_dim), device=device)
        self.next_obs = torch.zeros((*shape, obs_dim), device=device)
        self.action = torch.zeros((*shape, action_dim), device=device)
        self.reward = torch.zeros(shape, device=device)
        self.terminated = torch.zeros(shape, device=device)
        self.capacity = capacity
        self.position = 0
        self.size = 0

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> None:
        """One transition per task: each argument has the task as its leading dimension."""
        i = self.position
        self.obs[:, i] = obs
        self.action[:, i] = action
        self.reward[:, i] = reward
        self.next_obs[:, i] = next_obs
        self.terminated[:, i] = terminated
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rows: int, generator: torch.Generator | None = None) -> Batch:
        """``rows`` transitions per task, drawn uniformly with replacement within each task."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        T = self.obs.shape[0]
        idx = torch.randint(self.size, (T, rows), generator=generator, device=self.obs.device)
        task = torch.arange(T, device=self.obs.device)[:, None]
        return (self.obs[task, idx], self.action[task, idx], self.reward[task, idx],
                self.next_obs[task, idx], self.terminated[task, idx])

    def state_dict(self) -> dict[str, Any]:
        """The filled part only, so a checkpoint early in a run stays small.

        A partly filled buffer is copied (``torch.save`` of a slice would write the whole
        storage); a full one is handed out as is, so a checkpoint does not double its memory.
        """
        n = self.size

        def filled(t: Tensor) -> Tensor:
            return t if n == self.capacity else t[:, :n].clone()

        return {
            "obs": filled(self.obs), "action": filled(self.action), "reward": filled(self.reward),
            "next_obs": filled(self.next_obs), "terminated": filled(self.terminated),
            "position": self.position, "size": n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["size"])
        if state["obs"].shape[0] != self.obs.shape[0] or n > self.capacity:
            raise ValueError(
                f"buffer state for {state['obs'].shape[0]} tasks × {n} rows does not fit "
                f"{self.obs.shape[0]} tasks × {self.capacity}"
            )
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            getattr(self, name)[:, :n] = state[name]
        self.position = int(state["position"])
        self.size = n
