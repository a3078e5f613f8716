"""The registry of every inner solver for the conformance suite (``test_conformance.py``).

A solver joins the suite with one ``Case`` line below. ``build(dtype, device="cpu")`` returns a
small problem at a smooth point, every tensor of it (data, θ, init, the constants of its
objective and outer loss) on ``device``; the optional builders (float64, on the CPU) return a
batched problem, a problem whose solution sits on a kink, and a problem whose ``∂yH`` is
singular on the active set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from solvers import ProxGrad, models, prox
from solvers.fixed_point import FixedPoint
from solvers.smooth import Smooth
from tasks.crossval import cross_validation, folds
from tests.engine.problems import diabetes, lambda_max


@dataclass
class Problem:
    """``min_θ outer(y*(θ))`` at ``theta``; ``init`` may be None when the solver knows ``y``'s
    shape. ``nearby`` is a second θ close to ``theta`` (warm-start check)."""

    solver: object
    theta: Tensor
    init: Tensor | None
    outer: Callable[[Tensor], Tensor]
    nearby: Tensor


@dataclass
class Batched:
    """A batched solver over the rows of ``thetas`` and a factory of the per-item solver."""

    solver: object
    thetas: Tensor
    init: Tensor
    single: Callable[[], object]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., Problem]  # (dtype, device="cpu")
    batched: Callable[[], Batched] | None = None
    kink: Callable[[], Problem] | None = None
    singular: Callable[[], Problem] | None = None


def _data(dtype: torch.dtype, device: torch.device | str = "cpu", duplicate: bool = False):
    X, y, Xv, yv = (t.to(device=device, dtype=dtype) for t in diabetes())
    if duplicate:
        X, Xv = torch.cat([X, X[:, 2:3]], 1), torch.cat([Xv, Xv[:, 2:3]], 1)
    return X, y, Xv, yv


def _mse(Xv: Tensor, yv: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda w: 0.5 * ((Xv @ w - yv) ** 2).mean()


def _tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-4


# -- prox-gradient ---------------------------------------------------------------------------

def _proxgrad_lasso(dtype=torch.float64, device="cpu", duplicate=False, at_lambda_max=False,
                    batch=None):
    X, y, Xv, yv = _data(dtype, device, duplicate)
    p = X.shape[1]
    if batch is not None:  # one λ per row of a (B, p) batch
        return ProxGrad(lambda W, t: 0.5 * ((W @ X.T - y) ** 2).mean(-1),
                        lambda V, t, s: prox.l1(V, s * t.exp()[:, None]), tol=1e-12,
                        maxiter=100_000, batch_ndim=1)
    solver = ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                      lambda v, t, s: prox.l1(v, s * t.exp()), tol=_tol(dtype), maxiter=100_000)
    lam = lambda_max(X, y) if at_lambda_max else lambda_max(X, y) / (50 if duplicate else 7)
    theta = torch.tensor(math.log(lam), dtype=dtype, device=device)
    return Problem(solver, theta, torch.zeros(p, dtype=dtype, device=device), _mse(Xv, yv),
                   theta + 0.01)


def _proxgrad_batched():
    thetas = torch.tensor([-0.5, 0.5, 1.5], dtype=torch.float64)
    solver = _proxgrad_lasso(batch=3)
    return Batched(solver, thetas, torch.zeros(3, 10, dtype=torch.float64),
                   lambda: _proxgrad_lasso().solver)


def _proxgrad_simplex(dtype=torch.float64, device="cpu"):
    """Least squares over the simplex: a non-symmetric ∂yH on the support."""
    X, y, Xv, yv = _data(dtype, device)
    solver = ProxGrad(lambda w, t: 0.5 * ((X @ w - y / 100) ** 2).mean(),
                      lambda v, t, s: prox.simplex(v, t.exp()), tol=_tol(dtype), maxiter=100_000)
    theta = torch.tensor(0.5, dtype=dtype, device=device)
    return Problem(solver, theta, torch.zeros(10, dtype=dtype, device=device), _mse(Xv, yv / 100),
                   theta + 0.01)


# -- working set -----------------------------------------------------------------------------

def _workingset(model: str, dtype=torch.float64, device="cpu", duplicate=False,
                at_lambda_max=False, sub_solver="auto"):
    """``sub_solver="auto"`` solves the quadratic models by compiled coordinate descent on the
    CPU; ``"torch"`` by the torch active-set rounds and FISTA (the GPU's sub-solver)."""
    X, y, Xv, yv = _data(dtype, device, duplicate)
    outer = _mse(Xv, yv)
    if model == "sparse_logreg":
        y, yv = (y > 0).to(dtype), (yv > 0).to(dtype)

        def outer(w):
            return torch.nn.functional.softplus(-(2 * yv - 1) * (Xv @ w)).mean()

    solver = getattr(models, model)(X, y, tol=_tol(dtype), sub_solver=sub_solver)
    ref = lambda_max(X, y) if model != "sparse_logreg" else 0.05
    ratio = 1.0 if at_lambda_max else (50 if duplicate else 7)
    theta = torch.tensor(math.log(ref / ratio), dtype=dtype, device=device)
    if model == "elastic_net":
        theta = torch.stack([theta, theta - 1])
    return Problem(solver, theta, None, outer, theta + 0.01)


# -- stacked (K-fold cross-validation) ------------------------------------------------------

def _stacked_cv(dtype=torch.float64, device="cpu", duplicate=False, at_lambda_max=False):
    """3-fold CV of the Lasso on diabetes: one working-set solver per fold, ``y`` is ``(3, p)``."""
    X, y, _, _ = _data(dtype, device, duplicate)
    rows = folds(X.shape[0], 3)
    cv = cross_validation(X, y, rows, lambda Xk, yk: models.lasso(Xk, yk, tol=_tol(dtype)),
                          lambda w, Xv, yv: 0.5 * ((Xv @ w - yv) ** 2).mean())
    ratio = 1.0 if at_lambda_max else (50 if duplicate else 7)
    theta = torch.tensor(math.log(lambda_max(X, y) / ratio), dtype=dtype, device=device)
    if at_lambda_max:  # the smallest fold λ_max: one fold sits exactly on its kink
        theta = torch.tensor(min(math.log(lambda_max(X[tr], y[tr])) for tr, _ in rows),
                             dtype=dtype, device=device)
    return Problem(cv.inner, theta, None, lambda w: cv.outer(w, theta), theta + 0.01)


# -- smooth ----------------------------------------------------------------------------------

def _smooth(method: str, dtype=torch.float64, device="cpu", singular=False, batch=None):
    """Logistic regression with one L2 weight per feature (θ = log weights)."""
    X, y, Xv, yv = _data(dtype, device)
    y, yv = (y > 0).to(dtype) * 2 - 1, (yv > 0).to(dtype) * 2 - 1
    if singular:  # a duplicated feature and no penalty on it: the Hessian is singular
        X, Xv = torch.cat([X, X[:, 2:3]], 1), torch.cat([Xv, Xv[:, 2:3]], 1)

        free = torch.ones(11, dtype=dtype, device=device)
        free[2] = free[10] = 0.0  # the two copies of feature 2 are not penalised

        def objective(w, t):
            weights = torch.cat([t.exp(), torch.ones(1, dtype=dtype, device=device)]) * free
            return torch.nn.functional.softplus(-y * (X @ w)).mean() + 0.5 * (weights * w * w).sum()
    elif batch is not None:
        def objective(W, t):
            return (torch.nn.functional.softplus(-y * (W @ X.T)).mean(-1)
                    + 0.5 * (t.exp() * W * W).sum(-1))
    else:
        def objective(w, t):
            return torch.nn.functional.softplus(-y * (X @ w)).mean() + 0.5 * (t.exp() * w * w).sum()

    solver = Smooth(objective, method=method, tol=_tol(dtype), maxiter=1000,
                    batch_ndim=0 if batch is None else 1)
    p = X.shape[1]
    theta = torch.linspace(-4.0, -1.0, 10, dtype=dtype, device=device)

    def outer(w):
        return torch.nn.functional.softplus(-yv * (Xv @ w)).mean()

    return Problem(solver, theta, torch.zeros(p, dtype=dtype, device=device), outer, theta + 0.05)


def _smooth_batched(method: str):
    thetas = torch.stack([torch.linspace(-4.0, -1.0, 10), torch.linspace(-1.0, -3.0, 10)])
    thetas = thetas.to(torch.float64)
    solver = _smooth(method, batch=2).solver
    return Batched(solver, thetas, torch.zeros(2, 10, dtype=torch.float64),
                   lambda: _smooth(method).solver)


# -- fixed point -----------------------------------------------------------------------------

def _contraction(dtype=torch.float64, device="cpu"):
    """``W, U, target``, drawn in float64 on the CPU (the same numbers on every device)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    W = 0.8 * (A + A.T) / torch.linalg.matrix_norm(A + A.T, 2)
    U = 0.3 * torch.randn(20, 4, generator=gen, dtype=torch.float64)
    target = torch.randn(20, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (W, U, target))


def _fixed_point(method: str, dtype=torch.float64, device="cpu", batch=None):
    W, U, target = _contraction(dtype, device)
    solver = FixedPoint(lambda z, t: torch.tanh(z @ W.T + t @ U.T), method=method,
                        tol=1e-12 if dtype == torch.float64 else 1e-5, maxiter=5000,
                        batch_ndim=0 if batch is None else 1)
    theta = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=dtype, device=device)
    return Problem(solver, theta, torch.zeros(20, dtype=dtype, device=device),
                   lambda z: ((z - target) ** 2).sum(), theta + 0.01)


def _fixed_point_batched(method: str):
    thetas = torch.tensor([[0.3, -0.2, 0.5, 0.1], [-0.4, 0.1, 0.0, 0.7]], dtype=torch.float64)
    return Batched(_fixed_point(method, batch=2).solver, thetas,
                   torch.zeros(2, 20, dtype=torch.float64), lambda: _fixed_point(method).solver)


def _ws(model: str, **kw) -> Callable[[], Problem]:
    return lambda: _workingset(model, **kw)


CASES = [
    Case("proxgrad-lasso", _proxgrad_lasso, _proxgrad_batched,
         lambda: _proxgrad_lasso(at_lambda_max=True), lambda: _proxgrad_lasso(duplicate=True)),
    Case("proxgrad-simplex", _proxgrad_simplex),
    Case("workingset-lasso", partial(_workingset, "lasso"), None,
         _ws("lasso", at_lambda_max=True), _ws("lasso", duplicate=True)),
    Case("workingset-elastic_net", partial(_workingset, "elastic_net"), None,
         _ws("elastic_net", at_lambda_max=True)),
    Case("workingset-nonneg_lasso", partial(_workingset, "nonneg_lasso"), None, None,
         _ws("nonneg_lasso", duplicate=True)),
    Case("workingset-sparse_logreg", partial(_workingset, "sparse_logreg")),
    Case("workingset-lasso-torch_sub", partial(_workingset, "lasso", sub_solver="torch"), None,
         _ws("lasso", at_lambda_max=True, sub_solver="torch"),
         _ws("lasso", duplicate=True, sub_solver="torch")),
    Case("workingset-nonneg_lasso-torch_sub",
         partial(_workingset, "nonneg_lasso", sub_solver="torch"), None, None,
         _ws("nonneg_lasso", duplicate=True, sub_solver="torch")),
    Case("stacked-lasso_cv", _stacked_cv, None,
         lambda: _stacked_cv(at_lambda_max=True), lambda: _stacked_cv(duplicate=True)),
    *[Case(f"smooth-{m}", partial(_smooth, m), lambda m=m: _smooth_batched(m), None,
           lambda m=m: _smooth(m, singular=True)) for m in ("newton", "lbfgs")],
    *[Case(f"fixed_point-{m}", partial(_fixed_point, m),
           lambda m=m: _fixed_point_batched(m)) for m in ("picard", "km", "anderson", "broyden")],
]
