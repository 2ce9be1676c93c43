"""Every method × every entry point × every engine works, or refuses with an error naming the method.

Entry points: ``aggregate`` (a stored Jacobian), ``backward`` with the loop, batched and
Gramian-only engines and with ``representation=``, ``grouped_backward`` (each task its own rows)
and ``MTLOptimizer.step``. Where a combination works, the engines agree with the loop engine, and
an error leaves every ``.grad`` as it was.
"""

from __future__ import annotations

import importlib
import re

import pytest
import torch

import mtgrad
from mtgrad.autogram import engine_for
from mtgrad.bench import trainer
from mtgrad.methods.spec import check_distinct

T, B, D_IN, D_HID = 3, 8, 5, 6
NAMES = sorted(mtgrad.REGISTRY) + ["reuse"]


def make_method(name: str) -> mtgrad.Method:
    gen = torch.Generator().manual_seed(7)
    if name == "reuse":
        return mtgrad.Reuse(mtgrad.PCGrad(generator=gen), every=2)
    if name == "gradnorm":
        return mtgrad.GradNorm(num_tasks=T, last_shared=[_TRUNK.weight])
    return mtgrad.from_spec(name, generator=gen, num_tasks=T)


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Linear(D_IN, D_HID)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(D_HID, 1) for _ in range(T))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = torch.tanh(self.trunk(x))
        return [((h(z).squeeze(-1) - y[:, i]) ** 2).mean() * (i + 1) for i, h in enumerate(self.heads)], z


_TRUNK = torch.nn.Linear(D_IN, D_HID)  # placeholder for GradNorm's construction; replaced per run


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, D_IN, generator=gen), torch.randn(B, T, generator=gen)


def _run(name: str, entry: str) -> list[torch.Tensor] | str:
    """The shared and head ``.grad`` after one call, or the error message."""
    global _TRUNK
    model = Model()
    gmodel = torch.nn.Sequential(torch.nn.Linear(D_IN, D_HID), torch.nn.Tanh(), torch.nn.Linear(D_HID, 1))
    _TRUNK = gmodel[0] if entry == "grouped" else model.trunk
    method = make_method(name)
    x, y = _data()
    engine = mtgrad.GramianEngine(model.trunk) if entry == "gramian" else None
    if entry == "default":
        engine_for(model.trunk)
    try:
        if entry == "aggregate":
            losses, _ = model.losses(x, y)
            J = torch.stack([
                torch.cat([g.flatten() for g in torch.autograd.grad(loss, model.trunk.parameters(), retain_graph=True)])
                for loss in losses
            ])
            return [mtgrad.aggregate(J, method)]
        if entry == "grouped":
            rows = (x.expand(T, B, D_IN), y.T)

            def task_loss(params, batch):
                xb, yb = batch
                return ((torch.func.functional_call(gmodel, params, (xb,)).squeeze(-1) - yb) ** 2).mean()

            mtgrad.grouped_backward(gmodel, task_loss, rows, method)
            return [p.grad for p in gmodel.parameters()]
        losses, z = model.losses(x, y)
        if entry == "optimizer":
            opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model.trunk.parameters(), method)
            opt.step(losses, closure=lambda: model.losses(x, y)[0])
        elif entry == "default":  # the module, no engine: mtgrad chooses (installed before the forward)
            mtgrad.backward(losses, model.trunk, method)
        elif entry == "optimizer-module":
            opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model.trunk, method)
            opt.step(losses, closure=lambda: model.losses(x, y)[0])
        elif entry == "representation":
            mtgrad.backward(losses, model.trunk.parameters(), method, representation=z)
        else:
            mtgrad.backward(losses, model.trunk.parameters(), method, engine=engine or entry)
        return [p.grad for p in model.parameters()]
    except (TypeError, ValueError) as error:
        return str(error)
    finally:
        if engine is not None:
            engine.close()


ENTRIES = ["aggregate", "loop", "batched", "gramian", "default", "representation", "grouped", "optimizer", "optimizer-module"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name", NAMES)
def test_every_combination_works_or_refuses_naming_the_method(name, entry):
    result = _run(name, entry)
    if isinstance(result, str):
        kind = type(make_method(name)).__name__
        assert kind in result, f"{name} × {entry}: refusal does not name {kind}: {result}"
        # What must work: every gradient method on stored task gradients, every method via backward.
        assert entry not in ("loop", "batched", "default", "optimizer", "optimizer-module", "grouped"), f"{name} × {entry} refused: {result}"
        return
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in result), f"{name} × {entry}"


