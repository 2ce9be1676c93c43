"""Warnings that point at the user's line, not at mtgrad's internals."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = ["MtgradWarning", "warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class MtgradWarning(UserWarning):
    """A warning about how mtgrad is used: a head passed as a shared parameter, an engine that
    saves nothing, a run that never updates. Filter them with
    ``warnings.filterwarnings("ignore", category=mtgrad.MtgradWarning)``; they are attributed to
    the first line outside mtgrad, and the commands print them as one line."""


def warn(message: str) -> None:
    """``warnings.warn(message)`` attributed to the first frame outside mtgrad (and torch), however deep the
    call (``backward``, ``MTLOptimizer.step``, a command): a fixed ``stacklevel`` points inside
    mtgrad whenever the depth differs from the one it was counted for."""
    # torch's frames too: MTLOptimizer.step runs inside torch.optim's step wrapper.
    torch_file = getattr(sys.modules.get("torch"), "__file__", None)
    inside = (_PACKAGE,) + ((os.path.dirname(os.path.abspath(torch_file)) + os.sep,) if torch_file else ())
    level = 2  # stacklevel 2 is the frame that called warn()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, MtgradWarning, stacklevel=level)
