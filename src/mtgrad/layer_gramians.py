"""Per-layer rules of the Gramian-only engine: a layer call's share of ``G`` from its input and
output gradients, never from the per-task gradients of the whole model.

For one call of a layer with input ``x`` and output ``y``, task i's gradient of the layer's
parameters is a linear function of ``D_i = ∂L_i/∂y`` (R tasks at once: ``D`` is (R, *y.shape)).
Each rule states that function for its layer type as *pieces*, one per parameter (or per disjoint
slice of one, such as a convolution's groups):

* :class:`Rows` — ``∇ = D_iᵀ X`` for rows ``X`` (N, in) and ``D_i`` (N, out): a linear layer's
  weight (N = batch × leading dims), a convolution's weight on its unfolded input (N = batch ×
  output positions, ``in`` = in-channels per group × kernel size). The Gramian is
  ``⟨D_i, X Xᵀ D_j⟩`` or ``⟨D_iᵀX, D_jᵀX⟩``, whichever is cheaper (:func:`weight_gramian`);
* :class:`Indexed` — ``∇ = Σ_n e_{idx_n} D_i[n]ᵀ``: an embedding's weight. Only the rows the
  batch looked up are non-zero: the Gramian is that of the gradient rows of the U distinct
  indices, (R, U, dim);
* :class:`Block` — the per-task gradients themselves, (R, *shape): biases (``Σ_n D_i[n]``),
  normalisation layers' affine parameters (``Σ_n D_i[n] ⊙ x̂[n]``, x̂ the normalised input,
  recomputed from ``x``), and a convolution's weight when forming its gradients (one
  convolution backward with the R tasks folded into the output channels) is cheaper than the
  kernel of its unfolded input.

A parameter used by several calls (a layer applied twice, tied weights) has the sum of the calls'
gradients: its pieces are merged before the Gramian is formed — rows and indices concatenated,
blocks added — which gives the cross terms between calls (:func:`merged_gramian`).

Supported layers (exact class ``forward``; a parametrization or derived weight leaves the layer
to the engine's fallback): ``nn.Linear`` and subclasses that keep its ``forward``;
``nn.Conv1d/2d/3d`` (any stride, padding — including ``"same"`` and non-zero padding modes —
dilation and groups; Conv3d only by the gradient route); ``nn.Embedding`` (``padding_idx``,
``scale_grad_by_freq``, ``max_norm``); the affine parameters of ``nn.LayerNorm``,
``nn.GroupNorm`` and ``nn.BatchNorm1d/2d/3d`` (batch statistics in training, running ones in
evaluation); the projection weights of ``nn.MultiheadAttention`` (packed or separate, any
``kdim``/``vdim``, under autocast too), whose products it finds in each call's autograd graph
(:class:`AttentionRule`): each is a linear weight's :class:`Rows` (per slice of a packed
weight); the attention's biases are left to the fallback. Attention built from ``nn.Linear``
projections and ``F.scaled_dot_product_attention`` needs no rule of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import Node
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import Replicas
from .gramian import _host_sync_is_free, cross_gramian, gramian

__all__ = [
    "LayerRule",
    "AttentionRule",
    "rule_for",
    "Rows",
    "Indexed",
    "Block",
    "merged_gramian",
    "weight_gramian",
    "weight_gramian_and_grads",
]

# Elements of the intermediates one chunk of a weight's Gramian may hold (8 MiB in float32):
# large enough for efficient GEMMs, small next to the output gradients themselves.
CHUNK_ELEMENTS = 1 << 21


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # At least float32: products of half-precision activations overflow 65504 within one layer.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------- pieces


@dataclass(frozen=True)
class Rows:
    """``∇_i = D_iᵀ X``: X (N, in), D (R, N, out); the gradient has shape (out, in)."""

    X: Tensor
    D: Tensor

    def merged(self, other: Rows) -> Rows:
        return Rows(torch.cat([self.X, other.X]), torch.cat([self.D, other.D], dim=1))

    def gathered(self, replicas: Replicas) -> Rows:
        return Rows(replicas.gather_rows(self.X, dim=0), replicas.gather_rows(self.D, dim=1).div_(replicas.size))

    def gramian(self) -> Tensor:
        return weight_gramian(self.D, self.X)

    def gramian_and_grads(self) -> tuple[Tensor, Tensor | None]:
        return weight_gramian_and_grads(self.D, self.X)

    def block(self) -> Tensor:
        dtype = _compute_dtype(self.D, self.X)
        return self.D.to(dtype).transpose(1, 2) @ self.X.to(dtype)


@dataclass(frozen=True)
class Indexed:
    """``∇_i = Σ_n e_{idx_n} D_i[n]ᵀ``: idx (N,), D (R, N, dim); the gradient is (num, dim)."""

    idx: Tensor
    D: Tensor
    num: int

    def merged(self, other: Indexed) -> Indexed:
        return Indexed(torch.cat([self.idx, other.idx]), torch.cat([self.D, other.D], dim=1), self.num)

    def gathered(self, replicas: Replicas) -> Indexed:
        D = replicas.gather_rows(self.D, dim=1).div_(replicas.size)
        return Indexed(replicas.gather_rows(self.idx, dim=0), D, self.num)

    def gramian(self) -> Tensor:
        # The gradient rows of the distinct indices: (R, U, dim), U ≤ N, never (R, num, dim).
        unique, inverse = torch.unique(self.idx, return_inverse=True)
        D = self.D.to(_compute_dtype(self.D))
        rows = D.new_zeros((D.shape[0], unique.numel(), D.shape[2])).index_add_(1, inverse, D)
        return gramian([rows])

    def block(self) -> Tensor:
        D = self.D.to(_compute_dtype(self.D))
        return D.new_zeros((D.shape[0], self.num, D.shape[2])).index_add_(1, self.idx, D)


@dataclass(frozen=True)
class Block:
    """The per-task gradients themselves, (R, *shape)."""

    b: Tensor

    def merged(self, other: Block) -> Block:
        return Block(self.b + other.b)

    def gathered(self, replicas: Replicas) -> Block:
        b = self.b.clone()
        replicas.mean_([b])
        return Block(b)

    def gramian(self) -> Tensor:
        return gramian([self.b])

    def block(self) -> Tensor:
        return self.b


Piece = Rows | Indexed | Block
#: A piece's key: the parameter's id and, for a slice of its rows (a convolution's group, an
#: attention projection's share of a packed weight), the slice's first row (dim 0).
Key = tuple[int, int | None]
#: The rule's parameters of one call, each a leaf that requires grad or None (frozen, absent).
Covered = tuple[Tensor | None, ...]
#: Whether the engine wants a parameter's share (a shared parameter no other use reaches).
Wanted = Callable[[Tensor | None], bool]
#: ``(parameter, first row, piece)``: one call's share of one parameter (``None``: all of it) or
#: of a slice of its rows.
Contribution = tuple[Tensor, int | None, Piece]


def merged_gramian(pieces: Sequence[Piece]) -> Tensor:
    """The Gramian of the sum of ``pieces`` (all of one parameter or slice): pieces of one kind
    are merged (concatenated or added); mixed kinds (an embedding's weight tied to a linear
    output layer) are added as flattened blocks."""
    first = pieces[0]
    if all(type(p) is type(first) for p in pieces):
        total = first
        for piece in pieces[1:]:
            total = total.merged(piece)  # type: ignore[arg-type]  # same type: checked above
        return total.gramian()
    blocks = [p.block().flatten(1) for p in pieces]
    return gramian([sum(blocks[1:], blocks[0])])


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Saved:
    """What one call keeps for its pieces (besides the output gradient D)."""

    x: Tensor | None  # the input, detached (shares the version counter), when the pieces read it
    extra: tuple = ()  # rule-specific: hyper-parameters, running statistics, …


class LayerRule(Protocol):
    """How the Gramian engine reads one layer type: which leaves a call covers, what it keeps,
    and its pieces given the output gradient ``D`` (R, *output.shape)."""

    names: tuple[str, ...]  # the layer's parameter attributes the pieces cover

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        """What to keep (``None``: this call cannot be read, e.g. an unsupported setting)."""
        ...

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        """``(parameter, first row, piece)`` for every covered parameter ``wanted`` accepts. ``alone``:
        this call is the parameter's only one (a piece then need not merge with others')."""
        ...

    def macs(self, layer: nn.Module, x: torch.Size, out: torch.Size, R: int) -> tuple[int, int]:
        """Multiply-adds of this call's weight for R tasks: its R weight gradients (what R
        backward passes compute there) and the engine's route (its Gramian and its share of the
        update). ``(0, 0)`` where both are negligible (biases, normalisation, embeddings)."""
        ...


class _Singleton:
    """A rule is stateless: one instance per type, which pickling and copying keep (the engine
    checks a layer's rule by identity, and a module saved with its engine's hooks reloads)."""

    def __reduce__(self) -> str:
        return _INSTANCE_NAMES[type(self)]


class LinearRule(_Singleton):
    """``y = x Wᵀ + b``: ``∇W = Dᵀ X``, ``∇b = Dᵀ 1`` over the rows of every leading dimension."""

    names: tuple[str, ...] = ("weight", "bias")

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        return Saved(x.detach() if covered[0] is not None else None)  # a bias needs only D

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        weight, bias = covered
        D2 = D.reshape(D.shape[0], -1, D.shape[-1])
        out: list[Contribution] = []
        if wanted(bias):
            assert bias is not None
            out.append((bias, None, Block(D2.sum(dim=1))))
        if wanted(weight):
            assert weight is not None and saved.x is not None
            out.append((weight, None, Rows(saved.x.reshape(-1, saved.x.shape[-1]), D2)))
        return out

    def macs(self, layer: nn.Module, x: torch.Size, out: torch.Size, R: int) -> tuple[int, int]:
        N, inp, width = math.prod(out[:-1]), x[-1], out[-1]
        return R * N * inp * width, _rows_macs(R, N, inp, width, kept=True)


class ConvRule(_Singleton):
    """``y = W ⋆ x + b`` (Conv1d/2d/3d). ``∇W`` per group g is ``D_gᵀ X_g`` on the unfolded
    (im2col) padded input — the kernel route when ``(N)²`` is small, N = batch × output
    positions — or the per-task gradients from one convolution backward with the tasks folded
    into the output channels. ``∇b = Σ D`` over batch and positions."""

    names: tuple[str, ...] = ("weight", "bias")

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        assert isinstance(layer, nn.modules.conv._ConvNd)
        if x.dim() != len(layer.kernel_size) + 2:
            return None  # an unbatched input: rare, left to the fallback
        return Saved(x.detach() if covered[0] is not None else None)

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        assert isinstance(layer, nn.modules.conv._ConvNd)
        weight, bias = covered
        R, B, out = D.shape[:3]
        pieces: list[Contribution] = []
        if wanted(bias):
            assert bias is not None
            pieces.append((bias, None, Block(D.sum(dim=[1, *range(3, D.dim())]))))
        if wanted(weight):
            assert weight is not None and saved.x is not None
            dtype = _compute_dtype(D, saved.x)
            x, D = saved.x.to(dtype), D.to(dtype)
            cin = weight[0].numel()  # in-channels per group × kernel size
            route = _conv_route(R, B * math.prod(D.shape[3:]), cin, out, layer.groups, x.dim()) if alone else "grads"
            if route == "kernel":
                rows = _unfolded_rows(layer, _padded(layer, x), D)
                pieces.extend((weight, g * (out // layer.groups), piece) for g, piece in enumerate(rows))
            elif alone and layer.groups == 1 and R * weight.numel() > CHUNK_ELEMENTS:
                # Disjoint output-channel slices, whose Gramians add: one slice's blocks at a time.
                step = max(1, CHUNK_ELEMENTS // (R * cin))
                for start in range(0, out, step):
                    grads = _conv_weight_grads(layer, x, D[:, :, start : start + step], weight[start : start + step])
                    pieces.append((weight, start, Block(grads)))
            else:
                pieces.append((weight, None, Block(_conv_weight_grads(layer, x, D, weight))))
        return pieces

    def macs(self, layer: nn.Module, x: torch.Size, out: torch.Size, R: int) -> tuple[int, int]:
        assert isinstance(layer, nn.modules.conv._ConvNd)
        g = layer.groups
        N, cin, cout = out[0] * math.prod(out[2:]), layer.weight[0].numel(), out[1] // g
        grads = R * g * N * cin * cout
        if _conv_route(R, N, cin, out[1], g, len(x)) == "kernel":
            return grads, g * _rows_macs(R, N, cin, cout, kept=False)  # sliced by group: not kept
        chunked = layer.groups == 1 and R * layer.weight.numel() > CHUNK_ELEMENTS
        return grads, grads + (N * cin * cout if chunked else 0)  # whole blocks: the update reuses them


class _Negligible:
    def macs(self, layer: nn.Module, x: torch.Size, out: torch.Size, R: int) -> tuple[int, int]:
        return 0, 0


def _rows_macs(R: int, N: int, inp: int, out: int, kept: bool) -> int:
    """Multiply-adds of :func:`weight_gramian`'s route for D (R, N, out), X (N, in), with the
    update's share: ``D_wᵀ X`` after the kernel route; after the direct route, combining its
    per-task gradients where they are ``kept`` (:func:`weight_gramian_and_grads`), else ``D_wᵀ X``."""
    if _weight_route(R, N, inp, out) == "kernel":
        return N * N * inp + R * N * N * out + R * R * N * out + N * inp * out
    return R * N * inp * out + R * R * inp * out + (R * inp * out if kept else N * inp * out)


def _conv_route(R: int, N: int, cin: int, out: int, groups: int, dims: int) -> str:
    """``"kernel"`` (unfolded rows, ``K = X Xᵀ`` of N = batch × positions rows) when it is the
    cheaper in multiply-adds and K fits in a chunk, else ``"grads"`` (the per-task gradients)."""
    cout = out // groups
    kernel = groups * (N * N * cin + R * N * N * cout + R * R * N * cout)
    grads = groups * (R * N * cin * cout + R * R * cin * cout)
    return "kernel" if dims <= 4 and N * N <= CHUNK_ELEMENTS and kernel <= grads else "grads"


def _padded(layer: nn.modules.conv._ConvNd, x: Tensor) -> Tensor:
    # The module's own padding, made explicit: then the geometry below has padding 0 ("same"
    # and the reflect/replicate/circular modes included).
    pad = layer._reversed_padding_repeated_twice
    if not any(pad):
        return x
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, pad, mode=mode)


def _unfolded_rows(layer: nn.modules.conv._ConvNd, x: Tensor, D: Tensor) -> list[Rows]:
    """One :class:`Rows` per group: X_g (B·L, in/g·k), D_g (R, B·L, out/g)."""
    kernel, stride, dilation = layer.kernel_size, layer.stride, layer.dilation
    if x.dim() == 3:  # Conv1d as a 1 × k convolution
        x, kernel, stride, dilation = x.unsqueeze(2), (1, *kernel), (1, *stride), (1, *dilation)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, in·k, L), channel-major
    B, width, L = cols.shape
    R, out, g = D.shape[0], D.shape[2], layer.groups
    X = cols.transpose(1, 2).reshape(B * L, width)
    Dr = D.reshape(R, B, out, L).transpose(2, 3).reshape(R, B * L, out)
    cin, cout = width // g, out // g
    return [Rows(X[:, k * cin : (k + 1) * cin], Dr[:, :, k * cout : (k + 1) * cout]) for k in range(g)]


def _conv_weight_grads(layer: nn.modules.conv._ConvNd, x: Tensor, D: Tensor, rows: Tensor) -> Tensor:
    """``∇W`` (R, c, in/g, *k) of every task for the output channels of D (R, B, c, *positions),
    whose weight rows are ``rows`` (c, in/g, *k): one weight-only convolution backward per task.

    (Folding the tasks into R× the output channels of one call measured 2–6× slower on the CPU.)
    """
    pad = layer._reversed_padding_repeated_twice
    symmetric = all(pad[k] == pad[k + 1] for k in range(0, len(pad), 2))
    if layer.padding_mode == "zeros" and symmetric:
        padding = list(pad[::-2])  # (left, right) pairs from the last dim: the layer's own padding
    else:
        x, padding = _padded(layer, x), [0] * len(layer.kernel_size)
    like = rows.detach().to(D.dtype)
    out = D.new_empty((D.shape[0], *rows.shape))
    for r in range(D.shape[0]):
        _, out[r], _ = torch.ops.aten.convolution_backward(
            D[r], x, like, None, layer.stride, padding, layer.dilation, False, [0] * len(padding), layer.groups,
            [False, True, False],
        )  # fmt: skip
    return out


class EmbeddingRule(_Negligible, _Singleton):
    """``y = W[idx]``: ``∇W = Σ_n e_{idx_n} D[n]ᵀ``, without the ``padding_idx`` rows, each row
    divided by its index's count in the call under ``scale_grad_by_freq``."""

    names: tuple[str, ...] = ("weight",)

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        return Saved(x.detach())

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        assert isinstance(layer, nn.Embedding)
        (weight,) = covered
        if not wanted(weight):
            return []
        assert weight is not None and saved.x is not None
        idx = saved.x.reshape(-1).long()
        D = D.reshape(D.shape[0], -1, D.shape[-1])
        if layer.scale_grad_by_freq:
            counts = torch.bincount(idx, minlength=layer.num_embeddings)[idx]
            D = D / counts.to(D.dtype).unsqueeze(-1)
        if layer.padding_idx is not None:
            keep = idx != layer.padding_idx
            idx, D = idx[keep], D[:, keep]
        return [(weight, None, Indexed(idx, D, layer.num_embeddings))]


