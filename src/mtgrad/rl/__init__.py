"""Multi-task reinforcement learning: multi-task SAC on Meta-World with gradient surgery.

Needs the ``rl`` extra (``pip install 'mtgrad[rl]'``: metaworld, gymnasium, packaging, numpy);
Meta-World is imported lazily, so ``import mtgrad.rl`` works with numpy alone.

    from mtgrad.rl import preset, train
    train(preset("quick"), "cagrad", out="runs/quick-cagrad")

or ``mtgrad rl --preset quick --methods mean,pcgrad,cagrad --out runs/quick``.
"""

try:
    import numpy  # noqa: F401  (the replay buffer, rewards and evaluation are numpy arrays)
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("multi-task RL needs the rl extra: pip install 'mtgrad[rl]' (metaworld, gymnasium, numpy)") from err

from .buffer import TaskReplayBuffer
from .config import PRESETS, PROTOCOLS, SACConfig, preset
from .envs import make_envs, parse_benchmark
from .sac import Actor, MultiTaskSAC, TwinCritic
from .train import build_method, evaluate, train

__all__ = [
    "SACConfig", "PRESETS", "PROTOCOLS", "preset", "TaskReplayBuffer", "make_envs", "parse_benchmark",
    "Actor", "TwinCritic", "MultiTaskSAC", "build_method", "evaluate", "train",
]
