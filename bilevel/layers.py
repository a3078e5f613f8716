"""``nn.Module`` wrappers: an inner solve as a layer, differentiated implicitly.

Each layer runs an inner solver in its forward pass and attaches the implicit derivative with
:func:`bilevel.implicit_solve`: the backward pass solves one linear system with ``∂yH`` at the
solution instead of backpropagating through the iterations (memory independent of the number
of iterations; the derivative is exact up to the inner and adjoint tolerances).

- :class:`FixedPointLayer`: a deep-equilibrium (DEQ) layer ``z* = f(z*, x)``.
- :class:`ProxLayer`: a proximal-gradient solve ``y* = argmin_y f(y, θ) + g(y, θ)``.
- :class:`QPLayer`: a batch of convex QPs ``z* = argmin ½zᵀQz + qᵀz s.t. Az = b, Gz ≤ h``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilevel.adjoint import ImplicitAdjoint
from bilevel.implicit import implicit_solve
from solvers.base import SolveInfo, Theta
from solvers.fixed_point import FixedPoint
from solvers.prox_mapping import ProxFn, SmoothFn
from solvers.proxgrad import ProxGrad
from solvers.qp.kkt import as_params, split
from solvers.qp.qp import QP

__all__ = ["FixedPointLayer", "ProxLayer", "QPLayer"]


def deq_adjoint() -> ImplicitAdjoint:
    """The default adjoint of :class:`FixedPointLayer`: GMRES to relative residual ``1e-3``.

    Solves ``(I − ∂z f)ᵀ u = ∂L/∂z*`` per sample, matrix-free (one VJP through ``f`` per
    iteration), robust when ``f`` is not a contraction at some samples. Measured on the digits
    DEQ of ``benchmarks/deq.py`` (float32): Neumann failed in the first epoch (samples with
    ``ρ(∂z f) ≥ 1``), BiCGSTAB broke down, and dense LU was slower (an SVD per sample for its
    conditioning check) and rejected well-posed float32 systems as singular.

    Why ``1e-3``: the gradient is a minibatch estimate whose sampling noise is far above a
    ``1e-3`` relative error in ``u``, and it is tighter than what torchdeq's default backward
    (Anderson, ≤ 40 iterations to an absolute ``1e-6``) reaches on that benchmark: it stops at
    its 40-iteration cap at a relative residual of ~5e-3 on average and up to ~1e-1 on the
    worst sample of a batch. ``1e-4`` costs ~3 more GMRES steps per batch there (~18 instead
    of ~15). Pass ``adjoint=ImplicitAdjoint(linear_solver="gmres", tol=...)`` to choose."""
    return ImplicitAdjoint(linear_solver="gmres", tol=1e-3)


class FixedPointLayer(nn.Module):
    """Deep-equilibrium layer: ``z*(x) = f(z*, x)``, with implicit backward.

    The inner solver is :class:`solvers.FixedPoint` on the map ``T(z, θ) = f(z, x)`` evaluated
    with the parameters in ``θ = (x, p_1, …, p_r)`` (``p_j`` the parameters of ``f`` that
    require grad, substituted by ``torch.func.functional_call``), batched over the first
    dimension of ``x`` (``batch_ndim=1``: every sample is its own problem with its own stopping
    test). Optimality mapping:

        H(θ, z) = z − f(z, x; p),        H(θ, z*) = 0,

    so ``∂zH = I − ∂z f`` and ``∂θH = −[∂x f, ∂p f]``. Backward (reverse mode) solves
    ``(I − ∂z f)ᵀ u = ∂L/∂z*`` per sample with the adjoint's linear solver and returns
    ``u ᵀ∂x f`` to ``x`` and ``Σ_samples u ᵀ∂p f`` to each parameter of ``f`` (so ``f``'s
    parameters train with any optimiser as usual). Forward mode (``torch.func.jvp``) works too.
    The derivative exists when ``I − ∂z f`` is invertible at ``z*`` (e.g. ``f`` contracts in
    ``z``); otherwise the adjoint solve fails with :class:`bilevel.SingularJacobianError`.

    Args:
        f: the cell, called as ``f(z, x)`` → tensor shaped like ``z``; it must treat the first
            dimension as the batch (rows independent).
        method: ``"anderson"``, ``"broyden"``, ``"picard"`` or ``"km"`` (forward solver).
        tol: forward tolerance, per sample ``‖z − f(z, x)‖∞ / (1 + ‖z‖∞) ≤ tol``.
        maxiter: forward iteration cap (a :class:`bilevel.ConvergenceWarning` above it; the
            layer still returns the last iterate, or with ``keep_best=True`` the one of lowest
            residual, and its derivative).
        adjoint: how to differentiate (default :func:`deq_adjoint`: GMRES to ``1e-3``);
            ``self.adjoint.report`` describes the last solve and backward.
        z_shape: shape of one sample of ``z`` (e.g. ``(128,)``); default: that of ``x``.
            Only used to build the zero starting point.
        warm_start: start each forward from the last ``z*`` when it has the same shape, dtype
            and device (else from zeros). Off by default: consecutive minibatches hold
            different samples, so the last ``z*`` is a start of no particular quality (and
            it makes ``forward`` depend on the call history).
        memory: Anderson / Broyden memory.
        **solver_kwargs: other :class:`solvers.FixedPoint` arguments (``damping``,
            ``regularization``, ``keep_best``).

    Raises:
        (from ``forward``) bilevel.DivergenceError: the forward iteration diverged;
        bilevel.SingularJacobianError: (at backward) the adjoint solve failed.
    """

    def __init__(
        self,
        f: nn.Module,
        *,
        method: str = "anderson",
        tol: float = 1e-4,
        maxiter: int = 50,
        adjoint: ImplicitAdjoint | None = None,
        z_shape: tuple[int, ...] | None = None,
        warm_start: bool = False,
        memory: int = 5,
        **solver_kwargs: float,
    ):
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(f"f must be an nn.Module called as f(z, x), got {type(f).__name__}")
        self.f = f
        self.adjoint = adjoint if adjoint is not None else deq_adjoint()
        self.z_shape = None if z_shape is None else tuple(z_shape)
        self.warm_start = warm_start
        self.solver = FixedPoint(self._map, method=method, tol=tol, maxiter=maxiter,
                                 memory=memory, batch_ndim=1, **solver_kwargs)
        self._names: tuple[str, ...] = ()
        self._last: Tensor | None = None
        self._own_theta: Theta | None = None

    def _map(self, z: Tensor, theta: Theta) -> Tensor:
        """``T(z, θ) = f(z, x)`` with ``f``'s trainable parameters taken from ``θ``.

        Inside the forward solve (no autograd recording) with ``θ`` holding ``f``'s own
        parameters (detached views of the same storage), ``f`` is called directly: the same
        numbers without ``functional_call``'s per-call parameter swap."""
        x, *params = theta
        if not torch.is_grad_enabled() and self._holds_own_parameters(theta):
            return self.f(z, x)
        return torch.func.functional_call(self.f, dict(zip(self._names, params, strict=True)),
                                          (z, x))

    def _holds_own_parameters(self, theta: Theta) -> bool:
        """Whether ``θ[1:]`` are ``f``'s trainable parameters themselves or detached views of
        them (same storage, shape and strides); decided once per ``θ`` tuple."""
        if theta is self._own_theta:
            return True
        own = [p for n, p in self.f.named_parameters() if n in self._names]
        params = theta[1:]
        same = len(own) == len(params) and all(
            p.data_ptr() == q.data_ptr() and p.shape == q.shape and p.stride() == q.stride()
            and p.dtype == q.dtype and p.device == q.device
            for p, q in zip(params, own, strict=True))
        if same:
            self._own_theta = theta
        return same

    def forward(self, x: Tensor, init: Tensor | None = None) -> Tensor:
        """Return ``z*`` with ``z* = f(z*, x)``, differentiable w.r.t. ``x`` and ``f``'s
        parameters by the implicit function theorem.

        Args:
            x: the input, batch first.
            init: starting point (overrides the warm start and the zero start).

        Returns:
            ``z*`` of shape ``(x.shape[0], *z_shape)``.
        """
        named = [(n, p) for n, p in self.f.named_parameters() if p.requires_grad]
        self._names = tuple(n for n, _ in named)
        self._own_theta = None
        if init is None:
            init = self._start(x)
        z = implicit_solve(self.solver, (x, *(p for _, p in named)), init, adjoint=self.adjoint)
        if self.warm_start:
            self._last = z.detach()
        return z

    def _start(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], *(x.shape[1:] if self.z_shape is None else self.z_shape))
        last = self._last
        if (self.warm_start and last is not None and last.shape == shape
                and last.dtype == x.dtype and last.device == x.device):
            return last
        return torch.zeros(shape, dtype=x.dtype, device=x.device)

    @property
    def info(self) -> SolveInfo | None:
        """:class:`solvers.SolveInfo` of the last forward solve."""
        return self.solver.info


