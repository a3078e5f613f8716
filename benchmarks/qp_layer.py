"""Differentiable QP layers: forward + backward time of a batch of QPs, ours beside the peers.

Problems (feasible by construction, strictly convex): ``Q = MᵀM + εI`` with ``M`` of i.i.d.
``N(0, 1/n)`` entries and ``ε = --eps`` (1e-3), ``q ~ N(0, I)``, ``G ~ N(0, 1)`` (``m`` rows),
``h = G z₀ + U(0, 1)`` with ``z₀ ~ N(0, I)``; with ``--p`` equalities, ``b = A z₀``. Every item has
its own ``Q, q, G, h``. Loss ``Σ z*``, gradients w.r.t. ``Q, q, G, h`` (and ``A, b``).

Methods (``--methods``):

- ``native``: ``bilevel.layers.QPLayer("native")`` — our batched solver, differentiated by the
  engine (``bilevel.implicit_solve``) as a user calls it;
- ``native-hint``: the same forward, and the backward the engine gets from the solver's closed-form
  adjoint hint ``NativeQP.solve_adjoint`` (``u`` from the Cholesky factors of the dual reduction,
  then one VJP of the KKT mapping ``H`` w.r.t. θ) — what ``native`` costs once the engine calls
  that hint instead of materialising ``∂yH`` (see the module docstring of
  ``solvers/qp/dual.py``);
- ``moreau``: cvxpylayers 1.2 with the Moreau backend (``quad_form`` with a PSD parameter);
- ``diffcp``: cvxpylayers with diffcp/SCS at ``eps_abs = eps_rel = 1e-9`` (``½‖Lz‖²``, ``L`` the
  Cholesky factor of ``Q``, taken in torch so that ``∂/∂Q`` flows);
- ``qpth``: ``qpth.qp.QPFunction`` (its default interior point, ``eps=1e-12``).

Times are medians of ``--repeat`` forward + backward calls after one untimed warm-up call (layer
construction excluded); torch runs on ``--threads`` threads (default ``THREADS``). ``max_dz`` is
``max |z − z_first|`` against the first method listed. Ratios are within one run only. The
last line printed is one JSON record; ``--json PATH`` writes the report's record
(``common.write_results``: one table row per batch size and dtype).

Run:  flock /tmp/bilevel-bench.lock .venv/bin/python benchmarks/qp_layer.py \\
          [--batch 1 128 1024 --dtype float64 float32 --methods native-hint moreau ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from common import THREADS, fmt_ratio, write_results  # benchmarks/common.py

from solvers.qp import NativeQP, kkt_mapping
from solvers.qp.kkt import as_params

METHODS = ("native", "native-hint", "moreau", "diffcp", "qpth")
Grads = tuple[torch.Tensor, ...]


def problem(B: int, n: int, m: int, p: int, eps: float, dtype: torch.dtype, seed: int
            ) -> tuple[torch.Tensor, ...]:
    """``(Q, q, G, h, A, b)`` of the module docstring (``A, b`` with ``p`` rows)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    M = torch.randn(B, n, n, generator=g, dtype=f64) / math.sqrt(n)
    Q = M.mT @ M + eps * torch.eye(n, dtype=f64)
    q = torch.randn(B, n, generator=g, dtype=f64)
    G = torch.randn(B, m, n, generator=g, dtype=f64)
    A = torch.randn(B, p, n, generator=g, dtype=f64)
    z0 = torch.randn(B, n, generator=g, dtype=f64)
    h = (G @ z0[..., None])[..., 0] + torch.rand(B, m, generator=g, dtype=f64)
    b = (A @ z0[..., None])[..., 0]
    return tuple(t.to(dtype) for t in (Q, q, G, h, A, b))


def run_native(theta: tuple[torch.Tensor, ...], tol: float) -> Callable[[], tuple]:
    from bilevel.layers import QPLayer

    layer = QPLayer("native", tol=tol)
    p = theta[4].shape[-2]

    def call() -> tuple:
        leaves = [t.clone().requires_grad_(True) for t in theta]
        z = layer(*leaves[:4]) if p == 0 else layer(*leaves)
        z.sum().backward()
        return z.detach(), tuple(t.grad for t in leaves[:4 if p == 0 else 6])

    return call


def run_native_hint(theta: tuple[torch.Tensor, ...], tol: float) -> Callable[[], tuple]:
    solver = NativeQP(tol=tol)
    n = theta[1].shape[-1]

    def call() -> tuple:
        y = solver.run(theta)
        v = torch.zeros_like(y)
        v[..., :n] = 1.0  # ∂(Σz)/∂y
        u = solver.solve_adjoint(y, theta, v)
        if u is None:
            raise RuntimeError("the adjoint hint did not apply (Q singular or badly "
                               "conditioned, or dependent active constraints)")
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in as_params(*theta)]
            H = kkt_mapping(y, tuple(leaves))
            grads = torch.autograd.grad(H, leaves, u, allow_unused=True)
        return y[..., :n], tuple(g for g in grads if g is not None)

    return call


