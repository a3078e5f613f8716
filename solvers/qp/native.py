"""``NativeQP``: a batched primal-dual interior-point QP solver in pure torch.

Problem (leading batch dimensions allowed, parameters broadcast against each other):

    min_z ½ zᵀQz + qᵀz   s.t.  A z = b  (p rows),  G z ≤ h  (m rows),    Q = Qᵀ ⪰ 0.

Optimality mapping (:func:`solvers.qp.kkt.kkt_mapping`, ``y = [z, ν, λ]``):

    H_z = Q z + q + Aᵀν + Gᵀλ,   H_ν = A z − b,   H_λ = λ − max(0, λ + G z − h),

with ``H(θ, y*) = 0`` exactly at a KKT point. ``H_λ`` has a kink at weakly active constraints
(``λ_i = 0 = h_i − G_i z``); the structure hint (:func:`~solvers.qp.kkt.kkt_structure`) reports
the inactive rows and the kink distances.

**Dual reduction (``Q ≻ 0``, the common case).** Where the Cholesky factorisation of ``Q``
succeeds with ``(min diag L / max diag L)² ≥ √eps``, the item is solved through its dual QP in
the ``p + m`` multipliers (:mod:`solvers.qp.dual`: ``S = C Q⁻¹ Cᵀ``, one factorisation of ``Q``
per solve, every later factorisation ``(p+m)²``), always in float64 (``S`` squares the
conditioning of ``Q``; float32 results are the float64 ones rounded): a primal-dual active-set
method from ``λ = 0`` (≤ 12 rounds; usually exact in 5–10 on random QPs), then, for the items it
leaves, the HSDE below on the dual (an unbounded dual is a primal-infeasible item); finally
``z = −Q⁻¹(q + Cᵀy)``. Items with a singular or badly conditioned ``Q``, and items whose lifted
residual lost more than 10× over the dual's, run the HSDE on the primal instead. The reduction
also gives the implicit derivative in closed form (:meth:`NativeQP.solve_adjoint`, a hint for the
engine). ``info.iterations`` counts the active-set rounds of that cold start plus the
interior-point iterations (polishing is not counted).

**Algorithm (primal, and the dual's fallback).** Mehrotra predictor–corrector on the
homogeneous self-dual embedding (HSDE) of the QP, as in Clarabel (Goulart & Chen 2024)
restricted to the nonnegative orthant plus equalities. With slacks ``s = h − G z ≥ 0`` and
the homogenising pair ``τ, κ ≥ 0``:

    Q z + Aᵀν + Gᵀλ + q τ = 0,     A z − b τ = 0,     G z + s − h τ = 0,
    κ + zᵀQz / τ + qᵀz + bᵀν + hᵀλ = 0,     s∘λ = μ e,   τ κ = μ,

solved for ``μ → 0`` from ``z = 0, ν = 0, s = λ = e, τ = κ = 1``. The solution of the QP is
``(z, ν, λ) / τ`` when ``τ`` stays positive; ``τ → 0`` with ``κ > 0`` means infeasibility.
Each Newton step eliminates ``Δs, Δλ, Δκ`` and solves, per item, the bordered reduced system

    [ Q + GᵀWG            Aᵀ    q − GᵀWh              ] [Δz]
    [ A                   0     −b                    ] [Δν]   (W = diag(λ/s))
    [ (2Qz/τ + q + GᵀWh)ᵀ  bᵀ    −κ/τ − zᵀQz/τ² − hᵀWh ] [Δτ]

by bordering: the symmetric quasi-definite block ``K = [[Q + GᵀWG + δI, Aᵀ], [A, −δI]]`` is
factorised once per iteration (batched ``LDLᵀ`` on CPU, batched LU on accelerators) and
shared by the predictor, the corrector and ``K⁻¹`` of the border column; the scalar ``Δτ``
comes from the border's Schur complement, and two steps of iterative refinement against the
unregularised bordered matrix remove the tiny regularisation ``δ = eps^¾ (1 + max|Q|)``
(which keeps ``K`` factorisable when ``Q`` is singular, e.g. on unbounded problems, or ``A``
has dependent rows). Every item takes its own Mehrotra step (``σ = (1 − α_aff)³``, 0.99 of
the way to the boundary); finished items leave the batch; there is no Python loop over items.

**Polishing.** An interior iterate has ``s_i λ_i ≈ μ > 0``, so its min-form residual
``‖H‖∞ ≈ √μ`` is far above ``tol``. Once an item's relative residuals are below ``eps^¼``,
its active set is guessed (``λ_i > s_i``), ``λ_i = 0`` is set on the others and the
equality-constrained KKT system on that active set is solved (one factorisation of the
``n + p + m`` system, three refinement steps). That is one semismooth Newton step on ``H``;
up to three rounds re-guess the active set from the result (a primal-dual active-set method),
which fixes the constraints an interior iterate leaves ambiguous. The polished point is kept
when its residual ``‖H(θ, y)‖∞`` is below the iterate's (``H_λ = min(λ, h − Gz)`` already
measures the sign conditions ``λ ≥ 0`` and ``Gz ≤ h``). An item is *solved* as soon as that
residual is ``≤ tol``, or at the round-off level of the dtype (``≤ 100·eps·scale``, the
interior-point criteria ``≤ 100·eps``, or no 10% progress in three iterations once
polishing started); a solved residual above ``tol`` (``float32``, degenerate or badly scaled
problems) is reported by a :class:`~solvers.base.ConvergenceWarning`.

**Infeasibility** is read off the embedding (Clarabel's certificates, checked every iteration
once ``κ > τ``): the item is *primal infeasible* when ``(ν, λ)`` satisfies
``hᵀλ + bᵀν < 0`` and ``‖Gᵀλ + Aᵀν‖∞ ≤ ε·|hᵀλ + bᵀν|`` (a Farkas certificate), and *dual
infeasible* (unbounded below) when ``d = z`` satisfies ``qᵀd < 0`` with ``‖Qd‖∞``,
``‖Ad‖∞``, ``max(Gd)₊`` all ``≤ ε·|qᵀd|`` (a ray of unbounded descent); ``ε = √eps`` of the
dtype. The embedding keeps the iterates bounded, so these certificates converge instead of
diverging (a plain infeasible-start method would have to recognise blow-up instead).

**Status.** ``status`` (a LongTensor over the batch) holds a code of :data:`STATUS` per item;
items not solved are NaN in the returned ``y`` and reported by a :class:`QPStatusWarning`
naming them; the rest of the batch is returned normally. ``bilevel.implicit_solve`` accepts
such NaN items because ``status`` marks them, and :meth:`NativeQP.optimality` gives them
identity rows, so the derivative of a loss over the solved items is unaffected by them.

**Warm start.** Interior-point methods warm-start poorly (a point near the boundary is badly
centred), so ``init`` is used for what it is good at: its active set. Polishing (with its
active-set rounds) is run from ``init`` first; the items whose polished point already has
``‖H‖∞ ≤ tol`` are returned without any interior-point iteration (the usual case in an outer
loop whose θ moves a little: ``info.iterations == 0``), the others start the HSDE from the
cold point.

Device and dtype follow ``q``; ``float32`` works with a looser ``tol`` (``≳ 1e-4``; the
round-off of ``H`` itself is about ``1e-4`` at ``n = 100``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from solvers.base import (
    ConvergenceWarning,
    SolveInfo,
    Structure,
    all_finite,
    check_stopping,
    warn_not_converged,
)
from solvers.qp import dual
from solvers.qp.kkt import CheckedQPParams, QPParams, as_params, kkt_mapping, kkt_structure

SOLVED, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE, MAX_ITERATIONS = 0, 1, 2, 3
STATUS: dict[int, str] = {
    SOLVED: "solved",
    PRIMAL_INFEASIBLE: "primal_infeasible",
    DUAL_INFEASIBLE: "dual_infeasible",
    MAX_ITERATIONS: "max_iterations",
}

_STEP = 0.99  # fraction of the step to the boundary
_REFINE = 2  # iterative-refinement steps after each regularised solve
_ROUNDS = 3  # active-set rounds of polishing
_STALL = 3  # checks without progress after which a polished-ready item is returned as is
_COLD_ROUNDS = 12  # active-set rounds of the dual reduction's cold start


class QPStatusWarning(ConvergenceWarning):
    """Some items of a batched QP were not solved (infeasible, unbounded, or the iteration cap):
    they are NaN in the returned ``y``; ``solver.status`` holds the code of every item."""


class NativeQP:
    """Batched convex QP solver (HSDE interior point + active-set polishing), pure torch.

    Args:
        tol: tolerance on the min-form KKT residual ``‖H(θ, y)‖∞`` at return.
        maxiter: cap on interior-point iterations.
        check_psd: check that ``Q`` is positive semidefinite: smallest eigenvalue of the
            symmetrised ``Q`` ``≥ −1e-8·max|Q|`` (one Cholesky of ``Q + 2e-8·max|Q|·I`` per
            distinct ``Q``, ``eigvalsh`` only where it fails); ``Q`` must be symmetric anyway.

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last ``run`` (residual: max over the
            solved items; converged: every item solved with residual ``≤ tol``).
        status: LongTensor over the batch, codes of :data:`STATUS`.
        batch_ndim: number of batch dimensions of the last ``run``.
        tol, maxiter, check_psd: as given.

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(self, *, tol: float = 1e-10, maxiter: int = 50, check_psd: bool = True):
        check_stopping(tol, maxiter)
        self.tol = tol
        self.maxiter = maxiter
        self.check_psd = check_psd
        self.batch_ndim = 0
        self.info: SolveInfo | None = None
        self.status: Tensor | None = None

    # -- protocol ----------------------------------------------------------------------------

    def run(self, theta: QPParams | tuple[Tensor | None, ...], init: Tensor | None = None
            ) -> Tensor:
        """Solve the QP(s) ``theta = (Q, q, G, h, A, b)``; returns ``y = [z, ν, λ]`` shaped
        ``(*batch, n + p + m)`` (no graph), NaN on the items not solved.

        Args:
            theta: a :class:`~solvers.qp.kkt.QPParams` or a tuple ``(Q, q, G, h, A, b)``
                (``None`` or zero-row tensors for absent constraints).
            init: a previous ``y`` (broadcastable to the output): its active set is tried first.

        Raises:
            ValueError: bad shapes, dtypes or NaN/Inf (from :func:`~solvers.qp.kkt.as_params`),
                a non-symmetric ``Q``, or (``check_psd``) a ``Q`` that is not PSD.

        Warns:
            QPStatusWarning: items infeasible, unbounded, or not solved within ``maxiter``.
            ConvergenceWarning: solved items whose residual stays above ``tol``.
        """
        P = _as_qp(theta)
        n, p, m = P.sizes
        batch = P.batch_shape()
        self.batch_ndim = len(batch)
        data, asym = _Data.of(P, batch)
        # the dual reduction squares the conditioning (S = C Q⁻¹ Cᵀ): it runs in float64
        work = data if data.q.dtype == torch.float64 else _Data(
            *(t.to(torch.float64) for t in data[:6]), data.B)
        L, reducible = dual.cholesky_where_well_conditioned(work.Q)
        _check_Q(P.Q, asym, self.check_psd and not bool(reducible.all()))
        B, N = data.B, n + p + m
        like = {"dtype": P.q.dtype, "device": P.q.device}
        out = torch.full((B, N), math.nan, **like)
        best = torch.full((B,), math.inf, **like)
        status = torch.full((B,), MAX_ITERATIONS, dtype=torch.long, device=P.q.device)
        y0 = None if init is None else _check_init(init, batch, N, P.q)
        reducible = reducible.expand(B)
        iterations = 0
        self._reduction = None
        if bool(reducible.any()):
            iterations, rescue = self._solve_dual(data, work, L, reducible.nonzero().flatten(),
                                                  y0, out, best, status)
            primal = torch.cat([(~reducible).nonzero().flatten(), rescue])
        else:
            primal = torch.arange(B, device=P.q.device)
        if primal.numel():
            iterations = max(iterations,
                             self._solve_primal(data, primal, y0, out, best, status))
        self.status = status.reshape(batch)
        result = out.reshape(*batch, N)
        solved = status == SOLVED
        if self._reduction is not None:
            index, red = self._reduction
            self._reduction = (result.data_ptr(), index, red) if bool(
                (status[index] == SOLVED).sum() == solved.sum()) else None
        residual = float(best[solved].max()) if bool(solved.any()) else math.nan
        all_solved = bool(solved.all())
        self.info = SolveInfo(iterations, residual, self.tol,
                              all_solved and residual <= self.tol)
        if not all_solved:
            self._warn_status(status, batch)
        if bool(solved.any()) and residual > self.tol:
            warn_not_converged(
                "NativeQP", SolveInfo(iterations, residual, self.tol, False),
                "The interior-point method reached the round-off level of the dtype but "
                "polishing on the active set did not reach tol: a degenerate QP (dependent "
                "active constraints), badly scaled data, or tol below the dtype's precision.",
            )
        return out.reshape(*batch, N)

    def _solve_primal(self, data: _Data, index: Tensor, y0: Tensor | None, out: Tensor,
                      best: Tensor, status: Tensor) -> int:
        """The HSDE on the primal of the items ``index`` (any PSD ``Q``); returns iterations."""
        d = data.take(index)
        n, p = d.q.shape[-1], d.b.shape[-1]
        todo = torch.arange(d.B, device=d.q.device)
        if y0 is not None:
            z0, lam0 = y0[index, :n], y0[index, n + p:]
            cand, res = _polish(d, lam0, d.h - _mv(d.G, z0), self.tol)
            ok = res <= self.tol
            out[index[ok]], best[index[ok]], status[index[ok]] = cand[ok], res[ok], SOLVED
            todo = (~ok).nonzero().flatten()
        if not todo.numel():
            return 0
        sub_out = torch.full((d.B, out.shape[-1]), math.nan, **_like(out))
        sub_best = torch.full((d.B,), math.inf, **_like(out))
        sub_status = torch.full((d.B,), MAX_ITERATIONS, dtype=torch.long, device=out.device)
        iterations = _Hsde(self, d.take(todo), todo, sub_out, sub_best, sub_status).solve()
        where = index[todo]
        out[where], best[where], status[where] = sub_out[todo], sub_best[todo], sub_status[todo]
        return iterations

    def _solve_dual(self, data: _Data, work: _Data, L: Tensor, index: Tensor,
                    y0: Tensor | None, out: Tensor, best: Tensor, status: Tensor
                    ) -> tuple[int, Tensor]:
        """The items ``index`` (``Q ≻ 0``, factor ``L``) through the dual reduction of
        :mod:`solvers.qp.dual`: the HSDE and the polishing run on the ``p + m`` dual unknowns,
        then ``z = −Q⁻¹(q + Cᵀy)``; all of it in float64 (``work``: ``data`` in float64),
        the result cast back to ``data``'s dtype. Returns the iterations and the items to
        solve again on the primal (the lifted residual is above ``tol`` and lost more than
        10× over the dual's, a sign of round-off in ``Q⁻¹``)."""
        data_out = data.take(index)
        d = work.take(index)
        if y0 is not None:
            y0 = y0.to(torch.float64)
        n, p, m = d.q.shape[-1], d.b.shape[-1], d.h.shape[-1]
        k = d.B
        red = dual.reduce(L if L.shape[0] == 1 else L[index], d.q, d.A, d.b, d.G, d.h)
        like = _like(d.q)
        if p + m == 0:  # unconstrained: z = −Q⁻¹q
            y = dual.lift(red, torch.zeros(k, 0, **like)).to(data_out.q.dtype)
            res = _residual(data_out, y)
            out[index], best[index], status[index] = y, res, SOLVED
            return 0, index[:0]
        dd = _Data(*red.standard_form(), k)
        r = p + m
        out_d = torch.full((k, r + m), math.nan, **like)
        best_d = torch.full((k,), math.inf, **like)
        status_d = torch.full((k,), MAX_ITERATIONS, dtype=torch.long, device=d.q.device)

        def polisher(sub: _Data, lam: Tensor, s: Tensor, tol: float) -> tuple[Tensor, Tensor]:
            # the dual's multiplier is the primal slack and its slack the primal λ
            return _dual_active_set(sub, p, s, lam, tol, _ROUNDS)[:2]

        if y0 is None:  # y = 0: λ = 0 and the slack of the unconstrained minimiser, c_G
            lam0, slack0 = torch.zeros(k, m, **like), red.c[:, p:].expand(k, m)
        else:
            lam0, slack0 = y0[index, n + p:], d.h - _mv(d.G, y0[index, :n])
        rounds = _COLD_ROUNDS if y0 is None else _ROUNDS
        cand, res, done = _dual_active_set(dd, p, lam0, slack0, self.tol,
                                           min(rounds, self.maxiter))
        ok = res <= self.tol
        out_d[ok], best_d[ok], status_d[ok] = cand[ok], res[ok], SOLVED
        todo = (~ok).nonzero().flatten()
        iterations = done if y0 is None else 0  # warm-start polishing is not counted
        if todo.numel():
            iterations += _Hsde(self, dd.take(todo), todo, out_d, best_d, status_d,
                                polisher, self.maxiter - iterations).solve()
        y64 = dual.lift(red, out_d)
        res64 = _residual(d, y64)
        solved = status_d == SOLVED
        lost = solved & (res64 > self.tol) & (res64 > 10 * best_d)
        y = y64.to(data_out.q.dtype)  # its residual: that of float64's solution, rounded
        res = res64 if y.dtype == torch.float64 else _residual(data_out, y).to(res64.dtype)
        keep = solved & ~lost
        # an unbounded dual is an infeasible primal; the dual is always feasible
        code = torch.where(status_d == DUAL_INFEASIBLE, PRIMAL_INFEASIBLE,
                           torch.where(status_d == PRIMAL_INFEASIBLE, MAX_ITERATIONS, status_d))
        out[index] = torch.where(keep[:, None], y, torch.full_like(y, math.nan))
        best[index] = torch.where(keep, res, torch.full_like(res, math.inf)).to(best.dtype)
        status[index] = code
        self._reduction = (index, red)
        return iterations, index[lost]

    def solve_adjoint(self, y: Tensor, theta: QPParams | tuple[Tensor, ...], v: Tensor
                      ) -> Tensor | None:
        """Hint for the engine (reverse mode): ``u`` solving ``∂yH(θ, y)ᵀ u = −v`` in closed
        form, for the ``y`` the last :meth:`run` returned (:func:`solvers.qp.dual.adjoint_solve`:
        the Cholesky factor of ``Q`` and ``S = C Q⁻¹ Cᵀ`` of the dual reduction are reused, so
        no ``(n+p+m)²`` matrix is formed). Items not solved (NaN) have identity rows: ``u = −v``.

        Args:
            y: the solution returned by the last ``run`` (same storage).
            theta: the ``θ`` of that run.
            v: shaped like ``y``.

        Returns:
            ``u`` shaped like ``y``, or ``None`` when the hint does not apply (another ``y``,
            items solved on the primal path because ``Q`` was singular or badly conditioned,
            or dependent active constraints, where ``∂yH`` is singular): the caller then
            differentiates ``H`` itself.
        """
        return self._closed_form(y, theta, v, dual.adjoint_solve, lambda x: -x)

    def solve_tangent(self, y: Tensor, theta: QPParams | tuple[Tensor, ...], r: Tensor
                      ) -> Tensor | None:
        """Hint for the engine (forward mode): ``ẏ`` solving ``∂yH(θ, y) ẏ = r`` in closed form
        (:func:`solvers.qp.dual.tangent_solve`), same conditions as :meth:`solve_adjoint`;
        items not solved have identity rows: ``ẏ = r``."""
        return self._closed_form(y, theta, r, dual.tangent_solve, lambda x: x)

    def _closed_form(self, y: Tensor, theta: QPParams | tuple[Tensor, ...], rhs: Tensor,
                     solve: Callable[[dual.DualQP, Tensor, Tensor], Tensor],
                     identity_row: Callable[[Tensor], Tensor]) -> Tensor | None:
        cache = getattr(self, "_reduction", None)
        if cache is None or len(cache) != 3 or cache[0] != y.data_ptr():
            return None
        _, index, red = cache
        P = QPParams(*(t.detach() for t in theta))
        N = y.shape[-1]
        y_flat = y.detach().reshape(-1, N)
        rhs_flat = rhs.reshape(-1, N)
        out = identity_row(rhs_flat).clone()
        solved = self.status.reshape(-1)[index] == SOLVED
        every = bool(solved.all())
        items = index if every else index[solved]
        whole = every and items.numel() == y_flat.shape[0] and bool(
            (items == torch.arange(items.numel(), device=items.device)).all())
        if items.numel():
            n, p = P.sizes[0], P.sizes[1]
            batch = P.batch_shape()

            def flat(t: Tensor, trailing: int) -> Tensor:  # the rows of ``items`` (or shared)
                core = t.shape[t.ndim - trailing:]
                if all(d == 1 for d in t.shape[:t.ndim - trailing]):
                    return t.reshape(1, *core)
                t = t.expand(*batch, *core).reshape(-1, *core)
                return t if whole else t[items]

            rows = y_flat if whole else y_flat[items]
            z, lam = rows[:, :n], rows[:, n + p:]
            slack = flat(P.h, 1) - _mv(flat(P.G, 2), z)
            inactive = lam - slack <= 0  # as in kkt_structure
            sub = red if every else dual.DualQP(
                *(t if t.shape[0] == 1 else t[solved] for t in red[:5]), red.p)
            rhs64 = (rhs_flat if whole else rhs_flat[items]).to(red.c.dtype)
            sol = solve(sub, inactive, rhs64)
            if not all_finite(sol):
                return None
            if whole:
                return sol.to(out.dtype).reshape(y.shape)
            out[items] = sol.to(out.dtype)
        return out.reshape(y.shape)

    def optimality(self, y: Tensor, theta: QPParams | tuple[Tensor, ...]) -> Tensor:
        """``H(θ, y)`` = :func:`~solvers.qp.kkt.kkt_mapping` (``H(θ, y*) = 0``).

        Batch items whose ``y`` is NaN (not solved, see ``status``) get ``H = y``: identity
        rows and no dependence on θ, so a derivative through the solved items of a partly
        failed batch is not polluted by the NaN ones."""
        failed = torch.isnan(y).any(-1, keepdim=True)
        if not bool(failed.any()):
            return kkt_mapping(y, theta)
        safe = torch.where(failed, torch.zeros_like(y), y)
        return torch.where(failed, y, kkt_mapping(safe, theta))

    def structure(self, y: Tensor, theta: QPParams | tuple[Tensor, ...]) -> Structure:
        """:func:`~solvers.qp.kkt.kkt_structure`: inactive inequality rows and kink distances."""
        return kkt_structure(y, theta)

    # -- reporting ---------------------------------------------------------------------------

    def _warn_status(self, status: Tensor, batch: torch.Size) -> None:
        bad = (status != SOLVED).nonzero().flatten().tolist()
        shown = []
        for flat in bad[:10]:
            index = _unravel(flat, batch)
            where = "the problem" if not batch else f"item {index}"
            shown.append(f"{where}: {STATUS[int(status[flat])]}")
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        hints = {
            PRIMAL_INFEASIBLE: "primal_infeasible: no z satisfies A z = b, G z ≤ h",
            DUAL_INFEASIBLE: "dual_infeasible: the objective is unbounded below on the "
                             "feasible set (Q singular along a feasible descent direction)",
            MAX_ITERATIONS: f"max_iterations: not solved in maxiter={self.maxiter} "
                            "iterations (raise maxiter, or rescale badly scaled data)",
        }
        codes = sorted({int(status[f]) for f in bad})
        warnings.warn(
            f"NativeQP: {len(bad)} of {status.numel()} QP(s) not solved, returned as NaN "
            f"(solver.status holds every code): {'; '.join(shown)}{more}. "
            + " ".join(hints[c] + "." for c in codes),
            QPStatusWarning,
            stacklevel=3,
        )


