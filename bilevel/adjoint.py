"""How to differentiate: the implicit adjoint and the report of its last use.

Reverse mode solves ``Bᵀu = −v`` and returns ``Aᵀu``; forward mode solves ``B ẏ = −A θ̇``, with
``[A B] = [∂θH ∂yH]`` at ``(θ, y*)``.

**Support restriction.** When the solver reports *inactive* coordinates ``I`` (rows of ``B`` that
are unit rows ``e_iᵀ``, e.g. where the prox Jacobian vanishes), with ``S`` the rest,

    reverse:  B_SSᵀ u_S = −v_S,            u_I = −v_I − (Bᵀ[u_S; 0])_I
    forward:  B_SS ẏ_S = r_S − (B[0; r_I])_S,   ẏ_I = r_I        (r = −A θ̇)

so only the ``|S|``-dimensional system is solved. This is exact, not an approximation, and holds
for any mapping with unit rows, not only the Lasso.

**Linear solvers.** ``"lu"``, ``"cholesky"``, ``"lstsq"`` materialise ``B_SS`` (one batched VJP
per active coordinate) and check its conditioning; ``"cg"``, ``"minres"``, ``"gmres"``,
``"bicgstab"``, ``"neumann"`` are matrix-free. ``"auto"`` takes preconditioned CG when the
solver offers a preconditioner ``P ≈ B⁻¹`` of a symmetric ``B`` (``Structure.preconditioner``,
e.g. the factor of the last Newton Hessian: one or two products with ``B`` then replace the ``k``
needed to build it); else LU when the active set is small (``≤ dense_max`` coordinates) — exact,
with a singularity check — else CG when the solver says ``B_SS`` is symmetric, else GMRES.

**Iterative refinement.** When the solver hands the engine a solution of its own
(``solve_adjoint``: e.g. a closed form from its factorisations) or a preconditioner ``P ≈ B⁻¹``
of a symmetric ``B`` (so ``P ≈ B⁻ᵀ`` too), ``"auto"`` starts from ``u₀`` (that solution, or
``P(−v)``) and refines ``u ← u + P r`` with ``r = −v − Bᵀu``. Each step is *one* VJP
``[A B]ᵀδ`` of the linearisation: by linearity it updates the hypergradient ``Aᵀu`` and the
residual ``r`` together, so an exact guess costs exactly the one VJP any method needs for
``Aᵀu``, its residual check included (CG would spend one product on the step, one on its final
residual, one more for ``Aᵀu``). When the residual stops contracting fast enough, the
remaining correction ``Bᵀe = r`` goes to the solvers below.

**Singularity.** Dense solvers compute the reciprocal condition number of ``B_SS`` and raise
:class:`~bilevel.errors.SingularJacobianError` below ``rcond_min``. Matrix-free solvers can only
see a singular ``B_SS`` when the right-hand side is not in its range (the solve then misses its
tolerance, which also raises); on a consistent singular system they return one solution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bilevel.errors import AdjointFallbackWarning, SingularJacobianError
from bilevel.linalg import ITERATIVE, LinearSolveInfo, dense_solve, reciprocal_condition
from bilevel.linalg.base import MatVec, make_info, relative_residual, row_norm
from bilevel.linearization import Linearization
from solvers.base import SolveInfo

LINEAR_SOLVERS = ("auto", "lu", "cholesky", "lstsq", *ITERATIVE)
_REFINE_PRODUCTS = 4  # most VJPs iterative refinement may spend before handing over
_SAFETY = 100.0  # margin of the extrapolated residual that lets the last step skip its check


@dataclass
class ImplicitReport:
    """What the last implicit solve and its derivative did.

    Attributes:
        inner: the inner solver's :class:`~solvers.base.SolveInfo` (None if it gives none).
        n_kinks: coordinates within ``kink_tol`` of a kink of the optimality mapping.
        restricted_size: unknowns of the adjoint system after the support restriction.
        full_size: unknowns before the restriction.
        linear_solver: the linear solver actually used (after ``"auto"`` resolved;
            ``"refinement"`` when iterative refinement from the solver's own solution or
            preconditioner met the tolerance, see :meth:`ImplicitAdjoint.refined`).
        linear: iterations and residual of the last adjoint / tangent linear solve (for
            ``"refinement"``: the VJPs it took, the θ-part of the hypergradient included).
        rcond: smallest reciprocal condition number of ``B_SS`` over the batch (dense solvers).
    """

    inner: SolveInfo | None = None
    n_kinks: int = 0
    restricted_size: int = 0
    full_size: int = 0
    linear_solver: str = ""
    linear: LinearSolveInfo | None = None
    rcond: float | None = None


@dataclass
class ImplicitAdjoint:
    """Differentiate ``y*(θ)`` by the implicit function theorem.

    Args:
        linear_solver: one of ``LINEAR_SOLVERS``.
        tol: relative residual of the adjoint linear solve (default ``max(1e-10, 100·eps)``).
        maxiter: iteration cap of matrix-free solvers (default: the solver's own).
        ridge: solve with ``B + ridge·I`` instead of ``B`` (a fallback for singular systems;
            warns with :class:`AdjointFallbackWarning`).
        restrict: use the solver's inactive-set hint to solve on the active set only.
        kink_tol: distance to a kink below which a coordinate counts as kinked (default: 10×
            the inner solver's tolerance).
        dense_max: largest active set for which ``"auto"`` materialises ``B_SS``.
        rcond_min: reciprocal condition number below which ``B_SS`` counts as singular
            (default ``k·eps``).

    Attributes:
        report: :class:`ImplicitReport` of the last solve this adjoint served.
    """

    linear_solver: str = "auto"
    tol: float | None = None
    maxiter: int | None = None
    ridge: float = 0.0
    restrict: bool = True
    kink_tol: float | None = None
    dense_max: int = 256
    rcond_min: float | None = None
    report: ImplicitReport = field(default_factory=ImplicitReport, repr=False)

    def __post_init__(self) -> None:
        if self.linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"unknown linear_solver {self.linear_solver!r}; choose one of {LINEAR_SOLVERS}"
            )
        if self.ridge < 0 or not math.isfinite(self.ridge):
            raise ValueError(f"ridge must be a finite number ≥ 0, got {self.ridge}")

    def kink_tolerance(self, solver: object, dtype: torch.dtype) -> float:
        """``kink_tol``, defaulting to 10× the solver's ``tol`` (or ``√eps`` without one)."""
        if self.kink_tol is not None:
            return self.kink_tol
        tol = getattr(solver, "tol", None)
        return 10 * tol if tol else math.sqrt(torch.finfo(dtype).eps)

    # -- the two modes -------------------------------------------------------------------------

    def reverse(self, lin: Linearization, v: Tensor, inactive: Tensor | None,
                symmetric: bool, preconditioner: MatVec | None = None,
                tol: float | None = None) -> Tensor:
        """Return ``u`` (``(m, k)``) solving ``Bᵀu = −v`` (``v`` in the ``(m, k)`` layout);
        ``preconditioner`` ``≈ B⁻¹`` is the solver's hint (``Structure.preconditioner``);
        ``tol`` overrides the adjoint's own relative tolerance."""
        active = self._active(lin, inactive)
        rhs = -v if active is None else torch.where(active, -v, torch.zeros_like(v))
        u = self._solve(lin, rhs, active, symmetric, transpose=True,
                        preconditioner=preconditioner, tol=tol)
        if active is not None:
            u = u + torch.where(active, torch.zeros_like(v), -v - lin.rmatvec_y(u))
        return u

    def forward(self, lin: Linearization, r: Tensor, inactive: Tensor | None,
                symmetric: bool, preconditioner: MatVec | None = None) -> Tensor:
        """Return ``ẏ`` (``(m, k)``) solving ``B ẏ = r``."""
        active = self._active(lin, inactive)
        if active is None:
            return self._solve(lin, r, None, symmetric, transpose=False,
                               preconditioner=preconditioner)
        r_inactive = torch.where(active, torch.zeros_like(r), r)
        rhs = torch.where(active, r - lin.matvec(r_inactive), torch.zeros_like(r))
        return self._solve(lin, rhs, active, symmetric, transpose=False) + r_inactive

    def refined(self, lin: Linearization, v: Tensor, u: Tensor | None,
                preconditioner: MatVec | None, inactive: Tensor | None = None,
                symmetric: bool = True) -> tuple[Tensor, ...]:
        """``Aᵀu`` (one entry per θ) for the ``u`` solving ``Bᵀu = −v`` (``(m, k)`` layout), by
        iterative refinement from the guess ``u`` (default ``P(−v)``) with ``P ≈ B⁻ᵀ``
        (``preconditioner``; ``None``: the guess is only checked).

        Step ``j`` costs one VJP ``[A B]ᵀδ_j`` (:meth:`Linearization.rmatvec`), with
        ``δ₀ = u`` and ``δ_{j+1} = P r_{j+1}``; by linearity ``r_{j+1} = r_j − Bᵀδ_j``
        (``r₀ = −v``) is the residual of ``u_{j+1} = Σδ`` and ``Aᵀu_{j+1} = ΣAᵀδ``. It stops
        once every row meets ``‖r_i‖ ≤ tol·‖v_i‖``, or when the residual the next step leaves,
        extrapolated at the observed contraction ``ρ = ‖r_{j+1}‖/‖r_j‖`` (max over rows,
        relative to tol), is 100× below tol: that last step then only needs ``Aᵀδ`` (a VJP
        that skips the ``Bᵀδ`` branch, e.g. the Hessian-vector product of a smooth solver)
        and the report gives the extrapolated residual. When the observed contraction
        ``ρ = ‖r_{j+1}‖/‖r_j‖`` cannot reach ``tol`` within the step budget (a stale factor, a
        wrong guess), the rest, ``Bᵀe = r``, is solved by :meth:`reverse` (with ``inactive``,
        ``symmetric``, ``preconditioner``) to the tolerance that keeps ``‖−v − Bᵀ(u + e)‖ ≤
        tol·‖v‖``, and ``Aᵀe`` is added. Only when :attr:`takes_solver_solutions`."""
        tol, tiny = self._tol(v), torch.finfo(v.dtype).tiny
        v_norm = row_norm(v)
        threshold = tol * v_norm
        delta = u if u is not None else (
            preconditioner(-v) if preconditioner is not None else None)
        grads: tuple[Tensor, ...] | None = None
        r, previous, products = -v, 1.0 / tol, 0  # ‖r₀‖ = ‖v‖ = threshold / tol
        while delta is not None and delta.shape == v.shape:
            Bt_delta, At_delta = lin.rmatvec(delta)
            products += 1
            r = r - Bt_delta
            grads = At_delta if grads is None else _add(grads, At_delta)
            r_norm = row_norm(r)
            excess = float((r_norm / threshold.clamp_min(tiny)).max())
            if excess <= 1.0:  # every row within tol (rows with v_i = 0 need r_i = 0)
                relative = torch.where(v_norm > 0, r_norm / v_norm.clamp_min(tiny), r_norm)
                self._report_refinement(lin, products, relative, tol)
                return grads
            rho = excess / previous
            previous = excess
            if preconditioner is None or not math.isfinite(excess):
                break
            delta = preconditioner(r)
            if _SAFETY * rho * excess <= 1.0 and (u is None or products > 1):  # ρ of a P-step
                # the step δ = P r leaves, at the contraction just observed, a residual 100×
                # below tol: only its θ-part is needed (a VJP that skips the Bᵀδ branch)
                grads = _add(grads, lin.rmatvec_theta(delta))
                estimate = torch.full_like(v_norm, rho * excess * tol)
                self._report_refinement(lin, products + 1, estimate, tol)
                return grads
            needed = math.log(excess) / -math.log(rho) if 0 < rho < 1 else math.inf
            if products + needed > _REFINE_PRODUCTS:
                break
        if grads is None or not math.isfinite(previous):  # no usable guess, or one with
            # NaN/Inf: solve from scratch
            return lin.rmatvec_theta(self.reverse(lin, v, inactive, symmetric, preconditioner))
        scale = float((threshold / row_norm(r).clamp_min(tiny)).min())
        e = self.reverse(lin, -r, inactive, symmetric, preconditioner,
                         tol=max(min(scale, 1.0), 10 * torch.finfo(v.dtype).eps))
        return _add(grads, lin.rmatvec_theta(e))

    def _report_refinement(self, lin: Linearization, products: int, residual: Tensor,
                           tol: float) -> None:
        """Record a refinement that met ``tol`` after ``products`` VJPs (no restriction)."""
        self.report.full_size = self.report.restricted_size = lin.m * lin.k
        self.report.linear_solver, self.report.rcond = "refinement", None
        self.report.linear = make_info("refinement", products, residual, tol)

    @property
    def takes_solver_solutions(self) -> bool:
        """Whether :meth:`checked` may accept a solution the solver computed itself: only
        under ``linear_solver="auto"`` without ridge (an explicit choice wins)."""
        return self.linear_solver == "auto" and self.ridge == 0

    def checked(self, lin: Linearization, x: Tensor, rhs: Tensor, transpose: bool
                ) -> Tensor | None:
        """Accept a solution the inner solver computed itself (``solve_adjoint`` /
        ``solve_tangent``: e.g. from the factorisations of its last run) when its true
        relative residual ``‖rhs − Bᵀx‖/‖rhs‖`` (``B x`` in forward mode) meets ``tol``, row by
        row; else ``None`` and the engine solves the system itself. Costs one product with
        ``B``. Only when :attr:`takes_solver_solutions`."""
        if not self.takes_solver_solutions or x.shape != rhs.shape:
            return None
        product = lin.rmatvec_y if transpose else lin.matvec
        tol = self._tol(rhs)
        info = make_info("solver", 0, relative_residual(product, x, rhs), tol)
        if not info.converged:
            return None
        self.report.full_size = self.report.restricted_size = lin.m * lin.k
        self.report.linear_solver, self.report.linear, self.report.rcond = "solver", info, None
        return x

    # -- internals -----------------------------------------------------------------------------

    def _active(self, lin: Linearization, inactive: Tensor | None) -> Tensor | None:
        self.report.full_size = lin.m * lin.k
        if not self.restrict or inactive is None:
            self.report.restricted_size = lin.m * lin.k
            return None
        active = ~lin.flat(inactive)
        self.report.restricted_size = int(active.sum())
        return active

    def _resolve(self, lin: Linearization, active: Tensor | None, symmetric: bool,
                 preconditioned: bool) -> str:
        if self.linear_solver != "auto":
            return self.linear_solver
        if preconditioned and symmetric and active is None and self.ridge == 0:
            return "cg"  # a good preconditioner: one or two products beat building B
        n_columns = lin.k if active is None else int(active.any(0).sum())
        if n_columns <= self.dense_max:
            return "lu"
        return "cg" if symmetric else "gmres"

    def _solve(self, lin: Linearization, rhs: Tensor, active: Tensor | None, symmetric: bool,
               transpose: bool, preconditioner: MatVec | None = None,
               tol: float | None = None) -> Tensor:
        method = self._resolve(lin, active, symmetric, preconditioner is not None)
        self.report.linear_solver = method
        if self.ridge > 0:
            warnings.warn(
                f"adjoint solved with B + {self.ridge:g}·I (ridge fallback): the derivative is "
                "that of a regularised system",
                AdjointFallbackWarning,
                stacklevel=4,
            )
        if method in ITERATIVE:
            use = preconditioner if method == "cg" and symmetric and active is None else None
            return self._solve_iterative(method, lin, rhs, active, transpose, use, tol)
        return self._solve_dense(method, lin, rhs, active, transpose, tol)

    def _solve_iterative(self, method: str, lin: Linearization, rhs: Tensor,
                         active: Tensor | None, transpose: bool,
                         preconditioner: MatVec | None = None,
                         tol: float | None = None) -> Tensor:
        product: Callable[[Tensor], Tensor] = lin.rmatvec_y if transpose else lin.matvec

        def operator(x: Tensor) -> Tensor:
            if active is not None:
                x = torch.where(active, x, torch.zeros_like(x))
            out = product(x)
            if self.ridge:
                out = out + self.ridge * x
            return out if active is None else torch.where(active, out, torch.zeros_like(out))

        tol = self._tol(rhs) if tol is None else tol
        kwargs: dict = {} if self.maxiter is None else {"maxiter": self.maxiter}
        if preconditioner is not None:
            kwargs["preconditioner"] = preconditioner
        x, info = ITERATIVE[method](operator, rhs, tol=tol, **kwargs)
        self.report.linear = info
        self.report.rcond = None
        if not info.converged:
            raise SingularJacobianError(
                f"the adjoint linear solve ({method}) stopped after {info.iterations} iterations "
                f"at relative residual {info.residual:.2e} > tol {tol:.1e}: ∂yH is singular or "
                "ill-conditioned on the active set (duplicated or collinear active features of a "
                "sparse model? a map that does not contract at its fixed point?). "
                "Fix the cause, raise ImplicitAdjoint(maxiter=...), or opt into a fallback: "
                "ImplicitAdjoint(ridge=1e-8) or ImplicitAdjoint(linear_solver='lstsq')."
            )
        return x

    def _solve_dense(self, method: str, lin: Linearization, rhs: Tensor,
                     active: Tensor | None, transpose: bool, tol: float | None = None
                     ) -> Tensor:
        if active is None:
            index = torch.arange(lin.k, device=rhs.device)
            keep = None
        else:
            index = active.any(0).nonzero().flatten()
            keep = active[:, index]
        if index.numel() == 0:  # nothing active: the restricted system is empty
            self.report.linear = LinearSolveInfo(method, 0, 0.0, True)
            return torch.zeros_like(rhs)
        matrix = lin.rows_y(index)
        if transpose:
            matrix = matrix.transpose(-1, -2)
        eye = torch.eye(index.numel(), dtype=matrix.dtype, device=matrix.device)
        if keep is not None:  # decouple the coordinates inactive for one problem but not another
            pair = keep[:, :, None] & keep[:, None, :]
            matrix = torch.where(pair, matrix, eye.expand_as(matrix))
        if self.ridge > 0:
            matrix = matrix + self.ridge * eye
        rcond = reciprocal_condition(matrix)
        rcond_min = self.rcond_min
        if rcond_min is None:
            rcond_min = max(index.numel(), 1) * torch.finfo(matrix.dtype).eps
        self.report.rcond = float(rcond.min()) if rcond.numel() else None
        singular = (rcond < rcond_min).nonzero().flatten().tolist()
        if singular and method != "lstsq":
            items = "" if lin.m == 1 else f" for batch items {singular[:10]}"
            raise SingularJacobianError(
                f"∂yH is singular on the active set{items} (reciprocal condition "
                f"{float(rcond.min()):.1e} < {rcond_min:.1e}, {index.numel()} active coordinates)"
                ": duplicated or collinear active features of a sparse model, or a map that does "
                "not contract at its fixed point? Remove the cause, or opt into a fallback: "
                "ImplicitAdjoint(ridge=1e-8) or ImplicitAdjoint(linear_solver='lstsq')."
            )
        if singular:
            warnings.warn(
                f"∂yH is singular on the active set (reciprocal condition {float(rcond.min()):.1e})"
                ": returning the minimum-norm least-squares adjoint",
                AdjointFallbackWarning,
                stacklevel=4,
            )
        x_small, info = dense_solve(matrix, rhs[:, index], method=method,
                                     tol=self._tol(rhs) if tol is None else tol)
        self.report.linear = info
        out = torch.zeros_like(rhs)
        out[:, index] = x_small if keep is None else torch.where(keep, x_small, 0.0)
        return out

    def _tol(self, rhs: Tensor) -> float:
        if self.tol is not None:
            return self.tol
        return max(1e-10, 100 * torch.finfo(rhs.dtype).eps)


def _add(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Entrywise sum of two per-θ gradient tuples."""
    return tuple(x + y for x, y in zip(a, b, strict=True))
