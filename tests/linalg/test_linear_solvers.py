"""Conformance suite of the batched linear solvers in ``bilevel.linalg``.

One registry (``SOLVERS``) maps every method to a uniform ``solve(matrix, b, **kw)``; one table
(``SUPPORTED``) says which test systems each method must solve. The reference is
``torch.linalg.solve`` in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from bilevel.linalg import (
    ITERATIVE,
    LinearSolveInfo,
    MatVec,
    dense_solve,
    gmres,
    neumann,
    reciprocal_condition,
)

TOL = 1e-10
M, K = 3, 20
DENSE = ("lu", "cholesky", "lstsq")

Solve = Callable[..., tuple[Tensor, LinearSolveInfo]]


def as_matvec(matrix: Tensor) -> MatVec:
    """The block-diagonal operator of a batch of matrices."""
    return lambda v: (matrix @ v[..., None])[..., 0]


def solve(method: str, matrix: Tensor, b: Tensor, **kw: object) -> tuple[Tensor, LinearSolveInfo]:
    """Run ``method`` on ``matrix x = b`` (iterative methods see only the matvec)."""
    if method in DENSE:
        return dense_solve(matrix, b, method=method, **kw)
    return ITERATIVE[method](as_matvec(matrix), b, **kw)


def orthogonal(gen: torch.Generator, m: int = M, k: int = K) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, k, k, generator=gen, dtype=torch.float64))
    return q


def with_spectrum(gen: torch.Generator, eig: Tensor, m: int = M) -> Tensor:
    """Symmetric matrices ``Q diag(eig) Qᵀ`` with random orthogonal ``Q``."""
    q = orthogonal(gen, m, eig.shape[-1])
    return q @ torch.diag_embed(eig.expand(m, -1)) @ q.mT


def spd(gen: torch.Generator) -> Tensor:
    return with_spectrum(gen, torch.linspace(1.0, 10.0, K, dtype=torch.float64))


def indefinite(gen: torch.Generator) -> Tensor:
    half = torch.linspace(1.0, 10.0, K // 2, dtype=torch.float64)
    return with_spectrum(gen, torch.cat([-half, half]))


def nonsymmetric(gen: torch.Generator) -> Tensor:
    """``3 I + G / √k``: eigenvalues in a disc of radius about 1 around 3."""
    g = torch.randn(M, K, K, generator=gen, dtype=torch.float64)
    return 3.0 * torch.eye(K, dtype=torch.float64) + g / K**0.5


def contraction(gen: torch.Generator) -> Tensor:
    """``I − 0.5 C`` with ``‖C‖₂ = 0.9``: ``ρ(I − M) ≤ 0.45``, the Neumann series converges."""
    c = torch.randn(M, K, K, generator=gen, dtype=torch.float64)
    c = 0.9 * c / torch.linalg.matrix_norm(c, ord=2)[:, None, None]
    return torch.eye(K, dtype=torch.float64) - 0.5 * c


def mild_spd(gen: torch.Generator) -> Tensor:
    """SPD with eigenvalues in [0.5, 1.5]: every method, Neumann included, solves it."""
    return with_spectrum(gen, torch.linspace(0.5, 1.5, K, dtype=torch.float64))


SYSTEMS = {
    "spd": spd,
    "indefinite": indefinite,
    "nonsymmetric": nonsymmetric,
    "contraction": contraction,
}
SUPPORTED = {
    "cg": ["spd"],
    "minres": ["spd", "indefinite"],
    "gmres": ["spd", "indefinite", "nonsymmetric"],
    "bicgstab": ["spd", "indefinite", "nonsymmetric"],
    "neumann": ["contraction"],
    "lu": ["spd", "indefinite", "nonsymmetric"],
    "cholesky": ["spd"],
    "lstsq": ["spd", "indefinite"],
}
CASES = [(method, system) for method, systems in SUPPORTED.items() for system in systems]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rhs(g: torch.Generator, m: int = M, k: int = K) -> Tensor:
    return torch.randn(m, k, generator=g, dtype=torch.float64)


def rel_err(x: Tensor, ref: Tensor) -> float:
    return float(
        (torch.linalg.vector_norm(x - ref, dim=-1) / torch.linalg.vector_norm(ref, dim=-1)).max()
    )


@pytest.mark.parametrize(("method", "system"), CASES)
def test_conformance(method: str, system: str) -> None:
    g = gen()
    matrix = SYSTEMS[system](g)
    b = rhs(g)
    x, info = solve(method, matrix, b, tol=TOL)
    assert x.shape == b.shape and x.dtype == b.dtype
    assert rel_err(x, torch.linalg.solve(matrix, b)) <= 1e-8
    assert info.method == method
    assert info.converged and info.residual <= TOL
    assert (info.iterations > 0) if method in ITERATIVE else (info.iterations == 0)


@pytest.mark.parametrize("method", [*ITERATIVE, *DENSE])
def test_zero_rhs_row_gives_zero_solution(method: str) -> None:
    g = gen(1)
    matrix, b = mild_spd(g), rhs(g)
    b[1] = 0.0
    guess = {} if method in DENSE else {"x0": torch.ones_like(b)}  # a nonzero guess is reset
    x, info = solve(method, matrix, b, tol=TOL, **guess)
    assert torch.equal(x[1], torch.zeros(K, dtype=torch.float64))
    assert info.converged
    assert rel_err(x[[0, 2]], torch.linalg.solve(matrix[[0, 2]], b[[0, 2]])) <= 1e-8


@pytest.mark.parametrize("method", ITERATIVE)
def test_warm_start_from_solution(method: str) -> None:
    g = gen(2)
    matrix, b = mild_spd(g), rhs(g)
    exact = torch.linalg.solve(matrix, b)
    x, info = solve(method, matrix, b, tol=1e-8, x0=exact)
    assert info.iterations <= 1 and info.converged
    assert rel_err(x, exact) <= 1e-8


@pytest.mark.parametrize("method", ITERATIVE)
def test_converged_rows_are_frozen(method: str) -> None:
    """A row converged at the start keeps its initial guess bit for bit while others iterate."""
    g = gen(3)
    matrix, b = mild_spd(g), rhs(g)
    x0 = torch.zeros_like(b)
    x0[0] = torch.linalg.solve(matrix[0], b[0])
    x, info = solve(method, matrix, b, tol=1e-8, x0=x0)
    assert torch.equal(x[0], x0[0])
    assert info.converged and info.iterations > 0


@pytest.mark.parametrize("method", ITERATIVE)
def test_unconverged_within_maxiter(method: str) -> None:
    g = gen(4)
    eig = torch.logspace(-6, 0, K, dtype=torch.float64)  # κ = 1e6, ρ(I − M) < 1
    matrix, b = with_spectrum(g, eig), rhs(g)
    x, info = solve(method, matrix, b, tol=TOL, maxiter=2)
    assert not info.converged and info.residual > TOL
    assert 0 < info.iterations <= 2
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("method", ITERATIVE)
def test_singular_inconsistent_system_stays_finite(method: str) -> None:
    """No solution exists: every method must stop cleanly (breakdown or maxiter), no NaN."""
    matrix = torch.diag(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)).expand(2, 3, 3)
    b = torch.ones(2, 3, dtype=torch.float64)
    x, info = solve(method, matrix, b, tol=TOL, maxiter=30)
    assert torch.isfinite(x).all()
    assert not info.converged


def test_cg_breaks_down_on_zero_curvature() -> None:
    matrix = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))[None]
    b = torch.ones(1, 2, dtype=torch.float64)  # ⟨b, M b⟩ = 0
    x, info = solve("cg", matrix, b, tol=TOL)
    assert torch.isfinite(x).all() and not info.converged and info.iterations == 1


def test_neumann_divergent_operator_returns_finite_iterate() -> None:
    g = gen(5)
    matrix, b = with_spectrum(g, torch.linspace(2.5, 3.5, K, dtype=torch.float64)), rhs(g)
    x, info = neumann(as_matvec(matrix), b, tol=TOL, maxiter=1000)  # ρ(I − M) = 2.5
    assert torch.isfinite(x).all()
    assert not info.converged
    assert info.iterations < 100  # stopped at the 1e6 growth guard, not at maxiter


def test_neumann_damping_makes_it_converge() -> None:
    g = gen(5)
    matrix, b = with_spectrum(g, torch.linspace(2.5, 3.5, K, dtype=torch.float64)), rhs(g)
    x, info = neumann(as_matvec(matrix), b, tol=TOL, alpha=0.25)  # ρ(I − αM) = 0.375
    assert info.converged
    assert rel_err(x, torch.linalg.solve(matrix, b)) <= 1e-8


def test_gmres_with_short_restart() -> None:
    g = gen(6)
    matrix, b = nonsymmetric(g), rhs(g)
    x, info = gmres(as_matvec(matrix), b, tol=TOL, restart=4, maxiter=400)
    assert info.converged
    assert rel_err(x, torch.linalg.solve(matrix, b)) <= 1e-8


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_gmres_cycle_is_the_krylov_minimal_residual(steps: int) -> None:
    """One cycle of ``j`` Arnoldi steps returns ``argmin_{x ∈ K_j(M, b)} ‖b − M x‖``, computed
    here independently by least squares on an explicit Krylov basis ``[b, Mb, …, M^{j−1} b]``
    (columns normalised): checks the accumulated Givens rotations and the triangular solve."""
    g = gen(8)
    matrix, b = nonsymmetric(g), rhs(g)
    x, info = gmres(as_matvec(matrix), b, tol=TOL, restart=steps, maxiter=steps)
    assert info.iterations == steps and not info.converged
    residuals = []
    for i in range(M):
        columns = [b[i] / b[i].norm()]
        for _ in range(steps - 1):
            v = matrix[i] @ columns[-1]
            columns.append(v / v.norm())
        krylov = torch.stack(columns, dim=1)  # (K, steps)
        coef = torch.linalg.lstsq(matrix[i] @ krylov, b[i][:, None]).solution
        ref = (krylov @ coef)[:, 0]
        assert torch.allclose(x[i], ref, rtol=0, atol=1e-10 * float(ref.norm()))
        residuals.append(float((b[i] - matrix[i] @ ref).norm() / b[i].norm()))
    assert info.residual == pytest.approx(max(residuals), rel=1e-8)


def test_lstsq_singular_consistent_gives_minimum_norm() -> None:
    g = gen(7)
    sigma = torch.cat([torch.linspace(1.0, 5.0, K - 5), torch.zeros(5)]).to(torch.float64)
    matrix = orthogonal(g) @ torch.diag_embed(sigma.expand(M, -1)) @ orthogonal(g).mT
    b = (matrix @ rhs(g)[..., None])[..., 0]  # in the range of the matrix
    x, info = dense_solve(matrix, b, method="lstsq", tol=TOL)
    ref = (torch.linalg.pinv(matrix) @ b[..., None])[..., 0]
    assert rel_err(x, ref) <= 1e-8
    assert info.converged


def test_dense_errors_name_the_failing_item() -> None:
    g = gen(8)
    matrix, b = spd(g), rhs(g)
    matrix[2] = indefinite(g)[0]
    with pytest.raises(ValueError, match=r"not positive definite \(batch items \[2\]\)"):
        dense_solve(matrix, b, method="cholesky")
    matrix[1] = 0.0
    with pytest.raises(ValueError, match=r"singular \(batch items \[1\]\)"):
        dense_solve(matrix, b, method="lu")


def test_reciprocal_condition() -> None:
    g = gen(9)
    sigma = torch.cat([torch.ones(K - 1), torch.zeros(1)]).to(torch.float64)
    singular = orthogonal(g) @ torch.diag_embed(sigma.expand(M, -1)) @ orthogonal(g).mT
    assert (reciprocal_condition(singular) < 1e-14).all()
    eye = torch.eye(K, dtype=torch.float64).expand(M, K, K)
    torch.testing.assert_close(reciprocal_condition(eye), torch.ones(M, dtype=torch.float64))
    assert torch.equal(reciprocal_condition(torch.zeros(2, 3, 3)), torch.zeros(2))


@pytest.mark.parametrize("method", [*ITERATIVE, *DENSE])
def test_float32_stays_float32(method: str) -> None:
    g = gen(10)
    matrix, b = mild_spd(g).float(), rhs(g).float()
    x, info = solve(method, matrix, b, tol=1e-4)
    assert x.dtype == torch.float32
    assert info.converged
    assert rel_err(x.double(), torch.linalg.solve(matrix.double(), b.double())) <= 1e-3


def test_input_validation() -> None:
    matvec = as_matvec(torch.eye(3, dtype=torch.float64)[None])
    with pytest.raises(ValueError, match=r"shape \(m, k\)"):
        ITERATIVE["cg"](matvec, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape and dtype"):
        ITERATIVE["gmres"](lambda v: v[:, :2], torch.ones(1, 3, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 3),
    k=st.integers(1, 6),
    method=st.sampled_from(["cg", "minres", "gmres", "bicgstab"]),
)
def test_small_random_spd_systems(seed: int, m: int, k: int, method: str) -> None:
    g = gen(seed)
    matrix = with_spectrum(g, torch.linspace(1.0, 4.0, k, dtype=torch.float64), m)
    b = rhs(g, m, k)
    x, info = solve(method, matrix, b, tol=TOL)
    assert info.converged
    assert rel_err(x, torch.linalg.solve(matrix, b)) <= 1e-8


def test_batched_lu_is_right_with_several_threads():
    """Batched LU on the CPU with 2 threads gave wrong pivots for k ≳ 150 here (oneMKL):
    dense_solve and reciprocal_condition must still agree with per-item solves."""
    from bilevel.linalg import dense_solve, reciprocal_condition

    gen = torch.Generator().manual_seed(0)
    k = 200
    A = torch.randn(4, k, k, generator=gen, dtype=torch.float64) + k**0.5 * torch.eye(
        k, dtype=torch.float64)
    b = torch.randn(4, k, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, info = dense_solve(A, b, method="lu")
        rcond = reciprocal_condition(A)
    finally:
        torch.set_num_threads(threads)
    for i in range(4):
        assert torch.allclose(x[i], torch.linalg.solve(A[i], b[i]), atol=1e-10)
        assert torch.allclose(rcond[i], reciprocal_condition(A[i:i + 1])[0], rtol=1e-8)
    assert info.converged
    assert torch.get_num_threads() == threads


def test_gmres_matvec_sees_zeros_in_rows_that_stopped() -> None:
    """Row 0 (the identity) converges at the first Arnoldi step; every later product must see a
    zero row 0 (the frozen-row convention of ``bilevel.linalg.base``), while row 1 iterates to
    its own tolerance and row 0 keeps its exact solution."""
    g = gen(9)
    matrix = torch.stack([torch.eye(K, dtype=torch.float64), nonsymmetric(g)[0]])
    b = rhs(g)[:2]
    seen: list[Tensor] = []

    def matvec(v: Tensor) -> Tensor:
        seen.append(v.clone())
        return (matrix @ v[..., None])[..., 0]

    x, info = gmres(matvec, b, tol=TOL)
    assert info.converged and info.iterations > 2
    assert len(seen) > 2 and all(bool((v[0] == 0).all()) for v in seen[1:-1])
    assert rel_err(x, torch.linalg.solve(matrix, b)) <= 1e-8
