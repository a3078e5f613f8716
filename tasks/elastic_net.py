"""Elastic net: select the ℓ1 and ℓ2 weights (two hyperparameters) by implicit hypergradients.

Inner problem (train split, n rows):
    ``w*(θ) = argmin_w (1/2n)‖X w − y‖² + λ₁‖w‖₁ + (λ₂/2)‖w‖²``,  ``(λ₁, λ₂) = (e^{θ₀}, e^{θ₁})``
    (sklearn's ``ElasticNet(alpha=λ₁+λ₂, l1_ratio=λ₁/(λ₁+λ₂))``; features standardised, target
    centred on train; ``solvers.models.elastic_net``). Kinks where a coefficient enters or
    leaves the support (``|x_jᵀ(y − Xw)/n − λ₂w_j| = λ₁`` with ``w_j = 0``).
Outer loss (validation split): ``F(w) = (1/2n_v)‖X_v w − y_v‖²`` over ``θ ∈ R²``, started at
    ``λ₁ = λ₂ = lam0_ratio · λ_max`` (``λ_max = ‖Xᵀy‖∞/n``, where ``w* = 0`` for ``λ₂ = 0``).
Test metric: mean squared error on the test split.
Extra metrics: number of nonzero coefficients.
Baseline: ``sklearn.linear_model.ElasticNetCV`` (5-fold over ``l1_ratio`` ∈ {.1, .5, .7, .9,
    .95, .99, 1} and 100 α's each) fitted on train ∪ validation.

Default data: scikit-learn's diabetes (442 × 10, correlated clinical features); any other
source of ``tasks.data.load`` (e.g. ``sparse_regression`` with ``correlation: 0.8``) works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from sklearn.linear_model import ElasticNetCV
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers import models
from tasks.base import Task, resolve_inner
from tasks.regression import load_regression

L1_RATIOS = (0.1, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0)


def build(
    dataset: str = "diabetes",
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
    """Build the elastic-net task.

    Args:
        dataset: a bundled set, a generator or a file path (``tasks.data.load``).
        data_options: keyword arguments of the generator (e.g. ``correlation``).
        val_fraction, test_fraction: split sizes (fractions of all rows).
        lam0_ratio: starting λ₁ and λ₂ as a fraction of λ_max = ‖Xᵀy‖∞/n.
        tol: inner solver tolerance (KKT violation).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            workingset | proxgrad, tol, maxiter.
        seed: split and generator seed.
        dtype, device: where the computation runs.
    """
    how = resolve_inner(inner, "elastic_net", models.SOLVERS, tol)
    r = load_regression(dataset, data_options, val_fraction, test_fraction, seed, dtype, device)
    t, lam_max = r.tensors, r.lam_max
    p = t.X_train.shape[1]

    def baseline() -> tuple[float, dict[str, float]]:
        error, model = r.baseline_mse(ElasticNetCV(l1_ratio=list(L1_RATIOS), cv=5,
                                                   fit_intercept=False, random_state=seed))
        alpha, ratio = float(model.alpha_), float(model.l1_ratio_)
        return error, {"lambda_l1": alpha * ratio, "lambda_l2": alpha * (1 - ratio)}

    def hyperparameters(theta: Tensor) -> dict[str, float]:
        return {"lambda_l1": float(theta[0].exp()), "lambda_l2": float(theta[1].exp())}

    start = math.log(lam0_ratio * lam_max)
    problem = BilevelProblem(
        inner=models.elastic_net(t.X_train, t.y_train, tol=how.tol, solver=how.solver,
                                 **how.options),
        outer=r.validation_loss,
        theta0=torch.tensor([start, start], dtype=t.X_train.dtype, device=device),
        y0=torch.zeros(p, dtype=t.X_train.dtype, device=device),
        bounds=(math.log(lam_max) - 12 * math.log(10), math.log(lam_max)),
    )
    return Task(
        name="elastic_net",
        problem=problem,
        test_metric_name="test_mse",
        test_metric=r.test_mse,
        hyperparameters=hyperparameters,
        baseline_name="sklearn ElasticNetCV (5-fold over l1_ratio and α on train+validation)",
        baseline=baseline,
        extra_metrics=lambda theta, w: {"n_nonzero": float((w != 0).sum())},
    )
