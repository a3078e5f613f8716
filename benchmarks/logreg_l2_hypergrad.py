"""Per-feature L2 logistic regression (ijcnn1-shaped): cost of the hypergradient vs the solve.

Data: sklearn ``make_classification(n_samples=141691, n_features=22, n_informative=12,
weights=[0.9, 0.1], random_state=0)`` (the shape and class balance of ijcnn1), features
standardised with the mean / std of the inner split, the first 49,990 rows inner (train), the
remaining 91,701 outer (validation), labels ±1.

Inner problem (``solvers.Smooth``, Newton with the dense 22 × 22 Hessian, tol 1e-10 on
‖∇_w f‖∞), θ ∈ R²² (default θ = log(1e-3) · 1):

    w*(θ) = argmin_w  mean_i softplus(−y_i x_iᵀw) + ½ Σ_j e^{θ_j} w_j²,

outer loss F(θ) = mean validation log-loss of w*(θ). Measured:

- solve_s: a fresh ``Smooth`` and ``bilevel.implicit_solve`` from w = 0 (cold start);
- hypergrad_s: forward + ``.backward()`` of the outer loss through ``implicit_solve`` (the
  implicit derivative, i.e. one adjoint solve with the Hessian, plus the outer loss itself);
- outer_s: the same forward + backward of the outer loss w.r.t. a detached w alone, so that
  implicit_s = hypergrad_s − outer_s is the cost of the implicit part;
- overhead = hypergrad_s / solve_s and implicit_overhead = implicit_s / solve_s;
- fd_rel_err: the largest |⟨dF/dθ, d⟩ − fd| / |fd| over 3 random unit directions d, with
  fd = (F(θ + h d) − F(θ − h d)) / 2h, h = 1e-4 (inner solves at tol 1e-12, warm-started
  from w*; the difference is taken per validation sample before the mean, to keep the
  round-off of F itself out of it);
- scipy_s: ``scipy.optimize.minimize(method="L-BFGS-B", gtol=1e-10)`` on the same inner
  problem (numpy objective and gradient, cold start from 0; ftol=1e-20, so that it stops on
  gtol or once f no longer decreases in floating point — its message and final ‖∇f‖∞ are
  printed), and max |w_scipy − w|.

Times are medians over ``--repeat`` runs; torch runs on 2 threads (numpy/scipy use their own
BLAS threading). The last line printed is one JSON record; ``--json PATH`` writes the report's
record (``common.write_results``).

Run:  .venv/bin/python benchmarks/logreg_l2_hypergrad.py [--repeat 3 --seed 0 --theta0 -6.9]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from common import fmt_ratio, fmt_s, write_results  # benchmarks/common.py
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.datasets import make_classification

import bilevel
from solvers.smooth import Smooth

F64 = torch.float64
THREADS = 2
N_TOTAL, N_INNER, N_FEATURES = 141_691, 49_990, 22


def data():
    X, y = make_classification(n_samples=N_TOTAL, n_features=N_FEATURES, n_informative=12,
                               weights=[0.9, 0.1], random_state=0)
    mean, std = X[:N_INNER].mean(0), X[:N_INNER].std(0)
    X = (X - mean) / std
    y = 2.0 * y - 1.0
    return X[:N_INNER], y[:N_INNER], X[N_INNER:], y[N_INNER:]


def inner_objective(X, y):
    def f(w, t):
        return torch.nn.functional.softplus(-y * (X @ w)).mean() + 0.5 * (t.exp() * w * w).sum()
    return f


def outer_losses(Xv, yv):
    """w ↦ the validation log-loss of every sample (the outer loss is their mean)."""
    return lambda w: torch.nn.functional.softplus(-yv * (Xv @ w))


def timed_hypergradient(X, y, loss, theta0, repeat):
    """Median (solve, hypergradient) times; the hypergradient and w of the last run."""
    solve, hyper = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        solver = Smooth(inner_objective(X, y), method="newton", tol=1e-10)
        theta = theta0.clone().requires_grad_(True)
        w = bilevel.implicit_solve(solver, theta, torch.zeros(X.shape[1], dtype=F64))
        t1 = time.perf_counter()
        loss(w).backward()
        t2 = time.perf_counter()
        solve.append(t1 - t0)
        hyper.append(t2 - t1)
    best = (statistics.median(solve), statistics.median(hyper))
    return best, w.detach(), theta.grad.detach().clone(), solver.info


def timed_outer(loss, w, repeat):
    """Median time of forward + backward of the outer loss w.r.t. a detached w."""
    times = []
    for _ in range(repeat):
        wd = w.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        loss(wd).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fd_check(X, y, losses, theta0, w, grad, h, seed, n_dirs=3):
    """(⟨dF/dθ, d⟩, central difference) along ``n_dirs`` random unit directions; the
    difference F(θ + hd) − F(θ − hd) is taken sample by sample before the mean, which keeps the
    round-off of the ~0.2-sized F out of the ~1e-9-sized difference."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_dirs):
        d = torch.randn(theta0.shape, generator=gen, dtype=F64)
        d /= d.norm()
        w_pm = [Smooth(inner_objective(X, y), method="newton", tol=1e-12)
                .run(theta0 + s * h * d, w) for s in (1.0, -1.0)]
        fd = float((losses(w_pm[0]) - losses(w_pm[1])).mean()) / (2 * h)
        out.append((float(grad @ d), fd))
    return out


