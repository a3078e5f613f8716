"""Implicit hypergradient descent: exact inner solve, implicit hypergradient, a torch optimizer.

Each step: ``y* = inner.run(θ)`` warm-started at the previous ``y*``; the hypergradient
``∇h(θ) = ∂θF + Aᵀu`` with ``Bᵀu = −∂yF`` (``bilevel.implicit_solve``); one step of a
``torch.optim`` optimizer on θ; projection of θ on ``problem.bounds``. The row it returns
holds θ's value *before* the update, with the outer value and hypergradient measured there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.adjoint import ImplicitAdjoint
from bilevel.implicit import implicit_solve
from bilevel.outer.base import BilevelProblem, OuterState

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass
class ImplicitGD:
    """Implicit hypergradient descent.

    Args:
        optimizer: ``"sgd"`` or ``"adam"`` (a ``torch.optim`` class).
        lr: learning rate.
        adjoint: adjoint settings passed to :func:`bilevel.implicit_solve`.
    """

    optimizer: str = "adam"
    lr: float = 0.1
    adjoint: ImplicitAdjoint = field(default_factory=ImplicitAdjoint)
    name: str = "implicit"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def init(self, problem: BilevelProblem) -> OuterState:
        theta = problem.theta0.detach().clone().requires_grad_(True)
        opt = OPTIMIZERS[self.optimizer]([theta], lr=self.lr)
        return OuterState(theta, problem.y0.detach().clone(), extra={"optimizer": opt})

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        opt = state.extra["optimizer"]
        opt.zero_grad()
        y = implicit_solve(problem.inner, state.theta, state.y, adjoint=self.adjoint)
        value = problem.outer(y, state.theta)
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
        opt.step()
        if problem.bounds is not None:
            with torch.no_grad():
                state.theta.clamp_(*problem.bounds)
        state.y = y.detach()
        state.step += 1
        return row
