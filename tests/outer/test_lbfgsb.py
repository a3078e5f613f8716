"""BoundedLBFGS against scipy's L-BFGS-B on the same h with a closed-form inner solution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from bilevel.outer import run_outer
from bilevel.outer.lbfgsb import BoundedLBFGS
from tests.outer.test_checkpoint import ridge_problem


def closed_form_h(problem):
    """h(θ) and ∇h(θ) of the per-feature ridge, y* = (XᵀX/n + diag e^θ)⁻¹ Xᵀb/n in closed form
    (XᵀX/n and Xᵀb/n read off the inner loss's Hessian and gradient at y = 0, θ = −50)."""
    X = torch.autograd.functional.jacobian(
        lambda y: problem.inner_loss(y, torch.full_like(y, -50.0), None),
        torch.zeros(5, dtype=torch.float64))  # −Xᵀb/n at y = 0 (θ → −∞ removes the penalty)
    H0 = torch.autograd.functional.hessian(
        lambda y: problem.inner_loss(y, torch.full_like(y, -50.0), None),
        torch.zeros(5, dtype=torch.float64))  # XᵀX/n

    def h(theta_np):
        theta = torch.tensor(theta_np, requires_grad=True)
        y = torch.linalg.solve(H0 + torch.diag(theta.exp()), -X)
        value = problem.outer(y, theta)
        (grad,) = torch.autograd.grad(value, theta)
        return float(value.detach()), grad.numpy()
    return h


def test_reaches_scipy_lbfgsb_solution_in_the_box():
    problem = ridge_problem()
    problem.bounds = (-3.0, 1.0)  # tight enough that some bounds are active at the optimum
    h = closed_form_h(problem)
    ref = minimize(h, problem.theta0.numpy(), jac=True, method="L-BFGS-B",
                   bounds=[problem.bounds] * 5, options={"gtol": 1e-12, "ftol": 1e-15})
    result = run_outer(BoundedLBFGS(), problem, 60, gtol=1e-10)
    assert result.status in ("converged", "stalled")  # stalled: h flat to rounding
    assert np.isclose(ref.x, problem.bounds[0]).any() or np.isclose(ref.x, problem.bounds[1]).any()
    np.testing.assert_allclose(result.theta.numpy(), ref.x, atol=1e-6)
    assert result.best_value == pytest.approx(ref.fun, rel=1e-10)


def test_invalid_settings_are_errors_naming_them():
    with pytest.raises(ValueError, match="memory"):
        BoundedLBFGS(memory=0)
    with pytest.raises(ValueError, match="first_step"):
        BoundedLBFGS(first_step=float("inf"))
