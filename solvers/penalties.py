"""Separable penalties ``g(w; θ)`` of the working-set solver, each with its prox, its KKT
violation and its closed-form solve on a fixed support.

A penalty's parameters are functions of ``θ`` given by the user, e.g.
``L1(lambda t: t.exp())`` for ``λ = e^θ`` (one number, or one per feature for a weighted
Lasso). For every penalty here an inactive coordinate is exactly 0 whatever ``θ``: that is
what lets the working-set solver hand the engine a mapping reduced to the support.

``violation(w, grad)`` is the distance of ``−∇f(w)`` to ``∂g(w)`` coordinate-wise: zero at a
solution, and the stopping criterion of the solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from solvers import prox
from solvers.base import Theta

Param = Callable[[Theta], Tensor | float]


class SupportSolve(NamedTuple):
    """The result of ``penalty.on_support(G, b, w, p)``: the new point ``w`` and, when the
    system on ``S`` was solved (``None`` otherwise), what the solve formed, for reuse: the
    positions ``support`` of ``S`` in ``G``, ``G_SS`` (``gram``) and the Cholesky factor of
    ``G_SS + diag(λ₂)`` (``factor``)."""

    w: Tensor
    support: Tensor | None = None
    gram: Tensor | None = None
    factor: Tensor | None = None


def _identity(theta: Theta) -> Tensor:
    return theta


def _take(param: Tensor | float, index: Tensor | None) -> Tensor | float:
    """Restrict a per-feature parameter to ``index`` (scalars pass through)."""
    if index is None or not isinstance(param, Tensor) or param.numel() == 1:
        return param
    return param[index]


class L1:
    """``g(w) = Σ_j λ_j |w_j|`` (Lasso; weighted Lasso when ``λ`` is a vector).

    Args:
        weight: ``θ ↦ λ`` (default: ``λ = θ``), a number or one value per feature, ``≥ 0``.
    """

    def __init__(self, weight: Param = _identity):
        self.weight = weight

    def params(self, theta: Theta, index: Tensor | None = None) -> dict[str, Tensor | float]:
        return {"l1": _take(self.weight(theta), index)}

    def prox(self, v: Tensor, p: dict[str, Tensor | float], step: float) -> Tensor:
        return prox.l1(v, step * p["l1"])

    def value(self, w: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        return (p["l1"] * w.abs()).sum()

    def violation(self, w: Tensor, grad: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        lam = p["l1"]
        return torch.where(w != 0, (grad + lam * torch.sign(w)).abs(),
                           torch.relu(grad.abs() - lam))

    def separable(self, p: dict[str, Tensor | float]) -> tuple:
        """``(λ₁, λ₂, nonneg)`` with ``g(w) = Σ_j λ₁ⱼ|w_j| + (λ₂ⱼ/2)w_j² [+ ι(w ≥ 0)]``: the
        form the compiled coordinate descent takes (``solvers.coordinate_descent``)."""
        return p["l1"], 0.0, False

    def slope(self, p: dict[str, Tensor | float], step: float) -> Tensor | float:
        """``∂prox/∂v`` on the support (nonzero output): ``1`` (a shift by ``±stepλ``)."""
        return 1.0

    def on_support(self, G: Tensor, b: Tensor, w: Tensor, p: dict[str, Tensor | float]
                   ) -> SupportSolve:
        """Solve ``G_SS w_S = b_S − λ_S sign(w_S)`` on the support of ``w`` (zeros off it;
        ``w`` unchanged if ``G_SS`` is singular)."""
        return _solve_on_support(G, b, w, torch.sign(w), p["l1"], 0.0)


class ElasticNet(L1):
    """``g(w) = Σ_j λ₁ⱼ |w_j| + (λ₂ⱼ/2) w_j²``.

    Args:
        l1: ``θ ↦ λ₁`` (number or per feature, ``≥ 0``).
        l2: ``θ ↦ λ₂`` (number or per feature, ``≥ 0``).
    """

    def __init__(self, l1: Param, l2: Param):
        self.l1, self.l2 = l1, l2

    def params(self, theta: Theta, index: Tensor | None = None) -> dict[str, Tensor | float]:
        return {"l1": _take(self.l1(theta), index), "l2": _take(self.l2(theta), index)}

    def prox(self, v: Tensor, p: dict[str, Tensor | float], step: float) -> Tensor:
        return prox.elastic_net(v, step * p["l1"], step * p["l2"])

    def value(self, w: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        return (p["l1"] * w.abs() + 0.5 * p["l2"] * w * w).sum()

    def violation(self, w: Tensor, grad: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        return super().violation(w, grad + p["l2"] * w, p)

    def separable(self, p: dict[str, Tensor | float]) -> tuple:
        return p["l1"], p["l2"], False

    def slope(self, p: dict[str, Tensor | float], step: float) -> Tensor | float:
        """``∂prox/∂v`` on the support: ``1/(1 + stepλ₂)`` (per feature when ``λ₂`` is)."""
        return 1.0 / (1.0 + step * p["l2"])

    def on_support(self, G: Tensor, b: Tensor, w: Tensor, p: dict[str, Tensor | float]
                   ) -> SupportSolve:
        return _solve_on_support(G, b, w, torch.sign(w), p["l1"], p["l2"])


class NonnegL1(L1):
    """``g(w) = Σ_j λ_j w_j + ι(w ≥ 0)`` (nonnegative Lasso).

    Args:
        weight: ``θ ↦ λ`` (number or per feature, ``≥ 0``).
    """

    def prox(self, v: Tensor, p: dict[str, Tensor | float], step: float) -> Tensor:
        return prox.nonneg_l1(v, step * p["l1"])

    def value(self, w: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        if bool((w < 0).any()):
            return torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
        return (p["l1"] * w).sum()

    def separable(self, p: dict[str, Tensor | float]) -> tuple:
        return p["l1"], 0.0, True

    def violation(self, w: Tensor, grad: Tensor, p: dict[str, Tensor | float]) -> Tensor:
        lam = p["l1"]
        kkt = torch.where(w > 0, (grad + lam).abs(), torch.relu(-grad - lam))
        return torch.where(w < 0, torch.full_like(kkt, math.inf), kkt)  # infeasible

    def on_support(self, G: Tensor, b: Tensor, w: Tensor, p: dict[str, Tensor | float]
                   ) -> SupportSolve:
        return _solve_on_support(G, b, w, (w > 0).to(w.dtype), p["l1"], 0.0)


def _solve_on_support(G: Tensor, b: Tensor, w: Tensor, sign: Tensor, l1: Tensor | float,
                      l2: Tensor | float) -> SupportSolve:
    """Stationarity on ``S = {sign ≠ 0}`` with the signs fixed:
    ``(G_SS + diag(λ₂)) w_S = b_S − λ₁ sign_S`` by Cholesky (``G`` is a Gram matrix, so the
    system is positive semidefinite); returns ``w`` with ``w_S`` replaced, or ``w`` itself when
    it is not numerically positive definite (e.g. duplicated features in the support)."""
    S = sign.nonzero()[:, 0]
    if S.numel() == 0:
        return SupportSolve(torch.zeros_like(w))
    G_SS = G.index_select(0, S).index_select(1, S)
    system = G_SS
    if isinstance(l2, Tensor) or l2 != 0.0:
        system = G_SS.clone()
        system.diagonal().add_(_take(l2, S) if isinstance(l2, Tensor) else l2)
    l1_S = _take(l1, S) if isinstance(l1, Tensor) else l1
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        return SupportSolve(w)
    solution = torch.cholesky_solve((b[S] - l1_S * sign[S])[:, None], factor)[:, 0]
    if not bool(torch.isfinite(solution).all()):
        return SupportSolve(w)
    return SupportSolve(torch.zeros_like(w).index_put_((S,), solution), S, G_SS, factor)


PENALTIES = {"l1": L1, "elastic_net": ElasticNet, "nonneg_l1": NonnegL1}
