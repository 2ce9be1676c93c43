"""Method state: the one convention every stateful method's ``state_dict``/``load_state_dict`` keeps.

* ``state_dict()`` returns plain data: tensors (fresh copies), ints, ``None``, and a random
  generator's state under the key ``"generator"``; a stateless method returns ``{}``.
* ``load_state_dict(state)`` checks the keys exactly (:func:`check_state_keys`), the shape of each
  tensor against the method's own (:func:`state_tensor`), and moves tensors to the device of
  the tensor they replace, as ``torch.optim`` does; a state tensor without a counterpart yet (a
  method that has not run) is moved to the Gramian's device at its next use.
* Methods are plain objects, not ``nn.Module``s (see docs/design.md, "Method state").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_state_keys", "state_tensor", "load_into", "generator_state", "load_generator_state"]


def check_state_keys(state: dict[str, Any], keys: set[str], method: str) -> None:
    if set(state) ^ keys == {"generator"}:  # the one difference: who owns the random stream
        if "generator" in state:
            raise ValueError(
                f"this {method} state was saved from a {method} with its own generator, and this one draws "
                f"from torch's global generator: build it with generator=torch.Generator() to restore the stream"
            )
        raise ValueError(
            f"this {method} state holds no generator state (it was saved from a {method} on torch's global "
            "generator, which torch.get_rng_state() saves), and this one has its own generator"
        )
    if set(state) != keys:
        unexpected, missing = sorted(set(state) - keys), sorted(keys - set(state))
        detail = "; ".join(
            part for part in (unexpected and f"unexpected {unexpected}", missing and f"missing {missing}") if part
        )
        raise ValueError(f"{method} state must have exactly the keys {sorted(keys)}, got {sorted(state)} ({detail})")


def state_tensor(state: dict[str, Any], key: str, like: Tensor, method: str, cast: bool = True) -> Tensor | None:
    """``state[key]`` as a fresh tensor on ``like``'s device (and dtype, with ``cast``), of its shape."""
    value = state[key]
    if value is None:
        return None
    value = torch.as_tensor(value)
    if value.shape != like.shape:
        raise ValueError(f"{method} state {key!r} has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
    return value.detach().to(device=like.device, dtype=like.dtype if cast else value.dtype).clone()


def load_into(target: Tensor, state: dict[str, Any], key: str, method: str) -> None:
    """Copy ``state[key]`` into ``target`` in place (the tensor object an optimizer holds stays)."""
    check_state_keys(state, {key}, method)
    value = state_tensor(state, key, target, method)
    if value is None:
        raise ValueError(f"{method} state {key!r} is None")
    with torch.no_grad():
        target.copy_(value)


def generator_state(generator: torch.Generator | None) -> dict[str, Any]:
    """``{"generator": state}`` for a method that draws from ``generator``, ``{}`` without one."""
    return {} if generator is None else {"generator": generator.get_state()}


def load_generator_state(generator: torch.Generator | None, state: dict[str, Any], method: str) -> None:
    """Restore :func:`generator_state`'s part of ``state``; the caller checks the other keys."""
    if "generator" not in state:
        return
    if generator is None:
        raise ValueError(f"state holds a generator state but this {method} has no generator")
    value = state["generator"]
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise ValueError(f"{method} state 'generator' must be a torch.Generator state (a uint8 tensor), got {type(value).__name__}")
    generator.set_state(value.cpu() if generator.device.type == "cpu" else value)
