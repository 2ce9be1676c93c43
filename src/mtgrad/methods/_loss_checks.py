"""Input checks shared by the methods, and state helpers of the loss weightings (UW, IMTL-L, DWA,
GLS, GradNorm, FAMO)."""

from __future__ import annotations


import torch
from torch import Tensor


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool; a ``TypeError`` for anything else (``"no"``, ``0``, ``2``), which
    Python would otherwise take as true or false without a word."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_num_tasks(num_tasks: object) -> int:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int):
        raise TypeError(f"num_tasks must be an int, got {type(num_tasks).__name__}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
    return num_tasks


def check_finite_float(value: object, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def make_parameter(
    num_tasks: int, init: float, device: torch.device | str | None, dtype: torch.dtype | None, method: str
) -> Tensor:
    """A learnable (T,) leaf filled with ``init``."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{method}: dtype must be a floating-point torch.dtype, got {dtype!r}")
    return torch.full((num_tasks,), init, device=device, dtype=dtype, requires_grad=True)


def check_losses(
    losses: object,
    num_tasks: int | None,
    method: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    at_least: Tensor | None = None,
    device: torch.device | None = None,
    values: bool = True,
) -> Tensor:
    """Validate the (T,) loss vector a loss weighting receives; returns it unchanged.

    Shape, dtype and device are checked from metadata, for free. The values (finite; ``> 0``
    with ``positive``; ``≥ 0`` with ``nonnegative``; ``≥ at_least`` elementwise) cost one read
    of T booleans on the host, which synchronises with an accelerator; ``values=False`` skips
    them (each method passes its ``check_values`` attribute). Errors name the method and task.
    """
    if not isinstance(losses, Tensor):
        raise TypeError(f"{method}: losses must be a torch.Tensor of shape (T,), got {type(losses).__name__}")
    if losses.dim() != 1:
        raise ValueError(f"{method}: losses must be 1-D (one loss per task), got shape {tuple(losses.shape)}")
    if num_tasks is not None and losses.shape[0] != num_tasks:
        raise ValueError(f"{method} was built for {num_tasks} tasks but got {losses.shape[0]} losses")
    if losses.shape[0] == 0:
        raise ValueError(f"{method}: losses is empty; give one loss per task")
    if not losses.is_floating_point():
        raise TypeError(f"{method}: losses must be floating point, got dtype {losses.dtype}")
    if device is not None and losses.device != device:
        raise ValueError(
            f"{method}: losses are on {losses.device} but the method's state is on {device}; "
            "construct it with device=... matching the losses"
        )
    if not values:
        return losses
    v_all = losses.detach()
    bad = ~torch.isfinite(v_all)
    floor = None
    if at_least is not None:
        floor = at_least.to(v_all.dtype)
        bad = bad | ~(v_all >= floor)
    elif positive:
        bad = bad | ~(v_all > 0)
    elif nonnegative:
        bad = bad | ~(v_all >= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        v = float(v_all[i])
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{method}: losses[{i}] is {v}; every loss must be finite")
        if floor is not None:
            raise ValueError(
                f"{method}: losses[{i}] = {v} is below min_losses[{i}] = {float(floor[i])} "
                "(the method takes log(L_i − L_i^min + 1e-8))"
            )
        if positive:
            raise ValueError(f"{method} needs positive losses (it takes logarithms or ratios); losses[{i}] = {v}")
        raise ValueError(f"{method} needs non-negative losses; losses[{i}] = {v}")
    return losses
