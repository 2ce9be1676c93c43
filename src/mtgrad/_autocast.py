"""mtgrad's own arithmetic runs outside the caller's autocast region.

``torch.autocast`` casts float32 operands of matrix products to bf16/fp16. A training step that
calls mtgrad inside its autocast block (Lightning's ``"bf16-mixed"`` runs ``training_step``
under one) would otherwise combine ``Σ_i w_i g_i`` and form Gramian pieces in half precision:
the update came out ~2e-3 relative off the same call outside autocast. The model's forward is
the caller's and keeps autocast; the losses' backward is unaffected either way (autograd runs a
backward op in the dtype its forward used).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import torch

__all__ = ["autocast_off", "outside_autocast"]

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _device_types() -> tuple[str, ...]:
    kinds = ["cpu", "cuda", "xpu", "mps", "hpu", torch._C._get_privateuse1_backend_name()]
    return tuple(kind for kind in dict.fromkeys(kinds) if torch.amp.is_autocast_available(kind))


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Disable autocast, for the body, on every device type where it is enabled."""
    with _disabled([kind for kind in _device_types() if torch.is_autocast_enabled(kind)]):
        yield


@contextlib.contextmanager
def _disabled(kinds: list[str]) -> Iterator[None]:
    # Nested ``with`` statements rather than an ExitStack: dynamo traces these (fullgraph too).
    if not kinds:
        yield
        return
    with torch.autocast(kinds[0], enabled=False), _disabled(kinds[1:]):
        yield


def outside_autocast(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run under :func:`autocast_off`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper
