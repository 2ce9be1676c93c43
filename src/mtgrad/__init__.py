"""mtgrad: exact gradient surgery for multi-task learning in PyTorch.

>>> import torch, mtgrad
>>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
>>> mtgrad.aggregate(J, mtgrad.CAGrad(c=0.5))
tensor([0.1835, 1.2041, 1.2041])
"""

from . import diagnostics, methods, solvers
from .aggregate import aggregate
from .backward import BackwardResult, backward
from .grouped import grouped_backward, grouped_task_gradients
from .methods import (
    DWA,
    FAMO,
    GLS,
    IMTLG,
    IMTLL,
    MGDA,
    RLW,
    UW,
    AlignedMTL,
    CAGrad,
    CAGradFast,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    GradNorm,
    GradVac,
    Mean,
    NashMTL,
    PCGrad,
    Reuse,
    Sum,
    UPGrad,
    from_spec,
)
from .methods.base import JacobianAggregator, LossWeighting, Method, Weighting
from .optim import MTLOptimizer

__all__ = [
    "aggregate",
    "backward",
    "grouped_backward",
    "grouped_task_gradients",
    "BackwardResult",
    "MTLOptimizer",
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
    "from_spec",
    "methods",
    "solvers",
    "diagnostics",
]

__version__ = "0.1.0"
