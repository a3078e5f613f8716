"""Non-negative soft-thresholding: the prox of ``t·Σ_i y_i + indicator(y ≥ 0)``.

``nonneg_l1(v, t)_i = max(v_i − t_i, 0)``, with ``t ≥ 0`` broadcastable to ``v`` (the prox of
``t·‖·‖₁`` restricted to the non-negative orthant, where ``‖y‖₁ = Σ_i y_i``).

Kink set: ``v_i = t_i``. Jacobian w.r.t. ``v``: ``diag(1[v_i > t_i])``; at the kink the returned
element is 0 (constant piece, ``relu'(0) = 0``). Jacobian w.r.t. ``t``: ``−1[v_i > t_i]``.
Inactive coordinates (zero Jacobian row): ``v_i ≤ t_i``. ``kink_distance``: ``|v_i − t_i|``;
kink normal ``+1`` (towards the active piece). ``symmetric=True``.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_nonnegative
from solvers.prox.base import ProxReport, record


def nonneg_l1(v: Tensor, threshold: Tensor | float) -> Tensor:
    """Shift ``v`` down by ``threshold`` and clip at 0 (the prox of ``threshold·Σy + ι_{y≥0}``).

    Args:
        v: point, any shape.
        threshold: non-negative, broadcastable to ``v`` (one weight per coordinate allowed).

    Returns:
        Tensor shaped like ``v`` (like the broadcast of ``v`` and ``threshold``).

    Raises:
        ValueError: ``threshold`` has a negative entry.
    """
    require_nonnegative(threshold, "threshold", "nonneg_l1")
    out = torch.relu(v - threshold)
    record(lambda: _report(v, threshold, out.shape))
    return out


def _report(v: Tensor, threshold: Tensor | float, shape: Size) -> ProxReport:
    v = v.detach()
    t = threshold.detach() if isinstance(threshold, Tensor) else threshold
    gap = v - t
    return ProxReport(
        inactive=torch.broadcast_to(gap <= 0, shape),
        kink_distance=gap.abs(),
        kink_normal=torch.ones(shape, dtype=v.dtype, device=v.device),
        symmetric=True,
    )
