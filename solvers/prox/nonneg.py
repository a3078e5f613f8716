"""Projection onto the non-negative orthant: ``nonneg(v) = max(v, 0)`` coordinate-wise.

Kink set: ``v_i = 0``. Jacobian w.r.t. ``v``: ``diag(1[v_i > 0])``; at the kink the returned
element is 0 (constant piece, ``relu'(0) = 0``). Inactive coordinates (zero Jacobian row):
``v_i ≤ 0``. Kink normal ``+1`` (towards the active piece).
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers.prox.base import ProxReport, record


def nonneg(v: Tensor) -> Tensor:
    """Project ``v`` onto ``{x : x ≥ 0}`` (the prox of its indicator).

    Args:
        v: point, any shape.

    Returns:
        Tensor shaped like ``v``.
    """
    out = torch.relu(v)
    record(lambda: _report(v))
    return out


def _report(v: Tensor) -> ProxReport:
    v = v.detach()
    return ProxReport(
        inactive=v <= 0,
        kink_distance=v.abs(),
        kink_normal=torch.ones_like(v),
        symmetric=True,
    )
