"""Train one mtgrad method on one benchmark, with logs, checkpoints and exact resume.

:func:`train` runs a :class:`TrainConfig`: it builds the benchmark's data and model for the seed,
trains with Adam wrapped in :class:`mtgrad.MTLOptimizer` (so any mtgrad method works: Gramian
weightings, Jacobian aggregators, loss weightings), and writes into ``config.out``:

* ``epochs.csv``: one row per epoch, the running train loss/metrics over the epoch and the test
  loss/metrics at its end, per task;
* ``steps.csv``: one row per optimisation step, the task losses, the task weights of the step's
  record and the conflict diagnostics of its Gramian (mean pairwise cosine, conflict rate, mean
  gradient-magnitude similarity Φ, median curvature bound ξ, and every pairwise cosine);
* ``checkpoint.pt`` (and ``checkpoint.pt.prev``, the one before it): written atomically, with
  fsync and a checksum (:mod:`mtgrad.bench.checkpoints`), at the end of every epoch: model, ``MTLOptimizer`` state
  (Adam and the method's own state, e.g. PCGrad's generator), torch's global RNG state, the
  data-order generator's state, the epoch and the logs so far;
* TensorBoard events under ``tb/`` when ``torch.utils.tensorboard`` can be imported.

Exact resume: data is shuffled with a dedicated ``torch.Generator`` and every source of randomness
(model init seeded once, the data order, the method's generator, torch's global generator) is
either deterministic from the seed or in the checkpoint. A run stopped after epoch k and started
again with the same config continues from the checkpoint and ends with bit-identical metrics and
parameters to an uninterrupted run (same machine, same ``threads``; the test suite checks it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import mtgrad

from .checkpoints import differences, load_checkpoint, save_checkpoint, write_csv_atomically
from .reporting import progress_bar, tensorboard_writer
from .benchmarks import Benchmark, get_benchmark

__all__ = [
    "TrainConfig", "RunResult", "train", "check_resumable", "check_accumulable", "delta_m", "make_method", "CHECKPOINT",
]

CHECKPOINT = "checkpoint.pt"
_EVAL_BATCH = 1024


@dataclass
class TrainConfig:
    """One training run. ``None`` for ``epochs``/``batch_size``/``lr`` means the benchmark's default.

    Attributes:
        benchmark: a name in :data:`mtgrad.bench.benchmarks.BENCHMARKS`.
        method: a spec for :func:`mtgrad.from_spec` (``"gd"`` = equal weighting, the mean loss).
        tasks: task indices to train on (``None``: all); one index gives a single-task baseline.
        data_options: keyword arguments for the benchmark's data builder (e.g. ``n_train``).
        micro_batches: split every batch into this many micro-batches, forwarded and
            backpropagated one after the other, with one optimizer step per batch (gradient
            accumulation: :meth:`mtgrad.MTLOptimizer.backward`). Each micro-batch's losses are
            weighted by its share of the batch, so the step is the whole batch's, to rounding; only
            the activations of one micro-batch are alive at a time.
        threads: torch intra-op threads during the run (results are bit-reproducible for a fixed
            value; the default 1 suits these small models).
        resume: continue from ``out/checkpoint.pt`` if it exists (else start afresh, overwriting).
        progress, tensorboard: progress bar on stderr; TensorBoard events if available.
    """

    benchmark: str = "multimnist"
    method: str = "gd"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    out: str = "results/train"
    threads: int = 1
    device: str = "cpu"
    tasks: tuple[int, ...] | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
    curvature: bool = False
    micro_batches: int = 1

    def resolved(self) -> TrainConfig:
        """A copy with the benchmark's defaults filled in and the fields checked."""
        bench = get_benchmark(self.benchmark)
        d = bench.defaults
        cfg = dataclasses.replace(
            self,
            benchmark=bench.name,
            epochs=d.get("epochs", 1) if self.epochs is None else self.epochs,
            batch_size=d.get("batch_size", 128) if self.batch_size is None else self.batch_size,
            lr=d.get("lr", 1e-3) if self.lr is None else self.lr,
            tasks=tuple(range(bench.num_tasks)) if self.tasks is None else tuple(int(t) for t in self.tasks),
            data_options=dict(self.data_options),
        )
        assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
        if cfg.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
        if cfg.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
        if not cfg.lr > 0:
            raise ValueError(f"lr must be positive, got {cfg.lr}")
        if isinstance(cfg.micro_batches, bool) or not isinstance(cfg.micro_batches, int) or cfg.micro_batches < 1:
            raise ValueError(f"micro_batches must be an integer >= 1, got {cfg.micro_batches!r}")
        if cfg.micro_batches > cfg.batch_size:
            raise ValueError(
                f"micro_batches (--micro-batches) is {cfg.micro_batches}, more than the {cfg.batch_size} examples of a batch"
            )
        if cfg.micro_batches > 1 and cfg.curvature:
            raise ValueError(
                "curvature needs the whole batch's losses before and after the step: it is not "
                "available with micro-batches (--micro-batches > 1)"
            )
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        assert cfg.tasks is not None
        if not cfg.tasks or len(set(cfg.tasks)) != len(cfg.tasks):
            raise ValueError(f"tasks must be distinct task indices, got {cfg.tasks}")
        bad = [t for t in cfg.tasks if not 0 <= t < bench.num_tasks]
        if bad:
            raise ValueError(f"task indices {bad} out of range: {bench.name} has {bench.num_tasks} tasks")
        return cfg

    def identity(self) -> dict[str, Any]:
        """The fields a checkpoint must match to be resumed (what changes the numbers).

        ``epochs`` is not one: nothing depends on the planned length, so a finished run extends to
        more epochs exactly as it would have continued (the rule ``mtgrad rl`` has for steps)."""
        keep = ("benchmark", "method", "batch_size", "lr", "seed", "device", "tasks", "data_options", "curvature")
        identity = {k: getattr(self, k) for k in keep}
        if self.micro_batches != 1:  # absent otherwise: checkpoints from before the option still resume
            identity["micro_batches"] = self.micro_batches
        return identity


