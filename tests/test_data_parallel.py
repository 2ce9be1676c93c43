"""Data parallelism on 2 CPU ranks (gloo, spawned processes, a file store): the exact global step.

One spawn runs every case (method × entry point) on both ranks; each case must leave both ranks
with the same parameters, equal to one process trained on the whole batch. The rank-local mode
(``data_parallel=False``) keeps the ranks equal through DDP's average but is a different step.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mtgrad
from distributed_cases import ENTRIES, METHODS, UNSUPPORTED, run_case, worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

WORLD = 2
EXACT = [(m, e) for m in METHODS for e in ENTRIES if (m, e) not in UNSUPPORTED]
LOCAL = ["pcgrad", "cagrad", "mgda"]
CASES = [(m, e, "exact") for m, e in EXACT] + [(m, "loop", "local") for m in LOCAL] + [("-", "-", "refusals")]


def _spawn(tmp_path, cases: list[tuple[str, str, str]], timeout_s: float = 240.0) -> list[dict]:
    store = str(tmp_path / "store")
    ctx = mp.start_processes(worker, args=(WORLD, store, str(tmp_path), cases), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {WORLD} ranks did not finish within {timeout_s} s")
    except Exception:
        errors = [p.read_text() for p in sorted(tmp_path.glob("rank*.err"))]
        for process in ctx.processes:
            if process.is_alive():
                process.kill()
        raise AssertionError("a rank failed:\n" + "\n".join(errors)) from None
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("ddp"), CASES)


def _whole_batch(method: str, entry: str) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    return run_case(method, entry, slice(None), seed=7, wrap=lambda model: model)


@pytest.mark.parametrize("method,entry", EXACT)
def test_every_rank_takes_the_whole_batch_step(ranks, method, entry):
    (rank0, grams0), (rank1, grams1) = (r[(method, entry, "exact")] for r in ranks)
    reference, grams = _whole_batch(method, entry)
    for a, b, ref in zip(rank0, rank1, reference):
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=1e-14)
        torch.testing.assert_close(a, ref, rtol=1e-11, atol=1e-12)
    # The Gramian itself is the global batch's (scale-invariant methods would hide a wrong 1/W).
    for g0, g1, g in zip(grams0, grams1, grams):
        if g is None:  # CAGrad-Fast records none when it sampled
            assert g0 is None and g1 is None
        else:
            torch.testing.assert_close(g0, g, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(g1, g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", LOCAL)
def test_rank_local_surgery_keeps_ranks_equal_but_is_another_step(ranks, method):
    (rank0, _), (rank1, _) = (r[(method, "loop", "local")] for r in ranks)
    for a, b in zip(rank0, rank1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    reference, _ = _whole_batch(method, "loop")
    trunk = len(list(nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 8)).parameters()))
    deviation = max((a - ref).abs().max().item() for a, ref in zip(rank0[:trunk], reference[:trunk]))
    assert deviation > 1e-6  # averaging per-rank surgeries is not the global surgery


def test_a_bad_input_on_one_rank_is_refused_on_every_rank(ranks):
    # NaN loss on rank 1 only: backward, then accumulate; then rank-local accumulation (drifts).
    for r in ranks:
        assert r[("-", "-", "refusals")] == ["refused", "refused", "refused"]


def test_single_process_ignores_data_parallel_default():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="init_process_group"):
        model = nn.Linear(2, 2)
        out = model(torch.ones(1, 2)).squeeze(0)
        mtgrad.backward([out[0], out[1]], model.parameters(), mtgrad.PCGrad(), data_parallel=True)


def test_the_documented_example_runs_and_its_ranks_agree():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "docs" / "examples" / "ddp.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    report = f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    assert "ranks agree: True" in done.stdout, report
