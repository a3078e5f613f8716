"""Unconstrained minimisation of a smooth, strongly convex objective: Newton or L-BFGS.

Inner problem: ``min_y f(y, θ)`` with ``f`` twice differentiable and strongly convex in ``y``
(``objective(y, θ)``; a tensor of per-problem values is summed).

Optimality mapping (the gradient):

    H(θ, y) = ∇_y f(y, θ),      H(θ, y*) = 0,

so ``∂yH = ∇²_yy f`` is the Hessian — symmetric, and positive definite by strong convexity —
and ``∂θH = ∇²_θy f``. ``H`` is smooth: there are no kinks and no inactive rows; the structure
hint says ``∂yH`` is symmetric, so the engine may use CG for large adjoint systems.

Methods:

- ``"newton"`` (default): Newton's method with a backtracking Armijo line search. The Newton
  system is solved with the dense Hessian (``k ≤ dense_max`` unknowns per problem: the Hessian
  is built by ``k`` Hessian-vector products batched with ``torch.func.vmap``, then factored by
  Cholesky) or, for larger problems, by truncated conjugate gradients on Hessian-vector
  products (Newton-CG; the graph of ``∇f`` is built once per Newton step and reused by every
  product), with the Eisenstat–Walker forcing term ``min(½, √‖∇f‖)``. With ``reuse > 0`` the
  dense path takes *chord* steps: the Cholesky factor of the last Hessian built in this run is
  kept while a step with it multiplies ‖∇f‖_∞ by at most ``reuse`` (one gradient per step
  instead of ``k`` Hessian-vector products), and the Hessian is rebuilt at the next step once a
  step falls short. Each run starts with a fresh Hessian, so ``run(θ, init)`` depends on its
  arguments only.
- ``"lbfgs"``: limited-memory BFGS with ``memory`` correction pairs, the two-loop recursion and
  a backtracking Armijo line search; pairs with non-positive curvature are skipped.

With ``batch_ndim > 0`` every leading index of ``y`` is an independent problem: Newton systems
are solved per problem, and when ``objective`` returns one value per problem the line search
picks one step per problem (otherwise one step for all).

Stopping criterion: ``‖∇_y f(y, θ)‖_∞ ≤ tol`` (over every coordinate of every problem);
problems that already meet it are not moved further.

Derivatives are taken with ``torch.func`` so that ``optimality`` composes with function
transforms (``torch.func.jvp``, ``grad``, ``vmap``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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

Objective = Callable[[Tensor, Theta], Tensor]

METHODS = ("newton", "lbfgs")
_ARMIJO = 1e-4  # sufficient-decrease constant c₁
_MAX_BACKTRACK = 60  # halvings before the line search is declared failed
_HINT = "f is not convex / not bounded below in y?"


class Smooth:
    """Minimise a smooth, strongly convex ``f(y, θ)`` over ``y`` (Newton or L-BFGS).

    Args:
        objective: ``f(y, θ)`` → scalar (a tensor of per-problem values is summed).
        method: ``"newton"`` (dense Hessian + Cholesky when a problem has at most ``dense_max``
            unknowns, Newton-CG otherwise) or ``"lbfgs"``.
        tol: tolerance on ``‖∇_y f‖_∞`` (the stopping criterion).
        maxiter: iteration cap (Newton or quasi-Newton steps); a
            :class:`~solvers.base.ConvergenceWarning` is raised there.
        memory: number of correction pairs kept by L-BFGS.
        batch_ndim: leading dimensions of ``y`` that index independent problems.
        dense_max: largest number of unknowns per problem for which Newton builds and factors
            the Hessian (``k`` Hessian-vector products per step); above it Newton-CG is used,
            which needs only as many products as CG iterations (about 8 per step on 1000
            digits × 64 features × 10 classes, against 640 for the dense Hessian).
        reuse: dense Newton only: keep the last Hessian factor while each step it gives
            multiplies ``‖∇f‖_∞`` by at most this factor (``0 ≤ reuse < 1``; e.g. 0.1 when a
            Hessian costs much more than a gradient, as on many rows and few features); 0: a
            fresh Hessian at every step (pure Newton).

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last ``run``.
        tol, batch_ndim: as given.

    Raises:
        ValueError: on invalid arguments.
    """

    def __init__(
        self,
        objective: Objective,
        *,
        method: str = "newton",
        tol: float = 1e-10,
        maxiter: int = 200,
        memory: int = 10,
        batch_ndim: int = 0,
        dense_max: int = 200,
        reuse: float = 0.0,
    ):
        if not callable(objective):
            raise TypeError(f"objective must be callable, got {type(objective).__name__}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        check_stopping(tol, maxiter)
        if memory < 1:
            raise ValueError(f"memory must be ≥ 1, got {memory}")
        if batch_ndim < 0:
            raise ValueError(f"batch_ndim must be ≥ 0, got {batch_ndim}")
        if dense_max < 0:
            raise ValueError(f"dense_max must be ≥ 0, got {dense_max}")
        if not 0 <= reuse < 1:
            raise ValueError(f"reuse must be in [0, 1), got {reuse}")
        self.objective = objective
        self.method = method
        self.tol = tol
        self.maxiter = maxiter
        self.memory = memory
        self.batch_ndim = batch_ndim
        self.dense_max = dense_max
        self.reuse = reuse
        self.info: SolveInfo | None = None
        self._last: tuple[Tensor | None, Tensor | None] = (None, None)

    # -- protocol ----------------------------------------------------------------------------

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Minimise ``f(·, θ)`` from ``init``; returns ``y*`` (no graph).

        Raises:
            ValueError: ``init`` is missing, or ``f`` / ``∇f`` is NaN/Inf or malformed at it.
            DivergenceError: non-finite iterates, a Hessian that is not positive definite, or
                a line search that finds no decrease (``f`` not convex / not bounded below).

        Warns:
            ConvergenceWarning: ``maxiter`` reached with ``‖∇f‖_∞ > tol``.
        """
        require_init("Smooth", init)
        if init.ndim < self.batch_ndim:
            raise ValueError(
                f"init has {init.ndim} dimensions but batch_ndim={self.batch_ndim}"
            )
        run = _Run(self, _detach(theta), init.detach().clone())
        y, iterations = run.newton() if self.method == "newton" else run.lbfgs()
        self._last = (y.detach(), run.factor)
        residual = run.residual
        self.info = SolveInfo(iterations, residual, self.tol, residual <= self.tol)
        if not self.info.converged:
            warn_not_converged(
                "Smooth", self.info, "Raise maxiter, loosen tol, or warm-start with init."
            )
        return y.detach()

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """``H(θ, y) = ∇_y f(y, θ)`` (``torch.func.grad``: differentiable in ``y`` and ``θ``)."""
        return torch.func.grad(lambda yy: self.objective(yy, theta).sum())(y)

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        """``∂yH`` is the Hessian: symmetric, no inactive rows, no kinks. At the point the last
        dense Newton run returned, the Cholesky factor of its last Hessian (one step before
        ``y`` in pure Newton, within ``O(‖y − y_j‖)`` of ``∇²f(y)`` when built at an earlier
        iterate ``y_j`` of a chord run) is offered as a preconditioner."""
        last_y, factor = self._last
        if factor is None or last_y is None or not torch.equal(last_y, y):
            return Structure(symmetric=True)

        def preconditioner(r: Tensor) -> Tensor:
            return torch.cholesky_solve(r[..., None], factor)[..., 0]

        return Structure(symmetric=True, preconditioner=preconditioner)


