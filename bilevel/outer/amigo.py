"""AmIGO (Arbel & Mairal 2022): warm-started SGD on the inner problem and on the linear system.

Each outer step, from the previous ``(y, v)`` (warm starts):

1. ``inner_steps`` SGD steps on the inner problem: ``y ← y − ρ_k ∇_y g_I(y, θ)``, a fresh inner
   minibatch ``I`` each;
2. one outer minibatch ``J`` gives ``b = ∇_y f_J(y, θ)`` and ``∇_θ f_J(y, θ)``;
3. ``linear_steps`` SGD steps on ``min_v ½ vᵀ∇²_yy g v − vᵀb`` (whose solution is
   ``v = (∇²_yy g)⁻¹ b``): ``v ← v − ρ_k (∇²_yy g_I(y, θ) v − b)``, a fresh ``I`` each;
4. the hypergradient estimate ``D_θ = ∇_θ f_J − ∇²_θy g_I(y, θ) v`` on a fresh ``I`` and
   ``θ ← Π_box(θ − γ_k D_θ)``.

Step sizes as in :class:`~bilevel.outer.stochastic.StochasticMethod`. Cost per outer step:
``inner_steps`` gradients, ``linear_steps + 1`` Hessian-vector products (double backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.oracles import cross, hvp, outer_oracle
from bilevel.outer.stochastic import StochasticMethod


@dataclass
class AmIGO(StochasticMethod):
    """AmIGO. Args (besides :class:`StochasticMethod`'s): ``inner_steps`` (≥ 1) SGD steps on y
    and ``linear_steps`` (≥ 1) SGD steps on v per outer step."""

    inner_steps: int = 10
    linear_steps: int = 10
    name: str = "amigo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_steps < 1 or self.linear_steps < 1:
            raise ValueError(
                f"inner_steps and linear_steps must be ≥ 1, got {self.inner_steps}, "
                f"{self.linear_steps}"
            )

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f = problem.inner_loss, problem.outer_loss
        theta, v = state.theta, state.extra["v"]
        rho = self.inner_step(state)
        y = self.inner_sgd(problem, state, self.inner_steps)
        outer = outer_oracle(f, y, theta, self.outer_batch(state))
        for _ in range(self.linear_steps):
            v = v - rho * (hvp(g, y, theta, self.inner_batch(state), v) - outer.grad_y)
        d_theta = outer.grad_theta - cross(g, y, theta, self.inner_batch(state), v)
        row = self.row(state, outer.value, d_theta)
        state.y, state.extra["v"] = y, v
        self.update_theta(problem, state, d_theta)
        state.step += 1
        return row