def run_moreau(theta: tuple[torch.Tensor, ...]) -> Callable[[], tuple]:
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    Q, q, G, h, A, b = theta
    n, m, p = q.shape[-1], h.shape[-1], b.shape[-1]
    z = cp.Variable(n)
    Qp, qp, Gp, hp = (cp.Parameter((n, n), PSD=True), cp.Parameter(n), cp.Parameter((m, n)),
                      cp.Parameter(m))
    params, cons = [Qp, qp, Gp, hp], [Gp @ z <= hp]
    if p:
        Ap, bp = cp.Parameter((p, n)), cp.Parameter(p)
        params += [Ap, bp]
        cons.append(Ap @ z == bp)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, Qp) + qp @ z), cons)
    layer = CvxpyLayer(prob, params, [z], solver="MOREAU")
    k = 6 if p else 4

    def call() -> tuple:
        leaves = [t.clone().requires_grad_(True) for t in theta[:k]]
        (zs,) = layer(*leaves)
        zs.sum().backward()
        return zs.detach(), tuple(t.grad for t in leaves)

    return call


def run_diffcp(theta: tuple[torch.Tensor, ...]) -> Callable[[], tuple]:
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    Q, q, G, h, A, b = theta
    n, m, p = q.shape[-1], h.shape[-1], b.shape[-1]
    z = cp.Variable(n)
    Lp, qp, Gp, hp = (cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter((m, n)),
                      cp.Parameter(m))
    params, cons = [Lp, qp, Gp, hp], [Gp @ z <= hp]
    if p:
        Ap, bp = cp.Parameter((p, n)), cp.Parameter(p)
        params += [Ap, bp]
        cons.append(Ap @ z == bp)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lp @ z) + qp @ z), cons)
    layer = CvxpyLayer(prob, params, [z])
    k = 6 if p else 4
    args = {"eps_abs": 1e-9, "eps_rel": 1e-9}

    def call() -> tuple:
        leaves = [t.clone().requires_grad_(True) for t in theta[:k]]
        L = torch.linalg.cholesky(leaves[0]).mT  # LᵀL = Q
        (zs,) = layer(L, *leaves[1:], solver_args=args)
        zs.sum().backward()
        return zs.detach(), tuple(t.grad for t in leaves)

    return call


def run_qpth(theta: tuple[torch.Tensor, ...]) -> Callable[[], tuple]:
    from qpth.qp import QPFunction

    p = theta[4].shape[-2]
    k = 6 if p else 4

    def call() -> tuple:
        leaves = [t.clone().requires_grad_(True) for t in theta[:k]]
        extra = leaves[4:] if p else [torch.empty(0, dtype=theta[0].dtype)] * 2
        zs = QPFunction(verbose=-1)(*leaves[:4], *extra)
        zs.sum().backward()
        return zs.detach(), tuple(t.grad for t in leaves)

    return call


def make(method: str, theta: tuple[torch.Tensor, ...], tol: float) -> Callable[[], tuple]:
    """The forward + backward call of ``method`` on ``theta`` (layers built here, untimed)."""
    if method == "native":
        return run_native(theta, tol)
    if method == "native-hint":
        return run_native_hint(theta, tol)
    return {"moreau": run_moreau, "diffcp": run_diffcp, "qpth": run_qpth}[method](theta)


