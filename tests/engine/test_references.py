"""Implicit derivatives against closed forms, sklearn and finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

import bilevel
from solvers import ProxGrad, prox
from tests.engine.problems import F64, diabetes, lambda_max, lasso, val_loss, wide
from tests.helpers import assert_directional


def ridge_solver(X, y, tol=1e-12):
    """Ridge with θ = log λ: f = ½ mean((Xw − y)²) + ½ e^θ ‖w‖², identity prox."""
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean() + 0.5 * t.exp() * (w @ w),
                    lambda v, t, s: v, tol=tol, maxiter=100_000)


@pytest.mark.parametrize("linear_solver", bilevel.LINEAR_SOLVERS)
def test_ridge_hypergradient_matches_closed_form(linear_solver):
    X, y, Xv, yv = diabetes()
    n, p = X.shape
    lam = 0.3
    G = X.T @ X / n + lam * torch.eye(p, dtype=F64)
    w_ref = torch.linalg.solve(G, X.T @ y / n)
    grad_F = Xv.T @ (Xv @ w_ref - yv) / Xv.shape[0]
    # dw/dλ = −G⁻¹ w, dF/dθ = λ ⟨∇F, dw/dλ⟩
    ref = float(lam * grad_F @ (-torch.linalg.solve(G, w_ref)))

    theta = torch.tensor(np.log(lam), dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver, tol=1e-13, maxiter=20_000)
    w = bilevel.implicit_solve(ridge_solver(X, y), theta, torch.zeros(p, dtype=F64),
                               adjoint=adjoint)
    val_loss(Xv, yv)(w).backward()
    assert torch.allclose(w, w_ref, rtol=1e-9, atol=1e-9)
    assert abs(float(theta.grad) - ref) <= 1e-8 * abs(ref)
    assert adjoint.report.linear is not None and adjoint.report.linear.converged


@pytest.mark.parametrize("data", [diabetes, wide], ids=["diabetes", "p>n"])
def test_lasso_jacobian_matches_closed_form_on_support(data):
    X, y, _, _ = data()
    n, p = X.shape
    lam = lambda_max(X, y) / 20
    theta = torch.tensor(lam, dtype=F64)
    solver = lasso(X, y, tol=1e-13)
    init = torch.zeros(p, dtype=F64)
    # forward mode gives the whole column dw/dλ at once
    w, dw = torch.func.jvp(lambda t: bilevel.implicit_solve(solver, t, init), (theta,),
                           (torch.ones((), dtype=F64),))
    S = w.abs() > 0
    XS = X[:, S]
    ref = torch.zeros(p, dtype=F64)
    ref[S] = -torch.linalg.solve(XS.T @ XS / n, torch.sign(w[S]))
    assert S.sum() >= 2
    assert float((dw - ref).norm() / ref.norm()) <= 1e-8
    # the solution itself against sklearn at tight tolerance
    sk = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    sk.fit(X.numpy(), y.numpy())
    assert np.allclose(w.numpy(), sk.coef_, atol=1e-7)


def test_lasso_reverse_mode_restricts_to_support_and_matches_closed_form():
    X, y, Xv, yv = wide()
    n, p = X.shape
    lam = lambda_max(X, y) / 10
    theta = torch.tensor(lam, dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint(linear_solver="cg")
    w = bilevel.implicit_solve(lasso(X, y), theta, torch.zeros(p, dtype=F64), adjoint=adjoint)
    val_loss(Xv, yv)(w).backward()
    S = w.detach().abs() > 0
    XS = X[:, S]
    dw = -torch.linalg.solve(XS.T @ XS / n, torch.sign(w.detach()[S]))
    ref = float((Xv.T @ (Xv @ w.detach() - yv) / Xv.shape[0])[S] @ dw)
    assert abs(float(theta.grad) - ref) <= 1e-8 * abs(ref)
    report = adjoint.report
    assert report.restricted_size == int(S.sum()) < report.full_size == p
    assert report.inner.converged and report.inner.residual <= 1e-12
    assert report.linear.iterations > 0 and report.linear.residual <= 1e-10


def _elastic_net(X, y):
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                    lambda v, t, s: prox.elastic_net(v, s * t[0].exp(), s * t[1].exp()),
                    tol=1e-13, maxiter=100_000)


def _weighted_lasso(X, y):
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                    lambda v, t, s: prox.l1(v, s * t.exp()), tol=1e-13, maxiter=100_000)


@pytest.mark.parametrize("make, theta0", [
    (_elastic_net, [-1.0, -2.0]),
    (_weighted_lasso, [-1.0, -3.0, -0.5, -2.0, -4.0, -1.5, -2.5, -3.5, -0.8, -1.2]),
], ids=["elastic_net", "weighted_lasso"])
def test_hypergradient_matches_central_differences(make, theta0):
    X, y, Xv, yv = diabetes()
    solver = make(X, y)
    init = torch.zeros(X.shape[1], dtype=F64)
    outer = val_loss(Xv, yv)
    theta = torch.tensor(theta0, dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint()
    w = bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)
    outer(w).backward()
    assert adjoint.report.n_kinks == 0  # a smooth point: central differences are valid

    def F(t):
        with warnings.catch_warnings():
            warnings.simplefilter("error", bilevel.KinkWarning)
            return float(outer(bilevel.implicit_solve(solver, t, init)))

    assert_directional(theta.grad, F, theta.detach(), h=1e-6, rtol=1e-6)


def test_box_bounds_depending_on_theta_restriction_is_exact():
    """Inactive rows whose ∂θH is non-zero (a box whose bounds move with θ)."""
    X, y, Xv, yv = diabetes()
    p = X.shape[1]
    solver = ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                      lambda v, t, s: prox.box(v, -t, t), tol=1e-13, maxiter=100_000)
    init = torch.zeros(p, dtype=F64)
    theta = torch.full((p,), 8.0, dtype=F64)
    theta[::3] = 2.0
    outer = val_loss(Xv, yv)
    grads = {}
    for restrict in (True, False):
        t = theta.clone().requires_grad_(True)
        adjoint = bilevel.ImplicitAdjoint(restrict=restrict)
        outer(bilevel.implicit_solve(solver, t, init, adjoint=adjoint)).backward()
        grads[restrict] = t.grad
        if restrict:
            assert adjoint.report.restricted_size < p  # some bounds are active
    assert torch.allclose(grads[True], grads[False], rtol=1e-10, atol=1e-12)
    assert_directional(grads[True], lambda t: float(outer(bilevel.implicit_solve(solver, t, init))),
                       theta, h=1e-6, rtol=1e-6)


def test_batched_problems_equal_per_item_loop():
    X, y, Xv, yv = diabetes()
    p = X.shape[1]
    lams = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    batched = ProxGrad(lambda w, t: 0.5 * ((w @ X.T - y) ** 2).mean(-1),
                       lambda v, t, s: prox.l1(v, s * t[:, None]), tol=1e-13, maxiter=100_000,
                       batch_ndim=1)
    theta = lams.clone().requires_grad_(True)
    W = bilevel.implicit_solve(batched, theta, torch.zeros(3, p, dtype=F64))
    outer = val_loss(Xv, yv)
    sum(outer(W[i]) for i in range(3)).backward()
    for i, lam in enumerate(lams):
        t = lam.clone().requires_grad_(True)
        w = bilevel.implicit_solve(lasso(X, y, tol=1e-13), t, torch.zeros(p, dtype=F64))
        outer(w).backward()
        assert torch.allclose(W[i], w, atol=1e-9)
        assert abs(float(theta.grad[i] - t.grad)) <= 1e-8 * max(1.0, abs(float(t.grad)))
