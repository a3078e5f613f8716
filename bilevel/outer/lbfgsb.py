"""Projected L-BFGS on θ in a box, with exact inner solves and implicit hypergradients.

For a deterministic bilevel problem ``min_{l ≤ θ ≤ u} h(θ) = F(y*(θ), θ)``: every evaluation
solves the inner problem (warm-started at the last accepted ``y*``) and returns ``h(θ)``; the
hypergradient ``∇h(θ) = ∂θF + Aᵀu`` with ``Bᵀu = −∂yF`` (``bilevel.implicit_solve``) is taken
only at accepted points, so a rejected line-search trial costs one inner solve and no adjoint
solve. One step:

1. *Active set*: coordinate ``j`` is held at its bound when ``θ_j = l_j`` and ``∂_j h > 0``, or
   ``θ_j = u_j`` and ``∂_j h < 0`` (the projected gradient is zero there).
2. *Direction*: ``d = −H g`` on the free coordinates by the L-BFGS two-loop recursion over the
   last ``memory`` pairs ``(s, r) = (θ_{k+1} − θ_k, ∇h_{k+1} − ∇h_k)`` restricted to them,
   ``d_j = 0`` on the active ones; the initial scaling is ``sᵀr / rᵀr`` of the newest pair.
   When ``d`` is not a descent direction the memory is dropped and ``d = −g`` on the free set.
3. *Projected backtracking*: ``θ(t) = Π_box(θ + t d)`` from ``t = 1`` (on the first step, and
   whenever the memory is empty, ``t`` moves θ by ``first_step`` in ∞-norm: the hypergradient's
   scale says nothing about the step's), accepted when
   ``h(θ(t)) ≤ h(θ) + c₁ ∇h(θ)ᵀ(θ(t) − θ)`` (Armijo along the projection arc); a rejected ``t``
   is replaced by the minimiser of the quadratic through ``h(θ)``, that slope and
   ``h(θ(t))``, kept within ``[t/10, t/2]``.
   When no step length decreases h, the row carries ``stalled = 1`` and
   :func:`~bilevel.outer.base.run_outer` stops (status ``"stalled"``).
4. The pair is kept when ``sᵀr > 10⁻¹⁰ ‖s‖ ‖r‖`` (curvature condition; skipped otherwise).

The row holds θ_k (before the step), ``outer_value = h(θ_k)`` (exact) and ``hypergrad_norm``
= ‖Π(θ_k − ∇h(θ_k)) − θ_k‖_∞, the projected-gradient norm (0 exactly at a KKT point of the
box-constrained problem), so ``gtol`` stops at stationarity. Everything it carries (the memory
pairs, the last value and gradient) is in ``state.extra``: checkpoints restore it exactly.

This is the framework's recommended default for small θ (tens to thousands of
hyperparameters) with a full-batch inner problem, e.g. per-feature L2 logistic regression; the
stochastic methods are for inner problems too large for a full solve per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bilevel.adjoint import ImplicitAdjoint
from bilevel.implicit import implicit_solve
from bilevel.outer.base import BilevelProblem, OuterState
from solvers.base import DivergenceError

_ARMIJO = 1e-4
_CURVATURE = 1e-10


@dataclass
class BoundedLBFGS:
    """Projected L-BFGS on the box ``problem.bounds`` (see the module docstring).

    Args:
        memory: number of correction pairs kept.
        first_step: ∞-norm move of θ on the first step (no curvature known yet).
        max_backtracks: shortenings of the step before the line search is declared failed.
        adjoint: adjoint settings passed to :func:`bilevel.implicit_solve`.

    Raises:
        ValueError: on invalid settings.
    """

    memory: int = 10
    first_step: float = 1.0
    max_backtracks: int = 20
    adjoint: ImplicitAdjoint = field(default_factory=ImplicitAdjoint)
    name: str = "lbfgsb"

    def __post_init__(self) -> None:
        if self.memory < 1 or self.max_backtracks < 1:
            raise ValueError(f"memory and max_backtracks must be ≥ 1, got {self.memory}, "
                             f"{self.max_backtracks}")
        if not (math.isfinite(self.first_step) and self.first_step > 0):
            raise ValueError(f"first_step must be a finite number > 0, got {self.first_step}")

    def init(self, problem: BilevelProblem) -> OuterState:
        theta = _project(problem.theta0.detach().clone(), problem)
        y = problem.y0.detach().clone().to(theta.device)
        extra: dict[str, Any] = {"s": [], "r": [], "value": None, "grad": None}
        return OuterState(theta, y, extra=extra)

    def evaluate(self, problem: BilevelProblem, theta: Tensor, y_init: Tensor
                 ) -> tuple[float, Tensor, Tensor]:
        """``(h(θ), ∇h(θ), y*(θ))`` with the inner solve warm-started at ``y_init``."""
        trial = self._trial(problem, theta, y_init)
        return trial.value, trial.gradient(), trial.y

    def _trial(self, problem: BilevelProblem, theta: Tensor, y_init: Tensor) -> _Trial:
        """``h(θ)`` by one warm-started inner solve; ``∇h(θ)`` (the adjoint solve) only on
        demand, so a rejected line-search trial costs no adjoint solve."""
        t = theta.detach().clone().requires_grad_(True)
        y = implicit_solve(problem.inner, t, y_init, adjoint=self.adjoint)
        value = problem.outer(y, t)
        return _Trial(float(value.detach()), y.detach(), value, t)

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        extra = state.extra
        theta = state.theta
        if extra["grad"] is None:
            extra["value"], extra["grad"], state.y = self.evaluate(problem, theta, state.y)
        value, grad = float(extra["value"]), extra["grad"]
        projected = _project(theta - grad, problem) - theta
        row = {
            "step": state.step,
            "outer_value": value,
            "hypergrad_norm": float(projected.abs().max()),
            **{f"theta_{i}": float(v) for i, v in enumerate(theta.flatten())},
        }
        free = _free(theta, grad, problem)
        direction = self._direction(grad, free, extra)
        slope = float(grad @ direction) if grad.ndim else float(grad * direction)
        if not slope < 0:  # not a descent direction: drop the memory
            extra["s"], extra["r"] = [], []
            direction = torch.where(free, -grad, torch.zeros_like(grad))
        move = float(direction.abs().max())
        if not extra["s"]:  # no curvature known: move θ by first_step (∞-norm)
            t = self.first_step / move if move > 0 else 1.0
        else:
            t = 1.0
        for _ in range(self.max_backtracks):
            candidate = _project(theta + t * direction, problem)
            try:
                trial = self._trial(problem, candidate, state.y)
            except (DivergenceError, ValueError):  # e^θ overflow etc.: shorten the step
                t *= 0.5
                continue
            decrease = float((grad * (candidate - theta)).sum())
            if math.isfinite(trial.value) and trial.value <= value + _ARMIJO * decrease:
                break
            t *= _shrink(value, trial.value, decrease)
        else:  # θ unchanged: h is flat to rounding along d (optimal to working precision)
            row["stalled"] = 1.0  # run_outer stops here
            state.step += 1
            return row
        new_grad = trial.gradient()
        s, r = (candidate - theta).flatten(), (new_grad - grad).flatten()
        if float(s @ r) > _CURVATURE * float(s.norm() * r.norm()):
            extra["s"] = (extra["s"] + [s])[-self.memory:]
            extra["r"] = (extra["r"] + [r])[-self.memory:]
        state.theta, state.y = candidate, trial.y
        extra["value"], extra["grad"] = trial.value, new_grad
        row["step_size"] = t
        state.step += 1
        return row

    def _direction(self, grad: Tensor, free: Tensor, extra: dict[str, Any]) -> Tensor:
        """``−H g`` on the free coordinates by the two-loop recursion (zero elsewhere)."""
        mask = free.flatten().to(grad.dtype)
        q = grad.flatten() * mask
        pairs = [(s * mask, r * mask) for s, r in zip(extra["s"], extra["r"], strict=True)]
        pairs = [(s, r) for s, r in pairs if float(s @ r) > 0]
        alphas = []
        for s, r in reversed(pairs):
            rho = 1.0 / float(s @ r)
            a = rho * float(s @ q)
            q = q - a * r
            alphas.append((rho, a))
        if pairs:
            s, r = pairs[-1]
            q = q * (float(s @ r) / float(r @ r))
        for (s, r), (rho, a) in zip(pairs, reversed(alphas), strict=True):
            b = rho * float(r @ q)
            q = q + (a - b) * s
        return (-q * mask).reshape(grad.shape)


@dataclass
class _Trial:
    """One evaluation of h: the value, y*, and the graph to differentiate on demand."""

    value: float
    y: Tensor
    _value: Tensor
    _theta: Tensor

    def gradient(self) -> Tensor:
        (grad,) = torch.autograd.grad(self._value, self._theta)
        return grad.detach()


def _shrink(value: float, new_value: float, decrease: float) -> float:
    """Factor by which to shorten a rejected step: the minimiser of the quadratic through
    ``h(θ)``, the slope ``decrease`` = ∇h(θ)ᵀ(θ(t) − θ) and ``h(θ(t))``, kept in [0.1, 0.5]
    (0.5 when ``h(θ(t))`` is not finite)."""
    curvature = new_value - value - decrease
    if not (math.isfinite(new_value) and curvature > 0):
        return 0.5
    return min(0.5, max(0.1, -decrease / (2 * curvature)))


def _project(theta: Tensor, problem: BilevelProblem) -> Tensor:
    return theta if problem.bounds is None else theta.clamp(*problem.bounds)


def _free(theta: Tensor, grad: Tensor, problem: BilevelProblem) -> Tensor:
    """Coordinates not held at a bound by the gradient."""
    if problem.bounds is None:
        return torch.ones_like(theta, dtype=torch.bool)
    low, high = problem.bounds
    held = ((theta <= low) & (grad > 0)) | ((theta >= high) & (grad < 0))
    return ~held
