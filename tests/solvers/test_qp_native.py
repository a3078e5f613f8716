"""``NativeQP``: solutions against cvxpy (Clarabel), implicit derivatives, batch status."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import bilevel
from solvers.qp import STATUS, NativeQP, QPStatusWarning, kkt_mapping
from tests.helpers import central_difference

F64 = torch.float64
SOLVER = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else "OSQP"


def random_qp(batch=5, n=10, m=8, p=2, seed=0, dtype=F64):
    """Feasible strictly convex QPs: ``Q = LLᵀ/n + 0.1 I``, ``h = G z₀ + U(0, 1)``,
    ``b = A z₀``."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    L = randn(batch, n, n)
    Q = L @ L.mT / n + 0.1 * torch.eye(n, dtype=F64)
    q, G, z0, A = randn(batch, n), randn(batch, m, n), randn(batch, n), randn(batch, p, n)
    h = (G @ z0[..., None])[..., 0] + torch.rand(batch, m, generator=gen, dtype=F64)
    b = (A @ z0[..., None])[..., 0]
    return tuple(t.to(dtype) for t in (Q, q, G, h, A, b))


def reference(Q, q, G, h, A, b) -> np.ndarray:
    """One QP solved by cvxpy at tight tolerance."""
    Q, q, G, h, A, b = (t.detach().double().numpy() for t in (Q, q, G, h, A, b))
    z = cp.Variable(q.shape[0])
    constraints = []
    if G.shape[0]:
        constraints.append(G @ z <= h)
    if A.shape[0]:
        constraints.append(A @ z == b)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, cp.psd_wrap(Q)) + q @ z),
                         constraints)
    if SOLVER == "CLARABEL":
        problem.solve(solver=SOLVER, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    else:
        problem.solve(solver=SOLVER, eps_abs=1e-10, eps_rel=1e-10, max_iter=100_000)
    return z.value


# -- solutions ----------------------------------------------------------------------------------


def test_matches_cvxpy_and_kkt_residual_at_return():
    theta = random_qp()
    solver = NativeQP()
    y = solver.run(theta)
    assert y.shape == (5, 20) and solver.batch_ndim == 1
    assert solver.status.tolist() == [0] * 5 and STATUS[0] == "solved"
    assert solver.info.converged and solver.info.residual <= 1e-9
    assert float(solver.optimality(y, theta).abs().max()) <= 1e-9
    assert float(kkt_mapping(y, theta).abs().max()) <= 1e-9
    for i in range(5):
        z_ref = reference(*(t[i] for t in theta))
        assert np.abs(y[i, :10].numpy() - z_ref).max() <= 1e-7


def test_multidimensional_batch_and_absent_constraints():
    Q, q, G, h, _, _ = random_qp(batch=6, p=0)
    theta = (Q.reshape(2, 3, 10, 10), q.reshape(2, 3, 10), G.reshape(2, 3, 8, 10),
             h.reshape(2, 3, 8), None, None)
    solver = NativeQP()
    y = solver.run(theta)
    assert y.shape == (2, 3, 18) and solver.batch_ndim == 2 and solver.status.shape == (2, 3)
    z_ref = reference(Q[4], q[4], G[4], h[4], torch.zeros(0, 10, dtype=F64),
                      torch.zeros(0, dtype=F64))
    assert np.abs(y[1, 1, :10].numpy() - z_ref).max() <= 1e-7
    unconstrained = solver.run((Q[0], q[0], None, None, None, None))
    assert torch.allclose(unconstrained, -torch.linalg.solve(Q[0], q[0]), atol=1e-12)


def test_warm_start_from_the_solution_needs_no_iteration():
    theta = random_qp()
    solver = NativeQP()
    y = solver.run(theta)
    assert solver.info.iterations > 0
    y_warm = solver.run(theta, y)
    assert solver.info.iterations == 0 and solver.info.converged
    assert torch.allclose(y_warm, y, atol=1e-12)
    # a nearby θ: same active set (one polish) or a cold interior-point solve, correct either way
    nearby = (theta[0], theta[1] + 1e-3, *theta[2:])
    y_near = solver.run(nearby, y)
    assert solver.info.converged and torch.allclose(y_near, NativeQP().run(nearby), atol=1e-9)


# -- derivatives --------------------------------------------------------------------------------


def test_broadcast_Q_gradients_are_summed_over_the_batch():
    Q, q, G, h, A, b = random_qp()
    Q0 = Q[0]
    weights = torch.randn(5, 20, generator=torch.Generator().manual_seed(1), dtype=F64)

    leaves = [t.clone().requires_grad_(True) for t in (Q0, q, G, h, A, b)]
    y = bilevel.implicit_solve(NativeQP(), tuple(leaves))
    assert y.shape == (5, 20)
    (weights * y).sum().backward()
    total = torch.zeros_like(Q0)
    for i in range(5):
        single = [t.clone().requires_grad_(True) for t in (Q0, q[i], G[i], h[i], A[i], b[i])]
        (weights[i] * bilevel.implicit_solve(NativeQP(), tuple(single))).sum().backward()
        total += single[0].grad
        assert torch.allclose(leaves[1].grad[i], single[1].grad, atol=1e-9)
    assert torch.allclose(leaves[0].grad, total, rtol=1e-9, atol=1e-9)


def test_implicit_gradients_match_central_differences():
    theta = tuple(t[0] for t in random_qp(seed=3))
    solver = NativeQP()
    y = solver.run(theta)
    n, p = 10, 2
    slack = theta[3] - theta[2] @ y[:n]
    assert float((y[n + p:] - slack).abs().min()) > 1e-3  # strictly complementary: smooth
    gen = torch.Generator().manual_seed(4)
    c = torch.randn(20, generator=gen, dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in theta]
    (c * bilevel.implicit_solve(solver, tuple(leaves))).sum().backward()
    for j, name in enumerate("QqGhAb"):
        d = torch.randn(theta[j].shape, generator=gen, dtype=F64)
        if name == "Q":
            d = d + d.mT
        d = d / d.norm()

        def F(t, j=j):
            perturbed = list(theta)
            perturbed[j] = t
            return float((c * solver.run(tuple(perturbed))).sum())

        fd = central_difference(F, theta[j], d, h=1e-6)
        ours = float((leaves[j].grad * d).sum())
        assert abs(ours - fd) <= 1e-5 * max(1.0, abs(fd)), (name, ours, fd)


def test_kink_warning_at_a_weakly_active_constraint():
    # min ½‖z − c‖² s.t. z₀ ≤ c₀ (weakly active: λ₀ = 0 = slack) and z₁ ≤ c₁ − 1 (active)
    c = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    h = torch.stack([c[0], c[1] - 1])
    none = torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64)  # no equalities
    theta = (torch.eye(3, dtype=F64), -c, G, h, *none)
    with pytest.warns(bilevel.KinkWarning):
        y = bilevel.implicit_solve(NativeQP(), theta)
    assert torch.allclose(y, torch.tensor([1.0, 1.0, -1.0, 0.0, 1.0], dtype=F64), atol=1e-10)


