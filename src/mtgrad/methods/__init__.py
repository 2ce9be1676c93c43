"""Multi-task methods: Gramian weightings, Jacobian aggregators and loss weightings."""

from __future__ import annotations


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
    "split_specs",
]
from .spec import REGISTRY, from_spec, split_specs
