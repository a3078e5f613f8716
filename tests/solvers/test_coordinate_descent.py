"""The compiled coordinate descent of the working-set solver's quadratic models, against sklearn
at tight tolerance, on models as ill-conditioned as the working sets make them (more features
than samples: ``G`` singular); and the compiled working-set loop of least squares, against
sklearn, the torch loop and direct products for the Gram cache it leaves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet, Lasso

from solvers import models
from solvers.coordinate_descent import solve_quadratic
from solvers.penalties import L1
from tests.engine.problems import F64, lambda_max, wide

TIGHT = {"tol": 1e-14, "max_iter": 1_000_000, "fit_intercept": False}


def _model(n=40, p=120, seed=0, dtype=F64):
    """``G = XᵀX/n`` (rank ``n < p``) and ``b = Xᵀy/n``: ``½vᵀGv − bᵀv`` is sklearn's
    ``‖y − Xv‖²/(2n)`` up to a constant."""
    X, y, _, _ = wide(n=n, p=p, seed=seed)
    X, y = X.to(dtype), y.to(dtype)
    return X, y, X.T @ X / n, X.T @ y / n


def _solve(G, b, separable, tol=1e-12, slots=None, buffer=None):
    k = b.numel()
    slots = torch.arange(k) if slots is None else slots
    buffer = G if buffer is None else buffer
    # from v = 0 the gradient of ½vᵀGv − bᵀv is −b
    v, iterations, exact, linear = solve_quadratic(buffer, slots, -b, torch.zeros(k, dtype=b.dtype),
                                                   separable, tol, 100_000)
    assert torch.equal(linear, b)
    return v, iterations, exact


@pytest.mark.parametrize("penalty", ["lasso", "elastic_net", "nonneg"])
@pytest.mark.parametrize("ratio", [5, 50])
def test_matches_sklearn_on_a_singular_model(penalty, ratio):
    X, y, G, b = _model()
    lam = lambda_max(X, y) / ratio
    if penalty == "lasso":
        separable, ref = (lam, 0.0, False), Lasso(alpha=lam, **TIGHT)
    elif penalty == "nonneg":
        separable, ref = (lam, 0.0, True), Lasso(alpha=lam, positive=True, **TIGHT)
    else:  # sklearn: α ρ |w|₁ + α (1 − ρ)/2 ‖w‖²
        alpha, rho = 2 * lam, 0.5
        separable, ref = (alpha * rho, alpha * (1 - rho), False), \
            ElasticNet(alpha=alpha, l1_ratio=rho, **TIGHT)
    v, epochs, _ = _solve(G, b, separable)
    expected = ref.fit(X.numpy(), y.numpy()).coef_
    assert 0 < epochs < 100_000
    assert np.abs(v.numpy() - expected).max() <= 1e-8 * max(1.0, np.abs(expected).max())
    assert int((v != 0).sum()) == int((expected != 0).sum())


def test_per_feature_weights_meet_the_kkt_conditions():
    """Weighted ℓ1: the solution's KKT violation, as ``penalties.L1`` measures it in torch, is
    within the tolerance, and the support is not trivial."""
    X, y, G, b = _model(seed=1)
    lam = torch.linspace(0.2, 2.0, b.numel(), dtype=F64) * lambda_max(X, y) / 10
    v, _, _ = _solve(G, b, (lam, 0.0, False), tol=1e-11)
    params = {"l1": lam}
    assert float(L1().violation(v, G @ v - b, params).max()) <= 1e-11
    assert 0 < int((v != 0).sum()) < b.numel()


def test_exact_finish_returns_its_factor():
    """When an active-set round ends the solve, it hands back what it formed: the support,
    ``G_SS`` and the Cholesky factor of ``G_SS + λ₂I``; ``v`` is the exact solve on it."""
    X, y, G, b = _model()
    lam1, lam2 = lambda_max(X, y) / 20, 0.3
    v, _, exact = _solve(G, b, (lam1, lam2, False))
    assert exact is not None
    S = exact.support
    assert torch.equal(S, v.nonzero().flatten())
    assert torch.equal(exact.gram, G[S][:, S])
    system = G[S][:, S] + lam2 * torch.eye(S.numel(), dtype=F64)
    assert torch.allclose(exact.factor @ exact.factor.T, system, rtol=1e-12, atol=1e-13)
    expected = torch.linalg.solve(system, b[S] - lam1 * torch.sign(v[S]))
    assert torch.allclose(v[S], expected, rtol=1e-10, atol=1e-13)


def test_slots_index_a_larger_buffer():
    """The model's matrix is read through ``slots`` from a buffer with more (and permuted)
    features, as the working set's Gram cache holds it: same solution as on ``G`` itself."""
    X, y, G, b = _model(p=60)
    lam = lambda_max(X, y) / 10
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(90, generator=gen)
    buffer = torch.randn(90, 90, generator=gen, dtype=F64)  # other features: never read
    slots = order[:60]
    buffer[slots[:, None], slots] = G
    direct, _, _ = _solve(G, b, (lam, 0.0, False))
    through, _, _ = _solve(G, b, (lam, 0.0, False), slots=slots, buffer=buffer)
    assert torch.equal(direct, through)


