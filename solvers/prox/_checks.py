"""Cheap argument checks shared by the operators of this package (private)."""

from __future__ import annotations

import math

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


def _max(value: Tensor | float) -> float:
    if isinstance(value, Tensor):
        return float(value.detach().max())
    return float(value)


def _nan(value: Tensor | float) -> bool:
    if isinstance(value, Tensor):
        return _any(torch.isnan(value.detach()))
    return math.isnan(value)


def _reject_nan(value: Tensor | float, name: str, op: str) -> None:
    """Called once a check failed: NaN gets its own message (``not NaN >= 0`` fails every
    comparison, so one reduction per call covers both)."""
    if _nan(value):
        raise ValueError(
            f"{op}: `{name}` contains NaN; check how it is computed from theta (e.g. an "
            "overflow of exp or a 0/0)."
        )


def require_nonnegative(value: Tensor | float, name: str, op: str) -> None:
    """Raise ``ValueError`` naming ``name`` if any entry of ``value`` is negative or NaN."""
    bad = _any(~(value.detach() >= 0)) if isinstance(value, Tensor) else not value >= 0
    if bad:
        _reject_nan(value, name, op)
        raise ValueError(
            f"{op}: `{name}` must be >= 0 everywhere, got min {_min(value):.3g}; parametrize it "
            f"as a non-negative quantity (e.g. `{name}.exp()` or `{name}.abs()`)."
        )


def require_positive(value: Tensor | float, name: str, op: str, finite: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` if any entry of ``value`` is not > 0 (NaN
    included), or with ``finite`` not finite."""
    if isinstance(value, Tensor):
        v = value.detach()
        bad = _any(~((v > 0) & (v < torch.inf))) if finite else _any(~(v > 0))
    else:
        bad = not (0 < value < math.inf) if finite else not value > 0
    if bad:
        _reject_nan(value, name, op)
        if finite and not _any(torch.as_tensor(value) <= 0):
            raise ValueError(f"{op}: `{name}` must be finite, got {_max(value):.3g}.")
        raise ValueError(
            f"{op}: `{name}` must be > 0 everywhere, got min {_min(value):.3g}; the set is "
            f"empty or a single point otherwise (parametrize it as e.g. `{name}.exp()`)."
        )


def require_ordered(lower: Tensor | float, upper: Tensor | float, op: str) -> None:
    """Raise ``ValueError`` naming ``lower`` and ``upper`` if any ``lower > upper`` (or NaN)."""
    lo = lower.detach() if isinstance(lower, Tensor) else lower
    up = upper.detach() if isinstance(upper, Tensor) else upper
    if isinstance(lo, Tensor) or isinstance(up, Tensor):
        bad = _any(~torch.as_tensor(lo <= up))
    else:
        bad = not lo <= up
    if bad:
        _reject_nan(lower, "lower", op)
        _reject_nan(upper, "upper", op)
        raise ValueError(
            f"{op}: `lower` must be <= `upper` everywhere (the box is empty otherwise); "
            f"max of lower - upper is {float(torch.as_tensor(lo - up).max()):.3g}."
        )
