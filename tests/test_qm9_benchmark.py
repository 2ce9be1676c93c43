"""The ``qm9`` benchmark: registry entry, one epoch of training on a tiny table written in
qm9pack's CSV format (finite test MAE for all 11 tasks, in the papers' units), the MAE metric
against :meth:`QM9Data.mae`, and, when qm9pack is installed, the real data's shapes."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtgrad.bench.benchmarks import BENCHMARKS, get_benchmark
from mtgrad.bench.data import qm9
from mtgrad.bench.trainer import TrainConfig, train

pytest.importorskip("pandas")

_HAS_QM9PACK = importlib.util.find_spec("qm9pack") is not None


def _write_table(directory: Path, n: int, seed: int = 0) -> None:
    """``n`` random small molecules in qm9pack's CSV format (only the columns the loader reads),
    split over qm9_part1.csv and qm9_part2.csv."""
    rng = np.random.default_rng(seed)
    columns = ["Index", "N_atoms", "Elements", "XYZ_Ang", *qm9.TARGET_COLUMNS.values()]
    rows = []
    for i in range(n):
        symbols = list(rng.choice(["C", "N", "O", "F"], size=int(rng.integers(1, 4))))
        symbols += ["H"] * int(rng.integers(0, 6))
        pos = rng.normal(scale=1.5, size=(len(symbols), 3))
        row: dict[str, object] = {
            "Index": i + 1,
            "N_atoms": len(symbols),
            "Elements": "[" + ",".join(f"'{s}'" for s in symbols) + "]",
            "XYZ_Ang": "[" + ",".join("[" + ",".join(repr(float(v)) for v in p) + "]" for p in pos) + "]",
        }
        for t, col in qm9.TARGET_COLUMNS.items():
            row[col] = float(rng.normal(loc=-40.0 if t in ("U0", "U", "H", "G") else 1.0))
        rows.append(row)
    half = n // 2
    for name, part in (("qm9_part1.csv", rows[:half]), ("qm9_part2.csv", rows[half:])):
        with open(directory / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, quoting=csv.QUOTE_NONNUMERIC)
            w.writeheader()
            w.writerows(part)


@pytest.fixture()
def table_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    _write_table(d, 60)
    return d


def test_qm9_is_registered_with_11_lower_is_better_maes():
    bench = get_benchmark("qm9")
    assert BENCHMARKS["qm9"] is bench
    assert [t.name for t in bench.tasks] == list(qm9.TARGETS)
    assert bench.metric_names() == [f"{t}/mae" for t in qm9.TARGETS]
    assert not any(bench.higher_is_better().values())
    assert bench.defaults["batch_size"] == 512
    model = bench.model(bench.tasks)
    out = model(torch.zeros(3, len(qm9.FEATURE_NAMES)))
    assert len(out) == 11 and all(o.shape == (3, 1) for o in out)
    single = bench.model([bench.tasks[4]])
    assert len(single(torch.zeros(2, len(qm9.FEATURE_NAMES)))) == 1


def test_mae_metric_matches_qm9data_mae(table_dir: Path):
    bench = get_benchmark("qm9")
    options = {"limit": None, "data_dir": table_dir, "cache": False, "n_val": 5, "n_test": 10}
    _, test = bench.data(1, **options)
    data = qm9.qm9(split_seed=1, data_dir=table_dir, cache=False, n_val=5, n_test=10)
    x, y, _ = test.tensors
    assert torch.equal(x, data.test.x) and torch.equal(y, data.test.y)
    pred = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    expected = data.mae(pred, y)
    batch = test.tensors
    for k, task in enumerate(bench.tasks):
        got = task.metrics[0].fn(pred[:, k : k + 1], task.target(batch)).mean()
        assert float(got) == pytest.approx(float(expected[k]), rel=1e-5)


def test_one_epoch_on_a_tiny_table_gives_finite_maes_for_all_tasks(table_dir: Path, tmp_path: Path):
    cfg = TrainConfig(
        benchmark="qm9",
        method="gd",
        epochs=1,
        batch_size=16,
        out=str(tmp_path / "run"),
        data_options={"limit": None, "data_dir": str(table_dir), "cache": False, "n_val": 5, "n_test": 10},
        progress=False,
        tensorboard=False,
    )
    result = train(cfg)
    names = get_benchmark("qm9").metric_names()
    assert sorted(result.test) == sorted(names)
    for name in names:
        assert math.isfinite(result.test[name]) and result.test[name] >= 0.0, name


@pytest.mark.skipif(not _HAS_QM9PACK, reason="qm9pack is not installed")
def test_real_data_subset(tmp_path: Path):
    bench = get_benchmark("qm9")
    train_ds, test_ds = bench.data(0, limit=500, cache_dir=tmp_path)
    x, y, scale = train_ds.tensors
    assert x.shape[1] == len(qm9.FEATURE_NAMES) and y.shape[1] == scale.shape[1] == 11
    assert len(train_ds) + len(test_ds) < 500  # a validation split is held out and unused
    assert torch.isfinite(x).all() and torch.isfinite(y).all() and (scale > 0).all()
    assert torch.equal(scale[0], test_ds.tensors[2][0])  # one set of training statistics
