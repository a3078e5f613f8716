"""Per-class L2 multinomial task: the inner solution against sklearn (iris, fast), the
hypergradient against central differences, and the tuned weights against
LogisticRegressionCV on digits (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import bilevel
from bilevel.outer import ImplicitGD, run_outer
from tasks import data
from tasks.multinomial_l2 import build
from tests.helpers import assert_directional


def test_inner_solution_matches_sklearn_for_equal_weights():
    task = build(dataset="iris", tol=1e-12, cv_folds=None)
    s = data.split(data.load("iris", labels="multiclass"), 0.25, 0.25, seed=0, stratify=True)
    lam = 0.05
    W = task.problem.inner.run(torch.full((3,), np.log(lam), dtype=torch.float64),
                               task.problem.y0)
    ref = LogisticRegression(C=1 / (lam * len(s.y_train)), fit_intercept=False, tol=1e-12,
                             max_iter=100_000).fit(s.X_train, s.y_train)
    np.testing.assert_allclose(W.numpy(), ref.coef_.T - ref.coef_.T.mean(1, keepdims=True),
                               atol=1e-7)


@pytest.mark.parametrize("cv_folds", [None, 3])
def test_hypergradient_matches_central_differences(cv_folds):
    task = build(dataset="iris", tol=1e-12, cv_folds=cv_folds)
    problem = task.problem
    theta = torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64, requires_grad=True)
    W = bilevel.implicit_solve(problem.inner, theta, problem.y0)
    problem.outer(W, theta).backward()

    def value(t: torch.Tensor) -> float:
        return float(problem.outer(problem.inner.run(t, W.detach()), t))

    assert_directional(theta.grad, value, theta.detach(), h=1e-4, rtol=1e-6)


@pytest.mark.slow  # 100 steps of 5 folds: minutes on the shared 2-core machine
def test_default_configuration_beats_logisticregressioncv_on_digits():
    task = build()
    result = run_outer(ImplicitGD(), task.problem, 100)  # conf/outer/implicit.yaml, 100 steps
    ours = task.test_metric(result.theta, result.y)
    baseline, extra = task.baseline()
    assert ours < baseline, (ours, baseline)  # measured: test log-loss 0.1180 vs 0.1219
    error = task.extra_metrics(result.theta, result.y)["test_error"]
    assert error <= extra["test_error"] + 2 / 450  # measured: 17 vs 16 errors of 450


def test_yaml_composes_and_matches_the_build_defaults():
    import inspect
    from pathlib import Path

    from hydra.utils import get_method
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(
        Path(__file__).parents[2] / "conf" / "task" / "multinomial_l2.yaml"))
    builder = get_method(cfg.pop("_target_"))
    defaults = {k: v.default for k, v in inspect.signature(builder).parameters.items()}
    for key, value in cfg.items():
        assert key in defaults, f"multinomial_l2.yaml: {key} is not an argument of build()"
        if not (key == "data_options" and defaults[key] is None):
            assert value == defaults[key], (key, value, defaults[key])
