"""The two-task, two-parameter toy problems of the CAGrad and PCGrad papers.

* **CAGrad toy** (Liu et al., NeurIPS 2021, Sec. 5.1, Figs. 1 and 3;
  ``Cranial-XIX/CAGrad/toy.py``)::

      f1 = log(max(|0.5(-θ1 - 7) - tanh(-θ2)|, 5e-6)) + 6
      f2 = log(max(|0.5(-θ1 + 3) + tanh(-θ2) + 2|, 5e-6)) + 6     # the code's sign of tanh
      g1 = ((-θ1 + 7)² + 0.1(-θ2 - 8)²)/10 - 20
      g2 = ((-θ1 - 7)² + 0.1(-θ2 - 8)²)/10 - 20
      c1 = max(tanh(0.5 θ2), 0),   c2 = max(tanh(-0.5 θ2), 0)
      L1 = c1 f1 + c2 g1,          L2 = c1 f2 + c2 g2,          L0 = (L1 + L2)/2

  The paper's text prints f2 with ``- tanh(-θ2)``; the official code (and the nash-mtl copy) uses
  ``+ tanh(-θ2)``, which is what reproduces the figures, so it is used here. The objective is the
  *mean* L0, so plain gradient descent ("gd") means the Mean weighting. The minimiser of L0 is
  (0, -8.3552); the code draws the Pareto set as θ1 ∈ [-7, 7], θ2 = -8.3552.

* **PCGrad toy** (Yu et al., NeurIPS 2020, Fig. 1 and App. D)::

      L1 = 20 log(max(|0.5 θ1 + tanh θ2|, 5e-6))
      L2 = 25 log(max(|0.5 θ1 - tanh θ2 + 2|, 5e-6)),      L = L1 + L2

  The objective is the *sum*, so "gd" means the Sum weighting (Adam on L1 + L2). The two valleys
  |0.5θ1 + tanh θ2| = 0 and |0.5θ1 - tanh θ2 + 2| = 0 meet only as θ2 → +∞ (θ1 → -2).

Everything here is batched: θ has shape ``(B, 2)`` (B independent runs), losses have shape
``(B, 2)`` and the per-task gradients ``(B, 2 tasks, 2 parameters)``. The gradients are written out
analytically (the same values autograd gives through the official code, including the sub-gradient
conventions of ``clamp`` and ``abs`` at their kinks) because per-step Python overhead dominates
these tiny problems. :func:`run_toy` runs every method from every start in one batch per step:
Gramians ``G = J Jᵀ`` of shape ``(B, 2, 2)``, each method's ``weights(G)`` called once per step on
its slice of the batch, update ``Σ_i w_i g_i``, and Adam on the ``(B, 2)`` parameter tensor.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..methods.base import unit_scaled
from ..methods.cagrad import output_factor
from ..methods.spec import check_distinct, split_specs
from ..solvers import cagrad_weights
from .batched_adam import BatchedAdam
from .reporting import progress_bar
from .toy_problems import (
    CAGRAD_METHODS,
    CAGRAD_MINIMISER,
    CAGRAD_STARTS,
    DEFAULT_PCGRAD_STEPS,
    DEFAULT_STEPS,
    LOWER,
    PAPER_STEPS,
    PARETO_Y,
    PCGRAD_METHODS,
    PCGRAD_STARTS,
    PROBLEMS,
    ToyProblem,
    cagrad_toy_grads,
    cagrad_toy_losses,
    pcgrad_toy_grads,
    pcgrad_toy_losses,
)

__all__ = [
    "LOWER",
    "PARETO_Y",
    "CAGRAD_MINIMISER",
    "CAGRAD_STARTS",
    "CAGRAD_METHODS",
    "PCGRAD_STARTS",
    "PCGRAD_METHODS",
    "DEFAULT_STEPS",
    "DEFAULT_PCGRAD_STEPS",
    "PAPER_STEPS",
    "ToyProblem",
    "ToyResult",
    "PROBLEMS",
    "cagrad_toy_losses",
    "cagrad_toy_grads",
    "pcgrad_toy_losses",
    "pcgrad_toy_grads",
    "BatchedAdam",
    "parse_method_list",
    "resolve_method",
    "check_methods",
    "run_toy",
    "write_csv",
    "format_table",
    "run_toy_command",
]

# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------

def parse_method_list(text: str) -> list[str]:
    """The method list of ``--methods``: :func:`mtgrad.methods.split_specs`."""
    return split_specs(text)


def resolve_method(spec: str, problem: ToyProblem, generator: torch.Generator | None = None):
    """Build the weighting for ``spec`` with :func:`mtgrad.methods.from_spec`.

    ``gd`` means plain gradient descent on the problem's objective: the Mean weighting on the
    CAGrad toy (L0 is the mean) and the Sum weighting on the PCGrad toy (L = L1 + L2).
    ``generator`` is passed on to the methods that take one (PCGrad's random task order).
    """
    from mtgrad import methods as _methods

    from mtgrad.methods.spec import method_class

    real = _problem_spec(spec, problem)
    kind = method_class(real)  # checked before building: a loss weighting may need what we lack
    if kind is not None and not issubclass(kind, _methods.Weighting):
        raise ValueError(
            f"method {spec!r} ({kind.__name__}) is not a Gramian weighting; the toy "
            "problems run methods that map the task-gradient Gramian to task weights"
        )
    extra: dict = {"num_tasks": 2}  # passed on only to the methods that take them
    if generator is not None:
        extra["generator"] = generator
    return _methods.from_spec(real, **extra)


def _problem_spec(spec: str, problem: ToyProblem) -> str:
    """``spec`` with ``gd`` replaced by the problem's objective (``mean`` or ``sum``)."""
    return problem.objective if spec.strip().lower() == "gd" else spec


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class ToyResult:
    """Outcome of :func:`run_toy`; tensors are indexed ``[method, start, ...]``."""

    problem: ToyProblem
    methods: list[str]
    starts: Tensor  # (S, 2)
    steps: int
    lr: float
    record_every: int
    record_steps: list[int]  # step index of each recorded point
    trajectories: Tensor  # (M, S, K, 2)
    final: Tensor  # (M, S, 2)
    losses: Tensor  # (M, S, 2)
    seconds: float
    extras: dict = field(default_factory=dict)

    @property
    def reached(self) -> Tensor:
        """(M, S) bool: the problem's success criterion at the end point."""
        return self.problem.reached(self.final) & torch.isfinite(self.final).all(-1)

    def rows(self) -> list[dict]:
        """One dict per (method, start) in the CSV's column order."""
        rows = []
        reached = self.reached
        obj = self.problem.objective_value(self.losses)
        extra = self.problem.columns(self.final)
        for m, spec in enumerate(self.methods):
            for s in range(self.starts.shape[0]):
                end = self.final[m, s]
                l1, l2 = self.losses[m, s].tolist()
                row = {
                    "method": spec,
                    "start_x": float(self.starts[s, 0]),
                    "start_y": float(self.starts[s, 1]),
                    "end_x": float(end[0]),
                    "end_y": float(end[1]),
                    "loss_1": l1,
                    "loss_2": l2,
                    "loss_avg": 0.5 * (l1 + l2),
                    "objective": float(obj[m, s]),
                }
                row.update({k: float(v[m, s]) for k, v in extra.items()})
                row["reached"] = bool(reached[m, s])
                row["steps"] = self.steps
                rows.append(row)
        return rows


class _PerRun:
    """Adapter for weightings that take one ``(T, T)`` Gramian at a time (e.g. stateful ones
    such as GradVac): one instance per run, so every run keeps its own state."""

    def __init__(self, instances: list) -> None:
        self.instances = instances
        self.needs_losses = bool(getattr(instances[0], "needs_losses", False))

    def weights(self, gramian: Tensor, losses: Tensor | None = None, validate: bool | None = None) -> Tensor:
        if losses is None:
            return torch.stack([m.weights(g, validate=validate) for m, g in zip(self.instances, gramian)])
        return torch.stack(
            [m.weights(g, l, validate=validate) for m, g, l in zip(self.instances, gramian, losses)]
        )


class _MergedCAGrad:
    """Every exact-solver CAGrad of a run, solved in one call with a per-run ``c``.

    The figure's CAGrad variants differ only in c; the two-task closed form is elementwise over
    the batch, so one call on all of them replaces one call each — the step's largest cost.
    """

    def __init__(self, weightings: list) -> None:
        from ..methods import CAGrad

        self.members = [i for i, m in enumerate(weightings) if type(m) is CAGrad and m.solver == "exact"]
        self.methods = [weightings[i] for i in self.members]

    def weights(self, gram: Tensor, others: list) -> Tensor:
        """Stack the per-method weights (``others[i]`` for non-members, computed here for members)."""
        if self.members:
            G = gram[self.members].to(torch.float64)  # (k, S, 2, 2)
            c = G.new_tensor([m.c for m in self.methods]).view(-1, 1).expand(G.shape[:2])
            factor = G.new_tensor(
                [output_factor(m.c, m.rescale, m.scale_by_tasks, 2) for m in self.methods]
            ).view(-1, 1, 1)
            w = (cagrad_weights(unit_scaled(G), c) * factor).to(gram.dtype)
            for k, i in enumerate(self.members):
                others[i] = w[k]
        return torch.stack(others)


def _batched_weighting(spec: str, problem: ToyProblem, seed: int, n_runs: int):
    """The weighting for ``spec``, called on a batch of ``n_runs`` Gramians per step.

    A weighting that rejects a batched Gramian is replaced by one instance per run (probed on a
    separate instance, so that the probe cannot touch the state of the ones that run).
    """
    method = resolve_method(spec, problem, torch.Generator().manual_seed(seed))
    probe = resolve_method(spec, problem, torch.Generator().manual_seed(seed))
    eye = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    try:
        if getattr(probe, "needs_losses", False):
            ok = probe.weights(eye, torch.ones(3, 2, dtype=torch.float64)).shape == (3, 2)
        else:
            ok = probe.weights(eye).shape == (3, 2)
    except (ValueError, RuntimeError):
        ok = False
    if ok:
        return method
    return _PerRun(
        [method]
        + [
            resolve_method(spec, problem, torch.Generator().manual_seed(seed + 1 + i))
            for i in range(n_runs - 1)
        ]
    )


def run_toy(
    problem: str | ToyProblem = "cagrad",
    methods: Sequence[str] | None = None,
    starts: Sequence[Sequence[float]] | Tensor | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    record_every: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    progress_position: int = 0,
) -> ToyResult:
    """Run every method from every start with batched Adam and record the trajectories.

    Args:
        problem: ``"cagrad"``, ``"pcgrad"`` or a :class:`ToyProblem`.
        methods: method specs for :func:`mtgrad.methods.from_spec` (``gd`` is the problem's
            objective weighting, see :func:`resolve_method`); default: the paper's figure.
        starts: initial points, shape ``(S, 2)``; default: the paper's.
        steps: Adam steps; default ``problem.default_steps``.
        lr, betas, eps: Adam hyper-parameters (the papers: 1e-3, (0.9, 0.999), 1e-8).
        record_every: keep every ``record_every``-th point of the trajectories (plus the last).
        seed: seeds the ``torch.Generator`` handed to each randomised method (PCGrad's task
            order); every method gets its own generator, so a run does not depend on which other
            methods share the batch.
        dtype: float64 (default), or float32 as in the official code (``torch.Tensor``). Near
            the valley floors the log arguments cancel to ~1e-5, where float32 keeps 2-3 digits.
        progress: show a progress bar on stderr (tqdm if installed; ``progress_position`` is
            its line when several runs show bars at once).
    """
    prob = PROBLEMS[problem] if isinstance(problem, str) else problem
    specs = list(prob.methods if methods is None else methods)
    if not specs:
        raise ValueError("methods must not be empty")
    steps = prob.default_steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    x0 = torch.as_tensor(prob.starts if starts is None else starts, dtype=dtype)
    if x0.dim() != 2 or x0.shape[-1] != 2 or x0.shape[0] == 0:
        raise ValueError(f"starts must have shape (S, 2) with S >= 1, got {tuple(x0.shape)}")

    n_methods, n_starts = len(specs), x0.shape[0]
    n_runs = n_methods * n_starts
    weightings = [_batched_weighting(spec, prob, seed, n_starts) for spec in specs]

    # batch layout: row = method * S + start, so each method owns a contiguous slice
    x = x0.repeat(n_methods, 1).contiguous()  # (B, 2)
    opt = BatchedAdam(x, lr=lr, betas=betas, eps=eps)
    grads_fn = prob.grads
    records = [x.clone()]
    record_steps = [0]
    bar = progress_bar(steps, f"toy {prob.name}", progress, position=progress_position)
    chunk = max(1, steps // 100)
    weights_shape = (n_runs, 1, 2)
    # methods that also need the loss values (e.g. MGDA with loss normalisation) get them;
    # evaluating the losses costs ~20 ops per step, so only when one of them asks
    merged = _MergedCAGrad(weightings)
    needs_losses = [bool(getattr(m, "needs_losses", False)) for m in weightings]
    any_losses = any(needs_losses)
    losses_fn = prob.losses

    t0 = time.perf_counter()
    with torch.no_grad():
        for step in range(1, steps + 1):
            jac = grads_fn(x)  # (B, 2 tasks, 2 params)
            gram = torch.bmm(jac, jac.mT).view(n_methods, n_starts, 2, 2)
            if any_losses:
                lv = losses_fn(x).view(n_methods, n_starts, 2)
                w = torch.stack(
                    [
                        m.weights(gram[i], lv[i], validate=False) if needs_losses[i] else m.weights(gram[i], validate=False)
                        for i, m in enumerate(weightings)
                    ]
                )
            else:
                w = merged.weights(gram, [m.weights(gram[i], validate=False) if i not in merged.members else None for i, m in enumerate(weightings)])
            update = torch.bmm(w.view(weights_shape), jac).view(n_runs, 2)
            opt.step(update)
            if step % record_every == 0:
                records.append(x.clone())
                record_steps.append(step)
            if bar is not None and step % chunk == 0:
                bar.update(chunk)
        if record_steps[-1] != steps:
            records.append(x.clone())
            record_steps.append(steps)
    seconds = time.perf_counter() - t0
    if bar is not None:
        done = (steps // chunk) * chunk
        if steps - done:
            bar.update(steps - done)
        bar.close()

    traj = torch.stack(records, dim=1).view(n_methods, n_starts, len(records), 2)
    final = x.view(n_methods, n_starts, 2).clone()
    with torch.no_grad():
        losses = prob.losses(x).view(n_methods, n_starts, 2)
    return ToyResult(
        problem=prob,
        methods=specs,
        starts=x0,
        steps=steps,
        lr=lr,
        record_every=record_every,
        record_steps=record_steps,
        trajectories=traj,
        final=final,
        losses=losses,
        seconds=seconds,
        extras={"seed": seed, "dtype": str(dtype).replace("torch.", "")},
    )


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def write_csv(result: ToyResult, path: str | os.PathLike) -> None:
    """Write one row per (method, start); see :meth:`ToyResult.rows` for the columns."""
    rows = result.rows()
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()}
            )


def _fmt(v: float, width: int, prec: int) -> str:
    return f"{v:{width}.{prec}f}" if math.isfinite(v) else f"{str(v):>{width}}"


def format_table(result: ToyResult) -> str:
    """A plain-text table of the end points, losses and the success criterion."""
    prob = result.problem
    obj_name = "L0" if prob.objective == "mean" else "L1+L2"
    reach_name = prob.reached_label
    mw = max(6, *(len(s) for s in result.methods))
    head = (
        f"{'method':<{mw}}  {'start':>15}  {'end':>19}  {'L1':>9}  {'L2':>9}  "
        f"{obj_name:>9}  {reach_name}"
    )
    lines = [
        f"{prob.title}: {result.steps} Adam steps (lr {result.lr:g}), "
        f"{len(result.methods)} methods x {result.starts.shape[0]} starts, "
        f"{result.seconds:.1f} s",
        head,
        "-" * len(head),
    ]
    obj = prob.objective_value(result.losses)
    reached = result.reached
    for m, spec in enumerate(result.methods):
        for s in range(result.starts.shape[0]):
            sx, sy = result.starts[s].tolist()
            ex, ey = result.final[m, s].tolist()
            l1, l2 = result.losses[m, s].tolist()
            lines.append(
                f"{spec:<{mw}}  ({sx:6.2f},{sy:6.2f})  ({_fmt(ex, 8, 4)},{_fmt(ey, 8, 4)})  "
                f"{_fmt(l1, 9, 3)}  {_fmt(l2, 9, 3)}  {_fmt(float(obj[m, s]), 9, 3)}  "
                f"{'yes' if reached[m, s] else 'no'}"
            )
    lines.append(f"({reach_name}: {prob.reached_text})")
    return "\n".join(lines)


def check_methods(specs: Sequence[str], problems: Iterable[str] = ("cagrad", "pcgrad")) -> None:
    """Raise ``ValueError`` naming the spec if any method cannot run on the toy problems, or if
    two specs are one method on one of them (``gd`` and ``sum`` on the PCGrad toy)."""
    for name in problems:
        for spec in specs:
            try:
                resolve_method(spec, PROBLEMS[name])
            except (ValueError, TypeError) as exc:
                text = str(exc)
                raise ValueError(text if repr(spec) in text else f"{spec!r}: {text}") from exc
    for name in problems:
        try:
            check_distinct([_problem_spec(spec, PROBLEMS[name]) for spec in specs], specs, extra={"num_tasks": 2})
        except ValueError as exc:
            gd = any(spec.strip().lower() == "gd" for spec in specs)
            where = f", where gd is {PROBLEMS[name].objective!r}" if gd else ""
            raise ValueError(f"{exc} (on the {name} toy problem{where})") from exc


def _run_toy_job(kwargs: dict) -> ToyResult:
    """Worker of :func:`run_toy_command` in a child process (module level, so it pickles)."""
    torch.set_num_threads(kwargs.pop("threads"))
    return run_toy(**kwargs)


def run_toy_command(
    problems: Iterable[str] = ("cagrad", "pcgrad"),
    methods: Sequence[str] | None = None,
    starts: Sequence[Sequence[float]] | None = None,
    steps: int | None = None,
    pcgrad_steps: int | None = None,
    out: str | os.PathLike = "results/toy",
    seed: int = 0,
    lr: float = 1e-3,
    record_every: int = 100,
    dtype: torch.dtype = torch.float64,
    plots: bool = True,
    progress: bool = True,
    threads: int = 1,
    jobs: int | None = None,
    stream=None,
) -> dict[str, ToyResult]:
    """What ``mtgrad toy`` does: run the problems, write CSVs (and PNGs), print tables.

    ``steps`` applies to the CAGrad toy, ``pcgrad_steps`` to the PCGrad toy (each defaults to
    the problem's default); ``methods`` and ``starts`` (if given) replace the defaults of every
    problem run. ``jobs`` > 1 runs the problems in that many worker processes at once (each
    with ``threads`` torch threads). The default (None) uses one process per problem, up to the
    CPU count, when a run has at least 20,000 steps, and runs in this process otherwise (a worker
    costs a few seconds to start). The results do not depend on ``jobs``. Returns the results by
    problem name.
    """
    stream = sys.stdout if stream is None else stream
    started = time.perf_counter()
    problems = list(problems)
    for name in problems:
        if name not in PROBLEMS:
            raise ValueError(f"unknown problem {name!r}; known: {', '.join(PROBLEMS)}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if methods is not None:
        check_methods(methods, problems)
    counts = [steps if n == "cagrad" else pcgrad_steps for n in problems]
    counts = [PROBLEMS[n].default_steps if c is None else c for n, c in zip(problems, counts)]
    if jobs is None:
        jobs = min(len(problems), os.cpu_count() or 1) if max(counts) >= 20_000 else 1
    jobs = max(1, min(jobs, len(problems)))
    os.makedirs(out, exist_ok=True)
    kwargs = {
        name: dict(
            problem=name,
            methods=methods,
            starts=starts,
            steps=steps if name == "cagrad" else pcgrad_steps,
            lr=lr,
            record_every=record_every,
            seed=seed,
            dtype=dtype,
            progress=progress,
            progress_position=i if jobs > 1 else 0,
        )
        for i, name in enumerate(problems)
    }
    results: dict[str, ToyResult] = {}
    if jobs == 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for name in problems:
                results[name] = run_toy(**kwargs[name])
        finally:
            torch.set_num_threads(previous)
    else:
        from .workers import worker_pool

        with worker_pool(jobs) as pool:
            futures = {
                name: pool.submit(_run_toy_job, dict(kwargs[name], threads=threads))
                for name in problems
            }
            results = {name: futures[name].result() for name in problems}
    for name, res in results.items():
        write_csv(res, os.path.join(out, f"toy_{name}.csv"))

    figures: list[str] = []
    if plots and results:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "note: figures need matplotlib: pip install 'mtgrad[plots]' "
                "(the CSVs were written)",
                file=stream,
            )
        else:
            from mtgrad.bench import toy_plots

            for name, res in results.items():
                figures.append(toy_plots.plot_result(res, os.path.join(out, f"toy_{name}.png")))

    for name, res in results.items():
        print(format_table(res), file=stream)
        print(file=stream)
    written = [os.path.join(out, f"toy_{n}.csv") for n in results] + figures
    print("wrote " + ", ".join(written), file=stream)
    print(f"total {time.perf_counter() - started:.1f} s (jobs={jobs})", file=stream)
    return results
