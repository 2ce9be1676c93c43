"""Lightning: gradient surgery in a LightningModule, and the conflict diagnostics in its logger.

Needs the ``lightning`` extra (``pip install "mtgrad[lightning]"``). Surgery replaces the single
backward Lightning's automatic optimisation runs, so the module optimises manually::

    class MultiTask(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.trunk, self.heads = ..., ...
            self.method = mtgrad.PCGrad()

        def training_step(self, batch, batch_idx):
            losses = ...                                   # T scalar losses
            mtgrad.lightning.surgery_step(self, losses, self.trunk.parameters(), self.method)

    trainer = lightning.Trainer(callbacks=[mtgrad.lightning.ConflictLogger()], strategy="ddp", ...)

:func:`surgery_step` is ``manual_backward`` + ``optimizer.step()`` with :func:`mtgrad.backward` in
place of ``loss.backward()``: the strategy prepares DDP's reducer as for ``manual_backward``, so
under ``strategy="ddp"`` every rank takes the exact global-batch step (:mod:`mtgrad.distributed`);
with ``precision="16-mixed"`` the precision plugin's ``GradScaler`` is passed on (the method sees
unscaled gradients, an overflow skips the step); ``"bf16-mixed"`` needs nothing;
``accumulate=k`` accumulates k batches per step. :class:`ConflictLogger` logs the step's cosines,
conflict rate, magnitude similarity Φ and weights to the trainer's loggers.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ._warnings import warn as warn_user
from .backward import BackwardResult, backward
from .methods.base import LossWeighting, Method
from .optim import MTLOptimizer, check_closure, feed_after_step, managed_ids

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'mtgrad.lightning needs Lightning: pip install "mtgrad[lightning]" (or pip install lightning)'
    ) from error

__all__ = ["surgery_step", "ConflictLogger"]

RECORD_ATTRIBUTE = "mtgrad_record"


def surgery_step(
    module: pl.LightningModule,
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor] | nn.Module,
    method: Method,
    *,
    optimizer: Any = None,
    accumulate: int = 1,
    closure: Callable[[], Sequence[Tensor] | Tensor] | None = None,
    **kwargs: Any,
) -> BackwardResult | None:
    """One optimisation step of a manually optimised module: zero_grad, surgery, step.

    With ``accumulate=k`` (Lightning's ``accumulate_grad_batches``, which manual optimisation
    does not take), each call is one batch, and the windows are Lightning's: batches
    ``[jk, (j+1)k)`` of the epoch (and a shorter last one) make one step, taken at the window's
    last batch, on the task gradients summed over its batches
    (:meth:`mtgrad.MTLOptimizer.backward` / :meth:`~mtgrad.MTLOptimizer.apply`): the step on
    the k batches together. The batches' losses are summed as ``loss.backward()`` sums them:
    divide mean losses by k, as Lightning's automatic accumulation does. Under DDP the batches
    before a window's last skip the gradient synchronisation (as ``no_sync`` would). A window's
    batches live in memory only: a run resumed from a checkpoint taken inside a window steps at
    the window's end on the batches after the checkpoint (with a warning).

    Args:
        module: the LightningModule (``automatic_optimization = False``).
        losses: the T task losses of this batch.
        shared_params: the parameters every task shares (or the shared module).
        method: e.g. ``mtgrad.PCGrad()``; keep it on the module, so its state persists. A loss
            weighting's own parameters (UW's) must be in the module's optimizer.
        optimizer: one of ``module.optimizers()``; default: the only one.
        accumulate: batches per optimizer step (default 1).
        closure: recomputes this batch's losses after the step, for a loss weighting that learns
            from them (FAMO, whose ``after_step`` receives them), as in
            :meth:`mtgrad.MTLOptimizer.step`; ``accumulate=1`` only.
        kwargs: for :func:`mtgrad.backward` (``engine``, ``representation``, ``check_finite``);
            with ``accumulate > 1`` those of :meth:`mtgrad.MTLOptimizer.backward`.

    Returns:
        The step's record, also kept as ``module.mtgrad_record`` for :class:`ConflictLogger`;
        ``None`` (and no record) on an accumulating call that does not step.
    """
    if module.automatic_optimization:
        raise ValueError(
            "surgery_step replaces Lightning's backward: set self.automatic_optimization = False in the module's __init__"
        )
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive int (batches per step), got {accumulate!r}")
    opt = optimizer if optimizer is not None else module.optimizers()
    if isinstance(opt, list):
        raise ValueError(f"the module has {len(opt)} optimizers: pass optimizer=... for this step")
    # A LightningOptimizer wraps the torch one.
    inner = cast(torch.optim.Optimizer, getattr(opt, "optimizer", opt))
    _check_learned_parameters(method, inner)
    trainer = module.trainer
    stacked = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    windows = _WINDOWS.setdefault(trainer, {})
    held = windows.get((id(module), id(inner)))
    if accumulate == 1:
        if held is not None and held.batches:
            raise ValueError(
                f"surgery_step(accumulate=1) in the middle of an accumulated step ({held.batches} batch(es) of "
                f"accumulate={held.accumulate} held): keep accumulate fixed during an epoch"
            )
        check_closure(method, closure, " (e.g. closure=lambda: self.task_losses(*batch))")
        opt.zero_grad()
        # What manual_backward does around loss.backward(): DDP's reducer is prepared here (in
        # manual optimisation Lightning's forward leaves it unprepared), the precision plugin's
        # scaler is ours.
        trainer.strategy.pre_backward(stacked.sum())
        record = backward(stacked, shared_params, method, scaler=scaler, **kwargs)
        trainer.strategy.post_backward(stacked.sum())
        opt.step()
        feed_after_step(method, closure)
        setattr(module, RECORD_ATTRIBUTE, record)
        return record
    if closure is not None or getattr(method, "needs_closure", False):
        raise ValueError(
            f"closure= (a loss weighting that learns after each step, such as FAMO) needs accumulate=1: the losses "
            f"after a step are not those of its k batches; got accumulate={accumulate} with {type(method).__name__}"
        )
    window = _open_window(windows, module, trainer, inner, shared_params, method, scaler, accumulate)
    batch_idx = trainer.fit_loop.epoch_loop.batch_idx
    last = (batch_idx + 1) % accumulate == 0 or trainer.is_last_batch
    if last:  # the window's last batch: DDP synchronises now (the heads' summed gradients)
        trainer.strategy.pre_backward(stacked.sum())
    window.optimizer.backward(stacked, **kwargs)
    if last:
        trainer.strategy.post_backward(stacked.sum())
    window.batches, window.next = window.batches + 1, batch_idx + 1
    if not last:
        setattr(module, RECORD_ATTRIBUTE, None)  # no step, nothing for the logger
        return None
    window.batches = 0
    record = window.optimizer.apply(check_finite=kwargs.get("check_finite", True))
    opt.step()  # through Lightning: the precision plugin unscales and skips overflowing steps
    setattr(module, RECORD_ATTRIBUTE, record)
    return record


@dataclass
class _Window:
    """One accumulated step's batches: an :class:`~mtgrad.MTLOptimizer` over the module's
    optimizer holds their task gradients (or a loss weighting's losses)."""

    optimizer: MTLOptimizer
    #: What the window was opened for; a batch of the same window must agree.
    setting: tuple[int, ...]
    accumulate: int
    epoch: int = -1
    next: int = 0  #: the batch index that continues the window
    batches: int = 0  #: batches held


# Per Trainer (so a window never outlives its fit's trainer, nor is copied with the module), per
# (module, optimizer): the window being accumulated.
_WINDOWS: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], _Window]] = weakref.WeakKeyDictionary()


