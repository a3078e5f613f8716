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

Precision control (``hypergrad_rtol`` and/or ``hypergrad_atol``; :mod:`bilevel.precision`):
instead of the solver's fixed ``tol``, step ``k`` solves to ``ε_k = δ_k / (safety · Ĉ)`` with
``δ_k = rtol · ‖g_{k−1}‖`` (or ``atol / (k+1)^decay``) and ``Ĉ`` the measured ratio of
hypergradient error to inner residual, so that ``‖g_k − ∇h(θ_k)‖ ≲ δ_k``. ``Ĉ`` is measured on
the first step, every ``calibrate_every`` steps, and whenever a solve stops at a residual
above the range it was measured on; a measuring step uses the hypergradient at
``inner_tol_min``. Rows then also hold ``inner_tol`` and ``hypergrad_error_bound``
(``safety·Ĉ·residual``). With both options None (default) nothing changes: same trajectory.
The rows' ``outer_value`` is then ``F`` at the loosely solved ``ŷ`` (its error is of order
``‖∂yF‖·‖ŷ − y*‖``, not controlled by ``δ``), so the best iterate that ``run_outer`` picks by
that value is only as good as that precision: near θ* prefer the last θ, or re-evaluate.
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
from bilevel.outer.optim import OPTIMIZERS, bind, check_optimizer, make_optimizer, set_lr
from bilevel.outer.sampling import MODES, MinibatchSampler, stream_seed
from bilevel.outer.schedules import StepSize
from bilevel.outer.stochastic import OUTER_STREAM, project_theta
from bilevel.precision import (
    PrecisionControl,
    calibrate,
    inner_tolerance,
    reached_residual,
    validate,
)

__all__ = ["OPTIMIZERS", "ImplicitGD"]

