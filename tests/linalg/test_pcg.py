"""Preconditioned CG: the exact inverse converges in one product, a nearby factor in a few."""

from __future__ import annotations

import torch

from bilevel.linalg import cg

F64 = torch.float64


def _spd(m: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, k, k, generator=gen, dtype=F64)
    return A @ A.mT + k * torch.eye(k, dtype=F64) * torch.logspace(-3, 3, k, dtype=F64)


def test_pcg_with_a_nearby_factor_matches_the_direct_solve():
    M = _spd(3, 40, 0)
    b = torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=F64)
    x_ref = torch.linalg.solve(M, b[..., None])[..., 0]

    def matvec(v):
        return (M @ v[..., None])[..., 0]

    plain, plain_info = cg(matvec, b, tol=1e-12)
    factor = torch.linalg.cholesky(M * (1 + 1e-6))  # a slightly different matrix
    x, info = cg(matvec, b, tol=1e-12,
                 preconditioner=lambda r: torch.cholesky_solve(r[..., None], factor)[..., 0])
    assert info.converged and info.iterations <= 3 < plain_info.iterations
    assert float((x - x_ref).abs().max()) <= 1e-10 * float(x_ref.abs().max())
    assert float((plain - x_ref).abs().max()) <= 1e-8 * float(x_ref.abs().max())
