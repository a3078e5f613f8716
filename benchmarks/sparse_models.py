"""Elastic net and sparse logistic regression: solve + hypergradient, beside celer/sklearn.

Data as in ``lasso_hypergrad.py``: sklearn ``make_regression(2n, p, n_informative=50, noise=5,
random_state=seed)``, columns scaled to norm √(2n), first n rows train, the rest validation.
The logistic model uses labels ``y01 = (y > median(y))`` in {0, 1} from the same targets.

- elastic net ``(1/2n)‖Xw − y‖² + λ₁‖w‖₁ + (λ₂/2)‖w‖²`` (``models.elastic_net``), θ = (log λ₁,
  log λ₂), λ₁ = λmax / lam_ratio with λmax = ‖Xᵀy‖∞ / n, λ₂ = l2_ratio · λ₁; validation loss
  ``½ mean((X_v w − y_v)²)``;
- sparse logistic ``(1/n) Σ log(1 + exp(−y_i x_iᵀw)) + λ‖w‖₁`` (``models.sparse_logreg``),
  θ = log λ, λ = λmax / log_lam_ratio with λmax = ‖Xᵀ(y01 − ½)‖∞ / n (the smallest λ for which
  w = 0); validation loss the mean log-loss.

For each model:

- ours: a fresh working-set solver (tol 1e-10, cold start from 0; construction timed too),
  ``bilevel.implicit_solve`` then ``.backward()`` of the validation loss; solve and
  hypergradient timed separately;
- rel_err: ‖dF/dθ − fd‖ / ‖fd‖ against central differences on each coordinate of θ,
  fd_i = (F(θ + h e_i) − F(θ − h e_i)) / 2h, with inner solves at tol 1e-12 (warm-started
  from w*) and a check that the support and signs of w are the same at θ ± h e_i as at θ (the
  derivative is only defined piecewise; a change would make the difference meaningless);
- peers, solve time only (same objective, no intercept), and max |w_peer − w|:
  enet: ``celer.ElasticNet`` / ``sklearn.linear_model.ElasticNet`` with alpha = λ₁ + λ₂,
  l1_ratio = λ₁ / (λ₁ + λ₂), tol 1e-8 (duality gap scaled by ‖y‖²/n);
  logistic: ``celer.LogisticRegression`` (objective Σ log-loss + (1/C)‖w‖₁, per its docstring)
  and sklearn ``LogisticRegression(l1_ratio=1, solver="liblinear")`` (C Σ log-loss + ‖w‖₁, the
  same minimiser), both with C = 1/(nλ) and tol 1e-8.

Times are medians over ``--repeat`` runs (ours after an untimed first run); torch runs on 2
threads (sklearn/celer use their own BLAS/OpenMP threading). The last line printed is one JSON
record; ``--json PATH`` writes the report's record (``common.write_results``).

Run:  .venv/bin/python benchmarks/sparse_models.py [--n 1000 --p 5000 --lam-ratio 30
      --log-lam-ratio 10 --repeat 3 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import numpy as np
import torch
from common import (  # benchmarks/common.py
    THREADS,
    fmt_ratio,
    fmt_s,
    median_time,
    regression_data,
    write_results,
)
from sklearn.linear_model import ElasticNet, LogisticRegression

import bilevel
from solvers import models

F64 = torch.float64


def mse(Xv, yv):
    return lambda w: 0.5 * ((Xv @ w - yv) ** 2).mean()


def logloss(Xv, yv01):
    ypm = 2 * yv01 - 1
    return lambda w: torch.nn.functional.softplus(-ypm * (Xv @ w)).mean()


def ours(make, theta0, loss, repeat):
    """Median (solve, hypergradient) times of a fresh solver + implicit_solve + backward, after
    an untimed first run (one-time costs, such as loading the compiled sub-solver)."""
    solve, hyper = [], []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        solver = make(1e-10)
        theta = theta0.clone().requires_grad_(True)
        w = bilevel.implicit_solve(solver, theta)
        t1 = time.perf_counter()
        loss(w).backward()
        t2 = time.perf_counter()
        if i:
            solve.append(t1 - t0)
            hyper.append(t2 - t1)
    best = (statistics.median(solve), statistics.median(hyper))
    return best, w.detach(), theta.grad.detach().clone(), solver


def central_differences(make, theta0, loss, w, h):
    """fd_i = (F(θ + h e_i) − F(θ − h e_i)) / 2h with tol-1e-12 solves warm-started from w;
    also whether any solve at θ ± h e_i has a different support or sign pattern than w."""
    fd = torch.zeros_like(theta0)
    pattern = torch.sign(w)
    changed = False
    for i in range(theta0.numel()):
        values = []
        for s in (1.0, -1.0):
            t = theta0.clone()
            t.view(-1)[i] += s * h
            w_s = make(1e-12).run(t, w)
            changed |= not torch.equal(torch.sign(w_s), pattern)
            values.append(float(loss(w_s)))
        fd.view(-1)[i] = (values[0] - values[1]) / (2 * h)
    return fd, changed


def _fmt(v) -> str:
    return "[" + ", ".join(f"{x:.10e}" for x in v.view(-1).tolist()) + "]"


def run_model(make, theta0, loss, h, repeat):
    (solve_s, hyper_s), w, grad, solver = ours(make, theta0, loss, repeat)
    fd, changed = central_differences(make, theta0, loss, w, h)
    rel_err = float((grad - fd).norm() / fd.norm())
    support = int((w != 0).sum())
    print(f"ours    solve {solve_s:.3f} s + hypergrad {hyper_s:.3f} s = "
          f"{solve_s + hyper_s:.3f} s   support {support}   working sets "
          f"{solver.n_working_sets}   sub-iterations {solver.info.iterations}")
    print(f"        dF/dθ {_fmt(grad)}")
    print(f"        fd    {_fmt(fd)}   (central, h={h:g}, inner tol 1e-12; support/sign change "
          f"at θ±h: {'YES' if changed else 'no'})")
    print(f"        rel_err {rel_err:.1e}")
    return {"ours_s": solve_s + hyper_s, "solve_s": solve_s, "hypergrad_s": hyper_s,
            "rel_err": rel_err, "support_size": support, "fd_h": h,
            "fd_support_changed": changed, "hypergrad": grad.view(-1).tolist(),
            "fd": fd.view(-1).tolist()}, w


def peer(rec, label, fit, w, repeat):
    """Median solve time of ``fit()``, stored in ``rec`` as ``<label>_s``, with the largest
    |w_peer − w| (``<label>_dw``) and the number of warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds, est = median_time(fit, repeat)
    note = f"   ({len(caught)} warning(s): {caught[0].message})" if caught else ""
    gap = np.abs(np.ravel(est.coef_) - w.numpy()).max()
    print(f"{label:<8}solve {seconds:.3f} s   max|w_{label.strip()} - w| {gap:.1e}{note}")
    rec.update({f"{label}_s": seconds, f"{label}_dw": float(gap),
                f"{label}_warnings": len(caught)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam-ratio", type=float, default=30.0, help="enet: λ₁ = λmax / this")
    ap.add_argument("--l2-ratio", type=float, default=1.0, help="enet: λ₂ = this · λ₁")
    ap.add_argument("--log-lam-ratio", type=float, default=10.0,
                    help="logistic: λ = λmax_log / this")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fd-h", type=float, default=1e-5, help="central-difference step on θ")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)

    Xn, yn, Xvn, yvn = regression_data(args.n, args.p, args.seed)
    X, y, Xv, yv = (torch.from_numpy(np.ascontiguousarray(a)) for a in (Xn, yn, Xvn, yvn))
    med = np.median(np.concatenate([yn, yvn]))
    y01n, yv01n = (yn > med).astype(np.float64), (yvn > med).astype(np.float64)
    y01, yv01 = torch.from_numpy(y01n), torch.from_numpy(yv01n)
    n = args.n
    record = {}

    # -- elastic net -----------------------------------------------------------------------
    lam1 = float((X.T @ y).abs().max()) / n / args.lam_ratio
    lam2 = args.l2_ratio * lam1
    print(f"Elastic net n={n} p={args.p} seed={args.seed} lambda1=lmax/{args.lam_ratio:g}="
          f"{lam1:.4g} lambda2={lam2:.4g}  median of {args.repeat}, torch threads={THREADS}")
    theta = torch.tensor([math.log(lam1), math.log(lam2)], dtype=F64)
    rec, w = run_model(lambda tol: models.elastic_net(X, y, tol=tol), theta,
                       mse(Xv, yv), args.fd_h, args.repeat)
    alpha, l1_ratio = lam1 + lam2, lam1 / (lam1 + lam2)
    peer(rec, "sklearn", lambda: ElasticNet(
        alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-8, max_iter=100_000
    ).fit(Xn, yn), w, args.repeat)
    try:
        import celer
    except ImportError:
        print("celer   not installed")
        rec["celer_s"] = None
    else:
        peer(rec, "celer", lambda: celer.ElasticNet(
            alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-8).fit(Xn, yn),
            w, args.repeat)
    rec.update(lam1=lam1, lam2=lam2)
    record["enet"] = rec

    # -- sparse logistic regression ----------------------------------------------------------
    lam = float((X.T @ (y01 - 0.5)).abs().max()) / n / args.log_lam_ratio
    C = 1.0 / (n * lam)
    print(f"Sparse logistic n={n} p={args.p} seed={args.seed} lambda=lmax_log/"
          f"{args.log_lam_ratio:g}={lam:.4g} (C=1/(n lambda)={C:.4g})  median of {args.repeat}")
    theta = torch.tensor(math.log(lam), dtype=F64)
    rec, w = run_model(lambda tol: models.sparse_logreg(X, y01, tol=tol), theta,
                       logloss(Xv, yv01), args.fd_h, args.repeat)
    peer(rec, "sklearn", lambda: LogisticRegression(
        l1_ratio=1.0, solver="liblinear", C=C, fit_intercept=False, tol=1e-8, max_iter=100_000
    ).fit(Xn, y01n), w, args.repeat)
    try:
        import celer
    except ImportError:
        rec["celer_s"] = None
    else:
        peer(rec, "celer", lambda: celer.LogisticRegression(
            C=C, fit_intercept=False, tol=1e-8).fit(Xn, y01n), w, args.repeat)
    rec["lam"] = lam
    record["logreg"] = rec

    record.update(n=n, p=args.p, seed=args.seed, lam_ratio=args.lam_ratio,
                  l2_ratio=args.l2_ratio, log_lam_ratio=args.log_lam_ratio, threads=THREADS,
                  repeat=args.repeat, statistic="median")
    print(json.dumps(record))
    write_results(args.json, "sparse_models", [table(record, args)], notes=notes(record, args),
                  data=record)


def table(record: dict, args: argparse.Namespace) -> dict:
    """The report's table: one row per model."""
    rows = []
    for key, label in (("enet", f"elastic net, λ₁ = λmax/{args.lam_ratio:g}, λ₂ = "
                                f"{args.l2_ratio:g}·λ₁"),
                       ("logreg", f"sparse logistic, λ = λmax/{args.log_lam_ratio:g}")):
        r = record[key]
        sk = fmt_s(r["sklearn_s"]) + (" (liblinear)" if key == "logreg" else "")
        rows.append([label, f"{fmt_s(r['solve_s'])} + {fmt_s(r['hypergrad_s'])} = "
                            f"{fmt_s(r['ours_s'])}", fmt_s(r.get("celer_s")), sk,
                     fmt_ratio(r["ours_s"], r.get("celer_s")), fmt_ratio(r["ours_s"],
                                                                      r["sklearn_s"]),
                     f"{r['rel_err']:.1e}" + (" (support changed at θ±h)"
                                              if r["fd_support_changed"] else ""),
                     str(r["support_size"])])
    return {"title": f"Elastic net and sparse logistic regression, n={args.n}, p={args.p} "
                     "(medians)",
            "columns": ["model", "ours: solve + hypergradient", "celer (solve)",
                        "sklearn (solve)", "ours / celer", "ours / sklearn",
                        "hypergradient rel. error vs central differences", "support"],
            "rows": rows}


def notes(record: dict, args: argparse.Namespace) -> list[str]:
    out = []
    for key, label in (("enet", "elastic net"), ("logreg", "sparse logistic")):
        r = record[key]
        gaps = [f"{peer} {r[peer + '_dw']:.0e}" for peer in ("celer", "sklearn")
                if r.get(peer + "_dw") is not None]
        warned = [peer for peer in ("celer", "sklearn") if r.get(peer + "_warnings")]
        out.append(f"{label}: max |w_peer − w| " + ", ".join(gaps)
                   + (f"; {' and '.join(warned)} warned (e.g. not converged)" if warned else "")
                   + ".")
    return out


if __name__ == "__main__":
    main()
