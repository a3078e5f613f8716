"""Shared record and helpers of the batched linear solvers.

Every solver here solves ``m`` independent systems ``M_i x_i = b_i`` of dimension ``k`` at once.
Right-hand sides are a tensor ``b`` of shape ``(m, k)``; the operator is given matrix-free as a
callable ``matvec`` mapping ``(m, k) -> (m, k)`` that applies a block-diagonal ``M`` (row ``i`` of
its output depends on row ``i`` of its input only).

Conventions shared by the iterative solvers:

- row ``i`` is converged when ``‖b_i − M_i x_i‖₂ ≤ tol · ‖b_i‖₂``; a row with ``b_i = 0`` returns
  ``x_i = 0`` and is converged from the start;
- a row that has converged or broken down is *frozen*: its iterate no longer changes, and
  ``matvec`` receives zeros in that row, so the work of the others is unaffected;
- every division goes through :func:`ratio`, so a breakdown (a zero or non-finite denominator)
  stops the row instead of writing NaN into the solution;
- the reported residual is recomputed from the returned ``x`` with one extra ``matvec``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]
"""A block-diagonal linear operator applied to a batch of vectors, ``(m, k) -> (m, k)``."""


@dataclass(frozen=True)
class LinearSolveInfo:
    """How a batched linear solve ended.

    Attributes:
        method: solver name ("cg", "minres", "gmres", "bicgstab", "neumann", "lu",
            "cholesky", "lstsq", or "refinement": the engine's refinement from a solver's own
            solution or preconditioner, ``bilevel.adjoint``).
        iterations: largest number of ``matvec`` applications any row used (0 for dense
            methods). The initial residual and the final check are not counted.
        residual: largest true relative residual ``‖M_i x_i − b_i‖ / ‖b_i‖`` over the rows,
            recomputed from the returned solution (rows with ``b_i = 0`` count 0).
        converged: ``residual <= tol``.
    """

    method: str
    iterations: int
    residual: float
    converged: bool


def row_dot(u: Tensor, v: Tensor) -> Tensor:
    """Per-row inner products ``⟨u_i, v_i⟩`` of two ``(m, k)`` tensors, shape ``(m,)``."""
    return (u * v).sum(dim=-1)


def row_norm(u: Tensor) -> Tensor:
    """Per-row Euclidean norms of an ``(m, k)`` tensor, shape ``(m,)``."""
    return torch.linalg.vector_norm(u, dim=-1)


def ratio(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    """Guarded elementwise division.

    Args:
        num: numerators.
        den: denominators, same shape.

    Returns:
        ``(q, ok)``: ``q = num / den`` where ``den != 0`` and the quotient is finite, else 0;
        ``ok`` marks the entries where the division was valid.
    """
    nonzero = den != 0
    q = num / torch.where(nonzero, den, torch.ones_like(den))
    ok = nonzero & torch.isfinite(q)
    return torch.where(ok, q, torch.zeros_like(q)), ok


def apply(matvec: MatVec, v: Tensor, active: Tensor | None = None) -> Tensor:
    """Apply ``matvec`` to ``v``, with the rows outside ``active`` replaced by zeros.

    Args:
        matvec: the operator.
        v: ``(m, k)`` input.
        active: optional ``(m,)`` boolean mask of the rows still iterating.

    Returns:
        ``M v`` (rows outside ``active`` hold ``M 0``).

    Raises:
        ValueError: if ``matvec`` changes the shape or dtype of its input.
    """
    if active is not None:
        v = torch.where(active[:, None], v, torch.zeros_like(v))
    out = matvec(v)
    if out.shape != v.shape or out.dtype != v.dtype:
        raise ValueError(
            f"matvec must map a {tuple(v.shape)} {v.dtype} tensor to the same shape and dtype, "
            f"got {tuple(out.shape)} {out.dtype}: apply the operator row by row and cast its "
            "output to the right-hand side's dtype"
        )
    return out


def start(b: Tensor, x0: Tensor | None, tol: float) -> tuple[Tensor, Tensor]:
    """Validate the inputs of an iterative solve and build its initial iterate.

    Args:
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess (cast to ``b``'s dtype and device).
        tol: relative tolerance, ``>= 0``.

    Returns:
        ``(x, threshold)``: the initial iterate (rows with ``b_i = 0`` set to 0) and the
        per-row absolute stopping threshold ``tol · ‖b_i‖``.

    Raises:
        ValueError: on a ``b`` that is not 2-D, a mismatched ``x0`` or a negative ``tol``.
    """
    if b.ndim != 2:
        raise ValueError(
            f"b must have shape (m, k) (m independent systems of size k), got {tuple(b.shape)}: "
            "flatten the batch dimensions into m and the unknowns into k"
        )
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    bnorm = row_norm(b)
    if x0 is None:
        x = torch.zeros_like(b)
    else:
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        x = torch.where((bnorm == 0)[:, None], 0.0, x0.to(dtype=b.dtype, device=b.device))
    return x, tol * bnorm


def resolve_maxiter(maxiter: int | None, default: int) -> int:
    """Return ``maxiter``, or ``default`` when it is ``None``.

    Raises:
        ValueError: on a negative ``maxiter``.
    """
    if maxiter is None:
        return default
    if maxiter < 0:
        raise ValueError(f"maxiter must be non-negative, got {maxiter}")
    return int(maxiter)


def relative_residual(matvec: MatVec, x: Tensor, b: Tensor) -> Tensor:
    """True relative residuals ``‖b_i − M_i x_i‖ / ‖b_i‖``, shape ``(m,)`` (0 where ``b_i = 0``)."""
    bnorm = row_norm(b)
    rnorm = row_norm(b - apply(matvec, x))
    nonzero = bnorm > 0
    return torch.where(nonzero, rnorm / torch.where(nonzero, bnorm, 1.0), 0.0)


def make_info(
    method: str, iterations: Tensor | int, rel_residual: Tensor, tol: float
) -> LinearSolveInfo:
    """Summarise per-row results into a :class:`LinearSolveInfo`.

    Args:
        method: solver name.
        iterations: per-row ``matvec`` counts ``(m,)``, or one count.
        rel_residual: per-row true relative residuals ``(m,)``.
        tol: the tolerance ``converged`` is judged against.

    Returns:
        The record, with maxima over the rows (a non-finite residual is reported as such and
        never counts as converged).
    """
    if isinstance(iterations, Tensor):
        iterations = int(iterations.max()) if iterations.numel() else 0
    residual = float(rel_residual.max()) if rel_residual.numel() else 0.0
    return LinearSolveInfo(method, iterations, residual, bool(residual <= tol))