class NormRule(_Negligible, _Singleton):
    """``y = x̂ ⊙ γ + β`` with x̂ the input normalised by LayerNorm, GroupNorm or BatchNorm:
    ``∇γ = Σ D ⊙ x̂`` and ``∇β = Σ D`` over every dimension but the parameters' own. x̂ is
    recomputed from the kept input (batch statistics when the call used them, else the
    running statistics as they were at the call)."""

    names: tuple[str, ...] = ("weight", "bias")

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        kept = x.detach() if covered[0] is not None else None  # β needs only D
        if isinstance(layer, _BatchNorm):
            batch_stats = layer.training or layer.running_mean is None or layer.running_var is None
            if batch_stats:
                return Saved(kept, (None, None))
            assert layer.running_mean is not None and layer.running_var is not None
            return Saved(kept, (layer.running_mean.detach().clone(), layer.running_var.detach().clone()))
        return Saved(kept)

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        weight, bias = covered
        out: list[Contribution] = []
        shape = (weight if weight is not None else bias).shape  # type: ignore[union-attr]
        if wanted(bias):
            assert bias is not None
            out.append((bias, None, Block(_reduce_to(layer, D.to(_compute_dtype(D)), shape))))
        if wanted(weight):
            assert weight is not None and saved.x is not None
            dtype = _compute_dtype(D, saved.x)
            x_hat = _normalised(layer, saved.x.to(dtype), saved.extra)
            out.append((weight, None, Block(_reduce_to(layer, D.to(dtype) * x_hat, shape))))
        return out


