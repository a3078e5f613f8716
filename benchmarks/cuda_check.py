"""CUDA check of the engine and the inner solvers: the same problems on CPU and on the GPU.

For each solver (working-set Lasso, ProxGrad Lasso, Smooth logistic, FixedPoint Anderson) it
solves at θ on both devices in float64, takes the hypergradient of a validation loss, and checks
that solutions and hypergradients agree to 1e-8 (relative), that every output stays on the input
device, and times a larger working-set Lasso (n=2000, p=20000) on the GPU beside the CPU.
Exits non-zero on any disagreement. Run where a GPU is present:

    python benchmarks/cuda_check.py
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch
from sklearn.datasets import load_diabetes, make_regression

import bilevel
from solvers import FixedPoint, ProxGrad, Smooth, models, prox

F64 = torch.float64


def diabetes(device):
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = y - y.mean()
    t = lambda a: torch.tensor(a, dtype=F64, device=device)  # noqa: E731
    return t(X[:300]), t(y[:300]), t(X[300:]), t(y[300:])


def cases(device):
    X, y, Xv, yv = diabetes(device)
    mse = lambda w: 0.5 * ((Xv @ w - yv) ** 2).mean()  # noqa: E731
    lam = math.log(float((X.T @ y).abs().max()) / 300 / 7)
    yield "workingset-lasso", models.lasso(X, y, tol=1e-12), torch.tensor(lam), None, mse
    yield ("proxgrad-lasso", ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                                      lambda v, t, s: prox.l1(v, s * t.exp()), tol=1e-12,
                                      maxiter=100_000),
           torch.tensor(lam), torch.zeros(10), mse)
    sign, sign_v = torch.sign(y), torch.sign(yv)
    yield ("smooth-logreg", Smooth(lambda w, t: torch.nn.functional.softplus(-sign * (X @ w)).mean()
                                   + 0.5 * (t.exp() * w * w).sum(), tol=1e-12),
           torch.linspace(-4, -1, 10), torch.zeros(10),
           lambda w: torch.nn.functional.softplus(-sign_v * (Xv @ w)).mean())
    W = torch.randn(20, 20, generator=torch.Generator().manual_seed(0), dtype=F64)
    W = (0.8 * (W + W.T) / torch.linalg.matrix_norm(W + W.T, 2)).to(device)
    U = torch.randn(20, 4, generator=torch.Generator().manual_seed(1), dtype=F64).to(device)
    yield ("fixed_point-anderson", FixedPoint(lambda z, t: torch.tanh(W @ z + U @ t), tol=1e-12),
           torch.tensor([0.3, -0.2, 0.5, 0.1]), torch.zeros(20), lambda z: (z ** 2).sum())


def run(device):
    out = {}
    for name, solver, theta, init, outer in cases(device):
        theta = theta.to(F64).to(device).requires_grad_(True)
        init = None if init is None else init.to(F64).to(device)
        y = bilevel.implicit_solve(solver, theta, init)
        outer(y).backward()
        assert y.device.type == device and theta.grad.device.type == device, name
        out[name] = (y.detach().cpu(), theta.grad.cpu())
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    cpu, gpu = run("cpu"), run("cuda")
    failures, report = [], {}
    for name in cpu:
        (yc, gc), (yg, gg) = cpu[name], gpu[name]
        dy = float((yc - yg).abs().max() / yc.abs().max().clamp(min=1e-300))
        dg = float((gc - gg).abs().max() / gc.abs().max().clamp(min=1e-300))
        report[name] = {"solution_rel_diff": dy, "hypergrad_rel_diff": dg}
        print(f"{name:24s} solution rel diff {dy:.1e}   hypergradient rel diff {dg:.1e}")
        if dy > 1e-8 or dg > 1e-8:
            failures.append(name)
    X, y = make_regression(4000, 20000, n_informative=100, noise=5, random_state=0)
    X = X * (math.sqrt(4000) / (X ** 2).sum(0) ** 0.5)
    for device in ("cpu", "cuda"):
        Xt, yt = (torch.tensor(a[:2000], dtype=F64, device=device) for a in (X, y))
        Xv, yv = (torch.tensor(a[2000:], dtype=F64, device=device) for a in (X, y))
        lam = float((Xt.T @ yt).abs().max()) / 2000 / 30
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            theta = torch.tensor(math.log(lam), dtype=F64, device=device, requires_grad=True)
            w = bilevel.implicit_solve(models.lasso(Xt, yt, tol=1e-10), theta)
            (0.5 * ((Xv @ w - yv) ** 2).mean()).backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        report[f"lasso_2000x20000_{device}_s"] = min(times)
        print(f"Lasso 2000x20000 solve+hypergradient on {device}: {min(times):.3f} s")
    report["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(report))
    if failures:
        print(f"CPU/GPU disagreement: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
