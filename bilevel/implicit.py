"""``implicit_solve``: the solution of an inner problem with its implicit derivative attached.

Given an inner solver with optimality mapping ``H(θ, y)`` and ``y* = solver.run(θ)`` so that
``H(θ, y*) = 0``, the nonsmooth implicit function theorem (Bolte, Le, Pauwels, Silveti-Falls
2021) says: if every y-block ``B`` of the conservative Jacobian ``[A B]`` of ``H`` is invertible,
then ``−B⁻¹A`` is a conservative Jacobian of ``θ ↦ y*(θ)``. This module returns ``y*`` as the
output of a ``torch.autograd.Function`` whose

- backward solves ``Bᵀu = −v`` and returns ``Aᵀu`` (``v = ∂F/∂y``);
- jvp solves ``B ẏ = −A θ̇`` (``torch.func.jvp`` and ``torch.autograd.forward_ad``),

with ``[A B]`` obtained by autodiff of ``H`` at ``(θ, y*)`` (one element of the conservative
Jacobian, the one the solver's operators select at kinks). How the linear systems are solved is
the :class:`~bilevel.adjoint.ImplicitAdjoint` passed in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bilevel.adjoint import ImplicitAdjoint, ImplicitReport
from bilevel.errors import KinkWarning
from bilevel.linearization import Linearization
from solvers.base import InnerSolver, Structure, Theta, all_finite


def implicit_solve(
    solver: InnerSolver,
    theta: Theta,
    init: Tensor | None = None,
    *,
    adjoint: ImplicitAdjoint | None = None,
) -> Tensor:
    """Solve the inner problem at ``theta`` and attach the implicit derivative of ``y*(θ)``.

    Args:
        solver: an inner solver (``run`` and ``optimality``; hints ``info``, ``structure``,
            ``batch_ndim`` are used when present).
        theta: a floating Tensor or a tuple of floating Tensors (same dtype and device).
        init: warm start for the inner solver, on the dtype and device of ``theta``.
        adjoint: how to differentiate (default ``ImplicitAdjoint()``); its ``report`` holds the
            diagnostics of this solve once it ran (and of the derivative once taken).

    Returns:
        ``y*(θ)``; backward and forward-mode AD through it use the implicit function theorem.

    Raises:
        TypeError / ValueError: bad ``theta`` or ``init`` (the message names the argument).
        RuntimeError: the inner solver returned non-finite values.
        bilevel.SingularJacobianError: (at differentiation) ``∂yH`` singular on the active set.

    Warns:
        bilevel.KinkWarning: ``y*`` is within ``kink_tol`` of a kink of ``H``.
        bilevel.ConvergenceWarning: (from the solver) the inner solve stopped above tolerance.
    """
    thetas = _check_theta(theta)
    _check_init(init, thetas[0])
    problem = _ImplicitProblem(solver, isinstance(theta, Tensor), adjoint or ImplicitAdjoint())
    return _Implicit.apply(problem, init, *thetas)


class _ImplicitProblem:
    """One inner problem: solves it, then serves derivative products at the solution."""

    def __init__(self, solver: InnerSolver, single: bool, adjoint: ImplicitAdjoint):
        self.solver = solver
        self.single = single
        self.adjoint = adjoint
        self._lin: Linearization | None = None
        self.index: Tensor | None = None
        self.preconditioner: Callable[[Tensor], Tensor] | None = None  # P ≈ B⁻¹, solver's hint

    def theta_arg(self, thetas: tuple[Tensor, ...]) -> Theta:
        return thetas[0] if self.single else thetas

    def solve(self, init: Tensor | None, thetas: tuple[Tensor, ...]) -> Tensor:
        self.thetas = tuple(t.detach() for t in thetas)
        theta = self.theta_arg(self.thetas)
        y = self.solver.run(theta, init).detach()
        if not all_finite(y) and not _failures_marked(self.solver, y):
            raise RuntimeError(
                f"{type(self.solver).__name__}.run returned non-finite values: check the data "
                "and theta for NaN/Inf and the inner problem for divergence"
            )
        self.y = y
        self.adjoint.report = report = ImplicitReport(inner=getattr(self.solver, "info", None))
        self.structure = _structure(self.solver, y, theta)
        if self.structure.kink_distance is not None:
            kink_tol = self.adjoint.kink_tolerance(self.solver, y.dtype)
            report.n_kinks = int((self.structure.kink_distance <= kink_tol).sum())
            if report.n_kinks:
                warnings.warn(
                    f"{report.n_kinks} coordinate(s) of y* lie within {kink_tol:.1e} of a kink "
                    "of the optimality mapping: the derivative is one element of the "
                    "conservative Jacobian (the constant-piece selection); "
                    "bilevel.kink_certificate tells whether the hypergradient depends on it",
                    KinkWarning,
                    stacklevel=5,
                )
        return y

    def linearize(self) -> Linearization:
        """``H`` linearised at ``(θ, y*)``, built once; reduced to the active coordinates when
        the solver offers ``restricted_optimality`` (then ``self.index`` lists them)."""
        if self._lin is not None:
            return self._lin
        solver, single = self.solver, self.single
        theta = self.theta_arg(self.thetas)
        inactive = self.structure.inactive
        reduce = getattr(solver, "restricted_optimality", None)
        batch_ndim = getattr(solver, "batch_ndim", 0)
        if self.adjoint.restrict and reduce is not None and inactive is not None \
                and batch_ndim == 0:
            self.index = (~inactive).flatten().nonzero().flatten()
            reduced = reduce(self.y, theta, self.index)
            hint = getattr(solver, "restricted_preconditioner", None)
            self.preconditioner = hint(self.y, theta, self.index) if hint else None
            self._lin = Linearization(
                lambda y_S, ts: reduced(y_S, ts[0] if single else ts),
                self.y.flatten()[self.index], self.thetas,
            )
        else:
            self.preconditioner = self.structure.preconditioner
            self._lin = Linearization(
                lambda y, ts: solver.optimality(y, ts[0] if single else ts),
                self.y, self.thetas, batch_ndim,
            )
        return self._lin

    def vjp(self, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        """``Aᵀu`` with ``Bᵀu = −∂F/∂y``. Under the default adjoint, a solution the solver
        computed itself (``solve_adjoint``) or its preconditioner of a symmetric ``B`` seeds
        iterative refinement (:meth:`ImplicitAdjoint.refined`: one VJP when exact); else the
        adjoint's linear solver runs, then one VJP gives ``Aᵀu``."""
        lin = self.linearize()
        symmetric = self.structure.symmetric
        adjoint = self.adjoint
        refine = adjoint.takes_solver_solutions
        preconditioner = self.preconditioner if symmetric else None
        if self.index is None:
            v = lin.flat(grad_y)
            inactive = self.structure.inactive
            guess = self._solver_guess("solve_adjoint", grad_y) if refine else None
            if guess is not None and guess.shape == grad_y.shape:
                return adjoint.refined(lin, v, lin.flat(guess), preconditioner, inactive,
                                       symmetric)
            if refine and preconditioner is not None:
                return adjoint.refined(lin, v, None, preconditioner, inactive, symmetric)
            u = adjoint.reverse(lin, v, inactive, symmetric, self.preconditioner)
            return lin.rmatvec_theta(u)
        if self.index.numel() == 0:  # y* locally constant
            return tuple(torch.zeros_like(t) for t in self.thetas)
        v = lin.flat(grad_y.flatten()[self.index])
        if refine and preconditioner is not None:
            grads = adjoint.refined(lin, v, None, preconditioner, None, symmetric)
        else:
            grads = lin.rmatvec_theta(adjoint.reverse(lin, v, None, symmetric,
                                                      self.preconditioner))
        adjoint.report.full_size = self.y.numel()
        return grads

    def jvp(self, theta_dots: tuple[Tensor | None, ...]) -> Tensor:
        lin = self.linearize()
        symmetric = self.structure.symmetric
        if self.index is None:
            r = -lin.matvec(None, theta_dots)
            y_dot = self._solver_solution("solve_tangent", lin, lin.unflat(r), r,
                                          transpose=False)
            if y_dot is None:
                y_dot = self.adjoint.forward(lin, r, self.structure.inactive, symmetric,
                                             self.preconditioner)
            return lin.unflat(y_dot)
        y_dot = torch.zeros_like(self.y).flatten()
        if self.index.numel():
            r = -lin.matvec(None, theta_dots)
            y_dot[self.index] = self.adjoint.forward(lin, r, None, symmetric,
                                                     self.preconditioner).flatten()
            self.adjoint.report.full_size = self.y.numel()
        return y_dot.reshape(self.y.shape)

    def _solver_guess(self, hint: str, arg: Tensor) -> Tensor | None:
        """The solver's own solution of a linear system (its optional ``solve_adjoint(y, θ, v)
        -> u`` with ``Bᵀu = −v``, or ``solve_tangent(y, θ, r) -> ẏ`` with ``B ẏ = r``),
        unchecked; ``None`` when it has none."""
        solve = getattr(self.solver, hint, None)
        return None if solve is None else solve(self.y, self.theta_arg(self.thetas), arg)

    def _solver_solution(self, hint: str, lin: Linearization, arg: Tensor, rhs: Tensor,
                         transpose: bool) -> Tensor | None:
        """The solver's own solution of the linear system (its optional ``solve_adjoint(y, θ,
        v) -> u`` with ``Bᵀu = −v``, or ``solve_tangent(y, θ, r) -> ẏ`` with ``B ẏ = r``),
        in the ``(m, k)`` layout, once the adjoint checked its residual; else ``None``."""
        if not self.adjoint.takes_solver_solutions:
            return None  # not computed when the adjoint would not take it
        x = self._solver_guess(hint, arg)
        if x is None:
            return None
        return self.adjoint.checked(lin, lin.flat(x), rhs, transpose)


