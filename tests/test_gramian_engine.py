"""The Gramian-only engine (``mtgrad.GramianEngine``): G without J, then one weighted backward.

Reference: the loop engine (T backward passes, the blocks (T, *p.shape), ``gramian.gramian``).
"""

from __future__ import annotations

import warnings

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import mtgrad
from mtgrad.layer_gramians import _direct_route, _kernel_route, weight_gramian

F64 = torch.float64
TOL = {F64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=1e-5)}


class Problem:
    """A trunk, T linear heads and a closure running the forward (the engine records it)."""

    def __init__(self, trunk: nn.Module, x: Tensor, T: int = 3, dtype: torch.dtype = F64, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.trunk = trunk.to(dtype)
        self.x = x.to(dtype)
        with torch.no_grad():
            width = self.trunk(self.x).shape[-1]
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(T)).to(dtype)
        self.ys = [torch.randn(self.x.shape[0], dtype=dtype) for _ in range(T)]

    def losses(self) -> list[Tensor]:
        z = self.trunk(self.x)
        z = z.reshape(z.shape[0], -1, z.shape[-1]).mean(dim=1)  # (B, …, d) → (B, d)
        return [F.mse_loss(h(z).squeeze(-1), y) for h, y in zip(self.heads, self.ys)]

    def shared(self) -> list[Tensor]:
        return list(self.trunk.parameters())

    def clear(self) -> None:
        for p in [*self.trunk.parameters(), *self.heads.parameters()]:
            p.grad = None

    def grads(self) -> list[Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in [*self.trunk.parameters(), *self.heads.parameters()]]


def run(prob: Problem, method: mtgrad.methods.Method, engine) -> tuple[mtgrad.BackwardResult, list[Tensor | None]]:
    prob.clear()
    record = mtgrad.backward(prob.losses(), prob.shared(), method, engine=engine)
    return record, prob.grads()


def assert_grads_equal(a: list[Tensor | None], b: list[Tensor | None], dtype: torch.dtype = F64) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if u is None or v is None:
            zero = u if v is None else v
            assert zero is None or not bool(zero.any()), "one engine left .grad None where the other has a nonzero"
            continue
        torch.testing.assert_close(u, v, **TOL[dtype])


class Twice(nn.Module):
    """One Linear applied at two call sites: its weight's gradient sums over both."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.f = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.f(torch.tanh(self.f(torch.tanh(self.inp(x)))))


class Tied(nn.Module):
    """Two Linear modules sharing one weight Parameter (different biases)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


