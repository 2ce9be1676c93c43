"""Adversarial task-Jacobian generators (numpy float64) and Hypothesis strategies over them.

Families (T tasks x d shared parameters):
  gaussian   iid N(0, 1) rows
  lognorm    Gaussian directions with norms log-uniform over [1e-3, 1e3]
  rankdef    rank r < T (J = A B, A: T x r, B: r x d)
  colinear   some rows are (positive or negative) multiples of another row
  opposite   one row is exactly the negation of another
  zero_row   one row is exactly zero
  identical  every row is the same vector (rank 1, Gramian with all-equal entries)
  conflict   g_i = s_i u + 0.3 noise with random signs s_i (strong pairwise conflicts)
  benign     g_i = u + 0.3 noise (positive mean direction, mild conflicts)
"""

from __future__ import annotations

import zlib

import numpy as np
from hypothesis import strategies as st

ADVERSARIAL = ("gaussian", "lognorm", "rankdef", "colinear", "opposite", "zero_row", "identical", "conflict")
FAMILIES = ADVERSARIAL + ("benign",)


def make_jacobian(kind: str, T: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((T, d))
    if kind == "lognorm":
        G = rng.standard_normal((T, d))
        G /= np.linalg.norm(G, axis=1, keepdims=True)
        return G * (10.0 ** rng.uniform(-3.0, 3.0, size=(T, 1)))
    if kind == "rankdef":
        r = int(rng.integers(1, T))  # 1 <= r <= T-1
        r = min(r, d)
        return rng.standard_normal((T, r)) @ rng.standard_normal((r, d))
    if kind == "colinear":
        G = rng.standard_normal((T, d))
        n_col = int(rng.integers(1, T))  # at least one colinear row
        for i in rng.choice(np.arange(1, T), size=n_col, replace=False):
            src = int(rng.integers(0, i))
            scale = float(rng.choice([-1.0, 1.0]) * 2.0 ** rng.integers(-3, 4))  # exact scaling
            G[i] = scale * G[src]
        return G
    if kind == "opposite":
        G = rng.standard_normal((T, d))
        i, j = rng.choice(T, size=2, replace=False)
        G[j] = -G[i]
        return G
    if kind == "zero_row":
        G = rng.standard_normal((T, d))
        G[int(rng.integers(0, T))] = 0.0
        return G
    if kind == "identical":
        return np.tile(rng.standard_normal(d) * 10.0 ** rng.uniform(-2.0, 2.0), (T, 1))
    if kind == "conflict":
        u = rng.standard_normal(d)
        s = rng.choice([-1.0, 1.0], size=(T, 1))
        s[0] = 1.0
        s[1] = -1.0
        return s * u + 0.3 * rng.standard_normal((T, d)) * np.linalg.norm(u) / np.sqrt(d)
    if kind == "benign":
        u = rng.standard_normal(d)
        return u + 0.3 * rng.standard_normal((T, d)) * np.linalg.norm(u) / np.sqrt(d)
    raise ValueError(f"unknown family {kind!r}")


@st.composite
def jacobians(draw, families=ADVERSARIAL, min_T: int = 2, max_T: int = 6, min_d: int = 2, max_d: int = 50):
    """Hypothesis strategy: (family, J) with J a float64 numpy (T, d) array."""
    kind = draw(st.sampled_from(families))
    T = draw(st.integers(min_T, max_T))
    d = draw(st.integers(min_d, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, make_jacobian(kind, T, d, seed)


def family_samples(families=ADVERSARIAL, n_per_family: int = 20, min_T=2, max_T=6, max_d=50, seed=0):
    """Deterministic list of (family, J) for sweeps / error measurements."""
    out = []
    for kind in families:
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        for _ in range(n_per_family):
            T = int(rng.integers(min_T, max_T + 1))
            d = int(rng.integers(2, max_d + 1))
            out.append((kind, make_jacobian(kind, T, d, int(rng.integers(0, 2**32 - 1)))))
    return out


def to_torch(J, dtype=None):
    """float64 (by default) torch tensor from a numpy Jacobian (torch imported lazily)."""
    import torch

    return torch.as_tensor(np.asarray(J), dtype=dtype or torch.float64)


def pairwise_conflict_free(J: np.ndarray) -> bool:
    G = J @ J.T
    return bool(np.all(G >= 0))


def checked_weights(method, gramian, *, nonnegative: bool = False) -> np.ndarray:
    """``method.weights(gramian)`` as numpy, after the checks every weighting must pass:
    float64, one weight per task, finite (and non-negative where the method promises it)."""
    import torch

    w = method.weights(gramian)
    assert w.dtype == torch.float64 and w.shape == gramian.shape[-1:]
    assert bool(torch.isfinite(w).all())
    if nonnegative:
        assert bool((w >= 0).all())
    return w.numpy()
