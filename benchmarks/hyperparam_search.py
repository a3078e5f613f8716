"""Hyperparameter search end to end: held-out error reached against wall time, gradient-based
selection beside cross-validation, grid search and Optuna TPE.

Tasks (built by ``tasks.<name>.build`` exactly as the ``bilevel`` command builds them):

- ``weighted_lasso``: one ℓ1 weight per feature (p = 100 on the default ``sparse_regression``
  data: 1,000 rows, 10 of 100 correlated features carry the signal), validation MSE, held-out
  test MSE;
- ``logreg_l2``: one L2 weight per feature (p = 22, ijcnn1-shaped, 49,990 inner rows, the outer
  rows split into validation and a 20 % test split), validation log-loss, held-out test
  log-loss.

Every method minimises the same validation loss ``problem.outer(w*(θ), θ)`` over the task's box
``problem.bounds``, with the task's inner solver (tol 1e-10), and selects the θ with the lowest
validation loss seen so far; the held-out (test) metric of that θ is what the report shows.

- ``lbfgsb`` (ours, the recommended default): ``BoundedLBFGS`` through ``bilevel.outer.run_outer``
  (warm-started inner solves, implicit hypergradients, all p hyperparameters), ``--lbfgsb-steps``
  steps or until the projected hypergradient is ≤ 1e-8;
- ``implicit`` (ours, the command's default ``outer=implicit``): ``ImplicitGD`` (Adam, lr 0.1),
  ``--implicit-steps`` steps;
- ``tpe``: Optuna's TPE sampler (its defaults, seed ``--seed``) over all p hyperparameters in
  the same box, each trial one inner solve warm-started at the last trial's solution, for
  ``--budget`` seconds of wall time;
- ``tpe1``: the same with one shared hyperparameter (θ = c·1);
- ``grid``: ``--grid`` values of one shared hyperparameter, evenly spaced in the box, from the
  most regularised down, warm-started (a regularisation path) — a grid over p hyperparameters
  would need ``k^p`` solves (3^100, 3^22), which is why grid search and CV estimators stay at
  one shared value;
- ``cv``: the task's scikit-learn baseline (``LassoCV``, ``LogisticRegressionCV``: one shared
  hyperparameter, 5-fold CV on train ∪ validation, refitted), timed as one call; it optimises a
  CV loss, not the validation loss above, so only its held-out metric is comparable.

Times: gradient methods, the ``time_s`` of each ``run_outer`` row (the metric hooks are not
counted); TPE and grid: the wall time at the end of each trial. Held-out metrics are evaluated
afterwards, outside the timed region. TPE gets the same wall-time budget for every task; the
table gives its best validation loss both at the wall time ``lbfgsb`` took (equal budget) and at
the end of its budget, and for every method the time ``lbfgsb`` needed to reach that method's
best validation loss. A 2 × 2 plot (validation loss and held-out metric of the selected θ
against wall time, one column per task) is written to ``--plot``.

Run:  flock /tmp/bilevel-bench.lock .venv/bin/python benchmarks/hyperparam_search.py
      [--tasks weighted_lasso,logreg_l2 --budget 30 --json outputs/bench/hyperparam_search.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from common import THREADS, fmt_ratio, write_results  # benchmarks/common.py

from bilevel.outer import BoundedLBFGS, ImplicitGD, run_outer

METHODS = ("lbfgsb", "implicit", "tpe", "tpe1", "grid", "cv")
LABELS = {"lbfgsb": "ours: `lbfgsb` (implicit hypergradients)",
          "implicit": "ours: `implicit` (Adam on implicit hypergradients)",
          "tpe": "Optuna TPE", "tpe1": "Optuna TPE, shared value",
          "grid": "grid search, shared value", "cv": "CV estimator"}
METRIC = {"weighted_lasso": "test MSE", "logreg_l2": "test log-loss"}


@dataclass
class Trace:
    """One method's search: (time, validation loss, θ, w) per evaluation, in order."""

    method: str
    n_hyper: int
    points: list[tuple[float, float, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    status: str = "ok"
    test_at: dict[int, float] = field(default_factory=dict)  # index → held-out metric

    def best_so_far(self) -> list[int]:
        """Indices of the evaluations that improved the validation loss (the selected θ)."""
        out, best = [], math.inf
        for i, (_, v, _, _) in enumerate(self.points):
            if math.isfinite(v) and v < best:
                best = v
                out.append(i)
        return out

    def best_at(self, t: float) -> int | None:
        """Index of the selected θ at wall time ``t`` (None before the first evaluation)."""
        pick = None
        for i in self.best_so_far():
            if self.points[i][0] <= t:
                pick = i
        return pick

    @property
    def wall(self) -> float:
        return self.points[-1][0] if self.points else math.nan


def build_task(name: str, args: argparse.Namespace):
    if name == "weighted_lasso":
        from tasks.weighted_lasso import build
        return build(seed=args.seed)
    if name == "logreg_l2":
        from tasks.logreg_l2 import build
        return build(dataset=args.logreg_dataset, seed=args.seed, cv_folds=None, shrink=0.0)
    raise SystemExit(f"unknown task {name!r}: weighted_lasso or logreg_l2")


def gradient(task, method, steps: int, label: str) -> Trace:
    """A ``run_outer`` run; each row's θ (the iterate before the step) and its y*."""
    problem = task.problem
    trace = Trace(label, problem.theta0.numel())
    before = {"theta": problem.theta0.detach().clone()}

    def hook(row, state):
        trace.points.append((row["time_s"], float(row["outer_value"]), before["theta"],
                             state.y.detach().clone()))
        before["theta"] = state.theta.detach().clone()

    result = run_outer(method, problem, steps, gtol=1e-8, on_step=hook)
    trace.status = result.status
    return trace


def sampled(task, make_theta, budget: float | None, label: str, n_hyper: int,
            thetas: list[torch.Tensor] | None = None, seed: int = 0) -> Trace:
    """Optuna TPE (``thetas`` None: ``make_theta(trial)`` for ``budget`` seconds) or a fixed
    list of θ (grid); each evaluation is one inner solve warm-started at the previous one."""
    problem = task.problem
    trace = Trace(label, n_hyper)
    last = {"w": problem.y0.detach().clone()}
    start = time.perf_counter()

    def evaluate(theta: torch.Tensor) -> float:
        w = problem.inner.run(theta, init=last["w"])
        value = float(problem.outer(w, theta))
        last["w"] = w
        trace.points.append((time.perf_counter() - start, value, theta, w.detach().clone()))
        return value if math.isfinite(value) else math.inf

    if thetas is not None:
        for theta in thetas:
            evaluate(theta)
        return trace
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda trial: evaluate(make_theta(trial)), timeout=budget)
    return trace


def cross_validation(task) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    metric, hyper = task.baseline()
    return time.perf_counter() - t0, metric, hyper


def held_out(task, trace: Trace) -> None:
    """The held-out metric of every selected θ (untimed)."""
    for i in trace.best_so_far():
        _, _, theta, w = trace.points[i]
        trace.test_at[i] = task.test_metric(theta, w)


def time_to_reach(trace: Trace, value: float) -> float:
    """First wall time at which ``trace`` has a validation loss ≤ ``value`` (NaN if never)."""
    for t, v, _, _ in trace.points:
        if v <= value:
            return t
    return math.nan


def run_task(name: str, args: argparse.Namespace, methods: list[str]):
    task = build_task(name, args)
    problem = task.problem
    p = problem.theta0.numel()
    lo, hi = problem.bounds
    dtype = problem.theta0.dtype
    traces: dict[str, Trace] = {}
    print(f"{name}: p={p} hyperparameters, box [{lo:.3g}, {hi:.3g}]", flush=True)
    if "lbfgsb" in methods:
        traces["lbfgsb"] = gradient(task, BoundedLBFGS(), args.lbfgsb_steps, "lbfgsb")
    if "implicit" in methods:
        traces["implicit"] = gradient(task, ImplicitGD(seed=args.seed), args.implicit_steps,
                                      "implicit")
    if "tpe" in methods:
        traces["tpe"] = sampled(
            task, lambda tr: torch.tensor([tr.suggest_float(f"theta_{j}", lo, hi)
                                           for j in range(p)], dtype=dtype),
            args.budget, "tpe", p, seed=args.seed)
    if "tpe1" in methods:
        traces["tpe1"] = sampled(
            task, lambda tr: torch.full((p,), tr.suggest_float("theta", lo, hi), dtype=dtype),
            args.budget, "tpe1", 1, seed=args.seed)
    if "grid" in methods:
        grid = [torch.full((p,), float(c), dtype=dtype)
                for c in np.linspace(hi, lo, args.grid)]
        traces["grid"] = sampled(task, None, None, "grid", 1, thetas=grid)
    cv = cross_validation(task) if "cv" in methods else None
    for trace in traces.values():
        held_out(task, trace)
        i = trace.best_so_far()[-1] if trace.best_so_far() else None
        if i is not None:
            print(f"  {trace.method:9s} {len(trace.points):5d} evaluations  {trace.wall:7.2f} s  "
                  f"validation {trace.points[i][1]:.6g}  held-out {trace.test_at[i]:.6g}  "
                  f"({trace.status})", flush=True)
    if cv is not None:
        print(f"  cv        {cv[0]:.2f} s  held-out {cv[1]:.6g}  {task.baseline_name}", flush=True)
    return task, traces, cv


def rows_for(name: str, task, traces: dict[str, Trace], cv, args) -> list[list[str]]:
    ref = traces.get("lbfgsb")
    rows = []

    def row(label, trace: Trace, t_cut: float | None = None):
        i = trace.best_at(t_cut if t_cut is not None else math.inf)
        if i is None:
            return [name, label, str(trace.n_hyper), "0", "—", "—", "—", "—", "—"]
        n_eval = sum(1 for t, *_ in trace.points if t_cut is None or t <= t_cut)
        wall = trace.wall if t_cut is None else min(t_cut, trace.wall)
        val, test = trace.points[i][1], trace.test_at[i]
        reach = ratio = "—"
        if ref is not None and trace is not ref:
            t_ref = time_to_reach(ref, val)
            reach = "not reached" if math.isnan(t_ref) else f"{t_ref:.2f} s"
            ratio = fmt_ratio(wall, t_ref)
        return [name, label, str(trace.n_hyper), str(n_eval), f"{wall:.2f} s", f"{val:.6g}",
                f"{test:.6g}", reach, ratio]

    for key in ("lbfgsb", "implicit"):
        if key in traces:
            rows.append(row(LABELS[key], traces[key]))
    if "tpe" in traces:
        if ref is not None:
            rows.append(row(f"{LABELS['tpe']}, at the wall time of `lbfgsb`", traces["tpe"],
                            t_cut=ref.wall))
        rows.append(row(f"{LABELS['tpe']}, {args.budget:g} s budget", traces["tpe"]))
    if "tpe1" in traces:
        rows.append(row(f"{LABELS['tpe1']}, {args.budget:g} s budget", traces["tpe1"]))
    if "grid" in traces:
        rows.append(row(f"{LABELS['grid']}, {args.grid} values", traces["grid"]))
    if cv is not None:
        rows.append([name, task.baseline_name, "1", "—", f"{cv[0]:.2f} s", "— (CV loss)",
                     f"{cv[1]:.6g}", "—", "—"])
    return rows


def plot(results, path: str) -> None:
    """Per task: the validation loss of the selected θ and its held-out metric against wall
    time (log scale), each zoomed on the methods' end points (early values run off the top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), squeeze=False)
    for col, (name, (_, traces, cv)) in enumerate(results.items()):
        top, bottom = axes[0, col], axes[1, col]
        curves = {}
        for key, trace in traces.items():
            picks = trace.best_so_far()
            if picks:
                t = [max(trace.points[i][0], 1e-3) for i in picks] + [max(trace.wall, 1e-3)]
                v = [trace.points[i][1] for i in picks] + [trace.points[picks[-1]][1]]
                m = [trace.test_at[i] for i in picks] + [trace.test_at[picks[-1]]]
                curves[key] = (t, v, m, trace.n_hyper)
        if not curves:
            continue
        for key, (t, v, m, n_hyper) in curves.items():
            label = f"{key} ({n_hyper} hyperparameter{'s' if n_hyper > 1 else ''})"
            top.step(t, v, where="post", label=label)
            bottom.step(t, m, where="post", label=label)
        if cv is not None:
            bottom.plot([cv[0]], [cv[1]], "k*", ms=10, label="CV estimator (1 shared)")
        for ax, index, extra in ((top, 1, []), (bottom, 2, [cv[1]] if cv is not None else [])):
            lo = min(min(c[index]) for c in curves.values())
            hi = max([c[index][-1] for c in curves.values()] + extra)
            span = max(hi - lo, 1e-3 * abs(lo))
            ax.set_ylim(lo - 0.1 * span, hi + span)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.set_xlabel("wall time (s)")
            ax.grid(True, which="major", lw=0.3)
        top.set_ylabel("validation loss of the selected θ")
        bottom.set_ylabel(f"held-out {METRIC.get(name, 'metric')} of the selected θ")
        top.set_title(name)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="weighted_lasso,logreg_l2")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"a subset of {','.join(METHODS)}")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of wall time of each Optuna search")
    ap.add_argument("--lbfgsb-steps", type=int, default=50)
    ap.add_argument("--implicit-steps", type=int, default=100)
    ap.add_argument("--grid", type=int, default=20, help="values of the shared grid")
    ap.add_argument("--logreg-dataset", default="ijcnn1_like",
                    choices=["ijcnn1_like", "breast_cancer"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="benchmarks/figures/hyperparam_search.png")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")

    results = {}
    with warnings.catch_warnings():
        # loose trials far from the optimum warn of kinks / slow solves; the search goes on
        warnings.simplefilter("ignore")
        for name in [t for t in args.tasks.split(",") if t]:
            results[name] = run_task(name, args, methods)
    plot(results, args.plot)

    rows, data, notes = [], {}, []
    for name, (task, traces, cv) in results.items():
        rows += rows_for(name, task, traces, cv, args)
        data[name] = {
            key: {"n_hyper": tr.n_hyper, "status": tr.status, "evaluations": len(tr.points),
                  "curve": [[tr.points[i][0], tr.points[i][1], tr.test_at[i]]
                            for i in tr.best_so_far()]}
            for key, tr in traces.items()}
        if cv is not None:
            data[name]["cv"] = {"wall_s": cv[0], "test": cv[1], "hyperparameters": cv[2]}
        if "lbfgsb" in traces and "tpe" in traces:
            ref, tpe = traces["lbfgsb"], traces["tpe"]
            i_ref, i_tpe = ref.best_so_far()[-1], tpe.best_so_far()[-1]
            notes.append(
                f"{name}: `lbfgsb` selected {ref.n_hyper} hyperparameters in {ref.wall:.2f} s "
                f"({len(ref.points)} steps, {ref.status}) to a held-out {METRIC[name]} of "
                f"{ref.test_at[i_ref]:.6g}; Optuna TPE over the same {tpe.n_hyper} reached "
                f"{tpe.test_at[i_tpe]:.6g} after {len(tpe.points)} trials in "
                f"{tpe.wall:.1f} s" + (f"; {task.baseline_name}: {cv[1]:.6g}." if cv else "."))
    for r in rows:
        print(" | ".join(r))
    print(json.dumps(data)[:2000])
    columns = ["task", "method", "hyperparameters", "evaluations", "wall time",
               "best validation loss", "held-out metric of the selected θ",
               "`lbfgsb` reached this validation loss at",
               "wall time / `lbfgsb`'s time to it"]
    write_results(args.json, "hyperparam_search",
                  [{"title": "Hyperparameter search: held-out error reached and wall time",
                    "columns": columns, "rows": rows}],
                  notes=notes, figures=[args.plot], data=data)


if __name__ == "__main__":
    main()
