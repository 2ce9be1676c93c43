"""The Gramian engine's layer rules (``mtgrad.layer_gramians``) against the loop engine.

Every case is a trunk made of one supported layer type in one configuration, with T task heads;
the reference is the loop engine (T backward passes, blocks ``(T, *p.shape)``). Each case asserts
that the engine held no fallback block (the rule itself computed every parameter's share), and
that the Gramian, the method's weights and every ``.grad`` equal the loop engine's to rounding,
in float64 and float32.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtgrad
import mtgrad.layer_gramians as lg

F64, F32 = torch.float64, torch.float32
TOL = {F64: dict(rtol=1e-10, atol=1e-12), F32: dict(rtol=3e-4, atol=1e-5)}


class Flat(nn.Module):
    """``body`` then a flatten to (B, features): the heads read a vector per example."""

    def __init__(self, *body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.body(x)).flatten(1)


class Twice(nn.Module):
    """One convolution at two call sites (its weight's gradient sums over both)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.tanh(self.conv(x))).flatten(1)


class TiedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, stride=2)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x))).flatten(1)


class Tokens(nn.Module):
    """Embedding → mean over the sequence → Linear: the usual bag-of-tokens trunk."""

    def __init__(self, embedding: nn.Embedding, twice: bool = False) -> None:
        super().__init__()
        self.embedding = embedding
        self.proj = nn.Linear(embedding.embedding_dim, 5)
        self.twice = twice

    def forward(self, idx: Tensor) -> Tensor:
        z = self.embedding(idx)
        if self.twice:
            z = z + self.embedding(idx.flip(-1)).pow(2)
        return torch.tanh(self.proj(z.mean(dim=1)))


