"""The method spec grammar, the one the API and every command use.

A spec is ``name`` or ``name:key=value,key=value`` (values: ints, floats, ``true``/``false``,
else strings), e.g. ``"cagrad:c=0.5,rescale=2"``; ``"reuse:method=pcgrad,every=4"`` wraps a
method in :class:`Reuse`. A *list* of specs separates them with ``;``, or with ``,`` where the
next token is a method name (a token with ``=`` and no ``:`` continues the previous spec), so
``"gd,mgda,cagrad:c=0.5,rescale=2"`` is three specs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from .alignedmtl import AlignedMTL
from .base import Method, Weighting
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

__all__ = ["REGISTRY", "check_distinct", "from_spec", "split_specs"]

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


def _parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of one spec, its options parsed (:func:`_parse_value`)."""
    name, _, args = spec.strip().partition(":")
    kwargs: dict[str, Any] = {}
    for item in (part.strip() for part in args.split(",")) if args.strip() else ():
        if not item:
            raise ValueError(f"spec {spec!r} has an empty option: options are separated by one ','")
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"method option {item!r} in spec {spec!r} is not of the form key=value")
        if k.strip() in kwargs:
            raise ValueError(f"option {k.strip()!r} is given twice in spec {spec!r}")
        kwargs[k.strip()] = _parse_value(v.strip())
    return name, kwargs


def from_spec(spec: str, **extra: Any) -> Method:
    """Build a method from a spec such as ``"cagrad:c=0.5,rescale=2"`` or ``"pcgrad"``.

    ``"reuse:method=cagrad,every=4,warmup=10,c=0.5"`` is :class:`Reuse` of the named method:
    ``every`` and ``warmup`` are Reuse's, every other option the inner method's.

    ``extra`` keyword arguments (e.g. ``generator=``, ``num_tasks=``, ``last_shared=``) are passed
    to the constructor of methods that accept them and ignored by the others.
    """
    if not isinstance(spec, str):
        kind = "a Method instance, which is used as it is, not parsed" if isinstance(spec, Method) else type(spec).__name__
        raise TypeError(f"from_spec takes a spec string such as 'pcgrad' or 'cagrad:c=0.5', got {kind}")
    if ";" in spec:
        raise ValueError(
            f"spec {spec!r} holds ';', which separates specs in a list: options of one method are "
            "separated by ',' (e.g. 'cagrad:c=0.5,rescale=2'); split a list with mtgrad.split_specs"
        )
    name, kwargs = _parse(spec)
    if name.strip().lower() == "reuse":
        inner = kwargs.pop("method", None)
        if not isinstance(inner, str):
            raise ValueError(f"spec {spec!r}: reuse needs method=<name>, e.g. 'reuse:method=pcgrad,every=4'")
        schedule: dict[str, Any] = {k: kwargs.pop(k) for k in ("every", "warmup") if k in kwargs}
        kind = method_class(inner)
        if kind is not None and not issubclass(kind, Weighting):
            raise ValueError(
                f"spec {spec!r}: reuse repeats a Gramian weighting's weights; {kind.__name__} is not one"
            )
        reused = _build(inner, kwargs, extra, spec)
        return _construct(Reuse, {"method": reused, **schedule}, spec)
    return _build(name, kwargs, extra, spec)


def method_class(spec: str) -> type | None:
    """The class a spec builds (:class:`Reuse` for ``reuse:…``), or ``None`` for an unknown name:
    what a caller that takes only some kinds of method checks before building one (whose
    constructor may need arguments that caller never has)."""
    name = spec.strip().partition(":")[0].strip().lower()
    factory = Reuse if name == "reuse" else REGISTRY.get(name)
    return factory if isinstance(factory, type) else None


def check_distinct(
    specs: Sequence[str], given: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None
) -> None:
    """Raise ``ValueError`` if two specs of a list build the same method: the same class with the
    same options once defaults are filled in (``gd`` and ``mean``, ``pcgrad`` and
    ``pcgrad:reduction=sum``), which a comparison would train twice under two names. ``given``
    names the specs in the message (the user's spelling, where ``specs`` had defaults filled in);
    ``extra`` holds the options the caller passes to :func:`from_spec` (``num_tasks=3`` makes
    ``uw`` and ``uw:num_tasks=3`` one method). Call it on specs known to build: a spec's own error
    says more than this one."""
    given = specs if given is None else given
    # Only plain values can also be written in a spec; a generator or a module never is.
    supplied = {k: v for k, v in (extra or {}).items() if isinstance(v, (bool, int, float, str))}
    seen: dict[tuple, str] = {}
    for spec, shown in zip(specs, given, strict=True):
        key = _identity(spec, supplied)
        if key in seen:
            raise ValueError(f"specs {seen[key]!r} and {shown!r} are the same method: give it once")
        seen[key] = shown


