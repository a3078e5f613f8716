"""DRO task: the adversary's weights against the closed-form simplex projection, the implicit
hypergradient against Danskin's formula, and the reweighting it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bilevel
from bilevel.outer import ImplicitGD, run_outer
from tasks.dro import build, group_accuracies


def project_simplex_bisection(v: np.ndarray) -> np.ndarray:
    """Π_Δ(v) = max(v − τ, 0) with Σ = 1, τ by bisection (independent of the sort-based prox)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        lo, hi = (tau, hi) if np.maximum(v - tau, 0).sum() > 1 else (lo, tau)
    return np.maximum(v - 0.5 * (lo + hi), 0)


@pytest.mark.parametrize(("rho", "level"), [(0.05, "sample"), (1.0, "sample"), (0.3, "group")])
def test_weights_and_hypergradient_match_closed_forms(rho, level):
    task = build(n_samples=300, rho=rho, ridge=1e-2, level=level)
    problem = task.problem
    gen = torch.Generator().manual_seed(0)
    theta = (0.7 * torch.randn(problem.theta0.shape, generator=gen, dtype=torch.float64))
    theta.requires_grad_(True)
    q = bilevel.implicit_solve(problem.inner, theta, problem.y0)
    problem.outer(q, theta).backward()

    # the per-sample losses, recomputed from the adversary's objective at q = 0: −∇_q f = ℓ
    zero = torch.zeros_like(problem.y0)
    ell = -torch.func.grad(lambda qq: problem.inner.smooth(qq, theta.detach()))(zero)
    ell = ell - rho * len(zero) * (1.0 / len(zero))  # remove the penalty's gradient at 0
    n = len(zero)
    q_ref = project_simplex_bisection((1.0 / n + ell / (rho * n)).numpy())
    np.testing.assert_allclose(q.detach().numpy(), q_ref, atol=1e-9)
    if rho < 0.1:
        assert (q_ref == 0).any()  # the projection is active: a nonsmooth point of the map

    # Danskin: d/dθ max_q [...] = Σ q*_i ∇ℓ_i(θ) + μ w
    theta_ref = theta.detach().clone().requires_grad_(True)
    q_fixed = torch.as_tensor(q_ref)
    problem.outer(q_fixed, theta_ref).backward()
    np.testing.assert_allclose(theta.grad.numpy(), theta_ref.grad.numpy(), atol=1e-7)


def test_group_accuracies():
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    groups = np.array([0, 0, 0, 1, 1, 1])
    acc = group_accuracies(correct, groups)
    assert acc["average"] == pytest.approx(0.5) and acc["worst_group"] == pytest.approx(1 / 3)


def test_sample_level_training_upweights_the_minority_and_keeps_average_accuracy():
    task = build(n_samples=1000, rho=0.1, level="sample")
    result = run_outer(ImplicitGD(), task.problem, 30)
    extras = task.extra_metrics(result.theta, result.y)
    assert extras["minority_weight"] > 0.15  # the minority is 10% of the train split
    assert extras["test_average_accuracy"] >= extras["erm_average_accuracy"] - 0.02


@pytest.mark.slow
def test_group_dro_beats_erm_on_the_worst_group_with_the_default_configuration():
    task = build()
    result = run_outer(ImplicitGD(), task.problem, 100)
    ours = task.test_metric(result.theta, result.y)
    erm, _ = task.baseline()
    assert ours > erm + 0.1, (ours, erm)  # measured: 0.81 vs 0.64
    extras = task.extra_metrics(result.theta, result.y)
    assert extras["minority_weight"] > 0.4  # the minority is 10% of the samples


def test_bad_penalties_are_errors():
    with pytest.raises(ValueError, match="rho must be > 0"):
        build(rho=0.0)
    with pytest.raises(ValueError, match="ridge"):
        build(ridge=-1.0)
    with pytest.raises(ValueError, match="level"):
        build(level="cluster")


def test_yaml_composes_and_matches_the_build_defaults():
    import inspect
    from pathlib import Path

    from hydra.utils import get_method
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(
        Path(__file__).parents[2] / "conf" / "task" / "dro.yaml"))
    builder = get_method(cfg.pop("_target_"))
    defaults = {k: v.default for k, v in inspect.signature(builder).parameters.items()}
    for key, value in cfg.items():
        assert key in defaults, f"dro.yaml: {key} is not an argument of build()"
        if not (key == "data_options" and defaults[key] is None):
            assert value == defaults[key], (key, value, defaults[key])
