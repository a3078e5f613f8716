"""Batched conjugate gradient for symmetric positive definite systems.

Solves ``M_i x_i = b_i`` for every row ``i`` when each block ``M_i`` is symmetric positive
definite. CG minimises the ``M``-norm of the error over the Krylov spaces
``x0 + span{r0, M r0, …, M^{j−1} r0}``; in exact arithmetic it terminates in at most ``k`` steps
and its error contracts like ``((√κ − 1)/(√κ + 1))^j`` with ``κ`` the condition number of ``M_i``.

A row stops when its recursive residual meets ``‖r_i‖ ≤ tol · ‖b_i‖``. Non-positive curvature
``⟨p, M p⟩ ≤ 0`` means ``M_i`` is not positive definite: the row breaks down and is reported
unconverged (use ``minres`` for symmetric indefinite systems).

With a ``preconditioner`` ``P ≈ M⁻¹`` (symmetric positive definite) the same recursion runs on
the preconditioned residuals ``z = P r`` (PCG): the contraction factor uses the condition number
of ``P M`` instead, so a factorisation of a nearby matrix (e.g. the Hessian of the last Newton
step of the inner solve) converges in one or two products. The stopping test stays on the
unpreconditioned residual ``‖r_i‖``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.linalg.base import (
    LinearSolveInfo,
    MatVec,
    apply,
    make_info,
    ratio,
    relative_residual,
    resolve_maxiter,
    row_dot,
    start,
)


def cg(
    matvec: MatVec,
    b: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner: MatVec | None = None,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``M x = b`` row by row with conjugate gradients.

    Args:
        matvec: block-diagonal symmetric positive definite operator, ``(m, k) -> (m, k)``.
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess.
        tol: relative residual tolerance.
        maxiter: largest number of iterations (one ``matvec`` each); default ``10 k``.
        preconditioner: optional symmetric positive definite ``P ≈ M⁻¹``, ``(m, k) -> (m, k)``.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape, dtype and device.

    Raises:
        ValueError: on malformed inputs (see :func:`bilevel.linalg.base.start`).
    """
    x, threshold = start(b, x0, tol)
    maxiter = resolve_maxiter(maxiter, 10 * b.shape[-1])
    r = b if x0 is None else b - apply(matvec, x)
    z = r if preconditioner is None else preconditioner(r)
    rz = row_dot(r, z)
    p = z
    converged = row_dot(r, r).sqrt() <= threshold
    broken = torch.zeros_like(converged)
    its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)

    for _ in range(maxiter):
        active = ~(converged | broken)
        if not bool(active.any()):
            break
        mp = apply(matvec, p, active)
        its += active
        curvature = row_dot(p, mp)
        alpha, ok = ratio(rz, curvature)
        step = active & ok & (curvature > 0)
        broken |= active & ~step
        alpha = torch.where(step, alpha, 0.0)[:, None]
        x = torch.where(step[:, None], x + alpha * p, x)
        r = torch.where(step[:, None], r - alpha * mp, r)
        converged |= step & (row_dot(r, r).sqrt() <= threshold)
        z = r if preconditioner is None else preconditioner(r)
        rz_new = row_dot(r, z)
        beta, _ = ratio(rz_new, rz)
        p = z + torch.where(step, beta, 0.0)[:, None] * p
        rz = rz_new

    return x, make_info("cg", its, relative_residual(matvec, x, b), tol)
