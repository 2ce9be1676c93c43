"""Mixed precision: ``backward(..., scaler=GradScaler)`` gives every method the unscaled task
gradients, leaves ``.grad`` scaled for ``scaler.step``, and lets an overflow skip the step."""

from __future__ import annotations

import pytest
import torch

import mtgrad
from mtgrad.gramian import gramian

T = 3


def _model_and_losses(seed: int = 0, blow_up: float = 1.0):
    torch.manual_seed(seed)
    trunk = torch.nn.Linear(5, 8)
    heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(T))
    x, y = torch.randn(16, 5), torch.randn(16, T)
    z = torch.tanh(trunk(x))
    losses = [((h(z).squeeze(-1) - y[:, i]) ** 2).mean() * (i + 1) for i, h in enumerate(heads)]
    losses[0] = losses[0] * blow_up
    return trunk, heads, losses


def _grads(module_list):
    return [p.grad.clone() for m in module_list for p in m.parameters()]


METHODS = {
    "nashmtl": mtgrad.NashMTL,
    "fairgrad": lambda: mtgrad.FairGrad(alpha=2.0),
    "imtlg": mtgrad.IMTLG,
    "mgda_l2": lambda: mtgrad.MGDA(normalization="l2", apply_to="normalized"),
    "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
    "cagrad_fast": lambda: mtgrad.CAGradFast(c=0.4, num_gradients=2, generator=torch.Generator().manual_seed(0)),
    "uw": lambda: mtgrad.UW(num_tasks=T),
}


@pytest.mark.parametrize("engine", ["loop", "batched", "gramian"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_update_does_not_depend_on_the_loss_scale(name, engine):
    """After ``scaler.unscale_`` (what ``scaler.step`` does first) every ``.grad`` equals the
    unscaled run's: scale-sensitive methods (Nash-MTL, FairGrad, normalised MGDA) included."""
    if engine == "gramian" and name == "uw":
        pytest.skip("a loss weighting takes no engine")
    results = []
    for scale in (None, 2.0**16):
        torch.manual_seed(0)
        trunk = torch.nn.Linear(5, 8)
        heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(T))
        chosen = mtgrad.GramianEngine(trunk) if engine == "gramian" else engine
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, T, generator=gen)
        z = torch.tanh(trunk(x))
        losses = [((h(z).squeeze(-1) - y[:, i]) ** 2).mean() * (i + 1) for i, h in enumerate(heads)]
        opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
        scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
        mtgrad.backward(losses, trunk.parameters(), METHODS[name](), scaler=scaler, engine=chosen)
        if scaler is not None:
            scaler.unscale_(opt)
        results.append(_grads([trunk, heads]))
        if engine == "gramian":
            chosen.close()
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_an_overflow_skips_the_step_and_backs_off_the_scale():
    trunk, heads, losses = _model_and_losses(blow_up=1e34)  # finite; ×2¹⁶ overflows fp32 gradients
    params = [*trunk.parameters(), *heads.parameters()]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    mtgrad.backward(losses, trunk.parameters(), mtgrad.NashMTL(), scaler=scaler)  # no exception
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b) and bool(torch.isfinite(p).all())


def test_without_a_scaler_the_same_overflow_is_an_error():
    trunk, heads, losses = _model_and_losses(blow_up=1e34)
    losses = [loss * 2.0**16 for loss in losses]
    with pytest.raises(ValueError, match="NaN or inf"):
        mtgrad.backward(losses, trunk.parameters(), mtgrad.NashMTL())


def test_mtl_optimizer_steps_through_the_scaler():
    trunk, heads, losses = _model_and_losses()
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mtl = mtgrad.MTLOptimizer(opt, trunk.parameters(), mtgrad.PCGrad(), scaler=scaler)
    before = trunk.weight.detach().clone()
    mtl.step(losses)
    assert not torch.equal(trunk.weight.detach(), before)
    assert scaler.get_scale() == 2.0**10  # no overflow: unchanged (growth only after 2000 steps)


def test_a_disabled_scaler_and_a_wrong_type():
    trunk, heads, losses = _model_and_losses()
    mtgrad.backward(losses, trunk.parameters(), mtgrad.Mean(), scaler=torch.amp.GradScaler("cpu", enabled=False))
    trunk, heads, losses = _model_and_losses()
    with pytest.raises(TypeError, match="GradScaler"):
        mtgrad.backward(losses, trunk.parameters(), mtgrad.Mean(), scaler=2.0**16)


