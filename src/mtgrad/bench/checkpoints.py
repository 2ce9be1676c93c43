"""Checkpoints that survive a kill at any instant and refuse to load a corrupted file.

A checkpoint file is one header line ``mtgrad-checkpoint sha256=<hex>`` followed by the bytes of
``torch.save(state)``. Saving writes a temporary file, fsyncs it, moves the current checkpoint to
``<path>.prev`` and the temporary file into place, then fsyncs the directory: at every instant
either the new or the previous checkpoint is complete on disk. Loading checks the digest (so a
truncated file or a flipped bit is detected, never loaded) and falls back to ``<path>.prev``
with a warning when the newest file is unreadable; when neither is, the error names both files
and the flag that starts afresh. Used by ``mtgrad train`` / ``compare`` and ``mtgrad rl``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from typing import Any

import torch

from .._warnings import warn as warn_user

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "write_csv_atomically", "differences"]

_MAGIC = b"mtgrad-checkpoint sha256="


class CheckpointError(ValueError):
    """No readable checkpoint where one exists (both the newest and the previous are corrupt)."""


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, keeping the previous checkpoint as ``path.prev``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(path):
        os.replace(path, path + ".prev")
    os.replace(tmp, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def load_checkpoint(path: str, fresh_flag: str) -> dict[str, Any] | None:
    """The newest readable checkpoint at ``path`` (or ``path.prev``), ``None`` if there is none.

    ``fresh_flag`` is the command-line flag that starts afresh, named in the error.
    """
    candidates = [p for p in (path, path + ".prev") if os.path.exists(p)]
    if not candidates:
        return None
    problems = []
    for candidate in candidates:
        try:
            state = _read(candidate)
        except Exception as error:  # unpickling a damaged file raises many types; any means unreadable
            problems.append(f"{candidate}: {error}")
            continue
        if problems:
            warn_user(f"{problems[0]}; resuming from the previous checkpoint {candidate} instead")
        return state
    raise CheckpointError(
        "no readable checkpoint: " + "; ".join(problems) + f". Start afresh with {fresh_flag} (or another --out)"
    )


def _read(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError("not an mtgrad checkpoint (no header): written by an older version, or not ours")
    header, _, payload = data.partition(b"\n")
    digest = header[len(_MAGIC):].decode(errors="replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError("checksum mismatch: the file is truncated or corrupted")
    # Our own file (weights_only=False: it holds plain logs and RNG states too). On the CPU: RNG
    # states must stay CPU tensors; the model and optimizers copy their parts onto their devices.
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """What tells a checkpoint's run from this one, field by field:
    ``"lr is 0.01 there, 0.5 here; seed is absent there, 3 here"``."""

    def shown(config: dict[str, Any], key: str) -> str:
        return repr(config[key]) if key in config else "absent"

    keys = sorted(k for k in {*saved, *now} if k not in saved or k not in now or saved[k] != now[k])
    return "; ".join(f"{k} is {shown(saved, k)} there, {shown(now, k)} here" for k in keys)


def write_csv_atomically(path: str, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """Replace ``path`` by a CSV of ``rows`` only once the new file is on disk, so that a kill at
    any instant leaves the old file or the new one, never a shorter one. ``fields``: the columns
    (keys of a row outside them are ignored); by default the first row's keys, and no rows then
    give an empty file."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        columns = fields if fields is not None else (list(rows[0]) if rows else None)
        if columns is not None:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
