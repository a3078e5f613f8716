"""A quadratic bilevel problem on samples, with its solution θ* in closed form (numpy).

Inner samples ``i``: ``g_i(y, θ) = ½ (x_iᵀy)² + ½ λ‖y‖² − yᵀ(B_i θ + c_i)``, so
``g = ½ yᵀA y − yᵀ(B θ + c)`` with ``A = XᵀX/n + λI``, ``B = mean B_i``, ``c = mean c_i`` and
``y*(θ) = A⁻¹(Bθ + c)``. Outer samples ``j``: ``f_j(y, θ) = ½‖y − t_j‖² + ½ μ‖θ‖²``, so
``h(θ) = ½‖A⁻¹(Bθ + c) − t̄‖² + ½μ‖θ‖² + const`` and, with ``M = A⁻¹B``, ``r = t̄ − A⁻¹c``,

    θ* = (MᵀM + μI)⁻¹ Mᵀ r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bilevel.outer import BilevelProblem
from solvers.smooth import Smooth

F64 = torch.float64


@dataclass
class Quadratic:
    problem: BilevelProblem
    theta_star: np.ndarray
    outer_curvatures: np.ndarray  # eigenvalues of the Hessian of h
    targets: torch.Tensor  # t_j, one row per outer sample
    mu: float
    features: torch.Tensor  # x_i, one row per inner sample
    inner_B: torch.Tensor  # B = mean_i B_i

    def rel_error(self, theta: torch.Tensor) -> float:
        t = theta.detach().cpu().numpy()
        return float(np.linalg.norm(t - self.theta_star) / np.linalg.norm(self.theta_star))


def quadratic(n_inner: int = 256, n_outer: int = 256, p: int = 5, d: int = 3, *,
              ridge: float = 1.0, mu: float = 0.3, noise: float = 0.1, seed: int = 0,
              device: str = "cpu") -> Quadratic:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_inner, p, generator=gen, dtype=F64) / p ** 0.5
    B0 = torch.randn(p, d, generator=gen, dtype=F64) / p ** 0.5
    Bs = B0 + noise * torch.randn(n_inner, p, d, generator=gen, dtype=F64)
    cs = torch.randn(p, generator=gen, dtype=F64) + noise * torch.randn(n_inner, p,
                                                                        generator=gen, dtype=F64)
    ts = torch.randn(p, generator=gen, dtype=F64) + noise * torch.randn(n_outer, p,
                                                                        generator=gen, dtype=F64)
    X, Bs, cs, ts = (a.to(device) for a in (X, Bs, cs, ts))
    B, c = Bs.mean(0), cs.mean(0)

    def inner_loss(y, theta, idx=None):
        Xi, Bi, ci = (X, B, c) if idx is None else (X[idx], Bs[idx].mean(0), cs[idx].mean(0))
        lin = Bi @ theta + ci
        return 0.5 * ((Xi @ y) ** 2).mean() + 0.5 * ridge * (y * y).sum() - y @ lin

    def outer_loss(y, theta, idx=None):
        ti = ts if idx is None else ts[idx]
        return 0.5 * ((y - ti) ** 2).sum(-1).mean() + 0.5 * mu * (theta * theta).sum()

    A = (X.T @ X / n_inner + ridge * torch.eye(p, dtype=F64, device=device)).cpu().numpy()
    t = ts.mean(0).cpu().numpy()
    M = np.linalg.solve(A, B.cpu().numpy())
    r = t - np.linalg.solve(A, c.cpu().numpy())
    hessian = M.T @ M + mu * np.eye(d)
    theta_star = np.linalg.solve(hessian, M.T @ r)
    problem = BilevelProblem(
        inner=Smooth(lambda y, th: inner_loss(y, th), tol=1e-13),
        outer=lambda y, th: outer_loss(y, th),
        theta0=torch.zeros(d, dtype=F64, device=device),
        y0=torch.zeros(p, dtype=F64, device=device),
        inner_loss=inner_loss, outer_loss=outer_loss, n_inner=n_inner, n_outer=n_outer,
    )
    return Quadratic(problem, theta_star, np.linalg.eigvalsh(hessian), ts, mu, X, B)