class Functional(nn.Module):
    """A Linear whose weight is also used outside its forward: that weight takes the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.a(x))
        return self.b(h) + F.linear(h, self.b.weight).pow(2)


class ConvTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 7)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1)))


def frozen_mlp() -> nn.Module:
    trunk = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5))
    trunk[2].weight.requires_grad_(False)  # frozen weight, trainable bias
    trunk[4].requires_grad_(False)  # a whole frozen layer
    return trunk


CASES: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "mlp": lambda: (nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 6), nn.Tanh()), torch.randn(11, 4)),
    "inplace-relu": lambda: (nn.Sequential(nn.Linear(4, 9), nn.ReLU(inplace=True), nn.Linear(9, 6)), torch.randn(11, 4)),
    "3d-input": lambda: (nn.Sequential(nn.Linear(4, 9), nn.GELU(), nn.Linear(9, 6)), torch.randn(5, 7, 4)),
    "no-bias": lambda: (nn.Sequential(nn.Linear(4, 9, bias=False), nn.Tanh(), nn.Linear(9, 6, bias=False)), torch.randn(11, 4)),
    "conv": lambda: (ConvTrunk(), torch.randn(6, 2, 5, 5)),
    "linear-twice": lambda: (Twice(6), torch.randn(9, 4)),
    "tied": lambda: (nn.Sequential(nn.Linear(4, 6), nn.Tanh(), Tied(6)), torch.randn(9, 4)),
    "functional-use": lambda: (Functional(), torch.randn(9, 4)),
    "frozen": lambda: (frozen_mlp(), torch.randn(10, 4)),
    "layernorm": lambda: (nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 5)), torch.randn(10, 4)),
}


def make(case: str, dtype: torch.dtype = F64, T: int = 3, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    trunk, x = CASES[case]()
    return Problem(trunk, x, T=T, dtype=dtype, seed=seed + 1)


# --------------------------------------------------------------------------- the Gramian


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gramian_equals_the_loop_engines(case, dtype):
    prob = make(case, dtype)
    ref, _ = run(prob, mtgrad.Mean(), "loop")
    with mtgrad.GramianEngine(prob.trunk) as engine:
        got, _ = run(prob, mtgrad.Mean(), engine)
    assert got.gramian.dtype == F64
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[dtype])
    assert torch.equal(got.gramian, got.gramian.T)


@pytest.mark.parametrize("route", [_kernel_route, _direct_route], ids=["kernel", "direct"])
@pytest.mark.parametrize("case", ["mlp", "3d-input", "linear-twice", "tied", "frozen"])
def test_each_route_inside_the_engine(case, route, monkeypatch):
    import mtgrad.layer_gramians as autogram

    name = "kernel" if route is _kernel_route else "direct"
    monkeypatch.setattr(autogram, "_weight_route", lambda *args: name)
    prob = make(case)
    ref, ref_grads = run(prob, mtgrad.CAGrad(0.4), "loop")
    got, got_grads = run(prob, mtgrad.CAGrad(0.4), mtgrad.GramianEngine(prob.trunk))
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])
    assert_grads_equal(got_grads, ref_grads)


@pytest.mark.parametrize(
    "case, fallback",
    [("mlp", 0), ("conv", 0), ("functional-use", 6 * 5), ("linear-twice", 0), ("tied", 0)],
)
def test_fallback_holds_only_the_uncovered_parameters(case, fallback):
    prob = make(case)
    engine = mtgrad.GramianEngine(prob.trunk)
    run(prob, mtgrad.Mean(), engine)
    assert engine.last_fallback_numel == fallback


def test_engine_gramian_method_matches_the_jacobian():
    prob = make("3d-input", T=4)
    engine = mtgrad.GramianEngine(prob.trunk)
    losses = prob.losses()
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(L, prob.shared(), retain_graph=True)]) for L in losses]
    J = torch.stack(rows)
    G = engine.gramian(losses, prob.shared())
    torch.testing.assert_close(G, J @ J.T, **TOL[F64])
    assert engine.num_recorded == 0  # consumed
    assert all(p.grad is None for p in prob.shared())  # gramian() touches no .grad


@pytest.mark.parametrize("route", [_kernel_route, _direct_route])
def test_both_routes_give_the_frobenius_gramian(route):
    torch.manual_seed(3)
    D, X = torch.randn(5, 13, 7, dtype=F64), torch.randn(13, 6, dtype=F64)
    grads = torch.einsum("tbo,bi->toi", D, X).reshape(5, -1)
    torch.testing.assert_close(route(D, X), grads @ grads.T, rtol=1e-12, atol=1e-12)


def test_routes_chunk_when_the_intermediates_are_large(monkeypatch):
    import mtgrad.layer_gramians as autogram

    monkeypatch.setattr(autogram, "CHUNK_ELEMENTS", 64)
    torch.manual_seed(4)
    D, X = torch.randn(6, 5, 9, dtype=F64), torch.randn(5, 8, dtype=F64)
    grads = torch.einsum("tbo,bi->toi", D, X).reshape(6, -1)
    for route in (_kernel_route, _direct_route):
        torch.testing.assert_close(route(D, X), grads @ grads.T, rtol=1e-12, atol=1e-12)


def test_route_choice_follows_the_cost(monkeypatch):
    import mtgrad.layer_gramians as autogram

    calls = []
    monkeypatch.setattr(autogram, "_kernel_route", lambda D, X: calls.append("kernel") or torch.zeros(2, 2, dtype=F64))
    monkeypatch.setattr(autogram, "_direct_route", lambda D, X: calls.append("direct") or torch.zeros(2, 2, dtype=F64))
    weight_gramian(torch.zeros(2, 16, 512), torch.zeros(16, 512))  # few rows: the kernel
    weight_gramian(torch.zeros(2, 4096, 8), torch.zeros(4096, 8))  # many rows, tiny layer: direct
    assert calls == ["kernel", "direct"]


@given(
    T=st.integers(1, 5),
    batch=st.integers(1, 9),
    seq=st.sampled_from([None, 1, 3]),
    width=st.integers(1, 7),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_gramian_equals_the_jacobians(T, batch, seq, width, bias, seed):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(3, width, bias=bias), nn.Tanh(), nn.Linear(width, 4, bias=bias))
    x = torch.randn(batch, 3) if seq is None else torch.randn(batch, seq, 3)
    prob = Problem(trunk, x, T=T, seed=seed)
    ref, _ = run(prob, mtgrad.Mean(), "loop")
    got, _ = run(prob, mtgrad.Mean(), mtgrad.GramianEngine(prob.trunk))
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])


# --------------------------------------------------------------------------- the update


def methods() -> list[Callable[[], mtgrad.methods.Method]]:
    return [
        lambda: mtgrad.PCGrad(order="fixed"),
        lambda: mtgrad.PCGrad(generator=torch.Generator().manual_seed(7)),
        lambda: mtgrad.CAGrad(c=0.4),
        lambda: mtgrad.MGDA(),
    ]


@pytest.mark.parametrize("make_method", methods(), ids=["pcgrad-fixed", "pcgrad-random", "cagrad", "mgda"])
@pytest.mark.parametrize("case", ["mlp", "conv", "linear-twice", "frozen"])
def test_grads_equal_the_loop_engines(case, make_method):
    prob = make(case, T=4)
    ref, ref_grads = run(prob, make_method(), "loop")
    got, got_grads = run(prob, make_method(), mtgrad.GramianEngine(prob.trunk))
    torch.testing.assert_close(got.weights, ref.weights, **TOL[F64])
    assert_grads_equal(got_grads, ref_grads)


def test_heads_receive_the_gradient_of_the_summed_losses():
    prob = make("mlp", T=3)
    prob.clear()
    total = torch.stack(prob.losses()).sum()
    expected = torch.autograd.grad(total, list(prob.heads.parameters()))
    run(prob, mtgrad.PCGrad(order="fixed"), mtgrad.GramianEngine(prob.trunk))
    for p, g in zip(prob.heads.parameters(), expected):
        torch.testing.assert_close(p.grad, g, **TOL[F64])


def test_gradients_accumulate_into_existing_grad():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    _, once = run(prob, mtgrad.MGDA(), engine)
    mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine=engine)  # no clear: adds
    for a, p in zip(once, [*prob.trunk.parameters(), *prob.heads.parameters()]):
        torch.testing.assert_close(p.grad, 2 * a, **TOL[F64])


def test_reuse_and_cagrad_fast_match_the_loop_engine():
    prob = make("mlp", T=5)
    engine = mtgrad.GramianEngine(prob.trunk)
    for make_method in (
        lambda: mtgrad.Reuse(mtgrad.CAGrad(0.5), every=2, warmup=1),
        lambda: mtgrad.CAGradFast(c=0.5, num_gradients=3, generator=torch.Generator().manual_seed(1)),
    ):
        ref_method, got_method = make_method(), make_method()
        for _ in range(4):
            ref, ref_grads = run(prob, ref_method, "loop")
            got, got_grads = run(prob, got_method, engine)
            assert (ref.gramian is None) == (got.gramian is None)
            if ref.gramian is not None:
                torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])
            torch.testing.assert_close(got.weights, ref.weights, **TOL[F64])
            assert_grads_equal(got_grads, ref_grads)
            assert engine.num_recorded == 0


def test_loss_weighting_and_optimizer_accept_the_engine():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    record = mtgrad.backward(prob.losses(), prob.shared(), mtgrad.UW(num_tasks=3, dtype=F64), engine=engine)
    assert record.gramian is None and engine.num_recorded == 0
    opt = mtgrad.MTLOptimizer(torch.optim.SGD([*prob.trunk.parameters(), *prob.heads.parameters()], lr=0.1),
                              prob.shared(), mtgrad.PCGrad(order="fixed"))  # fmt: skip
    opt.zero_grad()
    assert opt.step(prob.losses(), engine=engine).gramian is not None


def test_retain_graph_keeps_the_records_for_a_second_backward():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    _, once = run(prob, mtgrad.CAGrad(0.4), engine)
    prob.clear()
    losses = prob.losses()
    mtgrad.backward(losses, prob.shared(), mtgrad.CAGrad(0.4), engine=engine, retain_graph=True)
    assert engine.num_recorded == 2
    mtgrad.backward(losses, prob.shared(), mtgrad.CAGrad(0.4), engine=engine)
    assert engine.num_recorded == 0
    for a, b in zip(prob.grads(), once):
        torch.testing.assert_close(a, 2 * b, **TOL[F64])


def test_no_grad_forwards_are_not_recorded_and_stale_records_are_ignored():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    with torch.no_grad():
        prob.trunk(prob.x)
    assert engine.num_recorded == 0
    prob.trunk(prob.x)  # a forward that is never backpropagated
    _, got = run(prob, mtgrad.MGDA(), engine)
    assert engine.num_recorded == 0
    _, ref = run(prob, mtgrad.MGDA(), "loop")
    assert_grads_equal(got, ref)


# --------------------------------------------------------------------------- errors


def test_jacobian_aggregators_and_representation_are_rejected():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    with pytest.raises(ValueError, match="GradDrop.*engine='loop'"):
        mtgrad.backward(prob.losses(), prob.shared(), mtgrad.GradDrop(), engine=engine)
    with pytest.raises(ValueError, match="representation"):
        losses = prob.losses()
        mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine, representation=prob.trunk(prob.x))
    assert engine.num_recorded == 0  # an error still drops the records (and the inputs they hold)


def test_the_string_gramian_points_to_the_engine_object():
    prob = make("mlp")
    with pytest.raises(ValueError, match="GramianEngine"):
        mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine="gramian")


def test_a_module_without_a_supported_layer_is_rejected():
    with pytest.raises(ValueError, match="found no layer it can read"):
        mtgrad.GramianEngine(nn.Sequential(nn.PReLU(), nn.ConvTranspose2d(1, 1, 3)))
    with pytest.raises(TypeError):
        mtgrad.GramianEngine(torch.zeros(3))


def _loop_gramian(prob: Problem) -> Tensor:
    return mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine="loop").gramian


def test_forward_before_the_engine_or_consumed_records_warn_and_fall_back():
    prob = make("mlp")
    want = _loop_gramian(prob)
    losses = prob.losses()
    engine = mtgrad.GramianEngine(prob.trunk)  # created after the forward
    with pytest.warns(UserWarning, match="recorded no call"):
        got = mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine).gramian
    torch.testing.assert_close(got, want, **TOL[F64])
    first, second = prob.losses(), prob.losses()
    mtgrad.backward(second, prob.shared(), mtgrad.MGDA(), engine=engine)  # consumes both forwards' records
    got = mtgrad.backward(first, prob.shared(), mtgrad.MGDA(), engine=engine).gramian  # warned once already
    torch.testing.assert_close(got, want, **TOL[F64])


def test_the_warnings_point_at_the_callers_line():
    prob = make("mlp")
    losses = prob.losses()
    engine = mtgrad.GramianEngine(prob.trunk)  # created after the forward
    with pytest.warns(UserWarning, match="recorded no call") as caught:
        mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine)
    assert caught[0].filename == __file__


def test_an_engine_on_a_module_that_holds_no_shared_parameter_warns():
    prob = make("mlp")
    other = nn.Sequential(nn.Linear(3, 3)).double()
    engine = mtgrad.GramianEngine(other)
    want = _loop_gramian(prob)
    with pytest.warns(UserWarning, match="hold none of the shared parameters"):
        got = mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine=engine).gramian
    torch.testing.assert_close(got, want, **TOL[F64])


def test_records_of_another_graph_raise():
    prob = make("mlp")
    stale = prob.losses()  # before the engine: never recorded
    engine = mtgrad.GramianEngine(prob.trunk)
    prob.losses()  # recorded, never backpropagated
    with pytest.raises(ValueError, match="none on these losses' graph"):
        mtgrad.backward(stale, prob.shared(), mtgrad.MGDA(), engine=engine)


class ScaledLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:  # not ∇W = Dᵀ X: must not be recorded
        return F.linear(x, 3 * self.weight, self.bias)


@pytest.mark.parametrize("kind", ["weight-norm", "old-weight-norm", "subclass-forward"])
def test_layers_whose_weight_is_not_the_leaf_fall_back_exactly(kind):
    torch.manual_seed(0)
    first = {
        "weight-norm": lambda: nn.utils.parametrizations.weight_norm(nn.Linear(4, 5)),
        "old-weight-norm": lambda: nn.utils.weight_norm(nn.Linear(4, 5)),
        "subclass-forward": lambda: ScaledLinear(4, 5),
    }[kind]()
    prob = Problem(nn.Sequential(first, nn.Tanh(), nn.Linear(5, 6)), torch.randn(7, 4))
    want = _loop_gramian(prob)
    engine = mtgrad.GramianEngine(prob.trunk)
    got = mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine=engine).gramian
    torch.testing.assert_close(got, want, **TOL[F64])
    assert engine.last_fallback_numel == sum(p.numel() for p in first.parameters())


def test_in_place_op_after_a_linear_on_3d_inputs_keeps_the_activation_route():
    torch.manual_seed(0)
    prob = Problem(nn.Sequential(nn.Linear(4, 9), nn.ReLU(inplace=True), nn.Linear(9, 6)), torch.randn(5, 7, 4))
    want = _loop_gramian(prob)
    engine = mtgrad.GramianEngine(prob.trunk)
    got = mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine=engine).gramian
    torch.testing.assert_close(got, want, **TOL[F64])
    assert engine.last_fallback_numel == 0


def test_attention_projections_are_read_from_the_graph():
    # nn.MultiheadAttention never calls out_proj as a module (F.linear on its weight): the
    # projections are found in the call's graph, only the biases are held as blocks.
    torch.manual_seed(0)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    prob = Problem(Attn(), torch.randn(3, 4, 8))
    want = _loop_gramian(prob)
    engine = mtgrad.GramianEngine(prob.trunk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mtgrad.backward(prob.losses(), prob.shared(), mtgrad.MGDA(), engine=engine).gramian
    assert engine.last_fallback_numel == 3 * 8 + 8
    torch.testing.assert_close(got, want, **TOL[F64])


def test_half_precision_activations_do_not_overflow_the_kernel_route():
    torch.manual_seed(0)
    X = (4 * torch.randn(64, 4096)).half()
    D = torch.randn(3, 64, 8).half()
    got = weight_gramian(D, X)
    grads = torch.einsum("rbo,bi->roi", D.double(), X.double()).flatten(1)
    torch.testing.assert_close(got, grads @ grads.T, rtol=1e-3, atol=0.0)


def test_a_frozen_weight_does_not_need_its_input_kept():
    torch.manual_seed(0)
    frozen = nn.Linear(4, 5)
    frozen.weight.requires_grad_(False)
    trunk = nn.Sequential(nn.Linear(4, 4), frozen)
    prob = Problem(trunk, torch.randn(6, 4))
    want = _loop_gramian(prob)
    engine = mtgrad.GramianEngine(trunk)
    h = trunk[0](prob.x)
    z = trunk[1](h)
    h.mul_(2)  # the frozen layer's input changes after its call: its weight needs no X
    losses = [F.mse_loss(head(z).squeeze(-1), y) for head, y in zip(prob.heads, prob.ys)]
    got = mtgrad.backward(losses, [p for p in trunk.parameters() if p.requires_grad], mtgrad.MGDA(), engine=engine)
    torch.testing.assert_close(got.gramian, want, **TOL[F64])


def test_a_parameter_listed_twice_counts_once():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    once = engine.gramian(prob.losses(), prob.shared())
    twice = engine.gramian(prob.losses(), prob.shared() + prob.shared())
    torch.testing.assert_close(twice, once, **TOL[F64])


def test_a_closed_engine_raises():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    losses = prob.losses()
    engine.close()
    assert "closed" in repr(engine)
    with pytest.raises(ValueError, match="closed"):
        mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine)


def test_non_finite_gradients_raise():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    z = prob.trunk(prob.x)
    z.register_hook(lambda g: g * float("nan"))
    losses = [F.mse_loss(h(z).squeeze(-1), y) for h, y in zip(prob.heads, prob.ys)]
    with pytest.raises(ValueError, match="NaN or inf"):
        mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine)
    assert all(p.grad is None for p in prob.shared())
    assert engine.num_recorded == 0


def test_an_input_modified_in_place_after_the_forward_raises():
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    engine = mtgrad.GramianEngine(lin1, lin2)
    h = torch.tanh(lin1(torch.randn(5, 3, dtype=F64)))
    out = lin2(h)
    h.mul_(2)  # lin2's recorded input is stale
    losses = [out[:, 0].sum(), out[:, 1].sum()]
    with pytest.raises(ValueError, match="in place"):
        mtgrad.backward(losses, [*lin1.parameters(), *lin2.parameters()], mtgrad.MGDA(), engine=engine)


def test_a_loss_without_path_is_still_rejected():
    prob = make("mlp")
    engine = mtgrad.GramianEngine(prob.trunk)
    losses = prob.losses()
    losses[1] = prob.heads[1].weight.sum()
    with pytest.raises(ValueError, match="no gradient path"):
        mtgrad.backward(losses, prob.shared(), mtgrad.MGDA(), engine=engine)
    assert engine.num_recorded == 0