# -- data ------------------------------------------------------------------------------------


class _Data(NamedTuple):
    """The QP data flattened to ``B`` items; a parameter shared by every item keeps a leading
    dimension of 1 (it is broadcast, never copied)."""

    Q: Tensor
    q: Tensor
    G: Tensor
    h: Tensor
    A: Tensor
    b: Tensor
    B: int

    @staticmethod
    def of(P: QPParams, batch: torch.Size) -> tuple[_Data, float]:
        """The items as a flat batch (``Q`` symmetrised) and ``max |Q − Qᵀ|``."""
        B = int(batch.numel())

        def flat(t: Tensor, trailing: int) -> Tensor:
            lead = t.shape[:t.ndim - trailing]
            if all(d == 1 for d in lead):
                return t.reshape(1, *t.shape[t.ndim - trailing:])
            return t.expand(*batch, *t.shape[t.ndim - trailing:]).reshape(
                B, *t.shape[t.ndim - trailing:])

        Q = flat(P.Q, 2)
        sym = (Q + Q.mT) / 2  # symmetric up to round-off (checked): make it exact
        data = _Data(sym, flat(P.q, 1), flat(P.G, 2), flat(P.h, 1), flat(P.A, 2),
                     flat(P.b, 1), B)
        # max |Q − Qᵀ| = 2 max |Q − sym|: a contiguous pass instead of a second transposed read
        asym = 2 * float((Q - sym).abs().amax()) if Q.numel() else 0.0
        return data, asym

    def take(self, index: Tensor) -> _Data:
        """The items ``index`` (shared parameters stay shared; all items in order: no copy)."""
        if index.numel() == self.B and bool(
                (index == torch.arange(self.B, device=index.device)).all()):
            return self

        def pick(t: Tensor) -> Tensor:
            return t if t.shape[0] == 1 else t[index]

        return _Data(*(pick(t) for t in self[:6]), int(index.numel()))

    def params(self) -> QPParams:
        return QPParams(*self[:6])


