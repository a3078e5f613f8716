"""The catalogue of bad inputs: one table, one row per way of getting it wrong, each with the
exception or warning class the framework documents for it and a fragment of the message that
names the cause (what to fix). A row whose call returns normally states, besides the warning,
what comes back (per-item status, NaN items, the residual reached).

Faults of a whole run (SIGKILL and resume, a corrupt or partial checkpoint, NaN divergence mid-
run) are tested where they live; ``COVERED_ELSEWHERE`` lists them and the last test checks
that every test it names still exists.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import re
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bilevel
from solvers import QP, FixedPoint, ProxGrad, Smooth, models, prox
from solvers.base import ConvergenceWarning, DivergenceError
from solvers.qp.native import (
    DUAL_INFEASIBLE,
    MAX_ITERATIONS,
    PRIMAL_INFEASIBLE,
    SOLVED,
    QPStatusWarning,
)
from tasks import data
from tasks.data import DataFormatError, LabelError

F64, F32 = torch.float64, torch.float32
CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Row:
    """``run(tmp_path)`` must raise ``raises`` (or warn ``warns``) with a message matching
    ``match`` (a regex searched in it); ``check`` then inspects what ``run`` returned."""

    case: str
    run: Callable[[Path], Any]
    raises: type[BaseException] | None = None
    warns: type[Warning] | None = None
    match: str = ""
    check: Callable[[Any], None] | None = None
    needs: str | None = None  # "cuda": skipped without a GPU; "no-cuda": skipped with one


# -- small problems ------------------------------------------------------------------------------

def _regression(dtype: torch.dtype = F64, nan: bool = False, duplicate: bool = False):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=gen, dtype=F64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.1 * torch.randn(12, generator=gen,
                                                                            dtype=F64)
    if nan:
        X[3, 1] = math.nan
    if duplicate:
        X = torch.cat([X, X[:, :1]], 1)
    return X.to(dtype), y.to(dtype)


def _lasso_proxgrad(dtype: torch.dtype = F64, nan: bool = False, threshold=None, **kw):
    X, y = _regression(dtype, nan)

    def smooth(w, t):
        return 0.5 * ((X @ w - y) ** 2).mean()

    def penalty(v, t, step):
        return prox.l1(v, step * (t.exp() if threshold is None else threshold))

    return ProxGrad(smooth, penalty, **kw)


def _ridge_logistic(dtype: torch.dtype = F64, nan: bool = False, **kw) -> Smooth:
    X, y = _regression(dtype, nan)
    labels = torch.where(y > 0, 1.0, -1.0).to(dtype)

    def objective(w, t):
        return (torch.nn.functional.softplus(-labels * (X @ w)).mean()
                + 0.5 * (t.exp() * w * w).sum())

    return Smooth(objective, **kw)


def _contraction(scale: float = 0.5, dtype: torch.dtype = F64, **kw) -> FixedPoint:
    W = scale * torch.eye(3, dtype=F64).roll(1, 0).to(dtype)
    return FixedPoint(lambda z, t: torch.tanh(z @ W.T + t), **kw)


def _theta(value: float = -2.0, dtype: torch.dtype = F64, **kw) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, **kw)


def _zeros(n: int = 3, dtype: torch.dtype = F64, **kw) -> torch.Tensor:
    return torch.zeros(n, dtype=dtype, **kw)


def _qp(batch: bool = False, infeasible: bool = False, **overrides) -> tuple[torch.Tensor, ...]:
    """``min ½‖z‖² + qᵀz`` s.t. ``−1.5 ≤ z_0 ≤ 1.5`` (inactive at ``z* = −q``); ``infeasible``
    makes the second batch item ask ``z_0 ≤ −1`` and ``z_0 ≥ 1``."""
    Q = torch.eye(3, dtype=F64)
    q = torch.tensor([0.5, -1.0, 0.25], dtype=F64)
    G = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=F64)
    h = torch.tensor([1.5, 1.5], dtype=F64)
    A, b = torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64)
    if batch:
        Q, q, G, A, b = Q.expand(2, 3, 3), q.expand(2, 3), G.expand(2, 2, 3), \
            A.expand(2, 0, 3), b.expand(2, 0)
        h = torch.stack([h, torch.tensor([-1.0, -1.0], dtype=F64) if infeasible else h])
    params = {"Q": Q, "q": q, "G": G, "h": h, "A": A, "b": b, **overrides}
    return tuple(params[k] for k in "Q q G h A b".split())


_CVXPY: dict[str, QP] = {}


def _cvxpy() -> QP:
    """One cvxpylayers front for the catalogue: its layer (n=3, m=2, p=0) is built once."""
    return _CVXPY.setdefault("qp", QP("cvxpylayers"))


# -- rows that return: what they must return -----------------------------------------------------

def _partly_failed_batch(adjoint: str) -> Callable[[Path], Any]:
    """A batch of two QPs, the second infeasible: the first keeps its derivative (for
    ``z* = −q``, ``∂(Σz*)/∂q = −1``) whatever the adjoint's linear solver."""
    def run(_: Path) -> tuple[QP, torch.Tensor, torch.Tensor]:
        solver = QP("native")
        Q, q, G, h, A, b = _qp(batch=True, infeasible=True)
        q = q.clone().requires_grad_(True)
        y = bilevel.implicit_solve(solver, (Q, q, G, h, A, b),
                                   adjoint=bilevel.ImplicitAdjoint(linear_solver=adjoint))
        y[0, :3].sum().backward()
        return solver, y, q.grad
    return run


