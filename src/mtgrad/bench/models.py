"""Small, CPU-friendly multi-task architectures for the benchmarks.

Gradient surgery acts on the parameters that several tasks share, so every model here splits its
parameters in two: :meth:`~MultiTaskModel.shared_parameters` (what ``mtgrad.backward`` gets) and
:meth:`~MultiTaskModel.task_parameters` ``(i)`` (task i's own), every parameter in exactly one of
them. ``forward(x)`` returns one output per task. Where the tasks read one shared representation
``Z`` (:class:`HardParameterSharing`, :class:`MMoE`), ``features(x)`` returns it and ``heads(...)``
maps it to the outputs, so that ``representation=Z`` (MGDA-UB style) can be used::

    z = model.features(x)
    losses = [loss_fn(out, y) for out, y in zip(model.heads(z), targets)]
    mtgrad.backward(losses, model.shared_parameters(), mtgrad.PCGrad(), representation=z)

Architectures (small defaults: about 10k to 250k parameters, fast on a CPU):

* :class:`HardParameterSharing`: a shared trunk and one head per task (Caruana 1997);
  :func:`multimnist_lenet` (Sener & Koltun 2018's MultiMNIST network) and :func:`mlp_hard_sharing`.
* :class:`MTAN`: a shared conv trunk with per-task soft-attention modules (Liu, Johns & Davison,
  CVPR 2019).
* :class:`CrossStitch`: one column per task, mixed by cross-stitch units (Misra et al., CVPR 2016);
  :func:`cross_stitch_convnet`, :func:`cross_stitch_mlp`.
* :class:`RoutingNetwork`: per-task soft routing over K shared function blocks per layer (after
  Rosenbaum, Klinger & Riemer, ICLR 2018, as used in PCGrad's CIFAR-100 experiment).
* :class:`MMoE`: shared experts, one softmax gate and one tower per task (Ma et al., KDD 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import cast

import torch
from torch import Tensor, nn

__all__ = [
    "MTAN",
    "CrossStitch",
    "CrossStitchUnit",
    "HardParameterSharing",
    "MMoE",
    "MultiTaskModel",
    "RoutingNetwork",
    "cross_stitch_convnet",
    "cross_stitch_mlp",
    "mlp_hard_sharing",
    "multimnist_lenet",
]


class MultiTaskModel(nn.Module):
    """Base class: T task outputs and a shared / task-specific split of the parameters.

    Subclasses set ``num_tasks`` and implement :meth:`_shared_modules` and :meth:`_task_modules`;
    the parameter iterators are derived from those, so the split is declared once.
    """

    num_tasks: int

    def _shared_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _task_modules(self, i: int) -> list[nn.Module]:
        raise NotImplementedError

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters every task's loss depends on: pass these to ``mtgrad.backward``."""
        for module in self._shared_modules():
            yield from module.parameters()

    def task_parameters(self, i: int) -> Iterator[nn.Parameter]:
        """Task ``i``'s own parameters (0 <= i < num_tasks)."""
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.num_tasks:
            raise IndexError(f"task index {i!r} out of range for a model with {self.num_tasks} tasks")
        for module in self._task_modules(i):
            yield from module.parameters()


def _check_num_tasks(num_tasks: int) -> None:
    if num_tasks < 1:
        raise ValueError(f"a multi-task model needs at least one task, got {num_tasks}")


def _check_partition(model: MultiTaskModel) -> None:
    """Raise if a parameter is reused across the shared part and a task, or across two tasks.

    Such reuse (the same module passed as the trunk and a head, say) would put it in two groups,
    and ``mtgrad.backward`` would both operate on it and add the plain gradient to it.
    """
    owner: dict[int, str] = {}
    groups = [("shared", model.shared_parameters())]
    groups += [(f"task {i}", model.task_parameters(i)) for i in range(model.num_tasks)]
    for name, params in groups:
        for p in params:
            if id(p) in owner and owner[id(p)] != name:
                raise ValueError(
                    f"a parameter of shape {tuple(p.shape)} belongs to both {owner[id(p)]} and {name}: "
                    "modules must not be reused between the trunk and the heads or between heads"
                )
            owner[id(p)] = name


# --------------------------------------------------------------------------------------------
# Hard parameter sharing
# --------------------------------------------------------------------------------------------


