"""Whole training steps: forward + per-task gradients + aggregation + SGD step.

Two models (one intra-op thread unless ``--threads``):

* ``mlp`` — trunk Linear 1024→2048→1024→1024 with ReLUs (5,246,976 parameters), T = 10 linear
  regression heads (1024→1, MSE), batch 256;
* ``cnn`` — trunk of four 3×3 convolutions 3→32→64→128→256 (at 32², 16², 8², 4²) with ReLUs and
  a 2×2 max-pool after each of the first three, on 32×32 inputs, then Linear 4096→94 + ReLU
  (773,534 parameters), T = 3 classification heads (94→10, cross-entropy), batch 128.

Each timed step is ``opt.zero_grad(); forward; <method>; opt.step()`` (SGD) for:

* ``plain``                 — ``sum(losses).backward()``: one backward, the reference (1.00×);
* ``loop``                  — ``losses[i].backward()`` for every task: T backward passes, no
  aggregation (the bare cost of exact per-task gradients);
* ``mtgrad-{pcgrad,cagrad,mgda}-{loop,batched,gramian}`` — ``mtgrad.backward(losses, trunk
  params, method, engine=...)``; PCGrad(), CAGrad(c=0.4), MGDA(); ``gramian`` is
  ``engine=mtgrad.GramianEngine(trunk)`` (the Gramian-only engine, on its own copy of the model
  since it hooks the trunk);
* ``mtgrad-{pcgrad,cagrad}-default`` — ``mtgrad.backward(losses, trunk, method)``: the module,
  no engine named, so mtgrad chooses (``docs/design.md``, *Which engine*); the engine is
  installed before the first forward, as ``MTLOptimizer(opt, trunk, method)`` does;
* ``torchjd-{pcgrad,cagrad}`` — ``torchjd.autojac.mtl_backward(losses, features=z, ...)`` then
  ``jac_to_grad(trunk params, PCGrad() / CAGrad(c=0.4))`` (torchjd 0.18), when installed;
* ``torchjd-autogram-pcgrad`` — torchjd's Gramian engine (``autogram.Engine(trunk,
  batch_dim=None)``) + ``PCGradWeighting`` + ``losses.backward(weights)``, on its own copy of the
  model (the engine hooks the trunk's modules). Its heads receive ``w_i ∇L_i`` instead of ``∇L_i``.

Timing: all methods once per round in a fresh random order, ``--rounds`` rounds after one warm-up
round; the table gives the median step time and the medians of the per-round ratios to ``plain``,
to ``loop`` and (for torchjd) torchjd ÷ mtgrad with the loop engine. Timing runs fix glibc's
allocator thresholds (see ``_common.tune_malloc``; ``--default-malloc`` to keep the default).

Peak memory (``--memory``): every method runs in a fresh subprocess
(``python benchmarks/training_step.py --model M --only METHOD``: builds the model and data, runs 3
steps, prints ``resource.getrusage`` max RSS before the first step and after the last); the table
gives the peak, the step's own peak (peak − RSS before the first step, so that import sizes cancel)
and its excess over the ``plain`` process's, in MiB.

    python benchmarks/training_step.py                  # both models, times, ~3–4 min
    python benchmarks/training_step.py --model mlp --rounds 15
    python benchmarks/training_step.py --memory         # peak RSS, one process per method, ~2 min
    python benchmarks/training_step.py --model mlp --only mtgrad-pcgrad-loop   # one process' peak
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _common import (
    fmt_ms,
    fmt_ratio,
    interleaved,
    load_torchjd,
    machine_line,
    markdown_table,
    median_ms,
    median_ratio,
    set_threads,
    torchjd_cagrad_available,
    tune_malloc,
)
from torch import Tensor, nn

import mtgrad
from mtgrad.autogram import engine_for

#: The models and their default timed rounds.
ROUNDS = {"mlp": 9, "cnn": 15, "cnn10": 7, "transformer4": 7, "transformer10": 5, "resnet": 7}
LR = 1e-5  # tiny: the benchmark runs hundreds of steps on random data and must not diverge


class MTLModel(nn.Module):
    def __init__(self, trunk: nn.Module, heads: list[nn.Module], loss: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        self.loss = loss

    def losses(self, x: Tensor, ys: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [self.loss(head(z), y) for head, y in zip(self.heads, ys)]


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out.squeeze(-1), y)


@dataclass
class Problem:
    model: MTLModel
    x: Tensor
    ys: list[Tensor]
    tasks: int
    batch: int


def build(name: str) -> Problem:
    torch.manual_seed(0)
    if name == "mlp":
        T, batch = 10, 256
        trunk = nn.Sequential(
            nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU()
        )
        model = MTLModel(trunk, [nn.Linear(1024, 1) for _ in range(T)], _mse)
        x = torch.randn(batch, 1024)
        ys = [torch.randn(batch) for _ in range(T)]
    elif name == "cnn":
        T, batch = 3, 128
        trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(256 * 4 * 4, 94), nn.ReLU(),
        )  # fmt: skip
        model = MTLModel(trunk, [nn.Linear(94, 10) for _ in range(T)], F.cross_entropy)
        x = torch.randn(batch, 3, 32, 32)
        ys = [torch.randint(0, 10, (batch,)) for _ in range(T)]
    elif name in ("cnn10",):
        prob = build("cnn")
        T = 10
        heads = [nn.Linear(94, 10) for _ in range(T)]
        model = MTLModel(prob.model.trunk, heads, F.cross_entropy)
        return Problem(model, prob.x, [torch.randint(0, 10, (prob.batch,)) for _ in range(T)], T, prob.batch)
    elif name in ("transformer4", "transformer10"):
        T, batch, seq = (4 if name == "transformer4" else 10), 32, 64
        trunk = TokenEncoder(vocabulary=1000, width=256, layers=4, heads=4)
        model = MTLModel(trunk, [nn.Linear(256, 1) for _ in range(T)], _mse)
        x = torch.randint(0, 1000, (batch, seq))
        ys = [torch.randn(batch) for _ in range(T)]
    elif name == "resnet":
        T, batch = 3, 32
        model = MTLModel(resnet18_trunk(width=32), [nn.Linear(256, 10) for _ in range(T)], F.cross_entropy)
        x = torch.randn(batch, 3, 32, 32)
        ys = [torch.randint(0, 10, (batch,)) for _ in range(T)]
    else:
        raise ValueError(f"unknown model {name!r}")
    return Problem(model, x, ys, T, batch)


class TokenEncoder(nn.Module):
    """Embedding → ``layers`` × nn.TransformerEncoderLayer (pre-norm, GELU, no dropout) → mean."""

    def __init__(self, vocabulary: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.norm(self.encoder(self.embedding(tokens))).mean(dim=1)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv–BN, a 1×1 conv–BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_trunk(width: int) -> nn.Module:
    """ResNet-18's layout ([2, 2, 2, 2] basic blocks, widths w…8w) for 32×32 inputs, → (B, 8w)."""
    blocks: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for k, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for b in range(2):
            blocks.append(BasicBlock(cin, cout, stride=2 if k > 0 and b == 0 else 1))
            cin = cout
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def method_names(with_torchjd: bool) -> list[str]:
    names = ["plain", "loop"]
    names += [f"mtgrad-{m}-{e}" for m in ("pcgrad", "cagrad", "mgda") for e in ("loop", "batched", "gramian")]
    names += ["mtgrad-pcgrad-default", "mtgrad-cagrad-default"]
    if with_torchjd:
        names.append("torchjd-pcgrad")
        if torchjd_cagrad_available():
            names.append("torchjd-cagrad")
        names.append("torchjd-autogram-pcgrad")
    return names


