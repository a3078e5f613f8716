"""Fixed-point iteration ``y = T(y, θ)`` with Picard, Krasnosel'skii–Mann, Anderson and Broyden.

Optimality mapping:

    H(θ, y) = y − T(y, θ),        H(θ, y*) = 0.

``H`` is as smooth as ``T``: autograd returns ``[∂θH ∂yH] = [−∂θT  I − ∂yT]``. The implicit
function theorem gives ``∂y*/∂θ = (I − ∂yT)⁻¹ ∂θT`` when ``I − ∂yT`` is invertible at
``(θ, y*)``, which always holds when ``T(·, θ)`` is a contraction in ``y`` (``‖∂yT‖ < 1``). For a
nonsmooth ``T`` (ReLU, projections) that is an ``L``-contraction, every Clarke Jacobian has norm
``≤ L < 1``, so the nonsmooth implicit function theorem applies to the element autograd
returns whenever it is one of them (the usual case: ``relu'(0) = 0``, projection Jacobians).

Updates (``g(y) = y − T(y, θ)``, ``f_k = T(y_k, θ)``):

- ``"picard"``:   ``y ← T(y, θ)``;
- ``"km"``:       ``y ← (1 − α) y + α T(y, θ)`` with ``α = damping`` (Krasnosel'skii–Mann);
- ``"anderson"``: ``y ← f_k − ΔF γ`` with ``γ = argmin ‖g_k − ΔG γ‖² + λ‖γ‖²`` over the last
  ``memory`` differences ``ΔG``, ``ΔF`` of residuals and map values (type-II Anderson);
- ``"broyden"``:  ``y ← y − H_k g(y)`` with ``H_k ≈ (I − ∂yT)⁻¹`` from ``H_0 = I`` and the last
  ``memory`` good-Broyden rank-one updates; the memory of an item is reset whenever its
  residual did not decrease (safeguard).

Stopping criterion, per problem ``i`` of the batch (the ``batch_ndim`` leading dimensions):
``‖y_i − T(y_i, θ)‖∞ / (1 + ‖y_i‖∞) ≤ tol``; converged problems are frozen while the others go
on. A problem still above ``tol`` at ``maxiter`` returns its last iterate, or with
``keep_best=True`` the iterate of lowest residual ``‖y_i − T(y_i, θ)‖∞`` it visited (Anderson
and Broyden are not monotone: their last iterate can be worse than an earlier one; torchdeq
returns the best one), and ``info.residual`` is that iterate's. Divergence
(non-finite values, or ``‖y_i − T(y_i, θ)‖∞`` growing past ``1e6×`` its initial value and past
1) raises :class:`~solvers.base.DivergenceError` instead of returning NaNs.

Picard and KM converge for contractions (KM also for nonexpansive maps with a fixed point).
Anderson and Broyden are secant methods: they often converge faster, and may also find a fixed
point of a map that is not a contraction (e.g. ``y = 2y + 1`` → ``y* = −1``); such a ``y*`` is a
genuine solution, and its implicit derivative is valid as long as ``I − ∂yT`` is invertible
there (the engine checks this when differentiating).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn

import torch
from torch import Tensor

from solvers.base import (
    DivergenceError,
    SolveInfo,
    Structure,
    Theta,
    require_init,
    warn_not_converged,
)

Map = Callable[[Tensor, Theta], Tensor]

METHODS = ("picard", "km", "anderson", "broyden")
_GROWTH = 1e6  # residual growth (over the initial residual) treated as divergence


class FixedPoint:
    """Find ``y*`` with ``y* = T(y*, θ)``.

    Args:
        T: the map ``T(y, θ)`` → tensor shaped like ``y`` (a function or an ``nn.Module``-based
            callable); with ``batch_ndim > 0`` it must treat the leading dimensions as
            independent problems.
        method: ``"picard"``, ``"km"``, ``"anderson"`` or ``"broyden"`` (see the module doc).
        tol: tolerance on ``max_i ‖y_i − T(y_i)‖∞ / (1 + ‖y_i‖∞)``.
        maxiter: iteration cap; a :class:`~solvers.base.ConvergenceWarning` is raised there.
        damping: the Krasnosel'skii–Mann weight ``α ∈ (0, 1]`` of ``T(y)`` (``"km"`` only;
            ``α = 1`` is Picard).
        memory: number of past differences kept by Anderson and of rank-one updates kept by
            Broyden (``≥ 1``).
        regularization: Tikhonov weight of Anderson's least squares, relative to the trace of
            its Gram matrix (floored at ``10·eps`` of the dtype).
        batch_ndim: leading dimensions of ``y`` that index independent problems.
        keep_best: a problem not converged at ``maxiter`` returns the iterate of lowest
            ``‖y − T(y, θ)‖∞`` it visited instead of its last (three batched operations per
            iteration). Off by default: on the digits DEQ of ``benchmarks/deq.py`` it made
            training take more forward iterations (30.5 instead of ~25 per batch, seed 0) at no
            better test accuracy.

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last ``run``.

    Raises:
        ValueError: an argument out of range (the message names it).
    """

    def __init__(
        self,
        T: Map,
        *,
        method: str = "anderson",
        tol: float = 1e-10,
        maxiter: int = 1000,
        damping: float = 0.5,
        memory: int = 5,
        regularization: float = 1e-10,
        batch_ndim: int = 0,
        keep_best: bool = False,
    ):
        if not callable(T):
            raise ValueError(f"T must be callable T(y, theta), got {type(T).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite number > 0, got {tol}")
        if not isinstance(maxiter, int) or maxiter < 1:
            raise ValueError(f"maxiter must be an integer ≥ 1, got {maxiter}")
        if not (isinstance(damping, (int, float)) and 0 < damping <= 1):
            raise ValueError(f"damping must be in (0, 1], got {damping}")
        if not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be an integer ≥ 1, got {memory}")
        if not (isinstance(regularization, (int, float)) and regularization >= 0
                and math.isfinite(regularization)):
            raise ValueError(f"regularization must be a finite number ≥ 0, got {regularization}")
        if not isinstance(batch_ndim, int) or batch_ndim < 0:
            raise ValueError(f"batch_ndim must be an integer ≥ 0, got {batch_ndim}")
        self.T = T
        self.method = method
        self.tol = float(tol)
        self.maxiter = maxiter
        self.damping = float(damping)
        self.memory = memory
        self.regularization = float(regularization)
        self.batch_ndim = batch_ndim
        self.keep_best = bool(keep_best)
        self.info: SolveInfo | None = None

    # -- protocol ----------------------------------------------------------------------------

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Iterate from ``init`` until ``y = T(y, θ)``; returns ``y*`` (no graph). With
        ``keep_best``, a problem of the batch that did not converge within ``maxiter`` returns
        its lowest-residual iterate instead of its last.

        Raises:
            ValueError / TypeError: bad ``init``, ``theta`` or ``T`` output (names the culprit).
            DivergenceError: non-finite values or a residual growing without bound.

        Warns:
            ConvergenceWarning: ``maxiter`` reached with the residual above ``tol``.
        """
        y0 = self._check_init(init)
        _check_theta(theta)
        with torch.no_grad():
            y = self._run(theta, y0)
        assert self.info is not None
        if not self.info.converged:
            faster = " or try method='anderson'" if self.method in ("picard", "km") else ""
            warn_not_converged(
                f"FixedPoint(method={self.method!r})", self.info,
                f"Raise maxiter, loosen tol (float32 reaches ~1e-6), warm-start with init{faster}."
            )
        return y

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """``H(θ, y) = y − T(y, θ)`` (differentiable in ``y`` and ``θ``)."""
        return y - self.T(y, theta)

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        """A smooth mapping (no kinks, no inactive rows, ``∂yH`` not assumed symmetric)."""
        return Structure()

    # -- the iteration -----------------------------------------------------------------------

    def _run(self, theta: Theta, y0: Tensor) -> Tensor:
        shape = y0.shape
        nb = math.prod(shape[: self.batch_ndim])
        if y0.numel() == 0:  # nothing to solve
            self.info = SolveInfo(0, 0.0, self.tol, True)
            return y0.clone()

        def T(y: Tensor) -> Tensor:  # flat (nb, n) in and out
            f = self.T(y.reshape(shape), theta)
            if not isinstance(f, Tensor) or f.shape != shape:
                got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"T(y, theta) must return a tensor shaped like y "
                                 f"{tuple(shape)}, got {got}")
            if f.dtype != y.dtype:
                raise ValueError(f"T(y, theta) returned {f.dtype} for y of {y.dtype}: build T's "
                                 "parameters in the dtype of init")
            return f.reshape(nb, -1)

        y = y0.reshape(nb, -1).clone()
        try:
            f = T(y)
        except RuntimeError as err:  # e.g. T's parameters in another dtype or device than init
            raise ValueError(
                f"T(init, theta) failed for init of shape {tuple(shape)}, {y.dtype} on "
                f"{y.device}: {err}"
            ) from err
        if not torch.isfinite(f).all():
            self._diverged(0, "T(y, θ) is non-finite", math.inf)
        g = y - f
        res0 = _abs_residual(g)
        # One test per iteration covers both failures: ‖y − T(y)‖∞ is NaN or inf as soon as
        # y or T(y) is non-finite, and it must stay below max(_GROWTH · its initial value, 1).
        limit = torch.clamp(_GROWTH * res0, min=1.0)
        rel = res0 / (1 + _abs_residual(y))
        active = rel > self.tol
        state = _State(self.method, self.memory, y, self.regularization)
        iterations = 0
        n_active = int(active.sum())  # one host synchronisation per iteration
        best_y, best_res = y, res0  # per problem, the iterate of lowest ‖y − T(y)‖∞ so far
        while iterations < self.maxiter and n_active:
            iterations += 1
            step = self._step(state, y, f, g)
            # frozen (converged) problems keep their iterate; no masking pass while none is
            y_new = step if n_active == nb else torch.where(active[:, None], step, y)
            f_new = T(y_new)
            g_new = y_new - f_new
            res = _abs_residual(g_new)
            if not bool((res <= limit).all()):
                self._explain_divergence(iterations, y_new, f_new, res, res0, limit)
            state.update(active, y, f, g, y_new, f_new, g_new)
            y, f, g = y_new, f_new, g_new
            rel = res / (1 + _abs_residual(y))
            if self.keep_best:
                better = res < best_res
                best_res = torch.where(better, res, best_res)
                best_y = torch.where(better[:, None], y, best_y)
            active = active & (rel > self.tol)
            n_active = int(active.sum())
        if n_active and self.keep_best:  # maxiter: the unconverged return their best iterate
            y = torch.where(active[:, None], best_y, y)
            rel = torch.where(active, best_res / (1 + _abs_residual(y)), rel)
        residual = float(rel.max())
        self.info = SolveInfo(iterations, residual, self.tol, residual <= self.tol)
        return y.reshape(shape)

    def _step(self, state: _State, y: Tensor, f: Tensor, g: Tensor) -> Tensor:
        if self.method == "picard":
            return f
        if self.method == "km":
            return (1 - self.damping) * y + self.damping * f
        if self.method == "anderson":
            return state.anderson_step(f)
        return y - state.broyden_apply(g)

    def _explain_divergence(self, iteration: int, y: Tensor, f: Tensor, res: Tensor,
                            res0: Tensor, limit: Tensor) -> NoReturn:
        """Raise the DivergenceError that names what failed at ``iteration``."""
        if not torch.isfinite(y).all():
            self._diverged(iteration, "the iterate is non-finite", math.inf)
        if not torch.isfinite(f).all():
            self._diverged(iteration, "T(y, θ) is non-finite", math.inf)
        blown = ~(res <= limit)
        i = int(torch.argmax(torch.where(blown, res, torch.zeros_like(res))))
        item = f" (batch item {i})" if res.numel() > 1 else ""
        self._diverged(iteration, f"‖y − T(y)‖∞ = {float(res[i]):.3e}{item} grew from "
                       f"{float(res0[i]):.3e}", float(res[i]))

    def _diverged(self, iteration: int, what: str, residual: float) -> NoReturn:
        self.info = SolveInfo(iteration, residual, self.tol, False)
        raise DivergenceError(
            f"FixedPoint(method={self.method!r}) diverged at iteration {iteration}: {what}. "
            "The map T(·, θ) may not be a contraction in y: use method='km' with a smaller "
            "damping, take a smaller step inside T, or check T (and θ) for errors."
        )

    # -- validation --------------------------------------------------------------------------

    def _check_init(self, init: Tensor | None) -> Tensor:
        require_init("FixedPoint", init)
        if not isinstance(init, Tensor):
            raise TypeError(f"init must be a Tensor, got {type(init).__name__}")
        if not init.is_floating_point():
            raise TypeError(f"init must be a floating-point Tensor, got dtype {init.dtype}")
        if init.ndim < self.batch_ndim:
            raise ValueError(f"init has {init.ndim} dimensions, fewer than batch_ndim="
                             f"{self.batch_ndim}")
        if not torch.isfinite(init).all():
            raise ValueError("init contains NaN or Inf")
        return init.detach()