class HardParameterSharing(MultiTaskModel):
    """A shared trunk followed by one head per task: ``outputs[i] = heads[i](trunk(x))``.

    The classic MTL architecture (Caruana 1997) and the one gradient-surgery papers mostly use
    (MGDA-UB on MultiMNIST, PCGrad, CAGrad). Shared = the trunk; task ``i`` = ``heads[i]``.
    ``features(x)`` is the shared representation ``Z`` for ``representation=``.
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        _check_num_tasks(len(heads))
        self.num_tasks = len(heads)
        self.trunk = trunk
        self.task_heads = nn.ModuleList(heads)
        _check_partition(self)

    def _shared_modules(self) -> list[nn.Module]:
        return [self.trunk]

    def _task_modules(self, i: int) -> list[nn.Module]:
        return [self.task_heads[i]]

    def features(self, x: Tensor) -> Tensor:
        """The shared representation ``Z = trunk(x)``."""
        return self.trunk(x)

    def heads(self, z: Tensor) -> list[Tensor]:
        """One output per task from the shared representation."""
        return [head(z) for head in self.task_heads]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.heads(self.features(x))


def multimnist_lenet(num_tasks: int = 2, num_classes: int = 10) -> HardParameterSharing:
    """The LeNet-style MultiMNIST network of Sener & Koltun (NeurIPS 2018), for 1×28×28.

    Trunk: conv(1→10, 5)-maxpool(2)-relu-conv(10→20, 5)-maxpool(2)-relu-fc(320→50)-relu; each
    head: fc(50→50)-relu-fc(50→num_classes), returning logits. The official code also has dropout
    (after conv2 and in the heads) and a log-softmax; they are left out here (use
    ``cross_entropy`` on the logits), so the model is deterministic in training mode.
    """
    _check_num_tasks(num_tasks)
    trunk = nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(10, 20, kernel_size=5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(320, 50),
        nn.ReLU(),
    )
    heads = [nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, num_classes)) for _ in range(num_tasks)]
    return HardParameterSharing(trunk, heads)


def _mlp(sizes: Sequence[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if final_activation or k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_hard_sharing(
    in_features: int,
    task_out_features: Sequence[int],
    hidden: Sequence[int] = (64, 64),
    head_hidden: Sequence[int] = (),
) -> HardParameterSharing:
    """An MLP trunk ``in_features → hidden... `` (ReLU after every layer) and MLP heads
    ``hidden[-1] → head_hidden... → task_out_features[i]`` (linear output: logits or values).
    Inputs of any shape are flattened from dimension 1."""
    _check_num_tasks(len(task_out_features))
    if not hidden:
        raise ValueError("the trunk needs at least one hidden layer (hidden is empty)")
    trunk = nn.Sequential(nn.Flatten(), _mlp([in_features, *hidden], final_activation=True))
    heads = [_mlp([hidden[-1], *head_hidden, out], final_activation=False) for out in task_out_features]
    return HardParameterSharing(trunk, heads)


# --------------------------------------------------------------------------------------------
# MTAN
# --------------------------------------------------------------------------------------------


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class _AttentionMask(nn.Module):
    """``a = sigmoid(BN(conv1×1(relu(BN(conv1×1(input))))))``: MTAN's task-specific mask g."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 1),
            nn.BatchNorm2d(c_out),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _TaskAttention(nn.Module):
    """One task's attention branch through all stages of :class:`MTAN`."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.masks = nn.ModuleList(_AttentionMask(c if j == 0 else 2 * c, c) for j, c in enumerate(channels))

    def forward(self, stages: list[tuple[Tensor, Tensor]], shared_att: nn.ModuleList, pool: nn.Module) -> Tensor:
        """``stages[j] = (u_j, p_j)``, the trunk's features; returns the last attended features."""
        attended: Tensor | None = None
        for (u, p), mask, f in zip(stages, self.masks, shared_att):
            m = mask(u if attended is None else torch.cat([u, attended], dim=1))
            attended = pool(f(m * p))
        assert attended is not None  # MTAN has at least one stage
        return attended


