"""MTLOptimizer: equals backward + step, restores exactly, guards its hooks."""

from __future__ import annotations

import copy

import pytest
import torch

import mtgrad


def make_model(seed: int = 0) -> torch.nn.ModuleDict:
    torch.manual_seed(seed)
    return torch.nn.ModuleDict(
        {"trunk": torch.nn.Linear(4, 8), "heads": torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(3))}
    )


def task_losses(model: torch.nn.ModuleDict, x: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
    z = torch.tanh(model["trunk"](x))
    return [torch.nn.functional.mse_loss(h(z).squeeze(-1), y) for h, y in zip(model["heads"], ys)]


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g), torch.randn(3, 16, generator=g)) for _ in range(n)]


def test_step_equals_backward_then_step():
    a, b = make_model(), make_model()
    opt_a = mtgrad.MTLOptimizer(torch.optim.SGD(a.parameters(), lr=0.1), a["trunk"].parameters(), mtgrad.CAGrad(0.5))
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    for x, ys in batches(3):
        opt_a.zero_grad()
        opt_a.step(task_losses(a, x, ys))
        opt_b.zero_grad()
        mtgrad.backward(task_losses(b, x, ys), b["trunk"].parameters(), mtgrad.CAGrad(0.5))
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def run(model, opt, data):
    for x, ys in data:
        opt.zero_grad()
        opt.step(task_losses(model, x, ys))


def test_state_dict_resumes_identically_with_random_pcgrad():
    data = batches(6)
    model = make_model()
    opt = mtgrad.MTLOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        model["trunk"].parameters(),
        mtgrad.PCGrad(generator=torch.Generator().manual_seed(3)),
    )
    run(model, opt, data[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, data[3:])

    resumed = make_model(seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = mtgrad.MTLOptimizer(
        torch.optim.Adam(resumed.parameters(), lr=1e-2),
        resumed["trunk"].parameters(),
        mtgrad.PCGrad(generator=torch.Generator().manual_seed(12345)),
    )
    opt2.load_state_dict(saved_opt)
    run(resumed, opt2, data[3:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_rejects_shared_params_the_optimizer_does_not_manage():
    model = make_model()
    opt = torch.optim.SGD(model["heads"].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not managed by the optimizer"):
        mtgrad.MTLOptimizer(opt, model["trunk"].parameters(), mtgrad.PCGrad())


def test_loss_weighting_parameters_join_the_optimizer():
    model = make_model()
    uw = mtgrad.UW(num_tasks=3)
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), uw)
    before = uw.parameters()[0].detach().clone()
    (x, ys), = batches(1)
    opt.zero_grad()
    opt.step(task_losses(model, x, ys))
    assert not torch.equal(before, uw.parameters()[0].detach())


def test_famo_without_closure_is_an_error_not_a_silent_no_op():
    model = make_model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), mtgrad.FAMO(3))
    (x, ys), = batches(1)
    with pytest.raises(ValueError, match="closure"):
        opt.step(task_losses(model, x, ys))
    opt.step(task_losses(model, x, ys), closure=lambda: task_losses(model, x, ys))


def test_end_epoch_reaches_dwa_and_is_harmless_elsewhere():
    model = make_model()
    dwa = mtgrad.DWA()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), dwa)
    for epoch in range(3):
        for x, ys in batches(2, seed=epoch):
            opt.zero_grad()
            record = opt.step(task_losses(model, x, ys))
        opt.end_epoch()
    # From the third epoch on DWA's weights depend on the loss ratios, so they are no longer all 1.
    assert not torch.allclose(record.weights, torch.ones(3, dtype=torch.float64))
    mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), mtgrad.PCGrad()).end_epoch()


def test_lr_schedulers_drive_it_and_resume_with_it():
    """A scheduler accepts MTLOptimizer (it is an Optimizer), sets the inner optimizer's lr,
    and scheduler + optimizer state dicts resume a run identically."""

    def build():
        model = make_model()
        opt = mtgrad.MTLOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(),
            mtgrad.PCGrad(generator=torch.Generator().manual_seed(3)),
        )  # fmt: skip
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    model, opt, sched = build()
    assert isinstance(opt, torch.optim.Optimizer)
    data = batches(6)
    lrs = []
    for k, (x, ys) in enumerate(data):
        if k == 3:
            saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
        opt.zero_grad()
        opt.step(task_losses(model, x, ys))
        sched.step()
        lrs.append(opt.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])

    resumed, opt2, sched2 = build()
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    for x, ys in data[3:]:
        opt2.zero_grad()
        opt2.step(task_losses(resumed, x, ys))
        sched2.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_one_cycle_schedule_reads_defaults_and_groups():
    model = make_model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                              model["trunk"].parameters(), mtgrad.MGDA())  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=4)
    (x, ys), = batches(1)
    opt.zero_grad()
    opt.step(task_losses(model, x, ys))
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"] > 0.04


def test_copies_pickles_and_step_hooks_work_and_leave_other_instances_alone():
    import pickle

    model = make_model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), mtgrad.MGDA())
    restored = pickle.loads(pickle.dumps(opt))
    assert isinstance(restored.optimizer, torch.optim.SGD) and isinstance(restored.method, mtgrad.MGDA)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    twin = copy.deepcopy(opt)
    assert isinstance(twin.optimizer, torch.optim.SGD) and repr(twin).startswith("MTLOptimizer(SGD")
    (x, ys), = batches(1)
    fresh = make_model()
    other = mtgrad.MTLOptimizer(torch.optim.SGD(fresh.parameters(), lr=0.1), fresh["trunk"].parameters(), mtgrad.MGDA())
    other.zero_grad()
    other.step(task_losses(fresh, x, ys))  # copies elsewhere must not break a new instance
    opt.zero_grad()
    opt.step(task_losses(model, x, ys))
    assert calls == ["pre", "post"]


def test_a_copy_made_after_a_scheduler_steps_its_own_parameters():
    model = make_model()
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model["trunk"].parameters(), mtgrad.MGDA())
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    twin_model, twin = copy.deepcopy((model, opt))
    (x, ys), = batches(1)
    before = [p.detach().clone() for p in model.parameters()]
    twin.zero_grad()
    twin.step(task_losses(twin_model, x, ys))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the original is untouched
    assert not all(torch.equal(a, b) for a, b in zip(before, twin_model.parameters()))
