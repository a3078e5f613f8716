"""FixedPoint: every method on a contraction, batching, warm start, implicit derivatives
(central differences, dense reference, forward = reverse), divergence, validation, dtypes."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import bilevel
from solvers.base import DivergenceError, Structure
from solvers.fixed_point import FixedPoint
from tests.helpers import assert_directional

F64 = torch.float64
METHODS = ["picard", "km", "anderson", "broyden"]
N, K = 30, 5


@functools.cache
def _data(dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    """W symmetric random with spectral norm 0.9 (so its spectral radius is 0.9 too: a slow
    contraction for Picard), small U and c so that tanh works near its linear regime."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(N, N, generator=gen, dtype=F64)
    A = A + A.T
    W = 0.9 * A / torch.linalg.matrix_norm(A, 2)
    U = 0.3 * torch.randn(N, K, generator=gen, dtype=F64) / K**0.5
    c = 0.3 * torch.randn(N, generator=gen, dtype=F64)
    thetas = torch.randn(4, K, generator=gen, dtype=F64)
    target = torch.randn(N, generator=gen, dtype=F64)
    return tuple(t.to(dtype) for t in (W, U, c, thetas, target))


def T(y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``tanh(W y + U θ + c)``: a contraction in y (‖W‖ = 0.9, |tanh'| ≤ 1); batched rows."""
    W, U, c, _, _ = _data(y.dtype)
    return torch.tanh(y @ W.T + theta @ U.T + c)


def theta0() -> torch.Tensor:
    return _data()[3][0].clone()


def zeros(*shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


@functools.cache
def reference() -> torch.Tensor:
    """A long Picard run (contraction: error ≤ residual / 0.1)."""
    return FixedPoint(T, method="picard", tol=1e-15, maxiter=10_000).run(theta0(), zeros(N))


@functools.cache
def solved(method: str) -> tuple[torch.Tensor, int, float, bool]:
    solver = FixedPoint(T, method=method)
    y = solver.run(theta0(), zeros(N))
    return y, solver.info.iterations, solver.info.residual, solver.info.converged


def loss(y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((y - _data(y.dtype)[4]) ** 2).sum()


# -- solving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reaches_the_fixed_point(method):
    y, iterations, residual, converged = solved(method)
    assert converged and residual <= 1e-10 and iterations > 0
    r = (y - T(y, theta0())).abs().max() / (1 + y.abs().max())
    assert float(r) <= 1e-10
    assert torch.allclose(y, reference(), rtol=0, atol=1e-9)


def test_acceleration_needs_fewer_iterations_than_picard():
    its = {m: solved(m)[1] for m in METHODS}
    assert its["anderson"] < its["picard"], its
    assert its["broyden"] < its["picard"], its
    assert its["picard"] < its["km"], its  # damping 0.5 halves the contraction's progress


def anderson_by_the_book(y: torch.Tensor, theta: torch.Tensor, memory: int, steps: int,
                         regularization: float) -> torch.Tensor:
    """Type-II Anderson written out plainly: keep the last ``memory + 1`` pairs ``(f_i, g_i)``,
    difference them, solve the regularised normal equations, step to ``f − ΔF γ``."""
    f = T(y, theta)
    fs, gs = [f], [y - f]
    for _ in range(steps):
        if len(fs) == 1:
            y = fs[-1]
        else:
            dF = torch.stack(fs, 1).diff(dim=1)  # (n, m)
            dG = torch.stack(gs, 1).diff(dim=1)
            gram = dG.T @ dG
            lam = max(regularization, 10 * torch.finfo(y.dtype).eps) * gram.trace()
            gamma = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=y.dtype),
                                       dG.T @ gs[-1])
            y = fs[-1] - dF @ gamma
        f = T(y, theta)
        fs, gs = [*fs, f][-(memory + 1):], [*gs, y - f][-(memory + 1):]
    return y


@pytest.mark.parametrize("memory", [1, 2, 5])
def test_anderson_iterates_match_the_textbook_recursion(memory):
    """The ring buffer of differences gives the same iterates as re-stacking the history
    (8 steps: the buffer wraps around for memory < 8)."""
    solver = FixedPoint(T, method="anderson", memory=memory, maxiter=8, tol=1e-300)
    with pytest.warns(bilevel.ConvergenceWarning):
        y = solver.run(theta0(), zeros(N))
    ref = anderson_by_the_book(zeros(N), theta0(), memory, 8, solver.regularization)
    assert solver.info.iterations == 8
    assert torch.allclose(y, ref, rtol=0, atol=1e-12)
    assert float((ref - reference()).abs().max()) > 1e-8  # not yet converged: a real check


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_per_item_loop(method):
    thetas = _data()[3]
    solver = FixedPoint(T, method=method, batch_ndim=1)
    Y = solver.run(thetas, zeros(4, N))
    assert Y.shape == (4, N) and solver.info.converged
    for i in range(4):
        y = FixedPoint(T, method=method).run(thetas[i], zeros(N))
        assert torch.allclose(Y[i], y, rtol=0, atol=1e-9)


def test_batched_hypergradient_equals_per_item_loop():
    thetas = _data()[3].clone().requires_grad_(True)
    Y = bilevel.implicit_solve(FixedPoint(T, batch_ndim=1), thetas, zeros(4, N))
    sum(loss(Y[i]) for i in range(4)).backward()
    for i in range(4):
        t = thetas[i].detach().clone().requires_grad_(True)
        loss(bilevel.implicit_solve(FixedPoint(T), t, zeros(N))).backward()
        assert torch.allclose(thetas.grad[i], t.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_from_the_solution(method):
    solver = FixedPoint(T, method=method)
    y = solver.run(theta0(), reference().clone())
    assert solver.info.iterations <= 2 and solver.info.converged
    assert torch.allclose(y, reference(), rtol=0, atol=1e-9)


def test_run_builds_no_graph_and_module_maps_work():
    W, U, c, _, _ = _data()

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(N, N).to(F64)
            with torch.no_grad():
                self.lin.weight.copy_(W)
                self.lin.bias.copy_(c)

        def forward(self, y, theta):
            return torch.tanh(self.lin(y) + theta @ U.T)

    layer = Layer()
    solver = FixedPoint(layer)
    y = solver.run(theta0(), zeros(N))
    assert not y.requires_grad and y.grad_fn is None
    assert torch.allclose(y, reference(), rtol=0, atol=1e-9)
    assert solver.optimality(y, theta0()).requires_grad  # optimality is differentiable


def test_optimality_and_structure():
    solver = FixedPoint(T)
    y = reference()
    assert torch.allclose(solver.optimality(y, theta0()), y - T(y, theta0()))
    assert float(solver.optimality(y, theta0()).abs().max()) <= 1e-13
    s = solver.structure(y, theta0())
    assert s == Structure() and s.inactive is None and s.kink_distance is None
    assert solver.tol == 1e-10 and solver.batch_ndim == 0


# -- implicit derivatives --------------------------------------------------------------------


def test_hypergradient_matches_central_differences_and_dense_reference():
    solver = FixedPoint(T, tol=1e-14)
    init = zeros(N)
    theta = theta0().requires_grad_(True)
    adjoint = bilevel.ImplicitAdjoint()
    y = bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)
    loss(y).backward()
    assert adjoint.report.inner.converged and adjoint.report.n_kinks == 0

    def F(t):
        return float(loss(bilevel.implicit_solve(solver, t, init)))

    assert_directional(theta.grad, F, theta.detach(), h=1e-6, rtol=1e-6)
    # dense reference: dy*/dθ = (I − ∂yT)⁻¹ ∂θT at y*
    ys, t0 = y.detach(), theta.detach()
    Jy = torch.func.jacrev(T, argnums=0)(ys, t0)
    Jt = torch.func.jacrev(T, argnums=1)(ys, t0)
    dy = torch.linalg.solve(torch.eye(N, dtype=F64) - Jy, Jt)
    ref = dy.T @ (ys - _data()[4])
    assert torch.allclose(theta.grad, ref, rtol=1e-9, atol=1e-12)


def test_forward_mode_equals_reverse_mode():
    solver = FixedPoint(T, tol=1e-13)
    init = zeros(N)
    theta = theta0().requires_grad_(True)
    loss(bilevel.implicit_solve(solver, theta, init)).backward()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        d = torch.randn(K, generator=gen, dtype=F64)
        _, tangent = torch.func.jvp(lambda t: loss(bilevel.implicit_solve(solver, t, init)),
                                    (theta0(),), (d,))
        reverse = float(theta.grad @ d)
        assert abs(float(tangent) - reverse) <= 1e-10 * max(1.0, abs(reverse))


# -- divergence and non-convergence ----------------------------------------------------------


@pytest.mark.parametrize("method", ["picard", "km", "broyden"])
def test_expansive_affine_map_raises_divergence(method):
    solver = FixedPoint(lambda y, t: 2 * y + 1, method=method)
    with pytest.raises(DivergenceError, match="contraction") as err:
        solver.run(theta0(), zeros(N))
    assert method in str(err.value) and "iteration" in str(err.value)


def test_anderson_solves_the_expansive_affine_map():
    """y = 2y + 1 has the fixed point −1 and I − ∂yT = −I is invertible: Anderson (a secant
    method) finds it in a few steps, and that answer (and its implicit derivative) is valid."""
    solver = FixedPoint(lambda y, t: 2 * y + 1, method="anderson")
    y = solver.run(theta0(), zeros(N))
    assert solver.info.converged and solver.info.iterations <= 5
    assert torch.allclose(y, -torch.ones(N, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_map_without_fixed_point_raises_divergence(method):
    """exp(exp(y)) > y everywhere: no fixed point; every method blows up, none returns NaN."""
    solver = FixedPoint(lambda y, t: torch.exp(torch.exp(y)), method=method)
    with pytest.raises(DivergenceError, match="contraction"):
        solver.run(theta0(), zeros(N))
    assert not solver.info.converged
    with pytest.raises(DivergenceError, match="contraction"):
        bilevel.implicit_solve(solver, theta0(), zeros(N))


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_map_raises_divergence(method):
    """log(y) < y: no fixed point, and the iterates leave the domain of log (−inf / NaN)."""
    solver = FixedPoint(lambda y, t: torch.log(y), method=method)
    with pytest.raises(DivergenceError, match="non-finite"):
        solver.run(theta0(), torch.ones(N, dtype=F64))


@pytest.mark.parametrize("method", METHODS)
def test_maxiter_warns(method):
    solver = FixedPoint(T, method=method, maxiter=3)
    with pytest.warns(bilevel.ConvergenceWarning, match="FixedPoint"):
        y = solver.run(theta0(), zeros(N))
    assert solver.info.iterations == 3 and not solver.info.converged
    assert solver.info.residual > solver.tol and torch.isfinite(y).all()


# -- validation and dtypes -------------------------------------------------------------------


def test_init_none_and_nan_theta_name_the_argument():
    solver = FixedPoint(T)
    with pytest.raises(ValueError, match="init"):
        solver.run(theta0(), None)
    with pytest.raises(ValueError, match="init"):
        bilevel.implicit_solve(solver, theta0())
    bad = theta0()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="theta"):
        solver.run(bad, zeros(N))
    with pytest.raises(ValueError, match="theta"):
        bilevel.implicit_solve(solver, bad, zeros(N))
    nan_init = zeros(N)
    nan_init[0] = float("nan")
    with pytest.raises(ValueError, match="init"):
        solver.run(theta0(), nan_init)


def test_map_with_wrong_output_names_T():
    with pytest.raises(ValueError, match=r"T\(y, theta\)"):
        FixedPoint(lambda y, t: y[:-1]).run(theta0(), zeros(N))
    with pytest.raises(ValueError, match=r"T\(y, theta\)"):
        FixedPoint(lambda y, t: y.float()).run(theta0(), zeros(N))


@pytest.mark.parametrize("kwargs, name", [
    ({"method": "newton"}, "method"),
    ({"tol": 0.0}, "tol"),
    ({"maxiter": 0}, "maxiter"),
    ({"damping": 0.0}, "damping"),
    ({"damping": 1.5}, "damping"),
    ({"memory": 0}, "memory"),
    ({"regularization": -1.0}, "regularization"),
    ({"batch_ndim": -1}, "batch_ndim"),
])
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FixedPoint(T, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_float32_stays_float32(method):
    theta = theta0().float()
    solver = FixedPoint(T, method=method, tol=1e-5)
    y = solver.run(theta, zeros(N, dtype=torch.float32))
    assert y.dtype == torch.float32 and solver.info.converged
    assert torch.allclose(y.double(), reference(), rtol=0, atol=1e-4)
    y2 = bilevel.implicit_solve(solver, theta, zeros(N, dtype=torch.float32))
    assert y2.dtype == torch.float32


@pytest.mark.parametrize("keep_best", [False, True])
def test_unconverged_problem_returns_its_last_or_best_iterate(keep_best):
    """Row 0 contracts (``y = y/2 + 1``, converges), row 1 expands (``y = 2y + 1``: Picard's
    residual doubles each step, from 1 at the start ``y = 0``). At ``maxiter`` row 1 returns its
    last iterate ``2⁴ − 1``, or with ``keep_best`` the best point it visited (the start); row 0
    its last iterate either way (its residual decreases)."""

    def affine(y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return theta[:, :1] * y + 1.0

    theta = torch.tensor([[0.5], [2.0]], dtype=F64)
    solver = FixedPoint(affine, method="picard", maxiter=4, tol=1e-12, batch_ndim=1,
                        keep_best=keep_best)
    with pytest.warns(bilevel.ConvergenceWarning):
        y = solver.run(theta, zeros(2, 1))
    assert float(y[0, 0]) == 2.0 - 2.0 ** -3  # Picard from 0: y_k = 2 − 2^{1−k}
    if keep_best:
        assert float(y[1, 0]) == 0.0  # the start, residual 1 (the last iterate's is 16)
        assert solver.info.residual == pytest.approx(1.0)
    else:
        assert float(y[1, 0]) == 15.0
        assert solver.info.residual == pytest.approx(16.0 / 16.0)  # ‖g‖ / (1 + ‖y‖)


def test_layer_passes_keep_best_to_its_solver():
    from bilevel.layers import FixedPointLayer

    layer = FixedPointLayer(nn.Linear(3, 3), z_shape=(3,), keep_best=True)
    assert layer.solver.keep_best and not FixedPoint(T).keep_best
