"""A convex QP solved by cvxpylayers' forward pass, differentiated by the KKT mapping.

Problem (leading batch dimensions allowed, parameters broadcast against each other):

    min_z ½ zᵀQz + qᵀz   s.t.  A z = b  (p rows),  G z ≤ h  (m rows),

with ``Q`` symmetric positive semidefinite. ``run`` returns ``y = [z, ν, λ]`` (primal solution
and the multipliers of the equalities and inequalities), so that the engine differentiates the
solution through :func:`solvers.qp.kkt.kkt_mapping`,

    H(θ, y) = [Qz + q + Aᵀν + Gᵀλ,  Az − b,  λ − max(0, λ + Gz − h)],   H(θ, y*) = 0,

and never through cvxpylayers' own backward pass: the layer is called under ``torch.no_grad()``
(diffcp then only solves, it builds no derivative). Kinks and inactive rows of ``∂yH`` are those
of the KKT mapping (:func:`~solvers.qp.kkt.kkt_structure`).

How the layer is built (once, in ``__init__``):

- The quadratic term is written ``½‖L z‖²`` with a parameter ``L (n×n)``: a parameter times a
  variable is DPP, and diffcp's conic canonicalisation needs the objective in that form
  (``cp.quad_form(z, Q)`` with a parameter ``Q`` is accepted by cvxpylayers only for its QP
  backends MOREAU/CUCLARABEL/MPAX, none of them installed by default). ``run`` factors the
  symmetric part of the caller's ``Q`` as ``Q = LᵀL``: ``L = Cᵀ`` from the Cholesky factor
  ``C`` where ``Q`` is positive definite, and ``L = diag(√w₊) Vᵀ`` from the eigendecomposition
  ``Q = V diag(w) Vᵀ`` where Cholesky fails (semidefinite ``Q``, e.g. an LP). Both are exact:
  no jitter is added, so the problem solved is the caller's.
- **Duals.** cvxpylayers 1.2 returns dual variables when a constraint's
  ``constraint.dual_variables[0]`` is listed among the layer's ``variables`` (it reads them from
  the conic dual vector). This is the route used: ``ν`` and ``λ`` come from the solver itself,
  not from a KKT reconstruction. Their sign convention is cvxpy's, the one of ``kkt_mapping``
  (``λ ≥ 0``, stationarity ``Qz + q + Aᵀν + Gᵀλ = 0``).
- Solver: cvxpylayers' default DIFFCP, whose forward pass is SCS by default. At SCS's default
  tolerances solutions (hence derivatives) are off by about 1e-3, so the default
  ``solver_args`` are ``{"eps_abs": 1e-10, "eps_rel": 1e-10}``: the KKT residual is then
  about 1e-12 on small, well-scaled problems. diffcp can also run Clarabel
  (``solver_args={"solve_method": "Clarabel", "tol_gap_abs": …}``), but through diffcp's conic
  form (second-order cone for ``½‖Lz‖²``) it stalls near 1e-7, less accurate than SCS here;
  diffcp also skips Clarabel's status check, so an infeasible item then shows only as a large
  KKT residual (a ConvergenceWarning), not as the ValueError below.

Batches: cvxpylayers takes one batch dimension; the broadcast leading dimensions of the
parameters are flattened into it and restored on return (``batch_ndim`` is set to their count).
One infeasible or unbounded item makes diffcp fail the whole batch: ``run`` then raises a
``ValueError`` pointing to the native backend, which reports a status per item.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from solvers.base import SolveInfo, Structure, check_stopping, warn_not_converged
from solvers.qp.kkt import QPParams, as_params, kkt_mapping, kkt_structure

DEFAULT_SOLVER_ARGS: dict[str, Any] = {"eps_abs": 1e-10, "eps_rel": 1e-10}
_HINT = ("Tighten solver_args (eps_abs/eps_rel for SCS), rescale the problem, or use "
         "backend='native'.")


class CvxpyQP:
    """Solve a batch of convex QPs with cvxpylayers (forward pass only); ``y = [z, ν, λ]``.

    Args:
        n: number of variables.
        m: number of inequality rows (``G z ≤ h``); ``0`` for none.
        p: number of equality rows (``A z = b``); ``0`` for none.
        solver_args: keyword arguments for diffcp's solve (cvxpylayers' ``solver_args``);
            default ``{"eps_abs": 1e-10, "eps_rel": 1e-10}`` (SCS at tight tolerances; see the
            module docstring).
        tol: tolerance on the KKT residual ``max ‖H(θ, y)‖_∞`` that ``info.converged`` reports;
            above it a :class:`~solvers.base.ConvergenceWarning` is raised.

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last ``run`` (``iterations`` is 1: the
            layer does not expose the solver's iteration count).
        batch_ndim: leading dimensions of the last ``y`` that index independent problems.
        tol, solver_args: as given.

    Raises:
        ValueError: invalid sizes or ``tol``.
    """

    def __init__(self, n: int, m: int, p: int, *, solver_args: dict[str, Any] | None = None,
                 tol: float = 1e-7):
        for name, value, least in (("n", n, 1), ("m", m, 0), ("p", p, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int ≥ {least}, got {value!r}")
        check_stopping(tol)
        self.n, self.m, self.p = n, m, p
        self.tol = tol
        self.solver_args = dict(DEFAULT_SOLVER_ARGS if solver_args is None else solver_args)
        self.batch_ndim = 0
        self.info: SolveInfo | None = None
        self._layer = _build_layer(n, m, p)

    # -- protocol ----------------------------------------------------------------------------

    def run(self, theta: QPParams | tuple[Tensor, ...], init: Tensor | None = None) -> Tensor:
        """Solve the QPs of ``theta = (Q, q, G, h, A, b)``; returns ``y* = [z, ν, λ]``.

        Args:
            theta: a :class:`~solvers.qp.kkt.QPParams` or the tuple ``(Q, q, G, h, A, b)``
                (``G, h`` with ``m`` rows and ``A, b`` with ``p`` rows; zero-row tensors when
                absent). Leading dimensions broadcast into the batch.
            init: ignored (cvxpylayers' DIFFCP backend does not warm-start).

        Returns:
            ``y*`` of shape ``(*batch, n + p + m)`` on the dtype and device of ``theta``
            (cvxpylayers solves in float64 on the CPU; the result is cast back).

        Raises:
            ValueError: malformed ``theta`` (the message names the argument), sizes other than
                ``(n, m, p)``, a ``Q`` that is not symmetric positive semidefinite, or a batch
                that contains an infeasible or unbounded item.

        Warns:
            ConvergenceWarning: the KKT residual is above ``tol``.
        """
        P = as_params(*theta)
        n, p, m = P.sizes
        if (n, m, p) != (self.n, self.m, self.p):
            raise ValueError(
                f"theta has n={n}, m={m}, p={p} but this CvxpyQP was built for n={self.n}, "
                f"m={self.m}, p={self.p}: build one CvxpyQP per problem size"
            )
        batch = P.batch_shape()
        self.batch_ndim = len(batch)
        dtype, device = P.q.dtype, P.q.device
        B = math.prod(batch)
        if B == 0:
            self.info = SolveInfo(0, 0.0, self.tol, True)
            return torch.zeros((*batch, n + p + m), dtype=dtype, device=device)

        flat = QPParams(*(_flat(t.detach(), batch, nd) for t, nd in zip(P, (2, 1, 2, 1, 2, 1),
                                                                          strict=True)))
        L = _factor(flat.Q, torch.finfo(dtype).eps)
        args = [L, flat.q]
        args += [flat.G, flat.h] if m else []
        args += [flat.A, flat.b] if p else []
        with torch.no_grad():
            outputs = self._solve(args)
        z = outputs[0]
        nu = outputs[1] if p else z.new_zeros(B, 0)
        lam = outputs[-1] if m else z.new_zeros(B, 0)
        y64 = torch.cat([z, nu, lam], dim=-1)
        if not torch.isfinite(y64).all():
            raise ValueError(
                "cvxpylayers returned non-finite values: the batch contains an infeasible or "
                "unbounded item (or a numerically failed solve). Use backend='native', which "
                "reports a status per batch item."
            )
        residual = float(kkt_mapping(y64, flat).abs().max()) if y64.numel() else 0.0
        self.info = SolveInfo(1, residual, self.tol, residual <= self.tol)
        if not self.info.converged:
            warn_not_converged("CvxpyQP", self.info, _HINT)
        return y64.reshape(*batch, n + p + m).to(dtype=dtype, device=device)

    def optimality(self, y: Tensor, theta: QPParams | tuple[Tensor, ...]) -> Tensor:
        """``H(θ, y)``, the KKT mapping of :mod:`solvers.qp.kkt`; ``H(θ, y*) = 0``."""
        return kkt_mapping(y, theta)

    def structure(self, y: Tensor, theta: QPParams | tuple[Tensor, ...]) -> Structure:
        """Inactive inequality rows and kink distances (:func:`~solvers.qp.kkt.kkt_structure`)."""
        return kkt_structure(y, theta)

    # -- internals -----------------------------------------------------------------------------

    def _solve(self, args: list[Tensor]) -> tuple[Tensor, ...]:
        from diffcp.cone_program import SolverError

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outputs = self._layer(*args, solver_args=self.solver_args)
            except SolverError as err:
                raise ValueError(
                    f"cvxpylayers failed on the batch ({err}): the batch contains an "
                    "infeasible or unbounded item, and diffcp fails the whole batch for one "
                    "item. Use backend='native', which reports a status per batch item."
                ) from err
        for w in caught:
            text = str(w.message)
            # diffcp's "Solved/Inaccurate." is reported by run's KKT-residual check; numpy 2's
            # "__array__ … copy keyword" comes from cvxpylayers converting tensors (its noise).
            if "Inaccurate" not in text and "copy keyword" not in text:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return outputs


def _build_layer(n: int, m: int, p: int) -> Any:
    """The parametrised cvxpy problem and its ``CvxpyLayer`` (imports cvxpy lazily)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    z = cp.Variable(n)
    L = cp.Parameter((n, n))
    q = cp.Parameter(n)
    parameters = [L, q]
    variables = [z]
    constraints = []
    if m:
        G, h = cp.Parameter((m, n)), cp.Parameter(m)
        ineq = G @ z <= h
        parameters += [G, h]
        constraints.append(ineq)
    if p:
        A, b = cp.Parameter((p, n)), cp.Parameter(p)
        eq = A @ z == b
        parameters += [A, b]
        constraints.append(eq)
        variables.append(eq.dual_variables[0])
    if m:
        variables.append(ineq.dual_variables[0])
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ z) + q @ z), constraints)
    if not problem.is_dpp():  # pragma: no cover - guards a cvxpy behaviour change
        raise RuntimeError("the parametrised QP is not DPP: cvxpy changed its DPP rules")
    return CvxpyLayer(problem, parameters=parameters, variables=variables)