@dataclass
class RunResult:
    """What :func:`train` returns.

    ``history``: one dict per epoch (``epoch``, ``train/<task>/loss``, ``train/<task>/<metric>``,
    ``test/...`` the same, ``seconds``); ``steps``: one dict per step (``step``, ``epoch``,
    ``loss/<task>``, ``w/<task>``, ``mean_cos``, ``conflict_rate``, ``mean_phi``, ``median_xi``,
    ``cos/<task>/<task>``; NaN where a method gives no weights or Gramian); ``test``: the final test
    metrics by ``"<task>/<metric>"``.
    """

    config: TrainConfig
    task_names: list[str]
    higher_is_better: dict[str, bool]
    history: list[dict[str, float]]
    steps: list[dict[str, float]]
    resumed_from: int = 0
    seconds: float = 0.0

    @property
    def test(self) -> dict[str, float]:
        last = self.history[-1]
        return {k[len("test/"):]: v for k, v in last.items() if k.startswith("test/") and k[5:] in self.higher_is_better}


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]) -> float:
    """Δm% (Maninis et al. 2019; CAGrad Sec. 5.2): the mean over the baseline's metrics of
    ``(-1)^{l_k} (M_k - B_k) / B_k``, times 100, with ``l_k = 1`` when higher is better.

    Lower is better; 0 means on par with the single-task baselines on average. Every metric of
    ``baseline`` must be in ``metrics`` and ``higher_is_better`` and have a non-zero baseline.
    """
    if not baseline:
        raise ValueError("baseline has no metrics")
    total = 0.0
    for name, b in baseline.items():
        if name not in metrics:
            raise ValueError(f"metric {name!r} of the baseline is missing from the metrics")
        if name not in higher_is_better:
            raise ValueError(f"no direction (higher_is_better) for metric {name!r}")
        if b == 0:
            raise ValueError(f"baseline of {name!r} is 0: its relative change is undefined")
        sign = -1.0 if higher_is_better[name] else 1.0
        total += sign * (float(metrics[name]) - float(b)) / float(b)
    return 100.0 * total / len(baseline)


def make_method(spec: str, num_tasks: int, model: torch.nn.Module, seed: int, device: torch.device) -> mtgrad.Method:
    """The method for ``spec`` via :func:`mtgrad.from_spec`, with a seeded generator for the
    randomised ones (PCGrad's order, RLW, GradDrop, …: part of the method's state, hence of the
    checkpoint) and, for GradNorm, the last shared weight matrix as ``last_shared``."""
    shared = list(model.shared_parameters())  # type: ignore[operator]
    matrices = [p for p in shared if p.ndim >= 2]
    extra: dict[str, Any] = {
        "num_tasks": num_tasks,
        "generator": torch.Generator().manual_seed(1_000_003 * (seed + 1)),
        "device": device,
    }
    if matrices:
        extra["last_shared"] = matrices[-1]
    try:
        return mtgrad.from_spec(spec, **extra)
    except (TypeError, ValueError) as exc:  # its message names the spec (ValueError: a usage error)
        raise ValueError(str(exc)) from exc


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    perm = torch.randperm(n, generator=generator)
    return list(perm.split(batch_size))