def test_float32_stays_float32():
    X, y, G, b = _model(dtype=torch.float32)
    lam = lambda_max(X.double(), y.double()) / 10
    v, _, _ = _solve(G, b, (lam, 0.0, False), tol=1e-4)
    expected = Lasso(alpha=lam, **TIGHT).fit(X.double().numpy(), y.double().numpy()).coef_
    assert v.dtype == torch.float32
    assert np.abs(v.double().numpy() - expected).max() <= 1e-3 * np.abs(expected).max()


def test_epoch_cap_returns_the_iterate_without_a_factor():
    X, y, G, b = _model()
    lam = lambda_max(X, y) / 50
    v, epochs, exact, _ = solve_quadratic(G, torch.arange(b.numel()), -b, torch.zeros_like(b),
                                          (lam, 0.0, False), 1e-12, 2)
    assert epochs <= 2 + 3 and exact is None and bool(torch.isfinite(v).all())


@pytest.mark.parametrize("penalty", ["lasso", "elastic_net", "nonneg"])
def test_columns_variant_matches_sklearn(penalty):
    """Coordinate descent on the columns themselves (working sets too large for their Gram
    matrix, here all of them: ``gram_max`` 4), with ``s = F'(Xv) = (Xv − y)/n`` kept up to
    date: sklearn's solution."""
    X, y, _, _ = _model()
    lam = lambda_max(X, y) / 20
    model, theta = {"lasso": (models.lasso, [lam]), "nonneg": (models.nonneg_lasso, [lam]),
                    "elastic_net": (models.elastic_net, [lam, lam])}[penalty]
    ref = {"lasso": Lasso(alpha=lam, **TIGHT), "nonneg": Lasso(alpha=lam, positive=True, **TIGHT),
           "elastic_net": ElasticNet(alpha=2 * lam, l1_ratio=0.5, **TIGHT)}[penalty]
    solver = model(X, y, tol=1e-12, gram_max=4)
    w = solver.run(torch.tensor(theta, dtype=F64).log().squeeze())
    expected = ref.fit(X.numpy(), y.numpy()).coef_
    assert solver.info.converged and solver._gram[0] is None  # no Gram matrix was formed
    assert np.abs(w.numpy() - expected).max() <= 1e-8 * max(1.0, np.abs(expected).max())


def test_working_set_past_gram_max_matches_sklearn():
    """Working sets larger than ``gram_max`` are solved on their columns (compiled on the CPU,
    FISTA with ``sub_solver="torch"``): both give sklearn's elastic net."""
    X, y, _, _ = wide(n=40, p=300, seed=3)
    lam = lambda_max(X, y) / 30
    theta = torch.tensor([math.log(lam), math.log(lam)], dtype=F64)
    expected = ElasticNet(alpha=2 * lam, l1_ratio=0.5, **TIGHT).fit(X.numpy(), y.numpy()).coef_
    for sub_solver in ("auto", "torch"):
        solver = models.elastic_net(X, y, tol=1e-11, gram_max=16, sub_solver=sub_solver)
        w = solver.run(theta)
        assert solver.n_working_sets > 1 and int((w != 0).sum()) > 32  # |W| = 2|S| > gram_max
        assert np.abs(w.numpy() - expected).max() <= 1e-8 * np.abs(expected).max(), sub_solver


def test_working_set_sub_solvers_agree():
    """The working-set solver gives the same Lasso compiled (the default on the CPU: the whole
    loop, ``solve_least_squares``) and in torch (the GPU's loop and sub-solver), where the
    working sets outgrow the samples."""
    X, y, _, _ = wide(n=40, p=300, seed=2)
    theta = torch.tensor(math.log(lambda_max(X, y) / 1000), dtype=F64)
    compiled = models.lasso(X, y, tol=1e-11)
    w = compiled.run(theta)
    w_torch = models.lasso(X, y, tol=1e-11, sub_solver="torch").run(theta)
    expected = Lasso(alpha=math.exp(float(theta)), **TIGHT).fit(X.numpy(), y.numpy()).coef_
    assert int((w != 0).sum()) > 30  # working sets of 2|S| > n features
    assert np.abs(w.numpy() - expected).max() <= 1e-8 * np.abs(expected).max()
    assert torch.allclose(w, w_torch, rtol=0, atol=1e-8 * float(w.abs().max()))