def make_step(name: str, prob: Problem) -> Callable[[], None]:
    """A closure running one full training step of method ``name`` on ``prob``."""
    model = prob.model
    if name == "torchjd-autogram-pcgrad" or name.endswith("-gramian") or name.endswith("-default"):
        model = copy.deepcopy(prob.model)  # the engine hooks the trunk's modules: keep them off the others' steps
    trunk_params = list(model.trunk.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, ys = prob.x, prob.ys

    def run(backward: Callable[[Tensor, list[Tensor]], None]) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            z, losses = model.losses(x, ys)
            backward(z, losses)
            opt.step()

        return step

    if name == "plain":
        return run(lambda z, losses: torch.stack(losses).sum().backward())
    if name == "loop":

        def loop(z: Tensor, losses: list[Tensor]) -> None:
            for i, loss in enumerate(losses):
                loss.backward(retain_graph=i < len(losses) - 1)

        return run(loop)
    if name.startswith("mtgrad-"):
        _, m, engine = name.split("-")
        method = {
            "pcgrad": lambda: mtgrad.PCGrad(generator=torch.Generator().manual_seed(0)),
            "cagrad": lambda: mtgrad.CAGrad(c=0.4),
            "mgda": lambda: mtgrad.MGDA(),
        }[m]()
        if engine == "default":  # the module itself, no engine named: what mtgrad chooses
            # Installed before the first forward, as MTLOptimizer(opt, trunk, method) does: else
            # backward's first call installs it and runs that step on the loop engine, whose
            # peak (J) a high-water mark of RSS would keep.
            engine_for(model.trunk)
            return run(lambda z, losses: mtgrad.backward(losses, model.trunk, method))
        how = mtgrad.GramianEngine(model.trunk) if engine == "gramian" else engine
        return run(lambda z, losses: mtgrad.backward(losses, trunk_params, method, engine=how))
    if name in ("torchjd-pcgrad", "torchjd-cagrad"):
        from torchjd.aggregation import CAGrad, PCGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = PCGrad() if name == "torchjd-pcgrad" else CAGrad(c=0.4)
        tasks_params = [list(h.parameters()) for h in model.heads]

        def tj(z: Tensor, losses: list[Tensor]) -> None:
            mtl_backward(losses, features=z, tasks_params=tasks_params, shared_params=trunk_params)
            jac_to_grad(trunk_params, aggregator)

        return run(tj)
    if name == "torchjd-autogram-pcgrad":
        from torchjd.aggregation import PCGradWeighting
        from torchjd.autogram import Engine

        engine_ = Engine(model.trunk, batch_dim=None)
        weighting = PCGradWeighting()

        def autogram(z: Tensor, losses: list[Tensor]) -> None:
            stacked = torch.stack(losses)
            weights = weighting(engine_.compute_gramian(stacked))
            stacked.backward(weights)

        return run(autogram)
    raise ValueError(f"unknown method {name!r}")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_only(model_name: str, method: str, steps: int) -> None:
    """Child process of ``--memory``: baseline and peak max RSS of ``steps`` steps of one method."""
    prob = build(model_name)
    step = make_step(method, prob)
    baseline = _maxrss_mib()
    for _ in range(steps):
        step()
    print(json.dumps({"model": model_name, "method": method, "baseline_mib": baseline, "peak_mib": _maxrss_mib()}))


def time_model(model_name: str, names: list[str], rounds: int) -> str:
    prob = build(model_name)
    n_trunk = sum(p.numel() for p in prob.model.trunk.parameters())
    steps = {name: make_step(name, prob) for name in names}
    start = time.perf_counter()
    times = interleaved(
        steps, rounds=rounds, warmup=1, seed=1,
        progress=lambda s: print(f"  {model_name}: {s} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True),
    )  # fmt: skip
    rows = []
    for name in names:
        row = [name, fmt_ms(median_ms(times[name])), fmt_ratio(median_ratio(times[name], times["plain"]))]
        row.append(fmt_ratio(median_ratio(times[name], times["loop"])))
        method = "pcgrad" if name == "torchjd-autogram-pcgrad" else name.split("-")[1] if name.startswith("torchjd-") else None
        for engine in ("loop", "default"):
            ref = f"mtgrad-{method}-{engine}"
            row.append(fmt_ratio(median_ratio(times[name], times[ref])) if method and ref in times else "")
        rows.append(row)
    head = f"### {model_name}: trunk {n_trunk:,} params, T = {prob.tasks}, batch {prob.batch}; {rounds} rounds\n\n"
    return head + markdown_table(
        ["method", "median step (ms)", "÷ plain", "÷ bare loop", "torchjd ÷ mtgrad (loop engine)", "torchjd ÷ mtgrad (default)"],
        rows,
    )


def memory_model(model_name: str, names: list[str], steps: int, threads: int) -> str:
    results = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--model", model_name, "--only", name,
               "--steps", str(steps), "--threads", str(threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            results[name] = None
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {model_name}: {name}: peak {results[name]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)

    def growth(r: dict) -> float:
        return r["peak_mib"] - r["baseline_mib"]

    plain = growth(results["plain"]) if results.get("plain") else None
    rows = []
    for name in names:
        r = results[name]
        if r is None:
            rows.append([name, "failed", "", "", ""])
            continue
        extra = "" if plain is None or name == "plain" else f"{growth(r) - plain:+.0f}"
        rows.append([name, f"{r['baseline_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{growth(r):.0f}", extra])
    return (
        f"### {model_name}: peak RSS, one process per method, {steps} steps\n\n"
        + markdown_table(
            ["method", "RSS before 1st step", "peak RSS", "step peak (peak − before)", "step peak − plain's"], rows
        )
        + "\n\n(MiB. 'before' is after imports, model, data and optimizer; torchjd's imports (cvxpy) alone add ≈80 MiB there.)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=list(ROUNDS), default=["mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=None, help=f"timed rounds (default: {ROUNDS})")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of methods (plain and loop always run)")
    parser.add_argument("--memory", action="store_true", help="peak RSS per method, one subprocess each")
    parser.add_argument("--only", default=None, help="(child of --memory) run one method and print its peak RSS")
    parser.add_argument("--steps", type=int, default=3, help="steps per --only process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torchjd", action="store_true", help="skip torchjd even if installed")
    parser.add_argument(
        "--default-malloc", action="store_true", help="timing: keep glibc's default (noisier) allocator"
    )
    args = parser.parse_args()
    set_threads(args.threads)
    if args.only is not None:  # imports torchjd only if that method needs it
        run_only(args.model[0], args.only, args.steps)
        return
    with_tj = not args.no_torchjd and load_torchjd() is not None

    names = method_names(with_tj)
    if args.methods:
        unknown = set(args.methods) - set(names)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; choose from {names}")
        names = ["plain", "loop"] + [n for n in names if n in args.methods and n not in ("plain", "loop")]

    # Peak-memory children keep glibc's default allocator (what users get); timing runs fix it.
    malloc = "malloc: default" if args.default_malloc or args.memory else tune_malloc()
    print(f"# Training step\n\n{machine_line()}; {malloc}\n", flush=True)
    for model_name in args.model:
        if args.memory:
            print(memory_model(model_name, names, args.steps, args.threads) + "\n", flush=True)
        else:
            rounds = args.rounds if args.rounds is not None else ROUNDS[model_name]
            print(time_model(model_name, names, rounds) + "\n", flush=True)
    print(
        "Targets (issue #14): with the default engine, exact PCGrad and CAGrad steps ≤ 0.7× the bare "
        "T-backward loop and ≥ 2× faster than torchjd's faster engine (torchjd ÷ mtgrad (default) ≥ 2)."
    )
    if not with_tj:
        print('\n(torchjd skipped: --no-torchjd, or not installed (`pip install "torchjd[cagrad]"`).)')


if __name__ == "__main__":
    main()
