"""Loaders for user-provided copies of NYUv2, Cityscapes, CelebA and CIFAR-100.

None of these data sets can be shipped or downloaded here, so each loader reads the standard
on-disk layout of a local copy, validates it up front, and raises :class:`FileNotFoundError`
naming the first missing file or folder (a missing file deep into an epoch is a poor way to learn
that a copy is incomplete).

* NYUv2 / Cityscapes: the preprocessed ``.npy`` layout of MTAN (Liu et al., CVPR 2019), which
  CAGrad, Nash-MTL and LibMTL all use: ``{root}/{train,val}/image/{i}.npy`` (H, W, 3) floats in
  [0, 1], ``label/{i}.npy`` (H, W) class ids with -1 = ignore, ``depth/{i}.npy`` (H, W, 1) and,
  for NYUv2, ``normal/{i}.npy`` (H, W, 3). Cityscapes uses ``label_7`` (7 classes; ``label_19``
  also exists) instead of ``label``.
* CelebA: ``list_attr_celeba.txt`` (count line, 40 names, then ``file.jpg`` and 40 values of
  -1/1), ``list_eval_partition.txt`` (``file.jpg 0|1|2`` = train/valid/test) and, optionally,
  ``img_align_celeba/``. Attributes parse without Pillow; images are opened with Pillow lazily.
* CIFAR-100: the python pickle files ``train``, ``test`` and ``meta`` of ``cifar-100-python``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CELEBA_SPLITS",
    "CIFAR100Tasks",
    "CelebA",
    "NpyMultiTaskDataset",
    "celeba",
    "cifar100_tasks",
    "cityscapes",
    "nyuv2",
    "read_celeba_attributes",
    "read_celeba_partition",
]

PathLike = str | os.PathLike


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: missing {path}")
    return path


# --------------------------------------------------------------------------------------------
# NYUv2 and Cityscapes (MTAN .npy layout)
# --------------------------------------------------------------------------------------------

_CHANNELS_LAST = {"depth", "normal"}  # stored (H, W, C) in MTAN's files; served (C, H, W)


class NpyMultiTaskDataset(Dataset):
    """One split of an MTAN-layout folder: ``{root}/{split}/{image,<task dirs>}/{i}.npy`` with
    i = 0..N-1. ``tasks`` maps a task name to its sub-folder. An item is
    ``(image (3, H, W) float32, {task: target})`` with segmentation targets (H, W) int64 (-1 =
    ignore) and dense regression targets (C, H, W) float32. Files are read on access."""

    def __init__(self, root: PathLike, split: str, tasks: Mapping[str, str], name: str) -> None:
        self.name = name
        self.root = Path(root)
        _require(self.root, f"{name} root folder")
        self.path = _require(self.root / split, f"{name} split '{split}'")
        self.tasks = dict(tasks)
        image_dir = _require(self.path / "image", f"{name} image folder")
        names = sorted(f for f in os.listdir(image_dir) if f.endswith(".npy"))
        if not names:
            raise FileNotFoundError(f"{name}: no .npy images in {image_dir}")
        try:
            ids = sorted(int(f[:-4]) for f in names)
        except ValueError as exc:
            raise ValueError(f"{name}: image files must be named {{i}}.npy, found {names[:3]}") from exc
        if ids != list(range(len(ids))):
            missing = sorted(set(range(ids[-1] + 1)) - set(ids))
            raise FileNotFoundError(
                f"{name}: images must be numbered 0..N-1; missing {image_dir / f'{missing[0]}.npy'}"
            )
        self.n = len(ids)
        for task, sub in self.tasks.items():
            d = _require(self.path / sub, f"{name} {task} folder")
            present = set(os.listdir(d))
            for i in range(self.n):
                if f"{i}.npy" not in present:
                    raise FileNotFoundError(f"{name} {task} target not found: missing {d / f'{i}.npy'}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} {self.name} examples")
        image = np.load(self.path / "image" / f"{index}.npy")
        if image.ndim != 3:
            raise ValueError(f"{self.name}: image {index} should be (H, W, 3), got {image.shape}")
        out: dict[str, Tensor] = {}
        for task, sub in self.tasks.items():
            a = np.load(self.path / sub / f"{index}.npy")
            if task == "segmentation":
                out[task] = torch.from_numpy(np.asarray(a)).to(torch.int64)
            else:
                a = a[..., None] if a.ndim == 2 else a
                out[task] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0))).float()
        img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0))).float()
        return img, out


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")


def nyuv2(root: PathLike, split: str = "train") -> NpyMultiTaskDataset:
    """NYUv2 in MTAN's layout (split ``train`` or ``val``); tasks ``segmentation`` (13 classes),
    ``depth`` (1, H, W) and ``normal`` (3, H, W)."""
    _check_split(split, ("train", "val"))
    tasks = {"segmentation": "label", "depth": "depth", "normal": "normal"}
    return NpyMultiTaskDataset(root, split, tasks, "NYUv2")


def cityscapes(root: PathLike, split: str = "train", label: str = "label_7") -> NpyMultiTaskDataset:
    """Cityscapes in MTAN's layout (split ``train`` or ``val``); tasks ``segmentation`` read from
    ``label`` (``label_7`` by default, ``label_19`` or ``label`` if that is what the copy has) and
    ``depth`` (1, H, W)."""
    _check_split(split, ("train", "val"))
    return NpyMultiTaskDataset(root, split, {"segmentation": label, "depth": "depth"}, "Cityscapes")


# --------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------

CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
"""The codes of ``list_eval_partition.txt``."""


def read_celeba_attributes(path: PathLike) -> tuple[list[str], list[str], Tensor]:
    """Parse ``list_attr_celeba.txt``: returns (file names, 40 attribute names, (N, 40) int64 in
    {0, 1}), mapping the file's -1 to 0."""
    path = _require(Path(path), "CelebA attribute file")
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line")
    try:
        count = int(lines[0].split()[0])
    except ValueError as exc:
        raise ValueError(f"{path}: first line should be the number of images, got {lines[0]!r}") from exc
    names = lines[1].split()
    rows = lines[2:]
    if len(rows) != count:
        raise ValueError(f"{path}: header says {count} images but {len(rows)} rows follow")
    files, values = [], []
    for k, ln in enumerate(rows):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}: row {k + 3} has {len(parts) - 1} values for {len(names)} attributes")
        files.append(parts[0])
        values.append([int(v) for v in parts[1:]])
    attrs = torch.tensor(values, dtype=torch.int64).reshape(len(rows), len(names))
    if not bool(((attrs == 1) | (attrs == -1)).all()):
        raise ValueError(f"{path}: attribute values must be -1 or 1")
    return files, names, (attrs > 0).to(torch.int64)


