"""The Lightning integration with a real ``lightning.Trainer`` on the CPU.

The runs go through ``docs/examples/lightning_train.py`` in a subprocess (``strategy="ddp"``
re-launches its script for the second rank): one process, DDP on 2 CPU processes, bf16-mixed;
``--check`` compares the trained parameters with plain PyTorch + mtgrad.backward on the global
batches.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lightning = pytest.importorskip("lightning")

import mtgrad  # noqa: E402
import mtgrad.lightning  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "lightning_train.py"


def _run(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, str]]]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check", "--logs", str(tmp_path), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = tmp_path.glob("run/version_*/metrics.csv")
    with open(metrics) as f:
        return done.stdout, list(csv.DictReader(f))


@pytest.mark.parametrize(
    "args",
    [
        (), ("--devices", "2", "--strategy", "ddp"), ("--precision", "bf16-mixed"), ("--accumulate", "3"),
        ("--accumulate", "3", "--devices", "2", "--strategy", "ddp"),
    ],
    ids=["one-process", "ddp-2-cpu", "bf16-mixed", "accumulate-3", "ddp-accumulate-3"],
)  # fmt: skip
def test_trainer_runs_match_the_whole_batch_step_and_log_diagnostics(tmp_path, args):
    out, rows = _run(tmp_path, *args)
    assert "matches the whole-batch run: True" in out
    logged = [r for r in rows if r.get("mtgrad/conflict_rate")]
    devices = int(args[args.index("--devices") + 1]) if "--devices" in args else 1
    k = int(args[args.index("--accumulate") + 1]) if "--accumulate" in args else 1
    batches = 64 // (8 * devices)  # per epoch: 64 rows, 8 rows per rank
    steps = 3 * -(-batches // k)  # a step per k batches, and at the epoch's end
    assert f"optimizer steps: {steps}" in out
    assert [int(r["step"]) for r in logged] == list(range(1, steps + 1))  # one row per step, none between
    for r in logged:
        assert 0.0 <= float(r["mtgrad/conflict_rate"]) <= 1.0
        assert -1.0 <= float(r["mtgrad/min_cosine"]) <= 1.0
        assert all(float(r[f"mtgrad/weight_{i}"]) > 0 for i in range(3))  # PCGrad's weights


def _fit_two_steps(module: lightning.LightningModule) -> None:
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module)


def _example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lightning_train", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_surgery_step_refuses_what_would_silently_not_train():
    example = _example()

    class Weighted(example.MultiTask):  # UW's log-variances left out of the optimizer
        def __init__(self, accumulate: int = 1) -> None:
            super().__init__(accumulate)
            self.method = mtgrad.UW(example.TASKS)

    for k in (1, 2):
        with pytest.raises(ValueError, match="UW's parameters are not in the module's optimizer"):
            _fit_two_steps(Weighted(k))

    class Learned(Weighted):
        def configure_optimizers(self):
            return torch.optim.SGD([*self.parameters(), *self.method.parameters()], lr=0.2)

    module = Learned(2)
    _fit_two_steps(module)  # max_steps=2: four batches, two accumulated steps; UW learns
    assert not torch.equal(module.method.log_vars.detach(), torch.zeros(example.TASKS))

    class Famo(example.MultiTask):
        def __init__(self, closure: bool) -> None:
            super().__init__()
            self.method, self.closure = mtgrad.FAMO(example.TASKS), closure

        def training_step(self, batch, batch_idx):
            recompute = (lambda: self.task_losses(*batch)) if self.closure else None
            mtgrad.lightning.surgery_step(self, self.task_losses(*batch), self.trunk.parameters(), self.method, closure=recompute)

    with pytest.raises(ValueError, match="FAMO learns from the losses after the step: pass closure="):
        _fit_two_steps(Famo(closure=False))
    module = Famo(closure=True)
    _fit_two_steps(module)  # two steps, each followed by after_step on the recomputed losses
    assert module.method.prev_losses is None and not torch.equal(module.method.logits.detach(), torch.zeros(example.TASKS))

    class Bad(example.MultiTask):
        def __init__(self, accumulate) -> None:
            super().__init__()
            self.bad = accumulate

        def training_step(self, batch, batch_idx):
            mtgrad.lightning.surgery_step(self, self.task_losses(*batch), self.trunk.parameters(), self.method, accumulate=self.bad)

    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="accumulate must be a positive int"):
            _fit_two_steps(Bad(bad))

    class Switching(example.MultiTask):  # a new method in the middle of an accumulated step
        def training_step(self, batch, batch_idx):
            self.method = mtgrad.PCGrad()
            mtgrad.lightning.surgery_step(self, self.task_losses(*batch), self.trunk.parameters(), self.method, accumulate=3)

    with pytest.raises(ValueError, match="got another method.*in the middle of an accumulated step"):
        _fit_two_steps(Switching())

    class Changing(example.MultiTask):  # accumulate=3, then 1 while the window holds a batch
        def training_step(self, batch, batch_idx):
            k = 3 if batch_idx == 0 else 1
            mtgrad.lightning.surgery_step(self, self.task_losses(*batch), self.trunk.parameters(), self.method, accumulate=k)

    with pytest.raises(ValueError, match=r"accumulate=1\) in the middle of an accumulated step \(1 batch\(es\) of accumulate=3"):
        _fit_two_steps(Changing())

    class Shrinking(example.MultiTask):  # accumulate=3 for batches 0-1, then 2: batch 2 would open a window
        def training_step(self, batch, batch_idx):
            k = 3 if batch_idx < 2 else 2
            mtgrad.lightning.surgery_step(self, self.task_losses(*batch), self.trunk.parameters(), self.method, accumulate=k)

    with pytest.raises(ValueError, match=r"another method, accumulate.*\(2 batch\(es\) held\)"):
        _fit_two_steps(Shrinking())

    class Closure(example.MultiTask):
        def training_step(self, batch, batch_idx):
            mtgrad.lightning.surgery_step(
                self, self.task_losses(*batch), self.trunk.parameters(), self.method, accumulate=2, closure=lambda: None
            )

    with pytest.raises(ValueError, match="closure= .* needs accumulate=1"):
        _fit_two_steps(Closure())


def test_accumulated_windows_follow_the_batch_index_and_take_the_shared_module():
    example = _example()

    class Resumed(example.MultiTask):  # as if resumed from a checkpoint taken after batch 0
        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                return
            record = mtgrad.lightning.surgery_step(self, self.task_losses(*batch) / 3, self.trunk, self.method, accumulate=3)
            self.stepped.append((batch_idx, record is not None))

    module = Resumed()
    module.stepped = []
    with pytest.warns(mtgrad.MtgradWarning, match=r"batch 1 of an accumulated step without the ones before it"):
        _fit_two_steps(module)
    # Windows [0, 3), [3, 6): the first steps at batch 2 on batches 1–2, the next at batch 5.
    assert module.stepped == [(1, False), (2, True), (3, False), (4, False), (5, True)]


def test_metrics_of_a_record():
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    record = mtgrad.BackwardResult(weights=torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64), gramian=J @ J.T)
    m = mtgrad.lightning.diagnostics_metrics(record)
    assert m["mtgrad/conflict_rate"] == pytest.approx(1 / 3)
    assert m["mtgrad/cos_0_1"] == pytest.approx(-2**-0.5)
    assert m["mtgrad/min_cosine"] == pytest.approx(-2**-0.5)
    assert m["mtgrad/weight_1"] == 1.5
    assert mtgrad.lightning.diagnostics_metrics(mtgrad.BackwardResult(weights=None, gramian=None)) == {}


def test_surgery_step_needs_manual_optimisation():
    class Auto(lightning.LightningModule):
        pass

    with pytest.raises(ValueError, match="automatic_optimization = False"):
        mtgrad.lightning.surgery_step(Auto(), [torch.zeros(())], [], mtgrad.PCGrad())
    with pytest.raises(ValueError, match="every_n_steps"):
        mtgrad.lightning.ConflictLogger(every_n_steps=0)


def test_16_mixed_hands_the_precision_plugins_scaler_to_the_surgery(tmp_path, monkeypatch):
    example = _example()
    seen = []
    original = mtgrad.lightning.backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scaler"))
        return original(*args, **kwargs)

    monkeypatch.setattr(mtgrad.lightning, "backward", spy)
    # Lightning turns precision="16-mixed" into bf16 on a CPU; the plugin given explicitly keeps fp16.
    plugin = lightning.pytorch.plugins.precision.MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, plugins=[plugin], max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(example.MultiTask())
    assert len(seen) == 3 and all(isinstance(s, torch.amp.GradScaler) and s.is_enabled() for s in seen)
    assert seen[0] is trainer.precision_plugin.scaler
    assert trainer.precision_plugin.scaler.get_scale() > 0  # the scaler stepped and updated


def test_16_mixed_accumulation_equals_mtloptimizer_with_the_same_scaler():
    from torch.utils.data import DataLoader

    example = _example()
    k, epochs = 3, 2
    # A scale of 2^18 overflows fp16 at first: those steps are skipped and the scale backs off, on
    # both sides alike; the later ones train.
    torch.manual_seed(0)
    reference = example.MultiTask()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**18)
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(reference.parameters(), lr=0.2), reference.trunk.parameters(),
                              reference.method, scaler=scaler)  # fmt: skip
    for _ in range(epochs):
        batches = list(DataLoader(example.data(), batch_size=example.BATCH))
        for start in range(0, len(batches), k):
            opt.zero_grad()
            for x, y in batches[start : start + k]:
                with torch.autocast("cpu", dtype=torch.float16):
                    losses = reference.task_losses(x, y)
                opt.backward(losses / k)
            opt.step()

    torch.manual_seed(0)
    module = example.MultiTask(k)
    plugin = lightning.pytorch.plugins.precision.MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**18)
    )
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, plugins=[plugin], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    torch.manual_seed(0)
    start = [p.detach().clone() for p in example.MultiTask().parameters()]
    trainer.fit(module)
    assert plugin.scaler.get_scale() == scaler.get_scale() < 2.0**18  # the same overflows were skipped
    assert max((a - b).abs().max().item() for a, b in zip(reference.parameters(), start)) > 1e-2  # it trained
    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
