"""``MTLOptimizer``: ``opt.step(losses)`` for those who prefer an optimizer-shaped surface."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .accumulate import TaskGradients, accumulate_task_gradients, apply_task_gradients
from ._warnings import warn as warn_user
from .autogram import engine_for
from .backward import BackwardResult, _as_losses, _check_parallel_method, _loss_scale, backward
from .distributed import replicas
from .methods.base import LossWeighting, Method

__all__ = ["MTLOptimizer"]


class MTLOptimizer(torch.optim.Optimizer):
    """Wraps any ``torch.optim.Optimizer``: ``step(losses)`` runs :func:`mtgrad.backward` then steps.

    It is itself a ``torch.optim.Optimizer`` whose ``param_groups``, ``defaults`` and ``state``
    are the inner optimizer's, so ``torch.optim.lr_scheduler`` schedulers drive it (and changing
    a group's ``lr`` changes the inner one's).

    Example::

        opt = mtgrad.MTLOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3),
                                  shared_params=model.trunk, method=mtgrad.PCGrad())
        opt.zero_grad()
        record = opt.step([loss_a, loss_b])   # record.weights, record.gramian

    Given the shared module (not only its parameters), it installs the Gramian-only engine on
    it at once, so every step uses it where the method can (see :func:`mtgrad.backward`).

    ``state_dict`` holds the inner optimizer's state and the method's (e.g. PCGrad's generator),
    so a run restored with ``load_state_dict`` continues identically.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        shared_params: Iterable[Tensor] | nn.Module,
        method: Method,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(method, Method):
            raise TypeError(f"method must be an mtgrad method (e.g. mtgrad.PCGrad()), got {type(method).__name__}")
        # Optimizer.__init__ is not called: it would build param groups of its own, and these
        # must be the inner optimizer's (a scheduler sets their lr).
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self._init_optimizer_hooks()
        #: The shared module, when given as one: then :meth:`step` lets :func:`mtgrad.backward`
        #: choose the engine (the Gramian-only one, installed here, before the first forward).
        self.shared_module = shared_params if isinstance(shared_params, nn.Module) else None
        if self.shared_module is not None and not isinstance(method, LossWeighting):  # it takes no engine
            engine_for(self.shared_module)
        self.shared_params = list(shared_params.parameters() if isinstance(shared_params, nn.Module) else shared_params)
        if not self.shared_params:
            raise ValueError("shared_params is empty: give the parameters all tasks share")
        in_optimizer = managed_ids(optimizer)
        missing = [i for i, p in enumerate(self.shared_params) if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"shared_params {missing} are not managed by the optimizer, so they would never be updated")
        self.method = method
        #: With a ``torch.amp.GradScaler``, :meth:`backward` scales the losses and gives the method
        #: the unscaled task gradients, and :meth:`step` is ``scaler.step`` + ``scaler.update``.
        self.scaler = scaler
        self._pending: TaskGradients | None = None  # micro-batches' task gradients since the last step
        self._weighted: _WeightedMicroBatches | None = None  # a loss weighting's micro-batches since the last step
        self._applied: BackwardResult | None = None  # what apply() wrote, for the step() after it
        if isinstance(method, LossWeighting):
            own = [p for p in method.parameters() if id(p) not in in_optimizer]
            if own:  # learned jointly with the model, as in Kendall et al. (2018)
                optimizer.add_param_group({"params": own})

    def _init_optimizer_hooks(self) -> None:
        """What ``Optimizer.__init__`` sets besides the groups: the hook registries and the step
        wrapper that runs the step hooks (``register_step_pre_hook``/``post_hook``; the
        state-dict hooks are not run: ``state_dict`` is this class's own)."""
        for name in (
            "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks",
        ):  # fmt: skip
            self.__dict__.setdefault(name, OrderedDict())
        self._patch_step_function()
        # An update apply() wrote is taken by the inner optimizer's next step, whoever calls it.
        self.optimizer.register_step_post_hook(self._inner_stepped)

    def _inner_stepped(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._applied = None

    def __getstate__(self) -> dict[str, Any]:
        # Optimizer's keeps only defaults/state/param_groups; this object is its inner optimizer,
        # its method and its pending micro-batches, all needed by a copy. Not an LR scheduler's
        # instance-level step wrapper: it points at the original (Optimizer drops it too).
        state = self.__dict__.copy()
        state.pop("step", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_optimizer_hooks()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the inner optimizer's gradients and drop what :meth:`backward` accumulated."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._pending = None
        self._weighted = None
        self._applied = None

    def backward(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> None:
        """Accumulate one micro-batch: its per-task gradients of the shared parameters are added to
        those of the earlier calls since the last step (heads: ``∇ Σ_i L_i`` into ``.grad`` now).
        :meth:`apply` or :meth:`step` then applies the method once to the sums — the large-batch
        step (:mod:`mtgrad.accumulate`). ``kwargs``: ``engine`` ("loop" or "batched"),
        ``retain_graph``, ``check_finite``.

        A loss weighting needs no task gradients. One whose objective is linear in the losses,
        ``Σ_i a_i L_i + r`` (UW, IMTL-L, DWA with a window of whole steps:
        :meth:`~mtgrad.methods.base.LossWeighting.linear_terms`), backpropagates
        ``Σ_i a_i L_i^(k)`` now and, at :meth:`apply`, ``r`` once and what it learns from the
        summed losses (DWA's windows): the large-batch step. The others (GLS, FAMO, GradNorm, a
        sliding DWA) are refused: their per-micro-batch objectives do not add up to it. The
        Gramian-only engine and ``representation=`` cannot hold task gradients; use :meth:`step`
        with the losses of one batch for them.
        """
        if self._applied is not None:
            raise ValueError(
                "apply() already wrote this step's update into .grad: step() (or zero_grad()) before the next micro-batch"
            )
        if self.scaler is not None:
            kwargs.setdefault("scaler", self.scaler)
        if isinstance(self.method, LossWeighting):
            self._backward_weighted(self.method, losses, kwargs)
            return
        try:
            self._pending = accumulate_task_gradients(losses, self.shared_params, into=self._pending, **kwargs)
        finally:
            engine = None if self.shared_module is None else engine_for(self.shared_module, create=False)
            if engine is not None:
                engine.reset()  # accumulated task gradients need no records: drop this forward's

    def _backward_weighted(self, method: LossWeighting, losses: Sequence[Tensor] | Tensor, kwargs: dict) -> None:
        task_losses = _as_losses(losses)  # once: losses may be a generator
        values = torch.stack([loss.detach() for loss in task_losses])
        _check_parallel_method(method, replicas(kwargs.get("data_parallel")))
        try:
            weights, _ = method.linear_terms(values)  # validates the losses as combine() does
        except NotImplementedError as err:
            raise ValueError(
                f"{err}: its objectives of the micro-batches do not add up to the large batch's, so "
                "MTLOptimizer.backward cannot accumulate it; call step(losses) with the losses of a whole batch"
            ) from err
        try:
            backward(task_losses, self.shared_params, _LossWeights(type(method).__name__, weights), **kwargs)
        finally:
            engine = None if self.shared_module is None else engine_for(self.shared_module, create=False)
            if engine is not None:
                engine.reset()  # a loss weighting takes no engine: drop this forward's records
        total = values.to(torch.float64)
        if self._weighted is not None:
            total = total + self._weighted.losses
        self._weighted = _WeightedMicroBatches(total, values.dtype, weights.detach())

    def _apply_weighted(self, method: LossWeighting, check_finite: bool) -> BackwardResult:
        if self._weighted is None:
            raise ValueError("nothing to apply: call backward(losses) first")
        pending = self._weighted
        values = pending.losses.to(pending.dtype)
        _, regulariser = method.linear_terms(values)
        if regulariser is not None:  # once per step: per micro-batch it would count k times
            if check_finite and not bool(torch.isfinite(regulariser.detach()).all()):
                raise ValueError(f"{type(method).__name__}'s regulariser is {regulariser.item()}: its parameters diverged")
            scale = _loss_scale(self.scaler, regulariser)
            (regulariser if scale is None else regulariser * scale.to(regulariser.dtype)).backward()
        method.observe(values)
        self._weighted = None
        return BackwardResult(weights=pending.weights.to(torch.float64), gramian=None)

    def apply(self, check_finite: bool = True) -> BackwardResult:
        """Write the method's update of the accumulated task gradients into ``.grad``, e.g. to clip
        gradients before the step: ``apply()``, clip, then :meth:`step` without losses, which
        steps the inner optimizer on what ``apply`` wrote. :meth:`step` calls it otherwise."""
        if self._applied is not None:
            raise ValueError("apply() already wrote this step's update into .grad: step() takes it")
        if isinstance(self.method, LossWeighting):
            record = self._apply_weighted(self.method, check_finite)
        elif self._pending is None:
            raise ValueError("nothing to apply: call backward(losses) for each micro-batch first, or step(losses)")
        else:
            pending, self._pending = self._pending, None
            record = apply_task_gradients(pending, self.method, check_finite=check_finite)
        self._applied = record
        return record

    def step(  # type: ignore[override]  # takes the losses first: the surgery needs them
        self,
        losses: Sequence[Tensor] | Tensor | None = None,
        closure: Callable[[], Sequence[Tensor] | Tensor] | None = None,
        **kwargs: Any,
    ) -> BackwardResult:
        """The method's update, then one step of the inner optimizer.

        With ``losses`` and nothing accumulated: :func:`mtgrad.backward` on them (any engine).
        After :meth:`backward` calls: ``losses`` (if given) are one more micro-batch, and the
        method is applied once to the accumulated task gradients. After :meth:`apply` (and, say,
        gradient clipping): steps on what it wrote, without losses. ``closure``, if given,
        recomputes the task losses after the step (same batch); a loss weighting that learns
        from them (FAMO) receives them through ``after_step``.
        """
        check_closure(self.method, closure)
        if self._applied is not None and self._pending is None and self._weighted is None:
            if losses is not None:
                raise ValueError(
                    "apply() already wrote this step's update into .grad: call step() without losses to take it "
                    "(or zero_grad() to drop it)"
                )
            record = self._applied
        elif self._pending is None and self._weighted is None:
            if losses is None:
                raise ValueError("step() needs the losses, or backward(losses) calls before it")
            if self.scaler is not None:
                kwargs.setdefault("scaler", self.scaler)
            shared = self.shared_params if self.shared_module is None else self.shared_module
            record = backward(losses, shared, self.method, **kwargs)
        else:
            if losses is not None:
                self.backward(losses, **kwargs)
            record = self.apply(check_finite=kwargs.get("check_finite", True))
        self._applied = None
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step on an overflow and adjusts the scale
            states = getattr(self.scaler, "_per_optimizer_states", None)
            if isinstance(states, dict) and id(self) in states:
                # scaler.unscale_(opt) on this wrapper (to clip): the record belongs to the inner
                # optimizer, which scaler.step sees; left here, it would unscale .grad twice.
                states[id(self.optimizer)] = states.pop(id(self))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        feed_after_step(self.method, closure)
        return record

    def end_epoch(self) -> None:
        """Tell an epoch-windowed method (DWA) that an epoch ended; a no-op for the others."""
        if self._weighted is not None:
            raise ValueError("end_epoch() in the middle of an accumulated step: step() first")
        end = getattr(self.method, "end_epoch", None)
        if callable(end):
            end()

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None or self._weighted is not None:
            warn_user(
                "MTLOptimizer.state_dict() in the middle of an accumulated step: the micro-batches accumulated "
                "since the last step are not saved (checkpoint after step())"
            )
        return {
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "method_type": _method_type(self.method),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"optimizer", "method"} - set(state)
        if missing:
            raise ValueError(f"MTLOptimizer state is missing {sorted(missing)}")
        # A stateless method's {} would load into any other: the saved type says whose it is.
        saved, own = state.get("method_type", _method_type(self.method)), _method_type(self.method)
        if saved != own:
            raise ValueError(f"this MTLOptimizer state was saved with {saved}; this MTLOptimizer uses {own}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self._pending = self._weighted = self._applied = None  # a loaded state starts a step

    def __repr__(self) -> str:
        return f"MTLOptimizer({type(self.optimizer).__name__}, method={self.method!r}, shared={len(self.shared_params)} tensors)"


def managed_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    """The ``id`` of every tensor the optimizer's parameter groups hold."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def check_closure(method: Method, closure: Callable[[], Sequence[Tensor] | Tensor] | None, example: str = "") -> None:
    """Refuse a method that learns from the losses after the step (FAMO) without a ``closure``."""
    if closure is None and getattr(method, "needs_closure", False):
        raise ValueError(
            f"{type(method).__name__} learns from the losses after the step: pass closure=... that recomputes "
            f"them on the same batch{example}"
        )


def feed_after_step(method: Method, closure: Callable[[], Sequence[Tensor] | Tensor] | None) -> None:
    """After the optimizer's step: the losses ``closure`` recomputes go to the method's ``after_step``."""
    if closure is not None and isinstance(method, LossWeighting):
        with torch.no_grad():
            new = closure()
        method.after_step(torch.stack(list(new)) if not isinstance(new, Tensor) else new)


@dataclass(frozen=True)
class _WeightedMicroBatches:
    """A linear loss weighting's micro-batches since the last step (:meth:`MTLOptimizer.backward`)."""

    losses: Tensor  #: (T,) float64, the losses summed over the micro-batches
    dtype: torch.dtype  #: the losses' own dtype
    weights: Tensor  #: (T,) the weights ``a`` every micro-batch was backpropagated with


class _LossWeights(LossWeighting):
    """``Σ_i a_i L_i`` for fixed ``a`` (carrying their graph to the method's parameters): one
    micro-batch of a linear loss weighting, backpropagated by :func:`mtgrad.backward`."""

    def __init__(self, name: str, weights: Tensor) -> None:
        self.name, self.weights = name, weights

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        if losses.shape != self.weights.shape:
            raise ValueError(f"{self.name} weighs {self.weights.shape[0]} tasks, got {tuple(losses.shape)} losses")
        return (self.weights * losses).sum(), self.weights.detach()


def _method_type(method: Method) -> str:
    """The method's type, with a wrapped method's inside: ``"Reuse(PCGrad)"``."""
    inner = getattr(method, "method", None)
    return type(method).__name__ + (f"({_method_type(inner)})" if isinstance(inner, Method) else "")
