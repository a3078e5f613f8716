"""Cheap argument checks shared by the operators of this package (private)."""

from __future__ import annotations

import torch
from torch import Tensor


def _any(mask: Tensor) -> bool:
    """``bool(mask.any())``; ``False`` under ``torch.func.vmap``, where a tensor cannot be
    turned into a Python bool (the check is skipped there rather than breaking the transform)."""
    try:
        return bool(mask.any())
    except RuntimeError:
        return False


def _min(value: Tensor | float) -> float:
    if isinstance(value, Tensor):
        return float(value.detach().min())
    return float(value)


def require_nonnegative(value: Tensor | float, name: str, op: str) -> None:
    """Raise ``ValueError`` naming ``name`` if any entry of ``value`` is negative."""
    bad = _any(value.detach() < 0) if isinstance(value, Tensor) else value < 0
    if bad:
        raise ValueError(
            f"{op}: `{name}` must be >= 0 everywhere, got min {_min(value):.3g}; parametrize it "
            f"as a non-negative quantity (e.g. `{name}.exp()` or `{name}.abs()`)."
        )


def require_positive(value: Tensor | float, name: str, op: str) -> None:
    """Raise ``ValueError`` naming ``name`` if any entry of ``value`` is not > 0."""
    bad = _any(value.detach() <= 0) if isinstance(value, Tensor) else value <= 0
    if bad:
        raise ValueError(
            f"{op}: `{name}` must be > 0 everywhere, got min {_min(value):.3g}; the set is "
            f"empty or a single point otherwise (parametrize it as e.g. `{name}.exp()`)."
        )


def require_ordered(lower: Tensor | float, upper: Tensor | float, op: str) -> None:
    """Raise ``ValueError`` naming ``lower`` and ``upper`` if any ``lower > upper``."""
    lo = lower.detach() if isinstance(lower, Tensor) else lower
    up = upper.detach() if isinstance(upper, Tensor) else upper
    if isinstance(lo, Tensor) or isinstance(up, Tensor):
        bad = _any(torch.as_tensor(lo > up))
    else:
        bad = lo > up
    if bad:
        raise ValueError(
            f"{op}: `lower` must be <= `upper` everywhere (the box is empty otherwise); "
            f"max of lower - upper is {float(torch.as_tensor(lo - up).max()):.3g}."
        )
