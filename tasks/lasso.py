"""Lasso: select the ℓ1 weight λ by implicit hypergradient descent on a validation loss.

Inner problem (train split, n rows):  ``w*(λ) = argmin_w (1/2n)‖X w − y‖² + λ‖w‖₁``
    (sklearn's ``Lasso(alpha=λ)`` objective; features standardised, target centred on train).
Outer loss (validation split):        ``F(w) = (1/2n_v)‖X_v w − y_v‖²``, over ``θ = log λ``.
Test metric: mean squared error on the test split.
Baseline: ``sklearn.linear_model.LassoCV`` (5-fold) fitted on train ∪ validation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn import datasets
from sklearn.linear_model import LassoCV
from sklearn.model_selection import train_test_split
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers import models
from tasks.base import Task, resolve_dtype

DATASETS = {"diabetes": datasets.load_diabetes}


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
        dataset: one of ``DATASETS``.
        val_fraction, test_fraction: split sizes (fractions of all rows).
        lam0_ratio: starting λ as a fraction of λ_max = ‖Xᵀy‖∞/n (all-zero solution above it).
        tol: inner solver tolerance (gradient-mapping norm).
        seed: split seed.
        dtype, device: where the computation runs.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    X, y = DATASETS[dataset](return_X_y=True)
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=test_fraction, random_state=seed
    )
    X_tr, X_val, y_tr, y_val = train_test_split(
        X_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed
    )
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0
    offset = y_tr.mean()
    tdtype = resolve_dtype(dtype)

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=tdtype, device=device)

    Xt, Xv, Xs = (tensor((a - mean) / std) for a in (X_tr, X_val, X_test))
    yt, yv, ys = (tensor(b - offset) for b in (y_tr, y_val, y_test))
    n, p = Xt.shape
    lam_max = float((Xt.T @ yt).abs().max()) / n

    solver = models.lasso(Xt, yt, tol=tol)  # working-set solver, λ = e^θ

    def validation_loss(w: Tensor, theta: Tensor) -> Tensor:
        return 0.5 * ((Xv @ w - yv) ** 2).mean()

    def test_mse(theta: Tensor, w: Tensor) -> float:
        return float(((Xs @ w - ys) ** 2).mean())

    def baseline() -> tuple[float, dict[str, float]]:
        X_fit = np.vstack([(X_tr - mean) / std, (X_val - mean) / std])
        y_fit = np.concatenate([y_tr, y_val]) - offset
        model = LassoCV(cv=5, fit_intercept=False, random_state=seed).fit(X_fit, y_fit)
        pred = model.predict((X_test - mean) / std)
        return float(np.mean((pred - (y_test - offset)) ** 2)), {"lambda": float(model.alpha_)}

    theta0 = torch.tensor(math.log(lam0_ratio * lam_max), dtype=tdtype, device=device)
    problem = BilevelProblem(
        inner=solver,
        outer=validation_loss,
        theta0=theta0,
        y0=torch.zeros(p, dtype=tdtype, device=device),
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
