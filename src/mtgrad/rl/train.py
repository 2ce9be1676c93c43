"""The multi-task SAC training loop: collect, update, evaluate, log, checkpoint, resume.

One vector step acts in every task's environment, adds one transition per task to the replay
buffer and (after ``random_steps`` steps of random actions) runs ``updates_per_step`` updates on
``batch_per_task`` rows of every task. Files written under ``out``:

* ``train.csv`` — one row per episode: every task's return and success, and the mean of the
  update statistics over the episode (per-task critic/actor losses and temperatures, the task
  weights and the gradient-conflict rate of the critic and actor updates);
* ``eval.csv`` — one row per evaluation (every ``eval_every`` steps and at the end): success rate
  per task and averaged, mean return, with Meta-World's evaluation protocol
  (``metaworld.evaluation.evaluation``: deterministic actions, episodes end on success);
* ``summary.json`` — the final evaluation, environment steps/s and updates/s;
* ``checkpoint.pt`` (and ``checkpoint.pt.prev``, the one before it; atomic, fsynced and
  checksummed, :mod:`mtgrad.bench.checkpoints`) — everything needed to continue: networks,
  optimizers, temperatures, the method's state (e.g. PCGrad's generator), the replay buffer,
  torch's RNG and the environments' random states; ``tb/`` — TensorBoard events when ``tensorboard`` is installed.

Resume: a checkpoint is written at the end of every ``checkpoint_every``-th episode (all tasks end
their episodes together), before the environments reset; a resumed run reloads it, resets the
environments from their restored random state and continues bit-for-bit as if never stopped
(logged rows after the checkpoint are dropped and rewritten).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

import mtgrad

from .._warnings import warn as warn_user
from ..methods.spec import _parse
from ..bench.checkpoints import differences, load_checkpoint, save_checkpoint, write_csv_atomically
from ..bench.reporting import progress_bar, tensorboard_writer
from .buffer import TaskReplayBuffer
from .config import SACConfig
from .envs import make_envs, parse_benchmark, task_names
from .rewards import RewardNormalizer
from .sac import MultiTaskSAC, refuse_loss_weighting

__all__ = ["build_method", "train", "evaluate"]

CHECKPOINT = "checkpoint.pt"


def build_method(spec: str, cfg: SACConfig, num_tasks: int, seed: int) -> mtgrad.methods.Method:
    """A method from its spec, with the benchmark's defaults filled in (:func:`resolve_spec`)."""
    full = resolve_spec(spec, cfg)
    kind = mtgrad.methods.spec.method_class(full)
    if kind is not None:  # before building it: a loss weighting may need what SAC never has
        refuse_loss_weighting(kind, "updates")
    try:
        return mtgrad.from_spec(full, generator=torch.Generator().manual_seed(seed), num_tasks=num_tasks)
    except ValueError as error:
        if full == spec or repr(full) not in str(error):
            raise
        # Name the spec the user wrote, not the one with the defaults they never typed.
        added = ",".join(_added_defaults(spec, cfg))
        raise ValueError(str(error).replace(repr(full), f"{spec!r} (with the benchmark's {added})")) from None


def resolve_spec(spec: str, cfg: SACConfig) -> str:
    """``spec`` with the benchmark's CAGrad ``c``, CAGrad-Fast gradient count and the protocol's
    CAGrad solver and rescales and PCGrad reduction filled in where the spec does not give them
    (``"cagrad"`` → ``"cagrad:c=0.9,…"`` on MT10; with ``rescale=1, solver=mtrl`` under the paper
    protocol)."""
    extra = _added_defaults(spec, cfg)
    if not extra:
        return spec
    name, _, args = spec.strip().partition(":")
    return name + ":" + ",".join(filter(None, [args, *extra]))


def _added_defaults(spec: str, cfg: SACConfig) -> list[str]:
    """The ``key=value`` options :func:`resolve_spec` adds to ``spec``."""
    name, options = _parse(spec)  # the spec grammar's own parser: its errors are from_spec's
    defaults = {
        "cagrad": {"c": cfg.method_c, "solver": cfg.cagrad_solver, "rescale": cfg.cagrad_rescale},
        "cagrad_fast": {"c": cfg.method_c, "num_gradients": cfg.fast_gradients, "rescale": cfg.fast_rescale},
        "pcgrad": {"reduction": cfg.pcgrad_reduction},
    }
    return [f"{k}={v}" for k, v in defaults.get(name.strip().lower(), {}).items() if k not in options]