def _task_losses(bench: Benchmark, tasks: Sequence[int], outputs: Sequence[Tensor], batch: tuple[Tensor, ...]) -> list[Tensor]:
    return [bench.tasks[t].loss(out, bench.tasks[t].target(batch)) for t, out in zip(tasks, outputs)]


class _Meter:
    """Sums of per-example losses and metric values over a split, for exact means."""

    def __init__(self, bench: Benchmark, tasks: Sequence[int]) -> None:
        self.bench, self.tasks = bench, tasks
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, outputs: Sequence[Tensor], batch: tuple[Tensor, ...], losses: Sequence[Tensor]) -> None:
        b = int(batch[0].shape[0])
        self.n += b
        for t, out, loss in zip(self.tasks, outputs, losses):
            task = self.bench.tasks[t]
            key = f"{task.name}/loss"
            self.sums[key] = self.sums.get(key, 0.0) + float(loss.detach()) * b
            y = task.target(batch)
            for m in task.metrics:
                key = f"{task.name}/{m.name}"
                self.sums[key] = self.sums.get(key, 0.0) + float(m.fn(out.detach(), y).sum())

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{k}": v / max(self.n, 1) for k, v in self.sums.items()}


def _evaluate(model: torch.nn.Module, bench: Benchmark, tasks: Sequence[int], data: tuple[Tensor, ...], device: torch.device) -> dict[str, float]:
    meter = _Meter(bench, tasks)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        n = int(data[0].shape[0])
        for s in range(0, n, _EVAL_BATCH):
            batch = tuple(t[s : s + _EVAL_BATCH].to(device) for t in data)
            outputs = model(batch[0])
            meter.add(outputs, batch, _task_losses(bench, tasks, outputs, batch))
    model.train(was_training)
    return meter.means("test")


def _step_row(step: int, epoch: int, names: Sequence[str], losses: Sequence[Tensor], record: mtgrad.BackwardResult) -> dict[str, float]:
    row: dict[str, float] = {"step": step, "epoch": epoch}
    for name, loss in zip(names, losses):
        row[f"loss/{name}"] = float(loss.detach())
    w = record.weights
    for k, name in enumerate(names):
        row[f"w/{name}"] = float(w[k]) if w is not None else math.nan
    T = len(names)
    pairs = [(i, j) for i in range(T) for j in range(i + 1, T)]
    row.update({"mean_cos": math.nan, "conflict_rate": math.nan, "mean_phi": math.nan, "median_xi": math.nan})
    row.update({f"cos/{names[i]}/{names[j]}": math.nan for i, j in pairs})
    if record.gramian is not None and pairs:
        d = record.diagnostics()
        iu = torch.triu_indices(T, T, offset=1)
        cos = d.cosine[iu[0], iu[1]]
        row["mean_cos"] = float(cos.mean())
        row["conflict_rate"] = float(d.conflict_rate)
        # Tragic-triad measures (PCGrad Defs. 2 and 5); ξ is infinite for exactly opposite pairs,
        # so its median is the summary that stays finite.
        row["mean_phi"] = float(d.magnitude_similarity[iu[0], iu[1]].mean())
        row["median_xi"] = float(d.curvature_bound[iu[0], iu[1]].median())
        row.update({f"cos/{names[i]}/{names[j]}": float(c) for (i, j), c in zip(pairs, cos.tolist())})
    return row


class _CurvatureProbe:
    """PCGrad's curvature estimate along one step (Sec. 5.3), on request: it costs one extra
    backward for ``∇ Σ_i L_i`` at θ_t and one extra forward after the step, on the same batch."""

    def __init__(self, model: torch.nn.Module, losses: Sequence[Tensor]) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.loss = torch.stack(list(losses)).sum()
        grads = torch.autograd.grad(self.loss, self.params, retain_graph=True, allow_unused=True)
        self.grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
        self.before = [p.detach().clone() for p in self.params]

    def estimate(self, losses_after: Sequence[Tensor]) -> float:
        steps = [p.detach() - b for p, b in zip(self.params, self.before)]
        after = torch.stack(list(losses_after)).sum()
        return float(mtgrad.diagnostics.multitask_curvature(self.loss.detach(), after, self.grads, steps))


def check_accumulable(method: mtgrad.Method, spec: str, num_tasks: int, device: torch.device) -> None:
    """Refuse, before anything is written, a method whose micro-batches do not add up to the batch
    (:meth:`mtgrad.MTLOptimizer.backward` would refuse it at the first step)."""
    reason = None
    if getattr(method, "needs_closure", False):
        reason = "it learns from the losses recomputed after each step on the same batch"
    elif isinstance(method, mtgrad.LossWeighting):
        try:
            method.linear_terms(torch.ones(num_tasks, device=device))  # depends on the state only
        except NotImplementedError as err:
            reason = str(err)
    if reason is not None:
        raise ValueError(
            f"method {spec!r} cannot accumulate micro-batches ({reason}); train it on whole batches "
            "(--micro-batches 1; micro_batches=1 from Python)"
        )


