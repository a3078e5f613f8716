"""The proximal-gradient optimality mapping shared by every prox-based solver.

    H(θ, y) = y − prox(y − η ∇_y f(y, θ), θ, η),      H(θ, y*) = 0 for any η > 0,

where ``f`` is the smooth part and ``prox(v, θ, η)`` the prox of ``η·g(·, θ)``. ``H`` is
nonsmooth exactly where the prox is, at ``z = y − η∇f`` on the prox's kink set; autograd returns
the prox's constant-piece element there (``solvers.prox``). Rows of ``∂yH`` where the prox
Jacobian vanishes are unit rows ``e_iᵀ``: those coordinates are *inactive*.

The prox's structure (inactive rows, kink distances) is read from the :class:`ProxReport` that
the operators of ``solvers.prox`` record, so it also works through user lambdas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from solvers.base import Structure, Theta
from solvers.prox.base import ProxReport, recording

SmoothFn = Callable[[Tensor, Theta], Tensor]
ProxFn = Callable[[Tensor, Theta, float], Tensor]


class ProxGradientMapping:
    """``H(θ, y) = y − prox(y − η∇f(y, θ), θ, η)`` and what the engine asks of it.

    Args:
        smooth: ``f(y, θ)`` → scalar (a tensor of per-problem values is summed).
        prox: ``prox(v, θ, η)``.
        gradient: ``∇_y f(y, θ)`` written out (differentiable), when the caller has it: saves
            the nested autodiff of ``smooth`` in every product with ``∂H``.
    """

    def __init__(self, smooth: SmoothFn, prox: ProxFn, gradient: SmoothFn | None = None):
        self.smooth = smooth
        self.prox = prox
        self.gradient = gradient

    def __call__(self, y: Tensor, theta: Theta, eta: float) -> Tensor:
        """``H(θ, y)`` (differentiable in ``y`` and ``θ``)."""
        return y - self.prox(self.forward_point(y, theta, eta), theta, eta)

    def forward_point(self, y: Tensor, theta: Theta, eta: float) -> Tensor:
        """``z = y − η∇f(y, θ)`` (``torch.func.grad`` unless ``gradient`` was given:
        differentiable, composes with transforms)."""
        if self.gradient is not None:
            return y - eta * self.gradient(y, theta)
        return y - eta * torch.func.grad(lambda yy: self.smooth(yy, theta).sum())(y)

    def structure(self, y: Tensor, theta: Theta, eta: float, grad: Tensor | None = None
                  ) -> Structure:
        """Inactive rows and kink distances (gradient units: ``/η``) from the prox's report.

        ``grad``: ``∇f(y, θ)`` when the caller already has it (saves a gradient evaluation).
        """
        theta = detach(theta)
        if grad is None:
            z = self.forward_point(y.detach(), theta, eta).detach()
        else:
            z = y.detach() - eta * grad
        report = self._report(z, theta, eta, y.shape)
        if report is None:
            return Structure()
        return Structure(report.inactive, report.kink_distance / eta, report.symmetric)

    def at_selection(self, y: Tensor, theta: Theta, eta: float, side: int,
                     kink_tol: float) -> Tensor:
        """``H`` with the kinked coordinates of ``z`` pushed onto one piece.

        ``side=+1`` moves every coordinate within ``kink_tol`` (gradient units) of a kink onto
        its active piece, ``side=-1`` onto its constant piece. The shift is a constant, so the
        Jacobian of the returned mapping is the one-sided limit of ``[∂θH ∂yH]``.
        """
        z = self.forward_point(y, theta, eta)
        shift = self._shift(z.detach(), detach(theta), eta, side, kink_tol)
        return y - self.prox(z + shift, theta, eta)

    def structure_at_selection(self, y: Tensor, theta: Theta, eta: float, side: int,
                               kink_tol: float) -> Structure:
        """:meth:`structure` of the mapping of :meth:`at_selection`."""
        theta = detach(theta)
        z = self.forward_point(y.detach(), theta, eta).detach()
        report = self._report(z + self._shift(z, theta, eta, side, kink_tol), theta, eta, y.shape)
        if report is None:
            return Structure()
        return Structure(report.inactive, None, report.symmetric)

    def _report(self, z: Tensor, theta: Theta, eta: float, shape: torch.Size
                ) -> ProxReport | None:
        with torch.no_grad(), recording() as reports:
            self.prox(z, theta, eta)
        if len(reports) == 1 and reports[0].inactive.shape == shape:
            return reports[0]
        return None  # a user prox not built from one operator of solvers.prox: no structure

    def _shift(self, z: Tensor, theta: Theta, eta: float, side: int, kink_tol: float) -> Tensor:
        report = self._report(z, theta, eta, z.shape)
        if report is None:
            return torch.zeros_like(z)
        kinked = report.kink_distance <= kink_tol * eta
        # beyond the kink distance, plus round-off of the prox's own comparisons
        margin = 2 * kink_tol * eta + 100 * torch.finfo(z.dtype).eps * (1 + float(z.abs().max()))
        return torch.where(kinked, side * margin * report.kink_normal, torch.zeros_like(z))


def detach(theta: Theta) -> Theta:
    """``θ`` (a Tensor or a tuple of Tensors) without its graph."""
    if isinstance(theta, Tensor):
        return theta.detach()
    return tuple(t.detach() for t in theta)
