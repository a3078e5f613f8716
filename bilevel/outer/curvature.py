"""A curvature estimate of the inner objective, to scale step sizes without tuning.

``L ≈ λ_max(∇²_yy g(y, θ))`` by power iteration with Hessian-vector products (double backward,
full batch), warm-started from the last eigenvector estimate. Power iteration approaches
``λ_max`` from below, so callers use steps ``c / L`` with ``c`` well below 2 (the stability
limit of gradient descent on a quadratic with curvature ``L``). The stochastic methods refresh
the estimate every few steps on a minibatch, because ``L`` moves with θ (e.g. ``e^θ``
regularisation weights: a θ_j moving from −7 to 4 multiplies the curvature by 6·10⁴, and a step
sized for the start then makes the inner iterates diverge). :func:`tracked` keeps a refreshed
estimate from dropping by more than half at once, since one minibatch can see less curvature
than the data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.outer.oracles import Loss, hvp


def power_iteration(g: Loss, y: Tensor, theta: Tensor, u: Tensor, iters: int,
                    idx: Tensor | None = None) -> tuple[float, Tensor]:
    """``iters`` power iterations of ``∇²_yy g(y, θ, idx)`` from ``u`` (``idx``: the samples;
    ``None``: all).

    Returns:
        ``(L, u)``: the Rayleigh quotient ``uᵀ∇²g u`` (``u`` unit) at the last iterate — a lower
        bound of ``λ_max`` for a symmetric PSD Hessian — and the normalised iterate.

    Raises:
        ValueError: the estimate is not a finite positive number (g not convex in y at this
            point, or NaN in the data).
    """
    u = u / u.norm()
    value = 0.0
    for _ in range(max(1, iters)):
        hu = hvp(g, y, theta, idx, u)
        value = float((u * hu).sum())
        norm = hu.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        u = hu / norm
    if not (value > 0 and torch.isfinite(torch.tensor(value))):
        raise ValueError(
            f"the curvature estimate of the inner objective is {value:g}: g must be strongly "
            "convex in y (add a ridge term) and its data finite; or pass an explicit inner "
            "step size"
        )
    return value, u


def tracked(previous: float, estimate: float) -> float:
    """The new ``L``: the fresh estimate when it is larger (react at once to growing
    curvature), else at least half the previous one (shrink cautiously)."""
    return max(estimate, 0.5 * previous)
