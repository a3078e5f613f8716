"""Sparse linear models, each built on the solver the framework uses by default for it.

Every constructor returns a :class:`~solvers.workingset.WorkingSet`, or with
``solver="proxgrad"`` a :class:`~solvers.proxgrad.ProxGrad` (FISTA on all features; the same
optimality mapping, so the same derivatives, at a higher solve cost); the hyperparameters are
functions of θ, by default ``λ = e^θ`` (θ is a log-hyperparameter, as in gradient-based
tuning). Pass e.g. ``lam=lambda t: t`` to use λ itself.

- ``lasso``: ``(1/2n)‖Xw − y‖² + λ‖w‖₁`` (sklearn's ``Lasso(alpha=λ)``); a vector θ gives the
  weighted Lasso ``Σ_j λ_j |w_j|``;
- ``elastic_net``: ``(1/2n)‖Xw − y‖² + λ₁‖w‖₁ + (λ₂/2)‖w‖²`` with θ = (log λ₁, log λ₂);
- ``nonneg_lasso``: ``(1/2n)‖Xw − y‖² + λ Σ w_j`` subject to ``w ≥ 0``;
- ``sparse_logreg``: ``(1/n) Σ log(1 + exp(−y_i x_iᵀw)) + λ‖w‖₁``, labels ``±1`` or ``0/1``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from solvers.base import Theta
from solvers.datafits import DATAFITS
from solvers.penalties import L1, ElasticNet, NonnegL1, Param
from solvers.proxgrad import ProxGrad
from solvers.workingset import WorkingSet

SOLVERS = ("workingset", "proxgrad")


def _exp(theta: Theta) -> Tensor:
    return theta.exp()


def _exp_first(theta: Theta) -> Tensor:
    return theta[0].exp()


def _exp_second(theta: Theta) -> Tensor:
    return theta[1].exp()


def sparse_model(X: Tensor, y: Tensor, penalty: Any, datafit: str = "quadratic",
                 solver: str = "workingset", **options: Any) -> WorkingSet | ProxGrad:
    """``datafit(Xw) + penalty(w)`` on ``solver`` (one of :data:`SOLVERS`); ``options`` go to
    the solver's constructor (e.g. ``tol``, ``maxiter``).

    Raises:
        ValueError: an unknown solver.
    """
    if solver == "workingset":
        return WorkingSet(X, y, penalty, datafit=datafit, **options)
    if solver != "proxgrad":
        raise ValueError(f"unknown solver {solver!r} for a sparse linear model; choose one of "
                         f"{SOLVERS}")
    fit = DATAFITS[datafit](y)
    return ProxGrad(lambda w, theta: fit.value(X @ w),
                    lambda v, theta, step: penalty.prox(v, penalty.params(theta), step), **options)


def lasso(X: Tensor, y: Tensor, lam: Param = _exp, **options: Any) -> WorkingSet | ProxGrad:
    """Lasso (weighted when ``lam(θ)`` is a vector). ``options``: see :func:`sparse_model`."""
    return sparse_model(X, y, L1(lam), **options)


def elastic_net(X: Tensor, y: Tensor, l1: Param = _exp_first, l2: Param = _exp_second,
                **options: Any) -> WorkingSet | ProxGrad:
    """Elastic net; by default θ = (log λ₁, log λ₂)."""
    return sparse_model(X, y, ElasticNet(l1, l2), **options)


def nonneg_lasso(X: Tensor, y: Tensor, lam: Param = _exp, **options: Any
                 ) -> WorkingSet | ProxGrad:
    """Nonnegative Lasso."""
    return sparse_model(X, y, NonnegL1(lam), **options)


def sparse_logreg(X: Tensor, y: Tensor, lam: Param = _exp, **options: Any
                  ) -> WorkingSet | ProxGrad:
    """ℓ1-regularised logistic regression (no intercept: centre X or add a column)."""
    return sparse_model(X, y, L1(lam), datafit="logistic", **options)
