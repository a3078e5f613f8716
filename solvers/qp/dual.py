"""The dual reduction of a strictly convex QP: an interior-point method in ``p + m`` unknowns.

Primal (``Q ≻ 0``):  min_z ½ zᵀQz + qᵀz  s.t.  A z = b,  G z ≤ h.   With ``C = [A; G]``,
``d = [b; h]`` and multipliers ``y = [ν; λ]``, stationarity gives ``z = −Q⁻¹(q + Cᵀy)`` and the
dual is the QP in ``y`` alone

    min_y ½ yᵀ S y + cᵀ y   s.t.  −λ ≤ 0,      S = C Q⁻¹ Cᵀ,   c = C Q⁻¹ q + d,

a standard-form QP (``Q' = S``, ``q' = c``, ``G' = [0 −I]``, ``h' = 0``, no equalities) whose own
multiplier is ``λ' = (S y + c)_G = h − G z``, the primal slack. Its KKT mapping equals the
primal one term by term: ``H'_y = S y + c − [0; λ'] = [b − A z; 0]`` (with ``λ'`` the slack) and
``H'_λ' = min(λ', λ) = min(h − G z, λ)``, while the primal stationarity ``Q z + q + Cᵀy`` is zero
by construction of ``z``. So solving the dual to a KKT residual ``ε`` solves the primal to ``ε``
(up to the round-off of ``Q⁻¹``, which :func:`lift` lets the caller check).

Why: every interior-point iteration then factorises ``(p+m)²`` matrices instead of ``n²`` ones
and touches no ``n``-sized data; ``Q`` is factorised once (Cholesky) and ``Q⁻¹Cᵀ`` formed once.
A primal-infeasible QP has an unbounded dual (the dual solver reports it *dual infeasible*); a
strictly convex QP is never unbounded.

The same factorisation gives the implicit derivative cheaply (:func:`adjoint_solve`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class DualQP(NamedTuple):
    """The reduction of ``k`` items (a parameter shared by every item keeps a leading 1).

    ``L``: Cholesky factor of ``Q``; ``R = Q⁻¹Cᵀ`` ``(k, n, p+m)``; ``w = Q⁻¹q``; ``S = C R``;
    ``c = C w + d``; ``p``: number of equality rows (the first ``p`` entries of ``y``)."""

    L: Tensor
    R: Tensor
    w: Tensor
    S: Tensor
    c: Tensor
    p: int

    def standard_form(self) -> tuple[Tensor, ...]:
        """``(Q', q', G', h', A', b')`` of the dual QP (``G' = [0 −I]`` shared by the items)."""
        k, r = self.c.shape
        m = r - self.p
        like = {"dtype": self.c.dtype, "device": self.c.device}
        G = torch.zeros(1, m, r, **like)
        G[0, :, self.p:] = -torch.eye(m, **like)
        return (self.S, self.c, G, torch.zeros(1, m, **like), torch.zeros(1, 0, r, **like),
                torch.zeros(1, 0, **like))


def cholesky_where_well_conditioned(Q: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factors of ``Q`` ``(k, n, n)`` and the mask of the items where the reduction is
    safe: the factorisation succeeded and ``(min diag L / max diag L)² ≥ √eps`` (a lower bound
    of ``1/cond(Q)``; badly conditioned ``Q`` would lose accuracy in ``Q⁻¹``)."""
    L, info = torch.linalg.cholesky_ex(Q)
    diag = L.diagonal(dim1=-2, dim2=-1)
    ratio = (diag.amin(-1) / diag.amax(-1).clamp(min=torch.finfo(Q.dtype).tiny)) ** 2
    ok = (info == 0) & torch.isfinite(ratio) & (ratio >= math.sqrt(torch.finfo(Q.dtype).eps))
    return L, ok


def reduce(L: Tensor, q: Tensor, A: Tensor, b: Tensor, G: Tensor, h: Tensor) -> DualQP:
    """Form the dual QP of the module docstring (one triangular solve with ``p + m + 1``
    right-hand sides and one batched product)."""
    kc = max(A.shape[0], G.shape[0])
    C = torch.cat([A.expand(kc, *A.shape[1:]), G.expand(kc, *G.shape[1:])], -2)
    R = torch.cholesky_solve(C.mT, L)  # shared (leading 1) when L and C both are
    w = torch.cholesky_solve(q.unsqueeze(-1), L).squeeze(-1)
    S = C @ R
    S = (S + S.mT) / 2
    kd = max(b.shape[0], h.shape[0])
    d = torch.cat([b.expand(kd, *b.shape[1:]), h.expand(kd, *h.shape[1:])], -1)
    c = _mv(C, w) + d
    return DualQP(L, R, w, S, c, A.shape[-2])


def lift(dual: DualQP, y_dual: Tensor) -> Tensor:
    """The primal ``[z, ν, λ]`` from the dual solution ``[ν, λ, λ']``: ``z = −(w + R y)``."""
    r = dual.c.shape[-1]
    y = y_dual[..., :r]
    z = -(dual.w + _mv(dual.R, y))
    return torch.cat([z, y], -1)


def active_set_step(S: Tensor, c: Tensor, p: int, lam: Tensor, slack: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the primal-dual active-set method on the dual QP ``(S, c)`` (one
    semismooth Newton step on the min-form KKT mapping) from the guess ``λ_i > slack_i``.

    Fixes ``λ_i = 0`` on the guessed inactive constraints and solves ``S_FF y_F = −c_F`` on
    the free set ``F`` (equalities and guessed active constraints) by a masked Cholesky with
    one refinement step. Items whose ``S_FF`` is not positive definite (dependent active
    constraints) are NaN.

    Returns:
        the dual candidate ``[ν, λ, λ']``, and the new ``λ`` and slack ``(S y + c)_G`` (the
        next guess).
    """
    k, r = c.shape
    eye = torch.eye(r, dtype=c.dtype, device=c.device)
    free = torch.cat([torch.ones(k, p, dtype=torch.bool, device=c.device), lam > slack], -1)
    S_ff = torch.where(free[:, :, None] & free[:, None, :], S, eye)
    F, info = torch.linalg.cholesky_ex(S_ff)
    rhs = torch.where(free, -c, torch.zeros_like(c))
    y = torch.cholesky_solve(rhs.unsqueeze(-1), F).squeeze(-1)
    y = y + torch.cholesky_solve((rhs - _mv(S_ff, y)).unsqueeze(-1), F).squeeze(-1)
    y = torch.where((info != 0)[:, None], torch.full_like(y, math.nan), y)
    slack = (_mv(S, y) + c)[:, p:]
    multiplier = torch.where(free[:, p:], torch.zeros_like(slack), slack)
    return torch.cat([y, multiplier], -1), y[:, p:], slack


def adjoint_solve(dual: DualQP, inactive: Tensor, v: Tensor) -> Tensor:
    """``u`` solving ``Bᵀu = −v`` for the KKT mapping's ``B = ∂yH`` at a solution, with the
    factorisation of the reduction (no ``(n+p+m)²`` matrix is formed).

    With ``D_a`` the active inequalities (``inactive`` false), ``Bᵀ`` has rows
    ``Q u_z + Aᵀu_ν − GᵀD_a u_λ = −v_z``, ``A u_z = −v_ν`` and
    ``G u_z + (I − D_a) u_λ = −v_λ``. With ``C_a = [A; G_a]`` and ``w = [u_ν; −u_λ,a]``:
    ``(C_a Q⁻¹ C_aᵀ) w = v_a − C_a Q⁻¹ v_z`` (``C_a Q⁻¹ C_aᵀ`` is ``S`` masked to the active
    rows), ``u_z = −Q⁻¹(v_z + C_aᵀ w)`` and ``u_λ,i = −v_λ,i − G_i u_z`` on inactive rows.

    Args:
        dual: the reduction of the items.
        inactive: ``(k, m)`` inactive inequalities.
        v: ``(k, n + p + m)``.

    Returns:
        ``u`` ``(k, n + p + m)``; NaN rows where the active constraints are dependent
        (``C_a Q⁻¹ C_aᵀ`` not positive definite: ``B`` is singular).
    """
    p = dual.p
    k, r = v.shape[0], dual.c.shape[-1]
    n = dual.w.shape[-1]
    v_z, v_c = v[:, :n], v[:, n:]
    free = torch.cat([torch.ones(k, p, dtype=torch.bool, device=v.device), ~inactive], -1)
    eye = torch.eye(r, dtype=v.dtype, device=v.device)
    S_ff = torch.where(free[:, :, None] & free[:, None, :], dual.S, eye)
    F, info = torch.linalg.cholesky_ex(S_ff)
    Qinv_vz = torch.cholesky_solve(v_z.unsqueeze(-1), dual.L).squeeze(-1)
    C_Qinv_vz = _mv(dual.R.mT, v_z)  # C Q⁻¹ v_z = (Q⁻¹Cᵀ)ᵀ v_z
    rhs = torch.where(free, v_c - C_Qinv_vz, torch.zeros_like(v_c))
    w = torch.cholesky_solve(rhs.unsqueeze(-1), F).squeeze(-1)
    w = w + torch.cholesky_solve((rhs - _mv(S_ff, w)).unsqueeze(-1), F).squeeze(-1)
    u_z = -(Qinv_vz + _mv(dual.R, w))
    G_uz = -(C_Qinv_vz + _mv(dual.S, w))[:, p:]  # G u_z = −G Q⁻¹(v_z + C_aᵀ w)
    u_lam = torch.where(inactive, -v_c[:, p:] - G_uz, -w[:, p:])
    u = torch.cat([u_z, w[:, :p], u_lam], -1)
    return torch.where((info != 0)[:, None], torch.full_like(u, math.nan), u)


def tangent_solve(dual: DualQP, inactive: Tensor, r: Tensor) -> Tensor:
    """``ẏ`` solving ``B ẏ = r`` (forward mode) for the KKT mapping's ``B = ∂yH`` at a
    solution, with the factorisation of the reduction.

    Rows of ``B ẏ = r``: ``Q ż + Aᵀν̇ + Gᵀλ̇ = r_z``, ``A ż = r_ν``, ``λ̇_i = r_λ,i`` on inactive
    rows and ``−G_i ż = r_λ,i`` on active ones. With ``C_a = [A; G_a]``, ``w = [ν̇; λ̇_a]`` and
    ``f = r_z − G_inᵀ r_λ,in``: ``(C_a Q⁻¹ C_aᵀ) w = C_a Q⁻¹ f − [r_ν; −r_λ,a]`` and
    ``ż = Q⁻¹(f − C_aᵀ w)``.

    Args:
        dual: the reduction of the items.
        inactive: ``(k, m)`` inactive inequalities.
        r: ``(k, n + p + m)``.

    Returns:
        ``ẏ`` ``(k, n + p + m)``; NaN rows where ``C_a Q⁻¹ C_aᵀ`` is not positive definite.
    """
    p = dual.p
    k, n = r.shape[0], dual.w.shape[-1]
    r_z, r_nu, r_lam = r[:, :n], r[:, n:n + p], r[:, n + p:]
    free = torch.cat([torch.ones(k, p, dtype=torch.bool, device=r.device), ~inactive], -1)
    eye = torch.eye(free.shape[-1], dtype=r.dtype, device=r.device)
    S_ff = torch.where(free[:, :, None] & free[:, None, :], dual.S, eye)
    F, info = torch.linalg.cholesky_ex(S_ff)
    r_in = torch.where(inactive, r_lam, torch.zeros_like(r_lam))
    Qinv_f = (torch.cholesky_solve(r_z.unsqueeze(-1), dual.L).squeeze(-1)
              - _mv(dual.R[..., p:], r_in))
    C_Qinv_f = _mv(dual.R.mT, r_z) - _mv(dual.S[..., p:], r_in)
    g = torch.cat([r_nu, -r_lam], -1)
    rhs = torch.where(free, C_Qinv_f - g, torch.zeros_like(g))
    w = torch.cholesky_solve(rhs.unsqueeze(-1), F).squeeze(-1)
    w = w + torch.cholesky_solve((rhs - _mv(S_ff, w)).unsqueeze(-1), F).squeeze(-1)
    z_dot = Qinv_f - _mv(dual.R, w)
    lam_dot = torch.where(inactive, r_lam, w[:, p:])
    y_dot = torch.cat([z_dot, w[:, :p], lam_dot], -1)
    return torch.where((info != 0)[:, None], torch.full_like(y_dot, math.nan), y_dot)


def _mv(M: Tensor, v: Tensor) -> Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)
