"""Multinomial logistic regression with one L2 weight per class, selected by hypergradients.

Inner problem (n rows, K classes, one-hot labels ``Y``):
    ``W*(θ) = argmin_W (1/n) Σ_i [logsumexp(x_iᵀW) − x_iᵀW y_i] + ½ Σ_c e^{θ_c} ‖W_{:,c}‖²``
    (features standardised on train, no intercept; smooth and strongly convex: ``solvers.Smooth``,
    Newton-CG on the ``p × K`` unknowns, mapping ``H = ∇_W f``, no kinks).
Outer loss, over ``θ ∈ R^K`` started at ``θ_c = log lam0`` for every class:
    - ``cv_folds=F`` (default 5): mean multinomial log-loss over the ``F`` stratified folds of
      train ∪ validation (one inner problem per fold, ``tasks.crossval``): the baseline's folds
      and score, so both select by the same criterion (``F`` inner solves per step);
    - ``cv_folds=null``: inner problem on train, mean log-loss on the validation split (ten
      weights tuned on one split of 450 rows overfit it: measured test error 0.044 after 100
      steps against 0.036 with the CV criterion).
Test metric: log-loss on the test split (the proper score both methods select by) of the model
    refitted on train ∪ validation at the selected θ (the data the baseline is fitted on).
Extra metrics: test misclassification rate (450 test rows: one error is 0.0022).
Baseline: ``sklearn.linear_model.LogisticRegressionCV`` (multinomial, one L2 weight for all
    classes, 5-fold on train ∪ validation, 10 values of C scored by log-loss, no intercept:
    the same model with ``λ = 1/(C n)``).

Default data: scikit-learn's digits (1,797 × 64, 10 classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers import Smooth
from solvers.smooth import METHODS
from tasks import data
from tasks.base import Task, resolve_dtype, resolve_inner
from tasks.crossval import cross_validation, folds


def multinomial_loss(X: Tensor, Y: Tensor, W: Tensor) -> Tensor:
    """Per-sample multinomial log-loss ``logsumexp(x_iᵀW) − x_iᵀW y_i`` (``Y`` one-hot)."""
    Z = X @ W
    return torch.logsumexp(Z, 1) - (Y * Z).sum(1)


def error_rate(X: Tensor, labels: Tensor, W: Tensor) -> float:
    """Fraction of rows whose arg-max class differs from ``labels``."""
    return float(((X @ W).argmax(1) != labels).double().mean())


def build(
    dataset: str = "digits",
    data_options: dict[str, Any] | None = None,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    lam0: float = 1e-2,
    cv_folds: int | None = 5,
    tol: float = 1e-9,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the per-class L2 multinomial task.

    Args:
        dataset: a multiclass bundled set, generator or file (``tasks.data.load``).
        data_options: keyword arguments of the generator.
        val_fraction, test_fraction: split sizes (fractions of all rows; stratified).
        lam0: starting L2 weight of every class.
        cv_folds: number of stratified folds of the criterion; ``None``: the validation split.
        tol: inner tolerance on ``‖∇_W f‖_∞``.
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            newton | lbfgs, tol, maxiter.
        seed: split seed.
        dtype, device: where the computation runs.
    """
    ds = data.load(dataset, labels="multiclass", seed=seed, **dict(data_options or {}))
    k = ds.n_classes
    s = data.split(ds, val_fraction, test_fraction, seed, stratify=True)
    t = data.to_tensors(s, resolve_dtype(dtype), device)
    labels = {name: torch.as_tensor(getattr(s, name), device=device)
              for name in ("y_train", "y_val", "y_test")}
    Y_train, Y_val, Y_test = (torch.nn.functional.one_hot(labels[name], k).to(t.X_train)
                              for name in ("y_train", "y_val", "y_test"))
    p = t.X_train.shape[1]

    how = resolve_inner(inner, "multinomial_l2", METHODS, tol)

    def make_solver(X: Tensor, Y: Tensor) -> Smooth:
        def objective(W: Tensor, theta: Tensor) -> Tensor:
            return multinomial_loss(X, Y, W).mean() + 0.5 * (theta.exp() * W * W).sum()
        return Smooth(objective, method=how.solver, tol=how.tol, **how.options)

    def log_loss(W: Tensor, X: Tensor, Y: Tensor) -> Tensor:
        return multinomial_loss(X, Y, W).mean()

    zeros = torch.zeros(p, k, dtype=t.X_train.dtype, device=device)
    X_fit, Y_fit = torch.cat([t.X_train, t.X_val]), torch.cat([Y_train, Y_val])
    if cv_folds is None:
        inner, y0, refit = make_solver(t.X_train, Y_train), zeros, make_solver(X_fit, Y_fit)

        def outer(W: Tensor, theta: Tensor) -> Tensor:
            return log_loss(W, t.X_val, Y_val)

        def model(theta: Tensor, W: Tensor) -> Tensor:
            return refit.run(theta, W)
    else:
        fit_labels = np.concatenate([s.y_train, s.y_val])
        cv = cross_validation(X_fit, Y_fit, folds(len(fit_labels), cv_folds, fit_labels),
                              make_solver, log_loss)
        inner, outer, y0, model = cv.inner, cv.outer, zeros.expand(cv_folds, p, k).clone(), cv.refit

    def test_logloss(theta: Tensor, W: Tensor) -> float:
        return float(log_loss(model(theta, W), t.X_test, Y_test))

    def extra_metrics(theta: Tensor, W: Tensor) -> dict[str, float]:
        return {"test_error": error_rate(t.X_test, labels["y_test"], model(theta, W))}

    def baseline() -> tuple[float, dict[str, float]]:
        X_fit = np.vstack([s.X_train, s.X_val])
        y_fit = np.concatenate([s.y_train, s.y_val])
        estimator = LogisticRegressionCV(
            Cs=10, cv=5, l1_ratios=(0.0,), scoring="neg_log_loss", fit_intercept=False, tol=1e-4,
            max_iter=5_000, random_state=seed, use_legacy_attributes=False,
        ).fit(X_fit, y_fit)
        proba = estimator.predict_proba(s.X_test)
        score = float(np.mean(-np.log(proba[np.arange(len(s.y_test)), s.y_test])))
        return score, {"lambda": 1.0 / (float(np.ravel(estimator.C_)[0]) * X_fit.shape[0]),
                       "test_error": float(np.mean(estimator.predict(s.X_test) != s.y_test))}

    problem = BilevelProblem(
        inner=inner,
        outer=outer,
        theta0=torch.full((k,), math.log(lam0), dtype=t.X_train.dtype, device=device),
        y0=y0,
        bounds=(-12 * math.log(10), 3 * math.log(10)),
    )
    return Task(
        name="multinomial_l2",
        problem=problem,
        test_metric_name="test_logloss",
        test_metric=test_logloss,
        hyperparameters=lambda theta: {f"lambda_{c}": float(v) for c, v in
                                       enumerate(theta.detach().exp())},
        baseline_name="sklearn LogisticRegressionCV (one L2 weight, 5-fold log-loss on "
                      "train+validation)",
        baseline=baseline,
        extra_metrics=extra_metrics,
    )