def _as_qp(theta: QPParams | tuple[Tensor | None, ...]) -> QPParams:
    if isinstance(theta, Tensor) or not isinstance(theta, tuple) or len(theta) != 6:
        raise TypeError("theta must be a QPParams or a tuple (Q, q, G, h, A, b) (None or "
                        "zero-row tensors for absent constraints)")
    params = theta if isinstance(theta, CheckedQPParams) else as_params(*theta)
    return QPParams(*(t.detach() for t in params))


def _check_Q(Q: Tensor, asym: float, check_psd: bool) -> None:
    """``Q`` symmetric (``asym = max |Q − Qᵀ|`` within round-off) and, with ``check_psd``,
    positive semidefinite; else a ``ValueError`` naming the fix."""
    if Q.numel():
        low, high = Q.aminmax()  # one pass, no |Q| temporary
        scale = max(-float(low), float(high))
    else:
        scale = 0.0
    eps = torch.finfo(Q.dtype).eps
    if asym > 1e3 * eps * max(scale, 1.0):
        raise ValueError(
            f"Q is not symmetric (max |Q − Qᵀ| = {asym:.2e}): the QP only depends on "
            "(Q + Qᵀ)/2 but its KKT mapping uses Q z; pass Q = (Q + Q.mT) / 2 (or parameterise "
            "Q = L Lᵀ)"
        )
    if not check_psd or Q.numel() == 0:
        return
    sym = (Q + Q.mT) / 2
    n = Q.shape[-1]
    flat = sym.reshape(-1, n, n)
    # Cholesky of Q + 1e-8·max|Q|·I succeeds ⇒ PSD within the threshold; eigvalsh only
    # decides the (rare) items where it fails.
    shift = 1e-8 * scale + torch.finfo(Q.dtype).tiny
    eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
    _, info = torch.linalg.cholesky_ex(flat + 2 * shift * eye)
    doubt = (info != 0).nonzero().flatten()
    if doubt.numel() == 0:
        return
    eig = torch.linalg.eigvalsh(flat[doubt])[:, 0]
    bad = eig < -1e-8 * scale
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        item = int(doubt[first])
        index = _unravel(item, Q.shape[:-2])
        where = "" if Q.ndim == 2 else f" (Q[{str(index).strip('()').rstrip(',')}])"
        raise ValueError(
            f"Q is not positive semidefinite{where}: smallest eigenvalue "
            f"{float(eig[first]):.3e} < −1e-8·max|Q|; the QP is nonconvex. Pass a PSD "
            "Q (e.g. Q = L Lᵀ + εI), or NativeQP(check_psd=False) to skip this check"
        )


