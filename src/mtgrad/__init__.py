"""mtgrad: exact gradient surgery for multi-task learning in PyTorch.

>>> import torch, mtgrad
>>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
>>> mtgrad.aggregate(J, mtgrad.CAGrad(c=0.5))
tensor([0.1835, 1.2041, 1.2041])
"""

from . import diagnostics, methods, solvers
from ._version import __version__ as __version__
from .accumulate import TaskGradients, accumulate_task_gradients, apply_task_gradients
from .aggregate import aggregate
from .autogram import GramianEngine
from .backward import BackwardResult, backward
from .grouped import grouped_backward, grouped_task_gradients
from .methods import *  # noqa: F403  (every method class, the kinds' base classes, from_spec)
from .methods import __all__ as _METHODS
from .optim import MTLOptimizer

__all__ = [
    "aggregate",
    "accumulate_task_gradients",
    "apply_task_gradients",
    "TaskGradients",
    "backward",
    "BackwardResult",
    "GramianEngine",
    "grouped_backward",
    "grouped_task_gradients",
    "MTLOptimizer",
    "methods",
    "solvers",
    "diagnostics",
    *_METHODS,
]

