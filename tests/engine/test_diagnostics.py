"""Kinks, singular Jacobians, non-convergence and bad input are reported, never silent."""

from __future__ import annotations

import warnings

import pytest
import torch

import bilevel
from solvers import ProxGrad, prox
from tests.engine.problems import F64, diabetes, lambda_max, lasso, val_loss
from tests.helpers import assert_between, one_sided


def test_kink_at_lambda_max_warns_and_returns_a_one_sided_limit():
    X, y, Xv, yv = diabetes()
    p = X.shape[1]
    solver = lasso(X, y)
    init = torch.zeros(p, dtype=F64)
    outer = val_loss(Xv, yv)
    lam = torch.tensor(lambda_max(X, y), dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint()
    with pytest.warns(bilevel.KinkWarning, match="1 coordinate"):
        w = bilevel.implicit_solve(solver, lam, init, adjoint=adjoint)
    outer(w).backward()
    assert adjoint.report.n_kinks == 1
    assert float(w.detach().abs().max()) <= 1e-12  # y* = 0 up to round-off

    def F(t):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.KinkWarning)
            return float(outer(bilevel.implicit_solve(solver, t, init)))

    left, right = one_sided(F, lam.detach(), torch.ones((), dtype=F64), h=1e-6)
    assert abs(left - right) > 1.0  # a genuine kink of the value function
    assert_between(float(lam.grad), left, right, atol=1e-4)

    cert = bilevel.kink_certificate(solver, lam.detach(), w.detach(), lambda w, t: outer(w))
    assert cert.n_kinks == 1 and not cert.unique
    assert abs(float(cert.active[0]) - left) <= 1e-4 * abs(left)
    assert abs(float(cert.inactive[0]) - right) <= 1e-4


def test_certificate_at_a_smooth_point_is_unique():
    X, y, Xv, yv = diabetes()
    solver = lasso(X, y)
    lam = torch.tensor(lambda_max(X, y) / 7, dtype=F64)
    w = solver.run(lam, torch.zeros(X.shape[1], dtype=F64))
    cert = bilevel.kink_certificate(solver, lam, w, lambda w, t: val_loss(Xv, yv)(w))
    assert cert.n_kinks == 0 and cert.unique and cert.gap == 0.0


def duplicated():
    X, y, Xv, yv = diabetes()
    return (torch.cat([X, X[:, 2:3]], 1), y, torch.cat([Xv, Xv[:, 2:3]], 1), yv)


@pytest.mark.parametrize("linear_solver", ["auto", "lu", "cholesky"])
def test_duplicated_columns_raise_singular_jacobian(linear_solver):
    X, y, Xv, yv = duplicated()
    lam = torch.tensor(lambda_max(X, y) / 50, dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver, maxiter=500)
    w = bilevel.implicit_solve(lasso(X, y, tol=1e-10), lam, torch.zeros(X.shape[1], dtype=F64),
                               adjoint=adjoint)
    assert w[2] != 0 and w[-1] != 0  # both copies in the support
    with pytest.raises(bilevel.SingularJacobianError, match="ridge=.*lstsq"):
        val_loss(Xv, yv)(w).backward()


@pytest.mark.parametrize("fallback", [{"ridge": 1e-8}, {"linear_solver": "lstsq"}])
def test_singular_fallbacks_warn_and_return_finite_gradients(fallback):
    X, y, Xv, yv = duplicated()
    lam = torch.tensor(lambda_max(X, y) / 50, dtype=F64, requires_grad=True)
    w = bilevel.implicit_solve(lasso(X, y, tol=1e-10), lam, torch.zeros(X.shape[1], dtype=F64),
                               adjoint=bilevel.ImplicitAdjoint(**fallback))
    with pytest.warns(bilevel.AdjointFallbackWarning):
        val_loss(Xv, yv)(w).backward()
    # duplicated columns split the weight evenly, so the hypergradient equals that of the
    # problem without the copy
    X0, y0, Xv0, yv0 = diabetes()
    lam0 = lam.detach().clone().requires_grad_(True)
    w0 = bilevel.implicit_solve(lasso(X0, y0, tol=1e-10), lam0, torch.zeros(10, dtype=F64))
    val_loss(Xv0, yv0)(w0).backward()
    assert torch.isfinite(lam.grad)
    assert abs(float(lam.grad - lam0.grad)) <= 1e-3 * abs(float(lam0.grad))


def test_early_stop_raises_convergence_warning():
    X, y, _, _ = diabetes()
    solver = ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                      lambda v, t, s: prox.l1(v, s * t), tol=1e-12, maxiter=3)
    with pytest.warns(bilevel.ConvergenceWarning, match="residual"):
        bilevel.implicit_solve(solver, torch.tensor(0.1, dtype=F64), torch.zeros(10, dtype=F64))
    assert not solver.info.converged and solver.info.iterations == 3


def test_warm_start_lowers_iterations():
    X, y, _, _ = diabetes()
    solver = lasso(X, y)
    lam = torch.tensor(0.5, dtype=F64)
    w = solver.run(lam, torch.zeros(10, dtype=F64))
    cold = solver.info.iterations
    solver.run(lam, w)
    assert solver.info.iterations <= 2
    solver.run(lam * 1.01, w)
    assert solver.info.iterations < cold


@pytest.mark.parametrize("theta, init, match, error", [
    (torch.tensor(float("nan"), dtype=F64), torch.zeros(10, dtype=F64), "theta", ValueError),
    (torch.tensor(float("inf"), dtype=F64), torch.zeros(10, dtype=F64), "theta", ValueError),
    (torch.tensor(1, dtype=torch.int64), torch.zeros(10, dtype=F64), "theta", TypeError),
    ((torch.tensor(1.0, dtype=F64), torch.tensor(1.0)), torch.zeros(10, dtype=F64),
     r"theta\[1\]", ValueError),
    (torch.tensor(0.1, dtype=F64), torch.zeros(10), "init", ValueError),
    (torch.tensor(0.1, dtype=F64), torch.zeros(7, dtype=F64), "init", ValueError),
    (torch.tensor(0.1, dtype=F64), torch.full((10,), float("nan"), dtype=F64), "init",
     ValueError),
    ([0.1], torch.zeros(10, dtype=F64), "theta", TypeError),
])
def test_bad_input_names_the_argument(theta, init, match, error):
    X, y, _, _ = diabetes()
    with pytest.raises(error, match=match):
        bilevel.implicit_solve(lasso(X, y), theta, init)


def test_nan_in_data_is_an_error():
    X, y, _, _ = diabetes()
    X = X.clone()
    X[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bilevel.implicit_solve(lasso(X, y), torch.tensor(0.1, dtype=F64),
                               torch.zeros(10, dtype=F64))


def test_adjoint_options_are_validated():
    with pytest.raises(ValueError, match="linear_solver"):
        bilevel.ImplicitAdjoint(linear_solver="qr")
    with pytest.raises(ValueError, match="ridge"):
        bilevel.ImplicitAdjoint(ridge=-1.0)
