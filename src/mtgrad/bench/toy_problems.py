"""The toy problems of both papers (their losses, analytical gradients, minimisers, success tests);
see :mod:`mtgrad.bench.toy` for the runner and the papers' settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .settings import CAGRAD_METHODS, DEFAULT_PCGRAD_STEPS, DEFAULT_STEPS, PAPER_STEPS, PCGRAD_METHODS

__all__ = [
    "LOWER",
    "PARETO_Y",
    "CAGRAD_MINIMISER",
    "DEFAULT_STEPS",
    "DEFAULT_PCGRAD_STEPS",
    "PAPER_STEPS",
    "ToyProblem",
    "cagrad_toy_losses",
    "cagrad_toy_grads",
    "pcgrad_toy_losses",
    "pcgrad_toy_grads",
    "CAGRAD_STARTS",
    "CAGRAD_METHODS",
    "PCGRAD_STARTS",
    "PCGRAD_METHODS",
    "PROBLEMS",
]

LOWER = 5e-6
"""Lower clamp inside the logarithms of both toys (``LOWER = 0.000005`` in the official code)."""

PARETO_Y = -8.3552
"""θ2 of the Pareto segment and of the L0 minimiser as drawn by the official CAGrad code."""

CAGRAD_MINIMISER = (0.0, PARETO_Y)
"""Minimiser of L0 = (L1 + L2)/2 of the CAGrad toy (the star in CAGrad Figs. 1 and 3)."""

CAGRAD_STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (-8.5, 5.0),
    (0.0, 0.0),
    (9.0, 9.0),
    (10.0, -8.0),
)
"""The five initial points of CAGrad Fig. 3 as the paper lists them (Sec. 5.1). The official
``toy.py`` (Fig. 1) starts from (-8.5, -5) instead of (-8.5, 5). From (-8.5, 5) plain GD stays in
the log valley like from (-8.5, 7.5) and (9, 9), so GD is stuck on 3 of these 5 starts; from
(-8.5, -5) it converges, which gives the paper's "2 out of 5"."""

PCGRAD_STARTS: tuple[tuple[float, float], ...] = ((0.5, -3.0),)
"""The initial point of PCGrad Fig. 1 (App. D)."""

_REACH_TOL = 0.05
_PCGRAD_RESIDUAL_TOL = 1e-2

# ---------------------------------------------------------------------------------------------
# The problems: losses and analytic per-task gradients
# ---------------------------------------------------------------------------------------------

_CONSTS: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}


def _consts(x: Tensor) -> dict[str, Tensor]:
    """Constant tensors for the gradient formulas, cached per dtype/device.

    Python-scalar operands cost about twice as much per op as tensor operands on small CPU
    tensors, and broadcasting θ1 or θ2 into both task columns is cheapest as a 2×2 matmul, so
    the formulas below are written with these matrices and 0-dim constants.
    """
    key = (x.dtype, x.device)
    c = _CONSTS.get(key)
    if c is None:

        def t(v) -> Tensor:
            return torch.tensor(v, dtype=x.dtype, device=x.device)

        c = {
            "zero": t(0.0),
            "one": t(1.0),
            "half": t(0.5),
            "six": t(6.0),
            "lower": t(LOWER),
            "pm": t([1.0, -1.0]),
            # θ @ M: columns (θ2, -θ2, θ2/2, θ2/2) -> tanh gives (t, -t) and (h, h)
            "ca_z": t([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.5]]),
            "ca_u": t([[-0.5, -0.5], [0.0, 0.0]]),  # -θ1/2 in both columns
            "ca_shift": t([-3.5, 3.5]),
            "ca_d": t([[1.0, 1.0], [0.0, 0.0]]),  # θ1 in both columns
            "ca_centre": t([-7.0, 7.0]),  # d_i = θ1 ∓ 7
            "ca_b": t([[0.0, 0.0], [1.0, 1.0]]),  # θ2 in both columns
            "ca_b8": t([8.0, 8.0]),
            "ca_m20": t([-20.0, -20.0]),
            "ca_mhalf": t(-0.5),
            # θ @ M: columns (θ2, -θ2) -> tanh gives (t, -t)
            "pc_z": t([[0.0, 0.0], [1.0, -1.0]]),
            "pc_u": t([[0.5, 0.5], [0.0, 0.0]]),
            "pc_shift": t([0.0, 2.0]),
            "pc_k0": t([10.0, 12.5]),  # 0.5 * (20, 25)
            "pc_k1": t([20.0, 25.0]),
        }
        _CONSTS[key] = c
    return c


