"""Soft-thresholding: the prox of ``t·‖·‖₁`` (one threshold per coordinate allowed).

``l1(v, t)_i = sign(v_i) · max(|v_i| − t_i, 0)``, with ``t ≥ 0`` broadcastable to ``v``.

Kink set: ``|v_i| = t_i``. Jacobian w.r.t. ``v``: ``diag(1[|v_i| > t_i])``; at the kink the
returned element is 0 (constant piece). Jacobian w.r.t. ``t``: ``−sign(v_i)·1[|v_i| > t_i]``.
Inactive coordinates (zero Jacobian row): ``|v_i| ≤ t_i``.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_nonnegative
from solvers.prox.base import ProxReport, record


def l1(v: Tensor, threshold: Tensor | float) -> Tensor:
    """Soft-threshold ``v`` at ``threshold`` (the prox of ``threshold·‖·‖₁``).

    Args:
        v: point, any shape.
        threshold: non-negative, broadcastable to ``v`` (a weighted ℓ1 when it is a vector).

    Returns:
        Tensor shaped like ``v`` (like the broadcast of ``v`` and ``threshold``).

    Raises:
        ValueError: ``threshold`` has a negative entry.
    """
    require_nonnegative(threshold, "threshold", "l1")
    out = _soft_threshold(v, threshold)
    record(lambda: _report(v, threshold, out.shape))
    return out


def _soft_threshold(v: Tensor, threshold: Tensor | float) -> Tensor:
    """``sign(v)·relu(|v| − t)``; autograd gives 0 at ``|v| = t`` (``relu'(0) = 0``)."""
    return torch.sign(v) * torch.relu(v.abs() - threshold)


def _report(v: Tensor, threshold: Tensor | float, shape: Size, symmetric: bool = True
            ) -> ProxReport:
    v = v.detach()
    t = threshold.detach() if isinstance(threshold, Tensor) else threshold
    gap = v.abs() - t
    return ProxReport(
        inactive=torch.broadcast_to(gap <= 0, shape),
        kink_distance=gap.abs(),
        kink_normal=torch.sign(v),
        symmetric=symmetric,
    )