def _check_init(init: Tensor, batch: torch.Size, N: int, like: Tensor) -> Tensor:
    if not isinstance(init, Tensor) or not init.is_floating_point():
        raise TypeError("init must be a floating-point Tensor (a previous y = [z, ν, λ])")
    if init.dtype != like.dtype or init.device != like.device:
        raise ValueError(f"init is {init.dtype} on {init.device} but q is {like.dtype} on "
                         f"{like.device}")
    if init.shape[-1:] != (N,):
        raise ValueError(f"init has trailing size {init.shape[-1:]}, expected n + p + m = {N}")
    try:
        y0 = init.detach().expand(*batch, N)
    except RuntimeError as err:
        raise ValueError(f"init of shape {tuple(init.shape)} does not broadcast to the batch "
                         f"{tuple(batch)}") from err
    y0 = y0.reshape(-1, N)
    return torch.nan_to_num(y0, nan=0.0, posinf=0.0, neginf=0.0)  # NaN items: no guess


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...] | int:
    """The index of the ``flat``-th item of ``shape`` (an int for a 1-D batch)."""
    if len(shape) <= 1:
        return flat
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _mv(M: Tensor, v: Tensor) -> Tensor:
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _amax(x: Tensor) -> Tensor:
    """``‖x‖∞`` over the last dimension (0 for an empty one)."""
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[:-1])
    return x.abs().amax(-1)


