"""Precision control (bilevel.precision, ImplicitGD's hypergrad_rtol / hypergrad_atol).

References are independent of the engine: the ridge hypergradient and the Lasso hypergradient
on the support in closed form (numpy-free torch linear algebra on the exact solution), θ* of
a one-dimensional ridge problem by a bounded scalar minimisation of the closed-form h.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy.optimize import minimize_scalar

import bilevel
from bilevel.outer import BilevelProblem, ImplicitGD, run_outer
from bilevel.outer.checkpoint import RunRecord, load_checkpoint, restore_state, save_checkpoint
from bilevel.outer.optim import make_optimizer, set_lr
from bilevel.outer.schedules import StepSize
from bilevel.outer.stochastic import project_theta
from bilevel.precision import (
    PrecisionControl,
    calibrate,
    inner_tolerance,
    ladder,
    validate,
)
from solvers import ProxGrad, models, prox
from solvers.qp.qp import QP
from solvers.smooth import Smooth

F64 = torch.float64


# -- problems with closed-form hypergradients ---------------------------------------------------

def ridge_data(n=50, p=20, seed=0):
    """Correlated columns, so that L-BFGS needs many iterations and tol matters."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(2 * n, 3, generator=gen, dtype=F64)
    X_all = base @ torch.randn(3, p, generator=gen, dtype=F64) + 0.3 * torch.randn(
        2 * n, p, generator=gen, dtype=F64)
    w_true = torch.randn(p, generator=gen, dtype=F64)
    y_all = X_all @ w_true + 0.5 * torch.randn(2 * n, generator=gen, dtype=F64)
    return X_all[:n], y_all[:n], X_all[n:], y_all[n:]


def ridge_closed_form(X, y, Xv, yv, theta):
    """(h(θ), ∇h(θ)) for w*(θ) = argmin ½ mean (Xw − y)² + ½ Σ e^θ w²  (θ scalar or per feature)."""
    n, p = X.shape
    lam = theta.exp() * torch.ones(p, dtype=F64)
    A = X.T @ X / n + torch.diag(lam)
    w = torch.linalg.solve(A, X.T @ y / n)
    r = Xv @ w - yv
    grad = -lam * w * torch.linalg.solve(A, Xv.T @ r / len(yv))
    return float(0.5 * (r * r).mean()), grad.sum() if theta.ndim == 0 else grad


def ridge_solver(X, y, tol, method="lbfgs"):
    def f(w, t):
        return 0.5 * ((X @ w - y) ** 2).mean() + 0.5 * (t.exp() * w * w).sum()
    return Smooth(f, method=method, tol=tol, maxiter=10_000)


def lasso_data(n=60, p=120, seed=1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * n, p, generator=gen, dtype=F64)
    w_true = torch.zeros(p, dtype=F64)
    w_true[:6] = torch.randn(6, generator=gen, dtype=F64) * 3
    y = X @ w_true + 0.5 * torch.randn(2 * n, generator=gen, dtype=F64)
    return X[:n], y[:n], X[n:], y[n:]


def lasso_closed_form(X, y, Xv, yv, lam):
    """∇h on the support of the exact solution: λ ∇F(w)_Sᵀ (−(X_SᵀX_S/n)⁻¹ sign(w_S))."""
    n = X.shape[0]
    w = models.lasso(X, y, tol=1e-13).run(torch.tensor(math.log(lam), dtype=F64))
    S = w != 0
    dw = -torch.linalg.solve(X[:, S].T @ X[:, S] / n, torch.sign(w[S]))
    return lam * (Xv.T @ (Xv @ w - yv) / len(yv))[S] @ dw


def fista(X, y, tol):
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                    lambda v, t, step: prox.l1(v, step * t.exp()), tol=tol, maxiter=100_000)


def hypergradient(solver, theta, init, outer):
    th = theta.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.KinkWarning)
        w = bilevel.implicit_solve(solver, th, init)
    (g,) = torch.autograd.grad(outer(w), th)
    return g


def calibrated(solver, theta, init, outer):
    th = theta.clone().requires_grad_(True)

    def at(y_init):
        w = bilevel.implicit_solve(solver, th, y_init)
        (g,) = torch.autograd.grad(outer(w), th)
        return g, w.detach()

    return calibrate(solver, at, init, tol_max=1e-2, tol_min=1e-12)


