"""Loss weightings with one learned value per task (UW's log-variances, IMTL-L's log-scales)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._loss_checks import check_finite_float, check_losses, check_num_tasks, make_parameter
from ._state import load_into
from .base import LossWeighting


class LearnedTaskVector(LossWeighting):
    """A (T,) leaf ``s`` trained jointly with the model; subclasses define :meth:`combine`.

    ``s`` is created once and never replaced: :meth:`load_state_dict` copies into it, so an
    optimizer that holds it keeps working. Its values are the whole state, saved under
    ``state_key``. Set ``check_values = False`` on an instance to skip the per-call finiteness
    check of the losses (one host read).
    """

    check_values: bool = True
    state_key: ClassVar[str]

    def __init__(
        self,
        num_tasks: int,
        init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks)
        self.init = check_finite_float(init, "init")
        self.vector = make_parameter(self.num_tasks, self.init, device, dtype, type(self).__name__)

    def checked(self, losses: Tensor) -> Tensor:
        """``losses`` validated against this method's T, device and (optionally) values."""
        return check_losses(
            losses, self.num_tasks, type(self).__name__, device=self.vector.device, values=self.check_values
        )

    @abstractmethod
    def terms(self) -> tuple[Tensor, Tensor]:
        """``(a, r)`` of the objective ``Σ_i a_i L_i + r``, from ``s`` alone."""

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        losses = self.checked(losses)
        a, r = self.terms()
        return (a * losses).sum() + r, a.detach()

    def linear_terms(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`terms`, once ``like`` (the losses) is checked: the objective is linear in them."""
        self.checked(like)
        return self.terms()

    def parameters(self) -> list[Tensor]:
        return [self.vector]

    def state_dict(self) -> dict[str, Any]:
        return {self.state_key: self.vector.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_into(self.vector, state, self.state_key, type(self).__name__)

    def _config(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "init": self.init}
