"""ConFIG's equal-projection direction (Liu, Chu & Thuerey 2024) as task weights."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import _ZERO_ROW, _masked_psd_solve

__all__ = ["config_weights"]


def config_weights(G: Tensor, pref: Tensor | None = None) -> Tensor:
    """ConFIG's update as task weights (Liu, Chu & Thuerey 2024): ``d = (Σ_i g_iᵀ ĝ) ĝ``.

    ``ĝ`` is the unit vector of ``U⁺ w`` where ``U`` stacks the unit gradients ``g_i/‖g_i‖`` and
    ``w`` is the preference (ones). With ``D = diag(1/‖g_i‖)`` and ``C = DGD`` (the cosine
    matrix), ``U⁺w = Uᵀ C⁺ w = Σ_i a_i g_i`` with ``a = D C⁺ w``, ``‖U⁺w‖² = wᵀC⁺w``, so
    ``d = Σ_i [a_i (1ᵀGa)/(aᵀGa)] g_i``. Zero gradients get zero unit vectors (weight 0), as in
    torchjd; if ``U⁺w = 0`` (e.g. two opposite gradients) the update is 0.
    """
    G = 0.5 * (G + G.mT)
    diag = G.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    top = diag.amax(-1, keepdim=True)
    live = diag > top * _ZERO_ROW
    d = torch.where(live, torch.where(live, diag, 1.0).rsqrt(), 0.0)
    C = G * d.unsqueeze(-1) * d.unsqueeze(-2)
    w = G.new_ones(G.shape[:-1]) if pref is None else pref.to(G).expand(G.shape[:-1])
    s = _masked_psd_solve(C, w, live)
    a = d * s
    Ga = (G @ a.unsqueeze(-1)).squeeze(-1)
    norm2 = (a * Ga).sum(-1, keepdim=True)  # = sᵀCs = ‖U⁺w‖²
    length = Ga.sum(-1, keepdim=True)  # = Σ_i g_iᵀ(U⁺w)
    # U⁺w = 0 (w ⊥ the span of the unit gradients) leaves only rounding noise in s.
    ok = norm2 > 1e-18 * w.square().sum(-1, keepdim=True)
    return torch.where(ok, a * length / torch.where(ok, norm2, 1.0), torch.zeros_like(a))
