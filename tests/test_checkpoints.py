"""Checkpoints: atomic, checksummed, with the previous one kept and used when the newest is bad."""

from __future__ import annotations

import os

import pytest
import torch

from mtgrad.bench.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mtgrad.bench.trainer import CHECKPOINT, TrainConfig, train


def _state(k: int) -> dict:
    return {"step": k, "weights": torch.full((3,), float(k))}


def test_round_trip_and_the_previous_checkpoint_is_kept(tmp_path):
    path = str(tmp_path / "c.pt")
    assert load_checkpoint(path, "--fresh") is None
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    assert load_checkpoint(path, "--fresh")["step"] == 2
    assert os.path.exists(path + ".prev") and not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("damage", ["truncate", "flip_bit", "garbage"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_bit":
        data[-40] ^= 0x40  # a float's exponent bit somewhere in the payload
    else:
        data = bytearray(b"\x00" * 100)
    open(path, "wb").write(bytes(data))
    with pytest.warns(UserWarning, match="previous checkpoint"):
        state = load_checkpoint(path, "--fresh")
    assert state["step"] == 1


def test_no_readable_checkpoint_names_the_files_and_the_flag(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    for p in (path, path + ".prev"):
        open(p, "wb").write(b"mtgrad-checkpoint sha256=00\nxx")
    with pytest.raises(CheckpointError, match=r"c\.pt: checksum mismatch.*c\.pt\.prev.*--fresh"):
        load_checkpoint(path, "--fresh")


def test_a_run_whose_newest_checkpoint_is_corrupt_resumes_from_the_previous_one(tmp_path):
    cfg = dict(benchmark="linear", method="pcgrad", epochs=3, batch_size=64, lr=1e-2, seed=0, tasks=(0, 1))
    straight = train(TrainConfig(out=str(tmp_path / "a"), **cfg))
    out = tmp_path / "b"
    train(TrainConfig(out=str(out), **cfg), stop_after=2)  # checkpoints after epochs 1 and 2
    with open(out / CHECKPOINT, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"0123456789")
    with pytest.warns(UserWarning, match="previous checkpoint"):
        resumed = train(TrainConfig(out=str(out), **cfg))
    assert resumed.resumed_from == 1  # epoch 2 is redone from epoch 1's checkpoint
    assert resumed.history[-1] == {**straight.history[-1], "seconds": resumed.history[-1]["seconds"]}