def _flat(t: Tensor, batch: torch.Size, ndim: int) -> Tensor:
    """``t`` broadcast to ``batch`` and flattened to ``(B, …)``, float64 on the CPU."""
    core = t.shape[t.ndim - ndim:]
    B = math.prod(batch)
    return t.to(dtype=torch.float64, device="cpu").expand(*batch, *core).reshape(B, *core)


def _factor(Q: Tensor, eps: float) -> Tensor:
    """``L`` with ``LᵀL = Q`` for each ``Q (B, n, n)`` symmetric PSD (see the module docstring);
    ``eps`` is the machine epsilon of the caller's dtype (round-off allowed in ``Q``).

    Raises:
        ValueError: ``Q`` not symmetric, or with a negative eigenvalue beyond round-off.
    """
    n = Q.shape[-1]
    round_off = 100 * n * eps
    scale = Q.abs().amax(dim=(-2, -1)).clamp(min=1e-300)
    asym = (Q - Q.mT).abs().amax(dim=(-2, -1)) / scale
    if bool((asym > round_off).any()):
        item = int((asym > round_off).nonzero()[0])
        raise ValueError(
            f"Q of batch item {item} is not symmetric (relative asymmetry {float(asym[item]):.1e})"
            ": pass the symmetric matrix (Q + Qᵀ)/2 of the quadratic form"
        )
    Q = (Q + Q.mT) / 2
    C, info = torch.linalg.cholesky_ex(Q)
    L = C.mT.clone()
    failed = (info != 0).nonzero().flatten()
    if failed.numel():
        w, V = torch.linalg.eigh(Q[failed])
        floor = -round_off * w.abs().amax(-1).clamp(min=1e-300)
        bad = w[:, 0] < floor
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"Q of batch item {int(failed[k])} is not positive semidefinite (smallest "
                f"eigenvalue {float(w[k, 0]):.3e}): the QP is not convex"
            )
        L[failed] = w.clamp(min=0).sqrt().unsqueeze(-1) * V.mT
    return L