PRECISION_OPTIONS = {"rtol": "hypergrad_rtol", "atol": "hypergrad_atol", "decay": "hypergrad_decay",
                     "tol_min": "inner_tol_min", "tol_max": "inner_tol_max",
                     "safety": "tol_safety", "calibrate_every": "calibrate_every"}


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
        hypergrad_rtol: precision control: hypergradient error ``≤ rtol·‖g_{k−1}‖`` (in
            (0, 1)); None with ``hypergrad_atol`` None: the solver's own fixed ``tol``.
        hypergrad_atol: precision control: hypergradient error ``≤ atol/(k+1)^hypergrad_decay``
            (with ``hypergrad_rtol`` too: the smaller of the two).
        hypergrad_decay: exponent of the absolute target (``> 1``: summable tolerances).
        inner_tol_min, inner_tol_max: bounds of the derived inner tolerance (``inner_tol_min``
            is also the reference of the calibration; raise it for float32, e.g. 1e-5).
        calibrate_every: measure the error constant again every this many steps (0: only when
            a solve leaves the residual range it was measured on).
        tol_safety: the measured constant is multiplied by this.

    Raises:
        ValueError: a bad option, named.
    """

    optimizer: str = "adam"
    lr: float = 0.1
    decay: float = 0.0
    batch_size: int | None = None
    sampling: str = "shuffle"
    seed: int = 0
    adjoint: ImplicitAdjoint = field(default_factory=ImplicitAdjoint)
    # PrecisionControl's options under this method's names (PRECISION_OPTIONS), its defaults
    hypergrad_rtol: float | None = PrecisionControl.rtol
    hypergrad_atol: float | None = PrecisionControl.atol
    hypergrad_decay: float = PrecisionControl.decay
    inner_tol_min: float = PrecisionControl.tol_min
    inner_tol_max: float = PrecisionControl.tol_max
    calibrate_every: int = PrecisionControl.calibrate_every
    tol_safety: float = PrecisionControl.safety
    name: str = "implicit"

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)
        if self.sampling not in MODES:
            raise ValueError(f"sampling must be one of {MODES}, got {self.sampling!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1 or None, got {self.batch_size}")
        self.schedule = StepSize(self.lr, self.decay, "lr")
        self.precision = self._precision_control()

    def _precision_control(self) -> PrecisionControl | None:
        values = {f: getattr(self, name) for f, name in PRECISION_OPTIONS.items()}
        on = self.hypergrad_rtol is not None or self.hypergrad_atol is not None
        validate(values, PRECISION_OPTIONS, need_target=on)  # typos are errors even when off
        return PrecisionControl(**values) if on else None  # type: ignore[arg-type]

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
        if self.precision is not None:
            extra.update(precision_constant=math.nan, precision_residual=math.nan,
                         precision_grad_norm=math.nan, precision_calibrated_at=-1)
        y = problem.y0.detach().clone().to(theta.device)
        return OuterState(theta, y, extra=extra)

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        opt = state.extra["optimizer"]
        if not state.theta.requires_grad:
            state.theta = state.theta.detach().requires_grad_(True)
        bind(opt, state.theta)
        opt.zero_grad()
        controlled: dict[str, float] = {}
        if self.precision is None:
            y = implicit_solve(problem.inner, state.theta, state.y, adjoint=self.adjoint)
            sampler = state.extra.get("outer_sampler")
            if sampler is None:
                value = problem.outer(y, state.theta)
            else:
                value = problem.outer_loss(y, state.theta, sampler())  # type: ignore[misc]
            value.backward()
        else:
            y, value, controlled = self._controlled_step(problem, state, self.precision)
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
            **controlled,
            **{f"theta_{i}": float(v) for i, v in enumerate(state.theta.detach().flatten())},
        }
        set_lr(opt, self.schedule, state.step)
        opt.step()
        with torch.no_grad():
            state.theta.copy_(project_theta(state.theta, problem))
        state.y = y.detach()
        state.step += 1
        return row

    def _controlled_step(self, problem: BilevelProblem, state: OuterState,
                         ctrl: PrecisionControl) -> tuple[Tensor, Tensor, dict[str, float]]:
        """One hypergradient at the derived tolerance (or a calibration): sets θ.grad and
        returns ``y``, the outer value and the row's precision columns."""
        extra, theta, solver = state.extra, state.theta, problem.inner
        sampler = extra.get("outer_sampler")
        index = None if sampler is None else sampler()  # one minibatch for every solve here
        values: list[Tensor] = []

        def hypergradient(y_init: Tensor) -> tuple[Tensor, Tensor]:
            y = implicit_solve(solver, theta, y_init, adjoint=self.adjoint)
            if index is None:
                value = problem.outer(y, theta)
            else:
                value = problem.outer_loss(y, theta, index)  # type: ignore[misc]
            (grad,) = torch.autograd.grad(value, theta)
            values.append(value.detach())
            return grad, y.detach()

        start = None
        if not ctrl.due(state.step, extra["precision_calibrated_at"]):
            tol = ctrl.tolerance(ctrl.target(state.step, extra["precision_grad_norm"]),
                                 extra["precision_constant"])
            with inner_tolerance(solver, tol):
                grad, y = hypergradient(state.y)
            residual = reached_residual(solver, tol)
            if ctrl.trusted(residual, extra["precision_residual"]):
                bound = ctrl.safety * extra["precision_constant"] * residual
            else:  # Ĉ was not measured this far from y*: measure it, continuing from here
                start = (tol, grad, y)
        if start is not None or ctrl.due(state.step, extra["precision_calibrated_at"]):
            cal = calibrate(solver, hypergradient, state.y if start is None else start[2],
                            tol_max=ctrl.tol_max, tol_min=ctrl.tol_min, start=start)
            extra.update(precision_constant=cal.constant, precision_residual=cal.residual,
                         precision_calibrated_at=state.step)
            grad, y, tol = cal.grad, cal.y, ctrl.tol_min
            bound = ctrl.safety * cal.constant * cal.rungs[-1][1]
        theta.grad = grad
        extra["precision_grad_norm"] = float(torch.linalg.vector_norm(grad))
        return y, values[-1], {"inner_tol": tol, "hypergrad_error_bound": bound}
