"""Unrolled differentiation (ITD) and truncated backpropagation: the autodiff baselines.

From the warm start ``y_0`` (the previous outer step's last iterate, detached), ``K`` gradient
steps on the inner objective

    y_{k+1} = y_k − η ∇_y g_{I_k}(y_k, θ),     η = inner_lr / L,

(``I_k`` an inner minibatch, or all samples when ``batch_size=None``); the hypergradient
estimate is the gradient of ``f(y_K, θ, J)`` with respect to θ by backpropagation through the
steps (double backward through ``∇_y g``). With ``truncate = K'`` only the last ``K'`` steps
are differentiated (the first ``K − K'`` run without a graph): memory ``O(K')`` instead of
``O(K)``.

At a fixed point ``y_0 = y*(θ)`` the unrolled derivative is
``∇_θ f − ∇²_θy g · η Σ_{k<K'} (I − η∇²_yy g)^k ∇_y f``: the Neumann series of the implicit
hypergradient truncated after ``K'`` terms, with a relative bias ``(1 − η μ)^{K'}`` for a
``μ``-strongly convex ``g`` (so ITD needs ``K' ≳ L/μ`` steps to be accurate; the implicit
methods do not). θ is updated by the ``optimizer`` (``"sgd"``/``"adam"``) with step
``outer_lr / (k + 1)^outer_decay`` and projected on ``problem.bounds``. ``L`` is the
curvature estimate of :mod:`bilevel.outer.curvature` (``extra["lipschitz"]``), refreshed like
the stochastic methods'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.optim import bind, set_lr
from bilevel.outer.oracles import inner_grad
from bilevel.outer.stochastic import StochasticMethod, project_theta


@dataclass
class Unrolled(StochasticMethod):
    """ITD / truncated backprop.

    Args (besides :class:`~bilevel.outer.stochastic.StochasticMethod`'s):
        steps: ``K ≥ 1`` inner gradient steps per outer step.
        truncate: ``K'``, the number of last steps differentiated (``None``: all, i.e. ITD).
        batch_size, outer_batch_size: default ``None`` (deterministic, full batch).
    """

    steps: int = 50
    truncate: int | None = None
    outer_lr: float = 0.1
    batch_size: int | None = None
    outer_batch_size: int | None = None
    name: str = "unrolled"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.truncate is not None and not 1 <= self.truncate <= self.steps:
            raise ValueError(
                f"truncate must be in [1, steps={self.steps}] or None (differentiate every "
                f"step), got {self.truncate}"
            )

    def init_extra(self, problem: BilevelProblem, state: OuterState) -> None:
        state.theta.requires_grad_(True)

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f = problem.inner_loss, problem.outer_loss
        opt = state.extra["optimizer"]
        if not state.theta.requires_grad:
            state.theta = state.theta.detach().requires_grad_(True)
        theta = state.theta
        bind(opt, theta)
        opt.zero_grad()
        eta = self.inner_step(state)
        n_free = self.steps - (self.truncate or self.steps)
        y = state.y.detach()
        for _ in range(n_free):
            y = y - eta * inner_grad(g, y, theta, self.inner_batch(state))
        y = y.detach().requires_grad_(True)
        for _ in range(self.steps - n_free):
            (d,) = torch.autograd.grad(g(y, theta, self.inner_batch(state)), y,
                                       create_graph=True)
            y = y - eta * d
        value = f(y, theta, self.outer_batch(state))
        value.backward()
        row = self.row(state, value.detach(), theta.grad)
        set_lr(opt, self.outer_schedule, state.step)
        opt.step()
        with torch.no_grad():
            theta.copy_(project_theta(theta, problem))
        state.y = y.detach()
        state.step += 1
        return row
