"""Synthetic multi-task benchmarks generated at run time.

* :func:`linear_benchmark` -- T linear-regression tasks sharing one design matrix, whose true
  optima have a chosen pairwise cosine ``rho``: gradient conflict is dialled in exactly
  (``rho < 0`` means conflicting optima) and the Pareto set is known in closed form.
* :func:`shape_images` -- procedural images of one shape each (the class task) with its scale,
  position, intensity and orientation as regression tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "ATTRIBUTES",
    "SHAPES",
    "SHAPE_SYMMETRY",
    "LinearBenchmark",
    "ShapeImages",
    "linear_benchmark",
    "shape_images",
    "task_optima",
]


# --------------------------------------------------------------------------------------------
# Linear benchmark with controllable conflict
# --------------------------------------------------------------------------------------------


def task_optima(n_tasks: int, dim: int, rho: float, generator: torch.Generator, *, norm: float = 1.0) -> Tensor:
    """(n_tasks, dim) float64 vectors of norm ``norm`` whose pairwise cosines all equal ``rho``.

    The target Gram matrix ``G = norm² ((1 - rho) I + rho 11ᵀ)`` is positive semi-definite iff
    ``-1/(T-1) <= rho <= 1``; with ``G = V Λ Vᵀ`` the rows of ``V Λ^½ Q`` have Gram ``G`` for any
    ``Q`` with orthonormal rows, so a random ``Q`` gives a random orientation with the exact cosine
    (an eigendecomposition rather than Cholesky handles the singular ends rho = 1 and -1/(T-1)).
    """
    if n_tasks < 2:
        raise ValueError(f"n_tasks must be at least 2, got {n_tasks}")
    if dim < n_tasks:
        raise ValueError(f"dim must be at least n_tasks={n_tasks} to fit the optima, got {dim}")
    lo = -1.0 / (n_tasks - 1)
    if not lo - 1e-12 <= rho <= 1.0 + 1e-12:
        raise ValueError(
            f"rho={rho} is not attainable by {n_tasks} vectors: equal pairwise cosines need {lo:.4g} <= rho <= 1"
        )
    G = (1.0 - rho) * torch.eye(n_tasks, dtype=torch.float64) + rho
    evals, V = torch.linalg.eigh(G)
    L = V * evals.clamp_min(0.0).sqrt()  # L Lᵀ = G
    Q, _ = torch.linalg.qr(torch.randn(dim, n_tasks, generator=generator, dtype=torch.float64))
    return norm * (L @ Q.T)


@dataclass(frozen=True)
class LinearBenchmark:
    """T regression tasks ``y_t = X θ*_t + noise`` with one shared design ``X`` (n, d).

    With the per-task loss ``L_t(θ) = ||X θ - y_t||² / (2n)`` every task has the same Hessian
    ``XᵀX / n``, so ``Σ_t w_t L_t`` is minimised at ``Σ_t w_t θ̂_t`` where ``θ̂_t`` is task t's
    least-squares solution. Each such minimiser is unique, hence Pareto optimal, and every Pareto
    optimum minimises some weighted sum (the losses are convex): **the Pareto set is exactly the
    convex hull of the ``θ̂_t``** (of the true ``θ*_t`` when ``noise = 0``).

    Fields (float64): ``X`` (n, d); ``Y`` (n, T); ``theta_star`` (T, d) true optima with pairwise
    cosine ``rho``; ``theta_hat`` (T, d) least-squares optima of the sampled data.
    """

    X: Tensor
    Y: Tensor
    theta_star: Tensor
    theta_hat: Tensor
    rho: float

    @property
    def n_tasks(self) -> int:
        return int(self.Y.shape[1])

    def losses(self, theta: Tensor) -> Tensor:
        """Per-task losses ``||X θ - y_t||² / (2n)``: θ (d,) -> (T,), or (B, d) -> (B, T)."""
        pred = theta.to(self.X.dtype) @ self.X.T  # (..., n)
        resid = pred.unsqueeze(-1) - self.Y  # (..., n, T)
        return 0.5 * resid.pow(2).mean(dim=-2)

    def pareto_point(self, weights: Tensor) -> Tensor:
        """The Pareto-optimal parameters ``Σ_t w_t θ̂_t`` for simplex weights (T,) or (B, T)."""
        w = weights.to(self.theta_hat.dtype)
        if (w < 0).any() or not torch.allclose(w.sum(-1), torch.ones((), dtype=w.dtype)):
            raise ValueError("weights must be non-negative and sum to 1 (a point of the simplex)")
        return w @ self.theta_hat

    def dataset(self) -> TensorDataset:
        """``TensorDataset(X, Y)`` in float32 for a ``DataLoader``."""
        return TensorDataset(self.X.float(), self.Y.float())


def linear_benchmark(
    *,
    n_tasks: int = 2,
    dim: int = 10,
    rho: float = -0.5,
    n_samples: int = 1000,
    noise: float = 0.1,
    norm: float = 1.0,
    seed: int = 0,
) -> LinearBenchmark:
    """Sample a :class:`LinearBenchmark`: ``X`` standard normal, ``θ*`` from :func:`task_optima`,
    ``y_t = X θ*_t + noise·ε``."""
    if n_samples < dim:
        raise ValueError(f"n_samples={n_samples} < dim={dim}: the least-squares optima would not be unique")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(seed)
    theta = task_optima(n_tasks, dim, rho, g, norm=norm)
    X = torch.randn(n_samples, dim, generator=g, dtype=torch.float64)
    Y = X @ theta.T + noise * torch.randn(n_samples, n_tasks, generator=g, dtype=torch.float64)
    theta_hat = torch.linalg.lstsq(X, Y).solution.T.contiguous()
    return LinearBenchmark(X, Y, theta, theta_hat, float(rho))


# --------------------------------------------------------------------------------------------
# Procedural multi-attribute shape images
# --------------------------------------------------------------------------------------------

SHAPES = ("ellipse", "rectangle", "triangle", "semicircle")
"""Class names, in label order."""

SHAPE_SYMMETRY = (2, 2, 3, 1)
"""Rotational symmetry order m of each shape: its orientation is defined only modulo 2π/m, so
the orientation targets are ``cos(m·angle)`` and ``sin(m·angle)`` (continuous and unambiguous)."""

ATTRIBUTES = ("scale", "x", "y", "intensity", "orient_cos", "orient_sin")
"""Regression targets, in column order of :attr:`ShapeImages.attributes`."""

_TRI_NORMALS = torch.tensor(
    [[math.cos(a), math.sin(a)] for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)],
    dtype=torch.float32,
)


@dataclass(frozen=True)
class ShapeImages:
    """``images`` (N, 1, S, S) float32 in [0, 1]; ``labels`` (N,) int64 shape class (see
    :data:`SHAPES`); ``attributes`` (N, 6) float32 regression targets (see :data:`ATTRIBUTES`):
    scale in [0.3, 0.6] (half-size over half the image side), centre x, y in [-0.35, 0.35]
    (image coordinates in [-1, 1], y pointing down), intensity in [0.4, 1], and the orientation as
    ``cos(m·angle), sin(m·angle)``; ``angle`` (N,) the raw angle in radians."""

    images: Tensor
    labels: Tensor
    attributes: Tensor
    angle: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def dataset(self) -> TensorDataset:
        """``TensorDataset(images, labels, attributes)``."""
        return TensorDataset(self.images, self.labels, self.attributes)


def _render(shape: Tensor, scale: Tensor, cx: Tensor, cy: Tensor, angle: Tensor, size: int) -> Tensor:
    """Binary masks (N, S, S) of the shapes, evaluated at pixel centres."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    dx = (xx - cx[:, None, None]) / scale[:, None, None]
    dy = (yy - cy[:, None, None]) / scale[:, None, None]
    ca, sa = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = ca * dx + sa * dy  # rotate by -angle into the shape's frame
    v = -sa * dx + ca * dy
    ellipse = u.pow(2) + (v / 0.5).pow(2) <= 1.0
    rectangle = (u.abs() <= 1.0) & (v.abs() <= 0.5)
    proj = u[..., None] * _TRI_NORMALS[:, 0] + v[..., None] * _TRI_NORMALS[:, 1]
    triangle = (proj <= 0.5).all(dim=-1)
    v2 = v + 0.4  # centre the half-disc on its centroid (4/(3π) ≈ 0.42)
    semicircle = (u.pow(2) + v2.pow(2) <= 1.0) & (v2 >= 0.0)
    masks = torch.stack([ellipse, rectangle, triangle, semicircle], dim=1)  # (N, 4, S, S)
    return masks[torch.arange(shape.numel()), shape].to(torch.float32)


def shape_images(n: int, *, size: int = 32, noise: float = 0.0, seed: int = 0, chunk: int = 2048) -> ShapeImages:
    """``n`` procedural images (one shape each) with their class and regression targets; identical
    for identical ``(n, size, noise, seed)``. ``noise`` adds Gaussian pixel noise (then clamps)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels to draw a shape, got {size}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    scale = 0.3 + 0.3 * torch.rand(n, generator=g)
    cx = 0.7 * torch.rand(n, generator=g) - 0.35
    cy = 0.7 * torch.rand(n, generator=g) - 0.35
    intensity = 0.4 + 0.6 * torch.rand(n, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    m = torch.tensor(SHAPE_SYMMETRY, dtype=torch.float32)[labels]
    images = torch.empty(n, 1, size, size)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        mask = _render(labels[s:e], scale[s:e], cx[s:e], cy[s:e], angle[s:e], size)
        images[s:e, 0] = intensity[s:e, None, None] * mask
    if noise > 0:
        images = (images + noise * torch.randn(images.shape, generator=g)).clamp_(0.0, 1.0)
    attrs = torch.stack([scale, cx, cy, intensity, torch.cos(m * angle), torch.sin(m * angle)], dim=1)
    return ShapeImages(images, labels, attrs, angle)
