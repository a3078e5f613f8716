"""Batched BiCGSTAB for general square systems.

Solves ``M_i x_i = b_i`` for every row ``i`` with no symmetry assumption on ``M_i``.
BiCGSTAB (van der Vorst, 1992) combines a bi-conjugate-gradient step against the fixed shadow
residual ``r̂ = r0`` with a one-dimensional residual minimisation (the "stabilising" step
``ω = ⟨t, s⟩ / ⟨t, t⟩``); each iteration costs two ``matvec`` calls and short recurrences, so
memory stays ``O(m k)`` unlike GMRES. Convergence is not monotone and is not guaranteed; it is
typically good when the spectrum of ``M_i`` lies in a half-plane away from the origin.

A row stops when ``‖r_i‖ ≤ tol · ‖b_i‖``, also checked after the first half of an iteration.
``⟨r̂, r⟩ = 0``, ``⟨r̂, M p⟩ = 0`` or ``ω = 0`` are breakdowns: the row keeps its last iterate and
is reported unconverged.
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


def bicgstab(
    matvec: MatVec,
    b: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``M x = b`` row by row with BiCGSTAB.

    Args:
        matvec: block-diagonal operator, ``(m, k) -> (m, k)``.
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess.
        tol: relative residual tolerance.
        maxiter: largest number of ``matvec`` calls (two per iteration; the last iteration
            may end after its first half); default ``10 k``.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape, dtype and device.

    Raises:
        ValueError: on malformed inputs (see :func:`bilevel.linalg.base.start`).
    """
    x, threshold = start(b, x0, tol)
    maxiter = resolve_maxiter(maxiter, 10 * b.shape[-1])
    r = b if x0 is None else b - apply(matvec, x)
    shadow = r
    rho, alpha, omega = (torch.ones(b.shape[0], dtype=b.dtype, device=b.device) for _ in range(3))
    p, v = torch.zeros_like(b), torch.zeros_like(b)
    converged = row_norm(r) <= threshold
    broken = torch.zeros_like(converged)
    its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    calls = 0

    def stop(active: Tensor, ok: Tensor) -> Tensor:
        """Mark the active rows where ``ok`` fails as broken; return the rows that go on."""
        broken.logical_or_(active & ~ok)
        return active & ok

    while calls < maxiter:
        active = ~(converged | broken)
        if not bool(active.any()):
            break
        # Bi-conjugate step: p = r + β (p − ω v), x½ = x + α p, s = r − α M p.
        rho_new = row_dot(shadow, r)
        rho_ratio, ok_rho = ratio(rho_new, rho)
        alpha_ratio, ok_omega = ratio(alpha, omega)
        active = stop(active, ok_rho & ok_omega & (rho_new != 0))
        beta = (rho_ratio * alpha_ratio)[:, None]
        p = torch.where(active[:, None], r + beta * (p - omega[:, None] * v), p)
        v = apply(matvec, p, active)
        its += active
        calls += 1
        alpha_new, ok = ratio(rho_new, row_dot(shadow, v))
        active = stop(active, ok)
        x = torch.where(active[:, None], x + alpha_new[:, None] * p, x)
        s = r - alpha_new[:, None] * v
        done = active & (row_norm(s) <= threshold)
        converged |= done
        r = torch.where(active[:, None], s, r)
        active &= ~done
        if calls >= maxiter or not bool(active.any()):
            break

        # Stabilising step: ω = ⟨t, s⟩ / ⟨t, t⟩ with t = M s, x = x½ + ω s, r = s − ω t.
        t = apply(matvec, s, active)
        its += active
        calls += 1
        omega_new, ok = ratio(row_dot(t, s), row_dot(t, t))
        active = stop(active, ok & (omega_new != 0))
        x = torch.where(active[:, None], x + omega_new[:, None] * s, x)
        r = torch.where(active[:, None], s - omega_new[:, None] * t, r)
        converged |= active & (row_norm(r) <= threshold)
        rho = torch.where(active, rho_new, rho)
        alpha = torch.where(active, alpha_new, alpha)
        omega = torch.where(active, omega_new, omega)

    return x, make_info("bicgstab", its, relative_residual(matvec, x, b), tol)