def _open_window(
    windows: dict[tuple[int, int], _Window],
    module: pl.LightningModule,
    trainer: pl.Trainer,
    inner: torch.optim.Optimizer,
    shared_params: Iterable[Tensor] | nn.Module,
    method: Method,
    scaler: Any,
    accumulate: int,
) -> _Window:
    """The window this batch belongs to, by its index in the epoch, as Lightning counts them."""
    shared = shared_params if isinstance(shared_params, nn.Module) else list(shared_params)
    params = list(shared.parameters()) if isinstance(shared, nn.Module) else shared
    setting = (id(method), id(scaler), *map(id, params))
    key = (id(module), id(inner))
    batch_idx = trainer.fit_loop.epoch_loop.batch_idx
    position = batch_idx % accumulate
    window = windows.get(key)
    same = window is not None and window.batches and (window.epoch, window.next) == (trainer.current_epoch, batch_idx)
    # Held batches that this one continues, yet it would start a window or change its setting:
    # they would be dropped or mixed into another step.
    if same and window is not None and (position == 0 or (window.setting, window.accumulate) != (setting, accumulate)):
        raise ValueError(
            "surgery_step(accumulate=...) got another method, accumulate, scaler or set of shared parameters in the "
            f"middle of an accumulated step ({window.batches} batch(es) held): keep them fixed during an epoch"
        )
    if window is None or window.setting != setting:
        window = _Window(MTLOptimizer(inner, shared, method, scaler=scaler), setting, accumulate)
        windows[key] = window
    if position == 0 or not same:
        if position:
            warn_user(
                f"surgery_step(accumulate={accumulate}): batch {position} of an accumulated step without the ones "
                "before it (resumed from a checkpoint taken inside the step?): the step takes the batches from here"
            )
        window.optimizer.zero_grad()  # the inner optimizer's .grad, and nothing pending
        window.accumulate, window.epoch, window.batches = accumulate, trainer.current_epoch, 0
    return window