class MTAN(MultiTaskModel):
    """Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019), image-level encoder version.

    Shared trunk: ``len(channels)`` stages, each two 3×3 conv-BN-ReLU layers giving ``u_j`` (after
    the first) and ``p_j`` (after the second), then 2×2 max-pooling. Task ``t`` has one attention
    module per stage (Sec. 3): the mask ``m = sigmoid(conv1×1(conv1×1([u_j, a_{j-1}])))``
    (the input at stage 0 is ``u_0`` alone) is applied elementwise to the shared ``p_j``, and
    ``a_j = pool(f_j(m ⊙ p_j))`` is passed on to the next stage. After the last stage, ``a`` is
    global-average-pooled into a linear head (``task_out_features[t]`` outputs: class logits or
    regression values).

    Split: as in the paper (and its official code's ``encoder_block_att``), the 3×3 conv block
    ``f_j`` is shared by all tasks, so every task's gradient reaches it: it counts as **shared**,
    with the trunk. Task-specific = the task's attention masks and its head. No single tensor
    carries everything the heads read (each stage's features feed the masks), so there is no
    ``features``/``heads`` pair for ``representation=``.

    Shortcuts versus the paper: the SegNet/Wide-ResNet backbones are replaced by the small trunk
    above, and the decoder (for dense per-pixel tasks) is left out: heads are image-level.
    Defaults fit 28×28 or 32×32 inputs.
    """

    def __init__(
        self, in_channels: int, task_out_features: Sequence[int], channels: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        _check_num_tasks(len(task_out_features))
        if not channels:
            raise ValueError("MTAN needs at least one stage (channels is empty)")
        self.num_tasks = len(task_out_features)
        c = list(channels)
        self.first = nn.ModuleList(_conv_bn_relu(a, b) for a, b in zip([in_channels, *c[:-1]], c))
        self.second = nn.ModuleList(_conv_bn_relu(b, b) for b in c)
        # f_j: maps the attended features of stage j to the width of stage j + 1 (the last keeps it).
        self.shared_att = nn.ModuleList(_conv_bn_relu(a, b) for a, b in zip(c, [*c[1:], c[-1]]))
        self.attention = nn.ModuleList(_TaskAttention(c) for _ in range(self.num_tasks))
        self.task_heads = nn.ModuleList(nn.Linear(c[-1], out) for out in task_out_features)
        self.pool = nn.MaxPool2d(2)

    def _shared_modules(self) -> list[nn.Module]:
        return [self.first, self.second, self.shared_att]

    def _task_modules(self, i: int) -> list[nn.Module]:
        return [self.attention[i], self.task_heads[i]]

    def forward(self, x: Tensor) -> list[Tensor]:
        stages: list[tuple[Tensor, Tensor]] = []
        h = x
        for first, second in zip(self.first, self.second):
            u = first(h)
            p = second(u)
            stages.append((u, p))
            h = self.pool(p)
        return [
            head(attention(stages, self.shared_att, self.pool).mean(dim=(2, 3)))
            for attention, head in zip(self.attention, self.task_heads)
        ]


# --------------------------------------------------------------------------------------------
# Cross-stitch networks
# --------------------------------------------------------------------------------------------


class CrossStitchUnit(nn.Module):
    """``x̃_s = Σ_t α[s, t] x_t``: a learnable T×T linear mix of the T task columns' activations.

    Initialised to ``α[s, s] = alpha_self`` and ``α[s, t] = (1 - alpha_self)/(T - 1)`` for
    ``t ≠ s`` (rows sum to one; Misra et al.'s ablation of the initialisation favours a "mostly self"
    (0.9, 0.1) start).
    One α per (layer, task pair), not per channel, as in the paper's main formulation.
    """

    def __init__(self, num_tasks: int, alpha_self: float = 0.9) -> None:
        super().__init__()
        _check_num_tasks(num_tasks)
        if not 0.0 <= alpha_self <= 1.0:
            raise ValueError(f"alpha_self must be in [0, 1], got {alpha_self}")
        if num_tasks == 1:
            alpha = torch.ones(1, 1)
        else:
            alpha = torch.full((num_tasks, num_tasks), (1.0 - alpha_self) / (num_tasks - 1))
            alpha.fill_diagonal_(alpha_self)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        if len(xs) != self.alpha.shape[0]:
            raise ValueError(f"expected {self.alpha.shape[0]} task activations, got {len(xs)}")
        stacked = torch.stack(list(xs))  # (T, B, ...)
        mixed = torch.tensordot(self.alpha, stacked, dims=([1], [0]))
        return list(mixed.unbind(0))


class CrossStitch(MultiTaskModel):
    """Cross-stitch network (Misra, Shrivastava, Gupta & Hebert, CVPR 2016).

    ``make_layers()`` is called once per task to build T identical but separately parameterised
    columns of L layers; after each layer a :class:`CrossStitchUnit` mixes the T columns'
    activations, and ``heads[t]`` reads column t's last mixed activation.

    Which parameters are shared: the **columns and the cross-stitch units**
    (:meth:`shared_parameters`); task ``t`` owns only its head. A column is built for one task,
    but through the units (``α[s, t] ≠ 0``) every task's loss has a gradient on every layer of every
    column, so each of them is a parameter several tasks fight over — exactly what gradient surgery
    acts on (with ``alpha_self=1``, α = I, the columns would be isolated again). The heads are
    reached by their own task only.

    The paper places units after pooling and fully connected layers of AlexNet and scales up the
    learning rate of α; here a unit follows every layer of ``make_layers()``, and α trains at the
    optimizer's learning rate.
    """

    def __init__(
        self,
        make_layers: Callable[[], Sequence[nn.Module]],
        heads: Sequence[nn.Module],
        alpha_self: float = 0.9,
    ) -> None:
        super().__init__()
        _check_num_tasks(len(heads))
        self.num_tasks = len(heads)
        columns = [nn.ModuleList(make_layers()) for _ in range(self.num_tasks)]
        depths = {len(column) for column in columns}
        if depths == {0} or len(depths) != 1:
            raise ValueError(
                f"make_layers() must return the same non-zero number of layers every call, got {sorted(depths)}"
            )
        self.columns = nn.ModuleList(columns)
        self.stitches = nn.ModuleList(CrossStitchUnit(self.num_tasks, alpha_self) for _ in range(depths.pop()))
        self.task_heads = nn.ModuleList(heads)
        _check_partition(self)

    def _shared_modules(self) -> list[nn.Module]:
        return [self.columns, self.stitches]

    def _task_modules(self, i: int) -> list[nn.Module]:
        return [self.task_heads[i]]

    def forward(self, x: Tensor) -> list[Tensor]:
        columns = [cast(nn.ModuleList, column) for column in self.columns]
        hs = [x] * self.num_tasks
        for k, stitch in enumerate(self.stitches):
            hs = stitch([column[k](h) for column, h in zip(columns, hs)])
        return [head(h) for head, h in zip(self.task_heads, hs)]


def cross_stitch_convnet(
    in_channels: int, task_out_features: Sequence[int], channels: Sequence[int] = (16, 32), alpha_self: float = 0.9
) -> CrossStitch:
    """Columns of 3×3 conv-ReLU-maxpool(2) layers (widths ``channels``), linear heads on the
    global-average-pooled last layer. For 28×28 or 32×32 images."""
    if not channels:
        raise ValueError("channels is empty: the columns need at least one layer")
    widths = [in_channels, *channels]

    def make_layers() -> list[nn.Module]:
        return [nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)) for a, b in pairwise(widths)]

    heads = [
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], out)) for out in task_out_features
    ]
    return CrossStitch(make_layers, heads, alpha_self)


