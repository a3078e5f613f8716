"""What every prox / projection reports about itself, and how a solver listens.

A prox operator here is a plain function ``prox(v, *params) -> Tensor`` built from torch ops, so
autograd differentiates it. Autodiff at a point of nondifferentiability returns one element of
the conservative Jacobian; **the convention of this package is the element of the constant
(inactive) piece**: where a coordinate sits exactly on a kink, its Jacobian row is the one it
would have just inside the region where the output does not move with ``v``. Each operator's
docstring states its kink set.

A solver that wants the structure of the prox (which Jacobian rows are zero, how far each
coordinate is from a kink) calls the user's prox inside :func:`recording`; every operator of
this package appends a :class:`ProxReport` to the active recording. This works through user
lambdas such as ``lambda v, t, step: prox.l1(v, step * t.exp())``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ProxReport:
    """Structure of one prox evaluation at ``v``.

    Attributes:
        inactive: bool tensor shaped like the output; ``True`` where the Jacobian row of the
            prox w.r.t. ``v`` is zero (the output coordinate is locally constant in ``v``).
        kink_distance: non-negative tensor broadcastable to the output: distance of ``v`` to
            the kink set (coordinate-wise for separable operators).
        kink_normal: tensor broadcastable to the output: a direction in ``v``-space that moves a
            kinked coordinate onto its active (non-constant) piece.
        symmetric: the Jacobian restricted to the active coordinates is a multiple of the
            identity (what makes ``∂yH`` of a prox-gradient mapping symmetric there).
    """

    inactive: Tensor
    kink_distance: Tensor
    kink_normal: Tensor
    symmetric: bool


_RECORDING: ContextVar[list[ProxReport] | None] = ContextVar("prox_recording", default=None)


@contextmanager
def recording() -> Iterator[list[ProxReport]]:
    """Collect the :class:`ProxReport` of every prox evaluated inside the block."""
    reports: list[ProxReport] = []
    token = _RECORDING.set(reports)
    try:
        yield reports
    finally:
        _RECORDING.reset(token)


def record(build: Callable[[], ProxReport]) -> None:
    """Append ``build()`` to the active recording; does nothing (and builds nothing) otherwise."""
    reports = _RECORDING.get()
    if reports is not None:
        reports.append(build())
