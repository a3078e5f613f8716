"""The default adjoint refines a solution or a preconditioner the solver offers: one VJP when
they are exact, a correct derivative whatever their quality."""

from __future__ import annotations

import math

import pytest
import torch

import bilevel
from solvers.base import Structure, all_finite

F64 = torch.float64


class Linear:
    """``H(θ, y) = M y − θ``: ``y* = M⁻¹θ`` and ``dF/dθ = M⁻ᵀ ∂F/∂y`` (``M`` symmetric)."""

    tol = 1e-12

    def __init__(self, M, preconditioner=None):
        self.M = M
        self.preconditioner = preconditioner

    def run(self, theta, init=None):
        return torch.linalg.solve(self.M, theta)

    def optimality(self, y, theta):
        return self.M @ y - theta

    def structure(self, y, theta):
        return Structure(symmetric=True, preconditioner=self.preconditioner)


class WithGuess(Linear):
    """Offers ``solve_adjoint``: ``u`` with ``Mᵀu = −v``, spoiled by ``error``."""

    def __init__(self, M, error):
        super().__init__(M)
        self.error = error

    def solve_adjoint(self, y, theta, v):
        return self.error(-torch.linalg.solve(self.M.T, v))


def spd(k: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(k, k, generator=g, dtype=F64)
    return A @ A.T + k * torch.eye(k, dtype=F64)


def hypergradient(solver, adjoint=None):
    k = solver.M.shape[0]
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(k, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(k, generator=g, dtype=F64)
    adjoint = adjoint or bilevel.ImplicitAdjoint()
    (v @ bilevel.implicit_solve(solver, theta, adjoint=adjoint)).backward()
    return theta.grad, torch.linalg.solve(solver.M.T, v), adjoint.report


def inverse(M: torch.Tensor):
    factor = torch.linalg.cholesky(M)
    return lambda r: torch.cholesky_solve(r.mT, factor).mT


def test_exact_solver_solution_costs_one_vjp():
    grad, expected, report = hypergradient(WithGuess(spd(), lambda u: u))
    assert report.linear_solver == "refinement" and report.linear.iterations == 1
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0)


def test_exact_preconditioner_costs_one_vjp():
    M = spd()
    grad, expected, report = hypergradient(Linear(M, inverse(M)))
    assert report.linear_solver == "refinement" and report.linear.iterations == 1
    assert report.linear.residual <= 1e-10
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0)


def test_nearby_preconditioner_refines_in_few_vjps():
    M = spd()
    grad, expected, report = hypergradient(Linear(M, inverse(M + 1e-6 * torch.eye(12, dtype=F64))))
    assert report.linear_solver == "refinement" and 2 <= report.linear.iterations <= 3
    assert torch.allclose(grad, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("error", [
    lambda u: u * (1 + 1e-3),  # inaccurate: the rest is solved by the engine
    lambda u: torch.full_like(u, math.nan),  # garbage: discarded
    lambda u: torch.zeros_like(u),  # no information
], ids=["inaccurate", "nan", "zero"])
def test_bad_solver_solution_still_gives_the_derivative(error):
    grad, expected, report = hypergradient(WithGuess(spd(), error))
    assert report.linear_solver != "refinement" and report.linear.converged
    assert torch.allclose(grad, expected, rtol=1e-9, atol=0)


def test_poor_preconditioner_hands_over_to_the_linear_solvers():
    M = spd()
    grad, expected, report = hypergradient(Linear(M, inverse(M + 5 * torch.eye(12, dtype=F64))))
    assert report.linear_solver == "cg" and report.linear.converged
    assert torch.allclose(grad, expected, rtol=1e-9, atol=0)


def test_an_explicit_linear_solver_ignores_the_hints():
    adjoint = bilevel.ImplicitAdjoint(linear_solver="lu")
    grad, expected, report = hypergradient(WithGuess(spd(), lambda u: u), adjoint)
    assert report.linear_solver == "lu"
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0)


def test_all_finite():
    big = torch.full((1000,), 1e308, dtype=F64)  # the sum overflows: the exact test decides
    assert all_finite(big) and all_finite(torch.zeros(0)) and all_finite(torch.ones(3, 4))
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.ones(5, 7, dtype=F64)
        x[3, 2] = bad
        assert not all_finite(x)
    mixed = torch.tensor([math.inf, -math.inf])  # sums to NaN
    assert not all_finite(mixed)
