"""mtgrad: exact gradient surgery for multi-task learning in PyTorch.

>>> import torch, mtgrad
>>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
>>> mtgrad.aggregate(J, mtgrad.CAGrad(c=0.5))
tensor([0.1835, 1.2041, 1.2041])

The names below are imported on first use (PEP 562), so that ``import mtgrad`` — and with it
``mtgrad --help`` — does not pay for importing torch until something needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # what the lazy loader below provides, for type checkers and IDEs
    from . import diagnostics, methods, solvers  # noqa: F401
    from .accumulate import TaskGradients, accumulate_task_gradients, apply_task_gradients  # noqa: F401
    from .aggregate import aggregate  # noqa: F401
    from .autogram import GramianEngine  # noqa: F401
    from .backward import BackwardResult, backward  # noqa: F401
    from .grouped import grouped_backward, grouped_task_gradients  # noqa: F401
    from .methods import *  # noqa: F401, F403
    from .optim import MTLOptimizer  # noqa: F401

# Public name → the submodule that defines it; every other public name is a submodule or a
# method's (mtgrad.methods).
_HOMES = {
    "aggregate": "aggregate",
    "accumulate_task_gradients": "accumulate",
    "apply_task_gradients": "accumulate",
    "TaskGradients": "accumulate",
    "backward": "backward",
    "BackwardResult": "backward",
    "GramianEngine": "autogram",
    "grouped_backward": "grouped",
    "grouped_task_gradients": "grouped",
    "MTLOptimizer": "optim",
}
_SUBMODULES = ("methods", "solvers", "diagnostics")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    elif name == "__all__":
        value = [*_HOMES, *_SUBMODULES, *importlib.import_module(f"{__name__}.methods").__all__]
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # e.g. mtgrad.distributed, mtgrad.rl
    else:
        methods = importlib.import_module(f"{__name__}.methods")
        if name not in methods.__all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(methods, name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})


def _function_named_like_its_module(name: str) -> property:
    # Importing ``mtgrad.<name>`` makes the import system set the package's attribute ``<name>``
    # to the submodule, whenever and by whomever it is first imported; the eager ``__init__``
    # rebound it to the function right after. Lazily, a property on the package's class (which
    # wins over the module's ``__dict__``) keeps ``mtgrad.<name>`` the function; a value set by
    # anyone else (a test's monkeypatch) is kept.
    def get(module: types.ModuleType) -> Any:
        patched = module.__dict__.get(f"_set_{name}")
        return patched if patched is not None else getattr(importlib.import_module(f"{__name__}.{name}"), name)

    def set_(module: types.ModuleType, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}"):
            module.__dict__[f"_set_{name}"] = value

    return property(get, set_)


class _Package(types.ModuleType):
    aggregate = _function_named_like_its_module("aggregate")
    backward = _function_named_like_its_module("backward")


sys.modules[__name__].__class__ = _Package
