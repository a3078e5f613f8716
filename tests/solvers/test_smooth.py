"""``Smooth``: logistic regressions against sklearn / scipy, implicit derivatives, failure modes."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression

import bilevel
import solvers.smooth
from solvers.smooth import Smooth
from tests.helpers import assert_directional

F64 = torch.float64


# -- problems -----------------------------------------------------------------------------------


@functools.cache
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=2000, n_features=22, n_informative=12,
                               weights=[0.9, 0.1], random_state=0)
    return (X - X.mean(0)) / X.std(0), y.astype(np.float64)


def binary_objective(X: torch.Tensor, y: torch.Tensor):
    """Mean log-loss + ½ Σ_j e^{θ_j} w_j² (no intercept), θ = log of the per-feature weights."""
    def f(w, theta):
        z = X @ w
        return (torch.nn.functional.softplus(z) - y * z).mean() + 0.5 * (theta.exp() * w * w).sum()
    return f


def binary(dtype=F64):
    X, y = binary_data()
    return torch.as_tensor(X, dtype=dtype), torch.as_tensor(y, dtype=dtype)


def binary_theta(dtype=F64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (np.log(1e-3) + torch.randn(22, generator=gen, dtype=F64)).to(dtype)


@functools.cache
def digits_data() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    scale = X[:1000].std(0)
    scale[scale == 0] = 1.0
    X = (X - X[:1000].mean(0)) / scale
    Y = np.eye(10)[y]
    return X[:1000], Y[:1000], X[1000:], Y[1000:]


def multinomial_objective(X: torch.Tensor, Y: torch.Tensor):
    """Mean multinomial log-loss of ``X @ W`` + ½ Σ_c e^{θ_c} ‖W[:, c]‖² (one weight per class)."""
    def f(W, theta):
        Z = X @ W
        return (torch.logsumexp(Z, 1) - (Y * Z).sum(1)).mean() + 0.5 * (theta.exp() * W * W).sum()
    return f


def digits_theta() -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return np.log(1e-2) + 0.5 * torch.randn(10, generator=gen, dtype=F64)


def log_loss(X: torch.Tensor, Y: torch.Tensor):
    return lambda W: (torch.logsumexp(X @ W, 1) - (Y * (X @ W)).sum(1)).mean()


# -- solutions against independent references -------------------------------------------------


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_binary_logistic_matches_sklearn(method):
    X, y = binary_data()
    n = X.shape[0]
    theta = binary_theta()
    lam = theta.exp().numpy()
    # n·ours = Σ_i ℓ(x_iᵀw) + ½ Σ_j nλ_j w_j²; with v_j = √(nλ_j) w_j and x̃_ij = x_ij / √(nλ_j)
    # this is sklearn's C Σ_i ℓ(x̃_iᵀv) + ½‖v‖² with C = 1, so w = v / √(nλ).
    # (solver="lbfgs" stops on sklearn's ftol = 64·eps at ‖∇f‖ ≈ 4e-8, i.e. 2e-7 from the
    # optimum here: newton-cholesky reaches the 1e-8 this test asks for.)
    scale = np.sqrt(n * lam)
    sk = LogisticRegression(fit_intercept=False, C=1.0, tol=1e-12, max_iter=10_000,
                            solver="newton-cholesky").fit(X / scale, y)
    w_ref = sk.coef_.ravel() / scale

    f = binary_objective(*binary())
    solver = Smooth(f, method=method, tol=1e-12, maxiter=1000)
    w = solver.run(theta, torch.zeros(22, dtype=F64))
    assert solver.info.converged and solver.info.residual <= 1e-12
    # the mapping is right: our gradient vanishes at sklearn's solution
    g_ref = solver.optimality(torch.as_tensor(w_ref), theta)
    assert float(g_ref.abs().max()) <= 1e-12
    assert np.abs(w.numpy() - w_ref).max() <= 1e-8


@functools.cache
def scipy_multinomial() -> np.ndarray:
    """The digits solution by scipy's L-BFGS-B at tight tolerance (an independent reference)."""
    X, Y, _, _ = digits_data()
    lam = digits_theta().exp().numpy()
    n, p = X.shape
    c = Y.shape[1]

    def fun(x):
        W = x.reshape(p, c)
        Z = X @ W
        value = -(Y * log_softmax(Z, 1)).sum() / n + 0.5 * (lam * W * W).sum()
        grad = X.T @ (softmax(Z, 1) - Y) / n + lam * W
        return value, grad.ravel()

    res = minimize(fun, np.zeros(p * c), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-14, "ftol": 0.0, "maxiter": 100_000, "maxcor": 30})
    return res.x.reshape(p, c)


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_multinomial_logistic_matches_scipy(method):
    X, Y, _, _ = digits_data()
    theta = digits_theta()
    W_ref = scipy_multinomial()
    f = multinomial_objective(torch.as_tensor(X), torch.as_tensor(Y))
    solver = Smooth(f, method=method, maxiter=2000)
    W = solver.run(theta, torch.zeros(64, 10, dtype=F64))
    assert W.shape == (64, 10) and solver.info.converged
    assert np.abs(W.numpy() - W_ref).max() <= 1e-7


