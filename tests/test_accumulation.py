"""Gradient accumulation: per-task gradients summed over micro-batches, the method applied once,
equals the large-batch step; per-micro-batch surgery does not."""

from __future__ import annotations

import warnings

import pytest
import torch

import mtgrad

T, B, K = 3, 24, 3  # tasks, batch, micro-batches


def _model():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(5, 8)
    heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(T))
    return trunk, heads


def _data():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(B, 5, generator=gen), torch.randn(B, T, generator=gen)


def _losses(trunk, heads, x, y, share):
    """Task losses as sums over the rows, times ``share``: micro-batch losses add up to the batch's."""
    z = torch.tanh(trunk(x))
    return [((h(z).squeeze(-1) - y[:, i]) ** 2).sum() * share * (i + 1) for i, h in enumerate(heads)]


def _grads(trunk, heads):
    return [p.grad.clone() for p in [*trunk.parameters(), *heads.parameters()]]


METHODS = {
    "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
    "cagrad": lambda: mtgrad.CAGrad(c=0.4),
    "mgda": mtgrad.MGDA,
    "nashmtl": mtgrad.NashMTL,
    "graddrop": lambda: mtgrad.GradDrop(generator=torch.Generator().manual_seed(0)),
    "cagrad_fast": lambda: mtgrad.CAGradFast(c=0.4, num_gradients=2, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("engine", ["loop", "batched"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_accumulated_micro_batches_give_the_large_batch_step(name, engine):
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), METHODS[name](), engine=engine)
    big = _grads(trunk, heads)

    trunk, heads = _model()
    grads = None
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), into=grads, engine=engine)
    assert grads.micro_batches == K and trunk.weight.grad is None  # shared .grad untouched until applied
    mtgrad.apply_task_gradients(grads, METHODS[name]())
    for a, b in zip(big, _grads(trunk, heads)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_per_micro_batch_surgery_is_not_the_large_batch_step():
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), mtgrad.PCGrad(order="fixed"))
    big = trunk.weight.grad.clone()
    trunk, heads = _model()
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        mtgrad.backward(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), mtgrad.PCGrad(order="fixed"))
    assert not torch.allclose(trunk.weight.grad, big, rtol=1e-3)


@pytest.mark.parametrize("name", ["pcgrad", "nashmtl"])
def test_mtl_optimizer_backward_then_step_is_the_large_batch_step(name):
    x, y = _data()
    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), METHODS[name]())
    opt.step(_losses(trunk, heads, x, y, 1.0 / B))
    big = [p.detach().clone() for p in trunk.parameters()]

    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), METHODS[name]())
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
    opt.step()
    for a, b in zip(big, trunk.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the losses"):
        opt.step()  # nothing accumulated any more


def test_accumulation_refuses_what_cannot_accumulate():
    x, y = _data()
    trunk, heads = _model()
    engine = mtgrad.GramianEngine(trunk)
    with pytest.raises(ValueError, match="Gramian-only engine"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), trunk.parameters(), engine=engine)
    engine.close()
    grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), trunk.parameters())
    with pytest.raises(TypeError, match="loss weighting"):
        mtgrad.apply_task_gradients(grads, mtgrad.UW(num_tasks=T))
    with pytest.raises(ValueError, match="tasks' gradients"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0)[:2], trunk.parameters(), into=grads)
    with pytest.raises(ValueError, match="other shared parameters"):
        mtgrad.accumulate_task_gradients(_losses(trunk, heads, x, y, 1.0), [trunk.weight], into=grads)


def test_accumulation_under_a_grad_scaler_matches_the_unscaled_large_batch():
    x, y = _data()
    trunk, heads = _model()
    mtgrad.backward(_losses(trunk, heads, x, y, 1.0 / B), trunk.parameters(), mtgrad.NashMTL())
    big = _grads(trunk, heads)
    trunk, heads = _model()
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    grads = None
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        grads = mtgrad.accumulate_task_gradients(_losses(trunk, heads, xb, yb, 1.0 / B), trunk.parameters(), into=grads, scaler=scaler)
    mtgrad.apply_task_gradients(grads, mtgrad.NashMTL())
    scaler.unscale_(opt)
    for a, b in zip(big, _grads(trunk, heads)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_zero_grad_drops_what_backward_accumulated():
    x, y = _data()
    for method in (mtgrad.PCGrad(), mtgrad.UW(num_tasks=T)):
        trunk, heads = _model()
        opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), method)
        opt.backward(_losses(trunk, heads, x, y, 1.0 / B))
        opt.zero_grad()
        with pytest.raises(ValueError, match="needs the losses"):
            opt.step()


