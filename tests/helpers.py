"""Shared reference checks: central differences at smooth points, one-sided limits at kinks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def central_difference(f: Callable[[Tensor], float], theta: Tensor, direction: Tensor,
                       h: float) -> float:
    """``(f(θ + h d) − f(θ − h d)) / 2h``: the directional derivative at a smooth point."""
    return (f(theta + h * direction) - f(theta - h * direction)) / (2 * h)


def one_sided(f: Callable[[Tensor], float], theta: Tensor, direction: Tensor,
              h: float) -> tuple[float, float]:
    """Backward and forward differences ``(f(θ) − f(θ − h d))/h`` and ``(f(θ + h d) − f(θ))/h``."""
    f0 = f(theta)
    return (f0 - f(theta - h * direction)) / h, (f(theta + h * direction) - f0) / h


def assert_directional(grad: Tensor, f: Callable[[Tensor], float], theta: Tensor, *,
                       h: float, rtol: float, n_directions: int = 3, seed: int = 0) -> None:
    """``⟨grad, d⟩`` equals the central difference of ``f`` along random unit directions."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_directions):
        d = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        d = d / d.norm()
        fd = central_difference(f, theta, d, h)
        ours = float((grad * d).sum())
        assert abs(ours - fd) <= rtol * max(1.0, abs(fd)), (ours, fd)


def assert_between(value: float, a: float, b: float, atol: float) -> None:
    """``value`` lies in ``[min(a, b) − atol, max(a, b) + atol]``."""
    lo, hi = min(a, b), max(a, b)
    assert lo - atol <= value <= hi + atol, (value, a, b)
