"""Step-size schedules of the outer methods: constant, or ``α_k = α₀ / (k + 1)^a``.

Stochastic approximation converges to critical points under the Robbins–Monro conditions

    Σ_k α_k = ∞   (the steps can travel any distance)   and
    Σ_k α_k² < ∞  (the gradient noise is averaged out),

which for ``α_k = α₀ / (k + 1)^a`` hold exactly when ``1/2 < a ≤ 1`` (``Σ k^{-a}`` diverges for
``a ≤ 1``; ``Σ k^{-2a}`` converges for ``a > 1/2``). By the integral rule (Bolte, Le, Pauwels
2022) minibatch conservative hypergradients are legitimate stochastic estimates, so these are
the conditions under which SGD on θ with such estimates converges.

A constant schedule (``a = 0``) violates ``Σα² < ∞``: with noisy estimates it reaches a noise
ball whose radius scales with ``α₀``; it is the right choice for deterministic or
variance-reduced estimates (SABA). A *decreasing* schedule outside ``(1/2, 1]`` is almost
certainly a mistake and warns with :class:`StepSizeWarning`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass


class StepSizeWarning(UserWarning):
    """A decreasing step-size schedule violates the Robbins–Monro conditions
    (``Σα = ∞``, ``Σα² < ∞``, i.e. ``1/2 < a ≤ 1`` for ``α₀ / (k + 1)^a``)."""


def robbins_monro(decay: float) -> bool:
    """Whether ``α_k = α₀ / (k + 1)^decay`` satisfies ``Σα = ∞`` and ``Σα² < ∞``."""
    return 0.5 < decay <= 1.0


@dataclass(frozen=True)
class StepSize:
    """``α_k = lr / (k + 1)^decay`` (``decay = 0``: constant).

    Args:
        lr: ``α₀ > 0``.
        decay: ``a ≥ 0``; a decreasing schedule (``a > 0``) should satisfy ``1/2 < a ≤ 1``.
        name: what the step is for, used in messages (e.g. ``"outer_lr"``).

    Raises:
        ValueError: ``lr ≤ 0``, ``decay < 0`` or a non-finite value.

    Warns:
        StepSizeWarning: ``0 < decay ≤ 1/2`` (``Σα² = ∞``: the noise is not averaged out) or
            ``decay > 1`` (``Σα < ∞``: the iterates may stop short of a critical point).
    """

    lr: float
    decay: float = 0.0
    name: str = "lr"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{self.name} must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.decay) and self.decay >= 0):
            raise ValueError(
                f"{self.name} decay must be ≥ 0 (0: constant step), got {self.decay}"
            )
        if self.decay > 0 and not robbins_monro(self.decay):
            broken = ("Σα² = ∞: the gradient noise is never averaged out" if self.decay <= 0.5
                      else "Σα < ∞: the iterates can stop short of a critical point")
            warnings.warn(
                f"{self.name} schedule α₀/(k+1)^{self.decay:g} violates the Robbins–Monro "
                f"conditions ({broken}); use a decay in (1/2, 1], or 0 for a constant step",
                StepSizeWarning,
                stacklevel=3,
            )

    def __call__(self, k: int) -> float:
        """The step size at (0-based) step ``k``."""
        if self.decay == 0:
            return self.lr
        return self.lr / (k + 1) ** self.decay