def _check_partly_failed(out: tuple[QP, torch.Tensor, torch.Tensor]) -> None:
    solver, y, grad = out
    assert solver.status.tolist() == [SOLVED, PRIMAL_INFEASIBLE]
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[0]).all())
    torch.testing.assert_close(y[0, :3], -_qp()[1])
    torch.testing.assert_close(grad, torch.tensor([[-1.0] * 3, [0.0] * 3], dtype=F64))


def _check_unbounded(out: tuple[QP, torch.Tensor]) -> None:
    solver, y = out
    assert int(solver.status) == DUAL_INFEASIBLE and bool(torch.isnan(y).all())


def _unbounded_native(_: Path) -> tuple[QP, torch.Tensor]:
    solver = QP("native")
    Q = torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=F64))  # free descent along z_1
    return solver, solver.run(_qp(Q=Q, G=torch.zeros(0, 3, dtype=F64),
                                  h=torch.zeros(0, dtype=F64)))


def _not_converged(make: Callable[[], Any], theta: Any, init: torch.Tensor | None = None
                   ) -> Callable[[Path], Any]:
    """Run a solver capped below what it needs; returns ``(solver, y)``."""
    def run(_: Path) -> tuple[Any, torch.Tensor]:
        solver = make()
        return solver, solver.run(theta, init)
    return run


def _check_residual_reported(out: tuple[Any, torch.Tensor]) -> None:
    """Finite ``y``, and the warning's residual is the solver's own (``info``)."""
    solver, y = out
    assert bool(torch.isfinite(y).all())
    info = solver.info
    assert not info.converged and info.residual > info.tol
    assert f"{info.residual:.3e}" in _LAST_MESSAGE[0]


_LAST_MESSAGE: list[str] = [""]  # the message of the warning a row expected (set by the test)


def _lp_capped(_: Path) -> tuple[QP, torch.Tensor]:
    """An LP over a box (``Q = 0``: no dual reduction) with one interior-point iteration."""
    gen = torch.Generator().manual_seed(0)
    n = 4
    G = torch.cat([torch.eye(n, dtype=F64), -torch.eye(n, dtype=F64),
                   torch.randn(n, n, generator=gen, dtype=F64)])
    h = torch.cat([torch.ones(2 * n, dtype=F64), torch.rand(n, generator=gen, dtype=F64)])
    solver = QP("native", maxiter=1)
    y = solver.run((torch.zeros(n, n, dtype=F64), torch.randn(n, generator=gen, dtype=F64), G,
                    h, torch.zeros(0, n, dtype=F64), torch.zeros(0, dtype=F64)))
    return solver, y


def _check_max_iterations(out: tuple[QP, torch.Tensor]) -> None:
    solver, y = out
    assert int(solver.status) == MAX_ITERATIONS and bool(torch.isnan(y).all())


# -- the command line, in this process ----------------------------------------------------------