class _State:
    """Per-method memory: Anderson's last differences, Broyden's rank-one updates.

    Anderson keeps ``ΔF = [f_{i+1} − f_i]`` and ``ΔG = [g_{i+1} − g_i]`` of the last ``memory``
    steps in preallocated ring buffers (the oldest slot is overwritten), so a step costs a
    fixed number of batched operations and no re-stacking. The current residual ``g`` is kept
    in row 0 of the ``ΔG`` buffer (``(nb, 1 + memory, n)``), so one batched product gives
    both the Gram matrix ``ΔGᵀΔG`` and the right-hand side ``ΔGᵀg`` of the least squares.
    """

    def __init__(self, method: str, memory: int, y: Tensor, regularization: float):
        self.method = method
        self.memory = memory
        self.regularization = regularization
        self.filled = 0  # Anderson: slots of the ring buffers holding a difference
        if method == "anderson":
            nb, n = y.shape
            self.df = y.new_zeros(nb, memory, n)
            self.gdg = y.new_zeros(nb, 1 + memory, n)  # [g; ΔG]
            finfo = torch.finfo(y.dtype)
            self.shift = max(regularization, 10 * finfo.eps)
            self.tiny = finfo.tiny
        self.u: Tensor | None = None  # Broyden: H = I + Σ_j u_j v_jᵀ, shapes (nb, memory, n)
        self.v: Tensor | None = None
        self.slot = 0

    def update(self, active: Tensor, y: Tensor, f: Tensor, g: Tensor, y_new: Tensor,
               f_new: Tensor, g_new: Tensor) -> None:
        """Record the step ``y → y_new`` (``f = T(y)``, ``g = y − f``, and the same at
        ``y_new``)."""
        if self.method == "anderson":
            torch.sub(f_new, f, out=self.df[:, self.slot])
            torch.sub(g_new, g, out=self.gdg[:, 1 + self.slot])
            self.gdg[:, 0].copy_(g_new)
            self.filled = min(self.filled + 1, self.memory)
            self.slot = (self.slot + 1) % self.memory
        elif self.method == "broyden":
            self._broyden_update(active, y_new - y, g_new - g, g, g_new)

    def anderson_step(self, f: Tensor) -> Tensor:
        """``f − ΔF γ`` with ``γ = argmin ‖g − ΔG γ‖² + λ‖γ‖²`` (one batched product for the
        ``filled × filled`` normal equations and their right-hand side, one batched solve);
        ``f`` itself before the first step. ``g``, the residual at ``f``'s point, is the one
        kept in row 0 of the buffer since the last :meth:`update`."""
        m = self.filled
        if not m:
            return f
        both = torch.bmm(self.gdg[:, : m + 1], self.gdg[:, 1 : m + 1].transpose(1, 2))
        gram, rhs = both[:, 1:], both[:, :1].transpose(1, 2)  # (nb, m, m), (nb, m, 1)
        diagonal = gram.diagonal(dim1=1, dim2=2)
        lam = diagonal.sum(-1).mul_(self.shift).add_(self.tiny)
        diagonal.add_(lam[:, None])
        gamma = torch.linalg.solve_ex(gram, rhs)[0]  # (nb, m, 1); SPD after the shift
        return torch.baddbmm(f[:, None, :], gamma.transpose(1, 2), self.df[:, :m],
                             alpha=-1)[:, 0]

    def broyden_apply(self, x: Tensor, transpose: bool = False) -> Tensor:
        """``H x`` (or ``Hᵀ x``) for every problem of the batch; ``x`` is ``(nb, n)``."""
        if self.u is None or self.v is None:
            return x
        a, b = (self.v, self.u) if transpose else (self.u, self.v)
        return x + (a * (b @ x[:, :, None])).sum(1)

    def _broyden_update(self, active: Tensor, s: Tensor, dg: Tensor, g: Tensor,
                        g_new: Tensor) -> None:
        nb, n = s.shape
        if self.u is None or self.v is None:
            self.u = s.new_zeros(nb, self.memory, n)
            self.v = s.new_zeros(nb, self.memory, n)
        # safeguard: where the residual did not decrease, forget the model (restart at H = I)
        worse = g_new.norm(dim=1) >= g.norm(dim=1)
        h_dg = self.broyden_apply(dg)
        denom = (s * h_dg).sum(1)
        ok = active & ~worse & (denom.abs() > 1e-12 * s.norm(dim=1) * h_dg.norm(dim=1))
        safe = torch.where(ok, denom, torch.ones_like(denom))
        u = torch.where(ok[:, None], (s - h_dg) / safe[:, None], torch.zeros_like(s))
        v = torch.where(ok[:, None], self.broyden_apply(s, transpose=True), torch.zeros_like(s))
        reset = (active & worse)[:, None, None]
        self.u = torch.where(reset, torch.zeros_like(self.u), self.u)
        self.v = torch.where(reset, torch.zeros_like(self.v), self.v)
        # write into the oldest slot (a circular buffer), leaving frozen/reset items untouched
        keep = ok[:, None]
        self.u[:, self.slot] = torch.where(keep, u, self.u[:, self.slot])
        self.v[:, self.slot] = torch.where(keep, v, self.v[:, self.slot])
        self.slot = (self.slot + 1) % self.memory


def _abs_residual(x: Tensor) -> Tensor:
    """``‖x_i‖∞`` per problem (``x`` flat ``(nb, n)``; ``n = 0`` gives zeros)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    return x.abs().amax(dim=1)


def _check_theta(theta: Theta) -> None:
    thetas = theta if isinstance(theta, tuple) else (theta,)
    for i, t in enumerate(thetas):
        name = "theta" if not isinstance(theta, tuple) else f"theta[{i}]"
        if isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf")
