"""Batched MINRES for symmetric (possibly indefinite) systems.

Solves ``M_i x_i = b_i`` for every row ``i`` when each block ``M_i`` is symmetric; it may be
indefinite, and singular systems are handled as long as ``b_i`` is in the range of ``M_i``.
MINRES (Paige & Saunders, 1975) runs the symmetric Lanczos process on ``r0`` and picks the iterate
of least residual norm over ``x0 + span{r0, M r0, …, M^{j−1} r0}``: the tridiagonal Lanczos
matrix is reduced by Givens rotations, whose accumulated sines give the residual norm
``|φ̄_j|`` without an extra ``matvec``.

A row stops when ``|φ̄_j| ≤ tol · ‖b_i‖``. A zero pivot ``γ_j`` (singular projected system)
is a breakdown: the row is frozen and reported unconverged. Only the iterate of a frozen row is
kept; its auxiliary recurrence state is left as is and never read again.
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
    row_norm,
    start,
)


def minres(
    matvec: MatVec,
    b: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``M x = b`` row by row with MINRES.

    Args:
        matvec: block-diagonal symmetric operator, ``(m, k) -> (m, k)``.
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess.
        tol: relative residual tolerance.
        maxiter: largest number of iterations (one ``matvec`` each); default ``10 k``.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape, dtype and device.

    Raises:
        ValueError: on malformed inputs (see :func:`bilevel.linalg.base.start`).
    """
    x, threshold = start(b, x0, tol)
    maxiter = resolve_maxiter(maxiter, 10 * b.shape[-1])
    r = b if x0 is None else b - apply(matvec, x)

    # Lanczos state: y = β_{j+1} v_{j+1} before normalisation; r1, r2 hold the two previous ones.
    y, r1, r2 = r, r, r
    beta = row_norm(r)
    old_beta = torch.zeros_like(beta)
    # Givens state: previous rotation (cs, sn), the pieces of the next column, the residual φ̄.
    cs, sn = -torch.ones_like(beta), torch.zeros_like(beta)
    dbar, eps = torch.zeros_like(beta), torch.zeros_like(beta)
    phibar = beta
    # Search directions: w = (v_j − ε_j w_{j−2} − δ_j w_{j−1}) / γ_j.
    w, w2 = torch.zeros_like(r), torch.zeros_like(r)

    converged = phibar <= threshold
    broken = torch.zeros_like(converged)
    its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)

    for _ in range(maxiter):
        active = ~(converged | broken)
        if not bool(active.any()):
            break
        # Lanczos step: v_j = y / β_j, y = M v_j − (β_j / β_{j−1}) v_{j−1} β_{j−1} − α_j v_j β_j.
        inv_beta, _ = ratio(torch.ones_like(beta), beta)
        v = inv_beta[:, None] * y
        y = apply(matvec, v, active)
        its += active
        back, _ = ratio(beta, old_beta)  # 0 on the first step
        y = y - back[:, None] * r1
        alpha = row_dot(v, y)
        y = y - (alpha * inv_beta)[:, None] * r2
        r1, r2 = r2, y
        old_beta, beta = beta, row_norm(y)

        # Apply the previous rotation to the new column, then build the one that zeroes β_{j+1}.
        old_eps = eps
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        eps = sn * beta
        dbar = -cs * beta
        gamma = torch.hypot(gbar, beta)
        cs, ok = ratio(gbar, gamma)
        sn, _ = ratio(beta, gamma)
        inv_gamma, _ = ratio(torch.ones_like(gamma), gamma)

        step = active & ok
        broken |= active & ~step
        w, w2 = inv_gamma[:, None] * (v - old_eps[:, None] * w2 - delta[:, None] * w), w
        x = torch.where(step[:, None], x + (cs * phibar)[:, None] * w, x)
        phibar = torch.where(step, sn * phibar, phibar)
        converged |= step & (phibar.abs() <= threshold)

    return x, make_info("minres", its, relative_residual(matvec, x, b), tol)
