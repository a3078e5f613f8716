"""Default settings must not diverge: every stochastic method (and the unrolled baseline, and
implicit hypergradient descent on outer minibatches of 64), with its defaults, on the
per-feature L2 logistic regression task (breast_cancer, θ = log weights in the task's box),
keeps θ, y and the outer value finite for 10 seeds (``-m slow``; the fast run checks one seed
for a few steps)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bilevel.outer import SABA, SOBA, TTSA, AmIGO, ImplicitGD, StocBiO, Unrolled
from tasks.logreg_l2 import build

METHODS = {"soba": SOBA, "saba": SABA, "amigo": AmIGO, "stocbio": StocBiO, "ttsa": TTSA,
           "unrolled": Unrolled, "implicit_b64": functools.partial(ImplicitGD, batch_size=64)}
RUNS = [pytest.param((0,), 20, id="seed0"),
        pytest.param(tuple(range(10)), 150, id="10seeds", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def problem():
    return build(dataset="breast_cancer", cv_folds=None, shrink=0.0).problem


@pytest.mark.parametrize("seeds, steps", RUNS)
@pytest.mark.parametrize("name", METHODS)
def test_defaults_stay_finite(problem, name, seeds, steps):
    for seed in seeds:
        method = METHODS[name](seed=seed)
        state = method.init(problem)
        for _ in range(steps):
            row = method.step(problem, state)
            assert math.isfinite(row["outer_value"]), (seed, state.step)
        theta = state.theta.detach()
        assert torch.isfinite(theta).all() and torch.isfinite(state.y).all()
        low, high = problem.bounds
        assert float(theta.min()) >= low and float(theta.max()) <= high