class _Agent:
    """Meta-World's evaluation protocol calls ``eval_action`` and ``reset``."""

    def __init__(self, sac: MultiTaskSAC) -> None:
        self.sac = sac

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.sac.device)
        return self.sac.act(obs, deterministic=True).cpu().numpy()

    def reset(self, env_mask: np.ndarray) -> None:
        pass


def evaluate(sac: MultiTaskSAC, eval_envs: Any, episodes: int) -> tuple[float, float, list[float]]:
    """Mean success, mean return and per-task success (vector order), ``episodes`` per task.

    Meta-World's protocol (``metaworld.evaluation.evaluation``): deterministic actions, every
    episode ends at its first success (or at the time limit), and a task's success rate is the
    fraction of its first ``episodes`` episodes that succeeded. Tasks are kept apart by vector index
    rather than by environment name, so that goal-conditioned tasks (one environment, several
    goals) are counted separately; on named task sets both give the same numbers (tested).
    """
    T = eval_envs.num_envs
    eval_envs.call("toggle_terminate_on_success", True)  # these environments only ever evaluate
    agent = _Agent(sac)
    successes, returns = np.zeros(T), [[] for _ in range(T)]
    obs, _ = eval_envs.reset()
    while min(len(r) for r in returns) < episodes:
        obs, _, terminated, truncated, info = eval_envs.step(agent.eval_action(obs))
        for i in np.flatnonzero(np.logical_or(terminated, truncated)):
            if len(returns[i]) < episodes:
                returns[i].append(float(info["final_info"]["episode"]["r"][i]))
                successes[i] += float(info["final_info"]["success"][i])
    per_task = (successes / episodes).tolist()
    return float(np.mean(per_task)), float(np.mean(returns)), per_task


