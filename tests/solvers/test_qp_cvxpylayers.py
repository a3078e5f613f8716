"""CvxpyQP (cvxpylayers forward pass, KKT-mapping derivatives) against independent references:
cvxpy + Clarabel at tight tolerance for y* = [z, ν, λ], cvxpylayers' own backward at tight SCS
tolerance and central differences for the hypergradient."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from cvxpylayers.torch import CvxpyLayer

import bilevel
from solvers.qp import NativeQP
from solvers.qp.cvxpylayers_backend import CvxpyQP
from solvers.qp.kkt import kkt_mapping
from tests.helpers import assert_directional

N, M, P, B = 6, 5, 1, 3
DT = torch.float64
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10}
MARGIN = 1e-3  # every constraint strictly active (λ > MARGIN) or strictly inactive


def _problem(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch of ``B`` QPs with some active inequalities and one equality (feasible z = 0)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(B, N, N, generator=g, dtype=DT)
    Q = R @ R.mT / N + 0.5 * torch.eye(N, dtype=DT)
    q = 3 * torch.randn(B, N, generator=g, dtype=DT)
    G = torch.randn(B, M, N, generator=g, dtype=DT)
    h = 0.1 + torch.rand(B, M, generator=g, dtype=DT)
    A = torch.randn(B, P, N, generator=g, dtype=DT)
    b = 0.1 * torch.randn(B, P, generator=g, dtype=DT)
    return Q, q, G, h, A, b


def _cvxpy_reference(theta: tuple[torch.Tensor, ...]) -> np.ndarray:
    """``[z, ν, λ]`` per item from cvxpy + Clarabel (quad_form, tight tolerances)."""
    out = []
    for Q, q, G, h, A, b in zip(*(t.numpy() for t in theta), strict=True):
        z = cp.Variable(N)
        eq, ineq = A @ z == b, G @ z <= h
        cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, cp.psd_wrap(Q)) + q @ z), [eq, ineq]).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        out.append(np.concatenate([z.value, eq.dual_value, ineq.dual_value]))
    return np.stack(out)


@pytest.fixture(scope="module")
def solved():
    theta = _problem()
    solver = CvxpyQP(N, M, P)
    y = solver.run(theta)
    return solver, theta, y


def _loss_weights() -> torch.Tensor:
    return torch.randn(B, N + P + M, generator=torch.Generator().manual_seed(7), dtype=DT)


def test_point_is_nondegenerate(solved):
    """The derivative checks below need strict complementarity with a margin."""
    _, (Q, q, G, h, A, b), y = solved
    z, lam = y[..., :N], y[..., N + P:]
    slack = h - (G @ z.unsqueeze(-1)).squeeze(-1)
    assert bool(((lam > MARGIN) | (slack > MARGIN)).all())
    assert 0 < int((lam > MARGIN).sum()) < B * M  # both active and inactive constraints


def test_matches_cvxpy_primal_and_duals(solved):
    solver, theta, y = solved
    ref = torch.from_numpy(_cvxpy_reference(theta))
    assert y.shape == (B, N + P + M) and y.dtype == DT and solver.batch_ndim == 1
    assert float((y[..., :N] - ref[..., :N]).abs().max()) <= 1e-6
    assert float((y[..., N:] - ref[..., N:]).abs().max()) <= 1e-5
    assert float(kkt_mapping(y, theta).abs().max()) <= 1e-8
    assert solver.info.converged and solver.info.residual <= 1e-8


def test_hypergradient_matches_cvxpylayers_backward(solved):
    solver, theta, _ = solved
    Q, q, G, h, A, b = theta
    w = _loss_weights()

    q1, h1 = q.clone().requires_grad_(), h.clone().requires_grad_()
    y = bilevel.implicit_solve(solver, (Q, q1, G, h1, A, b))
    (y * w).sum().backward()

    # cvxpylayers' own derivative (diffcp backward) on an independently built layer
    z = cp.Variable(N)
    Lp, qp, Gp, hp, Ap, bp = (cp.Parameter((N, N)), cp.Parameter(N), cp.Parameter((M, N)),
                              cp.Parameter(M), cp.Parameter((P, N)), cp.Parameter(P))
    eq, ineq = Ap @ z == bp, Gp @ z <= hp
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lp @ z) + qp @ z), [eq, ineq])
    layer = CvxpyLayer(problem, [Lp, qp, Gp, hp, Ap, bp],
                       [z, eq.dual_variables[0], ineq.dual_variables[0]])
    q2, h2 = q.clone().requires_grad_(), h.clone().requires_grad_()
    # at eps 1e-9 SCS's own derivative is off by ~2.6e-7 on this problem (it moves towards
    # ours as eps tightens: 3.9e-8 at 1e-10), so the ≤ 1e-7 check uses 1e-10
    zs, nus, lams = layer(torch.linalg.cholesky(Q).mT, q2, G, h2, A, b, solver_args=TIGHT)
    (torch.cat([zs, nus, lams], -1) * w).sum().backward()

    for ours, ref in ((q1.grad, q2.grad), (h1.grad, h2.grad)):
        assert float((ours - ref).norm() / ref.norm()) <= 1e-7

    # the native backend, an independent solver, gives the same derivative to round-off
    q3, h3 = q.clone().requires_grad_(), h.clone().requires_grad_()
    y = bilevel.implicit_solve(NativeQP(), (Q, q3, G, h3, A, b))
    (y * w).sum().backward()
    for native, ours in ((q3.grad, q1.grad), (h3.grad, h1.grad)):
        assert float((native - ours).norm() / ours.norm()) <= 1e-9


def test_hypergradient_central_differences(solved):
    solver, theta, _ = solved
    Q, q, G, h, A, b = theta
    w = _loss_weights()
    q1, h1 = q.clone().requires_grad_(), h.clone().requires_grad_()
    y = bilevel.implicit_solve(solver, (Q, q1, G, h1, A, b))
    (y * w).sum().backward()
    grad = torch.cat([q1.grad.flatten(), h1.grad.flatten()])

    fd_solver = CvxpyQP(N, M, P)

    def f(qh: torch.Tensor) -> float:
        qq, hh = qh[:B * N].reshape(B, N), qh[B * N:].reshape(B, M)
        return float((fd_solver.run((Q, qq, G, hh, A, b)) * w).sum())

    assert_directional(grad, f, torch.cat([q.flatten(), h.flatten()]), h=1e-4, rtol=1e-4)


def test_broadcast_float32_and_semidefinite_q():
    """Unbatched Q broadcast over a (2, 2) batch of q; a rank-deficient Q (eigen-factor route,
    no jitter); float32 in, float32 out."""
    g = torch.Generator().manual_seed(3)
    R = torch.randn(N, N - 2, generator=g, dtype=DT)
    Q = R @ R.mT  # rank N-2: Cholesky fails, L from the eigendecomposition
    q = torch.randn(2, 2, N, generator=g, dtype=DT)
    G = torch.cat([torch.eye(N, dtype=DT), -torch.eye(N, dtype=DT)])  # box |z_i| ≤ 1
    h = torch.ones(2 * N, dtype=DT)
    A, b = torch.zeros(0, N, dtype=DT), torch.zeros(0, dtype=DT)
    solver = CvxpyQP(N, 2 * N, 0)
    y = solver.run((Q, q, G, h, A, b))
    assert y.shape == (2, 2, 3 * N) and solver.batch_ndim == 2
    assert float(kkt_mapping(y, (Q, q, G, h, A, b)).abs().max()) <= 1e-8
    y32 = solver.run(tuple(t.float() for t in (Q, q, G, h, A, b)))
    assert y32.dtype == torch.float32
    assert float((y32.double() - y).abs().max()) <= 1e-5


def test_infeasible_item_fails_the_batch_with_a_clear_error():
    Q, q, G, h, A, b = _problem()
    G, h = G.clone(), h.clone()
    G[1, 0], G[1, 1] = 0.0, 0.0
    G[1, 0, 0], G[1, 1, 0] = 1.0, -1.0
    h[1, 0], h[1, 1] = -1.0, -1.0  # z_0 ≤ -1 and z_0 ≥ 1
    with pytest.raises(ValueError, match="infeasible or unbounded.*backend='native'"):
        CvxpyQP(N, M, P).run((Q, q, G, h, A, b))


def test_bad_arguments():
    Q, q, G, h, A, b = _problem()
    with pytest.raises(ValueError, match="built for n=6, m=4"):
        CvxpyQP(N, M - 1, P).run((Q, q, G, h, A, b))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        CvxpyQP(N, M, P).run((-Q, q, G, h, A, b))
    with pytest.raises(ValueError, match="not symmetric"):
        CvxpyQP(N, M, P).run((Q + torch.triu(torch.ones(N, N, dtype=DT), 1), q, G, h, A, b))
