"""The bilevel problem an outer method optimises, and the loop that drives any method.

Problem: ``min_θ  F(y*(θ), θ)`` with ``y*(θ)`` the solution returned by ``inner.run(θ)``.
An outer method is an object with ``init(problem) -> state`` and
``step(problem, state) -> metrics`` (mutating ``state``), so that a loop, a checkpoint or a test
can drive every method the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from solvers.base import InnerSolver


@dataclass
class BilevelProblem:
    """``min_θ F(y*(θ), θ)``.

    Attributes:
        inner: the inner solver (``y*(θ) = inner.run(θ)``).
        outer: ``F(y, θ)``, a scalar.
        theta0: starting outer variable.
        y0: starting inner variable (warm start of the first inner solve).
        bounds: optional box ``(low, high)`` on θ, applied by projection after each step.
        inner_loss: ``g(y, θ, idx)``, the inner objective averaged over the inner samples ``idx``
            (a 1-D index tensor; ``None`` means all ``n_inner`` samples). Stochastic methods
            (SOBA, SABA, AmIGO, StocBiO, TTSA, unrolled) need it; ``y*(θ) = argmin_y g(y, θ, None)``.
        outer_loss: ``f(y, θ, idx)``, the outer objective averaged over the outer samples ``idx``
            (``None``: all ``n_outer`` samples; then it equals ``outer(y, θ)``).
        n_inner, n_outer: number of inner / outer samples (0 when the task has no sample
            structure).
    """

    inner: InnerSolver
    outer: Callable[[Tensor, Tensor], Tensor]
    theta0: Tensor
    y0: Tensor
    bounds: tuple[float, float] | None = None
    inner_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    outer_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    n_inner: int = 0
    n_outer: int = 0


@dataclass
class OuterState:
    """What an outer method carries between steps (everything needed to resume)."""

    theta: Tensor
    y: Tensor
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class OuterMethod(Protocol):
    name: str

    def init(self, problem: BilevelProblem) -> OuterState: ...

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, float]: ...


@dataclass
class OuterResult:
    """Outcome of :func:`run_outer`.

    Attributes:
        theta: the best iterate (lowest outer value seen).
        y: the inner solution at ``theta`` (methods leave ``state.y = y*(θ before the step)``).
        history: one metrics row per step.
        status: ``"converged"``, ``"max_steps"`` or ``"diverged"``.
        message: why the loop stopped.
    """

    theta: Tensor
    y: Tensor
    history: list[dict[str, float]]
    status: str
    message: str


def run_outer(
    method: OuterMethod,
    problem: BilevelProblem,
    steps: int,
    *,
    gtol: float = 0.0,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> OuterResult:
    """Run ``steps`` outer steps; stop early when the hypergradient norm falls below ``gtol``
    or when θ, the inner or the outer value becomes NaN/Inf (status ``"diverged"``, the best
    iterate so far is kept)."""
    state = method.init(problem)
    best = (math.inf, state.theta.detach().clone(), state.y.detach().clone())
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    status, message = "max_steps", f"ran {steps} outer steps"
    for _ in range(steps):
        theta_before = state.theta.detach().clone()
        row = method.step(problem, state)  # measures the outer value at theta_before
        row["time_s"] = time.perf_counter() - start
        history.append(row)
        if on_step is not None:
            on_step(row)
        finite = math.isfinite(row["outer_value"]) and bool(torch.isfinite(state.theta).all())
        if not finite:
            status = "diverged"
            message = (f"step {state.step}: NaN/Inf in θ or the outer value; kept the best "
                       "iterate. Lower the learning rate or bound θ.")
            break
        if row["outer_value"] < best[0]:
            best = (row["outer_value"], theta_before, state.y.detach().clone())
        if row.get("hypergrad_norm", math.inf) <= gtol:
            status, message = "converged", f"hypergradient norm ≤ {gtol:g} at step {state.step}"
            break
    return OuterResult(best[1], best[2], history, status, message)
