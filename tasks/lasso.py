"""Lasso: select the ℓ1 weight λ by implicit hypergradient descent on a validation loss.

Inner problem (n rows):  ``w*(λ) = argmin_w (1/2n)‖X w − y‖² + λ‖w‖₁``
    (sklearn's ``Lasso(alpha=λ)`` objective; features standardised, target centred on train).
Outer loss, over ``θ = log λ``:
    - ``cv_folds=K`` (default 5): the K-fold cross-validation loss on train ∪ validation,
      ``F = (1/K) Σ_k (1/2|V_k|)‖X_{V_k} w*_k − y_{V_k}‖²`` with one inner Lasso per fold
      (``tasks.crossval``; the folds of ``LassoCV(cv=K)``), then a refit on train ∪ validation;
    - ``cv_folds=null``: the inner problem on train, ``F(w) = (1/2n_v)‖X_v w − y_v‖²`` on the
      validation split.
Test metric: mean squared error on the test split (of the refit with ``cv_folds``).
Baseline: ``sklearn.linear_model.LassoCV`` (5-fold, a grid of 100 λ) fitted on train ∪ validation:
    with ``cv_folds=5`` both minimise the same criterion, the grid against the continuum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from sklearn.linear_model import LassoCV
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers import models
from solvers.base import InnerSolver
from tasks.base import Task, resolve_inner
from tasks.regression import load_regression


def build(
    dataset: str = "diabetes",
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    lam0_ratio: float = 0.1,
    cv_folds: int | None = 5,
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the Lasso task on a bundled scikit-learn regression dataset.

    Args:
        dataset: a bundled regression set, a generator or a file (``tasks.data.load``).
        val_fraction, test_fraction: split sizes (fractions of all rows).
        lam0_ratio: starting λ as a fraction of λ_max = ‖Xᵀy‖∞/n (all-zero solution above it).
        cv_folds: K of the K-fold criterion; ``None``: the single validation split.
        tol: inner solver tolerance (gradient-mapping norm).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            workingset | proxgrad, tol, maxiter.
        seed: split seed.
        dtype, device: where the computation runs.
    """
    r = load_regression(dataset, None, val_fraction, test_fraction, seed, dtype, device)
    t, lam_max = r.tensors, r.lam_max
    p = t.X_train.shape[1]

    how = resolve_inner(inner, "lasso", models.SOLVERS, tol)

    def make_solver(X: Tensor, y: Tensor) -> InnerSolver:
        return models.lasso(X, y, tol=how.tol, solver=how.solver, **how.options)  # λ = e^θ

    if cv_folds is None:
        inner, outer = make_solver(t.X_train, t.y_train), r.validation_loss
        y0, test_mse = torch.zeros(p, dtype=t.X_train.dtype, device=device), r.test_mse
    else:
        cv = r.cross_validation(cv_folds, make_solver)
        inner, outer = cv.inner, cv.outer
        y0 = torch.zeros(cv_folds, p, dtype=t.X_train.dtype, device=device)

        def test_mse(theta: Tensor, w: Tensor) -> float:
            return r.test_mse(theta, cv.refit(theta, w))

    def baseline() -> tuple[float, dict[str, float]]:
        error, model = r.baseline_mse(LassoCV(cv=5, fit_intercept=False, random_state=seed))
        return error, {"lambda": float(model.alpha_)}

    theta0 = torch.tensor(math.log(lam0_ratio * lam_max), dtype=t.X_train.dtype, device=device)
    problem = BilevelProblem(
        inner=inner,
        outer=outer,
        theta0=theta0,
        y0=y0,
        bounds=(math.log(lam_max) - 12 * math.log(10), math.log(lam_max)),
    )
    return Task(
        name="lasso",
        problem=problem,
        test_metric_name="test_mse",
        test_metric=test_mse,
        hyperparameters=lambda theta: {"lambda": float(theta.exp())},
        baseline_name="sklearn LassoCV (5-fold on train+validation)",
        baseline=baseline,
    )