# --------------------------------------------------------------------------------------------
# Loss weightings: exact where the objective is linear in the losses, refused elsewhere
# --------------------------------------------------------------------------------------------

LINEAR = {
    "uw": lambda: mtgrad.UW(num_tasks=T, init=-0.3),
    "imtll": lambda: mtgrad.IMTLL(num_tasks=T),
    "dwa_window": lambda: mtgrad.DWA(window=2),
    "dwa_epoch": mtgrad.DWA,
}


def _weighted_run(make, micro: int, steps: int = 5, scaler=None):
    """Parameters (model and method) after ``steps`` steps on fresh batches, each taken whole
    (``micro = 1``: ``step(losses)``) or as ``micro`` micro-batches (``backward`` each, ``step()``)."""
    trunk, heads = _model()
    method = make()
    opt = mtgrad.MTLOptimizer(
        torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.05), trunk.parameters(), method, scaler=scaler
    )
    gen = torch.Generator().manual_seed(5)
    for step in range(steps):
        x, y = torch.randn(B, 5, generator=gen), torch.randn(B, T, generator=gen)
        opt.zero_grad()
        if micro == 1:
            record = opt.step(_losses(trunk, heads, x, y, 1.0 / B))
        else:
            for xb, yb in zip(x.chunk(micro), y.chunk(micro)):
                opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
            record = opt.step()
        if step in (1, 3) and getattr(method, "window", None) == "epoch":
            opt.end_epoch()  # epochs of two steps: its weights move from the fifth step on
    return [p.detach().clone() for p in [*trunk.parameters(), *heads.parameters(), *method.parameters()]], record


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_a_linear_loss_weighting_accumulates_to_the_large_batch_step(name):
    # UW's regulariser ½Σs counted once per micro-batch, and DWA's window counting micro-batches
    # as steps, put the parameters 0.14 and 0.03 off the whole-batch run after ten steps.
    whole, record = _weighted_run(LINEAR[name], 1)
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        parts, parts_record = _weighted_run(LINEAR[name], K, scaler=scaler)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts_record.weights, record.weights, rtol=1e-5, atol=1e-6)


def test_linear_terms_are_the_papers_objectives():
    # Written out from each paper, not from the classes: UW ½Σ(e^{-s}L + s), IMTL-L Σ(e^s L − s),
    # DWA λ = K softmax(w/τ) with w the ratio of the last two windows' average losses.
    losses = torch.tensor([0.7, 1.3, 0.2])
    uw = mtgrad.UW(num_tasks=T, init=-0.3)
    a, r = uw.linear_terms(losses)
    s = uw.log_vars.detach()
    torch.testing.assert_close((a * losses).sum() + r, 0.5 * (torch.exp(-s) * losses + s).sum())
    torch.testing.assert_close(a.detach(), 0.5 * torch.exp(-s))
    imtll = mtgrad.IMTLL(num_tasks=T, init=0.2)
    a, r = imtll.linear_terms(losses)
    s = imtll.log_scales.detach()
    torch.testing.assert_close((a * losses).sum() + r, (torch.exp(s) * losses - s).sum())
    dwa = mtgrad.DWA(window=1, temperature=2.0)
    torch.testing.assert_close(dwa.linear_terms(losses)[0], torch.ones(T))
    older, recent = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 2.0, 3.0])
    dwa.observe(older)
    dwa.observe(recent)
    expected = T * torch.softmax((recent / older) / 2.0, dim=0)
    a, r = dwa.linear_terms(losses)
    torch.testing.assert_close(a, expected)
    assert r is None