def _accumulated_step(
    opt: mtgrad.MTLOptimizer,
    model: torch.nn.Module,
    bench: Benchmark,
    tasks: Sequence[int],
    data: tuple[Tensor, ...],
    idx: Tensor,
    micro_batches: int,
    meter: _Meter,
    device: torch.device,
) -> tuple[list[Tensor], mtgrad.BackwardResult]:
    """One step on the batch ``idx`` from ``micro_batches`` forward/backward passes.

    The batch loss is the mean over its examples, ``L_i = Σ_m (n_m/n) L_i^(m)`` with ``L_i^(m)``
    the mean over micro-batch m of ``n_m`` examples, so each micro-batch backpropagates its losses
    weighted by ``n_m/n`` and the accumulated task gradients are the batch's. Returns the batch
    losses (detached) and the step's record."""
    n = int(idx.shape[0])
    total: list[Tensor] | None = None
    for part in idx.tensor_split(min(micro_batches, n)):  # a short last batch: fewer, never empty
        micro = tuple(t[part].to(device) for t in data)
        outputs = model(micro[0])
        losses = _task_losses(bench, tasks, outputs, micro)
        meter.add(outputs, micro, losses)
        share = part.shape[0] / n
        opt.backward([loss * share for loss in losses])
        parts = [loss.detach() * share for loss in losses]
        total = parts if total is None else [a + b for a, b in zip(total, parts)]
    assert total is not None
    return total, opt.step()