def test_multinomial_hypergradient_matches_central_differences():
    X, Y, Xv, Yv = (torch.as_tensor(a) for a in digits_data())
    solver = Smooth(multinomial_objective(X, Y), tol=1e-12)
    outer = log_loss(Xv, Yv)
    init = torch.zeros(64, 10, dtype=F64)
    theta = digits_theta().requires_grad_(True)
    adjoint = bilevel.ImplicitAdjoint()
    outer(bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)).backward()
    assert adjoint.report.linear_solver == "cg"  # 640 unknowns, symmetric ∂yH
    W_star = bilevel.implicit_solve(solver, theta.detach(), init)

    def F(t):
        return float(outer(bilevel.implicit_solve(solver, t, W_star)))

    assert_directional(theta.grad, F, theta.detach(), h=1e-6, rtol=1e-5)


# -- derivatives ----------------------------------------------------------------------------------


def test_forward_mode_equals_reverse_mode():
    f = binary_objective(*binary())
    solver = Smooth(f, tol=1e-12)
    init = torch.zeros(22, dtype=F64)
    theta = binary_theta().requires_grad_(True)
    w = bilevel.implicit_solve(solver, theta, init)
    eye = torch.eye(22, dtype=F64)
    jac = torch.stack([torch.autograd.grad(w, theta, e, retain_graph=True)[0] for e in eye])
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(22, generator=gen, dtype=F64)
        _, w_dot = torch.func.jvp(lambda t: bilevel.implicit_solve(solver, t, init),
                                  (theta.detach(),), (v,))
        assert torch.allclose(w_dot, jac @ v, rtol=1e-10, atol=1e-10 * float(w_dot.abs().max()))


def test_cg_and_lu_adjoints_agree():
    X, y = binary()
    solver = Smooth(binary_objective(X, y), tol=1e-12)
    init = torch.zeros(22, dtype=F64)
    grads = {}
    for linear_solver in ("cg", "lu"):
        theta = binary_theta().requires_grad_(True)
        adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver)
        w = bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)
        (torch.nn.functional.softplus(X @ w) - y * (X @ w)).sum().backward()
        assert adjoint.report.linear_solver == linear_solver
        grads[linear_solver] = theta.grad
    scale = float(grads["lu"].abs().max())
    assert float((grads["cg"] - grads["lu"]).abs().max()) <= 1e-9 * scale


def test_last_newton_factor_preconditions_the_adjoint():
    """The auto adjoint reuses the Cholesky factor of the last Newton Hessian (taken one step
    before y*) for iterative refinement: two or three VJPs in all (each gives the residual and
    the θ-part together), same gradient as LU."""
    X, y = binary()
    solver = Smooth(binary_objective(X, y), tol=1e-12)
    init = torch.zeros(22, dtype=F64)
    grads, reports = {}, {}
    for linear_solver in ("auto", "lu"):
        theta = binary_theta().requires_grad_(True)
        adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver)
        w = bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)
        (torch.nn.functional.softplus(X @ w) - y * (X @ w)).sum().backward()
        grads[linear_solver], reports[linear_solver] = theta.grad, adjoint.report
    assert reports["auto"].linear_solver == "refinement"
    assert 1 <= reports["auto"].linear.iterations <= 3
    assert reports["auto"].linear.residual <= 1e-10
    scale = float(grads["lu"].abs().max())
    assert float((grads["auto"] - grads["lu"]).abs().max()) <= 1e-10 * scale
    # away from the point the last run returned there is no factor to offer
    assert solver.structure(w.detach() + 1e-3, binary_theta()).preconditioner is None


