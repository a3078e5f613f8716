"""Accelerated proximal gradient (FISTA) with backtracking and adaptive restart.

Inner problem: ``min_y f(y, θ) + g(y, θ)`` with ``f`` smooth (``smooth(y, θ)``) and ``g`` given
by its prox (``prox(v, θ, η) = prox_{ηg(·, θ)}(v)``).

Optimality mapping (the prox-gradient fixed-point residual):

    H(θ, y) = y − prox(y − η ∇_y f(y, θ), θ, η),      H(θ, y*) = 0,

with ``η`` the step the solver really used. ``H`` is nonsmooth exactly where the prox is, i.e.
at ``z = y − η∇f`` on the prox's kink set; the Jacobian autograd returns there is the prox's
constant-piece element (see ``solvers.prox``). Rows of ``∂yH`` where the prox Jacobian vanishes
are unit rows: those coordinates are reported inactive for the support restriction.

Stopping criterion: the gradient-mapping norm ``max_i |H_i(θ, y)| / η ≤ tol``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.base import (
    DivergenceError,
    SolveInfo,
    Structure,
    Theta,
    check_stopping,
    require_init,
    warn_not_converged,
)
from solvers.fista import momentum
from solvers.prox_mapping import ProxFn, ProxGradientMapping, SmoothFn, detach


class ProxGrad:
    """FISTA with backtracking line search and gradient-based adaptive restart.

    Args:
        smooth: ``f(y, θ)`` → scalar (a tensor of per-problem values is summed).
        prox: ``prox(v, θ, η)``, the prox of ``η·g(·, θ)`` at ``v``.
        stepsize: fixed step ``η`` (then no backtracking); default: estimated from the
            curvature at the first start, then decreased by backtracking and kept across runs.
        acceleration: FISTA momentum (with restart) if True, plain proximal gradient if False.
        tol: tolerance on the gradient-mapping norm ``max|H|/η``.
        maxiter: iteration cap; a :class:`~solvers.base.ConvergenceWarning` is raised there.
        batch_ndim: leading dimensions of ``y`` that index independent problems.

    Raises:
        DivergenceError: (from ``run``) an iterate became NaN/Inf (rather than returning it).

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last ``run``.
        step: the step ``η`` used by ``optimality`` (None before the first run).
    """

    def __init__(
        self,
        smooth: SmoothFn,
        prox: ProxFn,
        *,
        stepsize: float | None = None,
        acceleration: bool = True,
        tol: float = 1e-8,
        maxiter: int = 10_000,
        batch_ndim: int = 0,
    ):
        if stepsize is not None and not stepsize > 0:
            raise ValueError(f"stepsize must be > 0, got {stepsize}")
        check_stopping(tol, maxiter)
        self.smooth = smooth
        self.prox = prox
        self.mapping = ProxGradientMapping(smooth, prox)
        self.fixed_step = stepsize is not None
        self.step: float | None = stepsize
        self.acceleration = acceleration
        self.tol = tol
        self.maxiter = maxiter
        self.batch_ndim = batch_ndim
        self.info: SolveInfo | None = None

    # -- protocol ----------------------------------------------------------------------------

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Minimise ``f(·, θ) + g(·, θ)`` from ``init``; returns ``y*`` (no graph)."""
        require_init("ProxGrad", init)
        theta = detach(theta)
        x = init.detach().clone()
        value, grad = self._value_and_grad(x, theta, check=True)
        if self.step is None:
            self.step = self._initial_step(x, theta, grad)
        step = self.step
        self._check_prox(x - step * grad, theta, step)
        y, t = x, 1.0
        f_y, g_y = value, grad
        iterations, converged = 0, False
        while iterations < self.maxiter and not converged:
            iterations += 1
            x_new, step = self._prox_step(y, f_y, g_y, theta, step)
            change = float((x_new - y).abs().max())
            if not math.isfinite(change):
                self.info = SolveInfo(iterations, math.inf, self.tol, False, step)
                raise DivergenceError(
                    f"ProxGrad: the iterate became non-finite at iteration {iterations} (the "
                    "prox or ∇f returned NaN/Inf from finite points): check the prox's "
                    "parameters (NaN, Inf, overflow of e.g. exp(theta)) and the scale of the data"
                )
            if change / step <= self.tol:  # small at y: check x_new
                self.step = step
                converged = self._residual(x_new, theta) <= self.tol
            if self.acceleration:
                y, t = momentum(x, x_new, y, t)
            else:
                y = x_new
            x = x_new
            if not converged:
                f_y, g_y = self._value_and_grad(y, theta)
        self.step = step
        residual = self._residual(x, theta)
        self.info = SolveInfo(iterations, residual, self.tol, residual <= self.tol, self.step)
        if not self.info.converged:
            warn_not_converged(
                "ProxGrad", self.info, "Raise maxiter, loosen tol, or warm-start with init."
            )
        return x

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """``H(θ, y) = y − prox(y − η∇f(y, θ), θ, η)`` (differentiable in ``y`` and ``θ``)."""
        return self.mapping(y, theta, self._eta())

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        """Inactive rows and kink distances of ``H`` at ``y`` (see ``ProxGradientMapping``)."""
        return self.mapping.structure(y, theta, self._eta())

    def optimality_at_selection(self, y: Tensor, theta: Theta, side: int,
                                kink_tol: float) -> Tensor:
        """``H`` with kinked coordinates on one piece (``ProxGradientMapping.at_selection``)."""
        return self.mapping.at_selection(y, theta, self._eta(), side, kink_tol)

    def structure_at_selection(self, y: Tensor, theta: Theta, side: int,
                               kink_tol: float) -> Structure:
        """:meth:`structure` of the mapping of :meth:`optimality_at_selection`."""
        return self.mapping.structure_at_selection(y, theta, self._eta(), side, kink_tol)

    # -- internals ---------------------------------------------------------------------------

    def _eta(self) -> float:
        if self.step is None:
            raise RuntimeError("ProxGrad.optimality needs the step: call run() first")
        return self.step

    def _value_and_grad(self, y: Tensor, theta: Theta, check: bool = False
                        ) -> tuple[Tensor, Tensor]:
        def f(yy: Tensor) -> Tensor:
            return self.smooth(yy, theta).sum()

        if not check:
            grad, value = torch.func.grad_and_value(f)(y)
            return value, grad
        try:
            grad, value = torch.func.grad_and_value(f)(y)
        except RuntimeError as err:
            raise ValueError(
                f"smooth(init, theta) failed for init of shape {tuple(y.shape)}: {err}"
            ) from err
        if grad.shape != y.shape:
            raise ValueError(f"∇smooth has shape {tuple(grad.shape)}, init {tuple(y.shape)}")
        if not (torch.isfinite(value) and torch.isfinite(grad).all()):
            raise ValueError(
                "smooth(init, theta) or its gradient is NaN/Inf: check the data and theta "
                "for NaN/Inf values"
            )
        return value, grad

    def _check_prox(self, v: Tensor, theta: Theta, step: float) -> None:
        """One prox evaluation at the first point: a failure or a wrong output names the prox
        (a raw torch error from inside the loop would not)."""
        try:
            out = self.prox(v, theta, step)
        except RuntimeError as err:
            raise ValueError(
                f"prox(v, theta, step) failed for v of shape {tuple(v.shape)} ({v.dtype} on "
                f"{v.device}): {err}; its parameters must broadcast against y and live on "
                "y's dtype and device"
            ) from err
        if not isinstance(out, Tensor) or out.shape != v.shape or out.dtype != v.dtype:
            got = (f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor)
                   else type(out).__name__)
            raise ValueError(f"prox(v, theta, step) returned {got} for v of shape "
                             f"{tuple(v.shape)} {v.dtype}: it must return a point like v")

    def _prox_step(self, y: Tensor, f_y: Tensor, g_y: Tensor, theta: Theta, step: float
                   ) -> tuple[Tensor, float]:
        """One prox-gradient step from ``y``, halving ``step`` until the quadratic upper
        bound ``f(x) ≤ f(y) + ⟨∇f(y), x−y⟩ + ‖x−y‖²/(2η)`` holds (up to round-off)."""
        for _ in range(60):
            x = self.prox(y - step * g_y, theta, step)
            if self.fixed_step:
                return x, step
            d = x - y
            with torch.no_grad():
                f_x = self.smooth(x, theta).sum()
            slack = 1e3 * torch.finfo(y.dtype).eps * (abs(float(f_y)) + 1)
            if float(f_x - f_y - (g_y * d).sum()) <= float((d * d).sum()) / (2 * step) + slack:
                return x, step  # (a NaN f_x fails the test and halves the step too)
            step /= 2
        raise RuntimeError(
            "ProxGrad backtracking failed: f is not smooth or is NaN/Inf near the iterate "
            "(check smooth() and the data), or pass a fixed stepsize"
        )

    def _initial_step(self, y: Tensor, theta: Theta, grad: Tensor) -> float:
        """``1/(1.1·L)``, ``L`` from 5 power iterations on finite differences of ``∇f`` at ``y``
        (one gradient each; exact for quadratics). Backtracking corrects an underestimate."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        scale = math.sqrt(torch.finfo(y.dtype).eps) * (1 + float(y.abs().max()))
        lipschitz = 0.0
        for _ in range(5):
            v = v / v.norm().clamp(min=torch.finfo(y.dtype).tiny)
            v = (self._value_and_grad(y + scale * v, theta)[1] - grad) / scale
            lipschitz = float(v.norm())
        if not math.isfinite(lipschitz) or lipschitz <= 0:
            return 1.0
        return 1.0 / (1.1 * lipschitz)

    def _residual(self, y: Tensor, theta: Theta) -> float:
        """The gradient-mapping norm ``max_i |H_i(θ, y)| / η``."""
        with torch.no_grad():
            return float(self.optimality(y, theta).abs().max()) / self._eta()