def read_celeba_partition(path: PathLike) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` into {file name: 0 train | 1 valid | 2 test}."""
    path = _require(Path(path), "CelebA partition file")
    out: dict[str, int] = {}
    with open(path) as f:
        for k, ln in enumerate(f):
            parts = ln.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}: line {k + 1} should be 'file 0|1|2', got {ln.strip()!r}")
            out[parts[0]] = int(parts[1])
    return out


class CelebA(Dataset):
    """One CelebA split: 40 binary attribute tasks. ``files`` and ``attributes`` ((N, 40) int64 in
    {0, 1}) are always available; an item is ``(image (3, H, W) float32 in [0, 1], attributes
    (40,))`` when images are loaded, else just ``attributes``. ``transform`` (optional) maps the
    PIL image to what the item should hold instead of the default tensor."""

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        *,
        images: bool = True,
        transform: Callable | None = None,
    ) -> None:
        _check_split(split, tuple(CELEBA_SPLITS))
        self.root = _require(Path(root), "CelebA root folder")
        files, self.names, attrs = read_celeba_attributes(self.root / "list_attr_celeba.txt")
        part = read_celeba_partition(self.root / "list_eval_partition.txt")
        missing = [f for f in files if f not in part]
        if missing:
            raise ValueError(f"CelebA: {missing[0]} has attributes but no partition entry")
        keep = [i for i, f in enumerate(files) if part[f] == CELEBA_SPLITS[split]]
        self.files = [files[i] for i in keep]
        self.attributes = attrs[keep]
        self.transform = transform
        self.image_dir: Path | None = None
        if images:
            self.image_dir = _require(self.root / "img_align_celeba", "CelebA image folder")
            for f in self.files[:1]:  # check one file cheaply; listing 200k files is slow
                _require(self.image_dir / f, "CelebA image")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        if self.image_dir is None:
            return self.attributes[index]
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError(
                "reading CelebA images needs Pillow: pip install 'mtgrad[data]' "
                "(or pass images=False for the attributes only)"
            ) from exc
        path = _require(self.image_dir / self.files[index], "CelebA image")
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if self.transform is not None:
            return self.transform(rgb), self.attributes[index]
        arr = np.asarray(rgb, dtype=np.uint8).copy()
        img = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return img, self.attributes[index]


def celeba(root: PathLike, split: str = "train", *, images: bool = True, transform: Callable | None = None) -> CelebA:
    """:class:`CelebA` for ``split`` in ``train``/``valid``/``test``."""
    return CelebA(root, split, images=images, transform=transform)


# --------------------------------------------------------------------------------------------
# CIFAR-100 as 20 coarse-class tasks
# --------------------------------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


class CIFAR100Tasks(Dataset):
    """CIFAR-100 as the 20-task problem of PCGrad (Yu et al., 2020, Sec. 5.1, after Rosenbaum et
    al.'s routing networks): task t = the images of coarse class t ("2500 train / 500 test per
    task"), each a **5-way classification of the fine classes inside that coarse class**. Every
    image belongs to exactly one task, so a batch mixes tasks and each task's loss is taken over
    its own rows (the coarse label only routes; it is not predicted).

    The within-task label is the rank of the fine label among the 5 fine labels of its coarse
    class (sorted by fine id), derived from the data; the loader checks the standard 20 x 5
    hierarchy so train and test ranks agree.

    Fields: ``images`` (N, 3, 32, 32) uint8; ``fine`` (N,) int64 in 0..99; ``task`` (N,) int64 in
    0..19; ``label`` (N,) int64 in 0..4; ``task_classes`` (20, 5) fine ids of each task's labels;
    ``fine_names``/``coarse_names``. An item is ``(image float32 in [0, 1], task, label)``.
    """

    def __init__(self, root: PathLike, split: str = "train") -> None:
        _check_split(split, ("train", "test"))
        root = _require(Path(root), "CIFAR-100 root folder")
        if (root / "cifar-100-python").is_dir():
            root = root / "cifar-100-python"
        self.root = root
        d = _unpickle(_require(root / split, f"CIFAR-100 '{split}' pickle"))
        meta = _unpickle(_require(root / "meta", "CIFAR-100 'meta' pickle"))
        for key in ("data", "fine_labels", "coarse_labels"):
            if key not in d:
                raise ValueError(f"{root / split}: pickle has no '{key}' entry")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{root / split}: 'data' should be (N, 3072) uint8, got {data.shape}")
        self.images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        self.fine = torch.tensor(d["fine_labels"], dtype=torch.int64)
        self.task = torch.tensor(d["coarse_labels"], dtype=torch.int64)
        if not (self.fine.numel() == self.task.numel() == self.images.shape[0]):
            raise ValueError(f"{root / split}: data and label lengths differ")
        self.fine_names: list[str] = list(meta.get("fine_label_names", []))
        self.coarse_names: list[str] = list(meta.get("coarse_label_names", []))
        classes = []
        for c in range(20):
            f = torch.unique(self.fine[self.task == c])
            if f.numel() != 5:
                raise ValueError(
                    f"{root / split}: coarse class {c} has {f.numel()} fine classes, expected the "
                    "standard CIFAR-100 hierarchy of 20 coarse classes x 5 fine classes"
                )
            classes.append(f)
        self.task_classes = torch.stack(classes)  # (20, 5), sorted
        rank = torch.full((100,), -1, dtype=torch.int64)
        for c in range(20):
            rank[self.task_classes[c]] = torch.arange(5)
        if int((rank >= 0).sum()) != 100:
            raise ValueError(f"{root / split}: a fine class appears under two coarse classes")
        self.label = rank[self.fine]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[index].float().div_(255.0), self.task[index], self.label[index]

    def task_indices(self, task: int) -> Tensor:
        """Indices of the examples of ``task`` (one coarse class)."""
        return torch.nonzero(self.task == task).flatten()


def cifar100_tasks(root: PathLike, split: str = "train") -> CIFAR100Tasks:
    """:class:`CIFAR100Tasks` from ``root`` (the ``cifar-100-python`` folder or its parent)."""
    return CIFAR100Tasks(root, split)
