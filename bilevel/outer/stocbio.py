"""StocBiO (Ji, Yang, Liang 2021): inner SGD, then a Neumann-series hypergradient.

Each outer step:

1. ``inner_steps`` SGD steps ``y ← y − ρ_k ∇_y g_I(y, θ)`` from the previous ``y`` (warm start),
   a fresh inner minibatch ``I`` each;
2. an outer minibatch ``J``: ``b = ∇_y f_J(y, θ)``, ``∇_θ f_J(y, θ)``;
3. ``v = η Σ_{q=0}^{Q−1} Π_{s=1}^{q} (I − η ∇²_yy g_{I_s}(y, θ)) b`` — the first ``Q`` terms
   of the Neumann series ``(∇²g)⁻¹ = η Σ_q (I − η∇²g)^q`` (valid for ``0 < η < 2/L``), each
   factor a Hessian-vector product on a fresh minibatch ``I_s``; ``η = neumann_lr / L``.
   The truncation leaves a bias ``(I − η∇²g)^Q (∇²g)⁻¹ b``, of relative size
   ``(1 − η μ)^Q`` for a ``μ``-strongly convex ``g``;
4. ``D_θ = ∇_θ f_J − ∇²_θy g_I(y, θ) v`` and ``θ ← Π_box(θ − γ_k D_θ)``.

No linear-system state is carried across steps (``v`` is rebuilt from ``b`` each time).
Cost per outer step: ``inner_steps`` gradients and ``Q`` Hessian-vector products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.oracles import cross, neumann, outer_oracle
from bilevel.outer.stochastic import StochasticMethod


@dataclass
class StocBiO(StochasticMethod):
    """StocBiO. Args (besides :class:`StochasticMethod`'s): ``inner_steps`` (≥ 1),
    ``neumann_terms`` ``Q`` (≥ 1), ``neumann_lr`` (``η L``, in (0, 2))."""

    inner_steps: int = 10
    neumann_terms: int = 10
    neumann_lr: float = 0.5
    name: str = "stocbio"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_steps < 1 or self.neumann_terms < 1:
            raise ValueError("inner_steps and neumann_terms must be ≥ 1")
        if not 0 < self.neumann_lr < 2:
            raise ValueError(
                f"neumann_lr (η·L) must be in (0, 2) for the Neumann series to converge, "
                f"got {self.neumann_lr}"
            )

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f, theta = problem.inner_loss, problem.outer_loss, state.theta
        y = self.inner_sgd(problem, state, self.inner_steps)
        outer = outer_oracle(f, y, theta, self.outer_batch(state))
        v = neumann(g, y, theta, lambda: self.inner_batch(state), outer.grad_y,
                    self.neumann_lr / state.extra["lipschitz"], self.neumann_terms)
        d_theta = outer.grad_theta - cross(g, y, theta, self.inner_batch(state), v)
        row = self.row(state, outer.value, d_theta)
        state.y, state.extra["v"] = y, v
        self.update_theta(problem, state, d_theta)
        state.step += 1
        return row
