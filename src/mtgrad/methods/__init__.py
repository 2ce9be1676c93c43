"""Multi-task methods: Gramian weightings, Jacobian aggregators and loss weightings."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .alignedmtl import AlignedMTL
from .base import JacobianAggregator, LossWeighting, Method, Weighting
from .cagrad import CAGrad
from .conflict_free import ConFIG
from .dualproj import DualProj
from .dwa import DWA
from .fairgrad import FairGrad
from .famo import FAMO
from .gls import GLS
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtlg import IMTLG
from .imtll import IMTLL
from .linear import Mean, Sum
from .mgda import MGDA
from .nashmtl import NashMTL
from .pcgrad import PCGrad
from .rlw import RLW
from .schedules import CAGradFast, Reuse
from .upgrad import UPGrad
from .uw import UW

__all__ = [
    "Method",
    "Weighting",
    "JacobianAggregator",
    "LossWeighting",
    "Mean",
    "Sum",
    "MGDA",
    "PCGrad",
    "CAGrad",
    "CAGradFast",
    "Reuse",
    "IMTLG",
    "GradVac",
    "AlignedMTL",
    "RLW",
    "GradDrop",
    "UPGrad",
    "DualProj",
    "NashMTL",
    "FairGrad",
    "ConFIG",
    "UW",
    "DWA",
    "GradNorm",
    "FAMO",
    "GLS",
    "IMTLL",
    "REGISTRY",
    "from_spec",
]

#: Spec name → constructor. ``gd`` is the papers' name for plain descent on the average loss.
REGISTRY: dict[str, Callable[..., Method]] = {
    "gd": Mean,
    "mean": Mean,
    "sum": Sum,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "cagrad_fast": CAGradFast,
    "imtlg": IMTLG,
    "gradvac": GradVac,
    "alignedmtl": AlignedMTL,
    "rlw": RLW,
    "graddrop": GradDrop,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "nashmtl": NashMTL,
    "fairgrad": FairGrad,
    "config": ConFIG,
    "uw": UW,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "famo": FAMO,
    "gls": GLS,
    "imtll": IMTLL,
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


def from_spec(spec: str, **extra: Any) -> Method:
    """Build a method from a spec such as ``"cagrad:c=0.5,rescale=2"`` or ``"pcgrad"``.

    ``"reuse:method=cagrad,every=4,warmup=10,c=0.5"`` is :class:`Reuse` of the named method:
    ``every`` and ``warmup`` are Reuse's, every other option the inner method's.

    ``extra`` keyword arguments (e.g. ``generator=``, ``num_tasks=``, ``last_shared=``) are passed
    to the constructor of methods that accept them and ignored by the others.
    """
    name, _, args = spec.strip().partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in args.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"method option {item!r} in spec {spec!r} is not of the form key=value")
        kwargs[k.strip()] = _parse_value(v.strip())
    if name.strip().lower() == "reuse":
        inner = kwargs.pop("method", None)
        if not isinstance(inner, str):
            raise ValueError(f"spec {spec!r}: reuse needs method=<name>, e.g. 'reuse:method=pcgrad,every=4'")
        schedule = {k: kwargs.pop(k) for k in ("every", "warmup") if k in kwargs}
        return Reuse(_build(inner, kwargs, extra, spec), **schedule)
    return _build(name, kwargs, extra, spec)


def _build(name: str, kwargs: dict[str, Any], extra: dict[str, Any], spec: str) -> Method:
    key = name.strip().lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown method {name!r} in spec {spec!r}; known: {', '.join(sorted([*REGISTRY, 'reuse']))}")
    factory = REGISTRY[key]
    accepted = inspect.signature(factory).parameters
    kwargs.update({k: v for k, v in extra.items() if k in accepted})
    unknown = set(kwargs) - set(accepted)
    if unknown:
        raise ValueError(f"{name} does not take option(s) {sorted(unknown)}; it takes {sorted(accepted)}")
    return factory(**kwargs)
