"""Forward mode (torch.func.jvp, torch.autograd.forward_ad) agrees with reverse mode."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import bilevel
from solvers import ProxGrad, prox
from tests.engine.problems import F64, diabetes


def weighted_lasso(X, y):
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                    lambda v, t, s: prox.l1(v, s * t.exp()), tol=1e-13, maxiter=100_000)


@pytest.mark.parametrize("linear_solver", ["auto", "gmres", "bicgstab"])
def test_forward_equals_reverse(linear_solver):
    X, y, _, _ = diabetes()
    p = X.shape[1]
    solver = weighted_lasso(X, y)
    init = torch.zeros(p, dtype=F64)
    theta = torch.linspace(-3.0, 0.5, p, dtype=F64)
    adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver, tol=1e-13)

    def f(t):
        return bilevel.implicit_solve(solver, t, init, adjoint=adjoint)

    eye = torch.eye(p, dtype=F64)
    forward = torch.stack([torch.func.jvp(f, (theta,), (e,))[1] for e in eye], dim=1)
    t = theta.clone().requires_grad_(True)
    w = f(t)
    reverse = torch.stack([torch.autograd.grad(w, t, e, retain_graph=True)[0] for e in eye])
    assert forward.abs().max() > 0.1  # a non-trivial Jacobian
    assert torch.allclose(forward, reverse, rtol=0, atol=1e-10)

    with fwAD.dual_level():
        tangent = torch.randn(p, dtype=F64, generator=torch.Generator().manual_seed(1))
        dual = fwAD.make_dual(theta, tangent)
        y_dot = fwAD.unpack_dual(f(dual)).tangent
    assert torch.allclose(y_dot, reverse @ tangent, rtol=0, atol=1e-10)


def test_tuple_theta_and_torch_func_grad():
    X, y, Xv, yv = diabetes()
    solver = ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                      lambda v, t, s: prox.elastic_net(v, s * t[0].exp(), s * t[1].exp()),
                      tol=1e-13, maxiter=100_000)
    init = torch.zeros(X.shape[1], dtype=F64)

    def F(a, b):
        w = bilevel.implicit_solve(solver, (a, b), init)
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    a, b = torch.tensor(-1.0, dtype=F64), torch.tensor(-2.0, dtype=F64)
    ga, gb = torch.func.grad(F, argnums=(0, 1))(a, b)
    a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    F(a_, b_).backward()
    assert torch.allclose(ga, a_.grad, atol=1e-12) and torch.allclose(gb, b_.grad, atol=1e-12)
    _, tangent = torch.func.jvp(F, (a, b), (torch.ones((), dtype=F64), torch.zeros((), dtype=F64)))
    assert abs(float(tangent - a_.grad)) <= 1e-10
