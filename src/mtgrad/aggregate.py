"""``aggregate(J, method)``: the update vector of a stored task-gradient matrix."""

from __future__ import annotations

from torch import Tensor

from ._autocast import outside_autocast
from .gramian import combine
from .methods.base import JacobianAggregator, Method, Weighting
from .methods.schedules import CAGradFast, Reuse
from .stored import GramianPolicy, stored_weights

__all__ = ["aggregate"]


@outside_autocast
def aggregate(jacobian: Tensor, method: Method, losses: Tensor | None = None) -> Tensor:
    """Update for task gradients stacked as rows of ``jacobian`` (T, d).

    For a :class:`Weighting`, ``d = Σ_i w_i g_i`` with ``w = method.weights(J Jᵀ, losses)``; as
    much for :class:`~mtgrad.CAGradFast` (eq. 4 on sampled rows) and :class:`~mtgrad.Reuse` (one
    call is one step of its schedule); a :class:`JacobianAggregator` gets ``J`` itself. The result
    has the dtype and device of ``jacobian``. ``losses`` (T,) are needed only by methods that use
    loss values.
    """
    if not isinstance(method, (Weighting, CAGradFast, Reuse, JacobianAggregator)):
        raise TypeError(
            f"method must be a gradient method (e.g. mtgrad.PCGrad()), got {type(method).__name__}"
            " (loss weightings need the losses themselves: use mtgrad.backward)"
        )
    if not isinstance(jacobian, Tensor):
        raise TypeError(f"jacobian must be a torch.Tensor, got {type(jacobian).__name__}")
    if jacobian.dim() != 2:
        raise ValueError(f"jacobian must have shape (T, d), got {tuple(jacobian.shape)}")
    if jacobian.shape[0] == 0:
        raise ValueError("jacobian is empty (0 rows): give one row per task")
    if not jacobian.is_floating_point():
        raise TypeError(f"jacobian must be floating point, got dtype {jacobian.dtype}")
    # NaN/inf entries reach the float64 Gramian (checked there), a far cheaper read than J itself.
    if isinstance(method, JacobianAggregator):
        GramianPolicy().gramian([jacobian.detach()])
        return method.aggregate_blocks([jacobian], losses)[0]
    w, _ = stored_weights(method, [jacobian.detach()], losses)
    return combine(w, jacobian)