def _normalised(layer: nn.Module, x: Tensor, extra: tuple) -> Tensor:
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, None, None, layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(x, layer.num_groups, None, None, layer.eps)
    assert isinstance(layer, _BatchNorm)
    mean, var = extra
    if mean is None:
        return F.batch_norm(x, None, None, None, None, True, 0.0, layer.eps)
    return F.batch_norm(x, mean.to(x.dtype), var.to(x.dtype), None, None, False, 0.0, layer.eps)


def _reduce_to(layer: nn.Module, t: Tensor, shape: torch.Size) -> Tensor:
    """Sum (R, *y.shape) over every dimension but the affine parameters' own: (R, *shape)."""
    R = t.shape[0]
    if isinstance(layer, nn.LayerNorm):  # the trailing normalized_shape
        return t.reshape(R, -1, *shape).sum(dim=1)
    # GroupNorm / BatchNorm: per channel, dimension 1 of the input
    return t.sum(dim=[1, *range(3, t.dim())])


class ProjectionRule(_Singleton):
    """One matrix product ``y = x W_sᵀ`` (2-D rows x) of a slice of rows ``W_s = W[a : a + r]``
    of a weight, found in a layer's autograd graph rather than at a module's output
    (:class:`AttentionRule`): ``∇W_s = Dᵀ X`` as for a linear layer. ``Saved.extra`` is
    ``(a, block)``: the slice's first row and the rows per piece (``None``: the whole weight).
    A packed weight's slices (``nn.MultiheadAttention.in_proj_weight``, 3E rows, sliced for
    cross-attention into E and 2E rows) are cut into pieces of ``block`` rows, so that every call
    keys its share the same way; a single call of the whole weight is one piece. (A weight read
    in slices by some calls and whole by others, e.g. tied to an ``nn.Linear``, takes the
    engine's fallback.)"""

    names: tuple[str, ...] = ("weight",)

    def saved(self, layer: nn.Module, x: Tensor, covered: Covered) -> Saved | None:
        raise NotImplementedError("projection calls are recorded from the graph (AttentionRule.products)")

    def pieces(
        self, layer: nn.Module, saved: Saved, D: Tensor, covered: Covered, wanted: Wanted, alone: bool
    ) -> list[Contribution]:
        (weight,) = covered
        if not wanted(weight):
            return []
        assert weight is not None and saved.x is not None
        start, block = saved.extra
        rows = D.shape[-1]
        if block is None or (alone and start == 0 and rows == weight.shape[0]):
            return [(weight, None if rows == weight.shape[0] else start, Rows(saved.x, D))]
        return [(weight, start + k, Rows(saved.x, D[..., k : k + block])) for k in range(0, rows, block)]

    def macs(self, layer: nn.Module, x: torch.Size, out: torch.Size, R: int) -> tuple[int, int]:
        N, inp, width = x[0], x[1], out[-1]
        return R * N * inp * width, _rows_macs(R, N, inp, width, kept=True)


