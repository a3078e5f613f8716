"""Lasso task: its K-fold criterion against scikit-learn's LassoCV path, and the selected λ
against LassoCV's on the default configuration (the issue's acceptance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LassoCV

from bilevel.outer import ImplicitGD, run_outer
from tasks.crossval import folds
from tasks.lasso import build
from tasks.regression import load_regression


def test_cv_criterion_equals_lassocv_mse_path():
    """F(log α) = ½ · (mean over LassoCV's folds of the fold's validation MSE) at its own α."""
    task = build()
    r = load_regression("diabetes", None, 0.25, 0.25, 0, "float64", "cpu")
    s = r.splits
    X = np.vstack([s.X_train, s.X_val])
    y = np.concatenate([s.y_train, s.y_val]) - r.offset
    ref = LassoCV(cv=5, fit_intercept=False, alphas=[4.0, 1.0, 0.1], tol=1e-12,
                  max_iter=100_000).fit(X, y)
    problem = task.problem
    for alpha, mse in zip(ref.alphas_, ref.mse_path_, strict=True):
        theta = torch.tensor(math.log(alpha), dtype=torch.float64)
        w = problem.inner.run(theta, problem.y0)
        assert w.shape == (5, 10)
        assert float(problem.outer(w, theta)) == pytest.approx(0.5 * mse.mean(), rel=1e-9)


def test_selected_lambda_beats_lassocv_on_the_default_configuration():
    task = build()
    result = run_outer(ImplicitGD(), task.problem, 100)  # conf/outer/implicit.yaml, 100 steps
    ours = task.test_metric(result.theta, result.y)
    baseline, chosen = task.baseline()
    assert ours <= baseline, (ours, baseline)  # measured: 3191.92 vs 3193.25
    assert float(result.theta.exp()) == pytest.approx(chosen["lambda"], rel=0.1)


def test_single_split_option_keeps_one_inner_problem():
    task = build(cv_folds=None)
    assert task.problem.y0.shape == (10,)


@pytest.mark.parametrize("k", [1, 10_000])
def test_fold_count_out_of_range_names_the_option(k):
    with pytest.raises(ValueError, match="cv_folds must be between 2"):
        folds(100, k)
