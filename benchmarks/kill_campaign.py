"""Kill runs with SIGKILL at random instants, resume them, and check that nothing was lost.

For each command (``mtgrad rl`` under the paper protocol and ``mtgrad train``) the script first
runs it once without interruption (the reference), then, ``--runs`` times, starts it in a fresh
folder and kills it (``kill -9``) after a random delay, again and again, resuming each time with
the same command line, until the run finishes by itself. A run "resumed exactly" when its logs
(timing columns aside) and its final model equal the reference's. It then damages checkpoints —
a flipped byte, a truncation, both files — and records what a resume does.

    python benchmarks/kill_campaign.py --runs 5         # about 10 minutes on 2 cores

Prints one table; exits non-zero if any row was lost or any run diverged.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from mtgrad.bench.checkpoints import load_checkpoint

PYTHON = sys.executable
RL = ["rl", "--protocol", "paper", "--benchmark", "custom:reach-v3,push-v3", "--methods", "pcgrad", "--steps", "300",
      "--eval-every", "100", "--set", "max_episode_steps=50", "--set", "random_steps=50", "--set", "hidden=16",
      "--set", "layers=1", "--set", "batch_per_task=8", "--set", "checkpoint_every=1", "--no-progress", "--no-plots"]
TRAIN = ["train", "--benchmark", "linear", "--method", "pcgrad", "--epochs", "12", "--no-progress", "--no-tensorboard"]
# Columns that measure time, not training: they differ between any two runs.
TIMING = ("seconds", "time", "per_s")


def _command(kind: str, out: str) -> list[str]:
    return [PYTHON, "-m", "mtgrad", *(RL if kind == "rl" else TRAIN), "--out", out]


def _run_dir(kind: str, out: str) -> str:
    return os.path.join(out, "pcgrad-s0") if kind == "rl" else out


def _logs(kind: str) -> tuple[str, ...]:
    return ("train.csv", "eval.csv") if kind == "rl" else ("epochs.csv", "steps.csv")


def _rows(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in csv.DictReader(f)]


def _model(kind: str, run: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"), "--fresh")
    assert state is not None
    return state["agent"]["actor"] if kind == "rl" else state["model"]


def _same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finish(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def reference(kind: str, root: str) -> tuple[float, dict[str, Any]]:
    out = os.path.join(root, f"{kind}-reference")
    t0 = time.perf_counter()
    done = _finish(_command(kind, out))
    if done.returncode != 0:
        raise SystemExit(f"reference {kind} run failed:\n{done.stderr}")
    run = _run_dir(kind, out)
    return time.perf_counter() - t0, {"logs": {n: _rows(os.path.join(run, n)) for n in _logs(kind)}, "model": _model(kind, run)}


def killed_run(kind: str, root: str, index: int, wall: float, ref: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Start, SIGKILL after a random delay, restart, … until the run ends by itself."""
    out = os.path.join(root, f"{kind}-killed-{index}")
    kills = 0
    while True:
        proc = subprocess.Popen(_command(kind, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(0.2, 1.1 * wall))  # from start-up (imports) to past the end
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        if proc.returncode != 0:
            stderr = proc.stderr.read() if proc.stderr else ""
            return {"kills": kills, "exact": False, "lost": None, "error": stderr.strip().splitlines()[-1:]}
        break
    run = _run_dir(kind, out)
    logs = {n: _rows(os.path.join(run, n)) for n in _logs(kind)}
    exact = logs == ref["logs"] and _same_model(_model(kind, run), ref["model"])
    # A reference row missing from the finished run's logs was lost (a log rewritten shorter).
    lost = sum(sum(1 for r in ref["logs"][n] if r not in logs[n]) for n in logs)
    return {"kills": kills, "exact": exact, "lost": lost, "error": None}


def corruption(kind: str, root: str) -> list[tuple[str, str]]:
    """Damage a finished-but-extendable run's checkpoints and try to resume."""
    results = []
    src = os.path.join(root, f"{kind}-reference")
    for case in ("flip a byte in checkpoint.pt", "truncate checkpoint.pt", "truncate both checkpoints"):
        out = os.path.join(root, f"{kind}-corrupt")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
        run = _run_dir(kind, out)
        path = os.path.join(run, "checkpoint.pt")
        targets = [path, path + ".prev"] if "both" in case else [path]
        for target in targets:
            with open(target, "r+b") as f:
                size = os.path.getsize(target)
                if "flip" in case:
                    f.seek(size // 2)
                    byte = f.read(1)
                    f.seek(size // 2)
                    f.write(bytes([byte[0] ^ 0x40]))
                else:
                    f.truncate(size // 3)
        longer = _command(kind, out)
        # Ask for more than was run, so the resume has to load a checkpoint.
        longer[longer.index("--steps" if kind == "rl" else "--epochs") + 1] = "350" if kind == "rl" else "13"
        done = _finish(longer)
        message = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else next(
            (line for line in done.stderr.splitlines() if "previous checkpoint" in line), "resumed")
        results.append((case, f"exit {done.returncode}: {message.strip()[:160]}"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="killed runs per command (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill instants")
    parser.add_argument("--kinds", default="rl,train", help="rl, train or both (default rl,train)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="mtgrad-kills-")
    failed = False
    print(f"{'command':<8} {'runs':>4} {'kills':>5} {'resumed exactly':>16} {'rows lost':>9}")
    reports = []
    for kind in args.kinds.split(","):
        wall, ref = reference(kind, root)
        runs = [killed_run(kind, root, i, wall, ref, rng) for i in range(args.runs)]
        exact = sum(r["exact"] for r in runs)
        lost = sum(r["lost"] or 0 for r in runs)
        failed |= exact < len(runs) or lost > 0
        print(f"{kind:<8} {len(runs):>4} {sum(r['kills'] for r in runs):>5} {exact:>10}/{len(runs):<5} {lost:>9}"
              f"   (reference {wall:.0f} s)")
        for r in runs:
            if r["error"]:
                print(f"         a run failed after {r['kills']} kills: {r['error']}")
        reports.append((kind, corruption(kind, root)))
    for kind, results in reports:
        for case, outcome in results:
            print(f"{kind}: {case}: {outcome}")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