@pytest.mark.parametrize("method", [mtgrad.PCGrad(order="fixed"), mtgrad.GradDrop(generator=torch.Generator().manual_seed(0))])
def test_the_recorded_gramian_is_in_the_gradients_true_units(method):
    trunk, heads, losses = _model_and_losses()
    plain = mtgrad.backward(losses, trunk.parameters(), method).gramian
    trunk, heads, losses = _model_and_losses()
    if isinstance(method, mtgrad.GradDrop):
        method.generator.manual_seed(0)
    scaled = mtgrad.backward(losses, trunk.parameters(), method, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16)).gramian
    torch.testing.assert_close(scaled, plain, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# Called inside an autocast region (Lightning's "bf16-mixed" runs training_step under one)
# --------------------------------------------------------------------------------------------


def _bf16_step(inside: bool, engine, method, entry: str):
    """The trunk's and heads' ``.grad`` after one step whose forward runs under bf16 autocast;
    mtgrad is called inside the autocast block or after it."""
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh())
    heads = torch.nn.ModuleList(torch.nn.Linear(16, 1) for _ in range(T))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 6, generator=gen), torch.randn(24, T, generator=gen)
    chosen = mtgrad.GramianEngine(trunk) if engine == "gramian" else engine
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.1), trunk.parameters(), method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = trunk(x)
        losses = [((h(z).squeeze(-1).float() - y[:, i]) ** 2).mean() * (i + 1) for i, h in enumerate(heads)]
        if inside:
            _call(entry, opt, losses, trunk, method, chosen, z)
    if not inside:
        _call(entry, opt, losses, trunk, method, chosen, z)
    return [p.grad.clone() for m in (trunk, heads) for p in m.parameters()]


def _call(entry, opt, losses, trunk, method, engine, z):
    if entry == "backward":
        mtgrad.backward(losses, trunk.parameters(), method, engine=engine)
    elif entry == "representation":
        mtgrad.backward(losses, trunk.parameters(), method, representation=z)
    else:  # accumulated: two halves of the losses as two micro-batches of one step
        opt.backward([loss / 2 for loss in losses], retain_graph=True)
        opt.backward([loss / 2 for loss in losses])
        opt.apply()


@pytest.mark.parametrize(
    "engine, entry",
    [("loop", "backward"), ("batched", "backward"), ("gramian", "backward"), ("loop", "representation"),
     ("loop", "accumulated")],
)
@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "sum"])
def test_a_call_inside_autocast_gives_the_call_after_it(name, engine, entry):
    # The combination Σ w_i g_i and the Gramian pieces are mtgrad's arithmetic, not the model's:
    # inside bf16 autocast they ran in bf16, 2e-3 relative off the same call after the block.
    make = {"pcgrad": lambda: mtgrad.PCGrad(order="fixed"), "cagrad": lambda: mtgrad.CAGrad(0.4), "sum": mtgrad.Sum}[name]
    after, inside = _bf16_step(False, engine, make(), entry), _bf16_step(True, engine, make(), entry)
    for a, b in zip(after, inside):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_aggregate_and_grouped_backward_inside_autocast():
    J = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    expected = mtgrad.aggregate(J, mtgrad.CAGrad(0.4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mtgrad.aggregate(J, mtgrad.CAGrad(0.4))
        torch.testing.assert_close(mtgrad.aggregate(J, mtgrad.Sum()), J.sum(0), rtol=1e-6, atol=1e-6)
        assert torch.is_autocast_enabled("cpu")  # the caller's region is left as it was
    torch.testing.assert_close(inside, expected, rtol=1e-6, atol=1e-7)

    model = torch.nn.Linear(4, 1)
    batch = (torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(1)), torch.randn(3, 8, 1))

    def task_loss(params, rows):
        out = torch.func.functional_call(model, params, (rows[0],))
        return ((out.float() - rows[1]) ** 2).mean()

    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mtgrad.grouped_backward(model, task_loss, batch, mtgrad.PCGrad(order="fixed"))
        _, per_task = mtgrad.grouped_task_gradients(model, task_loss, batch)
    # The forward keeps the caller's autocast (its per-task gradients are bf16 computations); the
    # Gramian and the combination are float64/float32 ones, as outside autocast.
    w = mtgrad.PCGrad(order="fixed").weights(gramian([g.flatten(1) for g in per_task.values()]))
    for g, p in zip(per_task.values(), model.parameters()):
        torch.testing.assert_close(p.grad, torch.tensordot(w.to(g.dtype), g, dims=1), rtol=1e-6, atol=1e-7)
