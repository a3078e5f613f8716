"""Per-feature L2 logistic regression: one regularisation weight per feature, tuned on validation.

Inner problem (inner / train rows ``(x_i, y_i)``, ``y_i = ±1``, ``n`` rows, ``p`` features):

    w*(θ) = argmin_w  g(w, θ) = (1/n) Σ_i softplus(−y_i x_iᵀw) + ½ Σ_j e^{θ_j} w_j²,

smooth and strongly convex, solved by ``solvers.Smooth`` (Newton with the dense p × p Hessian,
whose factor is kept for chord steps while they converge fast); its optimality mapping is
``H(θ, w) = ∇_w g(w, θ)``, smooth (no kinks). θ = log of the
per-feature weights, projected on the box ``bounds``: the optimum sends some θ_j to ±∞
(+∞: feature j switched off, −∞: feature j unregularised), so the box is part of the problem.

Outer loss (validation rows): ``h(θ) = f(w*(θ)) = (1/n_v) Σ_i softplus(−y_i x_iᵀ w*(θ))``,
the mean validation log-loss. ``inner_loss(w, θ, idx)`` and ``outer_loss(w, θ, idx)`` average
over the rows ``idx`` (minibatches for the stochastic outer methods).

Datasets:

- ``"ijcnn1_like"``: ``make_classification(n_samples=141691, n_features=22, n_informative=12,
  weights=[0.9, 0.1], random_state=0)`` (ijcnn1's shape and class balance): the first 49,990
  rows are the inner rows, the rest the outer rows; with ``test_fraction > 0`` the last
  ``test_fraction`` of the outer rows are held out as the test split (``test_fraction=0``: the
  benchmark's problem exactly, no test metric);
- ``"breast_cancer"`` (569 × 30): a stratified split by ``seed`` into train / validation / test.

Features are standardised with the mean and standard deviation of the inner rows; no intercept.

Test metric: mean log-loss on the test split. Baseline: ``sklearn LogisticRegressionCV`` (one
shared C for every feature, 5-fold, log-loss scoring, no intercept) fitted on train ∪
validation; its ``C`` corresponds to a shared weight ``e^θ = 1 / (C · n_fit)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn import datasets
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import train_test_split
from torch import Tensor

from bilevel.outer import BilevelProblem
from solvers.smooth import METHODS, Smooth
from tasks.base import Task, resolve_dtype, resolve_inner

IJCNN1_SHAPE = {"n_samples": 141_691, "n_features": 22, "n_informative": 12,
                "weights": [0.9, 0.1], "random_state": 0}
IJCNN1_INNER_ROWS = 49_990
DATASETS = ("ijcnn1_like", "breast_cancer")

Split = tuple[np.ndarray, np.ndarray]


def load_splits(dataset: str, test_fraction: float, val_fraction: float, seed: int,
                max_rows: int | None = None) -> tuple[Split, Split, Split]:
    """``(train, validation, test)`` splits ``(X, y)`` with labels ±1, standardised on train.

    ``max_rows`` keeps the first rows of each ijcnn1-like split (a small problem for tests)."""
    if dataset == "ijcnn1_like":
        X, y = datasets.make_classification(**IJCNN1_SHAPE)
        inner, outer = slice(0, IJCNN1_INNER_ROWS), slice(IJCNN1_INNER_ROWS, None)
        X_tr, y_tr, X_out, y_out = X[inner], y[inner], X[outer], y[outer]
        n_test = int(round(test_fraction * len(y_out)))
        cut = len(y_out) - n_test
        X_val, y_val, X_te, y_te = X_out[:cut], y_out[:cut], X_out[cut:], y_out[cut:]
        if max_rows is not None:
            X_tr, y_tr, X_val, y_val = X_tr[:max_rows], y_tr[:max_rows], X_val[:max_rows], \
                y_val[:max_rows]
            X_te, y_te = X_te[:max_rows], y_te[:max_rows]
    elif dataset == "breast_cancer":
        if not 0 < test_fraction < 1 or not 0 < val_fraction < 1 - test_fraction:
            raise ValueError("breast_cancer needs 0 < test_fraction and 0 < val_fraction with "
                             "val_fraction + test_fraction < 1")
        X, y = datasets.load_breast_cancer(return_X_y=True)
        X_rest, X_te, y_rest, y_te = train_test_split(
            X, y, test_size=test_fraction, random_state=seed, stratify=y)
        X_tr, X_val, y_tr, y_val = train_test_split(
            X_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
            stratify=y_rest)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0

    def prepare(X_: np.ndarray, y_: np.ndarray) -> Split:
        return (X_ - mean) / std, 2.0 * y_ - 1.0

    return prepare(X_tr, y_tr), prepare(X_val, y_val), prepare(X_te, y_te)


def mean_log_loss(X: Tensor, y: Tensor) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``(w, idx) ↦ (1/|idx|) Σ_{i∈idx} softplus(−y_i x_iᵀw)`` (all rows when ``idx`` is None)."""
    def loss(w: Tensor, idx: Tensor | None = None) -> Tensor:
        Xi, yi = (X, y) if idx is None else (X[idx], y[idx])
        return torch.nn.functional.softplus(-yi * (Xi @ w)).mean()
    return loss


