"""A curvature estimate of the inner objective, to scale step sizes without tuning.

``L ≈ λ_max(∇²_yy g(y, θ))`` by power iteration with Hessian-vector products (double backward,
full batch), warm-started from the last eigenvector estimate. Power iteration approaches
``λ_max`` from below, so callers use steps ``c / L`` with ``c`` well below 2 (the stability
limit of gradient descent on a quadratic with curvature ``L``). The stochastic methods refresh
the estimate periodically, because ``L`` moves with θ (e.g. ``e^θ`` regularisation weights).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.outer.oracles import Loss, hvp


def power_iteration(g: Loss, y: Tensor, theta: Tensor, u: Tensor, iters: int
                    ) -> tuple[float, Tensor]:
    """``iters`` power iterations of ``∇²_yy g(y, θ, None)`` from ``u``.

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
        hu = hvp(g, y, theta, None, u)
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
