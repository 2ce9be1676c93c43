"""Gradient-manipulation methods, each a :class:`Weighting` of the task-gradient Gramian."""

from __future__ import annotations

from typing import Any, Callable

from .base import Weighting
from .cagrad import CAGrad
from .linear import Mean, Sum
from .mgda import MGDA
from .pcgrad import PCGrad

__all__ = ["Weighting", "Mean", "Sum", "MGDA", "PCGrad", "CAGrad", "REGISTRY", "from_spec"]

#: Spec name → constructor. ``gd`` is the papers' name for plain descent on the average loss.
REGISTRY: dict[str, Callable[..., Weighting]] = {
    "gd": Mean,
    "mean": Mean,
    "sum": Sum,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
}


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def from_spec(spec: str, **extra: Any) -> Weighting:
    """Build a method from a spec such as ``"cagrad:c=0.5,rescale=2"`` or ``"pcgrad"``.

    ``extra`` keyword arguments (e.g. ``generator=``) are passed to the constructor of methods
    that accept them and ignored by the others.
    """
    name, _, args = spec.strip().partition(":")
    key = name.strip().lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown method {name!r} in spec {spec!r}; known: {', '.join(sorted(REGISTRY))}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in args.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"method option {item!r} in spec {spec!r} is not of the form key=value")
        kwargs[k.strip()] = _parse_value(v.strip())
    factory = REGISTRY[key]
    import inspect

    accepted = inspect.signature(factory).parameters
    kwargs.update({k: v for k, v in extra.items() if k in accepted})
    unknown = set(kwargs) - set(accepted)
    if unknown:
        raise ValueError(f"{name} does not take option(s) {sorted(unknown)}; it takes {sorted(accepted)}")
    return factory(**kwargs)
