"""The Gramian-only engine: ``G = J Jᵀ`` of the shared-parameter task gradients without ``J``.

For a linear layer ``y = x Wᵀ + b`` (input rows ``x_b``, output rows ``y_b``, ``b = 1…B`` over the
batch and any leading dimensions), task i's weight gradient is ``∇_W L_i = D_iᵀ X`` where
``X`` (B, in) stacks the inputs and ``D_i = ∂L_i/∂Y`` (B, out) the output gradients ("δ"), and
``∇_b L_i = D_iᵀ 1``. Their inner products need only ``X`` and the ``D_i``::

    ⟨∇_W L_i, ∇_W L_j⟩ = tr(Xᵀ D_i D_jᵀ X) = ⟨D_i, K D_j⟩_F,   K = X Xᵀ (B, B),
    ⟨∇_b L_i, ∇_b L_j⟩ = ⟨D_iᵀ 1, D_jᵀ 1⟩.

Every supported layer type has such a rule (:mod:`mtgrad.layer_gramians`): convolutions (on the
unfolded input, or one weight-only convolution backward for all tasks), embeddings (the rows the
batch looked up), the affine parameters of LayerNorm, GroupNorm and BatchNorm (``Σ D ⊙ x̂``).
A parameter used at several call sites (a layer applied twice, tied weights) sums its calls'
gradients: the calls' pieces are merged (rows concatenated, blocks added) before the Gramian,
which gives the cross terms between calls.

:class:`GramianEngine` hooks the supported layers of a module to record each call's input and
where its output gradient enters the graph. :meth:`GramianEngine.measure` then computes the
``D_i`` at those outputs — T backward passes on the CPU, one vmapped backward
(``autograd.grad(..., is_grads_batched=True)``) elsewhere — and the gradients of every shared
parameter that no recorded call covers (a layer type without a rule, a weight also used
functionally): those *fallback* parameters are held as blocks ``(T, *p.shape)`` and enter through
:func:`mtgrad.gramian.gramian`, so any model works, with less saving. The update
``Σ_i w_i ∇L_i`` then comes from the same ``D_i`` (:meth:`Measured.update`), without a second
backward through the trunk.

Cost per linear weight (T tasks, B rows, ``in``/``out`` features), the cheaper route is taken:

* kernel: ``B²·in + T·B²·out + T²·B·out`` multiply-adds (``K``, then ``K D_i``, then the inner
  products), as many tasks at a time as keep ``K D_i`` within ``CHUNK_ELEMENTS`` numbers (at
  least one task, B·out numbers); only while ``K`` (B × B) itself fits in a chunk;
* direct: ``T·B·in·out + T²·in·out`` (the per-task weight gradients, as the other engines
  compute them, about ``CHUNK_ELEMENTS`` at a time and at least one output row of every task),
  when B is large next to ``in``. A weight's gradients formed this way are kept for the update,
  which then combines them (``T·in·out``) instead of forming ``D_wᵀX`` (``B·in·out``).

On the benchmark MLP (B = 256, T = 10) the kernel route is 4–7× cheaper per layer than forming
the gradients. A convolution's rows are batch × output positions, so only its small late layers
take the kernel route; the others form their per-task gradients (the loop engine's weight cost,
without its T full backward passes through the rest of the graph). The memory held beyond an
ordinary step is the ``D_i`` of the recorded calls, the per-task gradients of the weights the
direct route formed (and of biases and normalisation parameters), and one layer's
intermediates at a time; half-precision layers are computed on float32 copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from ._autocast import outside_autocast
from ._warnings import warn as warn_user
from .distributed import LOCAL, Replicas
from .engine import batched_vjp
from .gramian import combine, gramian
from .layer_gramians import _PROJECTION, AttentionRule, Block, LayerRule, Rows, Saved, merged_gramian, rule_for

Rule = LayerRule | AttentionRule

__all__ = ["GramianEngine", "engine_for"]


@dataclass(frozen=True)
class _Call:
    """One recorded call of a hooked layer: what the Gramian of its parameters needs."""

    layer: nn.Module
    rule: LayerRule
    covered: tuple[Tensor | None, ...]  # the rule's parameters: each a leaf requiring grad, or None
    saved: Saved  # what the rule's pieces read besides D (the input, detached: shares its version)
    version: int  # the input's _version at the call: an in-place change afterwards invalidates it
    out: GradientEdge  # where the output's gradient D enters the graph (robust to in-place ops after)
    resume: tuple[Node, ...]  # where the graph walk goes on past the call: x's node (if any), an addmm's bias
    out_shape: tuple[int, ...]  # the output's shape and dtype: a zero D stands in where none reaches
    out_dtype: torch.dtype


@dataclass(frozen=True)
class _Plan:
    calls: list[_Call]  # recorded calls on the losses' graph whose D is needed
    activation: set[int]  # ids of the shared parameters computed from the calls' pieces
    fallback: list[Tensor]  # shared parameters computed as blocks (T, *p.shape)


class GramianEngine:
    """Records the layer calls of ``modules`` so :func:`mtgrad.backward` needs no Jacobian.

    Create it **once, before the forward passes** (it installs forward hooks), and pass it as the
    engine::

        engine = mtgrad.GramianEngine(model.trunk)
        for x, ys in loader:
            opt.zero_grad()
            losses = model(x, ys)
            mtgrad.backward(losses, model.trunk.parameters(), mtgrad.PCGrad(), engine=engine)
            opt.step()

    ``backward`` then computes the Gramian from each layer's inputs and output gradients (see
    :mod:`mtgrad.autogram`), the shared parameters' update ``Σ_i w_i ∇L_i`` from the same output
    gradients, and gives every other leaf ``∇ Σ_i L_i``, as the other engines do. Only Gramian
    weightings (and ``Reuse``, ``CAGradFast``) can use it, and shared parameters must have no
    tensor hooks (``register_hook``: they would transform per-task gradients it never forms).
    The hooks hold the engine: saving or copying a hooked layer alone carries the engine and its
    other layers along (save the model's ``state_dict``, or the whole model, instead).

    Every layer inside ``modules`` of a supported type is hooked: ``nn.Linear``, ``nn.Conv1d/2d/3d``,
    ``nn.Embedding``, ``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.BatchNorm1d/2d/3d`` (and subclasses
    that keep their ``forward``; see :mod:`mtgrad.layer_gramians`), and ``nn.MultiheadAttention``,
    whose projection products are found in each call's autograd graph (its biases take the
    fallback). A call is recorded when grad mode is on, its output requires grad, the layer's
    class keeps its type's ``forward`` (no parametrization, weight norm or pruning derives its
    weight) and one of its parameters is a leaf that requires grad. Shared parameters that no
    recorded call covers (other layer types, derived weights, a weight also used outside its
    module's ``forward``) are handled by the fallback: their gradient blocks ``(T, *p.shape)``
    are held, as in the batched engine.
    Forward hooks registered on a layer before the engine that change its output are not
    supported.

    Recorded calls are consumed by the next ``mtgrad.backward(..., engine=engine)``: run the
    forward(s) of one backward call, then call it. With ``retain_graph=True`` the calls on that
    call's graph are kept (for another backward of the same losses) and the others dropped. A
    forward with grad enabled that is never backpropagated through the engine (evaluation with grad
    on, or a plain ``loss.backward()``) keeps its records — and through them its autograd graph
    and saved activations — until the next engine call or :meth:`reset`; run evaluation under
    ``torch.no_grad()``.

    Use :meth:`close` (or a ``with`` block) to remove the hooks.

    Args:
        modules: the module(s) whose layers to hook, typically the shared trunk. Hooking a
            whole model is fine: layers whose parameters are not shared are ignored.
        vectorize: how the layers' output gradients are computed (see :attr:`vectorize`).

    Raises:
        TypeError: an argument that is not an ``nn.Module``.
        ValueError: no supported layer inside ``modules`` (nothing to hook).
    """

    def __init__(self, *modules: nn.Module, vectorize: bool | None = None) -> None:
        for i, module in enumerate(modules):
            if not isinstance(module, nn.Module):
                raise TypeError(f"GramianEngine takes nn.Module arguments, argument {i} is {type(module).__name__}")
        layers: dict[int, tuple[nn.Module, Rule]] = {}
        for module in modules:
            for sub in module.modules():
                rule = rule_for(sub)
                if rule is not None:
                    layers.setdefault(id(sub), (sub, rule))
        if not layers:
            raise ValueError(
                "GramianEngine found no layer it can read (Linear, Conv1d/2d/3d, Embedding, LayerNorm, "
                "GroupNorm, BatchNorm, MultiheadAttention): every shared parameter would be held as a block (T, *shape); "
                "use engine='batched' or 'loop' instead"
            )
        self._layers = [layer for layer, _ in layers.values()]
        self._calls: list[_Call] = []
        self._eager_record = _eager(self._record)
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(_Hook(self, rule), with_kwargs=True) for layer, rule in layers.values()
        ]
        self._warned = False
        self.max_records: int | None = None
        """Drop the oldest recorded calls beyond this many (``None``: keep all). The engine that
        :func:`engine_for` installs bounds it from the calls each step consumes, so that forwards
        no backward consumes (evaluation with grad on) cannot hold their graphs indefinitely."""
        self.vectorize = vectorize
        """One vmapped backward for the R output gradients (True), R backward passes (False), or
        by device (None: passes on the CPU, where they measured faster — 91 against 181 ms on the
        benchmark CNN, 216 against 273 ms on the MLP — vmapped elsewhere)."""
        self.last_num_calls = 0
        """Recorded calls the last call consumed."""
        self.last_fallback_numel = 0
        """Entries of the shared parameters held as blocks ``(T, *p.shape)`` by the last call."""

    @property
    def layers(self) -> list[nn.Module]:
        """The hooked layers."""
        return list(self._layers)

    @property
    def num_recorded(self) -> int:
        """Calls recorded and not yet consumed by a backward."""
        return len(self._calls)

    def estimated_costs(self, num_tasks: int) -> tuple[int, int]:
        """Multiply-adds of the recorded calls' weights for ``num_tasks`` tasks: ``(R weight
        gradients, this engine's routes)`` (:meth:`mtgrad.layer_gramians.LayerRule.macs`).

        T backward passes cost about ``2·L`` there (input and weight gradients alike) and this
        engine ``L + E`` (the T passes to the layers' outputs, then its routes), for the returned
        ``(L, E)``: it saves work only where ``E < L``, i.e. where the kernel route applies
        (few rows next to the layer's width, as a large MLP's). This is what
        :func:`mtgrad.backward` reads when no engine is named.
        """
        loop = routes = 0
        for call in self._calls:
            if call.saved.x is not None and call.covered[0] is not None:
                a, b = call.rule.macs(call.layer, call.saved.x.shape, torch.Size(call.out_shape), num_tasks)
                loop, routes = loop + a, routes + b
        return loop, routes

    def reset(self) -> None:
        """Forget every recorded call (and release the inputs it holds)."""
        self._calls = []

    def __getstate__(self) -> dict[str, object]:
        # Pickled with its module (torch.save(model), copy.deepcopy): the hooks and layers, not
        # the records of forwards (their graphs belong to this process) nor the compiled-region
        # wrapper (rebuilt).
        state = self.__dict__.copy()
        state["_calls"] = []
        del state["_eager_record"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._eager_record = _eager(self._record)

    def close(self) -> None:
        """Remove the hooks and forget the recorded calls."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.reset()

    def __enter__(self) -> GramianEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if not self._handles else f"{len(self._calls)} recorded calls"
        return f"GramianEngine({len(self._layers)} layers, {state})"

    def _record(self, rule: Rule, layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if not torch.is_grad_enabled() or rule_for(layer) is not rule:
            return  # not the rule's formula: the graph walk and the fallback handle the layer
        if isinstance(rule, AttentionRule):
            return self._record_attention(rule, layer, args, kwargs, output)
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor) or torch._C._functorch.is_functorch_wrapped_tensor(output):
            return  # inside torch.func transforms the graph is not the caller's: nothing to record
        if parametrize.is_parametrized(layer):
            return  # a derived weight: the graph walk and the fallback handle it
        covered = []
        for name in rule.names:
            own = layer._parameters.get(name)
            derived = layer.__dict__.get(name)  # weight_norm / prune set a computed tensor here
            if own is None and isinstance(derived, Tensor) and derived.requires_grad:
                return
            covered.append(_leaf(own))
        if all(t is None for t in covered):
            return  # frozen: nothing to record
        saved = rule.saved(layer, x, tuple(covered))
        if saved is None:
            return
        # For inputs of more than 2 dims F.linear returns a view of its 2-D result; an in-place
        # op on that view would take the view's node off the graph, not its base's.
        base: Tensor = output
        if output._is_view() and output._base is not None and output._base.numel() == output.numel():
            base = output._base
        resume = (get_gradient_edge(x).node,) if x.requires_grad else ()
        edge = get_gradient_edge(base)
        self._add(_Call(layer, rule, tuple(covered), saved, x._version, edge, resume, tuple(base.shape), base.dtype))

    def _record_attention(self, rule: AttentionRule, layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        out = output[0] if isinstance(output, tuple) and output else output
        if not isinstance(out, Tensor) or not out.requires_grad or parametrize.is_parametrized(layer):
            return
        if torch._C._functorch.is_functorch_wrapped_tensor(out) or _saved_tensor_hooks_active():
            return  # reading the products' saved operands would unpack them (a checkpoint recomputes)
        inputs = [*args, *kwargs.values()]  # query, key, value and the masks: where the walk stops
        recorded = {id(call.out.node) for call in self._calls if call.rule is _PROJECTION}
        for product in rule.products(layer, inputs, out):
            if id(product.node) in recorded:
                continue  # already recorded (reached again through a mask computed from it)
            x = product.x.detach()
            saved = Saved(x, (product.start, product.block))
            edge = GradientEdge(product.node, 0)
            shape = (x.shape[0], product.rows)
            self._add(_Call(layer, _PROJECTION, (product.weight,), saved, x._version, edge, product.resume, shape, x.dtype))

    def _add(self, call: _Call) -> None:
        self._calls.append(call)
        if self.max_records is not None and len(self._calls) > self.max_records:
            del self._calls[: len(self._calls) - self.max_records]

    @outside_autocast
    def gramian(
        self,
        losses: Sequence[Tensor],
        shared_params: Iterable[Tensor],
        cotangents: Tensor | None = None,
        *,
        retain_graph: bool = False,
        replicas: Replicas = LOCAL,
    ) -> Tensor:
        """``C G Cᵀ`` (R, R), float64, for the Gramian ``G`` of the losses' shared-parameter gradients.

        ``cotangents`` ``C`` (R, T) defaults to the identity (then the result is ``G``); row r
        stands for the gradient of ``Σ_i C[r, i] L_i`` (CAGrad-Fast's pseudo-task is one such
        row). The R output gradients of the recorded layers (and the fallback parameters'
        gradients) come from R backward passes to those outputs, or one vmapped backward (see
        ``vectorize``); the graph is kept. Recorded calls are consumed (see the class). This
        does not touch any ``.grad``.

        With ``replicas`` of several ranks (:mod:`mtgrad.distributed`), ``G`` is that of the
        global batch, whose loss is the mean of the ranks' losses: every call's ``X`` and ``D/W``
        are all-gathered along the batch (the cross terms between ranks need them), the bias
        sums and fallback blocks all-reduced. Every rank must hold the same batch size.

        Raises:
            ValueError: hooks removed, no recorded call on the losses' graph although hooked
                shared layers feed them, or a recorded input modified in place since its call.
        """
        return self.measure(losses, shared_params, cotangents, retain_graph=retain_graph, replicas=replicas).gramian

    @outside_autocast
    def measure(
        self,
        losses: Sequence[Tensor],
        shared_params: Iterable[Tensor],
        cotangents: Tensor | None = None,
        *,
        retain_graph: bool = False,
        replicas: Replicas = LOCAL,
    ) -> Measured:
        """:meth:`gramian`, keeping what the update needs: :meth:`Measured.update` then gives
        ``∇_θ Σ_r w_r (C L)_r`` from the same output gradients, without another backward."""
        params = list({id(p): p for p in shared_params if p.requires_grad}.values())
        if any(not p.is_leaf for p in params):
            raise ValueError("shared_params must be leaf tensors (parameters)")
        try:
            return self._measure(list(losses), params, cotangents, replicas)
        finally:
            if not retain_graph:
                self.reset()

    def _measure(
        self, losses: list[Tensor], params: list[Tensor], cotangents: Tensor | None, replicas: Replicas
    ) -> Measured:
        if not self._handles:
            raise ValueError("this GramianEngine is closed (its hooks were removed); create a new one")
        stacked = torch.stack(losses)
        C = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device) if cotangents is None else cotangents
        plan = self._plan(losses, params)
        self._calls = list(plan.calls)  # what a retain_graph=True call keeps: its own graph's calls
        for call in plan.calls:
            if call.saved.x is not None and call.saved.x._version != call.version:
                raise ValueError(
                    f"the input of a hooked {type(call.layer).__name__} was modified in place after the "
                    "layer's forward; the Gramian engine reads it (clone it before the in-place op)"
                )
        inputs: list[GradientEdge | Tensor] = [call.out for call in plan.calls] + plan.fallback
        R = C.shape[0]
        G = C.new_zeros((R, R), dtype=torch.float64)
        if not inputs and not replicas.parallel:
            return Measured(G, plan, [], [], {})  # no shared parameter is on the graph (backward rejects that case earlier)
        vectorize = self.vectorize if self.vectorize is not None else stacked.device.type != "cpu"
        if not inputs:
            grads: list[Tensor | None] = []
        elif vectorize:
            grads = batched_vjp(stacked, inputs, C.to(stacked.dtype))
        else:
            grads = _row_by_row_vjp(stacked, inputs, C.to(stacked.dtype))
        deltas = grads[: len(plan.calls)]
        blocks = [
            torch.zeros((R, *p.shape), dtype=p.dtype, device=p.device) if g is None else g
            for p, g in zip(plan.fallback, grads[len(plan.calls) :])
        ]
        del grads
        self.last_fallback_numel = sum(p.numel() for p in plan.fallback)
        self.last_num_calls = len(plan.calls)
        kept = _add_layer_gramians(G, plan.calls, deltas, plan.activation, replicas)
        replicas.mean_(blocks)
        for block in blocks:
            G += gramian([block])
        # The kernel route gives ⟨D_i, K D_j⟩, symmetric only up to rounding; the methods expect G = Gᵀ.
        return Measured((G + G.T) / 2, plan, deltas, blocks, kept)

    def _plan(self, losses: list[Tensor], params: list[Tensor]) -> _Plan:
        """Which recorded calls give D, which shared parameters fall back to blocks.

        Walks the losses' graph; at a recorded call's output node it continues at the call's
        input instead of entering the layer, so a shared leaf reached by the walk is used
        somewhere no recorded call covers and takes the fallback (its block then holds *all* its
        uses, so its calls are not needed for it).
        """
        shared = {id(p) for p in params}
        at_node: dict[int, list[_Call]] = {}
        for call in self._calls:
            if any(t is not None and id(t) in shared for t in call.covered):
                at_node.setdefault(id(call.out.node), []).append(call)
        had_records = bool(at_node)
        seen: dict[int, Node] = {}  # holds the nodes too, so that their ids are not reused
        reached: set[int] = set()
        used: list[_Call] = []
        stack = [loss.grad_fn for loss in losses]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen[id(node)] = node
            calls = at_node.get(id(node))
            if calls is not None:
                used.extend(calls)
                stack.extend(node for call in calls for node in call.resume)
                continue
            variable = getattr(node, "variable", None)
            if variable is not None:
                reached.add(id(variable))
            stack.extend(fn for fn, _ in node.next_functions)
        reached |= {id(loss) for loss in losses if loss.grad_fn is None}
        reached |= _sliced_and_whole(used)
        covered = {id(t) for call in used for t in call.covered if t is not None} & shared
        self._check_recorded(used, reached, shared, had_records)
        activation = covered - reached
        fallback = [p for p in params if id(p) in reached]
        calls = [c for c in used if any(t is not None and id(t) in activation for t in c.covered)]
        return _Plan(calls, activation, fallback)

    def _check_recorded(self, used: list[_Call], reached: set[int], shared: set[int], had_records: bool) -> None:
        if used:
            return
        if had_records:
            raise ValueError(
                "GramianEngine holds calls of its layers, but none on these losses' graph: "
                "the forward ran on another copy of the module, or an earlier backward call consumed "
                "the records (run the forward of each backward call right before it)"
            )
        hooked = {id(t) for layer in self._layers for t in layer.parameters()}
        if not hooked & shared and not self._warned:
            self._warned = True
            warn_user(
                "GramianEngine's layers hold none of the shared parameters (an engine made on another "
                "module?): it saves nothing, every shared parameter is held as a gradient block"
            )
        elif hooked & shared & reached and not self._warned:
            # Correct but without the saving: the fallback holds every shared parameter's block.
            # Also the case of layers never called as modules (a Linear applied through
            # F.linear on its weight) or whose weight is derived, so a warning rather than an error.
            self._warned = True
            warn_user(
                "GramianEngine recorded no call of its layers on these losses' graph (a forward "
                "before the engine was created, or layers not called as modules); their parameters "
                "are held as gradient blocks"
            )


@dataclass(frozen=True)
class Measured:
    """One measuring pass of the engine: ``G`` (R, R) and what the update is made from — each
    recorded call's output gradients ``D`` (R, *output.shape) and the fallback blocks."""

    gramian: Tensor
    plan: _Plan
    deltas: list[Tensor | None]
    blocks: list[Tensor]  # the fallback parameters'
    kept: dict[int, Tensor]  # activation parameters whose blocks were formed whole, by id

    @outside_autocast
    def update(self, weights: Tensor, params: Sequence[Tensor]) -> list[Tensor | None]:
        """``Σ_r w_r ∇_p (C L)_r`` for every ``p`` in ``params`` (``None`` where nothing reaches).

        By linearity of each layer's gradient in D: the layer rule's pieces of
        ``D_w = Σ_r w_r D_r`` as one task (what a backward of ``Σ_r w_r (C L)_r`` would compute
        there, without running one), and ``Σ_r w_r B_r`` for a block B held already (the fallback
        parameters', and those the Gramian pass formed whole).
        """
        plan = self.plan
        wanted = lambda t: t is not None and id(t) in plan.activation and id(t) not in self.kept  # noqa: E731
        grads: dict[int, Tensor] = {}
        owned: set[int] = set()  # ids whose tensor was allocated here, so may be added into
        for call, D in zip(plan.calls, self.deltas):
            if D is None or not any(wanted(t) for t in call.covered):
                continue
            # combine: float64 weights outside float32's range are rescaled exactly first.
            Dw = combine(weights, D, dtype=torch.promote_types(D.dtype, torch.float32)).unsqueeze(0)
            for param, start, piece in call.rule.pieces(call.layer, call.saved, Dw, call.covered, wanted, False):
                g, key = piece.block()[0], id(param)
                if start is None:
                    g = g.reshape(param.shape)
                    if key in grads:
                        grads[key] = grads[key] + g
                        owned.add(key)
                    else:
                        grads[key] = g
                    continue
                # A slice of the parameter's rows (a packed projection's q, k or v): added into
                # one full-size tensor, not a zero-padded copy per slice.
                if key not in owned:
                    summed = g.new_zeros(param.shape)
                    if key in grads:
                        summed += grads[key]
                    grads[key] = summed
                    owned.add(key)
                grads[key][start : start + g.shape[0]] += g.reshape(-1, *param.shape[1:])
        for p, block in zip(plan.fallback, self.blocks):
            grads[id(p)] = combine(weights, block)
        for key, block in self.kept.items():
            grads[key] = combine(weights, block)
        out: list[Tensor | None] = []
        for p in params:
            total = grads.get(id(p))
            out.append(None if total is None else total.to(p.dtype))
        return out


def _sliced_and_whole(calls: list[_Call]) -> set[int]:
    """Ids of the parameters that some calls read in row slices (a packed attention projection
    of several calls) and others whole (an ``nn.Linear`` tied to it): their pieces would be keyed
    apart and lose the cross terms, so they take the fallback (exact)."""
    sliced: set[int] = set()
    whole: set[int] = set()
    for call in calls:
        if call.rule is _PROJECTION and call.saved.extra[1] is not None:
            sliced.add(id(call.covered[0]))
        else:
            whole.update(id(t) for t in call.covered if t is not None)
    return sliced & whole


def _row_by_row_vjp(outputs: Tensor, inputs: Sequence[Tensor | GradientEdge], cotangents: Tensor) -> list[Tensor | None]:
    """:func:`mtgrad.engine.batched_vjp`'s result from one backward per row of ``cotangents``,
    each copied into its stack at once (the graph is kept)."""
    R = cotangents.shape[0]
    stacks: list[Tensor | None] = [None] * len(inputs)
    for r in range(R):
        grads = torch.autograd.grad(outputs, list(inputs), grad_outputs=cotangents[r], retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
        for k, g in enumerate(grads):
            if g is None:
                continue
            stack = stacks[k]
            if stack is None:
                stack = stacks[k] = g.new_zeros((R, *g.shape))
            stack[r].copy_(g)
    return stacks


def _eager(record: Callable[..., None]) -> Callable[..., None]:
    # Under torch.compile the hook runs eagerly between graphs (a graph break per hooked layer):
    # it must see the real input and the output's place in the autograd graph, not a trace.
    # Wrapped at run time rather than decorated: that would import torch._dynamo (1.4 s) with mtgrad.
    return torch.compiler.disable(record)


class _Hook:
    """The forward hook of one layer: a picklable callable (a module saved whole keeps it)."""

    def __init__(self, engine: GramianEngine, rule: Rule) -> None:
        self.engine = engine
        self.rule = rule

    def __call__(self, layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self.engine._eager_record(self.rule, layer, args, kwargs, output)


#: Where :func:`engine_for` keeps a module's engine: an attribute of the module itself, so that
#: the engine lives, is copied and is saved exactly as long and as often as its module.
_ATTRIBUTE = "_mtgrad_gramian_engine"


def engine_for(module: nn.Module, *, create: bool = True) -> GramianEngine | None:
    """The Gramian engine that :func:`mtgrad.backward` and :class:`mtgrad.MTLOptimizer` use for
    a shared ``module`` when no engine is named: installed on the first call (``create``), or
    ``None`` when none is installed or the module has no layer the engine can read."""
    engine = module.__dict__.get(_ATTRIBUTE)
    if engine is not None or not create:
        return engine if isinstance(engine, GramianEngine) else None
    if not any(rule_for(sub) is not None for sub in module.modules()):
        module.__dict__[_ATTRIBUTE] = False  # checked once: the loop engine serves this module
        return None
    engine = GramianEngine(module)
    # Bounded from the start: records of forwards no backward consumes (an evaluation with grad
    # on, steps that name another engine) are dropped oldest first. backward raises the bound
    # to 4× the calls a step consumes; a record dropped too early only costs that layer the
    # (exact) fallback.
    engine.max_records = max(1024, 8 * len(engine.layers))
    module.__dict__[_ATTRIBUTE] = engine
    return engine


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks (activation checkpointing, ``save_on_cpu``) are active: then a
    graph node's saved tensors are packed, and reading one runs the unpack hook."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is not None and top(False) is not None


def _leaf(t: object) -> Tensor | None:
    return t if isinstance(t, Tensor) and t.is_leaf and t.requires_grad else None


def _add_layer_gramians(
    G: Tensor, calls: list[_Call], deltas: list[Tensor | None], activation: set[int], replicas: Replicas = LOCAL
) -> dict[int, Tensor]:
    """``G +=`` the Gramians of the activation parameters, from the calls' pieces; returns the
    per-task gradient blocks formed whole on the way (biases, normalisation parameters,
    convolution weights of one chunk), by parameter id, for the update to reuse.

    The pieces of one parameter (or slice) from several calls are merged first (see
    :func:`mtgrad.layer_gramians.merged_gramian`). Under data parallelism each piece is gathered
    from every rank first (rows concatenated in rank order, blocks averaged), D divided by W.
    """
    R = G.shape[0]
    wanted = lambda t: t is not None and id(t) in activation  # noqa: E731
    calls_of: dict[int, int] = {}
    for call in calls:
        for t in call.covered:
            if wanted(t):
                calls_of[id(t)] = calls_of.get(id(t), 0) + 1
    pieces: dict[tuple[int, int | None], list] = {}
    for call, delta in zip(calls, deltas):
        if delta is None:
            # No gradient reached this call's output here; another rank's rows may still have one.
            if not replicas.parallel:
                continue
            delta = torch.zeros((R, *call.out_shape), dtype=call.out_dtype, device=G.device)
        alone = all(calls_of.get(id(t), 0) <= 1 for t in call.covered if t is not None)
        for param, part, piece in call.rule.pieces(call.layer, call.saved, delta, call.covered, wanted, alone):
            key = (id(param), part)
            pieces.setdefault(key, []).append(piece.gathered(replicas) if replicas.parallel else piece)
    kept: dict[int, Tensor] = {}
    for key in list(pieces):
        group = pieces.pop(key)
        if key[1] is None and all(isinstance(piece, Block) for piece in group):
            block = sum((piece.b for piece in group[1:]), group[0].b)  # type: ignore[union-attr]
            G += gramian([block])
            kept[key[0]] = block
        elif key[1] is None and all(isinstance(piece, Rows) for piece in group):
            rows = group[0]
            for piece in group[1:]:
                rows = rows.merged(piece)  # type: ignore[arg-type]  # Rows: checked above
            g, grads = rows.gramian_and_grads()  # type: ignore[union-attr]
            G += g
            if grads is not None:
                kept[key[0]] = grads
        else:
            G += merged_gramian(group)
    return kept