class CliExit(Exception):
    """What ``bilevel`` did: its exit status and standard error."""

    def __init__(self, code: int, stderr: str):
        super().__init__(f"exit status {code}\n{stderr}")
        self.code = code


def run_cli(run_dir: Path, *overrides: str) -> tuple[int, str]:
    """``bilevel hydra.run.dir=run_dir progress=false *overrides`` through the app's own entry
    point (Hydra's argument parsing, composition, the typed schema and the job), without a
    new interpreter; the process-wide state the app touches is restored."""
    import bilevel.cli as cli

    argv, sigterm = sys.argv, signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.argv = ["bilevel", f"hydra.run.dir={run_dir}", "progress=false", *overrides]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            cli.app()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, sigterm)
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, stderr.getvalue()


def cli_row(case: str, *overrides: str, names: str, needs: str | None = None) -> Row:
    """A configuration ``bilevel`` must refuse: a non-zero exit and ``names`` in stderr."""
    def run(tmp_path: Path) -> None:
        raise CliExit(*run_cli(tmp_path, *overrides))
    return Row(case, run, CliExit, match=rf"^exit status [1-9](?s:.*){re.escape(names)}",
               needs=needs)


# -- data files ------------------------------------------------------------------------------------

def data_row(case: str, content: bytes | Callable[[Path], None] | None, name: str,
             raises: type[BaseException], names: str, **options: Any) -> Row:
    """``tasks.data.load`` of a file ``name`` holding ``content`` (None: no file) must raise
    ``raises`` naming the path and ``names``."""
    def run(tmp_path: Path) -> None:
        path = tmp_path / name
        if callable(content):
            content(path)
        elif content is not None:
            path.write_bytes(content)
        data.load(str(path), **options)
    return Row(case, run, raises, match=rf"(?s)(?=.*{re.escape(name)})(?=.*{re.escape(names)})")


def _truncated_npz(path: Path) -> None:
    np.savez(path, X=np.ones((4, 2)), y=np.arange(4.0))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _npz_without_y(path: Path) -> None:
    np.savez(path, X=np.ones((4, 2)))


_GARBAGE = bytes(range(256)) * 2


# -- the catalogue ---------------------------------------------------------------------------------