def cross_stitch_mlp(
    in_features: int, task_out_features: Sequence[int], hidden: Sequence[int] = (64, 64), alpha_self: float = 0.9
) -> CrossStitch:
    """Columns of Linear-ReLU layers (inputs flattened from dimension 1), linear heads."""
    if not hidden:
        raise ValueError("hidden is empty: the columns need at least one layer")
    widths = [in_features, *hidden]

    def make_layers() -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden[0]), nn.ReLU())]
        layers += [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in pairwise(widths[1:])]
        return layers

    heads = [nn.Linear(hidden[-1], out) for out in task_out_features]
    return CrossStitch(make_layers, heads, alpha_self)


# --------------------------------------------------------------------------------------------
# Routing network
# --------------------------------------------------------------------------------------------


class _GateLogits(nn.Module):
    """One task's routing logits ``(num_layers, num_blocks)``, zero-initialised (uniform mixing)."""

    def __init__(self, num_layers: int, num_blocks: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers, num_blocks))


class RoutingNetwork(MultiTaskModel):
    """Task-conditioned routing over shared function blocks (after Rosenbaum et al., ICLR 2018).

    ``num_layers`` routed layers, each with ``num_blocks`` shared function blocks (Linear-ReLU,
    inputs flattened from dimension 1). Task ``t`` computes its own path::

        h_t ← Σ_k softmax(gates[t, l])_k · block_{l,k}(h_t)          for l = 1..num_layers

    and a linear head reads ``h_t``. Shared = the function blocks; task ``t`` = its gate logits
    ``gates[t]`` (num_layers × num_blocks, initialised to zero: uniform mixing) and its head.

    This is **not** the paper's router. Rosenbaum et al. choose *one* block per layer with a
    router trained by reinforcement learning (REINFORCE / weighted policy learning), as in PCGrad's
    CIFAR-100 experiment; here the per-task choice is relaxed to a learnable softmax over the K
    blocks, trained by backpropagation, and independent of the input (the paper's routers are
    task-conditioned too, but may also read the activation). It keeps the structure gradient
    surgery cares about, task-specific paths through a shared pool of blocks, without RL.
    The paper's CIFAR-MTL network also has a shared (unrouted) convolutional stem; with this class
    one is had by putting a feature extractor in front and counting it as shared.
    """

    def __init__(
        self,
        in_features: int,
        task_out_features: Sequence[int],
        hidden: int = 64,
        num_layers: int = 3,
        num_blocks: int = 4,
    ) -> None:
        super().__init__()
        _check_num_tasks(len(task_out_features))
        if num_layers < 1 or num_blocks < 1:
            raise ValueError(f"need num_layers >= 1 and num_blocks >= 1, got {num_layers} and {num_blocks}")
        self.num_tasks = len(task_out_features)
        widths = [in_features] + [hidden] * num_layers
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for _ in range(num_blocks))
            for a, b in pairwise(widths)
        )
        self.gates = nn.ModuleList(_GateLogits(num_layers, num_blocks) for _ in range(self.num_tasks))
        self.task_heads = nn.ModuleList(nn.Linear(hidden, out) for out in task_out_features)

    def _shared_modules(self) -> list[nn.Module]:
        return [self.blocks]

    def _task_modules(self, i: int) -> list[nn.Module]:
        return [self.gates[i], self.task_heads[i]]

    def routing_weights(self) -> Tensor:
        """The soft routing ``(T, num_layers, num_blocks)``: each task's block weights per layer."""
        return torch.softmax(torch.stack([cast(_GateLogits, gate).logits for gate in self.gates]), dim=-1)

    def forward(self, x: Tensor) -> list[Tensor]:
        weights = self.routing_weights()  # (T, L, K)
        h = x.flatten(1).unsqueeze(0)  # (1, B, d): the first layer's input is common to all tasks
        for layer, blocks in enumerate(self.blocks):
            outs = torch.stack([block(h) for block in cast(nn.ModuleList, blocks)], dim=-1)  # (1 or T, B, d, K)
            h = (outs * weights[:, layer, None, None, :]).sum(-1)  # (T, B, d)
        return [head(h_t) for head, h_t in zip(self.task_heads, h.unbind(0))]


