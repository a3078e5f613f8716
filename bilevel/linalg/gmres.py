"""Batched restarted GMRES for general square systems.

Solves ``M_i x_i = b_i`` for every row ``i``, with no assumption on ``M_i`` beyond
invertibility on the Krylov space that is explored. One cycle runs ``J = min(restart, k)``
Arnoldi steps from the current residual ``r = b − M x`` (orthonormal basis ``V``, Hessenberg
``H`` with ``M V_J = V_{J+1} H``, Gram–Schmidt applied twice for stability), reduces ``H`` to
upper-triangular ``R`` with Givens rotations (kept multiplied together in one small
orthogonal matrix per row, so a step costs a fixed number of batched operations whatever
``j``), and reads the least-squares residual ``min_y ‖β e₁ − H y‖ = |g_{j+1}|`` off the rotated
right-hand side at every step. At the end of a
cycle ``x ← x + V R⁻¹ g``, the true residual is recomputed and the next cycle restarts from it.

A row stops when ``‖r_i‖ ≤ tol · ‖b_i‖`` (the estimate ends a cycle early, the true residual
decides). A zero diagonal in ``R`` (singular projected system) is a breakdown: the row keeps
the update of the steps before it and is reported unconverged. Restarting may stall on
strongly non-normal or indefinite operators; ``restart = k`` is full GMRES, exact after ``k``
steps in exact arithmetic. Memory is ``O(m · restart · k)``.
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
    resolve_maxiter,
    row_norm,
    start,
)


def _cycle(
    matvec: MatVec, r: Tensor, beta: Tensor, threshold: Tensor, active: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Run one GMRES cycle of at most ``steps`` Arnoldi steps on the ``active`` rows.

    The Givens rotations of the previous steps are kept multiplied together in one orthogonal
    matrix ``Q_j = G_{j-1} ⋯ G_0`` per row (identity beyond row ``j``), so that a new Hessenberg
    column is rotated by one batched product instead of ``j`` sequential updates; ``Q`` is
    updated in place by the new rotation ``G_j`` (two rows). Same arithmetic as applying the
    rotations one by one, up to rounding.

    A row that stops (converged or broken down) gets zero basis vectors from then on, so the
    operator sees zeros in that row (``M 0 = 0``) without a masking pass per step; its
    per-step records (which rows were active, which rotations were valid) are reduced to the
    step counts once, after the loop. The loop costs a fixed, small number of batched
    operations per step (one ``matvec``, four products of Gram–Schmidt, one product with
    ``Q``) and one host synchronisation (the "any row left?" test).

    Args:
        matvec: the operator.
        r: ``(m, k)`` residuals the cycle starts from; ``beta`` their norms.
        threshold: per-row absolute residual tolerance.
        active: rows to iterate.
        steps: largest number of Arnoldi steps.

    Returns:
        ``(dx, used, broken, calls)``: the correction to add to ``x``, the per-row number of
        successful steps, the rows that broke down and the number of ``matvec`` calls made.
    """
    m, k = r.shape
    basis = r.new_zeros(m, steps + 1, k)
    rmat = r.new_zeros(m, steps, steps)
    rotations = torch.eye(steps + 1, dtype=r.dtype, device=r.device).repeat(m, 1, 1)
    g = r.new_zeros(m, steps + 1)
    g[:, 0] = beta
    basis[:, 0] = ratio(r, torch.where(active, beta, 0.0)[:, None].expand_as(r))[0]
    was_active: list[Tensor] = []  # per step: the rows that iterated, and those whose
    valid: list[Tensor] = []  # rotation was well defined (no breakdown)
    inf = torch.tensor(torch.inf, dtype=r.dtype, device=r.device)

    calls = 0
    for j in range(steps):
        calls += 1
        # Row-vector products ((m, 1, k) against the basis): the fast layout of batched GEMM.
        w = matvec(basis[:, j])
        if calls == 1 and (w.shape != r.shape or w.dtype != r.dtype):
            apply(lambda _, out=w: out, basis[:, j])  # raises the error naming the mismatch
        w = w[:, None, :]
        v = basis[:, : j + 1]
        vt = v.transpose(1, 2)
        h = torch.bmm(w, vt)  # (m, 1, j+1)
        w = torch.baddbmm(w, h, v, alpha=-1)
        h2 = torch.bmm(w, vt)  # second Gram–Schmidt pass
        w = torch.baddbmm(w, h2, v, alpha=-1)
        hnorm = torch.linalg.vector_norm(w, dim=2, keepdim=True)  # (m, 1, 1)
        col = torch.cat([h.add_(h2), hnorm], dim=2)  # Hessenberg column j, (m, 1, j+2)
        col = torch.bmm(col, rotations[:, : j + 2, : j + 2].transpose(1, 2))[:, 0]
        pair = col[:, j:]
        diag = torch.linalg.vector_norm(pair, dim=1)  # hypot, (m,)
        # c = col_j / diag, s = col_{j+1} / diag; 0 on a breakdown (diag zero or non-finite)
        cs = torch.nan_to_num(pair / diag[:, None], nan=0.0, posinf=0.0, neginf=0.0)
        ok = (diag > 0) & (diag < inf)
        col[:, j] = diag
        rmat[:, : j + 1, j] = col[:, : j + 1]
        c, s = cs[:, 0], cs[:, 1]
        givens = torch.stack([c, s, -s, c], dim=1).view(m, 2, 2)  # G_j on coordinates j, j+1
        rotations[:, j : j + 2, : j + 2] = torch.bmm(givens, rotations[:, j : j + 2, : j + 2])
        g[:, j : j + 2] = cs * g[:, j, None]  # (c g_j, −s g_j) up to the sign of s
        g[:, j + 1].neg_()

        was_active.append(active)
        valid.append(ok)
        active = active & ok & (g[:, j + 1].abs() > threshold)
        # next basis vector w / ‖w‖ on the rows still iterating, 0 on the others
        scale = torch.where(active, hnorm[:, 0, 0], inf).reciprocal()
        torch.mul(w[:, 0], scale[:, None], out=basis[:, j + 1])
        if not bool(active.any()):
            break

    iterated, fine = torch.stack(was_active, 1), torch.stack(valid, 1)
    used = (iterated & fine).sum(1)
    broken = (iterated & ~fine).any(1)

    # Solve R y = g on each row's first `used` columns (of the `calls` built): pad the rest
    # with a unit diagonal.
    keep = torch.arange(calls, device=r.device) < used[:, None]
    rmat = rmat[:, :calls, :calls] * keep[:, None, :] + torch.diag_embed((~keep).to(r.dtype))
    rhs = torch.where(keep, g[:, :calls], 0.0)
    y = torch.linalg.solve_triangular(rmat, rhs[:, :, None], upper=True)
    return torch.bmm(y.transpose(1, 2), basis[:, :calls])[:, 0], used, broken, calls