CATALOGUE = [
    # NaN / Inf
    Row("nan-theta", lambda _: bilevel.implicit_solve(_lasso_proxgrad(), _theta(math.nan),
                                                      _zeros()),
        ValueError, match="theta contains NaN or Inf"),
    Row("inf-init", lambda _: bilevel.implicit_solve(
        _lasso_proxgrad(), _theta(), torch.tensor([0.0, math.inf, 0.0], dtype=F64)),
        ValueError, match="init contains NaN or Inf"),
    Row("nan-data-proxgrad", lambda _: bilevel.implicit_solve(
        _lasso_proxgrad(nan=True), _theta(), _zeros()),
        ValueError, match=r"smooth\(init, theta\) or its gradient is NaN/Inf"),
    Row("nan-data-workingset", lambda _: bilevel.implicit_solve(
        models.lasso(*_regression(nan=True)), _theta()),
        ValueError, match="non-finite gradient: check X, y and theta"),
    Row("nan-data-smooth", lambda _: bilevel.implicit_solve(
        _ridge_logistic(nan=True), _zeros(), _zeros()),
        ValueError, match=r"objective\(init, theta\) or its gradient is NaN/Inf"),
    Row("nan-theta-fixed-point", lambda _: _contraction().run(
        torch.tensor([0.0, math.nan, 0.0], dtype=F64), _zeros()),
        ValueError, match="theta contains NaN or Inf"),
    Row("nan-qp-parameter", lambda _: QP("native").run(
        _qp(q=torch.tensor([0.0, math.nan, 1.0], dtype=F64))),
        ValueError, match="q contains NaN or Inf"),
    Row("nan-prox-parameter", lambda _: prox.l2_ball(torch.full((3,), 5.0, dtype=F64),
                                                     math.nan),
        ValueError, match="l2_ball: `radius` contains NaN"),
    Row("nan-box-bound", lambda _: prox.box(torch.ones(3, dtype=F64), math.nan, 1.0),
        ValueError, match="box: `lower` contains NaN"),
    Row("inf-simplex-radius", lambda _: prox.simplex(torch.ones(3, dtype=F64), math.inf),
        ValueError, match="simplex: `radius` must be finite"),
    # wrong shapes
    Row("init-shape-proxgrad", lambda _: bilevel.implicit_solve(_lasso_proxgrad(), _theta(),
                                                                _zeros(4)),
        ValueError, match=r"smooth\(init, theta\) failed for init of shape \(4,\)"),
    Row("init-shape-workingset", lambda _: bilevel.implicit_solve(
        models.lasso(*_regression()), _theta(), _zeros(4)),
        ValueError, match=r"init has shape \(4,\), expected \(3,\)"),
    Row("theta-shape-workingset", lambda _: bilevel.implicit_solve(
        models.lasso(*_regression()), torch.zeros(5, dtype=F64)),
        ValueError, match="penalty parameter l1 has 5 values: give one, or one per feature"),
    Row("rows-of-X-and-y", lambda _: models.lasso(_regression()[0], _regression()[1][:5]),
        ValueError, match=r"y must be a Tensor of shape \(12,\)"),
    Row("prox-parameter-shape", lambda _: ProxGrad(
        lambda w, t: 0.5 * (w * w).sum(), lambda v, t, s: prox.l1(v, s * torch.ones(4))
    ).run(_theta(), _zeros()),
        ValueError, match=r"prox\(v, theta, step\) failed for v of shape \(3,\)"),
    Row("qp-shapes", lambda _: QP("native").run(_qp(Q=torch.eye(4, dtype=F64))),
        ValueError, match=r"Q has trailing shape \(4, 4\), expected \(3, 3\)"),
    Row("fixed-point-map-shape", lambda _: bilevel.implicit_solve(
        FixedPoint(lambda z, t: z[:2]), torch.ones(3, dtype=F64), _zeros()),
        ValueError, match=r"T\(y, theta\) must return a tensor shaped like y \(3,\)"),
    Row("group-ids-shape", lambda _: prox.group_l1(torch.ones(3, dtype=F64), 0.5,
                                                   torch.tensor([0, 1])),
        ValueError, match="`groups` must have shape"),
    Row("integer-theta", lambda _: bilevel.implicit_solve(_lasso_proxgrad(), torch.tensor(1),
                                                          _zeros()),
        TypeError, match="theta must be a floating-point Tensor"),
    # dtype mixes
    Row("init-dtype", lambda _: bilevel.implicit_solve(_lasso_proxgrad(), _theta(),
                                                       _zeros(dtype=F32)),
        ValueError, match="init is torch.float32 on cpu but theta is torch.float64"),
    Row("theta-tuple-dtypes", lambda _: bilevel.implicit_solve(
        QP("native"), tuple(t.float() if i == 1 else t for i, t in enumerate(_qp()))),
        ValueError, match=r"theta\[1\] is torch.float32 on cpu but theta\[0\] is torch.float64"),
    Row("qp-dtypes", lambda _: QP("native").run(_qp(Q=torch.eye(3, dtype=F32))),
        ValueError, match="Q is torch.float32 on cpu but q is torch.float64"),
    Row("data-dtype-proxgrad", lambda _: bilevel.implicit_solve(
        _lasso_proxgrad(), _theta(dtype=F32), _zeros(dtype=F32)),
        ValueError, match=r"smooth\(init, theta\) failed .*same dtype"),
    Row("data-dtype-smooth", lambda _: bilevel.implicit_solve(
        _ridge_logistic(), _zeros(dtype=F32), _zeros(dtype=F32)),
        ValueError, match=r"objective\(init, theta\) failed .*same dtype"),
    Row("map-dtype-fixed-point", lambda _: bilevel.implicit_solve(
        _contraction(dtype=F32), torch.ones(3, dtype=F64), _zeros()),
        ValueError, match=r"T\(init, theta\) failed for init of shape \(3,\), torch.float64"),
    # device mixes ("meta": a device without data, available everywhere)
    Row("meta-theta", lambda _: bilevel.implicit_solve(
        models.lasso(*_regression()), _theta(device="meta")),
        ValueError, match="theta is on the meta device"),
    Row("meta-init", lambda _: bilevel.implicit_solve(_lasso_proxgrad(), _theta(),
                                                      _zeros(device="meta")),
        ValueError, match="init is torch.float64 on meta but theta is torch.float64 on cpu"),
    Row("meta-qp-parameter", lambda _: QP("native").run(_qp(h=torch.ones(2, device="meta",
                                                                         dtype=F64))),
        ValueError, match="h is torch.float64 on meta but q is torch.float64 on cpu"),
    Row("meta-prox-parameter", lambda _: _lasso_proxgrad(
        threshold=torch.ones(3, dtype=F64, device="meta")).run(_theta(), _zeros()),
        ValueError, match=r"prox\(v, theta, step\) failed .*meta"),
    Row("cuda-theta-cpu-init", lambda _: bilevel.implicit_solve(
        _lasso_proxgrad(), _theta(device="cuda"), _zeros()),
        ValueError, match="init is torch.float64 on cpu but theta is torch.float64 on cuda",
        needs="cuda"),
    Row("cuda-qp-parameter", lambda _: QP("native").run(_qp(q=torch.ones(3, dtype=F64,
                                                                         device="cuda"))),
        ValueError, match="on cpu but q is torch.float64 on cuda", needs="cuda"),
    # QPs: infeasible, unbounded, not convex
    Row("qp-infeasible-item-native", _partly_failed_batch("auto"), warns=QPStatusWarning,
        match="item 1: primal_infeasible", check=_check_partly_failed),
    Row("qp-infeasible-item-native-lu-adjoint", _partly_failed_batch("lu"),
        warns=QPStatusWarning, match="primal_infeasible", check=_check_partly_failed),
    Row("qp-unbounded-native", _unbounded_native, warns=QPStatusWarning,
        match="dual_infeasible: the objective is unbounded below", check=_check_unbounded),
    Row("qp-infeasible-item-cvxpylayers", lambda _: _cvxpy().run(_qp(batch=True,
                                                                     infeasible=True)),
        ValueError, match=r"infeasible or unbounded item.*backend='native'"),
    Row("qp-unbounded-cvxpylayers", lambda _: _cvxpy().run(
        _qp(Q=torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=F64)))),
        ValueError, match=r"infeasible or unbounded item.*backend='native'"),
    Row("qp-not-psd-native", lambda _: QP("native").run(
        _qp(Q=torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)))),
        ValueError, match="Q is not positive semidefinite"),
    Row("qp-not-psd-cvxpylayers", lambda _: _cvxpy().run(
        _qp(Q=torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)))),
        ValueError, match="not positive semidefinite"),
    Row("qp-not-symmetric", lambda _: QP("native").run(
        _qp(Q=torch.eye(3, dtype=F64) + torch.triu(torch.ones(3, 3, dtype=F64), 1))),
        ValueError, match="Q is not symmetric"),
    # singular ∂yH
    Row("singular-duplicated-feature", lambda _: _lasso_gradient(duplicate=True),
        bilevel.SingularJacobianError, match="singular on the active set.*ridge=1e-8"),
    Row("singular-fixed-point", lambda _: _fixed_point_gradient(
        FixedPoint(lambda z, t: 0.5 * z + 0.5 * z.flip(0) + 0 * t)),
        bilevel.SingularJacobianError, match="singular on the active set"),
    Row("singular-qp-equalities", lambda _: _qp_gradient(
        A=torch.ones(2, 3, dtype=F64), b=torch.ones(2, dtype=F64)),
        bilevel.SingularJacobianError, match="singular on the active set"),
    Row("singular-hessian", lambda _: Smooth(
        lambda w, t: 0.5 * (w.sum() - t.sum()) ** 2).run(torch.ones(3, dtype=F64), _zeros()),
        DivergenceError, match="Hessian of f in y is not positive definite"),
    # inner solves that do not converge: the residual reached is in the warning
    Row("not-converged-proxgrad", _not_converged(
        lambda: _lasso_proxgrad(maxiter=2, tol=1e-14), _theta(-3.0), _zeros()),
        warns=ConvergenceWarning, match=r"ProxGrad stopped after 2 iterations with optimality "
        r"residual \S+ > tol", check=_check_residual_reported),
    Row("not-converged-workingset", _not_converged(
        lambda: models.lasso(*_regression(), maxiter=1, ws_start=2, tol=1e-14), _theta(-5)),
        warns=ConvergenceWarning, match="WorkingSet stopped after 1 iterations with optimality "
        "residual", check=_check_residual_reported),
    Row("not-converged-lbfgs", _not_converged(
        lambda: _ridge_logistic(method="lbfgs", maxiter=1, tol=1e-14), _zeros(), _zeros()),
        warns=ConvergenceWarning, match="Smooth stopped after 1 iterations with optimality "
        "residual", check=_check_residual_reported),
    Row("not-converged-fixed-point", _not_converged(
        lambda: _contraction(maxiter=2), torch.ones(3, dtype=F64), _zeros()),
        warns=ConvergenceWarning, match=r"FixedPoint\(method='anderson'\) stopped after 2 "
        "iterations with optimality residual", check=_check_residual_reported),
    Row("not-converged-qp-native", _lp_capped, warns=QPStatusWarning,
        match="max_iterations: not solved in maxiter=1", check=_check_max_iterations),
    Row("not-converged-qp-cvxpylayers", lambda _: _cvxpylayers_capped(),
        warns=ConvergenceWarning, match="CvxpyQP stopped after 1 iterations with optimality "
        "residual", check=lambda y: bool(torch.isfinite(y).all())),
    Row("not-a-contraction", lambda _: FixedPoint(lambda z, t: 2 * z + t, method="picard").run(
        torch.ones(2, dtype=F64), _zeros(2)),
        DivergenceError, match="may not be a contraction"),
    # bad configurations through the command line
    cli_row("cli-misspelled-key", "outer.lrr=0.1", names="Key 'lrr' is not in struct"),
    cli_row("cli-misspelled-top-level-key", "stepz=3", names="Key 'stepz' not in 'RunConfig'"),
    cli_row("cli-wrong-type", "steps=many", names="Value 'many' of type 'str' could not be "
            "converted to Integer"),
    cli_row("cli-bad-outer-option", "outer=sobaa", names="Could not find 'outer/sobaa'"),
    cli_row("cli-bad-task-option", "task=lassoo", names="Could not find 'task/lassoo'"),
    cli_row("cli-bad-dtype", "dtype=float16", "steps=1",
            names="dtype must be one of ['float32', 'float64'], got 'float16'"),
    cli_row("cli-cuda-without-gpu", "device=cuda", "steps=1", names="CUDA is not available",
            needs="no-cuda"),
    cli_row("cli-unknown-device", "device=gpu", "steps=1", names="not a torch device"),
    cli_row("cli-missing-data-file", "task.dataset=/nonexistent/train.csv", "steps=1",
            names="data file not found: /nonexistent/train.csv"),
    # missing or corrupt data files (tasks.data.load)
    data_row("data-missing-file", None, "absent.csv", FileNotFoundError, "data file not found"),
    data_row("data-corrupt-npz", _GARBAGE, "corrupt.npz", DataFormatError,
             "not an npz archive"),
    data_row("data-truncated-npz", _truncated_npz, "cut.npz", DataFormatError,
             "not an npz archive"),
    data_row("data-npz-without-y", _npz_without_y, "keys.npz", DataFormatError,
             "lacks ['y']"),
    data_row("data-csv-not-a-number", b"1,2,3\n4,five,6\n", "cells.csv", DataFormatError,
             "a CSV cell is not a number"),
    data_row("data-csv-binary", _GARBAGE, "binary.csv", DataFormatError, "not a text CSV file"),
    data_row("data-csv-empty", b"", "empty.csv", DataFormatError, "the CSV file is empty"),
    data_row("data-csv-nan", b"1,2,3\nnan,5,6\n", "nan.csv", DataFormatError,
             "X contains NaN or Inf"),
    data_row("data-svmlight-corrupt", b"1 1:2 3:x\n", "bad.svm", DataFormatError,
             "not a valid svmlight/libsvm file"),
    data_row("data-unknown-extension", b"1,2\n", "data.xyz", DataFormatError,
             "cannot tell the format from the extension '.xyz'"),
    data_row("data-labels-not-integers", b"1,2,0.5\n3,4,1.5\n", "labels.csv", LabelError,
             "multiclass labels must be integers", labels="multiclass"),
]


