"""What the stochastic outer methods share: settings, samplers, step sizes, the metrics row.

Every method built on :class:`StochasticMethod` keeps its whole state in the
:class:`~bilevel.outer.base.OuterState` (so that a checkpoint restores it exactly):
``theta``, ``y`` (the inner iterate, warm-started across outer steps), ``step`` and ``extra``:

- ``"inner_sampler"`` / ``"outer_sampler"``: :class:`~bilevel.outer.sampling.MinibatchSampler`
  with independent generators (absent when the batch size is ``None``: full batch);
- ``"v"``: the linear-system variable ``v ≈ (∇²_yy g)⁻¹ ∇_y f`` (warm-started);
- ``"lipschitz"`` and ``"curvature_vector"``: the curvature estimate ``L ≈ λ_max(∇²_yy g)``
  and its eigenvector estimate (:mod:`bilevel.outer.curvature`): full batch at init, then
  refreshed every ``curvature_every`` steps by 2 warm-started power iterations on an inner
  minibatch (about one extra step's cost per ``curvature_every`` steps);
- ``"optimizer"``: the ``torch.optim`` optimizer that moves θ along the hypergradient
  estimate ``D_θ`` (``"sgd"``: the papers' ``θ ← θ − γ_k D_θ``; ``"adam"``: scale-free);

plus what a method adds. Step sizes: the inner (and linear-system) step is
``ρ_k = inner_lr / L / (k + 1)^inner_decay`` (scale-free: ``inner_lr`` is a fraction of ``1/L``,
and gradient descent is stable below ``2/L``), the outer step is
``γ_k = outer_lr / (k + 1)^outer_decay`` (:class:`~bilevel.outer.schedules.StepSize`, which
checks the Robbins–Monro conditions). θ is projected on ``problem.bounds`` after every step.

The ``outer_value`` of a row is the minibatch outer loss ``f(y_k, θ_k, J)`` at the current inner
iterate (the full outer loss when the outer batch is ``None``), not ``h(θ_k)``: an exact value
would cost an inner solve per step. Evaluate ``h`` separately (e.g. from the ``theta_*`` entries)
to monitor convergence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.curvature import power_iteration, tracked
from bilevel.outer.optim import bind, check_optimizer, make_optimizer, set_lr
from bilevel.outer.oracles import Loss, inner_grad, require_losses
from bilevel.outer.sampling import MODES, MinibatchSampler, stream_seed
from bilevel.outer.schedules import StepSize

INNER_STREAM, OUTER_STREAM, EXTRA_STREAM = 0, 1, 2


@dataclass
class StochasticMethod:
    """Settings shared by the stochastic methods (see the module docstring).

    Args:
        inner_lr: inner / linear-system step as a fraction of ``1 / L`` (``0 < inner_lr < 2``).
        optimizer: how θ moves along the hypergradient estimate ``D_θ``: ``"sgd"`` (the
            papers' update ``θ ← θ − γ_k D_θ``) or ``"adam"`` (``torch.optim.Adam`` fed with
            ``D_θ``: steps of about ``γ_k`` per coordinate whatever the scale of ``D_θ``, the
            safe default when that scale is unknown — e.g. ``∂h/∂θ_j ∝ e^{θ_j}`` for
            log-regularisation weights, where plain SGD needs γ ≈ 1e4).
        outer_lr: outer step ``γ₀`` on θ.
        inner_decay, outer_decay: exponents ``a`` of ``α₀ / (k + 1)^a`` (0: constant).
        batch_size: inner samples per minibatch (``None``: all, i.e. deterministic).
        outer_batch_size: outer samples per minibatch (``None``: all).
        sampling: a mode of :class:`~bilevel.outer.sampling.MinibatchSampler`.
        seed: seeds the samplers' generators (one independent stream each).
        curvature_every: refresh ``L`` every this many steps (0: never; ``L`` moves with θ,
            so a stale ``L`` can make the inner iterates diverge).
        power_iters: power iterations of the first (full-batch) curvature estimate.
    """

    inner_lr: float = 0.5
    optimizer: str = "adam"
    outer_lr: float = 0.01
    inner_decay: float = 0.0
    outer_decay: float = 0.0
    batch_size: int | None = 64
    outer_batch_size: int | None = 64
    sampling: str = "shuffle"
    seed: int = 0
    curvature_every: int = 10
    power_iters: int = 10
    name: str = "stochastic"

    def __post_init__(self) -> None:
        if not 0 < self.inner_lr < 2:
            raise ValueError(
                f"inner_lr is a fraction of 1/L and must be in (0, 2) (gradient descent "
                f"diverges above 2/L), got {self.inner_lr}"
            )
        for key in ("batch_size", "outer_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be ≥ 1 or None (full batch), got {value}")
        check_optimizer(self.optimizer)
        if self.sampling not in MODES:
            raise ValueError(f"sampling must be one of {MODES}, got {self.sampling!r}")
        if self.curvature_every < 0 or self.power_iters < 1:
            raise ValueError("curvature_every must be ≥ 0 and power_iters ≥ 1")
        self.inner_schedule = StepSize(self.inner_lr, self.inner_decay, "inner_lr")
        self.outer_schedule = StepSize(self.outer_lr, self.outer_decay, "outer_lr")

    # -- state -------------------------------------------------------------------------------

    def init(self, problem: BilevelProblem) -> OuterState:
        g, _ = require_losses(problem, type(self).__name__)
        theta = problem.theta0.detach().clone()
        y = problem.y0.detach().clone().to(theta.device)
        extra: dict[str, Any] = {"v": torch.zeros_like(y)}
        self.init_samplers(problem, extra, theta.device)
        lipschitz, u = power_iteration(g, y, theta, torch.ones_like(y), self.power_iters)
        extra["lipschitz"], extra["curvature_vector"] = lipschitz, u
        theta = project_theta(theta, problem)
        extra["optimizer"] = make_optimizer(self.optimizer, theta, self.outer_lr)
        state = OuterState(theta, y, extra=extra)
        self.init_extra(problem, state)
        return state

    def init_samplers(self, problem: BilevelProblem, extra: dict[str, Any],
                      device: torch.device) -> None:
        """Put ``"inner_sampler"`` / ``"outer_sampler"`` in ``extra`` (none for a ``None``
        batch size: full batch)."""
        for key, n, size, stream in (("inner_sampler", problem.n_inner, self.batch_size,
                                      INNER_STREAM),
                                     ("outer_sampler", problem.n_outer, self.outer_batch_size,
                                      OUTER_STREAM)):
            if size is not None:  # a batch larger than the data is all of it, reshuffled
                size = min(size, n) if n > 0 else size
                extra[key] = MinibatchSampler(n, size, mode=self.sampling,
                                              seed=stream_seed(self.seed, stream), device=device)

    def init_extra(self, problem: BilevelProblem, state: OuterState) -> None:
        """Hook: add method-specific entries to ``state.extra``."""

    # -- helpers for step() ------------------------------------------------------------------

    def inner_batch(self, state: OuterState) -> Tensor | None:
        sampler = state.extra.get("inner_sampler")
        return None if sampler is None else sampler()

    def outer_batch(self, state: OuterState) -> Tensor | None:
        sampler = state.extra.get("outer_sampler")
        return None if sampler is None else sampler()

    def refresh_curvature(self, problem: BilevelProblem, state: OuterState) -> None:
        """Every ``curvature_every`` steps: 2 power iterations on an inner minibatch at the
        current point, warm-started; ``L`` updated by :func:`~bilevel.outer.curvature.tracked`."""
        every = self.curvature_every
        if every == 0 or state.step == 0 or state.step % every:
            return
        g: Loss = problem.inner_loss  # type: ignore[assignment]
        estimate, state.extra["curvature_vector"] = power_iteration(
            g, state.y, state.theta, state.extra["curvature_vector"], 2,
            self.curvature_batch(state))
        state.extra["lipschitz"] = tracked(state.extra["lipschitz"], estimate)

    def curvature_batch(self, state: OuterState) -> Tensor | None:
        """The inner samples of a curvature refresh (a fresh inner minibatch)."""
        return self.inner_batch(state)

    def inner_step(self, state: OuterState) -> float:
        """``ρ_k = inner_lr / L / (k + 1)^inner_decay``."""
        return self.inner_schedule(state.step) / state.extra["lipschitz"]

    def inner_sgd(self, problem: BilevelProblem, state: OuterState, steps: int) -> Tensor:
        """``steps`` SGD steps on ``g`` from ``state.y`` with step ``ρ_k``, each on a fresh
        inner minibatch; returns the new ``y`` (``state`` keeps the old one)."""
        g, y, rho = problem.inner_loss, state.y, self.inner_step(state)
        for _ in range(steps):
            y = y - rho * inner_grad(g, y, state.theta, self.inner_batch(state))
        return y

    def update_theta(self, problem: BilevelProblem, state: OuterState, direction: Tensor
                     ) -> None:
        """One optimizer step on θ along ``−direction`` with ``γ_k = outer_lr /
        (k + 1)^outer_decay``, then the projection on ``problem.bounds``."""
        opt = state.extra["optimizer"]
        bind(opt, state.theta)
        set_lr(opt, self.outer_schedule, state.step)
        state.theta.grad = direction.detach().clone()
        opt.step()
        state.theta.grad = None
        with torch.no_grad():
            state.theta.copy_(project_theta(state.theta, problem))

    def row(self, state: OuterState, value: Tensor, direction: Tensor) -> dict[str, Any]:
        """The metrics row of the step about to be taken (θ is still θ_k)."""
        return {
            "step": state.step,
            "outer_value": float(value),
            "hypergrad_norm": float(direction.norm()),
            "lipschitz": float(state.extra["lipschitz"]),
            **{f"theta_{i}": float(t) for i, t in enumerate(state.theta.detach().flatten())},
        }


def project_theta(theta: Tensor, problem: BilevelProblem) -> Tensor:
    """θ projected on the box ``problem.bounds`` (unchanged when there is none)."""
    if problem.bounds is None:
        return theta
    return theta.clamp(*problem.bounds)