def gmres(
    matvec: MatVec,
    b: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    restart: int = 50,
) -> tuple[Tensor, LinearSolveInfo]:
    """Solve ``M x = b`` row by row with restarted GMRES.

    Args:
        matvec: block-diagonal operator, ``(m, k) -> (m, k)``.
        b: ``(m, k)`` right-hand sides.
        x0: optional ``(m, k)`` initial guess.
        tol: relative residual tolerance.
        maxiter: largest total number of Arnoldi ``matvec`` calls over all cycles (the residual
            recomputed at each restart is not counted); default ``10 k``.
        restart: Arnoldi steps per cycle, capped at ``k``.

    Returns:
        ``(x, info)`` with ``x`` of ``b``'s shape, dtype and device.

    Raises:
        ValueError: on malformed inputs (see :func:`bilevel.linalg.base.start`) or
            ``restart < 1``.
    """
    if restart < 1:
        raise ValueError(f"restart must be at least 1, got {restart}")
    x, threshold = start(b, x0, tol)
    maxiter = resolve_maxiter(maxiter, 10 * b.shape[-1])
    restart = min(restart, max(b.shape[-1], 1))
    bnorm = row_norm(b)
    broken = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    its = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    total = 0
    r = b if x0 is None else b - apply(matvec, x)

    while True:
        beta = row_norm(r)
        active = (beta > threshold) & ~broken
        if total >= maxiter or not bool(active.any()):
            break
        steps = min(restart, maxiter - total)
        dx, used, new_broken, calls = _cycle(matvec, r, beta, threshold, active, steps)
        x = torch.where(active[:, None], x + dx, x)
        its += used + new_broken  # a step that broke down still cost a matvec
        total += calls
        broken |= new_broken
        r = b - apply(matvec, x)

    nonzero = bnorm > 0
    residual = torch.where(nonzero, row_norm(r) / torch.where(nonzero, bnorm, 1.0), 0.0)
    return x, make_info("gmres", its, residual, tol)
