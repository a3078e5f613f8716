"""Dense batched solvers for ``M_i x_i = b_i`` with explicit matrices ``M`` of shape ``(m, k, k)``.

For small ``k`` (up to a few thousand) materialising the Jacobian and factorising it is often
faster and always more robust than a Krylov method:

- ``"lu"``: LU with partial pivoting (``torch.linalg.solve_ex``); any invertible ``M_i``.
- ``"cholesky"``: ``M_i = L Lᵀ``; ``M_i`` symmetric positive definite (only the lower triangle
  is read, so symmetry is assumed, not checked).
- ``"lstsq"``: the minimum-norm least-squares solution ``x_i = M_i⁺ b_i`` via the SVD (driver
  ``gelsd`` on CPU, ``torch.linalg.pinv`` elsewhere); singular values below
  ``k · eps · σ_max`` are treated as zero. It solves singular consistent systems exactly and
  reports a residual above ``tol`` for inconsistent ones.

:func:`reciprocal_condition` gives ``1 / (‖M_i‖₁‖M_i⁻¹‖₁)`` per item, a cheap certificate of how
close ``M_i`` is to singular (the implicit function theorem needs it away from 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.linalg.base import LinearSolveInfo, make_info, relative_residual
from solvers.lapack import lu_safe

METHODS = ("lu", "cholesky", "lstsq")


def _failed_rows(info: Tensor) -> list[int]:
    """Batch indices where a LAPACK-style ``info`` is nonzero."""
    return torch.nonzero(info != 0).flatten().tolist()


def dense_solve(
    matrix: Tensor, b: Tensor, *, method: str = "lu", tol: float | None = None
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``matrix_i x_i = b_i`` for every batch item with a dense factorisation.

    Args:
        matrix: ``(m, k, k)`` matrices.
        b: ``(m, k)`` right-hand sides, same dtype and device.
        method: ``"lu"``, ``"cholesky"`` or ``"lstsq"``.
        tol: relative residual tolerance for ``info.converged``; default ``sqrt(eps)`` of the
            dtype.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape; ``info.iterations`` is 0.

    Raises:
        ValueError: on mismatched shapes, an unknown method, an exactly singular matrix
            (``"lu"``) or a matrix that is not positive definite (``"cholesky"``); the message
            names the batch items.
    """
    if b.ndim != 2 or matrix.shape != (*b.shape, b.shape[-1]):
        raise ValueError(
            f"expected matrix (m, k, k) and b (m, k), got {tuple(matrix.shape)} and "
            f"{tuple(b.shape)}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown dense method {method!r}; choose one of {METHODS}")
    if tol is None:
        tol = torch.finfo(b.dtype).eps ** 0.5
    rhs = b[..., None]

    if method == "lu":
        with lu_safe(matrix):
            x, info = torch.linalg.solve_ex(matrix, rhs)
        if bool((info != 0).any()):
            raise ValueError(
                f"matrix is singular (batch items {_failed_rows(info)}): the LU factorisation "
                "has a zero pivot; use method='lstsq' for the minimum-norm solution, or add a "
                "ridge term"
            )
    elif method == "cholesky":
        factor, info = torch.linalg.cholesky_ex(matrix)
        if bool((info != 0).any()):
            raise ValueError(
                f"matrix is not positive definite (batch items {_failed_rows(info)}): use "
                "method='lu' for invertible indefinite matrices or method='lstsq' for singular "
                "ones"
            )
        x = torch.cholesky_solve(rhs, factor)
    elif matrix.device.type == "cpu":
        x = torch.linalg.lstsq(matrix, rhs, driver="gelsd").solution
    else:
        x = torch.linalg.pinv(matrix) @ rhs
    x = x[..., 0]

    def matvec(v: Tensor) -> Tensor:
        return (matrix @ v[..., None])[..., 0]

    return x, make_info(method, 0, relative_residual(matvec, x, b), tol)


def reciprocal_condition(matrix: Tensor) -> Tensor:
    """Reciprocal 1-norm condition number ``1 / (‖M‖₁ ‖M⁻¹‖₁)`` of each matrix.

    Computed from an LU factorisation and the explicit inverse (about 3× cheaper than an SVD
    for batches of small matrices); within a factor ``k`` of ``σ_min / σ_max``.

    Args:
        matrix: ``(m, k, k)`` matrices.

    Returns:
        ``(m,)`` values in ``[0, 1]``: 1 for the identity (and for ``k = 0``), about ``eps`` or
        less for a numerically singular matrix, 0 for an exactly singular or all-zero one.
    """
    k = matrix.shape[-1]
    if k == 0:  # the empty operator is perfectly conditioned
        return matrix.new_ones(matrix.shape[:-2])
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    with lu_safe(matrix):
        factor, pivots, info = torch.linalg.lu_factor_ex(matrix)
        inverse = torch.linalg.lu_solve(factor, pivots, eye)
    norm = matrix.abs().sum(-2).amax(-1)
    inverse_norm = inverse.abs().sum(-2).amax(-1)
    value = 1.0 / (norm * inverse_norm)
    good = (info == 0) & (norm > 0) & torch.isfinite(value)
    return torch.where(good, value, torch.zeros_like(value)).clamp(max=1.0)
