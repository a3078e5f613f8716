"""Step-size schedules, minibatch samplers, autograd oracles and the curvature estimate,
checked against closed forms on the quadratic problem."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bilevel.outer import MinibatchSampler, StepSize, StepSizeWarning
from bilevel.outer.curvature import power_iteration
from bilevel.outer.oracles import hvp, inner_grad, inner_oracle, outer_oracle
from bilevel.outer.sampling import stream_seed
from bilevel.outer.schedules import robbins_monro
from tests.outer.quadratic import quadratic

F64 = torch.float64

# -- schedules -----------------------------------------------------------------------------


def test_constant_and_decreasing_values():
    assert [StepSize(0.3)(k) for k in (0, 5, 100)] == [0.3, 0.3, 0.3]
    s = StepSize(2.0, 0.75)
    assert s(0) == 2.0
    assert s(15) == pytest.approx(2.0 / 16 ** 0.75, rel=1e-15)


@pytest.mark.parametrize("decay, ok", [(0.5, False), (0.5000001, True), (0.75, True),
                                       (1.0, True), (1.0000001, False), (0.3, False)])
def test_robbins_monro_is_half_to_one(decay, ok):
    # Σ k^-a = ∞ iff a ≤ 1 and Σ k^-2a < ∞ iff a > 1/2
    assert robbins_monro(decay) is ok


@pytest.mark.parametrize("decay", [0.3, 0.5, 1.5])
def test_decreasing_schedule_outside_robbins_monro_warns(decay):
    with pytest.warns(StepSizeWarning, match="Robbins–Monro"):
        StepSize(0.1, decay, "outer_lr")


@pytest.mark.parametrize("decay", [0.0, 0.6, 1.0])
def test_valid_schedules_are_silent(decay):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schedule = StepSize(0.1, decay)
    assert [str(w.message) for w in caught] == []
    assert [schedule(k) for k in (0, 3)] == [0.1, 0.1 / 4 ** decay]


@pytest.mark.parametrize("lr, decay", [(0.0, 0.0), (-1.0, 0.7), (float("nan"), 0.0),
                                       (0.1, -0.5)])
def test_invalid_schedule_raises_naming_the_argument(lr, decay):
    with pytest.raises(ValueError, match="outer_lr"):
        StepSize(lr, decay, "outer_lr")


# -- samplers ------------------------------------------------------------------------------


def test_shuffle_sees_every_sample_once_per_epoch():
    sampler = MinibatchSampler(10, 5, mode="shuffle", seed=3)
    epoch1 = torch.cat([sampler(), sampler()])
    epoch2 = torch.cat([sampler(), sampler()])
    assert sorted(epoch1.tolist()) == list(range(10)) == sorted(epoch2.tolist())
    assert not torch.equal(epoch1, epoch2)  # a fresh permutation each epoch


def test_batches_straddling_epochs_keep_their_size_and_cover_the_data():
    sampler = MinibatchSampler(7, 3, mode="shuffle", seed=0)
    drawn = torch.cat([sampler() for _ in range(7)])  # 21 = 3 epochs of 7
    assert drawn.numel() == 21
    assert np.bincount(drawn.numpy(), minlength=7).tolist() == [3] * 7


def test_without_replacement_batches_are_distinct_and_replacement_is_uniform():
    distinct = MinibatchSampler(20, 20, mode="without_replacement", seed=1)()
    assert sorted(distinct.tolist()) == list(range(20))
    draws = torch.cat([MinibatchSampler(4, 1000, mode="replacement", seed=2)()])
    freq = np.bincount(draws.numpy(), minlength=4) / 1000
    assert np.allclose(freq, 0.25, atol=0.05)


@pytest.mark.parametrize("mode", ["shuffle", "without_replacement", "replacement"])
def test_state_dict_restores_the_sequence(mode):
    a = MinibatchSampler(13, 4, mode=mode, seed=5)
    for _ in range(5):
        a()
    b = MinibatchSampler(13, 4, mode=mode, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(6):
        assert torch.equal(a(), b())


def test_streams_are_independent():
    seeds = {stream_seed(s, k) for s in range(5) for k in range(3)}
    assert len(seeds) == 15
    inner = MinibatchSampler(100, 10, seed=stream_seed(0, 0))()
    outer = MinibatchSampler(100, 10, seed=stream_seed(0, 1))()
    assert not torch.equal(inner, outer)


@pytest.mark.parametrize("n, size, mode, match", [(0, 1, "shuffle", "sample structure"),
                                                  (5, 6, "shuffle", "batch_size"),
                                                  (5, 0, "replacement", "batch_size"),
                                                  (5, 2, "bootstrap", "mode")])
def test_bad_sampler_arguments_raise(n, size, mode, match):
    with pytest.raises(ValueError, match=match):
        MinibatchSampler(n, size, mode=mode)


# -- oracles against closed forms ------------------------------------------------------------


def closed_forms(q, idx):
    """A_I, B_I, c_I of g_I = ½ yᵀA_I y − yᵀ(B_I θ + c_I) and t̄_J, from the problem's data."""
    g = q.problem.inner_loss
    p, d = q.problem.y0.numel(), q.problem.theta0.numel()
    # g is quadratic: recover A_I, B_I, c_I exactly from derivatives at 0 by autograd-free
    # finite differences of the *function* values (exact for quadratics up to rounding)
    zero_y, zero_t = torch.zeros(p, dtype=F64), torch.zeros(d, dtype=F64)
    e_y, e_t = torch.eye(p, dtype=F64), torch.eye(d, dtype=F64)
    val = lambda y, t: float(g(y, t, idx))  # noqa: E731
    g0 = val(zero_y, zero_t)
    A = np.array([[val(e_y[i] + e_y[j], zero_t) - val(e_y[i], zero_t) - val(e_y[j], zero_t) + g0
                   for j in range(p)] for i in range(p)])
    c = np.array([-(val(e_y[i], zero_t) - g0 - A[i, i] / 2) for i in range(p)])
    B = np.array([[-(val(e_y[i], e_t[k]) - val(e_y[i], zero_t) - val(zero_y, e_t[k]) + g0)
                   for k in range(d)] for i in range(p)])
    return A, B, c