def build(
    dataset: str = "ijcnn1_like",
    test_fraction: float = 0.2,
    val_fraction: float = 0.25,
    theta0: float = math.log(1e-3),
    bounds: tuple[float, float] | list[float] | None = (-12.0, 4.0),
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the per-feature L2 logistic regression task.

    Args:
        dataset: one of ``DATASETS``.
        test_fraction: share held out for the test metric (of the outer rows for
            ijcnn1_like, where 0 keeps them all for h; of all rows for breast_cancer).
        val_fraction: validation share of all rows (breast_cancer only).
        theta0: every θ_j starts here (log of the per-feature weight).
        bounds: box ``(low, high)`` on every θ_j (``None``: unbounded — some θ_j then drift
            to ±∞ and ``e^θ`` eventually overflows).
        tol: inner tolerance on ``‖∇_w g‖_∞``.
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            newton | lbfgs, tol, maxiter.
        max_rows: keep at most this many rows per split (ijcnn1_like; for quick runs).
        seed: split seed (breast_cancer) and the baseline's fold seed.
        dtype, device: where the computation runs.

    Raises:
        ValueError: unknown dataset, bad fractions, or ``bounds`` with ``low ≥ high``.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if bounds is not None:
        bounds = (float(bounds[0]), float(bounds[1]))
        if not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    (X_tr, y_tr), (X_val, y_val), (X_te, y_te) = load_splits(
        dataset, test_fraction, val_fraction, seed, max_rows)
    tdtype = resolve_dtype(dtype)

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=tdtype, device=device)

    Xt, yt, Xv, yv, Xs, ys = (tensor(a) for a in (X_tr, y_tr, X_val, y_val, X_te, y_te))
    p = Xt.shape[1]
    train_loss, validation_loss, test_loss = (mean_log_loss(Xt, yt), mean_log_loss(Xv, yv),
                                              mean_log_loss(Xs, ys))

    def inner_loss(w: Tensor, theta: Tensor, idx: Tensor | None = None) -> Tensor:
        return train_loss(w, idx) + 0.5 * (theta.exp() * w * w).sum()

    def outer_loss(w: Tensor, theta: Tensor, idx: Tensor | None = None) -> Tensor:
        return validation_loss(w, idx)

    def test_metric(theta: Tensor, w: Tensor) -> float:
        return float(test_loss(w)) if len(y_te) else float("nan")

    def baseline() -> tuple[float, dict[str, float]]:
        X_fit, y_fit = np.vstack([X_tr, X_val]), np.concatenate([y_tr, y_val])
        with warnings.catch_warnings():  # scikit-learn 1.8's notices of its 1.10 API change
            warnings.simplefilter("ignore", FutureWarning)
            model = LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss",
                                         fit_intercept=False, max_iter=1000,
                                         random_state=seed).fit(X_fit, y_fit)
        C = float(np.ravel(model.C_)[0])
        if not len(y_te):
            return float("nan"), {"C": C}
        w = torch.as_tensor(model.coef_.ravel(), dtype=tdtype, device=device)
        return float(test_loss(w)), {"C": C, "lambda": 1.0 / (C * len(y_fit))}

    how = resolve_inner(inner, "logreg_l2", METHODS, tol)
    problem = BilevelProblem(
        # Newton keeps its Hessian factor while each step cuts ‖∇g‖∞ tenfold (chord steps):
        # a Hessian costs p Hessian-vector products over every row, a chord step one gradient
        inner=Smooth(lambda w, t: inner_loss(w, t), method=how.solver, tol=how.tol, reuse=0.1,
                     **how.options),
        outer=lambda w, t: outer_loss(w, t),
        theta0=torch.full((p,), float(theta0), dtype=tdtype, device=device),
        y0=torch.zeros(p, dtype=tdtype, device=device),
        bounds=bounds,
        inner_loss=inner_loss,
        outer_loss=outer_loss,
        n_inner=len(y_tr),
        n_outer=len(y_val),
    )
    return Task(
        name="logreg_l2",
        problem=problem,
        test_metric_name="test_logloss",
        test_metric=test_metric,
        hyperparameters=lambda theta: {f"lambda_{j}": float(v)
                                       for j, v in enumerate(theta.detach().exp().cpu())},
        baseline_name="sklearn LogisticRegressionCV (one shared C, 5-fold on train+validation)",
        baseline=baseline,
    )