class TiedOutput(nn.Module):
    """An embedding whose weight is also an nn.Linear's (tied input/output embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        return torch.tanh(self.out(self.embedding(idx).mean(dim=1)))


class Attention(nn.Module):
    """A linear embedding of 3 features, then ``nn.MultiheadAttention`` called as ``mode`` says,
    mean over the sequence: self-attention (the packed in-projection), key = value (the split
    into q and kv rows), three distinct inputs (three row slices), or self- then
    cross-attention with one layer (pieces of both calls merged)."""

    def __init__(self, mode: str, **options: object) -> None:
        super().__init__()
        self.mode = mode
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, **options)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        first = self.attn.batch_first
        h = torch.tanh(self.embed(x if first else x.transpose(0, 1)))
        other = h.flip(1 if first else 0)
        kdim, vdim = self.attn.kdim, self.attn.vdim
        if self.mode == "self":
            out, _ = self.attn(h, h, h)
        elif self.mode == "kv":
            out, _ = self.attn(h, other, other, need_weights=False)
        elif self.mode == "distinct":
            out, _ = self.attn(h, (2 * other)[..., :kdim], other[..., :vdim] ** 2)
        else:  # "twice"
            mid, _ = self.attn(h, h, h, need_weights=False)
            out, _ = self.attn(mid, other, other)
        return out.mean(dim=1 if first else 0)


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` (attention, feed-forward, LayerNorms; dropout off)."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.embed(x)).mean(dim=1)


#: name → trunk; every input is (batch 4, sequence 5, 3 features).
ATTENTION: dict[str, Callable[[], nn.Module]] = {
    "self": lambda: Attention("self"),
    "self-batch-first": lambda: Attention("self", batch_first=True),
    "key-is-value": lambda: Attention("kv"),
    "key-is-value-batch-first": lambda: Attention("kv", batch_first=True),
    "distinct": lambda: Attention("distinct", batch_first=True),
    "separate-weights-no-bias": lambda: Attention("distinct", kdim=6, vdim=5, bias=False),
    "bias-kv-zero-attn": lambda: Attention("self", add_bias_kv=True, add_zero_attn=True),
    "twice": lambda: Attention("twice", batch_first=True),
    "encoder-post-norm": lambda: Encoder(norm_first=False),
    "encoder-pre-norm": lambda: Encoder(norm_first=True),
}


def _eval(module: nn.Module) -> nn.Module:
    with torch.no_grad():  # running statistics away from (0, 1), then evaluation mode
        module.train()
        module(torch.randn(16, *_BN_INPUT[type(module)]) * 3 + 1)
    return module.eval()


_BN_INPUT = {nn.BatchNorm1d: (4,), nn.BatchNorm2d: (4, 3, 3)}

#: name → (trunk, input); integer inputs are token ids.
CASES: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "conv2d": lambda: (Flat(nn.Conv2d(2, 3, 3)), torch.randn(5, 2, 6, 6)),
    "conv2d-stride-pad-dilation": lambda: (Flat(nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))), torch.randn(5, 2, 7, 6)),
    "conv2d-groups": lambda: (Flat(nn.Conv2d(4, 6, 3, padding=1, groups=2)), torch.randn(4, 4, 5, 5)),
    "conv2d-depthwise-no-bias": lambda: (Flat(nn.Conv2d(3, 3, 3, groups=3, bias=False)), torch.randn(4, 3, 5, 5)),
    "conv2d-same-even-kernel": lambda: (Flat(nn.Conv2d(2, 3, 4, padding="same")), torch.randn(4, 2, 5, 5)),
    "conv2d-reflect": lambda: (Flat(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")), torch.randn(4, 2, 5, 5)),
    "conv2d-circular-stride": lambda: (Flat(nn.Conv2d(2, 3, 3, stride=2, padding=2, padding_mode="circular")), torch.randn(4, 2, 6, 6)),
    "conv2d-replicate": lambda: (Flat(nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate")), torch.randn(4, 2, 4, 4)),
    "conv1d": lambda: (Flat(nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2)), torch.randn(5, 3, 11)),
    "conv1d-groups": lambda: (Flat(nn.Conv1d(4, 2, 2, groups=2)), torch.randn(5, 4, 6)),
    "conv3d": lambda: (Flat(nn.Conv3d(2, 3, 2, padding=1)), torch.randn(3, 2, 3, 3, 3)),
    "conv-twice": lambda: (Twice(), torch.randn(4, 3, 5, 5)),
    "conv-tied": lambda: (TiedConvs(), torch.randn(4, 2, 6, 6)),
    "cnn": lambda: (
        Flat(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 5, 3, stride=2), nn.GroupNorm(1, 5)),
        torch.randn(6, 3, 7, 7),
    ),
    "embedding": lambda: (Tokens(nn.Embedding(9, 4)), torch.randint(0, 9, (6, 5))),
    "embedding-padding-idx": lambda: (Tokens(nn.Embedding(9, 4, padding_idx=0)), torch.randint(0, 4, (6, 5))),
    "embedding-freq": lambda: (Tokens(nn.Embedding(9, 4, scale_grad_by_freq=True, padding_idx=2)), torch.randint(0, 4, (6, 5))),
    "embedding-max-norm": lambda: (Tokens(nn.Embedding(9, 4, max_norm=1.0)), torch.randint(0, 9, (6, 5))),
    "embedding-twice": lambda: (Tokens(nn.Embedding(9, 4), twice=True), torch.randint(0, 9, (6, 5))),
    "embedding-tied-to-linear": lambda: (TiedOutput(), torch.randint(0, 7, (6, 3))),
    "layernorm": lambda: (Flat(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 5)), torch.randn(7, 4)),
    "layernorm-2d-no-bias": lambda: (Flat(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)), nn.LayerNorm((2, 3), bias=False)), torch.randn(7, 4)),
    "groupnorm": lambda: (Flat(nn.Conv1d(2, 4, 2), nn.GroupNorm(2, 4)), torch.randn(5, 2, 6)),
    "batchnorm1d": lambda: (Flat(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 5)), torch.randn(8, 3)),
    "batchnorm1d-sequence": lambda: (Flat(nn.Conv1d(2, 4, 2), nn.BatchNorm1d(4)), torch.randn(5, 2, 6)),
    "batchnorm2d-no-running-stats": lambda: (Flat(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), torch.randn(5, 2, 5, 5)),
    "batchnorm2d-eval": lambda: (Flat(nn.Conv2d(4, 4, 1), _eval(nn.BatchNorm2d(4))), torch.randn(5, 4, 3, 3)),
    "batchnorm1d-eval": lambda: (Flat(nn.Linear(3, 4), _eval(nn.BatchNorm1d(4))), torch.randn(6, 3)),
}


class Problem:
    def __init__(self, case: str, dtype: torch.dtype, T: int = 3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        trunk, x = CASES[case]() if case in CASES else (ATTENTION[case](), torch.randn(4, 5, 3))
        self.trunk = trunk.to(dtype)
        self.x = x if not x.is_floating_point() else x.to(dtype)
        with torch.no_grad():
            width = self.trunk(self.x).shape[-1]
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(T)).to(dtype)
        self.ys = [torch.randn(self.x.shape[0], dtype=dtype) for _ in range(T)]

    def losses(self) -> list[Tensor]:
        z = self.trunk(self.x)
        return [F.mse_loss(h(z).squeeze(-1), y) for h, y in zip(self.heads, self.ys)]

    def run(self, method: mtgrad.methods.Method, engine) -> tuple[mtgrad.BackwardResult, list[Tensor | None]]:
        leaves = [*self.trunk.parameters(), *self.heads.parameters()]
        for p in leaves:
            p.grad = None
        record = mtgrad.backward(self.losses(), list(self.trunk.parameters()), method, engine=engine)
        return record, [None if p.grad is None else p.grad.clone() for p in leaves]


def _check(
    case: str, dtype: torch.dtype, method: Callable[[], mtgrad.methods.Method], fallback: int = 0
) -> mtgrad.GramianEngine:
    prob = Problem(case, dtype)
    ref, ref_grads = prob.run(method(), "loop")
    engine = mtgrad.GramianEngine(prob.trunk)
    got, got_grads = prob.run(method(), engine)
    assert engine.last_fallback_numel == fallback, "a supported layer was left to the fallback"
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[dtype])
    torch.testing.assert_close(got.weights, ref.weights, **TOL[dtype])
    for a, b in zip(got_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[dtype])
    return engine


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_layer_rule_equals_the_loop_engine(case, dtype):
    _check(case, dtype, lambda: mtgrad.CAGrad(c=0.4))


def _attention_fallback(trunk: nn.Module) -> int:
    """Entries the fallback holds in an attention case: the attention layers' biases (added to
    or after the projections' products, which the rule reads) and bias_k/bias_v."""
    return sum(
        p.numel() for m in trunk.modules() if isinstance(m, nn.MultiheadAttention) for p in m.parameters() if p.dim() != 2
    )


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_attention_projections_equal_the_loop_engine(case, dtype):
    torch.manual_seed(0)
    engine = _check(case, dtype, lambda: mtgrad.CAGrad(c=0.4), fallback=_attention_fallback(ATTENTION[case]()))
    calls = engine.last_num_calls
    assert calls >= 3  # the embedding's Linear and at least the in- and out-projections


