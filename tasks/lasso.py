"""Lasso: select the ℓ1 weight λ by implicit hypergradient descent on a validation loss.

Inner problem (train split, n rows):  ``w*(λ) = argmin_w (1/2n)‖X w − y‖² + λ‖w‖₁``
    (sklearn's ``Lasso(alpha=λ)`` objective; features standardised, target centred on train).
Outer loss (validation split):        ``F(w) = (1/2n_v)‖X_v w − y_v‖²``, over ``θ = log λ``.
Test metric: mean squared error on the test split.
Baseline: ``sklearn.linear_model.LassoCV`` (5-fold) fitted on train ∪ validation.
"""

from __future__ import annotations

import math

import torch
from sklearn.linear_model import LassoCV

from bilevel.outer import BilevelProblem
from solvers import models
from tasks.base import Task
from tasks.regression import load_regression


def build(
    dataset: str = "diabetes",
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    lam0_ratio: float = 0.1,
    tol: float = 1e-10,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the Lasso task on a bundled scikit-learn regression dataset.

    Args:
        dataset: a bundled regression set, a generator or a file (``tasks.data.load``).
        val_fraction, test_fraction: split sizes (fractions of all rows).
        lam0_ratio: starting λ as a fraction of λ_max = ‖Xᵀy‖∞/n (all-zero solution above it).
        tol: inner solver tolerance (gradient-mapping norm).
        seed: split seed.
        dtype, device: where the computation runs.
    """
    r = load_regression(dataset, None, val_fraction, test_fraction, seed, dtype, device)
    t, lam_max = r.tensors, r.lam_max
    p = t.X_train.shape[1]
    solver = models.lasso(t.X_train, t.y_train, tol=tol)  # working-set solver, λ = e^θ

    def baseline() -> tuple[float, dict[str, float]]:
        error, model = r.baseline_mse(LassoCV(cv=5, fit_intercept=False, random_state=seed))
        return error, {"lambda": float(model.alpha_)}

    theta0 = torch.tensor(math.log(lam0_ratio * lam_max), dtype=t.X_train.dtype, device=device)
    problem = BilevelProblem(
        inner=solver,
        outer=r.validation_loss,
        theta0=theta0,
        y0=torch.zeros(p, dtype=t.X_train.dtype, device=device),
        bounds=(math.log(lam_max) - 12 * math.log(10), math.log(lam_max)),
    )
    return Task(
        name="lasso",
        problem=problem,
        test_metric_name="test_mse",
        test_metric=r.test_mse,
        hyperparameters=lambda theta: {"lambda": float(theta.exp())},
        baseline_name="sklearn LassoCV (5-fold on train+validation)",
        baseline=baseline,
    )