def train(
    cfg: SACConfig,
    method: str,
    out: str,
    *,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = True,
    progress: bool | str = True,
    tensorboard: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train multi-task SAC with ``method`` on ``cfg.benchmark``; returns the summary.

    ``progress``: a tqdm bar (True), progress lines with an ETA every 10 s (``"plain"``, for
    several runs in parallel), or nothing (False). ``stop_after`` ends the process early at that
    vector step (as if killed), for tests and for splitting a long run into jobs; the next call
    with the same ``out`` resumes.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int ≥ 0, got {seed!r}")
    tasks = parse_benchmark(cfg.benchmark)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, CHECKPOINT)
    if not resume:
        _clear_run(out)
    state = load_checkpoint(path, "--fresh")
    if state is not None:  # checked before the environments are built (seconds for MT50)
        _check_same_run(state, cfg, method, seed)
    # Rerunning a finished command must not retrain its tail, nor the whole of a run too short
    # to end an episode (it has a summary but no checkpoint).
    finished = _finished_summary(out, cfg, method, seed, checked=state is not None)
    if finished is not None:
        return finished
    # Meta-World draws a benchmark's goal variations from the seed, so evaluation uses the same
    # seed (the same tasks; MT10/MT50 have no test split) and only its sampling stream differs.
    envs = make_envs(tasks, seed, cfg.max_episode_steps, cfg.use_one_hot, fixed_goals=cfg.fixed_goals)
    eval_envs = make_envs(tasks, seed, cfg.max_episode_steps, cfg.use_one_hot, evaluation=True, fixed_goals=cfg.fixed_goals)
    eval_envs.call("seed", seed + 10_000)
    names = task_names(envs)
    T, obs_dim = envs.num_envs, envs.single_observation_space.shape[0]
    action_dim = envs.single_action_space.shape[0]
    torch.manual_seed(seed)
    # Distinct generator streams for every (seed, actor/critic/temperature) triple.
    alpha_method = build_method(method, cfg, T, 2**32 + seed) if cfg.shared_alpha else None
    sac = MultiTaskSAC(
        cfg, obs_dim, action_dim, T, build_method(method, cfg, T, 2 * seed), build_method(method, cfg, T, 2 * seed + 1),
        device, alpha_method=alpha_method,
    )
    if cfg.total_steps <= cfg.random_steps:
        warn_user(
            f"total_steps ({cfg.total_steps:,}) ≤ random_steps ({cfg.random_steps:,}): the run only takes random "
            "actions and never updates the agent (raise --steps or lower random_steps with --set)"
        )
    buffer = TaskReplayBuffer(T, cfg.buffer_per_task, obs_dim, action_dim, device)
    rewards = RewardNormalizer(T, cfg.reward_rate) if cfg.normalize_rewards else None
    step, episode, elapsed = 0, 0, {"env": 0.0, "update": 0.0, "eval": 0.0}
    if state is not None:
        sac.load_state_dict(state["agent"])
        buffer.load_state_dict(state["buffer"])
        if rewards is not None:
            rewards.load_state_dict(state["rewards"])
        envs.call("load_checkpoint", state["envs"])
        eval_envs.call("load_checkpoint", state["eval_envs"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, episode, elapsed = state["step"], state["episode"], state["elapsed"]
    log = _Logs(out, names, keep_until=step if os.path.exists(path) else None, eval_every=cfg.eval_every)
    obs_np, _ = envs.reset()
    obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
    returns = np.zeros(T)
    success = np.zeros(T)
    stats = _Running()
    writer = tensorboard_writer(out, tensorboard, step)
    bar = progress_bar(cfg.total_steps, f"{method} on {cfg.benchmark}", progress, initial=step)
    end = cfg.total_steps if stop_after is None else min(cfg.total_steps, stop_after)
    try:
        while step < end:
            t0 = time.perf_counter()
            if step < cfg.random_steps:
                action = torch.rand((T, action_dim), device=device) * 2 - 1
            else:
                action = sac.act(obs)
            next_np, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            next_obs = torch.as_tensor(next_np, dtype=torch.float32, device=device)
            # The buffer holds what the agent learns from; the logs keep the raw returns.
            learned = reward if rewards is None else rewards.normalize(reward)
            buffer.add(obs, action, torch.as_tensor(learned, dtype=torch.float32, device=device), next_obs,
                       torch.as_tensor(terminated, dtype=torch.float32, device=device))
            obs = next_obs
            returns += reward
            success = np.maximum(success, np.asarray(info["success"], dtype=float))
            step += 1
            t1 = time.perf_counter()
            elapsed["env"] += t1 - t0
            if step > cfg.random_steps:
                for _ in range(_updates_at(cfg, step)):
                    stats.add(sac.update(buffer.sample(cfg.batch_per_task)))
                elapsed["update"] += time.perf_counter() - t1
            if bar is not None:
                bar.update(1)
            if step % cfg.eval_every == 0:
                _evaluate_and_log(sac, eval_envs, cfg, step, elapsed, log, writer, bar)
            done = np.logical_or(terminated, truncated)
            if done.any():
                if not done.all():
                    raise RuntimeError(
                        "tasks ended their episodes at different steps; the trainer expects Meta-World's "
                        "fixed-length episodes (no termination on success while training)"
                    )
                episode += 1
                row = log.episode_row(step, episode, returns, success, stats.mean())
                _scalars(writer, step, {k: v for k, v in row.items() if k.startswith("mean_")})
                stats, returns, success = _Running(), np.zeros(T), np.zeros(T)
                if episode % cfg.checkpoint_every == 0 or step == end:
                    _save(path, {
                        "config": asdict(cfg), "method": method, "seed": seed, "step": step, "episode": episode,
                        "elapsed": elapsed, "agent": sac.state_dict(), "buffer": buffer.state_dict(),
                        "rewards": None if rewards is None else rewards.state_dict(),
                        "envs": list(envs.call("get_checkpoint")), "eval_envs": list(eval_envs.call("get_checkpoint")),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.device(device).type == "cuda" else None,
                    })
                obs = torch.as_tensor(envs.reset()[0], dtype=torch.float32, device=device)
        if step == cfg.total_steps and step % cfg.eval_every != 0:
            # The final evaluation off the schedule comes after the last checkpoint, so that the
            # checkpoint's evaluation environments are those of the schedule: a run extended
            # to more steps then evaluates exactly as one that was that long from the start.
            _evaluate_and_log(sac, eval_envs, cfg, step, elapsed, log, writer, bar)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        envs.close()
        eval_envs.close()
    summary = _summary(cfg, method, seed, step, elapsed, log.evals())
    if step == cfg.total_steps:  # a run stopped early (stop_after) has no final summary yet
        tmp = os.path.join(out, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(out, "summary.json"))
    return summary


def _evaluate_and_log(sac: MultiTaskSAC, eval_envs: Any, cfg: SACConfig, step: int, elapsed: dict[str, float],
                      log: _Logs, writer: Any, bar: Any) -> None:
    t0 = time.perf_counter()
    mean_success, mean_return, per_task = evaluate(sac, eval_envs, cfg.eval_episodes)
    elapsed["eval"] += time.perf_counter() - t0
    log.eval_row(step, mean_success, mean_return, per_task)
    _scalars(writer, step, {"eval/success": mean_success, "eval/return": mean_return})
    if bar is not None:
        bar.set_postfix(success=f"{100 * mean_success:.0f}%")  # in % as in summary.md


def _finished_summary(out: str, cfg: SACConfig, method: str, seed: int, checked: bool) -> dict[str, Any] | None:
    """The summary of a run in ``out`` that already reached ``cfg.total_steps``, if it is this run
    (same config, method and seed, as the summary records them; a summary written before it
    recorded them counts when ``checked``, i.e. the checkpoint was checked to be this run's),
    else ``None``."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):  # none yet, or cut short by a kill: not finished
        return None
    if summary.get("steps") != cfg.total_steps:
        return None
    if "config" not in summary:
        return summary if checked else None
    # A field the summary lacks was added later with its old behaviour as default.
    saved = {**_as_json(asdict(SACConfig())), **summary["config"]}
    same = (saved, summary.get("method"), summary.get("seed")) == (_as_json(asdict(cfg)), method, seed)
    return summary if same else None


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _updates_at(cfg: SACConfig, step: int) -> int:
    """Updates after vector step ``step`` (1-based): none during the random warm-up; with
    ``update_burst``, as many as warm-up steps right after it (mtrl: ``num_updates = init_steps``
    at the first step that may update); then ``updates_per_step``."""
    if step <= cfg.random_steps:
        return 0
    if cfg.update_burst and cfg.random_steps > 0 and step == cfg.random_steps + 1:
        return cfg.random_steps
    return cfg.updates_per_step


def _clear_run(out: str) -> None:
    """Remove a previous run's files from ``out`` (``resume=False``)."""
    for name in (CHECKPOINT, CHECKPOINT + ".prev", "train.csv", "eval.csv", "summary.json"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    if os.path.isdir(os.path.join(out, "tb")):
        shutil.rmtree(os.path.join(out, "tb"))


def _check_same_run(state: dict[str, Any], cfg: SACConfig, method: str, seed: int) -> None:
    """A checkpoint continues only the same run; a longer ``total_steps`` extends it."""
    # A field the checkpoint lacks was added later with its old behaviour as default.
    defaults = asdict(SACConfig())
    saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k != "total_steps"}
    now = {k: v for k, v in asdict(cfg).items() if k != "total_steps"}
    saved.update(method=state["method"], seed=state["seed"])
    now.update(method=method, seed=seed)
    if saved != now:
        raise ValueError(
            f"the checkpoint in this directory is from a different run: {differences(saved, now)} (the method spec is "
            "compared as written). Use another --out, or --fresh to start over"
        )
    if state["step"] > cfg.total_steps:
        raise ValueError(
            f"the checkpoint is at step {state['step']}, past --steps (total_steps) {cfg.total_steps}; ask for at "
            f"least {state['step']} steps, or use --fresh or another --out"
        )


def _save(path: str, state: dict[str, Any]) -> None:
    save_checkpoint(path, state)


def _summary(cfg: SACConfig, method: str, seed: int, step: int, elapsed: dict[str, float], evals: list[dict[str, str]]) -> dict[str, Any]:
    T = parse_benchmark(cfg.benchmark).num_tasks
    first = cfg.random_steps + 1  # the first step that updates (a burst, with update_burst)
    updates = (_updates_at(cfg, first) if step >= first else 0) + max(step - first, 0) * cfg.updates_per_step
    return {
        "benchmark": cfg.benchmark, "protocol": cfg.protocol, "method": method, "seed": seed, "steps": step, "env_steps": step * T,
        "config": _as_json(asdict(cfg)),
        "env_steps_per_s": step * T / elapsed["env"] if elapsed["env"] else None,
        "updates_per_s": updates / elapsed["update"] if elapsed["update"] else None,
        "seconds": elapsed, "final_eval": evals[-1] if evals else None,
        "best_success": max(float(r["mean_success"]) for r in evals) if evals else None,
    }


class _Running:
    """Sums of the update statistics over an episode, kept as tensors (no host reads per step)."""

    def __init__(self) -> None:
        self.total: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            v = v.detach().to(torch.float64)
            self.total[k] = v if k not in self.total else self.total[k] + v
        self.count += 1

    def mean(self) -> dict[str, list[float]]:
        return {k: (v / self.count).cpu().reshape(-1).tolist() for k, v in self.total.items()} if self.count else {}


class _Logs:
    """``train.csv`` and ``eval.csv``, appended row by row, truncated to a checkpoint on resume."""

    STATS = ("critic_loss", "actor_loss", "alpha", "critic_weights", "actor_weights")

    def __init__(self, out: str, names: list[str], keep_until: int | None, eval_every: int) -> None:
        self.names = names
        self.train_path = os.path.join(out, "train.csv")
        self.eval_path = os.path.join(out, "eval.csv")
        per_task = [f"{kind}/{n}" for kind in ("return", "success", *self.STATS) for n in names]
        self.train_fields = ["step", "env_steps", "episode", "mean_return", "mean_success",
                             "critic_conflict", "actor_conflict", *per_task]
        self.eval_fields = ["step", "env_steps", "mean_success", "mean_return", *[f"success/{n}" for n in names]]
        # Rows up to the checkpoint's step are kept; anything else (rows written after it, or a
        # run that never reached a checkpoint) is dropped so the files describe one run.
        # The kept rows go to a new file that replaces the old one only once it is on disk, so a
        # kill at any instant leaves either the old or the new log, never a shorter one.
        # An evaluation off the schedule is a finished run's last one: a resumed run redoes it.
        for path, fields, every in ((self.train_path, self.train_fields, 1), (self.eval_path, self.eval_fields, eval_every)):
            rows = _read(path) if keep_until is not None and os.path.exists(path) else []
            kept = [r for r in rows if (k := _step(r)) is not None and k <= keep_until and k % every == 0]
            write_csv_atomically(path, kept, fields)

    def episode_row(self, step: int, episode: int, returns: np.ndarray, success: np.ndarray,
                    stats: dict[str, list[float]]) -> dict[str, Any]:
        T = len(self.names)
        row: dict[str, Any] = {"step": step, "env_steps": step * T, "episode": episode,
                               "mean_return": float(returns.mean()), "mean_success": float(success.mean()),
                               "critic_conflict": _first(stats.get("critic_conflict")),
                               "actor_conflict": _first(stats.get("actor_conflict"))}
        for kind, values in (("return", returns.tolist()), ("success", success.tolist()),
                             *((k, stats.get(k, [float("nan")] * T)) for k in self.STATS)):
            row.update({f"{kind}/{n}": v for n, v in zip(self.names, values)})
        self._append(self.train_path, self.train_fields, row)
        return row

    def eval_row(self, step: int, mean_success: float, mean_return: float, per_task: list[float]) -> None:
        row = {"step": step, "env_steps": step * len(self.names), "mean_success": mean_success, "mean_return": mean_return}
        row.update({f"success/{n}": s for n, s in zip(self.names, per_task)})
        self._append(self.eval_path, self.eval_fields, row)

    def evals(self) -> list[dict[str, str]]:
        return _read(self.eval_path)

    @staticmethod
    def _append(path: str, fields: list[str], row: dict[str, Any]) -> None:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerow(row)


def _first(values: list[float] | None) -> float:
    return float("nan") if not values else values[0]


def _step(row: dict[str, str]) -> int | None:
    try:  # a line cut short by a kill has no valid step, or missing fields
        return int(row["step"]) if None not in row.values() else None
    except (TypeError, ValueError):
        return None


def _read(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scalars(writer: Any, step: int, values: dict[str, float]) -> None:
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(k, v, step)
