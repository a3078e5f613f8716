"""Implicit hypergradient descent: exact inner solve, implicit hypergradient, a torch optimizer.

Each step: ``y* = inner.run(θ)`` warm-started at the previous ``y*`` (solved to the solver's
tolerance); the hypergradient ``∇h(θ) = ∂θF + Aᵀu`` with ``Bᵀu = −∂yF``
(``bilevel.implicit_solve``); one step of a ``torch.optim`` optimizer on θ with the step
``lr / (k + 1)^decay``; projection of θ on ``problem.bounds``.

Deterministic (``batch_size=None``): ``F = problem.outer``. Minibatch: ``F = f(y*, θ, J)`` on an
outer minibatch ``J`` of ``batch_size`` samples drawn by the method's own generator
(``extra["outer_sampler"]``) — an unbiased estimate of the full hypergradient, since the
implicit derivative is linear in ``∂yF`` (and, by the integral rule, a conservative one at
kinks). The row holds θ's value *before* the update, with the outer value (of the minibatch)
and the hypergradient measured there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.adjoint import ImplicitAdjoint
from bilevel.implicit import implicit_solve
from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.optim import OPTIMIZERS, bind, check_optimizer, make_optimizer, set_lr
from bilevel.outer.sampling import MODES, MinibatchSampler, stream_seed
from bilevel.outer.schedules import StepSize
from bilevel.outer.stochastic import OUTER_STREAM, project_theta

__all__ = ["OPTIMIZERS", "ImplicitGD"]


@dataclass
class ImplicitGD:
    """Implicit hypergradient descent.

    Args:
        optimizer: ``"sgd"`` or ``"adam"`` (a ``torch.optim`` class).
        lr: learning rate ``α₀``.
        decay: the step is ``lr / (k + 1)^decay`` (0: constant; a decreasing schedule should
            satisfy the Robbins–Monro conditions ``1/2 < decay ≤ 1``, else it warns).
        batch_size: outer samples per minibatch (``None``: deterministic, the full outer loss).
        sampling: a :class:`~bilevel.outer.sampling.MinibatchSampler` mode.
        seed: seed of the outer sampler's generator.
        adjoint: adjoint settings passed to :func:`bilevel.implicit_solve`.
    """

    optimizer: str = "adam"
    lr: float = 0.1
    decay: float = 0.0
    batch_size: int | None = None
    sampling: str = "shuffle"
    seed: int = 0
    adjoint: ImplicitAdjoint = field(default_factory=ImplicitAdjoint)
    name: str = "implicit"

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)
        if self.sampling not in MODES:
            raise ValueError(f"sampling must be one of {MODES}, got {self.sampling!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1 or None, got {self.batch_size}")
        self.schedule = StepSize(self.lr, self.decay, "lr")

    def init(self, problem: BilevelProblem) -> OuterState:
        theta = project_theta(problem.theta0.detach().clone(), problem).requires_grad_(True)
        extra: dict[str, Any] = {"optimizer": make_optimizer(self.optimizer, theta, self.lr)}
        if self.batch_size is not None:
            if problem.outer_loss is None:
                raise ValueError(
                    "ImplicitGD with a batch_size needs BilevelProblem.outer_loss = f(y, θ, idx) "
                    "and n_outer; or use batch_size=None (the full outer loss)"
                )
            extra["outer_sampler"] = MinibatchSampler(
                problem.n_outer, min(self.batch_size, max(problem.n_outer, 1)), mode=self.sampling,
                seed=stream_seed(self.seed, OUTER_STREAM), device=theta.device)
        y = problem.y0.detach().clone().to(theta.device)
        return OuterState(theta, y, extra=extra)

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        opt = state.extra["optimizer"]
        if not state.theta.requires_grad:
            state.theta = state.theta.detach().requires_grad_(True)
        bind(opt, state.theta)
        opt.zero_grad()
        y = implicit_solve(problem.inner, state.theta, state.y, adjoint=self.adjoint)
        sampler = state.extra.get("outer_sampler")
        if sampler is None:
            value = problem.outer(y, state.theta)
        else:
            value = problem.outer_loss(y, state.theta, sampler())  # type: ignore[misc]
        value.backward()
        report = self.adjoint.report
        row = {
            "step": state.step,
            "outer_value": float(value.detach()),
            "hypergrad_norm": float(state.theta.grad.norm()),
            "inner_residual": report.inner.residual if report.inner else float("nan"),
            "inner_iterations": report.inner.iterations if report.inner else 0,
            "adjoint_iterations": report.linear.iterations if report.linear else 0,
            "n_kinks": report.n_kinks,
            "active_size": report.restricted_size,
            **{f"theta_{i}": float(v) for i, v in enumerate(state.theta.detach().flatten())},
        }
        set_lr(opt, self.schedule, state.step)
        opt.step()
        with torch.no_grad():
            state.theta.copy_(project_theta(state.theta, problem))
        state.y = y.detach()
        state.step += 1
        return row
