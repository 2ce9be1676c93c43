"""mtgrad: exact gradient surgery for multi-task learning in PyTorch.

>>> import torch, mtgrad
>>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
>>> mtgrad.aggregate(J, mtgrad.CAGrad(c=0.5))
tensor([0.1835, 1.2041, 1.2041])

The names below are imported on first use (PEP 562), so that ``import mtgrad`` — and with it
``mtgrad --help`` — does not pay for importing torch until something needs it. Type checkers see
ordinary imports (the ``TYPE_CHECKING`` block).
"""

# ruff: noqa: F405  (the method names in __all__ come from the star import under TYPE_CHECKING)
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # what the lazy loader below provides, as explicit re-exports
    from . import diagnostics as diagnostics
    from . import methods as methods
    from . import solvers as solvers
    from .accumulate import TaskGradients as TaskGradients
    from .accumulate import accumulate_task_gradients as accumulate_task_gradients
    from .accumulate import apply_task_gradients as apply_task_gradients
    from .aggregate import aggregate as aggregate
    from .autogram import GramianEngine as GramianEngine
    from .backward import BackwardResult as BackwardResult
    from .backward import backward as backward
    from .grouped import grouped_backward as grouped_backward
    from .grouped import grouped_task_gradients as grouped_task_gradients
    from .methods import *  # noqa: F401, F403
    from ._warnings import MtgradWarning as MtgradWarning
    from .optim import MTLOptimizer as MTLOptimizer

# Written out (not computed) so that type checkers and `from mtgrad import *` know it without
# importing torch; tests/test_package.py checks it against mtgrad.methods.__all__.
__all__ = [
    "aggregate", "accumulate_task_gradients", "apply_task_gradients", "TaskGradients", "backward",
    "BackwardResult", "GramianEngine", "grouped_backward", "grouped_task_gradients", "MTLOptimizer",
    "MtgradWarning", "methods", "solvers", "diagnostics",
    # mtgrad.methods.__all__
    "Method", "Weighting", "JacobianAggregator", "LossWeighting", "Mean", "Sum", "MGDA", "PCGrad", "CAGrad",
    "CAGradFast", "Reuse", "IMTLG", "GradVac", "AlignedMTL", "RLW", "GradDrop", "UPGrad", "DualProj", "NashMTL",
    "FairGrad", "ConFIG", "UW", "DWA", "GradNorm", "FAMO", "GLS", "IMTLL", "REGISTRY", "from_spec", "split_specs",
]

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
    "MtgradWarning": "_warnings",
}
_SUBMODULES = ("methods", "solvers", "diagnostics")

if not TYPE_CHECKING:  # a module __getattr__ would make every misspelt name type-check as Any

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # e.g. hasattr(mtgrad, "__wrapped__"): no reason to import torch
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        if name in _HOMES:
            value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")  # e.g. mtgrad.distributed, mtgrad.rl
        elif name in __all__:
            value = getattr(importlib.import_module(f"{__name__}.methods"), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # later lookups are plain attribute reads
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _function_named_like_its_module(name: str) -> property:
    # Importing ``mtgrad.<name>`` makes the import system set the package's attribute ``<name>``
    # to the submodule, whenever and by whomever it is first imported; the eager ``__init__``
    # rebound it to the function right after. Lazily, a property on the package's class (which
    # wins over the module's ``__dict__``) keeps ``mtgrad.<name>`` the function; a value set by
    # anyone else (monkeypatch, mock.patch) is kept until deleted.
    key = f"_set_{name}"

    def get(module: types.ModuleType) -> Any:
        patched = module.__dict__.get(key)
        return patched if patched is not None else getattr(importlib.import_module(f"{__name__}.{name}"), name)

    def set_(module: types.ModuleType, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}"):
            module.__dict__[key] = value

    def delete(module: types.ModuleType) -> None:
        module.__dict__.pop(key, None)

    return property(get, set_, delete)


class _Package(types.ModuleType):
    aggregate = _function_named_like_its_module("aggregate")
    backward = _function_named_like_its_module("backward")


sys.modules[__name__].__class__ = _Package
