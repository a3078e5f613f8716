"""SOBA (Dagréou, Ablin, Vaiter, Moreau 2022): one joint stochastic step on (y, v, θ).

With ``v* = (∇²_yy g)⁻¹ ∇_y f`` the solution of the hypergradient's linear system, SOBA moves
the three variables together, all directions evaluated at the current ``(y_k, v_k, θ_k)`` on an
inner minibatch ``I`` and an outer minibatch ``J``:

    D_y = ∇_y g_I(y, θ)
    D_v = ∇²_yy g_I(y, θ) v − ∇_y f_J(y, θ)          (gradient of ½vᵀ∇²g v − vᵀ∇_y f)
    D_θ = ∇_θ f_J(y, θ) − ∇²_θy g_I(y, θ) v          (the hypergradient estimate)
    y ← y − ρ_k D_y,   v ← v − ρ_k D_v,   θ ← Π_box(θ − γ_k D_θ)

(the paper writes ``v`` with the opposite sign). ``∇²_yy g v`` and ``∇²_θy g v`` come from one
double-backward product. Each step costs O(|I| + |J|), independent of the data size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.oracles import inner_oracle, outer_oracle
from bilevel.outer.stochastic import StochasticMethod


@dataclass
class SOBA(StochasticMethod):
    """SOBA: see the module docstring; settings of :class:`StochasticMethod`."""

    name: str = "soba"

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f = problem.inner_loss, problem.outer_loss
        y, v, theta = state.y, state.extra["v"], state.theta
        inner = inner_oracle(g, y, theta, self.inner_batch(state), v)
        outer = outer_oracle(f, y, theta, self.outer_batch(state))
        d_theta = outer.grad_theta - inner.cross
        row = self.row(state, outer.value, d_theta)
        rho = self.inner_step(state)
        state.y = y - rho * inner.grad_y
        state.extra["v"] = v - rho * (inner.hvp - outer.grad_y)
        self.update_theta(problem, state, d_theta)
        state.step += 1
        return row