def _identity(spec: str, supplied: Mapping[str, Any]) -> tuple:
    """What a spec builds, as a hashable value: its class and its non-default options, the
    caller's ``supplied`` ones included (an unknown name or a malformed spec stands for itself;
    building it reports the error)."""
    if not isinstance(spec, str):
        return (id(spec),)
    try:
        name, options = _parse(spec)
    except ValueError:
        return (spec,)
    if name.strip().lower() == "reuse":
        inner = options.pop("method", None)
        schedule: dict[str, Any] = {k: options.pop(k) for k in ("every", "warmup") if k in options}
        inner_spec = f"{inner}:" + ",".join(f"{k}={v}" for k, v in options.items())
        return (Reuse, _non_default(Reuse, schedule), _identity(inner_spec, supplied))
    factory = REGISTRY.get(name.strip().lower())
    if factory is None:
        return (spec,)
    accepted = inspect.signature(factory).parameters
    options = {**{k: v for k, v in supplied.items() if k in accepted}, **options}
    return (factory, _non_default(factory, options))


def _non_default(factory: Callable[..., Any], options: dict[str, Any]) -> frozenset:
    parameters = inspect.signature(factory).parameters
    return frozenset(
        (k, _tagged(v)) for k, v in options.items()
        if k not in parameters or parameters[k].default is inspect.Parameter.empty
        or _tagged(parameters[k].default) != _tagged(v)
    )


def _tagged(value: Any) -> tuple[bool, Any]:
    """``(is-bool, value)``: c=1 and c=1.0 are one option value, true and 1 are not."""
    return isinstance(value, bool), value


def _build(name: str, kwargs: dict[str, Any], extra: dict[str, Any], spec: str) -> Method:
    key = name.strip().lower()
    if key not in REGISTRY:
        known = sorted([*REGISTRY, "reuse"])
        raise ValueError(f"unknown method {name!r} in spec {spec!r}{_did_you_mean(name, known)}; known: {', '.join(known)}")
    factory = REGISTRY[key]
    accepted = inspect.signature(factory).parameters
    for k, v in extra.items():
        if k in accepted and k in kwargs and kwargs[k] != v:
            if not isinstance(v, (bool, int, float, str)):  # a generator, a module: never a spec's
                raise ValueError(f"spec {spec!r} sets {k}, which the caller provides (a {type(v).__name__}): leave it out")
            raise ValueError(f"spec {spec!r} sets {k}={kwargs[k]!r}, and the caller passes {k}={v!r}: give it once")
        if k in accepted:
            kwargs[k] = v
    unknown = set(kwargs) - set(accepted)
    if unknown:
        hint = "".join(_did_you_mean(u, accepted) for u in sorted(unknown))
        raise ValueError(
            f"spec {spec!r}: {name} does not take option(s) {sorted(unknown)}{hint}; it takes {sorted(accepted)}"
        )
    required = [
        k for k, p in accepted.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in kwargs
    ]
    if required:
        given = ", ".join(f"{k}=..." for k in required)
        raise ValueError(
            f"spec {spec!r}: {name} needs {', '.join(required)}: pass mtgrad.from_spec({spec!r}, {given}) "
            "(the commands pass them for you)"
        )
    return _construct(factory, kwargs, spec)


def _construct(factory: Callable[..., Method], kwargs: dict[str, Any], spec: str) -> Method:
    """``factory(**kwargs)``, its refusal of a value prefixed with the spec it came from."""
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as error:
        raise type(error)(f"spec {spec!r}: {error}") from error


def split_specs(text: str) -> list[str]:
    """Split a list of method specs (module docstring); raises on an empty list.

    ``"gd,mgda,cagrad:c=0.5,rescale=2,pcgrad"`` → ``["gd", "mgda", "cagrad:c=0.5,rescale=2", "pcgrad"]``;
    ``"cagrad:c=0.2;cagrad:c=0.8"`` → ``["cagrad:c=0.2", "cagrad:c=0.8"]``; an empty item
    (``"gd;;mgda"``, ``"gd,"``, ``"cagrad:c=1,"``) is refused.
    """
    specs: list[str] = []
    for part in text.split(";"):
        current: list[str] = []
        for token in part.split(","):
            token = token.strip()
            if not token:
                if text.strip():  # 'gd;;mgda', 'gd,,mgda', 'cagrad:c=1,': a slip, not silently dropped
                    raise ValueError(
                        f"empty item in {text!r}: specs, and a spec's options, are separated by one ',' (or specs by ';')"
                    )
                continue
            if current and "=" in token and ":" not in token:
                current.append(token)
            else:
                if current:
                    specs.append(",".join(current))
                current = [token]
        if current:
            specs.append(",".join(current))
    if not specs:
        raise ValueError(f"no method spec found in {text!r}")
    return specs


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