@pytest.mark.parametrize("entry", ["batched", "gramian", "default", "optimizer", "optimizer-module"])
@pytest.mark.parametrize("name", ["mean", "mgda", "pcgrad", "cagrad", "cagrad_fast", "nashmtl", "upgrad", "reuse"])
def test_engines_agree_with_the_loop_engine(name, entry):
    loop, other = _run(name, "loop"), _run(name, entry)
    assert not isinstance(other, str), other
    for a, b in zip(loop, other):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_reuse_reuses_the_weights_in_aggregate_and_grouped_backward():
    J1 = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    J2 = torch.tensor([[0.0, 3.0], [2.0, 1.0]])
    reuse = mtgrad.Reuse(mtgrad.PCGrad(order="fixed"), every=2)
    mtgrad.aggregate(J1, reuse)
    w = mtgrad.PCGrad(order="fixed").weights(J1.double() @ J1.double().T)
    torch.testing.assert_close(mtgrad.aggregate(J2, reuse), (w.float() @ J2))  # step 2 reuses step 1's w


def test_cagrad_fast_in_aggregate_is_eq4_on_the_sampled_rows():
    J = torch.randn(6, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fast = mtgrad.CAGradFast(c=0.5, num_gradients=3, generator=torch.Generator().manual_seed(3))
    sampled = mtgrad.CAGradFast(c=0.5, num_gradients=3, generator=torch.Generator().manual_seed(3)).sample(6)
    rest = [j for j in range(6) if j not in sampled]
    rows = torch.cat([J[sampled], J[rest].mean(0, keepdim=True)])
    centre = torch.tensor([1 / 6] * len(sampled) + [len(rest) / 6], dtype=torch.float64)
    want = mtgrad.solvers.cagrad_weights(rows @ rows.T, 0.5, centre) @ rows
    torch.testing.assert_close(mtgrad.aggregate(J, fast), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_an_error_leaves_every_grad_as_it_was(engine):
    model = Model()
    x, y = _data()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = [p.grad.clone() for p in model.parameters()]
    losses, _ = model.losses(x, y)
    # A finite loss whose trunk gradient is NaN (√ at 0), found only after the heads' backward.
    w = model.trunk.weight
    losses[0] = losses[0] + (w - w.detach()).pow(2).sum().sqrt()
    with pytest.raises(ValueError, match="NaN or inf"):
        mtgrad.backward(losses, model.trunk.parameters(), mtgrad.PCGrad(), engine=engine)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.grad, b)


def test_gradients_accumulate_into_existing_grad_on_success():
    model = Model()
    x, y = _data()
    losses, _ = model.losses(x, y)
    mtgrad.backward(losses, model.trunk.parameters(), mtgrad.Mean())
    once = [p.grad.clone() for p in model.parameters()]
    losses, _ = model.losses(x, y)
    mtgrad.backward(losses, model.trunk.parameters(), mtgrad.Mean())
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_integer_tensors_among_shared_params_are_refused():
    model = Model()
    x, y = _data()
    losses, _ = model.losses(x, y)
    with pytest.raises(TypeError, match="floating-point"):
        mtgrad.backward(losses, [*model.trunk.parameters(), torch.zeros(3, dtype=torch.long)], mtgrad.Mean())


def test_from_spec_builds_reuse_with_the_inner_methods_options():
    method = mtgrad.from_spec("reuse:method=cagrad,every=4,warmup=2,c=0.5")
    assert isinstance(method, mtgrad.Reuse) and (method.every, method.warmup) == (4, 2)
    assert isinstance(method.method, mtgrad.CAGrad) and method.method.c == 0.5
    with pytest.raises(ValueError, match="method="):
        mtgrad.from_spec("reuse:every=4")
    with pytest.raises(ValueError, match="does not take"):
        mtgrad.from_spec("reuse:method=pcgrad,c=0.5")


def test_heads_passed_as_shared_are_reported_once():
    importlib.import_module("mtgrad.backward")._CHECKED_LAYOUTS.clear()  # ids of collected models may recur
    model = Model()
    x, y = _data()
    params = [*model.trunk.parameters(), *model.heads[1].parameters()]
    with pytest.warns(UserWarning, match=r"shared_params\[2\] \(shape \(1, 6\)\) is reached only by task 1") as caught:
        mtgrad.backward(model.losses(x, y)[0], params, mtgrad.Mean())
    assert caught[0].filename == __file__  # the caller's line, not mtgrad's
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mtgrad.backward(model.losses(x, y)[0], params, mtgrad.Mean())  # once per parameter list
        mtgrad.backward(model.losses(x, y)[0], list(model.trunk.parameters()), mtgrad.Mean())


def test_a_warning_from_mtloptimizer_step_points_at_the_callers_line():
    # MTLOptimizer.step runs inside torch.optim's step wrapper: its frames are skipped too.
    importlib.import_module("mtgrad.backward")._CHECKED_LAYOUTS.clear()  # the check runs once per id layout
    model = Model()
    x, y = _data()
    params = [*model.trunk.parameters(), *model.heads[0].parameters()]
    opt = mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), params, mtgrad.PCGrad())
    with pytest.warns(UserWarning, match="is reached only by task 0") as caught:
        opt.step(model.losses(x, y)[0])
    assert caught[0].filename == __file__


