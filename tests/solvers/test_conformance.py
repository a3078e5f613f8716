"""One conformance suite over every inner solver of ``tests/solvers/registry.py``.

Invariants: the optimality residual is within tolerance at return; dtype and device follow the
inputs, and on a GPU the solution and hypergradient are the CPU's; a warm start lowers the
iteration count; the implicit hypergradient matches central differences at smooth points and
forward mode matches reverse mode; a batched solve equals a per-item loop; at a kink the
derivative lies between the one-sided limits and a KinkWarning is raised; a singular ∂yH raises
SingularJacobianError.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import bilevel
from tests.helpers import assert_between, assert_directional, one_sided
from tests.solvers.registry import CASES

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]  # `pytest -k cuda` selects the GPU variants


def ids(cases):
    return [c.name for c in cases]


def solve(problem, theta=None, **kw):
    theta = problem.theta if theta is None else theta
    return bilevel.implicit_solve(problem.solver, theta, problem.init, **kw)


def value(problem):
    def F(theta):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.KinkWarning)
            return float(problem.outer(solve(problem, theta)))
    return F


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_residual_within_tolerance_at_return(case):
    problem = case.build(F64)
    y = problem.solver.run(problem.theta, problem.init)
    info = problem.solver.info
    assert info.converged and info.residual <= info.tol == problem.solver.tol
    assert torch.isfinite(y).all()
    H = problem.solver.optimality(y, problem.theta)
    assert H.shape == y.shape and float(H.abs().max()) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_dtype_and_device_follow_the_inputs(case, device):
    problem = case.build(torch.float32, device)
    theta = problem.theta.clone().requires_grad_(True)
    assert theta.device.type == device
    y = solve(problem, theta)
    assert y.dtype == torch.float32 and y.device == theta.device
    problem.outer(y).backward()
    assert theta.grad.dtype == torch.float32 and theta.grad.device == theta.device
    assert torch.isfinite(theta.grad).all()


@CUDA
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_cuda_matches_cpu(case):
    """The float64 solution and θ-gradient on the GPU are the CPU's (max-norm relative error
    ≤ 1e-8), and each lives on its own device."""
    results = {}
    for device in ("cpu", "cuda"):
        problem = case.build(F64, device)
        theta = problem.theta.clone().requires_grad_(True)
        y = solve(problem, theta)
        problem.outer(y).backward()
        assert theta.device.type == device and y.device == theta.grad.device == theta.device
        results[device] = (y.detach().cpu(), theta.grad.cpu())
    for name, cpu, gpu in zip(("y", "θ.grad"), results["cpu"], results["cuda"], strict=True):
        error = float((gpu - cpu).abs().max())
        assert error <= 1e-8 * float(cpu.abs().max()), (name, error, float(cpu.abs().max()))


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_warm_start_lowers_the_iteration_count(case):
    problem = case.build(F64)
    solver = problem.solver
    y = solver.run(problem.theta, problem.init)
    cold = solver.info.iterations
    solver.run(problem.nearby, problem.init)
    cold_nearby = solver.info.iterations
    solver.run(problem.nearby, y)
    assert solver.info.iterations < max(cold, cold_nearby)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hypergradient_matches_central_differences(case):
    problem = case.build(F64)
    theta = problem.theta.clone().requires_grad_(True)
    adjoint = bilevel.ImplicitAdjoint()
    problem.outer(solve(problem, theta, adjoint=adjoint)).backward()
    assert adjoint.report.n_kinks == 0  # a smooth point
    assert_directional(theta.grad, value(problem), problem.theta, h=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_forward_mode_equals_reverse_mode(case):
    problem = case.build(F64)
    direction = torch.randn(problem.theta.shape, dtype=F64,
                            generator=torch.Generator().manual_seed(7))
    _, tangent = torch.func.jvp(lambda t: solve(problem, t), (problem.theta,), (direction,))
    theta = problem.theta.clone().requires_grad_(True)
    y = solve(problem, theta)
    cotangent = torch.randn(y.shape, dtype=F64, generator=torch.Generator().manual_seed(8))
    (grad,) = torch.autograd.grad(y, theta, cotangent)
    forward, reverse = float((cotangent * tangent).sum()), float((grad * direction).sum())
    assert abs(forward - reverse) <= 1e-10 * max(1.0, abs(reverse))


BATCHED = [c for c in CASES if c.batched is not None]


@pytest.mark.parametrize("case", BATCHED, ids=ids(BATCHED))
def test_batched_equals_per_item_loop(case):
    batch = case.batched()
    thetas = batch.thetas.clone().requires_grad_(True)
    Y = bilevel.implicit_solve(batch.solver, thetas, batch.init)
    weights = torch.linspace(0.5, 1.5, Y.shape[-1], dtype=F64)
    (Y ** 2 * weights).sum().backward()
    for i in range(thetas.shape[0]):
        t = batch.thetas[i].clone().requires_grad_(True)
        y = bilevel.implicit_solve(batch.single(), t, batch.init[i])
        (y ** 2 * weights).sum().backward()
        assert torch.allclose(Y[i], y, atol=1e-8)
        assert torch.allclose(thetas.grad[i], t.grad, rtol=1e-6, atol=1e-8)


KINKS = [c for c in CASES if c.kink is not None]


@pytest.mark.parametrize("case", KINKS, ids=ids(KINKS))
def test_kink_is_reported_and_derivative_brackets_one_sided_limits(case):
    problem = case.kink()
    theta = problem.theta.clone().requires_grad_(True)
    with pytest.warns(bilevel.KinkWarning):
        y = solve(problem, theta)
    problem.outer(y).backward()
    direction = torch.zeros_like(problem.theta)
    direction.view(-1)[0] = 1.0  # along the first hyperparameter (λ or λ₁)
    left, right = one_sided(value(problem), problem.theta, direction, h=1e-6)
    assert abs(left - right) > 1e-3  # a genuine kink
    assert_between(float(theta.grad.view(-1)[0]), left, right, atol=1e-4 * max(1, abs(left)))


SINGULAR = [c for c in CASES if c.singular is not None]


@pytest.mark.parametrize("case", SINGULAR, ids=ids(SINGULAR))
def test_singular_jacobian_is_an_error(case):
    """Either the engine refuses to differentiate (SingularJacobianError naming the fallbacks),
    or the solver refuses the problem (a Newton method that needs a positive-definite
    Hessian), or, for a sparse model whose solution is not unique (duplicated features), the
    solver returns the solution that uses one of the duplicates, as coordinate descent does,
    and the engine flags the other, which sits exactly on its kink: never a silent gradient."""
    problem = case.singular()
    theta = problem.theta.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = solve(problem, theta)
        except bilevel.DivergenceError as err:
            assert "not positive definite" in str(err)
            return
    try:
        problem.outer(y).backward()
    except bilevel.SingularJacobianError as err:
        assert "ridge" in str(err)
        return
    # the gradient of one solution among many: the duplicate left at 0 is flagged on its kink
    kinks = [w for w in caught if issubclass(w.category, bilevel.KinkWarning)]
    assert kinks and "within 1.0e-11" in str(kinks[0].message)
