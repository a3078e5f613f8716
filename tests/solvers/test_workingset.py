"""The working-set solver against sklearn at tight tolerance, and its hypergradients."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression

import bilevel
from solvers import models
from tests.engine.problems import F64, diabetes, lambda_max, val_loss, wide
from tests.helpers import assert_directional

TIGHT = {"tol": 1e-14, "max_iter": 1_000_000, "fit_intercept": False}


@pytest.mark.parametrize("data, ratio", [(diabetes, 20), (wide, 10), (wide, 50)],
                         ids=["diabetes", "p>n", "p>n-small-lambda"])
def test_lasso_matches_sklearn_and_closed_form(data, ratio):
    X, y, Xv, yv = data()
    n = X.shape[0]
    lam = lambda_max(X, y) / ratio
    theta = torch.tensor(math.log(lam), dtype=F64, requires_grad=True)
    solver = models.lasso(X, y, tol=1e-12)
    adjoint = bilevel.ImplicitAdjoint()
    w = bilevel.implicit_solve(solver, theta, adjoint=adjoint)
    val_loss(Xv, yv)(w).backward()
    ref = Lasso(alpha=lam, **TIGHT).fit(X.numpy(), y.numpy()).coef_
    assert np.abs(w.detach().numpy() - ref).max() <= 1e-8 * max(1, np.abs(ref).max())
    w = w.detach()
    S = w != 0
    dw = -torch.linalg.solve(X[:, S].T @ X[:, S] / n, torch.sign(w[S]))
    expected = lam * float((Xv.T @ (Xv @ w - yv) / Xv.shape[0])[S] @ dw)
    assert abs(float(theta.grad) - expected) <= 1e-8 * abs(expected)
    assert adjoint.report.restricted_size == int(S.sum())
    assert adjoint.report.full_size == X.shape[1]


def test_weighted_lasso_matches_rescaled_sklearn_lasso():
    X, y, _, _ = diabetes()
    lam = torch.linspace(0.5, 3.0, X.shape[1], dtype=F64)
    w = models.lasso(X, y, tol=1e-12).run(lam.log())
    # Σ λ_j|w_j| = λ̄ Σ |v_j| with v_j = λ_j w_j / λ̄ and columns X_j λ̄ / λ_j
    scale = (lam.mean() / lam).numpy()
    v = Lasso(alpha=float(lam.mean()), **TIGHT).fit(X.numpy() * scale, y.numpy()).coef_
    assert np.abs(w.numpy() - v * scale).max() <= 1e-8 * np.abs(v).max()


def test_elastic_net_matches_sklearn():
    X, y, _, _ = diabetes()
    alpha, rho = 0.7, 0.6
    theta = torch.tensor([math.log(alpha * rho), math.log(alpha * (1 - rho))], dtype=F64)
    w = models.elastic_net(X, y, tol=1e-12).run(theta)
    ref = ElasticNet(alpha=alpha, l1_ratio=rho, **TIGHT).fit(X.numpy(), y.numpy()).coef_
    assert np.abs(w.numpy() - ref).max() <= 1e-8 * np.abs(ref).max()


def test_nonneg_lasso_matches_sklearn():
    X, y, _, _ = wide()
    lam = lambda_max(X, y) / 20
    w = models.nonneg_lasso(X, y, tol=1e-12).run(torch.tensor(math.log(lam), dtype=F64))
    ref = Lasso(alpha=lam, positive=True, **TIGHT).fit(X.numpy(), y.numpy()).coef_
    assert (w >= 0).all() and (w > 0).sum() >= 3
    assert np.abs(w.numpy() - ref).max() <= 1e-8 * np.abs(ref).max()


def _classification():
    X, y, Xv, yv = diabetes()
    return X, (y > 0).to(F64), Xv, (yv > 0).to(F64)


def test_sparse_logreg_matches_sklearn():
    X, y, _, _ = _classification()
    n = X.shape[0]
    C = 0.05
    # sklearn: ‖w‖₁ + C Σ loss  ⇔  (1/n) Σ loss + ‖w‖₁ / (C n)
    w = models.sparse_logreg(X, y, tol=1e-13).run(torch.tensor(math.log(1 / (C * n)), dtype=F64))
    ref = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", fit_intercept=False,
                             tol=1e-14, max_iter=100_000).fit(X.numpy(), y.numpy()).coef_[0]
    assert 0 < (w != 0).sum() < X.shape[1]
    assert np.abs(w.numpy() - ref).max() <= 1e-8 * np.abs(ref).max()


def _logistic_val(Xv, yv):
    return lambda w: torch.nn.functional.softplus(-(2 * yv - 1) * (Xv @ w)).mean()


@pytest.mark.parametrize("model, theta0, data, outer", [
    ("lasso", [-1.0, -3.0, -0.5, -2.0, -4.0, -1.5, -2.5, -3.5, -0.8, -1.2], diabetes, val_loss),
    ("elastic_net", [-0.5, -1.0], diabetes, val_loss),
    ("nonneg_lasso", [-0.3], diabetes, val_loss),
    ("sparse_logreg", [-4.0], _classification, _logistic_val),
], ids=["weighted_lasso", "elastic_net", "nonneg_lasso", "sparse_logreg"])
def test_hypergradient_matches_central_differences(model, theta0, data, outer):
    X, y, Xv, yv = data()
    solver = getattr(models, model)(X, y, tol=1e-13)
    F = outer(Xv, yv)
    theta = torch.tensor(theta0, dtype=F64, requires_grad=True)
    adjoint = bilevel.ImplicitAdjoint()
    F(bilevel.implicit_solve(solver, theta, adjoint=adjoint)).backward()
    assert adjoint.report.n_kinks == 0
    assert 0 < adjoint.report.restricted_size < X.shape[1]

    def value(t):
        with warnings.catch_warnings():
            warnings.simplefilter("error", bilevel.KinkWarning)
            return float(F(bilevel.implicit_solve(solver, t)))

    assert_directional(theta.grad, value, theta.detach(), h=1e-6, rtol=1e-6)


def test_reduced_and_full_mappings_give_the_same_derivatives():
    X, y, Xv, yv = wide()
    solver = models.lasso(X, y, tol=1e-12)
    theta = torch.full((X.shape[1],), math.log(lambda_max(X, y) / 10), dtype=F64)
    grads, tangents = [], []
    for restrict in (True, False):
        adjoint = bilevel.ImplicitAdjoint(restrict=restrict)
        t = theta.clone().requires_grad_(True)
        val_loss(Xv, yv)(bilevel.implicit_solve(solver, t, adjoint=adjoint)).backward()
        grads.append(t.grad)
        direction = torch.randn(theta.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
        tangents.append(torch.func.jvp(
            lambda t, a=adjoint: bilevel.implicit_solve(solver, t, adjoint=a), (theta,),
            (direction,)
        )[1])
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    assert torch.allclose(tangents[0], tangents[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sub_solver", ["auto", "torch"])  # the compiled loop, the torch one
def test_warm_start_and_convergence_warning(sub_solver):
    X, y, _, _ = wide()
    solver = models.lasso(X, y, tol=1e-12, sub_solver=sub_solver)
    theta = torch.tensor(math.log(lambda_max(X, y) / 30), dtype=F64)
    w = solver.run(theta)
    cold = solver.info.iterations
    solver.run(theta, w)
    assert solver.info.iterations == 0 < cold
    assert int((w != 0).sum()) == 4  # one working set of 2 features cannot solve it
    with pytest.warns(bilevel.ConvergenceWarning, match="residual"):
        models.lasso(X, y, tol=1e-12, maxiter=1, ws_start=2, sub_solver=sub_solver).run(theta)


def test_all_inactive_gives_zero_derivative():
    X, y, Xv, yv = diabetes()
    theta = torch.tensor(math.log(2 * lambda_max(X, y)), dtype=F64, requires_grad=True)
    w = bilevel.implicit_solve(models.lasso(X, y), theta)
    assert (w == 0).all()
    val_loss(Xv, yv)(w).backward()
    assert float(theta.grad) == 0.0


@pytest.mark.parametrize("X, y, match", [
    (torch.zeros(5, 3, dtype=F64), torch.zeros(4, dtype=F64), "y must"),
    (torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64), "2-D"),
    (torch.full((5, 3), float("nan"), dtype=F64), torch.zeros(5, dtype=F64), "NaN"),
    (torch.zeros(5, 3, dtype=F64), torch.zeros(5), "dtype|float32"),
])
def test_bad_data_is_an_error(X, y, match):
    with pytest.raises(ValueError, match=match):
        models.lasso(X, y).run(torch.tensor(0.0, dtype=F64))


def test_bad_penalty_parameters_are_errors():
    X, y, _, _ = diabetes()
    with pytest.raises(ValueError, match="one per feature"):
        models.lasso(X, y).run(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="labels"):
        models.sparse_logreg(X, y)


def test_matrix_free_path_for_large_working_sets_matches_sklearn():
    """Working sets above ``gram_max`` are solved without forming their Gram matrix."""
    X, y, Xv, yv = wide()
    alpha, rho = 0.5, 0.5
    theta = torch.tensor([math.log(alpha * rho), math.log(alpha * (1 - rho))], dtype=F64,
                         requires_grad=True)
    solver = models.elastic_net(X, y, tol=1e-12, gram_max=4)
    w = bilevel.implicit_solve(solver, theta)
    ref = ElasticNet(alpha=alpha, l1_ratio=rho, **TIGHT).fit(X.numpy(), y.numpy()).coef_
    assert (w != 0).sum() > 4
    assert np.abs(w.detach().numpy() - ref).max() <= 1e-8 * np.abs(ref).max()
    val_loss(Xv, yv)(w).backward()
    gram = models.elastic_net(X, y, tol=1e-12)
    t = theta.detach().clone().requires_grad_(True)
    val_loss(Xv, yv)(bilevel.implicit_solve(gram, t)).backward()
    assert torch.allclose(theta.grad, t.grad, rtol=1e-7)


@pytest.mark.parametrize("model, theta0", [
    ("lasso", [-2.0]), ("nonneg_lasso", [-2.0]), ("elastic_net", [1.0, -1.0]),
    ("elastic_net_per_feature", None),
])
def test_reduced_adjoint_is_one_vjp_with_the_exact_inverse(model, theta0):
    """For least squares the solver hands the engine ``B_SS⁻¹`` (Cholesky of ``(1 − s)I +
    sηG_SS = sη(G_SS + λ₂I)``, ``s`` the prox slope: the factor of the sub-solver's last exact
    solve): the hypergradient costs one VJP and equals LU's. A slope
    varying across features (per-feature ``λ₂``) makes ``B_SS`` non-symmetric: no hint then,
    and the same derivative from the engine's own solve."""
    X, y, Xv, yv = diabetes()
    p = X.shape[1]
    if model == "elastic_net_per_feature":
        solver = models.elastic_net(X, y, tol=1e-13, l1=lambda t: t[0].exp(),
                                    l2=lambda t: t[1:].exp())
        theta0 = [1.0, *torch.linspace(-2.0, 1.0, p).tolist()]
    else:
        solver = getattr(models, model)(X, y, tol=1e-13)
    grads, reports = {}, {}
    for linear_solver in ("auto", "lu"):
        theta = torch.tensor(theta0, dtype=F64, requires_grad=True)
        adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver)
        w = bilevel.implicit_solve(solver, theta, adjoint=adjoint)
        val_loss(Xv, yv)(w).backward()
        grads[linear_solver], reports[linear_solver] = theta.grad, adjoint.report
        if linear_solver == "auto" and model != "elastic_net_per_feature":
            # the hint is the factor of the sub-solver's last exact solve, on w's support
            assert solver._on_exact(w.detach().nonzero().flatten()) is not None
    auto = reports["auto"]
    assert 0 < auto.restricted_size < p and auto.full_size == p
    if model == "elastic_net_per_feature":
        assert auto.linear_solver == "lu"
    else:
        assert auto.linear_solver == "refinement" and auto.linear.iterations == 1
    assert torch.allclose(grads["auto"], grads["lu"], rtol=1e-10, atol=1e-14)