def test_one_spec_grammar_for_lists_and_single_specs():
    assert mtgrad.split_specs("gd,mgda,cagrad:c=0.5,rescale=2,pcgrad") == ["gd", "mgda", "cagrad:c=0.5,rescale=2", "pcgrad"]
    assert mtgrad.split_specs("cagrad:c=0.2;cagrad:c=0.8") == ["cagrad:c=0.2", "cagrad:c=0.8"]
    assert mtgrad.split_specs("reuse:method=cagrad,every=4,c=0.5;mean") == ["reuse:method=cagrad,every=4,c=0.5", "mean"]
    with pytest.raises(ValueError, match="separates specs"):
        mtgrad.from_spec("cagrad:c=0.5;rescale=2")
    for slip in ("gd;;mgda", "gd,,mgda", "gd,", "cagrad:c=0.5,", "cagrad:c=0.5,,rescale=2"):
        with pytest.raises(ValueError, match="empty item"):  # a typo is refused, not dropped
            mtgrad.split_specs(slip)
    with pytest.raises(ValueError, match="empty option"):  # one grammar: a single spec the same
        mtgrad.from_spec("cagrad:c=0.5,")
    assert mtgrad.from_spec("cagrad:").c == mtgrad.from_spec("cagrad").c


@pytest.mark.parametrize(
    "first, second",
    [("gd", "mean"), ("pcgrad", "pcgrad:reduction=sum"), ("cagrad", "cagrad:c=0.4"), ("cagrad:c=1", "cagrad:c=1.0"),
     ("CAGrad:c=.5", "cagrad:c=0.5"), ("reuse:method=pcgrad", "reuse:method=pcgrad,every=1,warmup=0"),
     ("reuse:method=cagrad,c=0.5,every=2", "reuse:every=2,c=.5,method=cagrad,rescale=0")],
)
def test_two_names_of_one_method_are_refused_in_a_list(first, second):
    with pytest.raises(ValueError, match=f"specs '{re.escape(first)}' and '{re.escape(second)}' are the same method"):
        check_distinct([first, "mgda", second])


def test_an_option_the_caller_supplies_counts_as_given():
    # compare passes num_tasks: uw and uw:num_tasks=3 build one method there, not with 4 tasks.
    with pytest.raises(ValueError, match="specs 'uw' and 'uw:num_tasks=3' are the same method"):
        check_distinct(["uw", "uw:num_tasks=3"], extra={"num_tasks": 3})
    check_distinct(["uw:num_tasks=4", "uw:num_tasks=3"], extra={"num_tasks": 3})
    # A method that does not take it is unaffected; a generator is never a spec's option.
    with pytest.raises(ValueError, match="are the same method"):
        check_distinct(["gd", "mean"], extra={"num_tasks": 3, "generator": torch.Generator()})
    with pytest.raises(ValueError, match="are the same method"):
        check_distinct(["famo:num_tasks=2,lr=0.025", "famo"], extra={"num_tasks": 2})


def test_a_value_of_another_kind_than_the_default_is_not_the_default():
    # include_self=0 and rescale=false are refused when built, not taken for the defaults.
    check_distinct(["pcgrad", "pcgrad:include_self=0"])
    check_distinct(["cagrad", "cagrad:rescale=false"])


def test_a_spec_error_wins_over_a_duplicate_in_compare(tmp_path):
    from mtgrad.bench.report import compare

    with pytest.raises(ValueError, match="include_self must be True or False, got 0"):
        compare("linear", ["pcgrad", "pcgrad:include_self=0"], [0], out=tmp_path / "o", jobs=1, progress=False)
    with pytest.raises(ValueError, match="from_spec takes a spec string"):
        compare("linear", ["gd", mtgrad.PCGrad()], [0], out=tmp_path / "o", jobs=1, progress=False)
    assert not (tmp_path / "o").exists()


def test_specs_that_differ_in_a_value_or_in_kind_are_distinct():
    check_distinct(["gd", "sum", "cagrad:c=0.5", "cagrad:c=0.4,rescale=2", "pcgrad:include_self=true",
                    "reuse:method=cagrad,c=0.5", "reuse:method=cagrad,c=0.6", "reuse:method=cagrad,c=0.5,every=2"])


class _WithShared(torch.nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 2)

    def shared_parameters(self):
        return self.parameters()