# -- status: infeasible and unbounded items -----------------------------------------------------


def test_infeasible_item_is_nan_and_named_while_the_rest_is_solved_and_differentiable():
    Q, q, G, h, A, b = (t.clone() for t in random_qp())
    G[2, :2] = 0.0
    G[2, 0, 0], G[2, 1, 0], h[2, 0], h[2, 1] = 1.0, -1.0, -1.0, -1.0  # z₀ ≤ −1 and z₀ ≥ 1
    leaves = [t.clone().requires_grad_(True) for t in (Q, q, G, h, A, b)]
    solver = NativeQP()
    with pytest.warns(QPStatusWarning, match=r"item 2: primal_infeasible"):
        y = bilevel.implicit_solve(solver, tuple(leaves))
    assert solver.status.tolist() == [0, 0, 1, 0, 0]
    assert STATUS[int(solver.status[2])] == "primal_infeasible"
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3, 4]]).all()
    assert not solver.info.converged and solver.info.residual <= 1e-9
    for i in (0, 1, 3, 4):
        z_ref = reference(Q[i], q[i], G[i], h[i], A[i], b[i])
        assert np.abs(y[i, :10].detach().numpy() - z_ref).max() <= 1e-7
    keep = [0, 1, 3, 4]
    (y[keep, :10] ** 2).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    assert all(float(t.grad[2].abs().max()) == 0.0 for t in leaves)
    # the same gradients as a batch of the feasible items alone
    alone = [t[keep].clone().requires_grad_(True) for t in (Q, q, G, h, A, b)]
    (bilevel.implicit_solve(NativeQP(), tuple(alone))[:, :10] ** 2).sum().backward()
    for t, s in zip(leaves, alone, strict=True):
        assert torch.allclose(t.grad[keep], s.grad, rtol=1e-8, atol=1e-10)