# -- the rule's arithmetic ----------------------------------------------------------------------

def test_targets_relative_absolute_summable_and_the_smaller_of_both():
    assert PrecisionControl(rtol=0.1).target(7, 50.0) == pytest.approx(5.0)
    assert PrecisionControl(atol=1e-3).target(7, 50.0) == pytest.approx(1e-3)
    assert PrecisionControl(atol=1e-3, decay=1.5).target(3, 50.0) == pytest.approx(1e-3 / 8)
    both = PrecisionControl(rtol=0.1, atol=1.0)
    assert both.target(0, 50.0) == pytest.approx(1.0)  # min(5, 1)
    assert both.target(0, 2.0) == pytest.approx(0.2)  # min(0.2, 1)


def test_tolerance_is_delta_over_safety_times_constant_clipped():
    ctrl = PrecisionControl(rtol=0.1, tol_min=1e-12, tol_max=1e-2, safety=10.0)
    assert ctrl.tolerance(1e-3, 2.0) == pytest.approx(5e-5)  # 1e-3 / (10 · 2)
    assert ctrl.tolerance(1e3, 2.0) == 1e-2  # clipped above
    assert ctrl.tolerance(1e-20, 2.0) == 1e-12  # clipped below
    assert ctrl.tolerance(1e-3, 0.0) == 1e-2  # no measurable error: the loosest
    assert ctrl.tolerance(0.0, 2.0) == 1e-12  # a zero hypergradient asks for the most


def test_calibration_schedule_and_trust_range():
    ctrl = PrecisionControl(rtol=0.1, calibrate_every=5, tol_min=1e-12)
    assert ctrl.due(0, -1) and ctrl.due(13, 8) and not ctrl.due(12, 8)
    assert not PrecisionControl(rtol=0.1, calibrate_every=0).due(1000, 0)
    assert ctrl.trusted(9e-6, 1e-6) and not ctrl.trusted(1.1e-5, 1e-6)
    assert ctrl.trusted(9e-12, 1e-16)  # below tol_min the floor is tol_min
    assert ladder(1e-2, 1e-12) == pytest.approx([1e-2, 1e-5, 1e-8])
    assert ladder(1e-4, 1e-6) == [1e-4]


@pytest.mark.parametrize(("option", "value"), [
    ("hypergrad_rtol", 0.0), ("hypergrad_rtol", -0.1), ("hypergrad_rtol", math.nan),
    ("hypergrad_rtol", 1.0), ("hypergrad_rtol", math.inf), ("hypergrad_atol", 0.0),
    ("hypergrad_atol", math.nan), ("hypergrad_atol", -1e-3), ("hypergrad_decay", -1.0),
    ("hypergrad_decay", math.nan), ("inner_tol_min", 0.0), ("inner_tol_max", math.nan),
    ("tol_safety", 0.0), ("calibrate_every", -1), ("calibrate_every", 2.5),
])
def test_bad_options_are_errors_naming_them(option, value):
    base = {} if option in ("hypergrad_rtol", "hypergrad_atol") else {"hypergrad_rtol": 0.1}
    with pytest.raises(ValueError, match=option):
        ImplicitGD(**base, **{option: value})


def test_inconsistent_bounds_and_missing_target_are_errors():
    with pytest.raises(ValueError, match="inner_tol_min .* inner_tol_max"):
        ImplicitGD(hypergrad_rtol=0.1, inner_tol_min=1e-3, inner_tol_max=1e-6)
    with pytest.raises(ValueError, match="rtol or atol"):
        PrecisionControl()
    with pytest.raises(ValueError, match="tol_safety"):  # checked even with the control off
        ImplicitGD(tol_safety=math.nan)
    validate({"rtol": None, "atol": None, "decay": 0.0, "tol_min": 1e-12, "tol_max": 1e-2,
              "safety": 10.0, "calibrate_every": 10}, need_target=False)


# -- setting a solver's tolerance -----------------------------------------------------------------

