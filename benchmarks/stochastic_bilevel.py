"""Per-feature L2 logistic regression: h(θ_t) − h* against wall time for every outer method.

Problem (``tasks.logreg_l2``): ``h(θ) = mean validation log-loss of w*(θ)``,
``w*(θ) = argmin_w mean_i softplus(−y_i x_iᵀw) + ½ Σ_j e^{θ_j} w_j²``, θ ∈ [−12, 4]^p (box
projection; the optimum sends some θ_j to the bounds), θ₀ = log(1e-3). Datasets:
``ijcnn1_like`` (make_classification(141691, 22, n_informative=12, weights=[0.9, 0.1],
random_state=0), first 49,990 rows inner, the other 91,701 outer, standardised) and
``breast_cancer``.

Measured in one process (torch on 2 threads):

- ``scipy L-BFGS-B`` (the peer figure of issue 5: a float64 full-batch L-BFGS-B on h with exact
  implicit gradients): ``scipy.optimize.minimize(method="L-BFGS-B", bounds=box)`` on h, each
  evaluation an inner scipy L-BFGS-B solve (gtol 1e-10, warm-started at the last w) and the
  hypergradient ``−e^θ ⊙ w ⊙ (∇²g)⁻¹ ∇f`` by a dense numpy solve; time of the evaluation that
  first reaches the target;
- ``lbfgsb`` (this framework's recommended default for the task: ``BoundedLBFGS``, Newton
  inner solves warm-started, implicit hypergradients); its rows hold exact h(θ_k);
- ``implicit`` (ImplicitGD, Adam) and every stochastic method with its default settings
  (SOBA, SABA, AmIGO, StocBiO, TTSA, Unrolled), ``--seeds`` seeds each, ``--budget`` seconds of
  wall time each; θ is recorded after every step and h(θ_t) evaluated afterwards, outside the
  timed region, at ``--points`` log-spaced times (a numpy Newton solve with the exact Hessian).

h* is the lower of the two deterministic runs' end points (``pgtol`` / ``gtol`` 1e-10, at most
``--maxiter`` iterations), both evaluated by the numpy reference.
Reported per method: the time to reach h − h* ≤ 1e-3·|h*| and ≤ 1e-4·|h*| (seed 0 and the
median over seeds), the final relative gap (median, worst), and how many seeds diverged
(NaN/Inf, or an exception). A PNG of (h − h*)/|h*| against time is written to ``--plot``; the
last line printed is one JSON record.

Run:  flock /tmp/bilevel-bench.lock .venv/bin/python benchmarks/stochastic_bilevel.py
      [--dataset ijcnn1_like --seeds 10 --budget 10 --points 12 --plot stochastic_bilevel.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit

from bilevel.outer import SABA, SOBA, TTSA, AmIGO, ImplicitGD, StocBiO, Unrolled, run_outer
from bilevel.outer.lbfgsb import BoundedLBFGS
from tasks.logreg_l2 import build, load_splits

THREADS = 2
TARGETS = (1e-3, 1e-4)
STOCHASTIC: dict[str, Callable[[int], object]] = {
    "implicit": lambda seed: ImplicitGD(seed=seed),
    "soba": lambda seed: SOBA(seed=seed),
    "saba": lambda seed: SABA(seed=seed),
    "amigo": lambda seed: AmIGO(seed=seed),
    "stocbio": lambda seed: StocBiO(seed=seed),
    "ttsa": lambda seed: TTSA(seed=seed),
    "unrolled": lambda seed: Unrolled(seed=seed),
}


# -- numpy reference of h (evaluation only, never timed) and the scipy peer --------------------

class NumpyH:
    """h(θ) and ∇h(θ) in numpy; inner solves warm-started at the last w."""

    def __init__(self, X, y, Xv, yv, inner: str):
        self.X, self.y, self.Xv, self.yv, self.inner = X, y, Xv, yv, inner
        self.w = np.zeros(X.shape[1])

    def inner_grad(self, w, lam):
        z = -self.y * (self.X @ w)
        value = np.logaddexp(0.0, z).mean() + 0.5 * (lam * w * w).sum()
        return value, self.X.T @ (-self.y * expit(z)) / len(self.y) + lam * w

    def hessian(self, w, lam):
        s = expit(self.y * (self.X @ w))
        return (self.X.T * (s * (1 - s))) @ self.X / len(self.y) + np.diag(lam)

    def solve(self, theta):
        lam = np.exp(theta)
        if self.inner == "newton":  # reference: Newton with the exact Hessian, to ‖∇‖∞ ≤ 1e-12
            w = self.w.copy()
            for _ in range(50):
                grad = self.inner_grad(w, lam)[1]
                if np.abs(grad).max() <= 1e-12:
                    break
                step = np.linalg.solve(self.hessian(w, lam), grad)
                w = w - step
                if np.abs(step).max() <= 1e-15 * max(1.0, np.abs(w).max()):
                    break
        else:  # the peer: scipy L-BFGS-B inner solve, warm-started
            w = minimize(self.inner_grad, self.w, args=(lam,), jac=True, method="L-BFGS-B",
                         options={"gtol": 1e-10, "ftol": 1e-20, "maxiter": 1000}).x
        self.w = w
        return w

    def value(self, theta):
        w = self.solve(theta)
        return float(np.logaddexp(0.0, -self.yv * (self.Xv @ w)).mean())

    def value_and_grad(self, theta):
        w = self.solve(theta)
        zv = -self.yv * (self.Xv @ w)
        grad_w = self.Xv.T @ (-self.yv * expit(zv)) / len(self.yv)
        u = np.linalg.solve(self.hessian(w, np.exp(theta)), grad_w)
        return float(np.logaddexp(0.0, zv).mean()), -np.exp(theta) * w * u


def run_peer(data, theta0, bounds, pgtol, maxiter):
    """scipy L-BFGS-B on h; returns [(time after each evaluation, h)] and the result."""
    h = NumpyH(*data, inner="lbfgs")
    trace, start = [], time.perf_counter()

    def fun(theta):
        out = h.value_and_grad(theta)
        trace.append((time.perf_counter() - start, out[0]))
        return out

    res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=[bounds] * len(theta0),
                   options={"gtol": pgtol, "ftol": 1e-20, "maxiter": maxiter})
    return trace, res


# -- the framework's methods -----------------------------------------------------------------

def run_ours(problem, steps, gtol):
    """BoundedLBFGS; [(time after the step, h(θ_k))] (exact h: its rows hold it)."""
    result = run_outer(BoundedLBFGS(), problem, steps, gtol=gtol)
    return [(r["time_s"], r["outer_value"]) for r in result.history], result


def run_stochastic(make, problem, budget):
    """Steps of ``make()`` for ``budget`` seconds: [(time, θ copy)], status."""
    method = make()
    trace, start = [], time.perf_counter()
    try:
        state = method.init(problem)
        while time.perf_counter() - start < budget:
            method.step(problem, state)
            theta = state.theta.detach().clone()
            trace.append((time.perf_counter() - start, theta))
            if not bool(torch.isfinite(theta).all()) or not bool(torch.isfinite(state.y).all()):
                return trace, f"diverged at step {state.step}"
    except Exception as exc:  # noqa: BLE001 — a benchmark records failures, it goes on
        return trace, f"failed: {type(exc).__name__}: {exc}"
    return trace, "ok"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def log_spaced(trace, points):
    """``points`` entries of ``trace`` spread log-uniformly in time (the last one included)."""
    if len(trace) <= points:
        return trace
    times = np.array([t for t, _ in trace])
    grid = np.geomspace(max(times[0], 1e-3), times[-1], points)
    picks = sorted({int(min(np.searchsorted(times, g), len(trace) - 1)) for g in grid})
    return [trace[i] for i in picks]


def time_to(curve, h_star, tol):
    """First time with (h − h*) ≤ tol·|h*|, or NaN."""
    for t, v in curve:
        if v - h_star <= tol * abs(h_star):
            return t
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ijcnn1_like", choices=["ijcnn1_like", "breast_cancer"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per stochastic run")
    ap.add_argument("--points", type=int, default=12, help="h evaluations per stochastic run")
    ap.add_argument("--methods", default=",".join(STOCHASTIC))
    ap.add_argument("--maxiter", type=int, default=100, help="of both deterministic runs")
    ap.add_argument("--plot", default="stochastic_bilevel.png")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)

    test_fraction = 0.0 if args.dataset == "ijcnn1_like" else 0.2
    task = build(args.dataset, test_fraction=test_fraction)
    problem = task.problem
    bounds = problem.bounds
    (X, y), (Xv, yv), _ = load_splits(args.dataset, test_fraction, 0.25, seed=0)
    data = (X, y, Xv, yv)
    theta0 = problem.theta0.numpy().copy()

    # timed: the peer, then ours, in this process
    peer_trace, peer_res = run_peer(data, theta0, bounds, pgtol=1e-10, maxiter=args.maxiter)
    ours_trace, ours = run_ours(problem, args.maxiter, gtol=1e-10)
    progress(f"timed runs done: peer {peer_trace[-1][0]:.2f} s ({peer_res.nit} iterations), "
             f"ours {ours_trace[-1][0]:.2f} s ({len(ours.history)} steps, {ours.status})")
    # h*: the lower end point of the two deterministic runs, evaluated by the reference
    reference = NumpyH(*data, inner="newton")
    h_star = min(reference.value(peer_res.x), reference.value(ours.theta.numpy()))
    curves = {"scipy L-BFGS-B (peer)": peer_trace, "lbfgsb (ours, default)": ours_trace}
    rows = []
    for name, curve in curves.items():
        gaps = [(v - h_star) / abs(h_star) for _, v in curve]
        rows.append({"method": name, "seeds": 1, "diverged": 0,
                     **{f"t_{tol:g}_s": time_to(curve, h_star, tol) for tol in TARGETS},
                     "final_gap_median": gaps[-1], "final_gap_worst": gaps[-1],
                     "wall_s": curve[-1][0]})

    for name in [m for m in args.methods.split(",") if m]:
        progress(f"{name}: {args.seeds} seeds × {args.budget:g} s")
        per_seed, statuses, seed0 = [], [], None
        for seed in range(args.seeds):
            trace, status = run_stochastic(lambda s=seed, m=name: STOCHASTIC[m](s), problem,
                                           args.budget)
            statuses.append(status)
            curve = []
            for t, theta in log_spaced(trace, args.points):
                reference.w = np.zeros(X.shape[1])
                v = reference.value(theta.numpy()) if np.isfinite(theta.numpy()).all() \
                    else float("nan")
                curve.append((t, v))
            per_seed.append(curve)
            if seed == 0:
                seed0 = curve
        finals = [(c[-1][1] - h_star) / abs(h_star) if c else float("nan") for c in per_seed]
        bad = sum(s != "ok" or not math.isfinite(f) for s, f in zip(statuses, finals, strict=True))
        rows.append({
            "method": name, "seeds": args.seeds, "diverged": bad,
            **{f"t_{tol:g}_s": time_to(seed0, h_star, tol) for tol in TARGETS},
            **{f"t_{tol:g}_s_median": float(np.median([time_to(c, h_star, tol)
                                                       for c in per_seed])) for tol in TARGETS},
            "final_gap_median": float(np.median(finals)), "final_gap_worst": float(max(finals)),
            "wall_s": args.budget, "statuses": sorted(set(statuses)),
        })
        curves[name] = seed0

    print(f"per-feature L2 logistic regression, {args.dataset}: n_inner={len(y)} "
          f"n_outer={len(yv)} p={X.shape[1]} box={bounds}  h*={h_star:.12g}  "
          f"torch threads={THREADS}")
    print(f"{'method':26s} {'seeds':>5s} {'diverged':>8s} {'t(1e-3) s':>10s} {'t(1e-4) s':>10s}"
          f" {'median t(1e-4)':>14s} {'final gap med':>13s} {'worst':>9s}")
    for r in rows:
        print(f"{r['method']:26s} {r['seeds']:5d} {r['diverged']:8d} {r['t_0.001_s']:10.3f} "
              f"{r['t_0.0001_s']:10.3f} {r.get('t_0.0001_s_median', float('nan')):14.3f} "
              f"{r['final_gap_median']:13.2e} {r['final_gap_worst']:9.2e}")
    peer_t, ours_t = rows[0]["t_0.0001_s"], rows[1]["t_0.0001_s"]
    print(f"time to 1e-4·|h*|: ours {ours_t:.3f} s, peer {peer_t:.3f} s, ratio peer/ours "
          f"{peer_t / ours_t:.2f}  (peer: {peer_res.nit} iterations, {peer_res.nfev} evaluations)")

    _plot(curves, h_star, args.plot, args.dataset)
    print(json.dumps({"dataset": args.dataset, "h_star": h_star, "rows": rows,
                      "seeds": args.seeds, "budget_s": args.budget, "threads": THREADS,
                      "plot": args.plot}))


def _plot(curves, h_star, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        if not curve:
            continue
        t = [max(c[0], 1e-3) for c in curve]
        gap = [max((c[1] - h_star) / abs(h_star), 1e-12) for c in curve]
        ax.loglog(t, gap, marker=".", label=name)
    for tol in TARGETS:
        ax.axhline(tol, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("(h(θ_t) − h*) / |h*|")
    ax.set_title(f"per-feature L2 logistic regression, {dataset} (seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