class ProxLayer(nn.Module):
    """A proximal-gradient solve as a layer: ``y*(θ) = argmin_y f(y, θ) + g(y, θ)``.

    A thin wrapper of :class:`solvers.ProxGrad` (FISTA with backtracking and restart) and
    :func:`bilevel.implicit_solve`. Optimality mapping (``η`` the step the solver used):

        H(θ, y) = y − prox(y − η ∇_y f(y, θ), θ, η),      H(θ, y*) = 0.

    Gradients flow to ``θ`` (and only to ``θ``: tensors captured inside ``smooth`` or ``prox``
    are constants; pass anything trainable through ``θ``). Backward solves
    ``∂yHᵀ u = −∂L/∂y*`` restricted to the coordinates where the prox Jacobian does not vanish
    (e.g. the Lasso support), then returns ``∂θHᵀ u``; at a kink of the prox the derivative is
    one element of the conservative Jacobian (a :class:`bilevel.KinkWarning` says so).

    Args:
        smooth: ``f(y, θ)`` → scalar (per-problem values are summed).
        prox: ``prox(v, θ, η)``, the prox of ``η·g(·, θ)`` at ``v`` (``solvers.prox``).
        tol: tolerance on the gradient-mapping norm ``max|H| / η``.
        maxiter: iteration cap.
        stepsize: fixed step ``η`` (default: estimated, then backtracked, kept across calls).
        acceleration: FISTA momentum with restart.
        adjoint: how to differentiate (default ``ImplicitAdjoint()``: LU on small supports,
            CG/GMRES otherwise); ``self.adjoint.report`` describes the last call.
        batch_ndim: leading dimensions of ``y`` that index independent problems.
    """

    def __init__(
        self,
        smooth: SmoothFn,
        prox: ProxFn,
        *,
        tol: float = 1e-8,
        maxiter: int = 10_000,
        stepsize: float | None = None,
        acceleration: bool = True,
        adjoint: ImplicitAdjoint | None = None,
        batch_ndim: int = 0,
    ):
        super().__init__()
        self.solver = ProxGrad(smooth, prox, stepsize=stepsize, acceleration=acceleration,
                               tol=tol, maxiter=maxiter, batch_ndim=batch_ndim)
        self.adjoint = adjoint if adjoint is not None else ImplicitAdjoint()

    def forward(self, theta: Theta, init: Tensor) -> Tensor:
        """Return ``y*(θ)`` (started from ``init``, which also fixes its shape), differentiable
        w.r.t. ``θ`` (a tensor or a tuple of tensors) by the implicit function theorem."""
        return implicit_solve(self.solver, theta, init, adjoint=self.adjoint)

    @property
    def info(self) -> SolveInfo | None:
        """:class:`solvers.SolveInfo` of the last forward solve."""
        return self.solver.info