def test_gram_cache_grows_resets_and_matches_direct_products():
    """``_GramCache`` (the working sets' Gram matrix, grown by new columns only, reset past its
    cap) gives ``c X_WᵀX_W`` and ``X_W w_W`` exactly as formed directly."""
    from solvers.workingset import _GramCache

    X, _, _, _ = wide(n=30, p=80, seed=1)
    c = 0.7
    cache = _GramCache(X, lambda index: X[:, index], c)
    gen = torch.Generator().manual_seed(0)
    for size in (5, 12, 20, 33, 40, 7):  # overlapping sets; the cap (45) forces resets
        W = torch.randperm(X.shape[1], generator=gen)[:size].sort().values
        slots = cache.grow(W, 45)
        X_W = X[:, W]
        G = cache.matrix(slots)
        assert torch.allclose(G, c * X_W.T @ X_W, rtol=1e-13, atol=1e-12)
        assert torch.equal(cache.buffer[slots][:, slots], G)
        w_W = torch.randn(size, generator=gen, dtype=F64)
        assert torch.allclose(cache.product(w_W), X_W @ w_W, rtol=1e-13, atol=1e-12)
        assert cache._size <= 45 and int((cache._slot >= 0).sum()) == cache._size
    assert 0 < cache.col_sq <= float((X * X).sum(0).max()) * (1 + 1e-12)