class _Implicit(torch.autograd.Function):
    @staticmethod
    def forward(problem: _ImplicitProblem, init: Tensor | None, *thetas: Tensor) -> Tensor:
        return problem.solve(init, thetas)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.problem = inputs[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.problem.vjp(grad_y)
        return (None, None, *grads)

    @staticmethod
    def jvp(ctx: Any, _problem: None, _init: Tensor | None, *theta_dots: Tensor | None) -> Tensor:
        return ctx.problem.jvp(theta_dots)


def _failures_marked(solver: InnerSolver, y: Tensor) -> bool:
    """Whether every non-finite value of ``y`` lies in a batch item that the solver marked as
    failed (a nonzero entry of its ``status`` tensor, shaped like ``y``'s batch dimensions).
    Such items are the solver's to handle in ``optimality`` (e.g. identity rows), so that the
    derivative of a loss over the other items is unaffected."""
    status = getattr(solver, "status", None)
    batch_ndim = getattr(solver, "batch_ndim", 0)
    if not isinstance(status, Tensor) or status.shape != y.shape[:batch_ndim]:
        return False
    bad = ~torch.isfinite(y).flatten(batch_ndim).all(-1)
    return bool((status[bad] != 0).all())


def _structure(solver: InnerSolver, y: Tensor, theta: Theta) -> Structure:
    get = getattr(solver, "structure", None)
    return get(y, theta) if get is not None else Structure()


def _check_theta(theta: Theta) -> tuple[Tensor, ...]:
    thetas = (theta,) if isinstance(theta, Tensor) else theta
    if not isinstance(thetas, tuple) or not thetas:
        raise TypeError(
            f"theta must be a Tensor or a non-empty tuple of Tensors, got {type(theta).__name__}"
        )
    first = thetas[0]
    for i, t in enumerate(thetas):
        name = "theta" if len(thetas) == 1 else f"theta[{i}]"
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point Tensor, got dtype {t.dtype}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but theta[0] is {first.dtype} on "
                f"{first.device}: put every theta on one dtype and device"
            )
        if t.is_meta:
            raise ValueError(
                f"{name} is on the meta device (a shape without values): the inner problem "
                "needs theta with data, on the CPU or an accelerator"
            )
        if not all_finite(t.detach()):
            raise ValueError(f"{name} contains NaN or Inf")
    return thetas


def _check_init(init: Tensor | None, theta: Tensor) -> None:
    if init is None:
        return
    if not isinstance(init, Tensor):
        raise TypeError(f"init must be a Tensor or None, got {type(init).__name__}")
    if init.dtype != theta.dtype or init.device != theta.device:
        raise ValueError(
            f"init is {init.dtype} on {init.device} but theta is {theta.dtype} on "
            f"{theta.device}: pass init with theta's dtype and device"
        )
    if not all_finite(init):
        raise ValueError("init contains NaN or Inf")