@pytest.mark.parametrize("batch", [None, torch.tensor([3, 17, 42, 100, 7])])
def test_oracles_match_the_closed_forms(batch):
    q = quadratic(noise=0.5)
    gen = torch.Generator().manual_seed(0)
    y, v = torch.randn(5, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)
    theta = torch.randn(3, generator=gen, dtype=F64)
    A, B, c = closed_forms(q, batch)
    Y, V, T = y.numpy(), v.numpy(), theta.numpy()
    inner = inner_oracle(q.problem.inner_loss, y, theta, batch, v)
    np.testing.assert_allclose(inner.grad_y.numpy(), A @ Y - B @ T - c, atol=1e-9)
    np.testing.assert_allclose(inner.hvp.numpy(), A @ V, atol=1e-9)
    np.testing.assert_allclose(inner.cross.numpy(), -B.T @ V, atol=1e-9)
    np.testing.assert_allclose(inner_grad(q.problem.inner_loss, y, theta, batch).numpy(),
                               inner.grad_y.numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(hvp(q.problem.inner_loss, y, theta, batch, v).numpy(),
                               inner.hvp.numpy(), rtol=1e-14, atol=1e-14)
    outer = outer_oracle(q.problem.outer_loss, y, theta, batch)
    t_mean = (q.targets if batch is None else q.targets[batch]).mean(0).numpy()
    np.testing.assert_allclose(outer.grad_y.numpy(), Y - t_mean, atol=1e-12)
    np.testing.assert_allclose(outer.grad_theta.numpy(), q.mu * T, atol=1e-12)


def test_power_iteration_finds_the_largest_curvature():
    q = quadratic()
    A, _, _ = closed_forms(q, None)
    top = np.linalg.eigvalsh(A)[-1]
    lam, u = power_iteration(q.problem.inner_loss, q.problem.y0, q.problem.theta0,
                             torch.ones(5, dtype=F64), 400)
    assert lam == pytest.approx(top, rel=1e-5)
    assert lam <= top * (1 + 1e-12)  # a Rayleigh quotient: from below
    warm, _ = power_iteration(q.problem.inner_loss, q.problem.y0, q.problem.theta0, u, 1)
    assert warm == pytest.approx(top, rel=1e-5)  # the warm start keeps the estimate


def test_power_iteration_rejects_a_concave_inner_problem():
    with pytest.raises(ValueError, match="strongly convex"):
        power_iteration(lambda y, t, idx: -(y * y).sum(), torch.zeros(3, dtype=F64),
                        torch.zeros(1, dtype=F64), torch.ones(3, dtype=F64), 5)


def test_curvature_refresh_follows_theta():
    """g = ½ e^θ ‖y‖² − Σy: ∇²_yy g = e^θ I. L follows a growing e^θ at the next refresh and
    shrinks at most by half per refresh."""
    from bilevel.outer import SOBA, BilevelProblem

    def g(y, theta, idx=None):
        return 0.5 * theta.exp().sum() * (y * y).sum() - y.sum()

    def f(y, theta, idx=None):
        return 0.5 * (y * y).sum()

    problem = BilevelProblem(inner=None, outer=lambda y, t: f(y, t), theta0=torch.zeros(1,
                             dtype=F64), y0=torch.zeros(4, dtype=F64), inner_loss=g,
                             outer_loss=f)
    method = SOBA(batch_size=None, outer_batch_size=None, curvature_every=5)
    state = method.init(problem)
    assert state.extra["lipschitz"] == pytest.approx(1.0, rel=1e-12)
    state.theta.fill_(3.0)
    state.step = 4
    method.refresh_curvature(problem, state)  # not a refresh step
    assert state.extra["lipschitz"] == pytest.approx(1.0, rel=1e-12)
    state.step = 5
    method.refresh_curvature(problem, state)
    assert state.extra["lipschitz"] == pytest.approx(np.exp(3.0), rel=1e-12)
    state.theta.fill_(-3.0)
    state.step = 10
    method.refresh_curvature(problem, state)
    assert state.extra["lipschitz"] == pytest.approx(np.exp(3.0) / 2, rel=1e-12)