def test_attention_under_autocast_reads_the_cast_operands():
    # bf16 autocast: the products multiply bf16 copies of the inputs and weights, which the
    # rule reads from the graph, so G is that of the gradients autograd computes.
    prob = Problem("self-batch-first", F32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = prob.run(mtgrad.Mean(), "loop")
        engine = mtgrad.GramianEngine(prob.trunk)
        got, _ = prob.run(mtgrad.Mean(), engine)
    assert engine.last_fallback_numel == _attention_fallback(prob.trunk)
    torch.testing.assert_close(got.gramian, ref.gramian, rtol=2e-2, atol=1e-3 * float(ref.gramian.abs().max()))


def test_attention_with_dropout_reads_the_graph_it_ran():
    # Dropout on the attention weights: the products are read from the recorded graph (no
    # recomputation), so the engine's G is that of the same random mask as the loop's.
    prob = Problem("self", F64)
    prob.trunk.attn.dropout = 0.5
    torch.manual_seed(1)
    ref, _ = prob.run(mtgrad.Mean(), "loop")
    engine = mtgrad.GramianEngine(prob.trunk)
    torch.manual_seed(1)
    got, _ = prob.run(mtgrad.Mean(), engine)
    assert engine.last_fallback_numel == _attention_fallback(prob.trunk)
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])


class MaskedTwice(nn.Module):
    """One attention layer twice; the second call's float mask (requiring grad) is computed from
    the first call's output, so a walk through the mask would meet the first call's products."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        z = self.attn(*[torch.tanh(self.embed(x))] * 3)[0]
        m = z.mean(dim=0)
        y = 2 * z
        return self.attn(y, y, y, attn_mask=torch.tanh(m @ m.T))[0].mean(dim=1)


class TiedInProjection(nn.Module):
    """An ``nn.Linear`` whose weight is the attention's packed in-projection (read whole there,
    in row slices by the attention's calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.wide = nn.Linear(8, 24, bias=False)
        self.wide.weight = self.attn.in_proj_weight

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.embed(x))
        return (self.attn(h, h.flip(1), h.flip(1))[0] + self.wide(h)[..., :8]).mean(dim=1)


def _parity(trunk: nn.Module) -> mtgrad.GramianEngine:
    torch.manual_seed(0)
    prob = Problem("self", F64)
    prob.trunk = trunk.to(F64)
    ref, ref_grads = prob.run(mtgrad.CAGrad(c=0.4), "loop")
    engine = mtgrad.GramianEngine(prob.trunk)
    got, got_grads = prob.run(mtgrad.CAGrad(c=0.4), engine)
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL[F64])
    return engine


def test_a_product_reached_again_through_a_mask_is_recorded_once():
    engine = _parity(MaskedTwice())
    assert engine.last_num_calls == 1 + 2 + 2  # the embedding, then two products per attention call