def _lasso_gradient(duplicate: bool) -> torch.Tensor:
    X, y = _regression()
    if duplicate:
        X = torch.cat([X, X[:, :1]], 1)
    theta = _theta(-4.0).requires_grad_(True)
    bilevel.implicit_solve(models.lasso(X, y), theta).sum().backward()
    return theta.grad


def _fixed_point_gradient(solver: FixedPoint) -> torch.Tensor:
    theta = torch.ones(3, dtype=F64, requires_grad=True)
    bilevel.implicit_solve(solver, theta, _zeros()).sum().backward()
    return theta.grad


def _qp_gradient(**overrides: torch.Tensor) -> torch.Tensor:
    Q, q, G, h, A, b = _qp(**overrides)
    q = q.clone().requires_grad_(True)
    bilevel.implicit_solve(QP("native"), (Q, q, G, h, A, b))[:3].sum().backward()
    return q.grad


def _cvxpylayers_capped() -> torch.Tensor:
    return QP("cvxpylayers", tol=1e-30).run(_qp())  # SCS reaches ~1e-10, not 1e-30


@pytest.mark.parametrize("row", CATALOGUE, ids=[row.case for row in CATALOGUE])
def test_bad_input_gets_its_documented_error_naming_the_cause(row: Row, tmp_path: Path):
    if row.needs == "cuda" and not CUDA:
        pytest.skip("needs a CUDA device")
    if row.needs == "no-cuda" and CUDA:
        pytest.skip("a CUDA device is present")
    if row.raises is not None:
        with pytest.raises(row.raises, match=row.match):
            row.run(tmp_path)
        return
    assert row.warns is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = row.run(tmp_path)
    expected = [w for w in caught if issubclass(w.category, row.warns)
                and re.search(row.match, str(w.message))]
    assert expected, [f"{w.category.__name__}: {w.message}" for w in caught]
    _LAST_MESSAGE[0] = str(expected[0].message)
    if row.check is not None:
        row.check(out)


