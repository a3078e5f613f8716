"""Elastic net: the prox of ``λ₁‖·‖₁ + (λ₂/2)‖·‖₂²``.

``elastic_net(v, λ₁, λ₂)_i = sign(v_i) · max(|v_i| − λ₁ᵢ, 0) / (1 + λ₂ᵢ)``, with ``λ₁, λ₂ ≥ 0``
broadcastable to ``v``.

Kink set: ``|v_i| = λ₁ᵢ`` (as :func:`~solvers.prox.l1.l1`). Jacobian w.r.t. ``v``:
``diag(1[|v_i| > λ₁ᵢ] / (1 + λ₂ᵢ))``; at the kink the returned element is 0 (constant piece).
Jacobian w.r.t. ``λ₁``: ``−sign(v_i)·1[|v_i| > λ₁ᵢ] / (1 + λ₂ᵢ)``; w.r.t. ``λ₂``:
``−out_i / (1 + λ₂ᵢ)``. Inactive coordinates (zero Jacobian row): ``|v_i| ≤ λ₁ᵢ``. The active
Jacobian is a multiple of the identity (``symmetric=True``) when ``λ₂`` is one number; a
``λ₂`` varying across coordinates gives ``symmetric=False``.
"""

from __future__ import annotations

from torch import Tensor

from solvers.prox._checks import require_nonnegative
from solvers.prox.base import record
from solvers.prox.l1 import _report, _soft_threshold


def elastic_net(v: Tensor, l1: Tensor | float, l2: Tensor | float) -> Tensor:
    """Prox of ``l1·‖·‖₁ + (l2/2)·‖·‖₂²`` at ``v``: soft-threshold, then shrink by ``1 + l2``.

    Args:
        v: point, any shape.
        l1: ℓ1 weight, non-negative, broadcastable to ``v``.
        l2: squared-ℓ2 weight, non-negative, broadcastable to ``v``.

    Returns:
        Tensor shaped like the broadcast of ``v``, ``l1`` and ``l2``.

    Raises:
        ValueError: ``l1`` or ``l2`` has a negative entry.
    """
    require_nonnegative(l1, "l1", "elastic_net")
    require_nonnegative(l2, "l2", "elastic_net")
    out = _soft_threshold(v, l1) / (1 + l2)
    record(lambda: _report(v, l1, out.shape, symmetric=_is_uniform(l2)))
    return out


def _is_uniform(weight: Tensor | float) -> bool:
    """One value for every coordinate (then the active Jacobian is a multiple of I)."""
    if not isinstance(weight, Tensor) or weight.numel() <= 1:
        return True
    flat = weight.detach().flatten()
    return bool((flat == flat[0]).all())
