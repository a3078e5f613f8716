"""Batched linear solvers for the adjoint system of implicit differentiation.

The engine solves ``∂yHᵀ u = −v`` (reverse mode) or ``∂yH ẏ = −∂θH θ̇`` (forward mode) for a
batch of ``m`` independent systems of size ``k``. Iterative solvers take the operator as a
block-diagonal ``matvec`` on ``(m, k)`` tensors and treat each row as its own system (own inner
products, own convergence test ``‖r_i‖ ≤ tol · ‖b_i‖``); :func:`dense_solve` factorises explicit
``(m, k, k)`` matrices. Every solver returns ``(x, LinearSolveInfo)``.

Which solver: ``cg`` for symmetric positive definite ``M``, ``minres`` for symmetric indefinite,
``gmres`` (robust, more memory) or ``bicgstab`` (short recurrences) for general ``M``,
``neumann`` when ``ρ(I − αM) < 1`` (contractive fixed-point maps), ``dense_solve`` when ``k`` is
small enough to build the matrix.
"""

from __future__ import annotations

from bilevel.linalg.base import LinearSolveInfo, MatVec
from bilevel.linalg.bicgstab import bicgstab
from bilevel.linalg.cg import cg
from bilevel.linalg.dense import dense_solve, reciprocal_condition
from bilevel.linalg.gmres import gmres
from bilevel.linalg.minres import minres
from bilevel.linalg.neumann import neumann

ITERATIVE = {"cg": cg, "minres": minres, "gmres": gmres, "bicgstab": bicgstab, "neumann": neumann}
"""The matrix-free solvers by name; each is called as ``solver(matvec, b, x0=, tol=, maxiter=)``."""

__all__ = [
    "ITERATIVE",
    "LinearSolveInfo",
    "MatVec",
    "bicgstab",
    "cg",
    "dense_solve",
    "gmres",
    "minres",
    "neumann",
    "reciprocal_condition",
]
