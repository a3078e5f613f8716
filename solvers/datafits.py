"""Data-fitting terms ``f(w) = F(Xw)`` of generalized linear models, with ``F`` separable.

Each datafit knows ``F``, its derivative and its curvature in the linear predictor ``z = Xw``:
``∇f(w) = Xᵀ F'(z)`` and ``∇²f(w) = Xᵀ diag(F''(z)) X``, which is all a working-set solver
needs (a gradient costs two products with ``X``; the Hessian on a working set ``W`` is
``X_Wᵀ diag(F'') X_W``).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Quadratic:
    """``F(z) = ‖z − y‖² / (2n)`` (least squares, sklearn's Lasso scaling).

    Args:
        y: targets, shape ``(n,)``.
    """

    quadratic = True  # F'' is constant, equal to curvature_bound(): the Hessian is c·XᵀX

    def __init__(self, y: Tensor):
        self.y = y
        self.n = y.shape[0]

    def value(self, z: Tensor) -> Tensor:
        return 0.5 * ((z - self.y) ** 2).sum() / self.n

    def derivative(self, z: Tensor) -> Tensor:
        return (z - self.y) / self.n

    def curvature(self, z: Tensor) -> Tensor:
        return torch.full_like(z, 1.0 / self.n)

    def curvature_bound(self) -> float:
        """``sup F''`` (per sample)."""
        return 1.0 / self.n


class Logistic:
    """``F(z) = mean(log(1 + exp(−y z)))`` with labels ``y ∈ {−1, +1}``.

    Args:
        y: labels, shape ``(n,)``, values in ``{−1, +1}`` (``{0, 1}`` is mapped to ``{−1, +1}``).

    Raises:
        ValueError: labels outside ``{−1, 1}`` / ``{0, 1}``.
    """

    quadratic = False

    def __init__(self, y: Tensor):
        values = set(torch.unique(y).tolist())
        if values <= {0.0, 1.0}:
            y = 2 * y - 1
        elif not values <= {-1.0, 1.0}:
            raise ValueError(f"Logistic needs labels in {{-1, 1}} or {{0, 1}}, got {values}")
        self.y = y
        self.n = y.shape[0]

    def value(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softplus(-self.y * z).sum() / self.n

    def derivative(self, z: Tensor) -> Tensor:
        return -self.y * torch.sigmoid(-self.y * z) / self.n

    def curvature(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s) / self.n

    def curvature_bound(self) -> float:
        return 0.25 / self.n


DATAFITS = {"quadratic": Quadratic, "logistic": Logistic}
