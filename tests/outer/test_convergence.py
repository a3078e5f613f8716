"""Every outer method reaches the closed-form θ* of the quadratic bilevel problem
(``tests/outer/quadratic.py``): deterministic methods to 1e-6 relative, stochastic methods to
1e-2 relative within a fixed number of steps, for each of 5 seeds (the fast default run
checks seeds 0 and 1; ``-m slow`` checks all five)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bilevel.outer import SABA, SOBA, TTSA, AmIGO, ImplicitGD, StocBiO, Unrolled
from tests.outer.quadratic import quadratic

SEED_SETS = [pytest.param((0, 1), id="seeds01"),
             pytest.param((0, 1, 2, 3, 4), id="seeds0-4", marks=pytest.mark.slow)]


def run(method, problem, steps):
    state = method.init(problem)
    for _ in range(steps):
        method.step(problem, state)
    return state


# -- deterministic ---------------------------------------------------------------------------

# h has curvatures in [0.40, 1.34] (q.outer_curvatures): SGD with step 1.2 contracts by 0.6.
DETERMINISTIC = {
    "implicit": (lambda: ImplicitGD(optimizer="sgd", lr=1.2), 40),
    "unrolled": (lambda: Unrolled(optimizer="sgd", outer_lr=1.2, steps=50), 40),
    "saba_full_batch": (lambda: SABA(optimizer="sgd", outer_lr=0.1, batch_size=None,
                                     outer_batch_size=None), 300),
}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_methods_reach_theta_star(name):
    q = quadratic()
    assert q.outer_curvatures.max() * 1.2 < 2  # the step is stable for h
    make, steps = DETERMINISTIC[name]
    state = run(make(), q.problem, steps)
    assert q.rel_error(state.theta) <= 1e-6


def test_truncated_backprop_is_the_truncated_neumann_series():
    """From y₀ = y*(θ), K steps of η-gradient descent differentiated over the last K' give
    ``∇_θ f + (η Σ_{k<K'} (I − ηA)^k B)ᵀ (y_K − t̄)``, with y_K = y*(θ) (a fixed point)."""
    q = quadratic()
    problem = q.problem
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    y_star = problem.inner.run(theta, problem.y0)
    problem.theta0, problem.y0 = theta, y_star
    method = Unrolled(optimizer="sgd", outer_lr=1.0, steps=12, truncate=5)
    state = method.init(problem)
    eta = method.inner_lr / state.extra["lipschitz"]
    method.step(problem, state)
    A = (q.features.T @ q.features / q.features.shape[0]).numpy() + np.eye(5)
    B = q.inner_B.numpy()
    series = sum(np.linalg.matrix_power(np.eye(5) - eta * A, k) for k in range(5))
    residual = y_star.numpy() - q.targets.mean(0).numpy()
    expected = q.mu * theta.numpy() + (eta * series @ B).T @ residual
    np.testing.assert_allclose(theta.numpy() - state.theta.detach().numpy(), expected,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.y.numpy(), y_star.numpy(), atol=1e-10)


# -- stochastic ------------------------------------------------------------------------------

# The quadratic's inner curvature does not move with θ: no curvature refreshes (they draw extra
# minibatches, whose curvature fluctuates around the full one's), the initial estimate holds.
STOCHASTIC = {
    "soba": (lambda s: SOBA(optimizer="sgd", outer_lr=0.5, outer_decay=0.6, inner_lr=1.0,
                            inner_decay=0.6, curvature_every=0, seed=s), 200),
    "saba": (lambda s: SABA(optimizer="sgd", outer_lr=0.1, curvature_every=0, seed=s), 200),
    "amigo": (lambda s: AmIGO(optimizer="sgd", outer_lr=1.2, outer_decay=0.6, inner_lr=1.0,
                              inner_decay=0.6, inner_steps=5, linear_steps=5, batch_size=128,
                              outer_batch_size=128, curvature_every=0, seed=s), 80),
    "stocbio": (lambda s: StocBiO(optimizer="sgd", outer_lr=1.2, outer_decay=0.6, inner_lr=1.0,
                                  inner_decay=0.6, inner_steps=3, neumann_terms=5,
                                  neumann_lr=1.0, batch_size=128, outer_batch_size=128,
                                  curvature_every=0, seed=s), 100),
    # the randomly truncated Neumann estimate is unbiased (test below) but its variance
    # needs far more steps for 1e-2; the full Q-term sum converges in a test's budget
    "ttsa": (lambda s: TTSA(optimizer="sgd", outer_lr=1.2, outer_decay=0.6, inner_lr=1.0,
                            inner_decay=0.0, neumann_terms=3, neumann_lr=1.0,
                            randomized_neumann=False, batch_size=128,
                            outer_batch_size=128, curvature_every=0, seed=s), 300),
    "implicit_minibatch": (lambda s: ImplicitGD(optimizer="sgd", lr=1.2, decay=0.6,
                                                batch_size=64, seed=s), 25),
}


@pytest.mark.parametrize("seeds", SEED_SETS)
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_reach_theta_star(name, seeds):
    q = quadratic()
    make, steps = STOCHASTIC[name]
    errors = [q.rel_error(run(make(seed), q.problem, steps).theta) for seed in seeds]
    assert max(errors) <= 1e-2, errors
    # the seeds give different trajectories (independent samplers), not one run repeated
    assert len(set(errors)) == len(errors)


def test_box_projection_after_every_step():
    q = quadratic()
    q.problem.bounds = (-0.5, 0.5)  # θ* = (0.12, 1.54, -1.32) lies outside: two bounds bind
    for make in (lambda: SOBA(optimizer="sgd", outer_lr=0.5, seed=1),
                 lambda: ImplicitGD(optimizer="sgd", lr=1.0)):
        method = make()
        state = method.init(q.problem)
        for _ in range(30):
            method.step(q.problem, state)
            assert float(state.theta.detach().abs().max()) <= 0.5
    assert state.theta[1].item() == 0.5 and state.theta[2].item() == -0.5


def test_ttsa_random_truncation_is_unbiased_for_the_neumann_sum():
    """E[η Q Π_{s≤q} (I − ηA) b] over q ~ U{0..Q−1} = η Σ_{q<Q} (I − ηA)^q b (full batch)."""
    q = quadratic()
    method = TTSA(batch_size=None, outer_batch_size=None, neumann_terms=4, neumann_lr=1.0)
    state = method.init(q.problem)
    b = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    draws = torch.stack([method.neumann(q.problem, state, state.y, b) for _ in range(500)])
    eta = 1.0 / state.extra["lipschitz"]
    A = (q.features.T @ q.features / q.features.shape[0]).numpy() + np.eye(5)
    expected = eta * sum(np.linalg.matrix_power(np.eye(5) - eta * A, k) for k in range(4)) \
        @ b.numpy()
    exact = TTSA(batch_size=None, outer_batch_size=None, neumann_terms=4, neumann_lr=1.0,
                 randomized_neumann=False)
    np.testing.assert_allclose(exact.neumann(q.problem, state, state.y, b).numpy(), expected,
                               rtol=1e-12)
    stderr = draws.std(0).numpy() / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0).numpy() - expected) <= 4 * stderr + 1e-12)