def _check_theta(theta: Tensor) -> None:
    if theta.dim() != 2 or theta.shape[-1] != 2:
        raise ValueError(f"theta must have shape (B, 2), got {tuple(theta.shape)}")


def cagrad_toy_losses(theta: Tensor) -> Tensor:
    """Per-task losses ``(L1, L2)`` of the CAGrad toy, shape ``(B, 2)``, for θ of shape ``(B, 2)``.

    Written exactly as ``Toy.batch_forward`` of the official ``toy.py`` (differentiable).
    """
    _check_theta(theta)
    x1, x2 = theta[:, 0], theta[:, 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    return torch.stack((f1 * c1 + f1_sq * c2, f2 * c1 + f2_sq * c2), dim=-1)


def cagrad_toy_grads(theta: Tensor) -> Tensor:
    """Per-task gradients of the CAGrad toy, shape ``(B, 2 tasks, 2 params)``.

    With t = tanh θ2, h = tanh(θ2/2), u_i = -θ1/2 ∓ 3.5 ± t (the log arguments), r_i = 1/u_i
    (0 where |u_i| < 5e-6, i.e. where the log is clamped), d_i = θ1 ∓ 7 and
    g_i = d_i²/10 + (θ2 + 8)²/100 - 20::

        ∂L_i/∂θ1 = -c1 r_i / 2 + c2 d_i / 5
        ∂L_i/∂θ2 = c1' f_i ± c1 (1 - t²) r_i + c2' g_i + c2 (θ2 + 8)/50

    with c1' = (1 - h²)/2 where h ≥ 0 (else 0) and c2' = -(1 - h²)/2 where h ≤ 0 (else 0).
    This equals autograd through :func:`cagrad_toy_losses`, including its conventions at the
    kinks: ``clamp`` passes the gradient where the input equals the bound (so at θ2 = 0 both gates
    have derivative ±1/2) and ``abs`` has derivative 0 at 0.
    """
    _check_theta(theta)
    k = _consts(theta)
    tz = torch.tanh(theta @ k["ca_z"]).view(-1, 2, 2)
    tpm, hh = tz.unbind(1)  # (t, -t) and (h, h), each (B, 2)
    # log terms f_i = log(max(|u_i|, 5e-6)) + 6 and r_i = d f_i / d u_i
    u = torch.addmm(k["ca_shift"], theta, k["ca_u"]).add_(tpm)
    au = u.abs()
    f = torch.maximum(au, k["lower"]).log_().add_(k["six"])
    r = torch.where(au >= k["lower"], u.reciprocal(), k["zero"])
    # gates c1 = max(h, 0), c2 = max(-h, 0) and their derivatives
    c1 = torch.relu(hh)
    c2 = c1 - hh
    dh = torch.addcmul(k["half"], hh, hh, value=-0.5)
    dc1 = dh * (hh >= k["zero"])
    mdc2 = dh * (hh <= k["zero"])  # = -c2'
    # quadratic branch
    d = torch.addmm(k["ca_centre"], theta, k["ca_d"])
    bb = torch.addmm(k["ca_b8"], theta, k["ca_b"])
    sq = torch.addcmul(k["ca_m20"], d, d, value=0.1).addcmul_(bb, bb, value=0.01)
    spm = torch.addcmul(k["one"], tpm, tpm, value=-1.0).mul_(k["pm"])  # ±(1 - t²)
    cr = c1 * r
    j0 = torch.addcmul(cr * k["ca_mhalf"], c2, d, value=0.2)
    j1 = (dc1 * f).addcmul_(spm, cr).addcmul_(mdc2, sq, value=-1.0)
    j1.addcmul_(c2, bb, value=0.02)
    return torch.stack((j0, j1), dim=-1)


def pcgrad_toy_losses(theta: Tensor) -> Tensor:
    """Per-task losses ``(L1, L2)`` of the PCGrad toy, shape ``(B, 2)`` (differentiable)."""
    _check_theta(theta)
    x1, x2 = theta[:, 0], theta[:, 1]
    l1 = 20 * torch.clamp((0.5 * x1 + torch.tanh(x2)).abs(), LOWER).log()
    l2 = 25 * torch.clamp((0.5 * x1 - torch.tanh(x2) + 2).abs(), LOWER).log()
    return torch.stack((l1, l2), dim=-1)


def pcgrad_toy_grads(theta: Tensor) -> Tensor:
    """Per-task gradients of the PCGrad toy, shape ``(B, 2 tasks, 2 params)``.

    With u_1 = θ1/2 + tanh θ2, u_2 = θ1/2 - tanh θ2 + 2 and r_i = 1/u_i (0 where the log is
    clamped): ∂L_i/∂θ1 = (20, 25)_i r_i / 2 and ∂L_i/∂θ2 = ±(20, 25)_i (1 - tanh² θ2) r_i.
    Equal to autograd through :func:`pcgrad_toy_losses`.
    """
    _check_theta(theta)
    k = _consts(theta)
    tpm = torch.tanh(theta @ k["pc_z"])  # (t, -t)
    u = torch.addmm(k["pc_shift"], theta, k["pc_u"]).add_(tpm)
    r = torch.where(u.abs() >= k["lower"], u.reciprocal(), k["zero"])
    spm = torch.addcmul(k["one"], tpm, tpm, value=-1.0).mul_(k["pm"])  # ±(1 - t²)
    j0 = r * k["pc_k0"]
    j1 = (r * spm).mul_(k["pc_k1"])
    return torch.stack((j0, j1), dim=-1)


def _cagrad_reached(theta: Tensor) -> Tensor:
    target = theta.new_tensor(CAGRAD_MINIMISER)
    return (theta - target).norm(dim=-1) < _REACH_TOL


def _pcgrad_residuals(theta: Tensor) -> Tensor:
    x1, x2 = theta[..., 0], theta[..., 1]
    return torch.stack(
        ((0.5 * x1 + torch.tanh(x2)).abs(), (0.5 * x1 - torch.tanh(x2) + 2).abs()), dim=-1
    )


def _pcgrad_reached(theta: Tensor) -> Tensor:
    return _pcgrad_residuals(theta).amax(dim=-1) < _PCGRAD_RESIDUAL_TOL


def _cagrad_columns(theta: Tensor) -> dict[str, Tensor]:
    return {"dist_to_minimiser": (theta - theta.new_tensor(CAGRAD_MINIMISER)).norm(dim=-1)}


def _pcgrad_columns(theta: Tensor) -> dict[str, Tensor]:
    res = _pcgrad_residuals(theta)
    return {"residual_1": res[..., 0], "residual_2": res[..., 1]}


@dataclass(frozen=True)
class ToyProblem:
    """One toy problem: its losses, gradients, objective and the paper's set-up."""

    name: str
    title: str
    losses: Callable[[Tensor], Tensor]
    grads: Callable[[Tensor], Tensor]
    objective: str  # "mean" or "sum": what "gd" means here
    starts: tuple[tuple[float, float], ...]
    methods: tuple[str, ...]
    default_steps: int
    paper_steps: int
    reached: Callable[[Tensor], Tensor]  # (..., 2) end points -> (...) bool
    reached_label: str  # column title of the success criterion in the printed table
    reached_text: str
    columns: Callable[[Tensor], dict[str, Tensor]]  # extra CSV columns of the end points
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def objective_value(self, losses: Tensor) -> Tensor:
        return losses.mean(-1) if self.objective == "mean" else losses.sum(-1)


PROBLEMS: dict[str, ToyProblem] = {
    "cagrad": ToyProblem(
        name="cagrad",
        title="CAGrad toy (Liu et al. 2021, Fig. 3)",
        losses=cagrad_toy_losses,
        grads=cagrad_toy_grads,
        objective="mean",
        starts=CAGRAD_STARTS,
        methods=CAGRAD_METHODS,
        default_steps=DEFAULT_STEPS,
        paper_steps=PAPER_STEPS["cagrad"],
        reached=_cagrad_reached,
        reached_label="at L0 min",
        reached_text=f"end within {_REACH_TOL} of the L0 minimiser {CAGRAD_MINIMISER}",
        columns=_cagrad_columns,
        xlim=(-11.0, 11.0),
        ylim=(-11.0, 11.0),
    ),
    "pcgrad": ToyProblem(
        name="pcgrad",
        title="PCGrad toy (Yu et al. 2020, Fig. 1)",
        losses=pcgrad_toy_losses,
        grads=pcgrad_toy_grads,
        objective="sum",
        starts=PCGRAD_STARTS,
        methods=PCGRAD_METHODS,
        default_steps=DEFAULT_PCGRAD_STEPS,
        paper_steps=PAPER_STEPS["pcgrad"],
        reached=_pcgrad_reached,
        reached_label="at optimum",
        reached_text=(
            "both valley residuals |0.5θ1 + tanh θ2| and |0.5θ1 - tanh θ2 + 2| below "
            f"{_PCGRAD_RESIDUAL_TOL} (where the two valleys meet)"
        ),
        columns=_pcgrad_columns,
        xlim=(-6.0, 6.0),
        ylim=(-6.0, 6.0),
    ),
}