def test_unbounded_item_is_dual_infeasible():
    Q = torch.stack([torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=F64)),
                     torch.eye(3, dtype=F64)])
    q = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0]], dtype=F64)  # item 0: z₂ → +∞
    solver = NativeQP()
    with pytest.warns(QPStatusWarning, match=r"item 0: dual_infeasible"):
        y = solver.run((Q, q, None, None, None, None))
    assert solver.status.tolist() == [2, 0]
    assert torch.isnan(y[0]).all()
    assert torch.allclose(y[1], torch.tensor([-1.0, -1.0, 1.0], dtype=F64), atol=1e-12)


def test_inconsistent_equalities_and_unbounded_lp():
    n = 3
    A = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    b = torch.tensor([0.0, 1.0], dtype=F64)
    solver = NativeQP()
    with pytest.warns(QPStatusWarning, match="primal_infeasible"):
        solver.run((torch.eye(n, dtype=F64), torch.ones(n, dtype=F64), None, None, A, b))
    assert int(solver.status) == 1
    G = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)  # an LP bounded in z₀ only
    with pytest.warns(QPStatusWarning, match="the problem: dual_infeasible"):
        solver.run((torch.zeros(n, n, dtype=F64), torch.tensor([-1.0, 1.0, 0.0], dtype=F64),
                    G, torch.ones(1, dtype=F64), None, None))
    assert int(solver.status) == 2


def test_iteration_cap_marks_max_iterations():
    theta = random_qp()
    solver = NativeQP(maxiter=1)
    with pytest.warns(QPStatusWarning, match="max_iterations"):
        y = solver.run(theta)
    capped = solver.status == 3
    assert solver.info.iterations == 1 and not solver.info.converged and bool(capped.any())
    assert set(solver.status.tolist()) <= {0, 3} and torch.isnan(y[capped]).all()
    # items polished at the cap (active-set rounds from the last iterate) are exact
    H = solver.optimality(y[~capped], tuple(t[~capped] for t in theta))
    assert float(H.abs().max()) <= 1e-9


# -- dtypes and bad input -----------------------------------------------------------------------


def test_float32_runs_in_float32():
    theta = random_qp(dtype=torch.float32)
    solver = NativeQP(tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = solver.run(theta)
    assert y.dtype == torch.float32 and solver.info.converged
    assert float(solver.optimality(y, theta).abs().max()) <= 1e-4
    z_ref = reference(*(t[0] for t in theta))
    assert np.abs(y[0, :10].double().numpy() - z_ref).max() <= 1e-3


def test_non_psd_Q_raises():
    Q, q, G, h, A, b = random_qp()
    Q[3] = Q[3] - 5 * torch.eye(10, dtype=F64)
    with pytest.raises(ValueError, match=r"Q is not positive semidefinite \(Q\[3\]\)"):
        NativeQP().run((Q, q, G, h, A, b))
    NativeQP(check_psd=False)  # the check can be skipped (then the solve may fail)


def test_invalid_inputs():
    Q, q, G, h, A, b = random_qp()
    with pytest.raises(ValueError, match="not symmetric"):
        NativeQP().run((Q + torch.triu(torch.ones(10, 10, dtype=F64), 1), q, G, h, A, b))
    with pytest.raises(ValueError, match="G has trailing shape"):
        NativeQP().run((Q, q, G[..., :9], h, A, b))
    with pytest.raises(ValueError, match="give G and h together"):
        NativeQP().run((Q, q, G, None, A, b))
    with pytest.raises(ValueError, match="q contains NaN"):
        NativeQP().run((Q, q * float("nan"), G, h, A, b))
    with pytest.raises(TypeError, match="theta"):
        NativeQP().run(q)
    with pytest.raises(ValueError, match="init"):
        NativeQP().run((Q, q, G, h, A, b), torch.zeros(5, 7, dtype=F64))
    with pytest.raises(ValueError, match="tol"):
        NativeQP(tol=0)
    with pytest.raises(ValueError, match="maxiter"):
        NativeQP(maxiter=0)


# -- against cvxpylayers' own derivative; the closed-form adjoint hint ---------------------------


def _cvxpylayers_gradients(theta, w, eps=1e-9):
    """Gradients of ``Σ w∘z*`` w.r.t. ``(Q, q, G, h, A, b)`` by cvxpylayers' own backward
    (diffcp, SCS at ``eps``); ``Q`` enters as ``½‖Lz‖²`` with ``L`` its Cholesky factor taken
    in torch, so ``∂/∂Q`` flows through the factorisation."""
    from cvxpylayers.torch import CvxpyLayer

    n, m, p = theta[1].shape[-1], theta[3].shape[-1], theta[5].shape[-1]
    z = cp.Variable(n)
    L, q, G, h, A, b = (cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter((m, n)),
                        cp.Parameter(m), cp.Parameter((p, n)), cp.Parameter(p))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ z) + q @ z),
                         [G @ z <= h, A @ z == b])
    layer = CvxpyLayer(problem, [L, q, G, h, A, b], [z])
    leaves = [t.clone().requires_grad_(True) for t in theta]
    (zs,) = layer(torch.linalg.cholesky(leaves[0]).mT, *leaves[1:],
                  solver_args={"eps_abs": eps, "eps_rel": eps})
    (zs * w).sum().backward()
    return [t.grad for t in leaves]


