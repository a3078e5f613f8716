"""Euclidean projection onto the ball ``{‖x‖₁ ≤ r}`` along the last dimension.

``l1_ball(v, r) = v`` when ``‖v‖₁ ≤ r``, else ``sign(v) · max(|v| − τ, 0)`` where ``τ > 0``
solves ``Σ_i max(|v_i| − τ, 0) = r``: the simplex threshold of ``|v|`` (Duchi et al. 2008), found
by sorting as in :func:`~solvers.prox.simplex.simplex` and batched over leading dimensions. With
the support ``S = {i : |v_i| > τ}`` and ``s = sign(v_S)``, ``τ = (Σ_{i∈S} |v_i| − r) / |S|``.

Kink set: ``‖v‖₁ = r`` (the ball's boundary), and outside the ball ``|v_i| = τ`` for some ``i``
(the support changes). Jacobian w.r.t. ``v``: ``I`` inside; outside, ``I − ssᵀ/|S|`` on
``S × S`` and zero elsewhere. On the boundary the returned element is the identity (the inside
piece, as :func:`~solvers.prox.l2_ball.l2_ball`); on a support kink the kinked coordinate is
treated as off the support (constant piece): its row and column are zero (rows and columns
follow the one sorted support ``S``, as in :func:`~solvers.prox.simplex.simplex`). Jacobian
w.r.t. ``r``: 0 inside (and on the boundary), ``s/|S|`` on ``S`` outside. Inactive coordinates
(zero Jacobian row): none inside; outside, those off ``S`` (``|v_i| ≤ τ``), and the single
support coordinate when ``|S| = 1`` (its output is the constant ``±r``).

``kink_distance``: per coordinate, the smaller of ``|‖v‖₁ − r|`` and (outside) ``||v_i| − τ|``.
``kink_normal``: where the support kink is the nearer one, ``sign(v_i)`` (``+1`` at ``v_i = 0``),
which lifts the coordinate onto the support; elsewhere ``−sign(v)``, into the ball, where every
coordinate is active. ``symmetric``: as for ``l2_ball``, ``True`` only when every vector lies in
the closed ball (Jacobian ``I``); outside, ``I − ssᵀ/|S|`` is not a multiple of the identity.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_positive
from solvers.prox.base import ProxReport, record
from solvers.prox.simplex import _threshold, positive_part


def l1_ball(v: Tensor, radius: Tensor | float = 1.0) -> Tensor:
    """Project each vector ``v[..., :]`` onto ``{x : ‖x‖₁ ≤ radius}``.

    Args:
        v: point, shape ``(..., n)``; leading dimensions are a batch.
        radius: positive; a float or a tensor broadcastable to ``v.shape[:-1]`` (one radius
            per vector).

    Returns:
        Tensor shaped like ``v`` (batch dimensions broadcast with those of ``radius``).

    Raises:
        ValueError: ``radius`` has an entry ``≤ 0``.
    """
    require_positive(radius, "radius", "l1_ball")
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) else radius
    norm = v.abs().sum(-1, keepdim=True)
    outside = norm > r
    # τ of |v| for every vector (finite inside too, where it is unused: r > 0 gives |S| ≥ 1);
    # differentiable through Σ_S |v_i| and r only, the support being detached.
    gap, size, support = _threshold(v.abs(), r)
    # strict ">": on the boundary torch.where takes v, the identity piece.
    # sign(v)·max(|v| − τ, 0), its rows and τ's columns from the one sorted support
    out = torch.where(outside, torch.sign(v) * positive_part(gap, support), v)
    record(lambda: _report(v, norm, r, outside, gap, size, support, out.shape))
    return out


def _report(v: Tensor, norm: Tensor, r: Tensor | float, outside: Tensor, gap: Tensor,
            size: Tensor, support: Tensor, shape: Size) -> ProxReport:
    v = v.detach()
    norm = norm.detach()
    r = r.detach() if isinstance(r, Tensor) else r
    gap = gap.detach()  # |v| − τ
    to_ball = (norm - r).abs()
    # Exactly the zero rows of autograd's Jacobian (see simplex._report), outside only.
    inactive = outside & (~support | (size == 1))
    to_support = torch.where(outside, gap.abs(), torch.full_like(gap, float("inf")))
    lift = torch.where(v >= 0, 1.0, -1.0).to(v.dtype)
    return ProxReport(
        inactive=torch.broadcast_to(inactive, shape),
        kink_distance=torch.broadcast_to(torch.minimum(to_support, to_ball), shape),
        kink_normal=torch.broadcast_to(torch.where(to_support < to_ball, lift, -torch.sign(v)),
                                       shape),
        symmetric=not bool(outside.any()),
    )
