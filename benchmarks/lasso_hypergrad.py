"""Lasso hypergradient: time and accuracy of solve + implicit derivative, beside sklearn/celer.

Measures, on a Lasso with n train / n validation rows and p features (sklearn
``make_regression``, columns scaled to norm √(2n)), λ = λmax / lam_ratio and θ = log λ:

- ours: ``bilevel.implicit_solve`` with a fresh ``solvers.models.lasso`` (the working-set solver,
  cold start from 0; its construction is timed too) then ``.backward()`` of the validation loss;
  solve and hypergradient timed separately;
- rel_err: |dF/dθ − ref| / |ref| against the closed form on the support S of w,
  ref = λ · ∇F(w)_Sᵀ (−(X_SᵀX_S/n)⁻¹ sign(w_S));
- sklearn (and celer, when installed): solve time of the same Lasso, and max |w_sk − w|.

Times are the best of ``--repeat`` runs; torch runs on 2 threads (sklearn/celer use their own
BLAS/OpenMP threading). The last line printed is one JSON record.

Run:  .venv/bin/python benchmarks/lasso_hypergrad.py [--n 1000 --p 5000 --lam-ratio 30 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from common import THREADS, best_time, regression_data  # benchmarks/common.py
from sklearn.linear_model import Lasso

import bilevel
from solvers import models

F64 = torch.float64


def ours(X, y, Xv, yv, lam, tol, repeat):
    """Best (solve, hypergradient, outer-only) times over ``repeat`` cold runs. The
    hypergradient time is the validation loss's forward + ``.backward()`` through
    ``implicit_solve``; the outer-only time is the same forward + backward w.r.t. a detached
    ``w`` (``F(w)`` and ``∂F/∂w = X_vᵀr/n``, which any hypergradient method pays); their
    difference is the implicit part."""
    best = (math.inf, math.inf, math.inf)
    for _ in range(repeat):
        t0 = time.perf_counter()
        solver = models.lasso(X, y, tol=tol)  # the framework's default solver for the Lasso
        theta = torch.tensor(math.log(lam), dtype=F64, requires_grad=True)
        w = bilevel.implicit_solve(solver, theta)
        t1 = time.perf_counter()
        (0.5 * ((Xv @ w - yv) ** 2).mean()).backward()
        t2 = time.perf_counter()
        w_leaf = w.detach().requires_grad_(True)
        t3 = time.perf_counter()
        (0.5 * ((Xv @ w_leaf - yv) ** 2).mean()).backward()
        outer = time.perf_counter() - t3
        if t2 - t0 < best[0] + best[1]:
            best = (t1 - t0, t2 - t1, outer)
    return best, w.detach(), float(theta.grad), solver.info.iterations


def closed_form(X, Xv, yv, w, lam):
    n = X.shape[0]
    S = w.abs() > 0
    XS = X[:, S]
    dw = -torch.linalg.solve(XS.T @ XS / n, torch.sign(w[S]))
    grad_F = Xv.T @ (Xv @ w - yv) / Xv.shape[0]
    return float(lam * grad_F[S] @ dw), int(S.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam-ratio", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-10, help="inner tolerance (ours)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)

    Xn, yn, Xvn, yvn = regression_data(args.n, args.p, args.seed)
    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in (Xn, yn, Xvn, yvn))
    lam = float((X.T @ y).abs().max()) / args.n / args.lam_ratio

    (solve_s, hyper_s, outer_s), w, grad, iters = ours(X, y, Xv, yv, lam, args.tol, args.repeat)
    ref, support = closed_form(X, Xv, yv, w, lam)
    rel_err = abs(grad - ref) / abs(ref)
    print(f"Lasso n={args.n} p={args.p} seed={args.seed} lambda=lmax/{args.lam_ratio:g}="
          f"{lam:.4g}  best of {args.repeat}, torch threads={THREADS}")
    print(f"ours    solve {solve_s:.3f} s + hypergrad {hyper_s:.3f} s = "
          f"{solve_s + hyper_s:.3f} s   rel_err {rel_err:.1e}   support {support}   "
          f"iters {iters}")
    print(f"        hypergrad/solve {hyper_s / solve_s:.3f}; of the hypergradient, the outer "
          f"loss's own value and gradient take {outer_s:.4f} s and the implicit part "
          f"{hyper_s - outer_s:.4f} s (implicit/solve {(hyper_s - outer_s) / solve_s:.3f})")

    # sklearn's tol is on the duality gap, scaled by ‖y‖²/n: 1e-8 gives a gap comparable to ours.
    sk_s, sk = best_time(lambda: Lasso(alpha=lam, fit_intercept=False, tol=1e-8,
                                       max_iter=100_000).fit(Xn, yn), args.repeat)
    print(f"sklearn solve {sk_s:.3f} s   max|w_sk - w| {np.abs(sk.coef_ - w.numpy()).max():.1e}")

    celer_s = None
    try:
        import celer
    except ImportError:
        print("celer   not installed")
    else:
        celer_s, ce = best_time(lambda: celer.Lasso(alpha=lam, fit_intercept=False, tol=1e-8)
                                .fit(Xn, yn), args.repeat)
        print(f"celer   solve {celer_s:.3f} s   "
              f"max|w_celer - w| {np.abs(ce.coef_ - w.numpy()).max():.1e}")

    print(json.dumps({
        "ours_s": solve_s + hyper_s, "sklearn_s": sk_s, "celer_s": celer_s, "rel_err": rel_err,
        "n": args.n, "p": args.p, "seed": args.seed, "lam_ratio": args.lam_ratio,
        "support_size": support, "inner_iterations": iters, "solve_s": solve_s,
        "hypergrad_s": hyper_s, "outer_s": outer_s, "implicit_s": hyper_s - outer_s,
        "overhead": hyper_s / solve_s, "implicit_overhead": (hyper_s - outer_s) / solve_s,
        "threads": THREADS,
    }))


if __name__ == "__main__":
    main()