def train(config: TrainConfig, *, stop_after: int | None = None) -> RunResult:
    """Run (or resume) ``config``; see the module docstring for what is written to ``out``.

    ``stop_after``: stop once this many epochs are done (as if killed right after that epoch's
    checkpoint); calling :func:`train` again with the same config resumes. A checkpoint whose
    config differs in anything that changes the numbers raises ``ValueError`` instead of being
    silently mixed with the new run; pass ``resume=False`` (or another ``out``) to start afresh.
    A longer ``epochs`` extends a finished run; a shorter one than the checkpoint's is refused.

    Side effect: torch's global generator is seeded with ``config.seed`` (for the model's
    initialisation) and, on resume, restored from the checkpoint. On a GPU, results are exactly
    reproducible only as far as its kernels are deterministic.
    """
    cfg = config.resolved()
    assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None and cfg.tasks is not None
    bench = get_benchmark(cfg.benchmark)
    tasks = list(cfg.tasks)
    names = [bench.tasks[t].name for t in tasks]
    device = torch.device(cfg.device)
    ckpt_path = os.path.join(cfg.out, CHECKPOINT)
    started = time.perf_counter()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        train_ds, test_ds = bench.data(cfg.seed, **cfg.data_options)
        train_data = tuple(train_ds.tensors)
        test_data = tuple(test_ds.tensors)
        torch.manual_seed(cfg.seed)
        model = bench.model([bench.tasks[t] for t in tasks]).to(device)
        method = make_method(cfg.method, len(tasks), model, cfg.seed, device)
        if cfg.micro_batches > 1:
            check_accumulable(method, cfg.method, len(tasks), device)
        opt = mtgrad.MTLOptimizer(torch.optim.Adam(model.parameters(), lr=cfg.lr), model.shared_parameters(), method)
        order = torch.Generator().manual_seed(cfg.seed)
        # Only now that the data, model and method exist: a refused run leaves no folder behind.
        os.makedirs(cfg.out, exist_ok=True)
        if not cfg.resume:  # a fresh run: the old checkpoints (newest and previous) must not be resumed later
            for stale in (ckpt_path, ckpt_path + ".prev"):
                if os.path.exists(stale):
                    os.remove(stale)

        start_epoch, step = 0, 0
        history: list[dict[str, float]] = []
        steps: list[dict[str, float]] = []
        ckpt = load_checkpoint(ckpt_path, "--fresh") if cfg.resume else None
        if ckpt is not None:
            _check_checkpoint_matches(ckpt, cfg, ckpt_path)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"])
            order.set_state(ckpt["order_rng"])
            start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
            history, steps = list(ckpt["history"]), list(ckpt["steps"])

        n = int(train_data[0].shape[0])
        per_epoch = math.ceil(n / cfg.batch_size)
        writer = tensorboard_writer(cfg.out, cfg.tensorboard, step) if start_epoch < cfg.epochs else None
        desc = f"{bench.name} {cfg.method} s{cfg.seed}" + ("" if len(tasks) == bench.num_tasks else f" task {names}")
        bar = progress_bar(cfg.epochs * per_epoch, desc, cfg.progress and start_epoch < cfg.epochs, initial=start_epoch * per_epoch)
        needs_closure = getattr(method, "needs_closure", False)
        model.train()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                meter = _Meter(bench, tasks)
                for idx in _batches(n, cfg.batch_size, order):
                    opt.zero_grad()
                    if cfg.micro_batches > 1:
                        losses, record = _accumulated_step(
                            opt, model, bench, tasks, train_data, idx, cfg.micro_batches, meter, device
                        )
                        probe = None
                    else:
                        batch = tuple(t[idx].to(device) for t in train_data)
                        outputs = model(batch[0])
                        losses = _task_losses(bench, tasks, outputs, batch)
                        closure = None
                        if needs_closure:

                            def closure(batch: tuple[Tensor, ...] = batch) -> list[Tensor]:
                                return _task_losses(bench, tasks, model(batch[0]), batch)

                        probe = _CurvatureProbe(model, losses) if cfg.curvature else None
                        record = opt.step(losses, closure=closure)
                        meter.add(outputs, batch, losses)
                    step += 1
                    row = _step_row(step, epoch + 1, names, losses, record)
                    if probe is not None:
                        with torch.no_grad():
                            after = _task_losses(bench, tasks, model(batch[0]), batch)
                        row["curvature"] = probe.estimate(after)
                    steps.append(row)
                    if writer is not None:
                        for k, v in row.items():
                            if k not in ("step", "epoch") and not math.isnan(v):
                                writer.add_scalar(k, v, step)
                    if bar is not None:
                        bar.update(1)
                opt.end_epoch()
                entry: dict[str, float] = {"epoch": epoch + 1}
                entry.update(meter.means("train"))
                entry.update(_evaluate(model, bench, tasks, test_data, device))
                entry["seconds"] = time.perf_counter() - t0
                history.append(entry)
                if writer is not None:
                    for k, v in entry.items():
                        if k not in ("epoch", "seconds"):
                            writer.add_scalar(f"epoch/{k}", v, epoch + 1)
                    writer.flush()
                write_csv_atomically(os.path.join(cfg.out, "epochs.csv"), history)
                write_csv_atomically(os.path.join(cfg.out, "steps.csv"), steps)
                _save(ckpt_path, cfg, model, opt, order, epoch + 1, step, history, steps)
                if stop_after is not None and epoch + 1 >= stop_after:
                    break
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
    finally:
        torch.set_num_threads(previous_threads)

    return RunResult(
        config=cfg,
        task_names=names,
        higher_is_better={k: v for k, v in bench.higher_is_better().items() if k in bench.metric_names(tasks)},
        history=history,
        steps=steps,
        resumed_from=start_epoch,
        seconds=time.perf_counter() - started,
    )


def check_resumable(config: TrainConfig) -> None:
    """Raise the error :func:`train` would raise on ``config``'s checkpoint (another run's, or past
    its epochs) without training: :func:`mtgrad.bench.report.compare` asks before its first run."""
    cfg = config.resolved()
    path = os.path.join(cfg.out, CHECKPOINT)
    ckpt = load_checkpoint(path, "--fresh") if cfg.resume else None
    if ckpt is not None:
        _check_checkpoint_matches(ckpt, cfg, path)


def _check_checkpoint_matches(ckpt: dict[str, Any], cfg: TrainConfig, path: str) -> None:
    assert cfg.epochs is not None
    saved = {k: v for k, v in ckpt["config"].items() if k != "epochs"}  # older checkpoints held it
    if saved != cfg.identity():
        raise ValueError(
            f"{path} belongs to a different run: {differences(saved, cfg.identity())}. "
            "Use another --out, or --fresh (resume=False from Python) to overwrite it"
        )
    if int(ckpt["epoch"]) > cfg.epochs:
        raise ValueError(
            f"{path} is at epoch {ckpt['epoch']}, past --epochs {cfg.epochs}; ask for at least "
            f"{ckpt['epoch']} epochs, or use --fresh (resume=False from Python) or another --out"
        )


def _save(path: str, cfg: TrainConfig, model, opt, order, epoch: int, step: int, history, steps) -> None:
    state = {
        "config": cfg.identity(),
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "order_rng": order.get_state(),
        "history": history,
        "steps": steps,
    }
    save_checkpoint(path, state)