def test_inner_tolerance_sets_and_restores_even_on_error():
    X, y, _, _ = ridge_data()
    solver = ridge_solver(X, y, 1e-10)
    with inner_tolerance(solver, 1e-3):
        solver.run(torch.tensor(0.0, dtype=F64), torch.zeros(X.shape[1], dtype=F64))
        assert solver.info.tol == 1e-3 and solver.info.residual <= 1e-3
    assert solver.tol == 1e-10
    with pytest.raises(RuntimeError), inner_tolerance(solver, 1e-4):
        raise RuntimeError
    assert solver.tol == 1e-10
    with pytest.raises(TypeError, match="no `tol` attribute"), inner_tolerance(object(), 1e-3):
        pass


def test_qp_tolerance_reaches_its_backend():
    qp = QP(tol=1e-9)
    with inner_tolerance(qp, 1e-5):
        assert qp.tol == 1e-5 and qp._native.tol == 1e-5
    assert qp.tol == 1e-9 and qp._native.tol == 1e-9


# -- the derived tolerance meets the requested precision --------------------------------------

@pytest.mark.parametrize("rho", [1e-2, 1e-4, 1e-6, 1e-8])
def test_lasso_error_at_derived_tolerance_is_within_delta(rho):
    X, y, Xv, yv = lasso_data()
    lam = float((X.T @ y).abs().max()) / X.shape[0] / 5
    theta = torch.tensor(math.log(lam), dtype=F64)
    init = torch.zeros(X.shape[1], dtype=F64)

    def outer(w):
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    ref = lasso_closed_form(X, y, Xv, yv, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.KinkWarning)
        cal = calibrated(fista(X, y, 1e-10), theta, init, outer)
    assert cal.constant > 0  # FISTA's error is measurable at loose tolerances
    delta = rho * float(ref.abs())
    eps = PrecisionControl(rtol=rho).tolerance(rho * float(cal.grad.abs()), cal.constant)
    error = float((hypergradient(fista(X, y, eps), theta, init, outer) - ref).abs())
    assert error <= delta
    loose = float((hypergradient(fista(X, y, 1e-2), theta, init, outer) - ref).abs())
    if loose > delta:  # not vacuous: the loosest solve misses δ, the rule tightened
        assert eps < 1e-2


@pytest.mark.parametrize("rho", [1e-2, 1e-5, 1e-8])
def test_smooth_error_at_derived_tolerance_is_within_delta(rho):
    X, y, Xv, yv = ridge_data()
    theta = torch.linspace(-3.0, 0.0, X.shape[1], dtype=F64)
    init = torch.zeros(X.shape[1], dtype=F64)

    def outer(w):
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    _, ref = ridge_closed_form(X, y, Xv, yv, theta)
    cal = calibrated(ridge_solver(X, y, 1e-10), theta, init, outer)
    assert cal.constant > 0
    assert float(torch.linalg.vector_norm(cal.grad - ref)) <= 1e-9 * float(ref.norm())
    g_norm = float(torch.linalg.vector_norm(cal.grad))
    eps = PrecisionControl(rtol=rho).tolerance(rho * g_norm, cal.constant)
    error = float(torch.linalg.vector_norm(
        hypergradient(ridge_solver(X, y, eps), theta, init, outer) - ref))
    assert error <= rho * float(ref.norm())
    loose = float(torch.linalg.vector_norm(
        hypergradient(ridge_solver(X, y, 1e-2), theta, init, outer) - ref))
    assert loose > rho * float(ref.norm())  # at the loosest tolerance the target is missed
    assert eps < 1e-2


# -- ImplicitGD ---------------------------------------------------------------------------------

def ridge_problem(tol, method="lbfgs", theta0=1.0):
    X, y, Xv, yv = ridge_data()
    return BilevelProblem(
        inner=ridge_solver(X, y, tol, method),
        outer=lambda w, t: 0.5 * ((Xv @ w - yv) ** 2).mean(),
        theta0=torch.tensor(theta0, dtype=F64), y0=torch.zeros(X.shape[1], dtype=F64),
        bounds=(-10.0, 5.0)), (X, y, Xv, yv)


