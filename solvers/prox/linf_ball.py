"""Euclidean projection onto the ball ``{‖x‖∞ ≤ r}``: coordinate-wise clipping to ``[−r, r]``.

``linf_ball(v, r)_i = min(max(v_i, −r), r)``, one radius per vector (broadcast over the last
dimension); the box ``[−r, r]`` of :func:`~solvers.prox.box.box`, with its semantics.

Kink set: ``|v_i| = r``. Jacobian w.r.t. ``v``: ``diag(1[|v_i| < r])``; at a kink the returned
element is 0 (constant piece: the output is the bound ``±r``). Jacobian w.r.t. ``r``:
``sign(v_i)·1[|v_i| ≥ r]`` (``±1`` at a kink, consistently). Inactive coordinates (zero Jacobian
row): ``|v_i| ≥ r``. ``kink_distance``: ``||v_i| − r|``; kink normal ``+1`` on the lower side,
``−1`` on the upper side (pointing into the ball). The active Jacobian is the identity:
``symmetric=True``.
"""

from __future__ import annotations

from torch import Tensor

from solvers.prox._checks import require_positive
from solvers.prox.base import record
from solvers.prox.box import _clip, _report


def linf_ball(v: Tensor, radius: Tensor | float = 1.0) -> Tensor:
    """Project each vector ``v[..., :]`` onto ``{x : ‖x‖∞ ≤ radius}``.

    Args:
        v: point, shape ``(..., n)``; leading dimensions are a batch.
        radius: positive; a float or a tensor broadcastable to ``v.shape[:-1]`` (one radius
            per vector).

    Returns:
        Tensor shaped like ``v`` (batch dimensions broadcast with those of ``radius``).

    Raises:
        ValueError: ``radius`` has an entry ``≤ 0``.
    """
    require_positive(radius, "radius", "linf_ball")
    r = radius.unsqueeze(-1) if isinstance(radius, Tensor) else radius
    out = _clip(v, -r, r)
    record(lambda: _report(v, -r, r, out.shape))
    return out
