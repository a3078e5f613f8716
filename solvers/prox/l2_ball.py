"""Euclidean projection onto the ball ``{‖x‖₂ ≤ r}`` along the last dimension.

``l2_ball(v, r) = v · min(1, r/‖v‖)``, batched over leading dimensions.

Kink set: ``‖v‖ = r``. Jacobian w.r.t. ``v``: ``I`` inside (``‖v‖ < r``),
``(r/‖v‖)(I − wwᵀ)`` with ``w = v/‖v‖`` outside. There is **no constant piece**: on the kink
the returned element is the identity (the inside piece). Jacobian w.r.t. ``r``: 0 inside, ``w``
outside (0 on the kink). No coordinate is inactive (``inactive`` is all ``False``; a row of the
outside piece vanishes only when ``v`` lies on a coordinate axis, and there only at this point).
``kink_distance = |‖v‖ − r|`` (shape ``v.shape[:-1] + (1,)``), kink normal ``w``.

``symmetric``: both pieces are symmetric matrices, but only the inside piece ``I`` is a multiple
of the identity, which is what makes ``∂yH`` of a prox-gradient mapping symmetric. The report
says ``symmetric=True`` only when every vector lies in the closed ball, ``False`` otherwise.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_positive
from solvers.prox.base import ProxReport, record


def l2_ball(v: Tensor, radius: Tensor | float = 1.0) -> Tensor:
    """Project each vector ``v[..., :]`` onto ``{x : ‖x‖₂ ≤ radius}``.

    Args:
        v: point, shape ``(..., n)``; leading dimensions are a batch.
        radius: positive; a float or a tensor broadcastable to ``v.shape[:-1]`` (one radius
            per vector).

    Returns:
        Tensor shaped like ``v`` (batch dimensions broadcast with those of ``radius``).

    Raises:
        ValueError: ``radius`` has an entry ``≤ 0``.
    """
    require_positive(radius, "radius", "l2_ball")
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) else radius
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    outside = norm > r
    # Guard the unused branch: v·r/‖v‖ at ‖v‖ = 0 would send NaN through the backward of where.
    safe = torch.where(outside, norm, torch.ones_like(norm))
    out = torch.where(outside, v * (r / safe), v)
    record(lambda: _report(v, norm, r, out.shape))
    return out


def _report(v: Tensor, norm: Tensor, r: Tensor | float, shape: Size) -> ProxReport:
    v = v.detach()
    norm = norm.detach()
    r = r.detach() if isinstance(r, Tensor) else r
    gap = norm - r
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return ProxReport(
        inactive=torch.zeros(shape, dtype=torch.bool, device=v.device),
        kink_distance=gap.abs(),
        kink_normal=v / safe,
        symmetric=not bool((gap > 0).any()),
    )