def test_a_spec_error_names_the_spec_once():
    with pytest.raises(ValueError) as info:
        trainer.make_method("cagrad:cc=1", 2, _WithShared(), 0, torch.device("cpu"))
    assert str(info.value).startswith("spec 'cagrad:cc=1': cagrad does not take option(s) ['cc'] (did you mean 'c'?)")
    assert str(info.value).count("cagrad:cc=1") == 1


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("pcgrad:include_self=no", TypeError, "include_self must be True or False, got 'no'"),
        ("pcgrad:include_self=2", TypeError, "include_self must be True or False, got 2"),
        ("cagrad:scale_by_tasks=maybe", TypeError, "scale_by_tasks must be True or False"),
        ("fairgrad:scale_by_tasks=1", TypeError, "scale_by_tasks must be True or False"),
        ("cagrad_fast:scale_by_tasks=off", TypeError, "scale_by_tasks must be True or False"),
        ("dwa:sliding=yes", TypeError, "sliding must be True or False"),
        ("cagrad:rescale=true", ValueError, "rescale must be 0"),
        ("cagrad:c=0.5,c=0.6", ValueError, "'c' is given twice"),
        ("uw", ValueError, r"uw needs num_tasks: pass mtgrad.from_spec\('uw', num_tasks=...\)"),
        ("gradnorm", ValueError, "needs num_tasks, last_shared"),
        ("reuse:method=uw", ValueError, "UW is not one"),
        ("reuse:method=famo,every=2", ValueError, "FAMO is not one"),
    ],
)
def test_a_spec_value_that_is_not_what_the_option_takes_is_refused(spec, error, match):
    # Python would take "no" or 2 as a truthy flag and True as rescale=1, without a word.
    with pytest.raises(error, match=match):
        mtgrad.from_spec(spec)


def test_flags_refuse_non_bools_in_the_constructors_too():
    with pytest.raises(TypeError, match="include_self"):
        mtgrad.PCGrad(include_self="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rescale"):
        mtgrad.CAGrad(rescale=True)
    assert mtgrad.from_spec("pcgrad:include_self=TRUE").include_self is True
    assert mtgrad.from_spec("uw", num_tasks=3).num_tasks == 3
    assert mtgrad.from_spec("uw:num_tasks=3", num_tasks=3).num_tasks == 3
    with pytest.raises(ValueError, match="sets num_tasks=3, and the caller passes num_tasks=4"):
        mtgrad.from_spec("uw:num_tasks=3", num_tasks=4)
    with pytest.raises(ValueError, match="sets generator, which the caller provides \\(a Generator\\)"):
        mtgrad.from_spec("pcgrad:generator=3", generator=torch.Generator())


@pytest.mark.parametrize("spec", [None, 3, mtgrad.PCGrad()])
def test_from_spec_of_something_else_than_a_string_is_refused(spec):
    with pytest.raises(TypeError, match="from_spec takes a spec string"):
        mtgrad.from_spec(spec)  # type: ignore[arg-type]


def test_a_non_finite_task_gradient_is_named():
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    spike = torch.sqrt((w - w.detach()).sum())  # 0 with an infinite gradient
    losses = [(w**2).sum(), (w**2).sum() * 2, spike]
    with pytest.raises(ValueError, match="the gradient of task 2 with respect to the shared parameters is NaN"):
        mtgrad.backward(losses, [w], mtgrad.PCGrad(), engine="loop")
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    spike = torch.sqrt((w - w.detach()).sum())
    losses = [(w**2).sum() * k for k in range(1, 6)] + [spike]
    def fast(seed):
        return mtgrad.CAGradFast(num_gradients=3, generator=torch.Generator().manual_seed(seed))

    # A seed whose sample leaves the bad task out: its gradient is then inside the pseudo-task's.
    seed = next(s for s in range(100) if 5 not in fast(s).sample(6))
    with pytest.raises(ValueError, match=r"the pseudo-task \(the mean of the unsampled tasks\)"):
        mtgrad.backward(losses, [w], fast(seed))
    # With the bad task sampled, the rows are named by their tasks, with every engine (the
    # Gramian-only engine's rows are sampled cotangents, not tasks 0, 1, 2).
    trunk = torch.nn.Linear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    seed = next(s for s in range(100) if fast(s).sample(6) == [2, 5])
    for engine in ("loop", mtgrad.GramianEngine(trunk)):
        z = trunk(x)
        losses = [z.pow(2).mean() * k for k in range(1, 6)] + [torch.sqrt((z - z.detach()).sum())]
        with pytest.raises(ValueError, match=r"of tasks? (2, )?5 with respect") as error:
            mtgrad.backward(losses, list(trunk.parameters()), fast(seed), engine=engine)
        assert "pseudo-task" not in str(error.value)
