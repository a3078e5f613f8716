"""Euclidean projection onto the simplex ``{x ≥ 0, Σx = r}`` along the last dimension.

``simplex(v, r) = max(v − τ, 0)`` where the threshold ``τ`` solves ``Σ_i max(v_i − τ, 0) = r``;
it is found by sorting (Held et al. 1974; Duchi et al. 2008), batched over leading dimensions.
With the support ``S = {i : v_i > τ}``, ``τ = (Σ_{i∈S} v_i − r) / |S|``.

Kink set: ``v_i = τ`` for some ``i`` (the support changes). Jacobian w.r.t. ``v``: on ``S × S``
it is ``I − 11ᵀ/|S|``, zero elsewhere; at a kink the returned element treats the kinked
coordinate as off the support (constant piece): its row and column are zero. Jacobian w.r.t.
``r``: ``1/|S|`` on ``S``, 0 elsewhere. Inactive coordinates (zero Jacobian row): ``v_i ≤ τ``,
and also the single support coordinate when ``|S| = 1`` (its output is the constant ``r``).
Kink normal ``+1``. The active Jacobian ``I − 11ᵀ/|S|`` is not a multiple of the identity, so
``∂yH`` of a prox-gradient mapping is not symmetric in general: ``symmetric=False``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers.prox._checks import require_positive
from solvers.prox.base import ProxReport, record


def simplex(v: Tensor, radius: Tensor | float = 1.0) -> Tensor:
    """Project each vector ``v[..., :]`` onto ``{x : x ≥ 0, Σ_i x_i = radius}``.

    Args:
        v: point, shape ``(..., n)`` with ``n ≥ 1``; leading dimensions are a batch.
        radius: positive; a float or a tensor broadcastable to ``v.shape[:-1]`` (one radius
            per vector).

    Returns:
        Tensor shaped like ``v`` (batch dimensions broadcast with those of ``radius``).

    Raises:
        ValueError: ``radius`` has an entry ``≤ 0``.
    """
    require_positive(radius, "radius", "simplex")
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) else radius
    tau, size, support = _threshold(v, r)
    out = torch.relu(v - tau)
    record(lambda: _report(v, tau, size, support, out.shape))
    return out


def _threshold(v: Tensor, r: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``τ`` (differentiable, shape ``(..., 1)``), ``|S|`` (detached, same shape) and the
    support mask ``S`` (bool, shaped like the output)."""
    with torch.no_grad():
        u, order = torch.sort(v, dim=-1, descending=True)
        gap = u - (u.cumsum(-1) - r) / _ranks(v)
        ranks = _ranks(v).expand_as(gap)
        # |S| = the largest k with u_k > (Σ_{j≤k} u_j − r)/k (always ≥ 1 since r > 0).
        size = torch.where(gap > 0, ranks, torch.zeros_like(ranks)).amax(-1, keepdim=True)
        support = torch.zeros_like(gap, dtype=torch.bool).scatter(
            -1, order.expand(gap.shape), ranks <= size
        )
    # τ from the detached support, so that autograd differentiates only through Σ_S v and r.
    tau = (torch.where(support, v, torch.zeros_like(v)).sum(-1, keepdim=True) - r) / size
    return tau, size, support


def _ranks(v: Tensor) -> Tensor:
    return torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)


def _report(v: Tensor, tau: Tensor, size: Tensor, support: Tensor, shape: torch.Size) -> ProxReport:
    v = v.detach()
    tau = tau.detach()
    gap = v - tau
    # Exactly the zero rows of autograd's Jacobian: relu'(v_i − τ) = 0, or S = {i}
    # (row i is e_i − e_i); this stays exact when rounding puts v_i − τ on the other side of 0.
    inactive = (gap <= 0) | (support & (size == 1))
    return ProxReport(
        inactive=torch.broadcast_to(inactive, shape),
        kink_distance=torch.broadcast_to(gap.abs(), shape),
        kink_normal=torch.ones(shape, dtype=v.dtype, device=v.device),
        symmetric=False,
    )
