"""Batched Neumann-series (Richardson) solver.

Solves ``M_i x_i = b_i`` through the fixed-point iteration ``x ← x + α (b − M x)``. Started at
``x0 = 0`` its ``j``-th iterate is the truncated Neumann series ``α Σ_{l<j} (I − αM)^l b`` of
``M⁻¹ b = α (I − (I − αM))⁻¹ b``. It converges for every ``b`` iff the spectral radius
``ρ(I − α M_i) < 1`` (e.g. ``M = I − ∂T`` for a fixed-point map ``T`` that contracts, with
``α = 1``; or ``M`` symmetric positive definite with ``0 < α < 2 / λ_max``), linearly with rate
``ρ``. It needs one ``matvec`` and no inner products per step, which makes it the cheapest
(and crudest) adjoint solver.

A row stops when ``‖r_i‖ ≤ tol · ‖b_i‖``. A row whose residual grows beyond ``10⁶`` times its
initial value, or becomes non-finite, is declared divergent: it stops, unconverged, and keeps
its last finite iterate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.linalg.base import (
    LinearSolveInfo,
    MatVec,
    apply,
    make_info,
    relative_residual,
    resolve_maxiter,
    row_norm,
    start,
)

DIVERGENCE_FACTOR = 1e6
"""A row diverges when its residual norm exceeds this multiple of its initial one."""


def neumann(
    matvec: MatVec,
    b: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    alpha: float = 1.0,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``M x = b`` row by row with the damped fixed-point iteration ``x ← x + α (b − M x)``.

    Args:
        matvec: block-diagonal operator with ``ρ(I − α M_i) < 1``, ``(m, k) -> (m, k)``.
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess.
        tol: relative residual tolerance.
        maxiter: largest number of iterations (one ``matvec`` each); default 1000.
        alpha: step size (damping) ``α``.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape, dtype and device; ``x`` is always finite.

    Raises:
        ValueError: on malformed inputs (see :func:`bilevel.linalg.base.start`).
    """
    x, threshold = start(b, x0, tol)
    maxiter = resolve_maxiter(maxiter, 1000)
    r = b if x0 is None else b - apply(matvec, x)
    rnorm = row_norm(r)
    limit = DIVERGENCE_FACTOR * rnorm
    converged = rnorm <= threshold
    diverged = ~torch.isfinite(rnorm)
    its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)

    for _ in range(maxiter):
        active = ~(converged | diverged)
        if not bool(active.any()):
            break
        x_new = x + alpha * r
        r_new = b - apply(matvec, x_new, active)
        its += active
        rnorm = row_norm(r_new)
        finite = torch.isfinite(x_new).all(dim=-1)
        diverged |= active & ~(finite & (rnorm <= limit))  # `<=` is False for NaN
        x = torch.where((active & finite)[:, None], x_new, x)
        r = torch.where(active[:, None], r_new, r)
        converged |= active & ~diverged & (rnorm <= threshold)

    return x, make_info("neumann", its, relative_residual(matvec, x, b), tol)