def test_newton_cg_matches_dense_newton_and_batches_match_loop():
    theta = binary_theta()
    f = binary_objective(*binary())
    init = torch.zeros(22, dtype=F64)
    dense = Smooth(f, tol=1e-12).run(theta, init)
    newton_cg = Smooth(f, tol=1e-12, dense_max=0).run(theta, init)
    assert torch.allclose(dense, newton_cg, rtol=0, atol=1e-10)
    # three binary problems with one scalar weight each, solved as one batch
    Xb, yb = binary()
    lams = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64)

    def batched(W, t):  # W: (3, 22), one value per problem
        Z = W @ Xb.T
        return ((torch.nn.functional.softplus(Z) - yb * Z).mean(-1)
                + 0.5 * t * (W * W).sum(-1))

    for method in ("newton", "lbfgs"):
        solver = Smooth(batched, method=method, batch_ndim=1, tol=1e-11, maxiter=1000)
        W = solver.run(lams, torch.zeros(3, 22, dtype=F64))
        for i, lam in enumerate(lams):
            single = Smooth(lambda w, t: batched(w[None], t)[0], tol=1e-11)
            assert torch.allclose(W[i], single.run(lam, torch.zeros(22, dtype=F64)), atol=1e-9)


def test_chord_steps_reach_the_newton_solution_with_fewer_hessians(monkeypatch):
    """reuse > 0: the Hessian factor is kept while it converges fast (chord steps), the solution
    is Newton's to tolerance, and a run depends on its arguments only (no state across runs)."""
    f = binary_objective(*binary())
    theta = binary_theta()
    built = []
    dense = solvers.smooth._Run._newton_dense
    monkeypatch.setattr(solvers.smooth._Run, "_newton_dense",
                        lambda run, g, it: built.append(it) or dense(run, g, it))
    w0 = Smooth(f, tol=1e-12).run(theta, torch.zeros(22, dtype=F64))
    solutions, hessians = {}, {}
    for reuse in (0.0, 0.1):
        solver = Smooth(f, tol=1e-12, reuse=reuse)
        built.clear()
        solutions[reuse] = solver.run(theta + 0.5, w0)  # warm start at a nearby θ (outer step)
        hessians[reuse] = len(built)
        assert solver.info.converged
        solver.run(theta - 1.0, w0)  # another run in between changes nothing
        assert torch.equal(solver.run(theta + 0.5, w0), solutions[reuse])
    assert torch.allclose(solutions[0.1], solutions[0.0], rtol=0, atol=1e-10)
    assert hessians[0.1] < hessians[0.0]
    with pytest.raises(ValueError, match="reuse"):
        Smooth(f, reuse=1.0)


# -- protocol and failure modes -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_warm_start_at_solution_takes_at_most_one_iteration(method):
    solver = Smooth(binary_objective(*binary()), method=method, maxiter=1000)
    theta = binary_theta()
    w = solver.run(theta, torch.zeros(22, dtype=F64))
    solver.run(theta, w)
    assert solver.info.iterations <= 1 and solver.info.converged


def test_maxiter_warns():
    solver = Smooth(binary_objective(*binary()), maxiter=1)
    with pytest.warns(bilevel.ConvergenceWarning, match="maxiter"):
        solver.run(binary_theta(), torch.zeros(22, dtype=F64))
    assert not solver.info.converged and solver.info.iterations == 1


@pytest.mark.parametrize("method, dense_max", [("newton", 200), ("newton", 0), ("lbfgs", 200)],
                         ids=["newton-dense", "newton-cg", "lbfgs"])
def test_nonconvex_objective_raises(method, dense_max):
    solver = Smooth(lambda y, t: -(y * y).sum() + t * y.sum(), method=method,
                    dense_max=dense_max)
    with pytest.raises(bilevel.DivergenceError, match="not convex"):
        solver.run(torch.tensor(1.0, dtype=F64), torch.ones(5, dtype=F64))


def test_invalid_inputs():
    f = binary_objective(*binary())
    theta = binary_theta()
    with pytest.raises(ValueError, match="init"):
        Smooth(f).run(theta)
    with pytest.raises(ValueError, match="NaN/Inf"):
        Smooth(f).run(torch.full((22,), float("nan"), dtype=F64), torch.zeros(22, dtype=F64))
    with pytest.raises(ValueError, match="method"):
        Smooth(f, method="bfgs")
    with pytest.raises(ValueError, match="tol"):
        Smooth(f, tol=0.0)


def test_float32_preserved():
    X, y = binary(torch.float32)
    theta = binary_theta(torch.float32)
    for method in ("newton", "lbfgs"):
        solver = Smooth(binary_objective(X, y), method=method, tol=1e-5, maxiter=500)
        with warnings.catch_warnings():
            warnings.simplefilter("error", bilevel.ConvergenceWarning)
            w = bilevel.implicit_solve(solver, theta, torch.zeros(22))
        assert w.dtype == torch.float32
        assert solver.structure(w, theta).symmetric
        assert float(solver.optimality(w, theta).abs().max()) <= 1e-5