def test_unknown_sub_solver_is_refused():
    X, y, _, _ = wide()
    with pytest.raises(ValueError, match="sub_solver"):
        models.lasso(X, y, sub_solver="cd")


def test_compiled_loop_leaves_the_gram_cache_as_the_torch_loop_would():
    """The compiled loop of least squares grows the solver's Gram cache in place; along a
    warm-started λ path (working sets past ``gram_max`` 16 too) every run leaves the state the
    reduced mapping reads: ``G = X_WᵀX_W/n`` and ``b = X_Wᵀy/n`` on the last Gram working
    set, the exact solve's factor of ``G_SS``; and the torch loop's solution."""
    X, y, _, _ = wide(n=30, p=80, seed=1)
    n = X.shape[0]
    compiled = models.lasso(X, y, tol=1e-12, gram_max=16)
    reference = models.lasso(X, y, tol=1e-12, gram_max=16, sub_solver="torch")
    w = w_ref = None
    sizes, exact = set(), 0
    for ratio in (2, 4, 8, 16, 3, 40):
        theta = torch.tensor(math.log(lambda_max(X, y) / ratio), dtype=F64)
        w, w_ref = compiled.run(theta, w), reference.run(theta, w_ref)
        assert compiled.info.converged
        assert torch.allclose(w, w_ref, rtol=0, atol=1e-9 * float(w_ref.abs().max()))
        cache = compiled._cache
        assert cache._size <= 64 and int((cache._slot >= 0).sum()) == cache._size
        sizes.add(cache._size)
        W, slots, b = compiled._gram
        X_W = X[:, W]
        assert torch.allclose(cache.matrix(slots), X_W.T @ X_W / n, rtol=1e-13, atol=1e-13)
        assert torch.allclose(b, X_W.T @ y / n, rtol=1e-13, atol=1e-13)
        if compiled._exact is not None:
            exact += 1
            S, G_SS, b_S, factor = compiled._exact
            assert torch.equal(S, torch.nonzero(w).flatten())
            assert torch.allclose(factor @ factor.T, X[:, S].T @ X[:, S] / n, atol=1e-13)
    assert len(sizes) > 1 and exact > 1  # the cache grew; exact solves ended runs


def test_compiled_gram_growth_reallocates_and_resets():
    """The compiled loop's growth of the Gram cache (``coordinate_descent._grow``) on random
    overlapping working sets: the buffers double past their capacity (256) and the cache
    resets past its cap (400), and the cache then gives ``c X_WᵀX_W`` and ``X_W w_W``."""
    from solvers.coordinate_descent import _grow
    from solvers.workingset import _GramCache

    X, _, _, _ = wide(n=20, p=700, seed=4)
    c = 0.3
    cache = _GramCache(X, lambda index: X[:, index], c)
    gen = torch.Generator().manual_seed(0)
    capacities = set()
    for size in (100, 200, 300, 150, 260):
        W = torch.randperm(X.shape[1], generator=gen)[:size].sort().values
        Xt, G, slot, count = cache.arrays()
        Xt, G, count = _grow(X.numpy(), c, W.numpy(), Xt, G, slot, count, 400)
        slots = torch.from_numpy(slot[W.numpy()])
        cache.adopt(Xt, G, count, slots)
        X_W = X[:, W]
        assert torch.allclose(cache.matrix(slots), c * X_W.T @ X_W, rtol=1e-13, atol=1e-12)
        w_W = torch.randn(size, generator=gen, dtype=F64)
        assert torch.allclose(cache.product(w_W), X_W @ w_W, rtol=1e-13, atol=1e-12)
        assert cache._size <= 400 and int((cache._slot >= 0).sum()) == cache._size
        if size == 300:
            assert cache._size == 300  # 300 + |C| > 400: reset to C = W
        capacities.add(Xt.shape[0])
    assert capacities == {256, 512}


def test_compiled_loop_refuses_non_finite_data():
    X, y, _, _ = wide()
    X = X.clone()
    X[3, 7] = math.inf
    with pytest.raises(ValueError, match="non-finite gradient"):
        models.lasso(X, y).run(torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match="non-finite gradient"):  # infeasible start
        models.nonneg_lasso(*wide()[:2]).run(torch.tensor(0.0, dtype=F64),
                                             -torch.ones(X.shape[1], dtype=F64))