def test_a_packed_projection_also_read_whole_takes_the_fallback():
    trunk = TiedInProjection()
    engine = _parity(trunk)
    assert engine.last_fallback_numel == _attention_fallback(trunk) + 24 * 8


def test_attention_under_checkpointing_reads_no_saved_operand():
    # Reading a product's saved operands would unpack them: a non-reentrant checkpoint then
    # recomputes its region each time. Under saved-tensor hooks the layer is left to the fallback.
    from torch.utils.checkpoint import checkpoint

    runs = []
    attn = nn.MultiheadAttention(8, 2, batch_first=True).to(F64)
    attn.register_forward_pre_hook(lambda *_: runs.append(1))
    engine = mtgrad.GramianEngine(attn)
    x = torch.randn(3, 4, 8, dtype=F64, requires_grad=True)
    checkpoint(lambda h: attn(h, h, h)[0], x, use_reentrant=False)
    assert len(runs) == 1 and engine.num_recorded == 0


def test_an_attention_weight_also_used_outside_the_layer_takes_the_fallback():
    prob = Problem("self", F64)
    trunk = prob.trunk
    base = trunk.forward
    trunk.forward = lambda x: base(x) + 0.1 * trunk.attn.out_proj.weight.sum()  # type: ignore[method-assign]
    ref, ref_grads = prob.run(mtgrad.MGDA(), "loop")
    engine = mtgrad.GramianEngine(trunk)
    got, got_grads = prob.run(mtgrad.MGDA(), engine)
    assert engine.last_fallback_numel == _attention_fallback(trunk) + 64
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL[F64])


@pytest.mark.parametrize("case", ["conv2d", "conv2d-groups", "conv1d", "conv2d-reflect", "cnn"])
@pytest.mark.parametrize("route", ["kernel", "grads"])
def test_both_convolution_routes_are_exact(case, route, monkeypatch):
    seen = []
    monkeypatch.setattr(lg, "_conv_route", lambda *args: seen.append(route) or route)
    if route == "grads":
        monkeypatch.setattr(lg, "CHUNK_ELEMENTS", 8)  # output-channel chunks of the gradients
    _check(case, F64, lambda: mtgrad.PCGrad(order="fixed"))
    assert seen


def test_the_convolution_route_follows_the_cost():
    assert lg._conv_route(R=10, N=32, cin=1152, out=256, groups=1, dims=4) == "kernel"  # 2×(4×4) late layer
    assert lg._conv_route(R=3, N=2048, cin=1152, out=256, groups=1, dims=4) == "grads"  # 128×(4×4)
    assert lg._conv_route(R=10, N=32, cin=1152, out=256, groups=1, dims=5) == "grads"  # Conv3d: no unfold


def test_a_layer_type_without_a_rule_takes_the_fallback_exactly():
    prob = Problem("conv2d", F64)
    prob.trunk.body.append(nn.PReLU(3).to(F64))  # PReLU's weight has no rule
    ref, ref_grads = prob.run(mtgrad.MGDA(), "loop")
    engine = mtgrad.GramianEngine(prob.trunk)
    got, got_grads = prob.run(mtgrad.MGDA(), engine)
    assert engine.last_fallback_numel == 3
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL[F64])


def test_the_hooked_layers_are_the_supported_ones():
    trunk = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.PReLU(), nn.Flatten(), nn.Linear(2, 2), nn.LayerNorm(2))
    with mtgrad.GramianEngine(trunk) as engine:
        assert [type(m) for m in engine.layers] == [nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.LayerNorm]
    attention = nn.MultiheadAttention(4, 2)
    with mtgrad.GramianEngine(attention) as engine:
        assert [type(m).__name__ for m in engine.layers] == ["MultiheadAttention", "NonDynamicallyQuantizableLinear"]


def test_a_subclass_with_its_own_forward_is_not_read_by_the_rule():
    class Scaled(nn.Conv2d):
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    prob = Problem("conv2d", F64)
    prob.trunk.body[0] = Scaled(2, 3, 3).to(F64)
    ref, _ = prob.run(mtgrad.Mean(), "loop")
    engine = mtgrad.GramianEngine(prob.trunk, nn.Linear(1, 1))
    assert not any(isinstance(m, Scaled) for m in engine.layers)
    got, _ = prob.run(mtgrad.Mean(), engine)
    assert engine.last_fallback_numel == 3 * 2 * 9 + 3
    torch.testing.assert_close(got.gramian, ref.gramian, **TOL[F64])