# --------------------------------------------------------------------------------------------
# MMoE
# --------------------------------------------------------------------------------------------


class MMoE(MultiTaskModel):
    """Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018).

    ``num_experts`` shared expert MLPs ``in_features → expert_hidden → expert_dim`` (ReLU), one
    softmax gate per task ``g_t(x) = softmax(W_t x)`` over the experts, and one tower MLP
    per task ``expert_dim → tower_hidden → task_out_features[t]`` reading
    ``Σ_e g_t(x)_e · expert_e(x)``. Inputs are flattened from dimension 1.

    Shared = the experts; task ``t`` = its gate and its tower. ``features(x)`` returns the
    experts' outputs ``Z`` (B, E, expert_dim), the shared representation; the gates read ``x``
    itself, so ``heads(z, x)`` takes both (they have no shared parameter, so ``Z`` carries every
    dependence on the shared parameters, as ``representation=`` requires).
    """

    def __init__(
        self,
        in_features: int,
        task_out_features: Sequence[int],
        num_experts: int = 4,
        expert_hidden: int = 64,
        expert_dim: int = 32,
        tower_hidden: int = 16,
    ) -> None:
        super().__init__()
        _check_num_tasks(len(task_out_features))
        if num_experts < 1:
            raise ValueError(f"MMoE needs at least one expert, got num_experts={num_experts}")
        self.num_tasks = len(task_out_features)
        self.experts = nn.ModuleList(
            _mlp([in_features, expert_hidden, expert_dim], final_activation=True) for _ in range(num_experts)
        )
        self.gates = nn.ModuleList(nn.Linear(in_features, num_experts) for _ in range(self.num_tasks))
        self.towers = nn.ModuleList(
            _mlp([expert_dim, tower_hidden, out], final_activation=False) for out in task_out_features
        )

    def _shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def _task_modules(self, i: int) -> list[nn.Module]:
        return [self.gates[i], self.towers[i]]

    def features(self, x: Tensor) -> Tensor:
        """The experts' outputs ``(B, num_experts, expert_dim)``: the shared representation."""
        flat = x.flatten(1)
        return torch.stack([expert(flat) for expert in self.experts], dim=1)

    def gate_weights(self, x: Tensor) -> Tensor:
        """Each task's mixture over the experts, ``(T, B, num_experts)``."""
        flat = x.flatten(1)
        return torch.stack([torch.softmax(gate(flat), dim=-1) for gate in self.gates])

    def heads(self, z: Tensor, x: Tensor) -> list[Tensor]:
        """Task outputs from the experts' outputs ``z`` and the input ``x`` (for the gates)."""
        mixed = torch.einsum("tbe,bed->tbd", self.gate_weights(x), z)
        return [tower(m) for tower, m in zip(self.towers, mixed.unbind(0))]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.heads(self.features(x), x)
