"""Euclidean projection onto the simplex ``{x ≥ 0, Σx = r}`` along the last dimension.

``simplex(v, r) = max(v − τ, 0)`` where the threshold ``τ`` solves ``Σ_i max(v_i − τ, 0) = r``;
it is found by sorting (Held et al. 1974; Duchi et al. 2008), batched over leading dimensions.
With the support ``S = {i : v_i > τ}``, ``τ = (Σ_{i∈S} v_i − r) / |S|``.

Kink set: ``v_i = τ`` for some ``i`` (the support changes). Jacobian w.r.t. ``v``: on ``S × S``
it is ``I − 11ᵀ/|S|``, zero elsewhere; at a kink the returned element treats the kinked
coordinate as off the support (constant piece): its row and column are zero. Rows and columns
follow one decision, the sorted support ``S``: where rounding puts a kinked ``v_i`` just
inside ``S``, the element is that of the other piece (still a one-sided limit, never a mix).
Jacobian w.r.t. ``r``: ``1/|S|`` on ``S``, 0 elsewhere. Inactive coordinates (zero Jacobian
row): those off ``S`` (``v_i ≤ τ``), and also the single support coordinate when ``|S| = 1``
(its output is the constant ``r``).
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
        ValueError: ``radius`` has an entry ``≤ 0``, NaN or infinite.
    """
    require_positive(radius, "radius", "simplex", finite=True)
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) else radius
    gap, size, support = _threshold(v, r)
    out = positive_part(gap, support)
    record(lambda: _report(v, gap, size, support, out.shape))
    return out


def positive_part(gap: Tensor, support: Tensor) -> Tensor:
    """``max(gap, 0)`` whose derivative is that of ``gap`` on the support ``S`` and 0 off it.

    In exact arithmetic ``gap_i > 0`` and ``i ∈ S`` are one decision, but ``S`` (hence which
    coordinates ``τ`` depends on) comes from the sort's cumulative sums: at a kink
    (``gap_i ≈ 0``) rounding can put ``relu'(gap_i)`` and ``i ∈ S`` on opposite sides, and the
    Jacobian would mix the two pieces (row ``i`` of one, the ``1/|S|`` of ``τ`` of the other),
    which is neither one-sided derivative. The value is ``relu(gap)`` unchanged."""
    linear = torch.where(support, gap, torch.zeros_like(gap))
    return linear + (torch.relu(gap) - linear).detach()


def _threshold(v: Tensor, r: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``v − τ`` (differentiable, shaped like the output), ``|S|`` (detached, shape
    ``(..., 1)``) and the support mask ``S`` (bool, shaped like the output).

    Computed on ``w = v − max(v)`` (detached): the threshold moves with a common shift of ``v``
    (``τ(v + c) = τ(v) + c``), and without the shift an ``r`` below the rounding of ``v``'s
    entries vanished from the cumulative sums (``v = (1e20, 0)``, ``r = 1`` gave ``|S| = 0``
    and ``Inf`` instead of ``(1, 0)``). With it, ``max(w) = 0`` always gives ``|S| ≥ 1``."""
    if v.shape[-1]:
        w = v - v.detach().amax(-1, keepdim=True)
    else:
        w = v
    with torch.no_grad():
        u, order = torch.sort(w, dim=-1, descending=True)
        gap = u - (u.cumsum(-1) - r) / _ranks(w)
        ranks = _ranks(w).expand_as(gap)
        # |S| = the largest k with u_k > (Σ_{j≤k} u_j − r)/k (always ≥ 1 since r > 0).
        size = torch.where(gap > 0, ranks, torch.zeros_like(ranks)).amax(-1, keepdim=True)
        support = torch.zeros_like(gap, dtype=torch.bool).scatter(
            -1, order.expand(gap.shape), ranks <= size
        )
    # τ from the detached support, so that autograd differentiates only through Σ_S w and r.
    tau = (torch.where(support, w, torch.zeros_like(w)).sum(-1, keepdim=True) - r) / size
    return w - tau, size, support


def _ranks(v: Tensor) -> Tensor:
    return torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)


def _report(v: Tensor, gap: Tensor, size: Tensor, support: Tensor, shape: torch.Size
            ) -> ProxReport:
    v = v.detach()
    gap = gap.detach()
    # Exactly the zero rows of autograd's Jacobian (see positive_part): off the sorted support,
    # or S = {i} (row i is e_i − e_i).
    inactive = ~support | (size == 1)
    return ProxReport(
        inactive=torch.broadcast_to(inactive, shape),
        kink_distance=torch.broadcast_to(gap.abs(), shape),
        kink_normal=torch.ones(shape, dtype=v.dtype, device=v.device),
        symmetric=False,
    )