def measure(call: Callable[[], tuple], repeat: int) -> tuple[float, tuple]:
    """Median wall time of ``repeat`` calls after one warm-up call, and the last result."""
    out = call()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 128, 1024])
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--p", type=int, default=0)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="torch threads (1 avoids OpenMP spin-waits on a shared, loaded machine)")
    ap.add_argument("--engine-max-batch", type=int, default=128,
                    help="skip `native` above this batch (the engine's dense ∂yH costs "
                         "B·(n+p+m)·n² memory in its vmapped VJPs)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # Moreau's solver='auto' note, numpy copy-keyword noise

    print(f"QP layer: n={args.n} m={args.m} p={args.p} eps={args.eps:g} seed={args.seed}, "
          f"median of {args.repeat}, torch threads={args.threads}")
    records = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        for B in args.batch:
            theta = problem(B, args.n, args.m, args.p, args.eps, dtype, args.seed)
            row: dict[str, float | None] = {}
            z_ref = None
            for method in args.methods:
                if method == "native" and B > args.engine_max_batch:
                    print(f"  B={B:5d} {dtype_name:8s} {method:12s} skipped (--engine-max-batch)")
                    continue
                try:
                    seconds, (z, _) = measure(make(method, theta, tol), args.repeat)
                except Exception as err:  # a peer failing is a result, not a crash
                    print(f"  B={B:5d} {dtype_name:8s} {method:12s} failed: "
                          f"{type(err).__name__}: {str(err)[:120]}")
                    records.append({"batch": B, "dtype": dtype_name, "method": method,
                                    "failed": f"{type(err).__name__}: {str(err)[:200]}"})
                    continue
                z = z.double()
                z_ref = z if z_ref is None else z_ref
                dz = float((z - z_ref).abs().max())
                row[method] = seconds
                records.append({"batch": B, "dtype": dtype_name, "method": method,
                                "seconds": seconds, "max_dz": dz})
                print(f"  B={B:5d} {dtype_name:8s} {method:12s} {1e3 * seconds:10.1f} ms   "
                      f"max|z - z_first| {dz:.1e}")
            for ours in ("native", "native-hint"):
                if ours in row and "moreau" in row:
                    ratio = row[ours] / row["moreau"]
                    print(f"  B={B:5d} {dtype_name:8s} {ours}/moreau = {ratio:.3f}")
                    records.append({"batch": B, "dtype": dtype_name,
                                    "ratio": f"{ours}/moreau", "value": ratio})
    record = {"n": args.n, "m": args.m, "p": args.p, "eps": args.eps, "seed": args.seed,
              "repeat": args.repeat, "threads": args.threads, "statistic": "median",
              "results": records}
    print(json.dumps(record))
    write_results(args.json, "qp_layer", [table(records, args)], notes=notes(records, args),
                  data=record)


LABELS = {"native": "native", "native-hint": "native, closed-form adjoint",
          "moreau": "cvxpylayers + Moreau", "diffcp": "cvxpylayers + diffcp (eps 1e-9)",
          "qpth": "qpth"}


def table(records: list[dict], args: argparse.Namespace) -> dict:
    """One row per (B, dtype): median ms of every method (— where not run), ours over each
    peer (ours = ``native``, or ``native-hint`` where ``native`` was not run, marked ᵃ), and
    each method's max |z − z_first|. The columns do not depend on ``--methods``, so the
    report merges the tables of several runs."""
    times: dict[tuple[int, str], dict[str, float]] = {}
    dz: dict[tuple[int, str], list[str]] = {}
    for r in records:
        if "method" in r:
            key = (r["batch"], r["dtype"])
            times.setdefault(key, {})[r["method"]] = r.get("seconds", math.nan)
            if r.get("max_dz"):
                dz.setdefault(key, []).append(f"{r['method']} {r['max_dz']:.0e}")
    peers = ("moreau", "diffcp", "qpth")
    columns = ["B, dtype", *(f"{LABELS[m]} (ms)" for m in METHODS),
               *(f"ours / {LABELS[p].split(' (')[0]}" for p in peers), "max |z − z_first|"]
    rows = []
    for (B, dtype), t in times.items():
        ok = {m: v for m, v in t.items() if not math.isnan(v)}
        mine = ok.get("native", ok.get("native-hint"))
        mark = "" if "native" in ok or mine is None else "ᵃ"
        rows.append([f"{B}, {dtype}", *(_ms(t.get(m)) for m in METHODS),
                     *(fmt_ratio(mine, ok.get(p)) + (mark if p in ok else "") for p in peers),
                     ", ".join(dz.get((B, dtype), []))])
    return {"title": f"Batched QP layer: forward + backward, n={args.n}, m={args.m}"
                     + (f", p={args.p}" if args.p else "") + " (median ms; ᵃ: ours = "
                     "native with its closed-form adjoint)",
            "columns": columns, "rows": rows}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return "failed" if math.isnan(seconds) else f"{1e3 * seconds:.1f}"


def notes(records: list[dict], args: argparse.Namespace) -> list[str]:
    out = [f"B ∈ {{{', '.join(map(str, args.batch))}}}: median of {args.repeat} timed calls "
           f"after a warm-up, torch on {args.threads} thread(s); z_first: the first method "
           "measured in the row."]
    out += [f"B={r['batch']} {r['dtype']}: {r['method']} failed ({r['failed']})."
            for r in records if "failed" in r]
    if "native" in args.methods and max(args.batch) > args.engine_max_batch:
        out.append(f"`native` skipped above B={args.engine_max_batch} (--engine-max-batch); "
                   "`native-hint` is the same solver with its closed-form adjoint there.")
    for r in records:
        if r.get("ratio", "").startswith("native/") and r["batch"] == 128 \
                and r["dtype"] == "float64" and r["ratio"] == "native/moreau":
            met = r["value"] <= 0.5
            out.append(f"B=128 float64: native / Moreau = {r['value']:.2f}; target ≤ 0.5 "
                       f"(issue 4) {'met' if met else 'not met'}.")
    return out


if __name__ == "__main__":
    main()
