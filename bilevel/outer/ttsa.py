"""TTSA (Hong, Wai, Wang, Yang 2023): two-timescale stochastic approximation.

One stochastic gradient step on each level per iteration, with the inner step ``β_k`` decaying
more slowly than the outer step ``α_k`` (``α_k / β_k → 0``), so that y tracks ``y*(θ)``:

    y_{k+1} = y_k − β_k ∇_y g_I(y_k, θ_k)
    θ_{k+1} = Π_box(θ_k − α_k D_θ),   D_θ = ∇_θ f_J(y_{k+1}, θ_k) − ∇²_θy g_{I'}(y_{k+1}, θ_k) v

with ``v`` the paper's randomly truncated Neumann estimate of ``(∇²_yy g)⁻¹ ∇_y f_J``:
``v = η Q Π_{s=1}^{q} (I − η ∇²_yy g_{I_s}) ∇_y f_J`` with ``q`` uniform on ``{0, …, Q−1}``
(unbiased for the ``Q``-term series; ``η = neumann_lr / L``). Its variance is large (the
factor ``Q``); ``randomized_neumann=False`` uses the whole ``Q``-term sum instead, as
StocBiO does (``Q`` Hessian-vector products per step instead of ``(Q − 1)/2`` on average).
Steps: ``β_k = inner_lr / L / (k+1)^inner_decay`` and ``α_k = outer_lr / (k+1)^outer_decay``.
The paper's schedules decay both (e.g. exponents 2/3 and 1 for a strongly convex outer
problem); the defaults here keep ``β`` constant (the fastest tracking of ``y*(θ)``) and decay
``α`` with exponent 0.6 (Robbins–Monro), so ``α_k / β_k → 0`` still separates the timescales.
The draw of ``q`` uses the method's own generator (``extra["neumann_generator"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.oracles import cross, hvp, neumann, outer_oracle
from bilevel.outer.sampling import stream_seed
from bilevel.outer.stochastic import EXTRA_STREAM, StochasticMethod


@dataclass
class TTSA(StochasticMethod):
    """TTSA. Args (besides :class:`StochasticMethod`'s): ``neumann_terms`` ``Q`` (≥ 1),
    ``neumann_lr`` (``η L``, in (0, 2)); ``outer_decay`` should exceed ``inner_decay``."""

    inner_decay: float = 0.0
    outer_decay: float = 0.6
    neumann_terms: int = 10
    neumann_lr: float = 0.5
    randomized_neumann: bool = True
    name: str = "ttsa"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.neumann_terms < 1:
            raise ValueError(f"neumann_terms must be ≥ 1, got {self.neumann_terms}")
        if not 0 < self.neumann_lr < 2:
            raise ValueError(f"neumann_lr (η·L) must be in (0, 2), got {self.neumann_lr}")

    def init_extra(self, problem: BilevelProblem, state: OuterState) -> None:
        state.extra["neumann_generator"] = torch.Generator().manual_seed(
            stream_seed(self.seed, EXTRA_STREAM))

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f = problem.inner_loss, problem.outer_loss
        theta = state.theta
        y = self.inner_sgd(problem, state, 1)
        outer = outer_oracle(f, y, theta, self.outer_batch(state))
        v = self.neumann(problem, state, y, outer.grad_y)
        d_theta = outer.grad_theta - cross(g, y, theta, self.inner_batch(state), v)
        row = self.row(state, outer.value, d_theta)
        state.y, state.extra["v"] = y, v
        self.update_theta(problem, state, d_theta)
        state.step += 1
        return row

    def neumann(self, problem: BilevelProblem, state: OuterState, y: Tensor, b: Tensor
                ) -> Tensor:
        """The (randomly truncated) Neumann estimate of ``(∇²_yy g)⁻¹ b`` at ``(y, θ)``."""
        g, theta = problem.inner_loss, state.theta
        eta = self.neumann_lr / state.extra["lipschitz"]
        depth = int(torch.randint(self.neumann_terms, (1,),
                                  generator=state.extra["neumann_generator"]))
        if self.randomized_neumann:
            for _ in range(depth):
                b = b - eta * hvp(g, y, theta, self.inner_batch(state), b)
            return (eta * self.neumann_terms) * b
        return neumann(g, y, theta, lambda: self.inner_batch(state), b, eta,
                       self.neumann_terms)
