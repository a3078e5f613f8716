"""Diagnostics for users: is the hypergradient at a kink unique?

At a kink of the optimality mapping, the conservative Jacobian of ``y*`` is a set. For mappings
built from piecewise-smooth operators, its extreme elements are the one-sided limits obtained
by putting every kinked coordinate on its active piece, or every one on its constant piece.
:func:`kink_certificate` evaluates the hypergradient of an outer loss at both selections; when
they agree, every selection in between gives the same hypergradient (the map is then
differentiable along the kink, for the purpose of this loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel.adjoint import ImplicitAdjoint
from bilevel.linearization import Linearization
from solvers.base import InnerSolver, Theta


@dataclass(frozen=True)
class KinkCertificate:
    """Hypergradients at the extreme selections of the conservative Jacobian.

    Attributes:
        n_kinks: coordinates within ``kink_tol`` of a kink.
        active: hypergradient (one tensor per θ) with every kinked coordinate active.
        inactive: hypergradient with every kinked coordinate on its constant piece.
        gap: ``max |active − inactive|`` over all entries.
        unique: ``gap ≤ rtol · max(1, max |active|)``.
    """

    n_kinks: int
    active: tuple[Tensor, ...]
    inactive: tuple[Tensor, ...]
    gap: float
    unique: bool


def kink_certificate(
    solver: InnerSolver,
    theta: Theta,
    y: Tensor,
    outer: Callable[[Tensor, Theta], Tensor],
    *,
    kink_tol: float | None = None,
    adjoint: ImplicitAdjoint | None = None,
    rtol: float = 1e-6,
) -> KinkCertificate:
    """Evaluate the hypergradient of ``outer(y*, θ)`` at both extreme kink selections.

    Args:
        solver: an inner solver exposing ``optimality_at_selection`` and
            ``structure_at_selection`` (e.g. ``solvers.ProxGrad``).
        theta: the outer variable(s) at which ``y`` solves the inner problem.
        y: the inner solution ``y*(θ)``.
        outer: the outer loss ``F(y, θ)`` (a scalar).
        kink_tol: kink distance tolerance (default: 10× the solver's tolerance).
        adjoint: linear-solver settings (default ``ImplicitAdjoint()``).
        rtol: relative tolerance of the uniqueness decision.

    Returns:
        :class:`KinkCertificate`.

    Raises:
        TypeError: the solver cannot evaluate its mapping at a chosen selection.
    """
    if not hasattr(solver, "optimality_at_selection"):
        raise TypeError(
            f"{type(solver).__name__} has no optimality_at_selection(): its kink selections "
            "cannot be enumerated"
        )
    single = isinstance(theta, Tensor)
    thetas = (theta,) if single else tuple(theta)
    thetas = tuple(t.detach() for t in thetas)
    y = y.detach()
    adjoint = adjoint or ImplicitAdjoint()
    if kink_tol is None:
        kink_tol = adjoint.kink_tolerance(solver, y.dtype)

    def arg(ts: tuple[Tensor, ...]) -> Theta:
        return ts[0] if single else ts

    distance = solver.structure(y, arg(thetas)).kink_distance
    n_kinks = 0 if distance is None else int((distance <= kink_tol).sum())
    direct_y, direct_theta = _outer_gradients(outer, y, thetas, arg)
    results = []
    for side in (+1, -1):
        lin = Linearization(
            lambda yy, ts, side=side: solver.optimality_at_selection(yy, arg(ts), side, kink_tol),
            y,
            thetas,
            getattr(solver, "batch_ndim", 0),
        )
        structure = solver.structure_at_selection(y, arg(thetas), side, kink_tol)
        u = adjoint.reverse(lin, lin.flat(direct_y), structure.inactive, structure.symmetric)
        implicit = lin.rmatvec_theta(u)
        results.append(tuple(
            d + (0 if g is None else g) for d, g in zip(direct_theta, implicit, strict=True)
        ))
    active, inactive = results
    gap = max(float((a - b).abs().max()) for a, b in zip(active, inactive, strict=True))
    scale = max(1.0, max(float(a.abs().max()) for a in active))
    return KinkCertificate(n_kinks, active, inactive, gap, gap <= rtol * scale)


def _outer_gradients(outer: Callable[[Tensor, Theta], Tensor], y: Tensor,
                     thetas: tuple[Tensor, ...], arg: Callable[[tuple[Tensor, ...]], Theta]
                     ) -> tuple[Tensor, tuple[Tensor, ...]]:
    with torch.enable_grad():
        y_in = y.requires_grad_(True) if not y.requires_grad else y
        ts = tuple(t.clone().requires_grad_(True) for t in thetas)
        grads = torch.autograd.grad(outer(y_in, arg(ts)), (y_in, *ts), allow_unused=True)
    direct_theta = tuple(torch.zeros_like(t) if g is None else g
                         for t, g in zip(thetas, grads[1:], strict=True))
    direct_y = torch.zeros_like(y) if grads[0] is None else grads[0]
    return direct_y, direct_theta