class _Run:
    """State of one ``Smooth.run``: ``y`` in its own shape, linear algebra in ``(m, k)``."""

    def __init__(self, solver: Smooth, theta: Theta, y: Tensor):
        self.s = solver
        self.theta = theta
        self.shape = y.shape
        self.m = int(torch.Size(y.shape[: solver.batch_ndim]).numel())
        self.k = y.numel() // max(self.m, 1)
        self.eps = torch.finfo(y.dtype).eps
        self.y = y
        self.factor: Tensor | None = None  # Cholesky factor of the last dense Newton Hessian
        try:
            values, grad = self._evaluate(y)
        except RuntimeError as err:
            raise ValueError(
                f"objective(init, theta) failed for init of shape {tuple(y.shape)}: {err}"
            ) from err
        if grad.shape != y.shape:
            raise ValueError(f"∇objective has shape {tuple(grad.shape)}, init {tuple(y.shape)}")
        if values.numel() == self.m and self.m > 1:
            self.groups = self.m  # one value per problem: one step per problem
        else:
            self.groups = 1
        if not (torch.isfinite(values).all() and torch.isfinite(grad).all()):
            raise ValueError(
                "objective(init, theta) or its gradient is NaN/Inf: check the data and theta "
                "for NaN/Inf values (and that init lies in the domain of f)"
            )
        self.values = self._group(values)
        self.grad = grad
        self.residual = float(grad.abs().max()) if grad.numel() else 0.0

    # -- evaluations --------------------------------------------------------------------------

    def _f(self, y: Tensor) -> Tensor:
        return self.s.objective(y, self.theta)

    def _evaluate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-problem (or total) values and the gradient of their sum, without a graph."""
        def total(yy: Tensor) -> tuple[Tensor, Tensor]:
            v = self._f(yy)
            return v.sum(), v.detach()

        grad, (_, values) = torch.func.grad_and_value(total, has_aux=True)(y)
        return values.detach(), grad.detach()

    def _group(self, values: Tensor) -> Tensor:
        """Values as ``(groups,)``: one per problem, or their total."""
        if self.groups == 1:
            return values.sum().reshape(1)
        return values.reshape(self.m)

    def _rows(self, per_group: Tensor) -> Tensor:
        """A ``(groups,)`` tensor as ``(m, 1)`` (broadcasts against the ``(m, k)`` layout)."""
        return per_group.reshape(-1, 1).expand(self.m, 1)

    def _per_group(self, rows: Tensor) -> Tensor:
        """Row sums ``(m,)`` reduced to ``(groups,)``."""
        return rows.sum().reshape(1) if self.groups == 1 else rows

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(self.m, self.k)

    def _active(self) -> Tensor:
        """Rows ``(m,)`` whose gradient is still above tolerance."""
        return self._flat(self.grad).abs().amax(1) > self.s.tol

    def _converged(self) -> bool:
        return self.residual <= self.s.tol

    # -- line search ----------------------------------------------------------------------------

    def _line_search(self, d: Tensor, iteration: int) -> Tensor:
        """Backtracking Armijo from step 1 along ``d`` (``(m, k)``, zero on settled rows);
        moves ``self.y`` and returns the step ``s = y_new − y`` in the ``(m, k)`` layout."""
        g = self._flat(self.grad)
        slope = self._per_group((g * d).sum(1))
        y = self._flat(self.y)
        # Round-off of f near the optimum: accept non-increase up to a few ulps of |f|.
        slack = 1e3 * self.eps * (self.values.abs() + 1)
        t = torch.ones_like(self.values)
        for _ in range(_MAX_BACKTRACK):
            trial = (y + self._rows(t) * d).reshape(self.shape)
            values, grad = self._evaluate(trial)
            values = self._group(values)
            ok = values <= self.values + _ARMIJO * t * slope + slack  # NaN fails: halve
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        else:
            raise DivergenceError(
                f"Smooth ({self.s.method}) line search found no decrease of f after "
                f"{_MAX_BACKTRACK} halvings at iteration {iteration} (‖∇f‖_∞ = "
                f"{self.residual:.3e}): {_HINT} (or f is NaN/Inf around the iterate, or tol "
                "is below the round-off of ∇f: loosen tol)"
            )
        if not torch.isfinite(grad).all():
            raise DivergenceError(
                f"Smooth ({self.s.method}): ∇f is NaN/Inf at iteration {iteration} while f is "
                f"finite: {_HINT} (check objective for NaN/Inf-producing operations)"
            )
        step = self._flat(trial) - y
        self.y, self.values, self.grad = trial, values, grad
        self.residual = float(grad.abs().max()) if grad.numel() else 0.0
        return step

    # -- Newton ---------------------------------------------------------------------------------

    def newton(self) -> tuple[Tensor, int]:
        iterations = 0
        chord = False  # whether the next dense step may reuse self.factor
        while not self._converged() and iterations < self.s.maxiter:
            iterations += 1
            active = self._active()
            g = torch.where(active[:, None], self._flat(self.grad), 0.0)
            if self.k > self.s.dense_max:
                self._line_search(self._newton_cg(g, active, iterations), iterations)
                continue
            if not chord or self.factor is None:
                self._line_search(self._newton_dense(g, iterations), iterations)
                chord = self.s.reuse > 0
                continue
            before = self.residual
            d = -torch.cholesky_solve(g[:, :, None], self.factor)[:, :, 0]
            try:
                self._line_search(d, iterations)
            except DivergenceError:  # a stale factor, not a failure of f: rebuild it
                chord = False
                continue
            chord = self.residual <= self.s.reuse * before
        return self.y, iterations

    def _grad_fn(self) -> Callable[[Tensor], Tensor]:
        return torch.func.grad(lambda yy: self._f(yy).sum())

    def _newton_dense(self, g: Tensor, iteration: int) -> Tensor:
        """Solve ``∇²f d = −g`` per problem with the dense Hessian (Cholesky)."""
        _, hvp = torch.func.vjp(self._grad_fn(), self.y)  # ∇²f symmetric: VJP = HVP
        eye = torch.eye(self.k, dtype=g.dtype, device=g.device)
        basis = eye[:, None, :].expand(self.k, self.m, self.k).reshape(self.k, *self.shape)
        chunk = None if self.k <= 128 else 128
        try:
            (columns,) = torch.func.vmap(hvp, chunk_size=chunk)(basis)
        except RuntimeError:  # an op of f without a batching rule: one product per column
            columns = torch.stack([hvp(e)[0] for e in basis])
        hessian = columns.detach().reshape(self.k, self.m, self.k).permute(1, 2, 0)
        hessian = (hessian + hessian.mT) / 2
        factor, info = torch.linalg.cholesky_ex(hessian)
        if bool((info != 0).any()):
            bad = int((info != 0).nonzero()[0])
            eig = torch.linalg.eigvalsh(hessian[bad])
            where = "" if self.m == 1 else f" of batch item {bad}"
            raise DivergenceError(
                f"Smooth (newton): the Hessian of f in y{where} is not positive definite at "
                f"iteration {iteration} (eigenvalues in [{float(eig[0]):.3e}, "
                f"{float(eig[-1]):.3e}]): {_HINT} Smooth needs f strongly convex in y."
            )
        self.factor = factor
        d = -torch.cholesky_solve(g[:, :, None], factor)[:, :, 0]
        if not torch.isfinite(d).all():
            raise DivergenceError(
                f"Smooth (newton): non-finite Newton step at iteration {iteration}: {_HINT}"
            )
        return d

    def _newton_cg(self, g: Tensor, active: Tensor, iteration: int) -> Tensor:
        """Truncated CG on ``∇²f d = −g`` per problem (Hessian-vector products; graph of
        ``∇f`` built once), to relative residual ``min(½, √‖g‖)`` (Eisenstat–Walker)."""
        _, vjp = torch.func.vjp(self._grad_fn(), self.y)

        def hvp(v: Tensor) -> Tensor:
            return self._flat(vjp(v.reshape(self.shape))[0].detach())

        gnorm = g.norm(dim=1)
        threshold = torch.clamp(gnorm.sqrt(), max=0.5) * gnorm
        d = torch.zeros_like(g)
        r = -g
        p = r
        rr = (r * r).sum(1)
        running = active & (rr.sqrt() > threshold)
        for _ in range(min(self.k, 1000)):
            if not bool(running.any()):
                break
            hp = hvp(torch.where(running[:, None], p, 0.0))
            curvature = (p * hp).sum(1)
            tiny = self.eps * p.norm(dim=1) * hp.norm(dim=1)  # round-off level of pᵀHp
            bad = running & (curvature <= -tiny)
            if bool(bad.any()):
                item = int(bad.nonzero()[0])
                where = "" if self.m == 1 else f" of batch item {item}"
                raise DivergenceError(
                    f"Smooth (newton-CG): negative curvature pᵀ∇²f p = "
                    f"{float(curvature[item]):.3e} of f in y{where} at iteration {iteration}: "
                    f"{_HINT} Smooth needs f strongly convex in y."
                )
            flat = running & (curvature <= tiny)
            running = running & ~flat  # zero curvature: keep the direction found so far
            alpha = torch.where(running, rr / torch.where(running, curvature, 1.0), 0.0)
            d = d + alpha[:, None] * p
            r = r - alpha[:, None] * hp
            rr_new = (r * r).sum(1)
            running = running & (rr_new.sqrt() > threshold)
            beta = torch.where(running, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
            p = r + beta[:, None] * p
            rr = rr_new
        d = torch.where(((d * g).sum(1) < 0)[:, None], d, -g)  # no progress: steepest descent
        return torch.where(active[:, None], d, 0.0)

    # -- L-BFGS ---------------------------------------------------------------------------------

    def lbfgs(self) -> tuple[Tensor, int]:
        pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, Δg, ρ) in the (m, k) layout
        gamma = torch.ones(self.m, dtype=self.y.dtype, device=self.y.device)
        iterations = 0
        while not self._converged() and iterations < self.s.maxiter:
            iterations += 1
            active = self._active()
            g = torch.where(active[:, None], self._flat(self.grad), 0.0)
            if pairs:
                d = -self._two_loop(g, pairs, gamma)
                descent = (d * g).sum(1) < 0
                d = torch.where(descent[:, None], d, -gamma[:, None] * g)
            else:  # first step: steepest descent of length at most 1 (∞-norm)
                scale = 1 / g.abs().amax(1).clamp(min=1)
                d = -scale[:, None] * g
            d = torch.where(active[:, None], d, 0.0)
            g_old = self._flat(self.grad)
            s = self._line_search(d, iterations)
            dg = self._flat(self.grad) - g_old
            sy = (s * dg).sum(1)
            scale = s.norm(dim=1) * dg.norm(dim=1)
            bad = active & (sy < -math.sqrt(self.eps) * scale)
            if bool(bad.any()):
                item = int(bad.nonzero()[0])
                where = "" if self.m == 1 else f" of batch item {item}"
                raise DivergenceError(
                    f"Smooth (lbfgs): negative curvature sᵀΔ∇f = {float(sy[item]):.3e} of f in "
                    f"y{where} at iteration {iterations}: {_HINT} Smooth needs f strongly "
                    "convex in y."
                )
            good = active & (sy > self.eps * scale)
            rho = torch.where(good, 1 / torch.where(good, sy, 1.0), 0.0)
            keep = good[:, None]
            pairs.append((torch.where(keep, s, 0.0), torch.where(keep, dg, 0.0), rho))
            if len(pairs) > self.s.memory:
                pairs.pop(0)
            yy = (dg * dg).sum(1)
            gamma = torch.where(good, sy / torch.where(good, yy, 1.0), gamma)
        return self.y, iterations

    @staticmethod
    def _two_loop(g: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]], gamma: Tensor
                  ) -> Tensor:
        """The L-BFGS inverse-Hessian approximation applied to ``g`` (two-loop recursion)."""
        q = g
        alphas = []
        for s, dg, rho in reversed(pairs):
            alpha = rho * (s * q).sum(1)
            q = q - alpha[:, None] * dg
            alphas.append(alpha)
        r = gamma[:, None] * q
        for (s, dg, rho), alpha in zip(pairs, reversed(alphas), strict=True):
            beta = rho * (dg * r).sum(1)
            r = r + (alpha - beta)[:, None] * s
        return r


def _detach(theta: Theta) -> Theta:
    if isinstance(theta, Tensor):
        return theta.detach()
    return tuple(t.detach() for t in theta)