def _check_learned_parameters(method: Method, optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(method, LossWeighting):
        return
    held = managed_ids(optimizer)
    if any(id(p) not in held for p in method.parameters()):
        raise ValueError(
            f"{type(method).__name__}'s parameters are not in the module's optimizer, so they would never learn: "
            "add method.parameters() to the optimizer in configure_optimizers (and keep the method on the module)"
        )


class ConflictLogger(pl.Callback):
    """Logs the conflict diagnostics of each :func:`surgery_step` to the Trainer's loggers, one
    row per optimizer step (at ``trainer.global_step``).

    Per step (every ``every_n_steps``): ``mtgrad/conflict_rate``, ``mtgrad/min_cosine``,
    ``mtgrad/min_magnitude_similarity``, and per task pair ``mtgrad/cos_i_j``, per task
    ``mtgrad/weight_i`` (when the method has weights). Steps without a Gramian (a loss weighting,
    a reused step) log only the weights.
    """

    def __init__(self, every_n_steps: int = 1, pairs: bool = True) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.pairs = pairs

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = getattr(pl_module, RECORD_ATTRIBUTE, None)
        if not isinstance(record, BackwardResult) or trainer.global_step % self.every_n_steps:
            return
        metrics = diagnostics_metrics(record, self.pairs)
        # To the loggers directly, one row per optimizer step: values given to log_dict persist
        # in Lightning's results and were written again at every later batch until the next step
        # (with accumulate=k, or every_n_steps > 1).
        for logger in trainer.loggers if metrics else ():
            logger.log_metrics(metrics, step=trainer.global_step)


def diagnostics_metrics(record: BackwardResult, pairs: bool = True) -> dict[str, float]:
    """The scalars :class:`ConflictLogger` logs for one record (one host read)."""
    values: dict[str, Tensor] = {}
    if record.weights is not None:
        values.update({f"mtgrad/weight_{i}": w for i, w in enumerate(record.weights)})
    if record.gramian is not None:
        d = record.diagnostics()
        T = d.cosine.shape[-1]
        upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        values["mtgrad/conflict_rate"] = d.conflict_rate
        if T > 1:
            values["mtgrad/min_cosine"] = d.cosine.cpu()[upper].min()
            values["mtgrad/min_magnitude_similarity"] = d.magnitude_similarity.cpu()[upper].min()
        if pairs:
            values.update({f"mtgrad/cos_{i}_{j}": d.cosine[i, j] for i in range(T) for j in range(i + 1, T)})
    if not values:
        return {}
    flat = torch.stack([v.detach().to("cpu", torch.float64).reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, flat))