def test_half_precision_convolutions_do_not_overflow():
    # bf16 activations of size ~100: products overflow nothing in the ≥ fp32 pieces.
    prob = Problem("cnn", torch.bfloat16)
    prob.x = prob.x * 100
    ref, _ = prob.run(mtgrad.Mean(), "loop")
    got, _ = prob.run(mtgrad.Mean(), mtgrad.GramianEngine(prob.trunk))
    assert bool(torch.isfinite(got.gramian).all())
    torch.testing.assert_close(got.gramian, ref.gramian, rtol=5e-2, atol=1e-3 * float(ref.gramian.abs().max()))


def test_an_embedding_input_changed_in_place_after_the_forward_raises():
    prob = Problem("embedding", F64)
    engine = mtgrad.GramianEngine(prob.trunk)
    losses = prob.losses()
    prob.x[0, 0] = (prob.x[0, 0] + 1) % 9
    with pytest.raises(ValueError, match="hooked Embedding was modified in place"):
        mtgrad.backward(losses, list(prob.trunk.parameters()), mtgrad.Mean(), engine=engine)


@pytest.mark.parametrize("log10", [19, -25])
@pytest.mark.parametrize("route", ["_kernel_route", "_direct_route"])
def test_float32_routes_neither_overflow_nor_underflow(log10, route, monkeypatch):
    # Output gradients of ~1e19 square to ~1e38 in float32; ~1e-25 to ~1e-50, below its range.
    # The routes rescale by powers of two and take their inner products in float64.
    chosen = getattr(lg, route)
    monkeypatch.setattr(lg, "_kernel_route", chosen)
    monkeypatch.setattr(lg, "_direct_route", chosen)
    g = torch.Generator().manual_seed(0)
    D = (torch.randn(3, 16, 8, generator=g, dtype=F64) * 10.0**log10).float()
    X = torch.randn(16, 6, generator=g, dtype=F64).float()
    grads = torch.einsum("tbo,bi->toi", D.double(), X.double()).reshape(3, -1)
    G = lg.weight_gramian(D, X)
    assert bool(torch.isfinite(G).all())
    torch.testing.assert_close(G, grads @ grads.T, rtol=1e-5, atol=0.0)


def test_float32_kept_gradients_survive_a_combined_scale_outside_float32s_range():
    # D ≈ 1e20 on the rows where X ≈ 1e-10 and X ≈ 1e19 where D ≈ 1e-10: each of D and X is
    # rescaled by ~2^66 and ~2^63, their product 2^129 exceeds float32, yet every entry of DᵀX
    # (≈ 1e10) fits. The kept gradients must come back finite and equal the float64 ones.
    g = torch.Generator().manual_seed(0)
    B, inp, out, T = 16, 6, 8, 3
    D = torch.randn(T, B, out, generator=g, dtype=F64)
    X = torch.randn(B, inp, generator=g, dtype=F64)
    D[:, : B // 2] *= 1e20
    D[:, B // 2 :] *= 1e-10
    X[: B // 2] *= 1e-10
    X[B // 2 :] *= 1e19
    D, X = D.float(), X.float()
    want = torch.einsum("tbo,bi->toi", D.double(), X.double())
    assert lg._weight_route(T, B, inp, out) == "direct"  # the route that keeps the gradients
    G, grads = lg.weight_gramian_and_grads(D, X)
    assert grads is not None
    assert bool(torch.isfinite(grads).all())
    torch.testing.assert_close(grads.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    flat = want.reshape(T, -1)
    ref = flat @ flat.T
    torch.testing.assert_close(G, ref, rtol=1e-5, atol=1e-5 * float(ref.diagonal().max()))


@pytest.mark.parametrize("d_log10, x_log10", [(37, -37), (-35, 35)])
def test_float32_kept_gradients_survive_scales_of_opposite_signs(d_log10, x_log10):
    # D's and X's rescalings pull in opposite directions (2^±123 and 2^∓123): applied one after
    # the other, the intermediate leaves float32's range although DᵀX (≈ 10^2) fits.
    g = torch.Generator().manual_seed(0)
    B, inp, out, T = 1024, 6, 8, 3
    D = (torch.rand(T, B, out, generator=g, dtype=F64) * 10.0**d_log10).float()
    X = (torch.rand(B, inp, generator=g, dtype=F64) * 10.0**x_log10).float()
    assert lg._weight_route(T, B, inp, out) == "direct"
    want = torch.einsum("tbo,bi->toi", D.double(), X.double())
    _, grads = lg.weight_gramian_and_grads(D, X)
    assert grads is not None and bool(torch.isfinite(grads).all())
    torch.testing.assert_close(grads.double(), want, rtol=1e-5, atol=0.0)
