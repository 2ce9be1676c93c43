"""Progress and event logging shared by the command-line jobs (toy, train, compare, rl).

Both are optional conveniences: a tqdm bar when tqdm is installed (the ``progress`` extra), else
plain progress lines with an ETA; TensorBoard events when the ``tensorboard`` package is installed,
else nothing (with a one-time note).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

__all__ = ["progress_bar", "PlainProgress", "tensorboard_available", "tensorboard_writer"]

_TB_NOTE_SHOWN = False


class PlainProgress:
    """Progress lines with an ETA on stderr, at most one per ``interval`` seconds.

    The rate is that of the last interval rather than the job's average, because jobs change
    speed (an RL run's random-action steps are several times faster than its steps with updates).
    """

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "step", interval: float = 10.0) -> None:
        self.total, self.n, self.desc, self.unit, self.interval = total, initial, desc, unit, interval
        self.last_time, self.last_n = time.perf_counter(), initial
        self.postfix = ""

    def update(self, n: int) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last_time >= self.interval or self.n >= self.total:
            rate = (self.n - self.last_n) / max(now - self.last_time, 1e-9)
            self.last_time, self.last_n = now, self.n
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            sys.stderr.write(
                f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.3g} {self.unit}s/s, "
                f"ETA {eta / 60:.1f} min {self.postfix}\n"
            )

    def set_postfix(self, **values: str) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, mode: bool | str = True, initial: int = 0, unit: str = "step", position: int = 0) -> Any:
    """A tqdm bar (``mode=True``; plain lines if tqdm is missing), plain lines (``"plain"``, for
    several processes sharing a terminal) or ``None`` (``False``)."""
    if not mode:
        return None
    if mode != "plain":
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, position=position)
    return PlainProgress(total, desc, initial, unit)


def tensorboard_available() -> bool:
    """Whether TensorBoard events can be written; prints a one-time note when they cannot."""
    global _TB_NOTE_SHOWN
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:  # torch's writer needs the tensorboard package
        if not _TB_NOTE_SHOWN:
            print(
                "note: TensorBoard logging skipped (pip install 'mtgrad[tensorboard]' to enable it)", file=sys.stderr
            )
            _TB_NOTE_SHOWN = True
        return False
    return True


def tensorboard_writer(out: str, enabled: bool, purge_step: int) -> Any:
    """A ``SummaryWriter`` on ``out/tb`` (events after ``purge_step`` dropped, for resumed runs), or
    ``None`` when disabled or when the ``tensorboard`` package is missing."""
    if not enabled or not tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(out, "tb"), purge_step=purge_step)