class QPLayer(nn.Module):
    """A batch of convex QPs as a layer (the signature qpth users know):

        z*(θ) = argmin_z ½ zᵀQz + qᵀz   s.t.  A z = b,  G z ≤ h,      θ = (Q, q, G, h, A, b).

    Solved by ``solvers.QP(backend)`` and differentiated by the engine through the KKT mapping
    of :mod:`solvers.qp.kkt` (stationarity, primal feasibility, complementarity in min form):
    gradients reach every parameter that requires grad, and a parameter broadcast over the batch
    (one ``Q`` for many ``q``) receives the **sum** of the per-item gradients. A weakly active
    constraint is a kink (``KinkWarning``); an infeasible item of the native backend comes back
    as NaN with its status in ``self.solver.status``, the rest of the batch is differentiated.

    Args:
        backend: ``"native"`` (batched interior point, CPU/CUDA) or ``"cvxpylayers"``.
        adjoint: how to differentiate (default ``ImplicitAdjoint()``).
        **options: the backend's options (``tol``, ``maxiter``, ``solver_args``).
    """

    def __init__(self, backend: str = "native", *, adjoint: ImplicitAdjoint | None = None,
                 **options):
        super().__init__()
        self.solver = QP(backend, **options)
        self.adjoint = adjoint or ImplicitAdjoint()

    def forward(self, Q: Tensor, q: Tensor, G: Tensor | None = None, h: Tensor | None = None,
                A: Tensor | None = None, b: Tensor | None = None) -> Tensor:
        """Return the primal solution ``z*`` (``(*batch, n)``)."""
        params = as_params(Q, q, G, h, A, b)
        y = implicit_solve(self.solver, tuple(params), adjoint=self.adjoint)
        return split(y, params.sizes)[0]
