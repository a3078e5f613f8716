"""Data-cleaning task: the corruption process, the hypergradient against central differences
(iris, fast), and on digits at p = 0.5 a lower test error than the naive model (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bilevel
from bilevel.outer import ImplicitGD, run_outer
from tasks.datacleaning import build, corrupt
from tests.helpers import assert_directional


def test_corruption_replaces_labels_uniformly_at_the_given_rate():
    labels = np.zeros(20_000, dtype=np.int64)
    noisy = corrupt(labels, 4, 0.7, np.random.default_rng(0))
    # a replaced label is uniform over 4 classes: it changes with probability 0.7 · 3/4
    assert abs(np.mean(noisy != 0) - 0.525) < 0.01
    counts = np.bincount(noisy[noisy != 0], minlength=4)[1:]
    assert counts.min() / counts.max() > 0.93


def test_hypergradient_matches_central_differences():
    task = build(dataset="iris", corruption=0.5, c=0.05, tol=1e-12)
    problem = task.problem
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(problem.theta0.shape, generator=gen, dtype=torch.float64)
    theta.requires_grad_(True)
    W = bilevel.implicit_solve(problem.inner, theta, problem.y0)
    problem.outer(W, theta).backward()

    def value(t: torch.Tensor) -> float:
        return float(problem.outer(problem.inner.run(t, W.detach()), t))

    assert_directional(theta.grad, value, theta.detach(), h=1e-4, rtol=1e-6)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="corruption"):
        build(corruption=1.0)
    with pytest.raises(ValueError, match="strongly convex"):
        build(c=0.0)


@pytest.mark.slow
def test_weights_beat_the_naive_model_at_p_half_on_digits():
    task = build(corruption=0.5)
    result = run_outer(ImplicitGD(), task.problem, 30)
    ours = task.test_metric(result.theta, result.y)
    naive, _ = task.baseline()
    extras = task.extra_metrics(result.theta, result.y)
    assert ours < naive, (ours, naive)  # measured: 6.9% vs 11.3% (oracle 5.8%)
    assert extras["f1_flagged"] > 0.8  # measured: 0.94
    assert extras["oracle_test_error"] < naive


def test_yaml_composes_and_matches_the_build_defaults():
    import inspect
    from pathlib import Path

    from hydra.utils import get_method
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(
        Path(__file__).parents[2] / "conf" / "task" / "datacleaning.yaml"))
    builder = get_method(cfg.pop("_target_"))
    defaults = {k: v.default for k, v in inspect.signature(builder).parameters.items()}
    for key, value in cfg.items():
        assert key in defaults, f"datacleaning.yaml: {key} is not an argument of build()"
        if not (key == "data_options" and defaults[key] is None):
            assert value == defaults[key], (key, value, defaults[key])


def test_minibatch_losses_average_to_the_full_ones_and_drive_soba():
    """Minibatch losses, weighted by batch size, average to the full inner / outer losses (so
    stochastic methods estimate the right gradients), and SOBA's defaults run on the task."""
    import warnings

    from bilevel.outer import SOBA

    problem = build(dataset="iris", corruption=0.5, seed=0).problem
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(problem.y0.shape, generator=gen, dtype=torch.float64)
    theta = torch.randn(problem.n_inner, generator=gen, dtype=torch.float64)
    for loss, n in ((problem.inner_loss, problem.n_inner), (problem.outer_loss, problem.n_outer)):
        batches = torch.randperm(n, generator=gen).chunk(3)
        parts = sum(len(idx) * float(loss(W, theta, idx)) for idx in batches) / n
        full = float(loss(W, theta, None))
        assert abs(parts - full) <= 1e-12 * abs(full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_outer(SOBA(batch_size=16), problem, 5)
    assert result.status == "max_steps" and torch.isfinite(result.theta).all()
