"""CUDA check of the engine, the inner solvers and the QP layer: the same problems on CPU and GPU.

1. Agreement (float64): working-set Lasso, ProxGrad Lasso, Smooth logistic and FixedPoint
   Anderson on diabetes-sized problems, and the native QP layer on a batch of 8 random QPs
   (``benchmarks/qp_layer.py``'s problems, n=100, m=50): each solved at θ on both devices, the
   hypergradient (QP: the gradients w.r.t. Q, q, G, h of ``Σ z*``) taken by the engine; the
   solutions and hypergradients must agree to 1e-8 (relative, max-norm), and every output must
   stay on its input's device.
2. Timing (medians of ``--repeat`` calls after a warm-up; ``torch.cuda.synchronize`` before
   each clock read): the working-set Lasso n=2000, p=20000 solve + hypergradient on each device,
   and the native QP layer forward + backward for a batch of ``--qp-batch`` (4096) QPs in
   float64 and float32 on each device (``--no-qp-cpu`` skips the slow CPU side).

Where no GPU is present it prints so and, with ``--json PATH``, writes a record saying so (the
report's GPU section then states it); ``--device cpu`` runs the same comparison CPU against CPU
(a dry run of this script on a machine without a GPU). Exits non-zero on any disagreement.

Run where a GPU is present:  python benchmarks/cuda_check.py --json outputs/bench/cuda_check.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from common import fmt_ratio, fmt_s, write_results  # benchmarks/common.py
from qp_layer import problem as qp_problem  # benchmarks/qp_layer.py
from sklearn.datasets import load_diabetes, make_regression

import bilevel
from bilevel.layers import QPLayer
from solvers import FixedPoint, ProxGrad, Smooth, models, prox

F64 = torch.float64
TOL = 1e-8


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


def run_solvers(device):
    out = {}
    for name, solver, theta, init, outer in cases(device):
        theta = theta.to(F64).to(device).requires_grad_(True)
        init = None if init is None else init.to(F64).to(device)
        y = bilevel.implicit_solve(solver, theta, init)
        outer(y).backward()
        assert y.device.type == device and theta.grad.device.type == device, name
        out[name] = (y.detach().cpu(), theta.grad.cpu())
    return out


def qp_call(device: str, batch: int, dtype: torch.dtype):
    """The forward + backward of the native QP layer on ``batch`` QPs, as a timed closure."""
    theta = [t.to(device) for t in qp_problem(batch, 100, 50, 0, 1e-3, dtype, 0)[:4]]
    layer = QPLayer("native", tol=1e-10 if dtype == F64 else 1e-4)

    def call():
        leaves = [t.clone().requires_grad_(True) for t in theta]
        z = layer(*leaves)
        z.sum().backward()
        assert z.device.type == device and leaves[0].grad.device.type == device
        return z.detach().cpu(), torch.cat([t.grad.detach().cpu().flatten() for t in leaves])

    return call


def timed(call, repeat: int, device: str) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lasso_call(device: str, X, y):
    Xt, yt = (torch.tensor(a[:2000], dtype=F64, device=device) for a in (X, y))
    Xv, yv = (torch.tensor(a[2000:], dtype=F64, device=device) for a in (X, y))
    lam = float((Xt.T @ yt).abs().max()) / 2000 / 30

    def call():
        theta = torch.tensor(math.log(lam), dtype=F64, device=device, requires_grad=True)
        w = bilevel.implicit_solve(models.lasso(Xt, yt, tol=1e-10), theta)
        (0.5 * ((Xv @ w - yv) ** 2).mean()).backward()
        return w

    return call


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-300))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--qp-batch", type=int, default=4096)
    ap.add_argument("--no-qp-cpu", action="store_true",
                    help="time the large QP batch on the GPU only")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        write_results(args.json, "cuda_check", [], notes=[
            "No GPU was available in this run (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}): nothing was measured. Run `python benchmarks/cuda_check.py "
            "--json outputs/bench/cuda_check.json` on a GPU machine and rerun the writer."],
            data={"gpu": None})
        return 0
    name = torch.cuda.get_device_name(0) if dev == "cuda" else f"{dev} (dry run)"
    print(f"device: {name}, torch {torch.__version__}")

    # 1. agreement
    cpu, other = run_solvers("cpu"), run_solvers(dev)
    failures, agree_rows, report = [], [], {"device": name}
    for case in cpu:
        (yc, gc), (yg, gg) = cpu[case], other[case]
        dy, dg = rel(yc, yg), rel(gc, gg)
        agree_rows.append([case, f"{dy:.1e}", f"{dg:.1e}"])
        report[case] = {"solution_rel_diff": dy, "hypergrad_rel_diff": dg}
        print(f"{case:24s} solution rel diff {dy:.1e}   hypergradient rel diff {dg:.1e}")
        if dy > TOL or dg > TOL:
            failures.append(case)
    (zc, gc), (zg, gg) = qp_call("cpu", 8, F64)(), qp_call(dev, 8, F64)()
    dz, dg = rel(zc, zg), rel(gc, gg)
    agree_rows.append(["native QP layer, B=8", f"{dz:.1e}", f"{dg:.1e}"])
    report["qp-native"] = {"solution_rel_diff": dz, "hypergrad_rel_diff": dg}
    print(f"{'qp-native (B=8)':24s} solution rel diff {dz:.1e}   gradient rel diff {dg:.1e}")
    if dz > TOL or dg > TOL:
        failures.append("qp-native")

    # 2. timing
    time_rows = []
    X, y = make_regression(4000, 20000, n_informative=100, noise=5, random_state=0)
    X = X * (math.sqrt(4000) / (X ** 2).sum(0) ** 0.5)
    t_cpu = timed(lasso_call("cpu", X, y), args.repeat, "cpu")
    t_dev = timed(lasso_call(dev, X, y), args.repeat, dev)
    report["lasso_2000x20000"] = {"cpu_s": t_cpu, "device_s": t_dev}
    time_rows.append(["working-set Lasso n=2000, p=20000: solve + hypergradient, float64",
                      fmt_s(t_cpu), fmt_s(t_dev), fmt_ratio(t_dev, t_cpu)])
    print(f"Lasso 2000x20000 solve+hypergradient: cpu {t_cpu:.3f} s, {dev} {t_dev:.3f} s")
    for dtype in (F64, torch.float32):
        label = f"native QP layer B={args.qp_batch}, n=100, m=50: forward + backward, " \
                f"{str(dtype)[6:]}"
        cells = []
        for device in ("cpu", dev):
            if device == "cpu" and args.no_qp_cpu:
                cells.append(None)
                continue
            try:
                cells.append(timed(qp_call(device, args.qp_batch, dtype), args.repeat, device))
            except Exception as err:  # noqa: BLE001 — e.g. out of memory: a result, go on
                print(f"{label} on {device} failed: {type(err).__name__}: {err}")
                cells.append(math.nan)
                if device == "cuda":
                    torch.cuda.empty_cache()
        report[f"qp_{args.qp_batch}_{str(dtype)[6:]}"] = {"cpu_s": cells[0], "device_s": cells[1]}
        time_rows.append([label, fmt_s(cells[0]), fmt_s(cells[1]), fmt_ratio(cells[1], cells[0])])
        print(f"{label}: cpu {cells[0]} s, {dev} {cells[1]} s")

    notes = [f"Device: {name}; torch {torch.__version__}; the CPU column is that machine's CPU "
             f"({torch.get_num_threads()} torch threads), not the 2-core machine of the other "
             "sections.",
             "Every solution and hypergradient agrees to ≤ 1e-8 and stays on its device."
             if not failures else f"CPU/GPU disagreement (> 1e-8): {', '.join(failures)}."]
    write_results(args.json, "cuda_check", [
        {"title": "CPU against GPU, float64 (relative max-norm differences)",
         "columns": ["case", "solution", "hypergradient"], "rows": agree_rows},
        {"title": f"Timing (median of {args.repeat} after a warm-up)",
         "columns": ["what", "CPU", "GPU", "GPU / CPU"], "rows": time_rows},
    ], notes=notes, data=report)
    if failures:
        print(f"CPU/GPU disagreement: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