def test_gradients_match_cvxpylayers_own_backward():
    theta = random_qp(batch=3, n=6, m=5, p=1, seed=4)
    y = NativeQP().run(theta)
    slack = theta[3] - (theta[2] @ y[..., :6, None])[..., 0]
    assert bool(((y[..., 7:] > 1e-3) | (slack > 1e-3)).all())  # strictly complementary
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in theta]
    adjoint = bilevel.ImplicitAdjoint()
    z = bilevel.implicit_solve(NativeQP(), tuple(leaves), adjoint=adjoint)[..., :6]
    (z * w).sum().backward()
    # the closed-form adjoint hint, checked and turned into ∂/∂θ by one VJP
    assert adjoint.report.linear_solver == "refinement"
    assert adjoint.report.linear.iterations == 1
    ref = _cvxpylayers_gradients(theta, w)
    for name, ours, theirs in zip("Q q G h A b".split(), leaves, ref, strict=True):
        # ∂/∂Q: only the symmetric part is determined (the QP depends on (Q + Qᵀ)/2)
        g, r = ours.grad, theirs
        if name == "Q":
            g, r = (g + g.mT) / 2, (r + r.mT) / 2
        assert float((g - r).norm() / r.norm()) <= 1e-7, name


def test_adjoint_hint_solves_the_kkt_adjoint_system():
    from bilevel.linearization import Linearization

    theta = random_qp(seed=6)
    solver = NativeQP()
    y = solver.run(theta)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    u = solver.solve_adjoint(y, theta, v)
    lin = Linearization(kkt_mapping, y, theta, 1)
    assert float((lin.rmatvec_y(u) + v).abs().max()) <= 1e-11  # ∂yHᵀu = −v
    assert solver.solve_adjoint(y.clone(), theta, v) is None  # another y: no hint
    # a badly conditioned Q is solved on the primal path: then the hint does not apply
    Q = theta[0].clone()
    Q[1] = torch.diag(torch.logspace(0, -12, 10, dtype=F64))
    y_bad = solver.run((Q, *theta[1:]))
    assert solver.status.tolist() == [0] * 5
    assert solver.solve_adjoint(y_bad, (Q, *theta[1:]), v) is None


def test_mixed_batch_of_reduced_and_primal_items_matches_cvxpy():
    """Items with Q ≻ 0 go through the dual reduction, a badly conditioned one through the
    primal interior point: every item matches cvxpy."""
    Q, q, G, h, A, b = (t.clone() for t in random_qp(seed=8))
    Q[2] = torch.diag(torch.logspace(0, -12, 10, dtype=F64))  # cond 1e12: primal path
    solver = NativeQP()
    y = solver.run((Q, q, G, h, A, b))
    for i in range(5):
        z_ref = reference(Q[i], q[i], G[i], h[i], A[i], b[i])
        assert np.abs(y[i, :10].numpy() - z_ref).max() <= 1e-6, i
    assert float(kkt_mapping(y, (Q, q, G, h, A, b)).abs().max()) <= 1e-9