@dataclass(frozen=True)
class Product:
    """A projection :class:`AttentionRule` found: ``node`` computes ``x W[start : start + rows]ᵀ``
    (its output gradient is D); the graph walk resumes at ``resume`` (every input of the node
    but the weight's: x, and a bias added in the same node)."""

    weight: Tensor
    start: int
    rows: int
    block: int | None
    x: Tensor
    node: Node
    resume: tuple[Node, ...]


#: Nodes an attention call's graph may hold between its output and its inputs before the walk
#: gives up (the call is then left to the fallback): nn.MultiheadAttention's has about 30.
_WALK_LIMIT = 400


class AttentionRule(_Singleton):
    """``nn.MultiheadAttention``: its forward applies its projection weights with ``F.linear``
    inside ``F.multi_head_attention_forward`` (no module call to hook, and ``out_proj`` is never
    called as a module). After its forward, the call's autograd graph — from the output back to
    its tensor arguments (query, key, value, masks) — is searched for the matrix products whose
    second operand is (a transposed, possibly cast or split slice of) one of its weights:
    ``in_proj_weight`` (or ``q/k/v_proj_weight``) and ``out_proj.weight``. Each becomes a
    :class:`ProjectionRule` call (a product found again by a later call's walk is not recorded
    twice). A weight used any other way is reached by the engine's graph walk and takes the
    fallback, as do the biases (added in the same products or after them) and
    ``bias_k``/``bias_v``. Under saved-tensor hooks (activation checkpointing, ``save_on_cpu``)
    nothing is recorded: reading the products' saved operands would unpack them, and a
    checkpoint recomputes its region on every unpack.
    """

    names: tuple[str, ...] = ()

    def products(self, layer: nn.Module, inputs: Sequence[object], output: Tensor) -> list[Product]:
        assert isinstance(layer, nn.MultiheadAttention)
        weights: dict[int, Tensor] = {id(p): p for p in layer.parameters() if p.dim() == 2}
        # The inputs hold their nodes (the caller's arguments): their ids are not reused meanwhile.
        stop = {id(t.grad_fn) for t in inputs if isinstance(t, Tensor) and t.grad_fn is not None}
        found: list[Product] = []
        seen: set[int] = set()
        stack: list[Node | None] = [output.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen or id(node) in stop:
                continue
            seen.add(id(node))
            if len(seen) > _WALK_LIMIT:
                return []
            product = _product(node, weights, layer.embed_dim)
            if product is not None:
                found.append(product)
            stack.extend(fn for fn, _ in node.next_functions)
        return found


def _product(node: Node, weights: dict[int, Tensor], embed_dim: int) -> Product | None:
    """The :class:`Product` of an ``mm``/``addmm`` node whose second operand is one of
    ``weights`` (transposed; possibly cast by autocast; possibly a row slice from split/chunk),
    else ``None``."""
    name = type(node).__name__
    edges = node.next_functions
    if name == "MmBackward0":
        weight_edge, others = edges[1], edges[:1]
    elif name == "AddmmBackward0" and node._saved_alpha == 1:  # type: ignore[attr-defined]
        weight_edge, others = edges[2], edges[:2]
    else:
        return None
    fn, _ = weight_edge
    if fn is None or type(fn).__name__ != "TBackward0":
        return None
    fn, index = fn.next_functions[0]
    if fn is not None and type(fn).__name__ == "ToCopyBackward0":  # autocast's copy of the weight
        fn, index = fn.next_functions[0]
    sizes: list[int] | None = None
    if fn is not None and type(fn).__name__ in ("SplitBackward0", "SplitWithSizesBackward0"):
        if fn._saved_dim != 0:  # type: ignore[attr-defined]
            return None
        split = fn
        fn = split.next_functions[0][0]
        total = fn.variable.shape[0] if fn is not None and hasattr(fn, "variable") else 0
        if type(split).__name__ == "SplitWithSizesBackward0":
            sizes = list(split._saved_split_sizes)  # type: ignore[attr-defined]
        else:
            step = int(split._saved_split_size)  # type: ignore[attr-defined]
            sizes = [min(step, total - s) for s in range(0, total, step)]
    if fn is None or type(fn).__name__ != "AccumulateGrad":
        return None
    weight = weights.get(id(fn.variable))  # type: ignore[attr-defined]
    if weight is None:
        return None
    # The operands, read only now (each read unpacks a saved tensor): mat2 is saved only when x
    # requires grad (x's gradient needs it), x whenever the weight does.
    if name == "MmBackward0":
        x, mat2 = node._saved_self, node._saved_mat2  # type: ignore[attr-defined]
    else:
        x, mat2 = node._saved_mat1, node._saved_mat2  # type: ignore[attr-defined]
    if x is None or x.dim() != 2:
        return None
    if sizes is not None and not 0 <= index < len(sizes):
        return None
    start, rows = (0, weight.shape[0]) if sizes is None else (sum(sizes[:index]), sizes[index])
    if x.shape[1] != weight.shape[1] or (mat2 is not None and tuple(mat2.shape) != (weight.shape[1], rows)):
        return None
    block = None
    if weight.shape[0] != embed_dim:  # in_proj_weight: 3E rows, in pieces of E
        if start % embed_dim or rows % embed_dim:
            return None
        block = embed_dim
    resume = tuple(fn for fn, _ in others if fn is not None)
    return Product(weight, start, rows, block, x, node, resume)


_LINEAR, _CONV, _EMBEDDING, _NORM = LinearRule(), ConvRule(), EmbeddingRule(), NormRule()
_PROJECTION, _ATTENTION = ProjectionRule(), AttentionRule()
_INSTANCE_NAMES = {
    LinearRule: "_LINEAR",
    ConvRule: "_CONV",
    EmbeddingRule: "_EMBEDDING",
    NormRule: "_NORM",
    ProjectionRule: "_PROJECTION",
    AttentionRule: "_ATTENTION",
}


def rule_for(layer: nn.Module) -> LayerRule | AttentionRule | None:
    """The rule of a layer whose forward is exactly its class's (``None``: not covered)."""
    forward = type(layer).forward
    if isinstance(layer, nn.MultiheadAttention) and forward is nn.MultiheadAttention.forward:
        return _ATTENTION
    if isinstance(layer, nn.Linear) and forward is nn.Linear.forward:
        return _LINEAR
    for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(layer, conv):
            own = forward is conv.forward and type(layer)._conv_forward is conv._conv_forward
            return _CONV if own else None
    if isinstance(layer, nn.Embedding) and forward is nn.Embedding.forward:
        return _EMBEDDING
    if isinstance(layer, nn.LayerNorm) and forward is nn.LayerNorm.forward:
        return _NORM
    if isinstance(layer, nn.GroupNorm) and forward is nn.GroupNorm.forward:
        return _NORM
    if isinstance(layer, _BatchNorm) and forward is _BatchNorm.forward:
        return _NORM
    return None


# --------------------------------------------------------------------------- weight Gramians


def weight_gramian(D: Tensor, X: Tensor) -> Tensor:
    """``[⟨D_iᵀ X, D_jᵀ X⟩_F]_{ij}`` (R, R), float64, for D (R, B, out) and X (B, in).

    Takes the cheaper of the kernel route (``⟨D_i, X Xᵀ D_j⟩``) and the direct route (form
    ``D_iᵀ X`` a few output rows at a time); see :mod:`mtgrad.autogram` for the costs.
    """
    return _weight_gramian(D, X, keep=False)[0]


def weight_gramian_and_grads(D: Tensor, X: Tensor) -> tuple[Tensor, Tensor | None]:
    """:func:`weight_gramian`, and the per-task gradients ``D_iᵀ X`` (R, out, in) where its route
    formed them (the direct route; ``None`` after the kernel route). The update then combines
    them (``R·in·out`` multiply-adds) instead of forming ``D_wᵀ X`` (``B·in·out``, one more
    weight gradient); the direct route is taken where B is large, so that is the cheaper."""
    return _weight_gramian(D, X, keep=True)


def _weight_route(R: int, B: int, inp: int, out: int) -> str:
    """``"kernel"`` or ``"direct"``: the cheaper in multiply-adds, the kernel K = X Xᵀ being held
    whole, so only while it fits in a chunk (B ≤ 1448)."""
    kernel = B * B * inp + R * B * B * out + R * R * B * out
    direct = R * B * inp * out + R * R * inp * out
    return "kernel" if kernel <= direct and B * B <= CHUNK_ELEMENTS else "direct"


def _weight_gramian(D: Tensor, X: Tensor, keep: bool) -> tuple[Tensor, Tensor | None]:
    dtype = _compute_dtype(D, X)
    (D, d_scale), (X, x_scale) = _in_range(D.to(dtype)), _in_range(X.to(dtype))
    scale = d_scale * x_scale
    if _weight_route(D.shape[0], D.shape[1], X.shape[1], D.shape[2]) == "kernel":
        return _kernel_route(D, X) * scale**2, None
    if not keep:
        return _direct_route(D, X) * scale**2, None
    grads = D.new_empty((D.shape[0], D.shape[2], X.shape[1]))
    G = _direct_route(D, X, grads)
    if grads.dtype != torch.float64 and not (_host_sync_is_free(scale) and float(scale) == 1.0):
        _unscale_(grads, scale)
    return G * scale**2, grads


def _unscale_(t: Tensor, scale: Tensor) -> None:
    """Multiply ``t`` in place by the power of two ``scale`` (float64, exponent within ±254), in
    two halves of the same sign. The scale itself can leave t's range (2^66 · 2^63 > float32's
    2^128) while every entry of the result fits; each half is within range, and both move the
    entries the same way, so the product is exact and overflows or underflows only where the
    result itself does."""
    _, e = torch.frexp(scale)
    half = torch.ldexp(torch.ones_like(scale), torch.div(e - 1, 2, rounding_mode="trunc"))
    t.mul_(half.to(t.dtype)).mul_((scale / half).to(t.dtype))


def _in_range(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(t / 2^e, 2^e)`` (the scale in float64) for ``2^e`` near ``max |t|``: an exact rescaling
    after which the float32 products of the routes (``X Xᵀ``, ``K D``, ``Dᵀ X``) can neither
    overflow nor lose digits to underflow. On the CPU a tensor already in range (|e| ≤ 30) is
    returned as is, at no extra pass; elsewhere the scaling is always applied (no host read)."""
    one = torch.ones((), dtype=torch.float64, device=t.device)
    if t.dtype == torch.float64 or t.numel() == 0:
        return t, one
    _, e = torch.frexp(t.abs().amax())
    if _host_sync_is_free(t) and -30 <= int(e) <= 30:
        return t, one
    e = e.clamp(-126, 127)
    return t / torch.ldexp(one, e).to(t.dtype), torch.ldexp(one, e)


def _kernel_route(D: Tensor, X: Tensor) -> Tensor:
    # G[:, c] = [⟨D_i, K D_j⟩] for a chunk c of tasks j at a time: D stays a contiguous (R, B·out)
    # view (no copy), only K (B × B) and K D_c (|c|, B, out) are new.
    R, B, out = D.shape
    K = X @ X.T
    flat = D.reshape(R, -1)
    tasks = max(1, min(R, CHUNK_ELEMENTS // (B * out)))
    G = torch.zeros((R, R), dtype=torch.float64, device=D.device)
    for start in range(0, R, tasks):
        chunk = D[start : start + tasks]
        # bmm of the expanded K: matmul(K, chunk) would fold chunk into (B, c·out) by copying it.
        KD = torch.bmm(K.expand(chunk.shape[0], B, B), chunk)  # (c, B, out)
        G[:, start : start + tasks] = cross_gramian(flat, KD.reshape(KD.shape[0], -1))
    return G


def _direct_route(D: Tensor, X: Tensor, keep: Tensor | None = None) -> Tensor:
    # The per-task gradients of a slice of the weight's rows at a time: (R, c, in) for c output
    # rows, written into ``keep`` (R, out, in) when given, so that no second copy is ever held.
    R, B, out = D.shape
    cols = max(1, min(out, CHUNK_ELEMENTS // (R * X.shape[1])))
    G = torch.zeros((R, R), dtype=torch.float64, device=D.device)
    for start in range(0, out, cols):
        block = D[:, :, start : start + cols].transpose(1, 2) @ X  # (R, c, in)
        G += gramian([block])
        if keep is not None:
            keep[:, start : start + cols] = block
    return G
