"""DWA: dynamic weight average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 — the MTAN paper)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

from .base import LossWeighting
from ._loss_checks import check_bool, check_finite_float, check_losses
from ._state import check_state_keys

__all__ = ["DWA"]


@dataclass
class DWAState:
    """Everything DWA remembers; :meth:`DWA.state_dict` saves exactly these fields.

    Attributes:
        window_sum: Σ of the losses seen in the current window (T,), or ``None`` before any.
        window_count: how many loss vectors the current window holds.
        averages: average losses of the last (at most two) completed windows, oldest first.
        buffer: ``sliding`` mode only — the last ``2n`` loss vectors (2n, T), oldest first.
        iterations: ``sliding`` mode only — how many loss vectors were seen.
    """

    window_sum: Tensor | None = None
    window_count: int = 0
    averages: list[Tensor] = field(default_factory=list)
    buffer: Tensor | None = None
    iterations: int = 0


class DWA(LossWeighting):
    r"""Dynamic weight average, Liu, Johns & Davison (2019), the MTAN paper.

    The objective is ``Σ_k λ_k L_k`` with, in window t,

    ``λ_k(t) = K exp(w_k(t−1)/τ) / Σ_i exp(w_i(t−1)/τ)``,  ``w_k(t−1) = L_k(t−1) / L_k(t−2)``,

    where ``L_k(t)`` is the *average* training loss of task k over window t and K the number of
    tasks; ``λ = 1`` in the first two windows (there is no ratio yet). A task whose loss fell
    slowly in the last window gets more weight. The weights are constant within a window and
    reported by :meth:`combine`.

    Args:
        temperature: τ; the paper and every reference use 2 (larger τ → more uniform weights).
        window: ``"epoch"`` (paper; official MTAN code, CAGrad repo, LibMTL): a window is an
            epoch and you call :meth:`end_epoch` (alias :meth:`new_window`) after each one.
            An int n: a window is n consecutive :meth:`combine` calls, closed automatically.
        sliding: with an int ``window=n``, reproduce nash-mtl's ``DynamicWeightAverage``
            (``iteration_window=25``) exactly instead: a first-in-first-out buffer of the last
            2n loss vectors, **initialised with ones**; from the (n+2)-th call on, the weights
            are recomputed at every call from the mean of the newest n entries (including the
            current losses) over the mean of the n before them. nash-mtl also averages the
            weighted losses (÷K) where this class sums them, a constant factor.

    The losses must be positive (the method divides them). State: :class:`DWAState`. Set
    ``check_values = False`` on an instance to skip the per-call value check (one host read).
    """

    check_values: bool = True

    def __init__(
        self, temperature: float = 2.0, window: Literal["epoch"] | int = "epoch", sliding: bool = False
    ) -> None:
        self.temperature = check_finite_float(temperature, "temperature", positive=True)
        if window != "epoch" and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be 'epoch' or a positive int (iterations), got {window!r}")
        check_bool(sliding, "sliding")
        if sliding and window == "epoch":
            raise ValueError("sliding=True needs an int window (nash-mtl uses window=25), got window='epoch'")
        self.window: Literal["epoch"] | int = window
        self.sliding = sliding
        self.state = DWAState()

    # -- the rule ---------------------------------------------------------------------------------

    def _ratio_weights(self, recent: Tensor, older: Tensor) -> Tensor:
        K = recent.shape[0]
        return K * torch.softmax((recent / older) / self.temperature, dim=0)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        losses = self._checked(losses)
        values = losses.detach()
        st = self._on(values)
        if self.sliding:
            n = int(self.window)
            if st.buffer is None:
                st.buffer = values.new_ones(2 * n, values.shape[0])
            st.buffer = torch.cat([st.buffer[1:], values.unsqueeze(0)])
            if st.iterations > n:
                weights = self._ratio_weights(st.buffer[n:].mean(0), st.buffer[:n].mean(0))
            else:
                weights = torch.ones_like(values)
            st.iterations += 1
        else:
            weights = self._window_weights(values)
            self._record(values)
        return (weights * losses).sum(), weights

    def linear_terms(self, like: Tensor) -> tuple[Tensor, None]:
        """``(λ(t), None)``: the weights of the current window, from the last two windows' average
        losses (``like`` is checked). Not with ``sliding=True``, whose weights include the current
        losses."""
        if self.sliding:
            raise NotImplementedError(
                "DWA(sliding=True) weighs each step by a window that includes the step's own losses, "
                "so its objective is not linear in them"
            )
        return self._window_weights(self._checked(like.detach())), None

    def _window_weights(self, like: Tensor) -> Tensor:
        st = self._on(like)
        if len(st.averages) < 2:
            return torch.ones(like.shape[-1], dtype=like.dtype, device=like.device)
        return self._ratio_weights(st.averages[-1].to(like), st.averages[-2].to(like))

    def observe(self, values: Tensor) -> None:
        """Add one step's losses to the current window (closing an int window when it is full)."""
        if self.sliding:
            raise NotImplementedError("DWA(sliding=True) records its losses in combine()")
        self._record(self._checked(values.detach()))

    def _checked(self, losses: Tensor) -> Tensor:
        """``losses`` validated: T as before, positive (DWA divides them) and, optionally, finite."""
        return check_losses(losses, self._num_tasks(), "DWA", positive=True, values=self.check_values)

    def _record(self, values: Tensor) -> None:
        st = self._on(values)
        st.window_sum = values.clone() if st.window_sum is None else st.window_sum + values
        st.window_count += 1
        if self.window != "epoch" and st.window_count == self.window:
            self._close_window()

    def _on(self, like: Tensor) -> DWAState:
        """The state, its tensors moved to ``like``'s device: a state loaded from another device (a
        checkpoint of a GPU run resumed on the CPU, or the reverse) continues there."""
        st = self.state

        def moved(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(like.device)

        st.window_sum, st.buffer = moved(st.window_sum), moved(st.buffer)
        st.averages = [a.to(like.device) for a in st.averages]
        return st

    def end_epoch(self) -> None:
        """Close the current window (``window="epoch"``): call once at the end of every epoch."""
        if self.window != "epoch":
            raise RuntimeError(
                f"DWA(window={self.window!r}) closes its windows itself; end_epoch() is for window='epoch'"
            )
        if self.state.window_count == 0:
            raise RuntimeError("DWA.end_epoch(): no losses were combined in this epoch, so it has no average loss")
        self._close_window()

    new_window = end_epoch

    def _close_window(self) -> None:
        st = self.state
        assert st.window_sum is not None
        st.averages = [*st.averages, st.window_sum / st.window_count][-2:]
        st.window_sum = None
        st.window_count = 0

    def _num_tasks(self) -> int | None:
        st = self.state
        for t in (st.window_sum, st.buffer, *st.averages):
            if t is not None:
                return t.shape[-1]
        return None

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        st = self.state
        return {
            "window_sum": None if st.window_sum is None else st.window_sum.clone(),
            "window_count": st.window_count,
            "averages": [a.clone() for a in st.averages],
            "buffer": None if st.buffer is None else st.buffer.clone(),
            "iterations": st.iterations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(state, {f.name for f in fields(DWAState)}, "DWA")
        if len(state["averages"]) > 2:
            raise ValueError(f"DWA state holds {len(state['averages'])} window averages; at most 2 are kept")
        buffer = state["buffer"]
        if self.sliding and buffer is not None and buffer.shape[0] != 2 * int(self.window):
            raise ValueError(f"DWA state buffer has {buffer.shape[0]} rows, expected 2 × window = {2 * self.window}")

        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        self.state = DWAState(
            window_sum=copy(state["window_sum"]),
            window_count=int(state["window_count"]),
            averages=[a.detach().clone() for a in state["averages"]],
            buffer=copy(state["buffer"]),
            iterations=int(state["iterations"]),
        )

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"temperature": self.temperature, "window": self.window}
        if self.sliding:
            config["sliding"] = True
        return config
