"""Projection onto a box ``[lower, upper]`` (coordinate-wise clipping).

``box(v, l, u)_i = min(max(v_i, l_i), u_i)``, with ``l ≤ u`` broadcastable to ``v`` (infinite
bounds allowed: a one-sided box).

Kink set: ``v_i = l_i`` or ``v_i = u_i``. Jacobian w.r.t. ``v``: ``diag(1[l_i < v_i < u_i])``; at
a kink the returned element is 0 (constant piece: the output is the bound). Jacobian w.r.t.
``l``: ``diag(1[v_i ≤ l_i])``, w.r.t. ``u``: ``diag(1[v_i ≥ u_i] · 1[v_i > l_i])`` (1 at a kink,
consistently). Inactive coordinates (zero Jacobian row): ``v_i ≤ l_i`` or ``v_i ≥ u_i``. Kink
normal: ``+1`` on the lower side, ``−1`` on the upper side (pointing into the box).
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_ordered
from solvers.prox.base import ProxReport, record


def box(v: Tensor, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    """Project ``v`` onto ``{x : lower ≤ x ≤ upper}``.

    Args:
        v: point, any shape.
        lower: lower bound, broadcastable to ``v`` (``-inf`` allowed).
        upper: upper bound, broadcastable to ``v`` (``+inf`` allowed).

    Returns:
        Tensor shaped like the broadcast of ``v``, ``lower`` and ``upper``.

    Raises:
        ValueError: ``lower > upper`` somewhere (empty box).
    """
    require_ordered(lower, upper, "box")
    out = _clip(v, lower, upper)
    record(lambda: _report(v, lower, upper, out.shape))
    return out


def _clip(v: Tensor, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    """``min(max(v, lower), upper)`` without checks or recording (shared with ``linf_ball``)."""
    # torch.where picks the bound (not v) when v sits exactly on it: Jacobian 0 w.r.t. v there.
    return torch.where(v <= lower, lower, torch.where(v >= upper, upper, v))


def _report(v: Tensor, lower: Tensor | float, upper: Tensor | float, shape: Size) -> ProxReport:
    v = v.detach()
    lo = lower.detach() if isinstance(lower, Tensor) else lower
    up = upper.detach() if isinstance(upper, Tensor) else upper
    to_lower = (v - lo).abs()
    to_upper = (v - up).abs()
    return ProxReport(
        inactive=torch.broadcast_to((v <= lo) | (v >= up), shape),
        kink_distance=torch.minimum(to_lower, to_upper),
        kink_normal=torch.where(to_lower <= to_upper, 1.0, -1.0).to(v.dtype),
        symmetric=True,
    )