@pytest.mark.parametrize(
    "make, why",
    [(mtgrad.GLS, "GLS's objective is not"), (lambda: mtgrad.FAMO(num_tasks=T), "FAMO's objective is not"),
     (lambda: mtgrad.DWA(window=2, sliding=True), "includes the step's own losses"),
     (lambda: mtgrad.GradNorm(num_tasks=T, last_shared=torch.nn.Parameter(torch.ones(8, 5))), "gradient norms at last_shared")],
)
def test_a_nonlinear_loss_weighting_is_refused_under_accumulation(make, why):
    trunk, heads = _model()
    x, y = _data()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), make())
    with pytest.raises(ValueError, match=f"{why}.*cannot accumulate it; call step\\(losses\\)"):
        opt.backward(_losses(trunk, heads, x, y, 1.0 / B))
    assert all(p.grad is None for p in [*trunk.parameters(), *heads.parameters()])  # nothing written


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaler"])
@pytest.mark.parametrize("make", [lambda: mtgrad.PCGrad(order="fixed"), lambda: mtgrad.UW(num_tasks=T)], ids=["pcgrad", "uw"])
def test_apply_then_clip_then_step(make, scaled):
    # The documented flow: apply() writes .grad, the user clips it (under a scaler: after
    # scaler.unscale_(opt), on the wrapper), step() steps on it.
    x, y = _data()
    runs = []
    for clip in (False, True):
        trunk, heads = _model()
        params = [*trunk.parameters(), *heads.parameters()]
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None
        opt = mtgrad.MTLOptimizer(torch.optim.SGD(params, lr=0.1), trunk.parameters(), make(), scaler=scaler)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for xb, yb in zip(x.chunk(K), y.chunk(K)):
            opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
        record = opt.apply()
        if scaler is not None:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1e-2 if clip else float("inf"))
        with pytest.raises(ValueError, match="apply\\(\\) already wrote this step's update"):
            opt.step(_losses(trunk, heads, x, y, 1.0 / B))
        with pytest.raises(ValueError, match="apply\\(\\) already wrote this step's update"):
            opt.backward(_losses(trunk, heads, x, y, 1.0 / B))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
            assert opt.step() is record
            scheduler.step()
        runs.append((norm, [p.detach().clone() for p in params]))
        with pytest.raises(ValueError, match="needs the losses"):
            opt.step()  # the applied update was taken once
    (norm, plain), (_, clipped) = runs
    start = [p.detach() for p in [*_model()[0].parameters(), *_model()[1].parameters()]]
    factor = min(1.0, 1e-2 / (float(norm) + 1e-6))  # clip_grad_norm_'s scaling
    for p0, a, b in zip(start, plain, clipped):
        torch.testing.assert_close(b - p0, (a - p0) * factor, rtol=1e-5, atol=1e-7)
    if scaled:  # unscaled once: the same step as without a scaler
        unscaled = [p.detach() for p in _weighted_or_plain_step(make, x, y)]
        for a, b in zip(unscaled, plain):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def _weighted_or_plain_step(make, x, y):
    trunk, heads = _model()
    params = [*trunk.parameters(), *heads.parameters()]
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(params, lr=0.1), trunk.parameters(), make())
    for xb, yb in zip(x.chunk(K), y.chunk(K)):
        opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
    opt.step()
    return params


def test_the_inner_optimizers_step_takes_what_apply_wrote():
    # apply(), clip, opt.optimizer.step() (stepping the inner optimizer directly) still works,
    # and the next step is a new one.
    x, y = _data()
    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), mtgrad.PCGrad())
    opt.backward(_losses(trunk, heads, x, y, 1.0 / B))
    opt.apply()
    opt.optimizer.step()
    trunk.zero_grad()
    heads.zero_grad()
    opt.step(_losses(trunk, heads, x, y, 1.0 / B))  # not refused as "apply() already wrote"


def test_a_loss_weighting_checks_each_micro_batch_and_holds_no_engine_records():
    x, y = _data()
    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk, mtgrad.DWA(window=2))
    with pytest.raises(ValueError, match="positive"):
        opt.backward([loss - 1e3 for loss in _losses(trunk, heads, x, y, 1.0 / B)])
    assert all(p.grad is None for p in [*trunk.parameters(), *heads.parameters()])  # refused before writing
    for _ in range(3):
        for xb, yb in zip(x.chunk(K), y.chunk(K)):
            opt.backward(_losses(trunk, heads, xb, yb, 1.0 / B))
        with pytest.raises(ValueError, match="end_epoch\\(\\) in the middle of an accumulated step"):
            opt.end_epoch()
        opt.step()
    engine = mtgrad.autogram.engine_for(trunk, create=False)
    assert engine is None or engine.num_recorded == 0


def test_a_loss_weighting_takes_its_micro_batch_losses_as_a_generator():
    # The losses are read once: a generator (as mtgrad.backward accepts) is not consumed twice.
    x, y = _data()
    trunk, heads = _model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), mtgrad.UW(num_tasks=T))
    opt.backward(loss for loss in _losses(trunk, heads, x, y, 1.0 / B))
    assert opt.step().weights.shape == (T,) and trunk.weight.grad is not None
