"""The inner-solver protocol and the records a solve returns.

An inner solver computes ``y*(θ)`` and exposes an **optimality mapping** ``H(θ, y)`` with
``H(θ, y*(θ)) = 0``. The engine (``bilevel.implicit_solve``) differentiates ``H`` by autodiff to
obtain one element ``[∂θH ∂yH]`` of a conservative Jacobian and solves the implicit-function
linear system with it. Everything else a solver may say is an optional *hint*:

- ``info`` (:class:`SolveInfo`): how the last ``run`` ended;
- ``structure(y, theta)`` (:class:`Structure`): rows of ``∂yH`` that are identity rows
  (inactive coordinates, used for the support restriction), distances to kinks, and whether
  ``∂yH`` restricted to the active set is symmetric;
- ``optimality_at_selection(y, theta, side)``: the mapping evaluated on one side of its kinks
  (side=+1: every kinked coordinate on its active piece, -1: on its inactive piece), so that
  the engine can certify whether the hypergradient depends on the selection;
- ``batch_ndim`` (int): how many leading dimensions of ``y`` index independent problems;
- ``tol`` (float attribute): the stopping tolerance on the solver's residual, read at each
  ``run``, so that it may be changed between runs (``bilevel.precision`` derives it from the
  hypergradient precision an outer method needs).

This module is the ground floor: it imports torch only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

Theta = Any  # a Tensor or a tuple of Tensors


class ConvergenceWarning(UserWarning):
    """An inner solver stopped (max iterations) with its optimality residual above tolerance.

    The derivative returned from such a point solves the implicit system at a point where
    ``H(θ, y) != 0``, so its accuracy is limited by the residual printed in the message.
    """


class DivergenceError(RuntimeError):
    """An inner solver diverged (non-finite iterates, or a residual that grows without bound,
    e.g. a fixed-point map that is not a contraction). Raised instead of passing NaNs on."""


@dataclass(frozen=True)
class SolveInfo:
    """How an inner solve ended.

    Attributes:
        iterations: iterations performed.
        residual: the solver's optimality residual at return (its stopping criterion).
        tol: the tolerance the residual was compared with.
        converged: ``residual <= tol``.
        step: the step size used by the optimality mapping (proximal methods), else None.
    """

    iterations: int
    residual: float
    tol: float
    converged: bool
    step: float | None = None


@dataclass(frozen=True)
class Structure:
    """What a solver knows about ``∂yH`` at a solution.

    Attributes:
        inactive: boolean tensor shaped like ``y``; ``True`` where row ``i`` of ``∂yH`` is the
            unit row ``e_iᵀ`` (e.g. the prox Jacobian is zero there). ``None``: no information.
        kink_distance: non-negative tensor broadcastable to ``y``: distance of the point where
            the nonsmooth piece is evaluated to its kink set. ``None``: smooth mapping.
        symmetric: ``∂yH`` restricted to the active coordinates is symmetric.
        preconditioner: optional ``r ↦ P r`` with ``P ≈ (∂yH)⁻¹``, on ``(m, k)`` tensors (one
            row per batch problem, ``k`` coordinates each), symmetric positive definite when
            ``symmetric`` — e.g. the factor of the last Newton step's Hessian. With it the
            engine's ``"auto"`` adjoint runs preconditioned CG, which then needs one or two
            products with ``∂yH`` instead of materialising it.
    """

    inactive: Tensor | None = None
    kink_distance: Tensor | None = None
    symmetric: bool = False
    preconditioner: Callable[[Tensor], Tensor] | None = None


@runtime_checkable
class InnerSolver(Protocol):
    """The protocol every inner solver follows."""

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Return ``y*(θ)``, started from ``init`` when given (warm start). No graph is built."""
        ...

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """Return ``H(θ, y)``, shaped like ``y``, with ``H(θ, y*(θ)) = 0``; differentiable."""
        ...


def check_stopping(tol: float, maxiter: int | None = None) -> None:
    """The stopping parameters every solver takes: ``tol > 0`` and ``maxiter ≥ 1``.

    Raises:
        ValueError: naming the parameter.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if maxiter is not None and maxiter < 1:
        raise ValueError(f"maxiter must be ≥ 1, got {maxiter}")


def require_init(name: str, init: Tensor | None) -> Tensor:
    """``init`` itself; a clear error when a solver that cannot infer ``y``'s shape got none."""
    if init is None:
        raise ValueError(
            f"{name} needs a starting point to know the shape of y: pass "
            "init=torch.zeros(...) to implicit_solve / run (also the warm start)"
        )
    return init


def warn_not_converged(name: str, info: SolveInfo, hint: str) -> None:
    """Raise a :class:`ConvergenceWarning` describing ``info``."""
    warnings.warn(
        f"{name} stopped after {info.iterations} iterations with optimality residual "
        f"{info.residual:.3e} > tol {info.tol:.1e}; derivatives at this point are only as "
        f"accurate as this residual. {hint}",
        ConvergenceWarning,
        stacklevel=3,
    )


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite (no NaN, no ±Inf).

    One reduction pass: a NaN or an infinity makes the sum non-finite (NaN propagates,
    ``+Inf − Inf`` is NaN, ``Inf + x`` is ``Inf``), so a finite sum proves every entry finite;
    only a non-finite sum (a true NaN/Inf, or an overflow of finite entries) pays the exact
    elementwise test. ``torch.isfinite(t).all()`` costs ~25× more on large CPU tensors."""
    if t.numel() == 0 or not t.is_floating_point():
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())
