"""Weighted Lasso: one ℓ1 weight per feature, selected by implicit hypergradient descent.

Inner problem (train split, n rows, p features):
    ``w*(θ) = argmin_w (1/2n)‖X w − y‖² + Σ_j λ_j |w_j|``,  ``λ_j = e^{θ_j}``
    (features standardised, target centred on train; ``solvers.models.lasso`` with a vector θ).
    The solution map is piecewise smooth: it has kinks where a coefficient enters or leaves the
    support (``|x_jᵀ(y − Xw)|/n = λ_j``); off the support ``∂w_j/∂θ = 0``, so a feature set to
    zero keeps its λ_j (its hypergradient is 0).
Outer loss (validation split): ``F(w) = (1/2n_v)‖X_v w − y_v‖²`` over ``θ ∈ R^p``, started at
    ``θ_j = log(lam0_ratio · λ_max)`` for every j.
Test metric: mean squared error on the test split.
Extra metrics: number of nonzero coefficients.
Baseline: ``sklearn.linear_model.LassoCV`` (one λ, 5-fold) fitted on train ∪ validation.

Default data: ``sparse_regression`` (1,000 rows, 100 correlated features, 10 of them carrying a
±1 signal, SNR 5): many noise features, where one λ per feature can drop the noise without
shrinking the signal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LassoCV
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers import models
from tasks.base import Task, resolve_inner
from tasks.regression import load_regression


def build(
    dataset: str = "sparse_regression",
    data_options: dict[str, Any] | None = None,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    lam0_ratio: float = 0.1,
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the weighted-Lasso task.

    Args:
        dataset: a bundled set, a generator or a file path (``tasks.data.load``).
        data_options: keyword arguments of the generator (e.g. ``n_samples``).
        val_fraction, test_fraction: split sizes (fractions of all rows).
        lam0_ratio: starting λ_j as a fraction of λ_max = ‖Xᵀy‖∞/n.
        tol: inner solver tolerance (KKT violation).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            workingset | proxgrad, tol, maxiter.
        seed: split and generator seed.
        dtype, device: where the computation runs.
    """
    how = resolve_inner(inner, "weighted_lasso", models.SOLVERS, tol)
    r = load_regression(dataset, data_options, val_fraction, test_fraction, seed, dtype, device)
    t, lam_max = r.tensors, r.lam_max
    p = t.X_train.shape[1]

    def baseline() -> tuple[float, dict[str, float]]:
        error, model = r.baseline_mse(LassoCV(cv=5, fit_intercept=False, random_state=seed))
        return error, {"lambda": float(model.alpha_),
                       "n_nonzero": float(np.count_nonzero(model.coef_))}

    def hyperparameters(theta: Tensor) -> dict[str, float]:
        lam = theta.detach().exp()
        return {"lambda_min": float(lam.min()), "lambda_median": float(lam.median()),
                "lambda_max": float(lam.max())}

    problem = BilevelProblem(
        inner=models.lasso(t.X_train, t.y_train, tol=how.tol, solver=how.solver,
                           **how.options),
        outer=r.validation_loss,
        theta0=torch.full((p,), math.log(lam0_ratio * lam_max), dtype=t.X_train.dtype,
                          device=device),
        y0=torch.zeros(p, dtype=t.X_train.dtype, device=device),
        bounds=(math.log(lam_max) - 12 * math.log(10), math.log(lam_max)),
    )
    return Task(
        name="weighted_lasso",
        problem=problem,
        test_metric_name="test_mse",
        test_metric=r.test_mse,
        hyperparameters=hyperparameters,
        baseline_name="sklearn LassoCV (one λ, 5-fold on train+validation)",
        baseline=baseline,
        extra_metrics=lambda theta, w: {"n_nonzero": float((w != 0).sum())},
    )