def test_implicit_gd_with_precision_control_reaches_theta_star():
    """Same SGD on θ = log λ from θ₀ = −3 (h'' ≈ 0.06 near θ* ≈ −4.32, lr 10): with
    ``hypergrad_rtol=0.1`` (L-BFGS inner solves, loose at first) and with exact inner solves
    (Newton at tol 1e-10); both end at θ* of the closed-form h."""
    _, data = ridge_problem(1e-10)
    theta_star = minimize_scalar(
        lambda t: ridge_closed_form(*data, torch.tensor(t, dtype=F64))[0],
        bounds=(-10.0, 5.0), method="bounded", options={"xatol": 1e-12}).x
    runs = {}
    for label, method, opts in [("fixed", "newton", {}),
                                ("controlled", "lbfgs", {"hypergrad_rtol": 0.1})]:
        problem, _ = ridge_problem(1e-10, method, theta0=-3.0)
        gd = ImplicitGD(optimizer="sgd", lr=10.0, **opts)
        state = gd.init(problem)
        rows = [gd.step(problem, state) for _ in range(20)]
        runs[label] = (float(state.theta.detach()), rows, problem.inner.tol)
    for theta, _, tol in runs.values():
        assert abs(theta - theta_star) <= 1e-5
        assert tol == 1e-10  # the solver's own tolerance is left as it was
    assert abs(runs["controlled"][0] - runs["fixed"][0]) <= 1e-5
    rows = runs["controlled"][1]
    assert max(r["inner_tol"] for r in rows) > 1e-6  # it did solve loosely
    assert rows[0]["inner_tol"] == 1e-12  # the first step measures Ĉ at the reference
    for r in rows:  # the bound it reports never exceeds the precision asked of that step
        if r["step"] > 0 and r["inner_tol"] > 1e-12:
            previous = rows[r["step"] - 1]["hypergrad_norm"]
            assert r["hypergrad_error_bound"] <= 0.1 * previous * (1 + 1e-12)


def test_implicit_gd_hypergradients_meet_the_asked_precision_step_by_step():
    problem, data = ridge_problem(1e-10)
    method = ImplicitGD(optimizer="sgd", lr=0.5, hypergrad_rtol=0.05, calibrate_every=0)
    state = method.init(problem)
    for _ in range(8):
        theta = state.theta.detach().clone()
        norm_before = state.extra["precision_grad_norm"]
        method.step(problem, state)
        _, ref = ridge_closed_form(*data, theta)
        grad = -(state.theta.detach() - theta) / 0.5  # SGD: θ⁺ = θ − lr·g (no projection hit)
        if math.isfinite(norm_before):
            assert abs(float(grad - ref)) <= 0.05 * norm_before


def test_default_is_bit_identical_to_the_plain_loop():
    """ImplicitGD() without the option against the loop it ran before precision control."""
    problem, _ = ridge_problem(1e-10, method="newton")
    result = run_outer(ImplicitGD(optimizer="adam", lr=0.1), problem, 6)
    assert "inner_tol" not in result.history[0]

    reference, _ = ridge_problem(1e-10, method="newton")
    theta = reference.theta0.detach().clone().requires_grad_(True)
    y = reference.y0.clone()
    opt, schedule, adjoint = make_optimizer("adam", theta, 0.1), StepSize(0.1, 0.0, "lr"), \
        bilevel.ImplicitAdjoint()
    thetas = []
    for k in range(6):
        thetas.append(theta.detach().clone())
        opt.zero_grad()
        w = bilevel.implicit_solve(reference.inner, theta, y, adjoint=adjoint)
        reference.outer(w, theta).backward()
        set_lr(opt, schedule, k)
        opt.step()
        with torch.no_grad():
            theta.copy_(project_theta(theta, reference))
        y = w.detach()
    for row, t in zip(result.history, thetas, strict=True):
        assert row["theta_0"] == float(t)


def test_controlled_run_resumes_bit_identically(tmp_path):
    problem, _ = ridge_problem(1e-10)
    method = ImplicitGD(optimizer="adam", lr=0.1, hypergrad_rtol=0.1, calibrate_every=3)
    state = method.init(problem)
    for _ in range(4):
        method.step(problem, state)
    save_checkpoint(tmp_path / "c.pt", state, RunRecord())
    rows = [method.step(problem, state) for _ in range(3)]

    problem2, _ = ridge_problem(1e-10)
    fresh = method.init(problem2)
    restore_state(fresh, load_checkpoint(tmp_path / "c.pt"))
    rows2 = [method.step(problem2, fresh) for _ in range(3)]
    assert rows2 == rows
    assert torch.equal(fresh.theta.detach(), state.theta.detach())
