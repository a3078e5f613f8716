"""Block soft-thresholding: the prox of ``Σ_g t_g·‖v_g‖₂`` (group Lasso) along the last dimension.

``groups`` assigns each coordinate of the last dimension a group id in ``0..G−1``; ``v_g`` is the
sub-vector of the coordinates of group ``g`` (not necessarily contiguous). Then

``group_l1(v, t, groups)_g = v_g · max(1 − t_g/‖v_g‖₂, 0)``    (``0`` when ``v_g = 0``),

batched over leading dimensions, with ``t ≥ 0`` one number or one per group.

Kink set: ``‖v_g‖ = t_g`` for some group. Jacobian w.r.t. ``v``: block-diagonal over groups,
``(1 − t_g/‖v_g‖) I + (t_g/‖v_g‖) w_g w_gᵀ`` with ``w_g = v_g/‖v_g‖`` on a group with
``‖v_g‖ > t_g``, zero on the others; at the kink the returned element is 0 (constant piece,
``relu'(0) = 0``), also at ``v_g = 0`` with ``t_g = 0``. Jacobian w.r.t. ``t_g``: ``−w_g`` on an
active group, 0 elsewhere (0 on the kink). Inactive coordinates (zero Jacobian row): those of the
groups with ``‖v_g‖ ≤ t_g``; a row of an active group never vanishes (its diagonal entry is
``≥ 1 − t_g/‖v_g‖ > 0``). ``kink_distance``: ``|‖v_g‖ − t_g|`` of each coordinate's group;
``kink_normal``: ``v/‖v_g‖`` (it grows ``‖v_g‖``; 0 on a zero group). The active blocks are not
multiples of the identity: ``symmetric=False``.
"""

from __future__ import annotations

import torch
from torch import Size, Tensor

from solvers.prox._checks import require_nonnegative
from solvers.prox.base import ProxReport, record


def group_l1(v: Tensor, threshold: Tensor | float, groups: Tensor) -> Tensor:
    """Block soft-threshold ``v`` (the prox of ``Σ_g threshold_g·‖v_g‖₂``).

    Args:
        v: point, shape ``(..., n)``; leading dimensions are a batch.
        threshold: non-negative; a float, a 0-d tensor, or a tensor of shape ``(..., G)`` (one
            threshold per group, leading dimensions broadcast with the batch of ``v``).
        groups: integer tensor of shape ``(n,)``: the group id (``0..G−1``) of each coordinate
            of the last dimension. ``G`` is the last dimension of a per-group ``threshold``,
            else ``groups.max() + 1`` (a group without coordinates is allowed).

    Returns:
        Tensor shaped like ``v`` (batch dimensions broadcast with those of ``threshold``).

    Raises:
        ValueError: ``threshold`` has a negative entry or a last dimension other than ``G``;
            ``groups`` is not a 1-d integer tensor of length ``n`` with ids in ``0..G−1``.
    """
    require_nonnegative(threshold, "threshold", "group_l1")
    size = _check_groups(v, threshold, groups)
    groups = groups.to(device=v.device, dtype=torch.long)  # scatter_add wants int64 indices
    sq = torch.zeros(v.shape[:-1] + (size,), dtype=v.dtype, device=v.device).scatter_add(
        -1, groups.expand(v.shape), v * v
    )
    # Guard sqrt at 0: its infinite derivative times the zero coming back would be NaN.
    positive = sq > 0
    norm = torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(),
                       torch.zeros_like(sq))
    norm_c = norm.index_select(-1, groups)  # ‖v_g‖ of each coordinate's group
    t_c = _per_coordinate(threshold, groups)
    safe = torch.where(norm_c > 0, norm_c, torch.ones_like(norm_c))
    # relu(‖v_g‖ − t)/‖v_g‖ = max(1 − t/‖v_g‖, 0); relu'(0) = 0 gives the zero block at the kink.
    out = v * (torch.relu(norm_c - t_c) / safe)
    record(lambda: _report(v, norm_c, t_c, out.shape))
    return out


def _per_coordinate(threshold: Tensor | float, groups: Tensor) -> Tensor | float:
    if isinstance(threshold, Tensor) and threshold.ndim > 0:
        return threshold.index_select(-1, groups)
    return threshold


def _check_groups(v: Tensor, threshold: Tensor | float, groups: Tensor) -> int:
    """Validate ``groups`` (and a per-group ``threshold``) against ``v``; return ``G``."""
    n = v.shape[-1] if v.ndim else 0
    if not isinstance(groups, Tensor) or groups.dtype.is_floating_point or (
        groups.dtype.is_complex or groups.dtype == torch.bool
    ):
        got = f"dtype {groups.dtype}" if isinstance(groups, Tensor) else type(groups).__name__
        raise ValueError(
            f"group_l1: `groups` must be an integer tensor of group ids (e.g. a LongTensor), "
            f"got {got}."
        )
    if groups.shape != (n,):
        raise ValueError(
            f"group_l1: `groups` must have shape (n,) = ({n},), one id per coordinate of the "
            f"last dimension of v, got {tuple(groups.shape)}."
        )
    if n and int(groups.min()) < 0:
        raise ValueError(f"group_l1: `groups` must be >= 0, got min {int(groups.min())}.")
    largest = int(groups.max()) + 1 if n else 0
    if isinstance(threshold, Tensor) and threshold.ndim > 0:
        size = threshold.shape[-1]
        if size < largest:
            raise ValueError(
                f"group_l1: `threshold` has {size} entries in its last dimension (one per "
                f"group) but `groups` has ids up to {largest - 1}."
            )
        return size
    return largest


def _report(v: Tensor, norm_c: Tensor, t_c: Tensor | float, shape: Size) -> ProxReport:
    v = v.detach()
    norm_c = norm_c.detach()
    t_c = t_c.detach() if isinstance(t_c, Tensor) else t_c
    gap = norm_c - t_c
    safe = torch.where(norm_c > 0, norm_c, torch.ones_like(norm_c))
    return ProxReport(
        inactive=torch.broadcast_to(gap <= 0, shape),
        kink_distance=torch.broadcast_to(gap.abs(), shape),
        kink_normal=v / safe,
        symmetric=False,
    )
