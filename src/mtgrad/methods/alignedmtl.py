"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Weighting

__all__ = ["AlignedMTL"]

ScaleMode = Literal["min", "median", "rmse"]

# The official code's rank tolerance uses ``torch.finfo().eps``: the default dtype's, float32.
_OFFICIAL_EPS = torch.finfo(torch.float32).eps


class AlignedMTL(Weighting):
    r"""Aligned-MTL, Algorithm 1 of Senushkin et al. (2023).

    The task gradients are replaced by the closest (Procrustes) system of **orthogonal gradients
    of equal norm** — its condition number is 1 — and summed with preference weights. On the
    Gramian ``G = VΛVᵀ`` (eigenvalues ``λ_1 ≥ … ≥ λ_R`` kept above ``λ_1·T·ε``)::

        B = √λ_s · V Λ^{-1/2} Vᵀ   (kept eigenpairs only),   α = B w,   d = Σ_i α_i g_i,

    i.e. the rescaled task gradients ``ĝ_t = Σ_i B_it g_i`` satisfy ``ĜĜᵀ = λ_s·P`` (``P`` the
    projector onto the kept eigenvectors, ``= I`` at full rank): orthogonal, all of norm
    ``√λ_s``, and ``d = Σ_t w_t ĝ_t``.

    Args:
        scale_mode: the common norm² ``λ_s`` of the aligned gradients. ``"min"`` (paper and
            official default): the smallest kept eigenvalue; ``"median"``: their median — the
            *lower* median for an even count, as ``torch.median`` in the official code;
            ``"rmse"``: their mean (the RMS singular value of J). All three are in the official
            SamsungLabs code; LibMTL only has ``"min"``; torchjd 0.18 only ``"min"``.
        pref: preference weights ``w`` (T,). ``None`` means ones, as the official code and
            LibMTL (``weights.sum(-1)``, ``B.sum(0)``); torchjd uses ``1/T`` (pass
            ``pref=[1/T]*T``), which only scales the update.
        rtol: rank tolerance ``ε``: eigenvalues ``≤ λ_max·T·ε`` are dropped. ``None`` uses the
            official value, float32's epsilon (the official code and LibMTL call
            ``torch.finfo()`` of the default dtype, even on float64 data); it also keeps rounding
            noise of a float32-accumulated Gramian from being "aligned" into a huge component.

    Degenerate inputs: dropped eigen-directions get weight 0, so a rank-deficient system
    (zero rows, colinear rows, T > d) is aligned within its row space; ``G = 0`` gives zero
    weights; T = 1 gives ``α = w``. No NaN.
    """

    def __init__(
        self,
        scale_mode: ScaleMode = "min",
        pref: Sequence[float] | Tensor | None = None,
        rtol: float | None = None,
    ) -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        if pref is not None:
            pref_t = torch.as_tensor(pref, dtype=torch.float64).detach().clone()
            if pref_t.dim() != 1 or pref_t.numel() == 0:
                raise ValueError(
                    f"pref must be a non-empty 1-D sequence of task weights, got shape {tuple(pref_t.shape)}"
                )
            if not bool(torch.isfinite(pref_t).all()):
                raise ValueError(f"pref must be finite, got {pref_t.tolist()}")
            pref = pref_t
        if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1):
            raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")
        self.scale_mode: ScaleMode = scale_mode
        self.pref: Tensor | None = pref
        self.rtol = _OFFICIAL_EPS if rtol is None else float(rtol)
        self._pref_on: dict[torch.device, Tensor] = {}  # pref copied once per device

    def _weights(self, gramian: Tensor, losses: Tensor | None = None) -> Tensor:
        T = gramian.shape[-1]
        if self.pref is None:
            pref = gramian.new_ones(T)
        else:
            if self.pref.shape != (T,):
                raise ValueError(f"pref has {self.pref.numel()} entries but the Gramian has T = {T} tasks")
            cached = self._pref_on.get(gramian.device)
            pref = cached if cached is not None else self._pref_on.setdefault(gramian.device, self.pref.to(gramian.device))
        lam, V = torch.linalg.eigh(gramian)  # ascending
        keep = lam > lam[..., -1:].clamp_min(0.0) * (T * self.rtol)
        count = keep.sum(-1, keepdim=True)
        kept = torch.where(keep, lam, 0.0)
        if self.scale_mode == "min":
            scale = torch.where(keep, lam, torch.inf).amin(-1, keepdim=True)
        elif self.scale_mode == "rmse":
            scale = kept.sum(-1, keepdim=True) / count.clamp_min(1)
        else:  # lower median of the kept eigenvalues: ascending, dropped ones sorted last
            ordered = torch.where(keep, lam, torch.inf).sort(dim=-1).values
            scale = ordered.gather(-1, ((count - 1) // 2).clamp_min(0))
        ratio = torch.where(keep, scale / torch.where(keep, lam, 1.0), 0.0).sqrt()  # √(λ_s/λ_k)
        # α = V diag(√λ_s/√λ_k) Vᵀ w.
        coeff = ratio * (V.transpose(-1, -2) @ pref.unsqueeze(-1)).squeeze(-1)
        return (V @ coeff.unsqueeze(-1)).squeeze(-1)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"scale_mode": self.scale_mode}
        if self.pref is not None:
            config["pref"] = self.pref.tolist()
        if self.rtol != _OFFICIAL_EPS:
            config["rtol"] = self.rtol
        return config