def _residual(data: _Data, y: Tensor) -> Tensor:
    """``‖H(θ, y)‖∞`` per item (NaN counts as +inf)."""
    H = kkt_mapping(y, data.params())
    return torch.nan_to_num(_amax(H), nan=math.inf)


# -- linear algebra ---------------------------------------------------------------------------


def _use_lu(M: Tensor) -> bool:
    """Batched LU on accelerators (cuSOLVER/MAGMA batch it; ``ldl_factor`` loops over the
    batch there), batched ``LDLᵀ`` on CPU (see :class:`_Saddle`)."""
    return M.device.type != "cpu"


class _Saddle:
    """Solver of the symmetric saddle-point system ``[[H₀, Cᵀ], [C, −E]] [x; y] = [f; g]``
    (``H₀ ⪰ 0``, ``E`` diagonal ``≥ 0``), batched.

    The matrix regularised to ``[[H₀ + δI, Cᵀ], [C, −E − δ·hard]]`` (quasi-definite when ``C``
    has full row rank on the ``hard`` rows) is factorised once by a batched Bunch–Kaufman
    ``LDLᵀ`` on CPU (``torch.linalg.ldl_factor_ex``), by batched LU on accelerators (where
    ``ldl_factor`` is not batched); :meth:`solve` removes ``δ`` again by iterative refinement
    against the true matrix. (Not LU on CPU: torch's batched ``getrf`` was seen returning
    wrong pivots, or hanging, for ≥ 150 unknowns with several CPU threads (torch 2.13, MKL);
    not Cholesky + Schur complement: batched triangular solves with many right-hand sides
    are slow on CPU.)"""

    def __init__(self, H0: Tensor, C: Tensor, E: Tensor, delta: Tensor, hard: Tensor):
        k, n, p = H0.shape[0], H0.shape[-1], C.shape[-2]
        self.n = n
        M = torch.empty(k, n + p, n + p, dtype=H0.dtype, device=H0.device)
        M[:, :n, :n] = H0
        M[:, :n, n:] = C.mT
        M[:, n:, :n] = C
        M[:, n:, n:] = -torch.diag_embed(E)
        self.M = M
        reg = torch.cat([delta[:, None].expand(k, n), -delta[:, None] * hard], -1)
        self.lu = _use_lu(M)
        factor = torch.linalg.lu_factor_ex if self.lu else torch.linalg.ldl_factor_ex
        self.factor, self.pivots, self.info = factor(M + torch.diag_embed(reg))

    def _apply(self, r: Tensor) -> Tensor:
        solve = torch.linalg.lu_solve if self.lu else torch.linalg.ldl_solve
        return solve(self.factor, self.pivots, r.unsqueeze(-1)).squeeze(-1)

    def matvec(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The true system's product."""
        out = _mv(self.M, torch.cat([x, y], -1))
        return out[:, :self.n], out[:, self.n:]

    def apply(self, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """One solve with the regularised factorisation (no refinement)."""
        out = self._apply(torch.cat([f, g], -1))
        return out[:, :self.n], out[:, self.n:]

    def solve(self, f: Tensor, g: Tensor, refine: int = _REFINE) -> tuple[Tensor, Tensor]:
        r = torch.cat([f, g], -1)
        sol = self._apply(r)
        for _ in range(refine):
            sol = sol + self._apply(r - _mv(self.M, sol))
        bad = (self.info != 0)[:, None] | ~torch.isfinite(sol)
        sol = torch.where(bad, torch.full_like(sol, math.nan), sol)
        return sol[:, :self.n], sol[:, self.n:]


def _regularisation(data: _Data) -> Tensor:
    """Static regularisation ``δ = eps^¾ (1 + max|Q|)`` per item."""
    eps = torch.finfo(data.q.dtype).eps
    q_scale = _amax(data.Q.flatten(-2)) if data.Q.numel() else data.q.new_zeros(1)
    return (eps ** 0.75 * (1 + q_scale)).expand(data.B)


# -- polishing -------------------------------------------------------------------------------


def _polish(data: _Data, lam: Tensor, s: Tensor, tol: float, rounds: int = _ROUNDS
            ) -> tuple[Tensor, Tensor]:
    """Primal-dual active-set polishing from the guess ``λ_i > s_i``.

    Each round solves the KKT system with ``G_i z = h_i`` on the guessed active set and
    ``λ_i = 0`` elsewhere — one semismooth Newton step on the min-form mapping ``H`` — and
    guesses again from the result (``λ_i > h_i − G_i z``): a primal-dual active-set method,
    which corrects the few constraints an interior iterate leaves ambiguous. The point of
    smallest residual is kept; rounds stop once every item is within ``tol``.

    Returns:
        the candidate ``y`` (``(k, n+p+m)``) and its residual ``‖H‖∞`` (inf where not finite).
    """
    Q, q, G, h, A, b, k = data
    n, p, m = q.shape[-1], b.shape[-1], h.shape[-1]
    like = _like(q)
    best = torch.full((k, n + p + m), math.nan, **like)
    best_res = torch.full((k,), math.inf, **like)
    delta = _regularisation(data)
    for _ in range(rounds):
        act = (lam > s).to(q.dtype)  # (k, m)
        C = torch.cat([A.expand(k, p, n), G * act[..., :, None]], -2)
        E = torch.cat([torch.zeros(k, p, **like), 1 - act], -1)
        hard = torch.cat([torch.ones(k, p, **like), act], -1)
        system = _Saddle(Q.expand(k, n, n), C, E, delta, hard)
        z, y = system.solve((-q).expand(k, n),
                            torch.cat([b.expand(k, p), (h * act).expand(k, m)], -1), refine=3)
        sol = torch.cat([z, y], -1)
        res = _residual(data, sol)
        better = res < best_res
        best = torch.where(better[:, None], sol, best)
        best_res = torch.where(better, res, best_res)
        if bool((best_res <= tol).all()) or m == 0:
            break
        lam, s = y[:, p:], h - _mv(G, z)
    return best, best_res


def _dual_active_set(data: _Data, p: int, lam: Tensor, slack: Tensor, tol: float,
                     rounds: int) -> tuple[Tensor, Tensor, int]:
    """Primal-dual active-set rounds (:func:`solvers.qp.dual.active_set_step`) on the dual QP
    ``data`` (``Q = S``, ``q = c``) from the guess ``λ_i > slack_i``; an item leaves once its
    residual ``‖H‖∞`` is ``≤ tol``. Returns the best dual point of each item and its residual
    (inf where none was finite)."""
    k, r = data.B, data.q.shape[-1] + lam.shape[-1]
    best = torch.full((k, r), math.nan, **_like(data.q))
    best_res = torch.full((k,), math.inf, **_like(data.q))
    todo = torch.arange(k, device=data.q.device)
    sub = data
    done = 0
    while done < rounds:
        done += 1
        cand, lam, slack = dual.active_set_step(sub.Q, sub.q, p, lam, slack)
        res = _residual(sub, cand)
        better = res < best_res[todo]
        best[todo[better]], best_res[todo[better]] = cand[better], res[better]
        left = res > tol
        if not bool(left.any()):
            break
        if not bool(left.all()):
            keep = left.nonzero().flatten()
            todo, lam, slack, sub = todo[keep], lam[keep], slack[keep], sub.take(keep)
    return best, best_res, done


Polisher = Callable[[_Data, Tensor, Tensor, float], tuple[Tensor, Tensor]]


# -- the interior-point method ---------------------------------------------------------------


class _Hsde:
    """One HSDE solve over the items ``index`` of the batch; writes finished items into
    ``out``, ``best`` (their residual) and ``status``."""

    def __init__(self, solver: NativeQP, data: _Data, index: Tensor, out: Tensor,
                 best: Tensor, status: Tensor, polisher: Polisher | None = None,
                 maxiter: int | None = None):
        self.solver, self.data, self.index = solver, data, index
        self.maxiter = solver.maxiter if maxiter is None else maxiter
        self.polisher = _polish if polisher is None else polisher
        self.out, self.best, self.status = out, best, status
        q = data.q
        self.n, self.p, self.m = q.shape[-1], data.b.shape[-1], data.h.shape[-1]
        k, like = data.B, {"dtype": q.dtype, "device": q.device}
        self.z = torch.zeros(k, self.n, **like)
        self.nu = torch.zeros(k, self.p, **like)
        self.lam = torch.ones(k, self.m, **like)
        self.s = torch.ones(k, self.m, **like)
        self.tau = torch.ones(k, **like)
        self.kap = torch.ones(k, **like)
        eps = torch.finfo(q.dtype).eps
        self.eps_final = 100 * eps  # IPM criteria at round-off level: stop
        self.eps_polish = eps ** 0.25  # IPM criteria at which polishing is tried
        self.merit = torch.full((k,), math.inf, **like)  # best relative IPM error so far
        self.stalled = torch.zeros(k, dtype=torch.long, device=q.device)  # checks without gain
        self.eps_inf = math.sqrt(eps)  # certificate tolerance

    # -- bookkeeping ---------------------------------------------------------------------------

    def _keep(self, keep: Tensor) -> None:
        for name in ("z", "nu", "lam", "s", "tau", "kap", "merit", "stalled"):
            setattr(self, name, getattr(self, name)[keep])
        self.index = self.index[keep]
        self.data = self.data.take(keep.nonzero().flatten())

    def _finish(self, done: Tensor, code: Tensor, y: Tensor, res: Tensor) -> None:
        """Write the items ``done`` (mask) with status ``code`` and point ``y``."""
        where = self.index[done]
        solved = code[done] == SOLVED
        y_done = torch.where(solved[:, None], y[done], torch.full_like(y[done], math.nan))
        self.out[where] = y_done
        self.best[where] = torch.where(solved, res[done], torch.full_like(res[done], math.inf))
        self.status[where] = code[done]
        self._keep(~done)

    # -- main loop ------------------------------------------------------------------------------

    def solve(self) -> int:
        iterations = 0
        while True:
            self._check(final=iterations == self.maxiter)
            if self.index.numel() == 0 or iterations == self.maxiter:
                return iterations
            self._step()
            iterations += 1

    def _check(self, final: bool) -> None:
        """Termination tests on the current iterate: solved (polished or at round-off level),
        infeasibility certificates, and (``final``) the iteration cap."""
        d = self.data
        z, nu, lam, s, tau, kap = self.z, self.nu, self.lam, self.s, self.tau, self.kap
        t = tau[:, None]
        x, nu_, lam_, s_ = z / t, nu / t, lam / t, s / t
        Qx, Ax, Gx = _mv(d.Q, x), _mv(d.A, x), _mv(d.G, x)
        ATnu, GTlam = _mv(d.A.mT, nu_), _mv(d.G.mT, lam_)
        pres = torch.maximum(_amax(Ax - d.b), _amax(Gx + s_ - d.h))
        dres = _amax(Qx + d.q + ATnu + GTlam)
        xQx = _dot(x, Qx)
        pobj = 0.5 * xQx + _dot(d.q, x)
        dobj = -0.5 * xQx - _dot(d.b, nu_) - _dot(d.h, lam_)
        scale_p = 1 + torch.stack([_amax(d.b).expand_as(pres), _amax(d.h).expand_as(pres),
                                   _amax(Ax), _amax(Gx)]).amax(0)
        scale_d = 1 + torch.stack([_amax(d.q).expand_as(dres), _amax(Qx), _amax(ATnu),
                                   _amax(GTlam)]).amax(0)
        scale_g = 1 + torch.minimum(pobj.abs(), dobj.abs())
        gap = torch.maximum((pobj - dobj).abs(), _dot(s_, lam_))

        def near(e: float) -> Tensor:
            return (pres <= e * scale_p) & (dres <= e * scale_d) & (gap <= e * scale_g)

        # progress: the relative error of the iterate; an item whose error has not dropped by
        # 10% in _STALL checks has reached what this dtype allows
        merit = torch.stack([pres / scale_p, dres / scale_d, gap / scale_g]).amax(0)
        merit = torch.nan_to_num(merit, nan=math.inf)
        gain = merit < 0.9 * self.merit
        self.stalled = torch.where(gain, 0, self.stalled + 1)
        self.merit = torch.minimum(self.merit, merit)
        stalled = self.stalled >= _STALL

        k = self.index.numel()
        code = torch.full((k,), -1, dtype=torch.long, device=z.device)
        y = torch.cat([x, nu_, lam_], -1)
        res = torch.full((k,), math.inf, dtype=z.dtype, device=z.device)
        ready = near(self.eps_polish) | final
        if bool(ready.any()):
            sub = ready.nonzero().flatten()
            y_raw = y[sub]
            cand, r_cand = self.polisher(d.take(sub), lam_[sub], s_[sub], self.solver.tol)
            r_raw = _residual(d.take(sub), y_raw)
            better = r_cand < r_raw
            y[sub] = torch.where(better[:, None], cand, y_raw)
            res[sub] = torch.minimum(r_cand, r_raw)
        # solved: within tol, or at the round-off level of the dtype (then reported by a
        # ConvergenceWarning when above tol)
        roundoff = 100 * torch.finfo(z.dtype).eps * torch.maximum(scale_p, scale_d)
        done = (res <= self.solver.tol) | (res <= roundoff) | near(self.eps_final) | stalled
        converged = ready & done
        code = torch.where(converged, SOLVED, code)
        # infeasibility certificates (the embedding's τ → 0, κ > 0)
        e = self.eps_inf
        infeasible = (kap > tau) & ~converged
        g = _dot(d.h, lam) + _dot(d.b, nu)
        farkas = _amax(_mv(d.G.mT, lam) + _mv(d.A.mT, nu))
        primal_inf = infeasible & (g < 0) & (farkas <= e * g.abs())
        qd = _dot(d.q, z)
        tiny = e * qd.abs()
        Gz = _mv(d.G, z)
        ray = (_amax(_mv(d.Q, z)) <= tiny) & (_amax(_mv(d.A, z)) <= tiny)
        if self.m:
            ray &= Gz.amax(-1).clamp(min=0) <= tiny
        dual_inf = infeasible & ~primal_inf & (qd < 0) & ray
        code = torch.where(primal_inf, PRIMAL_INFEASIBLE, code)
        code = torch.where(dual_inf, DUAL_INFEASIBLE, code)
        broken = ~torch.isfinite(torch.cat([z, nu, lam, s, tau[:, None], kap[:, None]], -1)
                                 ).all(-1)
        code = torch.where((code < 0) & broken, MAX_ITERATIONS, code)
        if final:
            code = torch.where(code < 0, MAX_ITERATIONS, code)
        done = code >= 0
        if bool(done.any()):
            self._finish(done, code, y, res)

    def _step(self) -> None:
        """One Mehrotra predictor–corrector step on every remaining item."""
        d = self.data
        z, nu, lam, s, tau, kap = self.z, self.nu, self.lam, self.s, self.tau, self.kap
        n, p, m = self.n, self.p, self.m
        k = z.shape[0]
        Qz = _mv(d.Q, z)
        zQz = _dot(z, Qz)
        t = tau[:, None]
        rx = Qz + _mv(d.A.mT, nu) + _mv(d.G.mT, lam) + d.q * t
        rnu = _mv(d.A, z) - d.b * t
        rlam = _mv(d.G, z) + s - d.h * t
        rtau = kap + zQz / tau + _dot(d.q, z) + _dot(d.b, nu) + _dot(d.h, lam)
        mu = (_dot(s, lam) + tau * kap) / (m + 1)

        # the bordered reduced system [[K, col], [rowᵀ, corner]], K = [[Q + GᵀWG, Aᵀ], [A, 0]]
        W = lam / s
        GW = d.G.mT * W[:, None, :]  # (k, n, m)
        hk = d.h.expand(k, m)
        GWh = _mv(GW, hk)
        K = _Saddle(d.Q + GW @ d.G, d.A.expand(k, p, n), torch.zeros(k, p, **_like(z)),
                    _regularisation(d), torch.ones(k, p, **_like(z)))
        col_x, col_y = d.q - GWh, -d.b.expand(k, p)
        row_x = 2 * Qz / t + d.q + GWh
        row_y = d.b.expand(k, p)
        corner = -kap / tau - zQz / tau**2 - _dot(hk * W, hk)
        # (a, β) = K⁻¹(−col); the Schur complement of the border, corner − rowᵀK⁻¹col, written
        # so that the large terms of W meet only through Ga − h (≈ the step of λ over W)
        a, beta = K.solve(-col_x, -col_y, refine=1)
        schur = (-kap / tau - zQz / tau**2 + _dot(row_x - GWh, a) + _dot(row_y, beta)
                 + _dot(hk * W, _mv(d.G, a) - hk))

        def bordered(f: Tensor, g: Tensor, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            x, y = K.apply(f, g)
            dt = (phi - _dot(row_x, x) - _dot(row_y, y)) / schur
            return x + dt[:, None] * a, y + dt[:, None] * beta, dt

        def bordered_refined(f: Tensor, g: Tensor, phi: Tensor) -> tuple[Tensor, ...]:
            x, y, dt = bordered(f, g, phi)
            for _ in range(_REFINE):
                rf, rg = K.matvec(x, y)
                rf = rf + col_x * dt[:, None]
                rg = rg + col_y * dt[:, None]
                rp = _dot(row_x, x) + _dot(row_y, y) + corner * dt
                ex, ey, et = bordered(f - rf, g - rg, phi - rp)
                x, y, dt = x + ex, y + ey, dt + et
            return x, y, dt

        def direction(eta: Tensor, d_s: Tensor, d_k: Tensor) -> tuple[Tensor, ...]:
            r3 = -eta[:, None] * rlam + d_s / lam
            dz, dnu, dtau = bordered_refined(
                -eta[:, None] * rx + _mv(GW, r3), -eta[:, None] * rnu,
                -eta * rtau + d_k / tau + _dot(hk * W, r3))
            dlam = W * (_mv(d.G, dz) - r3 - hk * dtau[:, None])
            ds = -(d_s + s * dlam) / lam
            dkap = -(d_k + kap * dtau) / tau
            return dz, dnu, dlam, ds, dtau, dkap

        def max_step(dlam: Tensor, ds: Tensor, dtau: Tensor, dkap: Tensor) -> Tensor:
            v = torch.cat([lam, s, tau[:, None], kap[:, None]], -1)
            dv = torch.cat([dlam, ds, dtau[:, None], dkap[:, None]], -1)
            ratio = torch.where(dv < 0, -v / dv.clamp(max=-torch.finfo(v.dtype).tiny),
                                torch.full_like(v, math.inf))
            alpha = ratio.amin(-1).clamp(max=1.0)
            return torch.nan_to_num(alpha, nan=0.0)

        ones = torch.ones_like(tau)
        aff = direction(ones, s * lam, tau * kap)
        alpha_aff = max_step(aff[2], aff[3], aff[4], aff[5])
        sigma = (1 - alpha_aff) ** 3
        d_s = s * lam + aff[3] * aff[2] - sigma[:, None] * mu[:, None]
        d_k = tau * kap + aff[4] * aff[5] - sigma * mu
        dz, dnu, dlam, ds, dtau, dkap = direction(1 - sigma, d_s, d_k)
        alpha = (_STEP * max_step(dlam, ds, dtau, dkap)).clamp(max=1.0)
        finite = torch.isfinite(torch.cat([dz, dnu, dlam, ds, dtau[:, None], dkap[:, None]],
                                          -1)).all(-1)
        a = torch.where(finite, alpha, torch.zeros_like(alpha))
        a2 = a[:, None]
        self.z = z + a2 * torch.nan_to_num(dz)
        self.nu = nu + a2 * torch.nan_to_num(dnu)
        self.lam = lam + a2 * torch.nan_to_num(dlam)
        self.s = s + a2 * torch.nan_to_num(ds)
        self.tau = tau + a * torch.nan_to_num(dtau)
        self.kap = kap + a * torch.nan_to_num(dkap)


def _like(x: Tensor) -> dict:
    return {"dtype": x.dtype, "device": x.device}
