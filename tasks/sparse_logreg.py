"""Sparse (ℓ1) logistic regression: select λ by implicit hypergradient descent.

Inner problem (train split, n rows, labels ``y_i = ±1``):
    ``(w*, b*)(λ) = argmin_{w,b} (1/n) Σ_i log(1 + exp(−y_i (x_iᵀw + b))) + λ‖w‖₁``,  ``λ = e^θ``
    (sklearn's ``LogisticRegression(l1_ratio=1, C=1/(nλ))`` with an unpenalised intercept;
    features standardised on train; ``solvers.models.sparse_logreg`` on ``[X, 1]`` with the
    weight ``λ·(1, …, 1, 0)``, working sets + proximal Newton).
    Kinks where a coefficient enters or leaves the support (``|∇_j f(w)| = λ`` with ``w_j = 0``).
Outer loss (validation split): mean logistic loss ``(1/n_v) Σ log(1 + exp(−y_i (x_iᵀw + b)))``,
    over ``θ = log λ`` started at ``log(lam0_ratio · λ_max)``, ``λ_max = ‖Xᵀ(y − ȳ)‖∞/(2n)``
    (about where ``w* = 0``).
Test metric: mean logistic loss on the test split.
Extra metrics: test misclassification rate, number of nonzero coefficients.
Baseline: ``sklearn.linear_model.LogisticRegressionCV`` (ℓ1, liblinear, 5-fold on train ∪
    validation, 30 values of C, scored by log-loss; liblinear penalises the intercept, which
    ``intercept_scaling=100`` makes negligible: the same model).

Default data: ``ijcnn1_like`` at 2,000 rows × 200 features (12 informative, 188 noise; 90/10
classes), where the ℓ1 weight has noise to remove. On breast_cancer (30 informative features)
the validation split is small and LogisticRegressionCV does better (test log-loss 0.111 vs
0.142, measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import log_loss
from torch import Tensor
from torch.nn.functional import softplus

from bilevel.outer import BilevelProblem
from solvers import models
from tasks import data
from tasks.base import Task, resolve_dtype, resolve_inner

INTERCEPT_SCALING = 100.0
DEFAULT_DATA = {"n_samples": 2000, "n_features": 200}


def build(
    dataset: str = "ijcnn1_like",
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
    """Build the sparse logistic regression task.

    Args:
        dataset: a binary-labelled bundled set, generator or file (``tasks.data.load``).
        data_options: keyword arguments of the generator (default for ``ijcnn1_like``:
            ``DEFAULT_DATA``).
        val_fraction, test_fraction: split sizes (fractions of all rows; stratified).
        lam0_ratio: starting λ as a fraction of λ_max.
        tol: inner solver tolerance (KKT violation).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            workingset | proxgrad, tol, maxiter.
        seed: split and generator seed.
        dtype, device: where the computation runs.
    """
    if data_options is None:
        data_options = DEFAULT_DATA if dataset == "ijcnn1_like" else {}
    ds = data.load(dataset, labels="binary", seed=seed, **dict(data_options))
    s = data.split(ds, val_fraction, test_fraction, seed, stratify=True)
    t = data.to_tensors(s, resolve_dtype(dtype), device)
    n, p = t.X_train.shape
    centred = t.y_train - t.y_train.mean()
    lam_max = float((t.X_train.T @ centred).abs().max()) / (2 * n)
    ones = torch.ones_like(t.X_train[:, :1])
    penalised = torch.cat([torch.ones(p), torch.zeros(1)]).to(t.X_train)

    def weights(theta: Tensor) -> Tensor:  # λ on the features, 0 on the intercept column
        return theta.exp() * penalised

    def margin(X: Tensor, y: Tensor, wb: Tensor) -> Tensor:
        return y * (X @ wb[:-1] + wb[-1])

    def validation_loss(w: Tensor, theta: Tensor) -> Tensor:
        return softplus(-margin(t.X_val, t.y_val, w)).mean()

    def test_logloss(theta: Tensor, w: Tensor) -> float:
        return float(softplus(-margin(t.X_test, t.y_test, w)).mean())

    def extra_metrics(theta: Tensor, w: Tensor) -> dict[str, float]:
        wrong = margin(t.X_test, t.y_test, w) <= 0
        return {"test_error": float(wrong.double().mean()),
                "n_nonzero": float((w[:-1] != 0).sum())}

    def baseline() -> tuple[float, dict[str, float]]:
        X_fit = np.vstack([s.X_train, s.X_val])
        y_fit = np.concatenate([s.y_train, s.y_val])
        model = LogisticRegressionCV(
            Cs=30, cv=5, l1_ratios=(1.0,), solver="liblinear", scoring="neg_log_loss",
            intercept_scaling=INTERCEPT_SCALING, tol=1e-6, max_iter=10_000, random_state=seed,
            use_legacy_attributes=False,
        ).fit(X_fit, y_fit)
        proba = model.predict_proba(s.X_test)
        C = float(np.ravel(model.C_)[0])
        return float(log_loss(s.y_test, proba, labels=model.classes_)), {
            "lambda": 1.0 / (C * X_fit.shape[0]),
            "n_nonzero": float(np.count_nonzero(model.coef_)),
        }

    how = resolve_inner(inner, "sparse_logreg", models.SOLVERS, tol)
    problem = BilevelProblem(
        inner=models.sparse_logreg(torch.cat([t.X_train, ones], 1), t.y_train, lam=weights,
                                   tol=how.tol, solver=how.solver, **how.options),
        outer=validation_loss,
        theta0=torch.tensor(math.log(lam0_ratio * lam_max), dtype=t.X_train.dtype,
                            device=device),
        y0=torch.zeros(p + 1, dtype=t.X_train.dtype, device=device),
        bounds=(math.log(lam_max) - 12 * math.log(10), math.log(lam_max)),
    )
    return Task(
        name="sparse_logreg",
        problem=problem,
        test_metric_name="test_logloss",
        test_metric=test_logloss,
        hyperparameters=lambda theta: {"lambda": float(theta.exp())},
        baseline_name="sklearn LogisticRegressionCV (l1, 5-fold log-loss on train+validation)",
        baseline=baseline,
        extra_metrics=extra_metrics,
    )