def test_catalogue_cases_are_unique_and_each_names_a_cause():
    cases = [row.case for row in CATALOGUE]
    assert len(cases) == len(set(cases))
    for row in CATALOGUE:
        assert (row.raises is None) != (row.warns is None), row.case
        assert len(row.match) >= 8, row.case  # a fragment of the message, not a bare class


# -- faults tested where they live ---------------------------------------------------------------

COVERED_ELSEWHERE = {
    "corrupt or truncated latest checkpoint → CheckpointWarning, the previous one is loaded":
        "tests.outer.test_checkpoint::test_corrupt_latest_falls_back_to_previous_with_a_warning",
    "no usable checkpoint → CheckpointError naming resume=False":
        "tests.outer.test_checkpoint::test_no_usable_checkpoint_is_an_error_naming_the_fix",
    "checkpoint of another configuration → CheckpointError":
        "tests.outer.test_checkpoint::test_checkpoint_of_another_configuration_is_refused",
    "NaN/Inf mid-run → status diverged naming the step, best iterate kept":
        "tests.outer.test_checkpoint::"
        "test_nan_outer_value_stops_naming_the_step_and_keeps_the_best_iterate",
    "NaN divergence through the CLI → exit status 2, best iterate in result.json":
        "tests.test_cli::test_divergence_exits_nonzero_naming_the_step_and_writes_the_best_iterate",
    "SIGKILL during a CLI run, then resume=true → the uninterrupted result (-m slow)":
        "tests.test_cli::test_run_killed_with_sigkill_resumes_to_the_uninterrupted_result",
    "SIGKILL, then a corrupt latest checkpoint, then resume=true → the same result (fast)":
        "tests.robustness.test_faults::"
        "test_killed_run_with_a_corrupt_latest_checkpoint_resumes_to_the_same_result",
    "same seed twice → bit-identical result.json":
        "tests.test_cli::test_same_seed_twice_gives_bit_identical_results",
}


@pytest.mark.parametrize("fault", COVERED_ELSEWHERE)
def test_faults_covered_elsewhere_still_have_their_test(fault: str):
    module, _, name = COVERED_ELSEWHERE[fault].partition("::")
    assert callable(getattr(importlib.import_module(module), name, None)), COVERED_ELSEWHERE[fault]