def test_float32_on_a_badly_conditioned_q_stays_accurate():
    """cond(Q) ≈ 4e3: the dual reduction (S = C Q⁻¹ Cᵀ squares it) runs in float64, so the
    float32 answer is the float64 one rounded, not a float32 Schur complement's."""
    gen = torch.Generator().manual_seed(11)
    n, m = 30, 15
    M = torch.randn(4, n, n, generator=gen, dtype=F64) / n ** 0.5
    Q = M.mT @ M + 1e-3 * torch.eye(n, dtype=F64)
    q, G, z0 = (torch.randn(4, n, generator=gen, dtype=F64),
                torch.randn(4, m, n, generator=gen, dtype=F64),
                torch.randn(4, n, generator=gen, dtype=F64))
    h = (G @ z0[..., None])[..., 0] + torch.rand(4, m, generator=gen, dtype=F64)
    theta = (Q, q, G, h, None, None)
    y64 = NativeQP().run(theta)
    y32 = NativeQP(tol=1e-4).run(tuple(None if t is None else t.float() for t in theta))
    assert y32.dtype == torch.float32
    assert float((y32[:, :n].double() - y64[:, :n]).abs().max()) <= 1e-2 * float(
        y64[:, :n].abs().max())


def test_tangent_hint_solves_the_kkt_tangent_system():
    from bilevel.linearization import Linearization

    theta = random_qp(seed=9)
    solver = NativeQP()
    y = solver.run(theta)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    y_dot = solver.solve_tangent(y, theta, r)
    lin = Linearization(kkt_mapping, y, theta, 1)
    assert float((lin.matvec(lin.flat(y_dot)) - lin.flat(r)).abs().max()) <= 1e-11  # B ẏ = r


def test_forward_mode_matches_central_differences_and_reverse_mode():
    """``torch.func.jvp`` through ``implicit_solve`` (every θ, Q included) against central
    differences, and ⟨w, ẏ⟩ = Σ ⟨∂θ⟨w, y⟩, θ̇⟩ against reverse mode."""
    theta = random_qp(seed=3)
    gen = torch.Generator().manual_seed(4)
    dirs = [torch.randn(t.shape, generator=gen, dtype=F64) for t in theta]
    dirs[0] = (dirs[0] + dirs[0].mT) / 2
    y, y_dot = torch.func.jvp(lambda *ts: bilevel.implicit_solve(NativeQP(), ts), theta,
                              tuple(dirs))
    h = 1e-6
    plus = NativeQP().run(tuple(t + h * d for t, d in zip(theta, dirs, strict=True)))
    minus = NativeQP().run(tuple(t - h * d for t, d in zip(theta, dirs, strict=True)))
    fd = (plus - minus) / (2 * h)
    assert float((y_dot - fd).abs().max()) <= 1e-6 * float(fd.abs().max())
    leaves = [t.clone().requires_grad_(True) for t in theta]
    w = torch.randn(y.shape, generator=gen, dtype=F64)
    (bilevel.implicit_solve(NativeQP(), tuple(leaves)) * w).sum().backward()
    reverse = sum(float((t.grad * d).sum()) for t, d in zip(leaves, dirs, strict=True))
    assert abs(reverse - float((w * y_dot).sum())) <= 1e-9 * abs(reverse)


def test_adjoint_hint_with_parameters_shared_over_the_batch():
    """One Q, G, h, A, b for every item, q per item: the hint broadcasts the shared data."""
    from bilevel.linearization import Linearization

    Q, q, G, h, A, b = random_qp(seed=2)
    theta = (Q[0], q, G[0], h[0], A[0], b[0])
    solver = NativeQP()
    y = solver.run(theta)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    u = solver.solve_adjoint(y, theta, v)
    lin = Linearization(kkt_mapping, y, theta, 1)
    assert float((lin.rmatvec_y(u) + v).abs().max()) <= 1e-11
