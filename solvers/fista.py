"""The FISTA momentum step with gradient-based adaptive restart (O'Donoghue & Candès 2015).

After a proximal step from the extrapolated point ``y`` to ``x_new`` (previous iterate ``x``):
if ``⟨y − x_new, x_new − x⟩ > 0`` the momentum points uphill and is reset (``t = 1``); then
``t⁺ = (1 + √(1 + 4t²))/2`` and the next extrapolated point is
``x_new + ((t − 1)/t⁺)(x_new − x)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def momentum(x: Tensor, x_new: Tensor, y: Tensor, t: float) -> tuple[Tensor, float]:
    """Return the next extrapolated point and momentum parameter ``(y⁺, t⁺)``."""
    if float(torch.vdot((y - x_new).flatten(), (x_new - x).flatten())) > 0:
        t = 1.0
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return x_new + ((t - 1) / t_next) * (x_new - x), t_next