def scipy_solve(Xn, yn, theta0, repeat):
    lam = np.exp(theta0)
    n = Xn.shape[0]

    def fun(w):
        z = -yn * (Xn @ w)
        value = np.logaddexp(0.0, z).mean() + 0.5 * (lam * w * w).sum()
        grad = Xn.T @ (-yn * expit(z)) / n + lam * w
        return value, grad

    def fit():
        return minimize(fun, np.zeros(Xn.shape[1]), jac=True, method="L-BFGS-B",
                        options={"gtol": 1e-10, "ftol": 1e-20, "maxiter": 100_000})

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fit()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res, float(np.abs(fun(res.x)[1]).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random FD directions")
    ap.add_argument("--theta0", type=float, default=math.log(1e-3),
                    help="every θ_j starts here (log of the per-feature L2 weight)")
    ap.add_argument("--fd-h", type=float, default=1e-4, help="central-difference step along d")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)

    Xn, yn, Xvn, yvn = data()
    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in (Xn, yn, Xvn, yvn))
    theta0 = torch.full((N_FEATURES,), args.theta0, dtype=F64)
    losses = outer_losses(Xv, yv)

    def loss(w):
        return losses(w).mean()


    (solve_s, hyper_s), w, grad, info = timed_hypergradient(X, y, loss, theta0, args.repeat)
    outer_s = timed_outer(loss, w, args.repeat)
    implicit_s = hyper_s - outer_s
    checks = fd_check(X, y, losses, theta0, w, grad, args.fd_h, args.seed)
    fd_rel_err = max(abs(g - fd) / abs(fd) for g, fd in checks)

    print(f"L2 logistic (ijcnn1-shaped) n_inner={N_INNER} n_outer={N_TOTAL - N_INNER} "
          f"p={N_FEATURES} theta0={args.theta0:.4g}  median of {args.repeat}, "
          f"torch threads={THREADS}")
    print(f"ours    solve {solve_s:.4f} s ({info.iterations} Newton steps, "
          f"|grad|_inf {info.residual:.1e})   hypergrad {hyper_s:.4f} s = outer {outer_s:.4f} s"
          f" + implicit {implicit_s:.4f} s")
    print(f"        hypergrad/solve {hyper_s / solve_s:.3f}   implicit/solve "
          f"{implicit_s / solve_s:.3f}")
    for i, (g, fd) in enumerate(checks):
        print(f"        direction {i}: <dF/dθ, d> {g:+.10e}   fd {fd:+.10e}   "
              f"rel_err {abs(g - fd) / abs(fd):.1e}")
    print(f"        fd_rel_err (max over directions; central, h={args.fd_h:g}, inner tol 1e-12) "
          f"{fd_rel_err:.1e}")

    scipy_s, res, scipy_grad = scipy_solve(Xn, yn, theta0.numpy(), args.repeat)
    print(f"scipy   L-BFGS-B solve {scipy_s:.4f} s ({res.nit} iterations, {res.nfev} evaluations,"
          f" |grad|_inf {scipy_grad:.1e}, {res.message})   max|w_scipy - w| "
          f"{np.abs(res.x - w.numpy()).max():.1e}")

    dw = float(np.abs(res.x - w.numpy()).max())
    record = {
        "solve_s": solve_s, "hypergrad_s": hyper_s, "outer_s": outer_s,
        "implicit_s": implicit_s, "overhead": hyper_s / solve_s,
        "implicit_overhead": implicit_s / solve_s, "fd_rel_err": fd_rel_err,
        "scipy_s": scipy_s, "newton_steps": info.iterations, "scipy_iterations": int(res.nit),
        "scipy_grad_inf": scipy_grad, "fd_h": args.fd_h, "theta0": args.theta0,
        "n_inner": N_INNER, "n_outer": N_TOTAL - N_INNER, "p": N_FEATURES,
        "seed": args.seed, "threads": THREADS, "repeat": args.repeat, "statistic": "median",
        "scipy_dw": dw, "scipy_message": str(res.message),
    }
    print(json.dumps(record))
    table = {
        "title": "Per-feature L2 logistic regression, 22 hyperparameters (medians)",
        "columns": ["", "time", "accuracy"],
        "rows": [
            [f"ours: inner solve ({info.iterations} Newton steps)", fmt_s(solve_s),
             f"‖∇f‖∞ {info.residual:.1e}"],
            ["ours: hypergradient",
             f"{fmt_s(hyper_s)} (outer loss {fmt_s(outer_s)} + implicit {fmt_s(implicit_s)})",
             f"rel. error vs central differences ≤ {fd_rel_err:.1e} ({len(checks)} "
             "directions)"],
            ["ours: solve + hypergradient", fmt_s(solve_s + hyper_s),
             f"hypergradient / solve {hyper_s / solve_s:.3f} (implicit part "
             f"{implicit_s / solve_s:.3f})"],
            ["scipy L-BFGS-B (peer), solve only", fmt_s(scipy_s),
             f"‖∇f‖∞ {scipy_grad:.1e}, max |Δw| {dw:.1e}"],
            ["ours (solve + hypergradient) / scipy (solve)",
             fmt_ratio(solve_s + hyper_s, scipy_s), ""],
        ],
    }
    met = hyper_s / solve_s <= 0.1
    notes = [f"Hypergradient overhead (hypergradient / solve) {hyper_s / solve_s:.3f}: target "
             f"≤ 0.1 (issue 3) {'met' if met else 'not met'}."]
    write_results(args.json, "logreg_l2_hypergrad", [table], notes=notes, data=record)


if __name__ == "__main__":
    main()
