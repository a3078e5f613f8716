"""Small reference problems shared by the engine tests."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_diabetes, make_regression
from torch import Tensor

from solvers import ProxGrad, prox

F64 = torch.float64


def diabetes() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised diabetes features, centred target; first 300 rows train, rest validation."""
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = y - y.mean()
    t = torch.as_tensor
    return (t(X[:300], dtype=F64), t(y[:300], dtype=F64),
            t(X[300:], dtype=F64), t(y[300:], dtype=F64))


def wide(n: int = 40, p: int = 100, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A p > n regression (make_regression, 5 informative), half train, half validation."""
    X, y = make_regression(2 * n, p, n_informative=5, noise=1.0, random_state=seed)
    X = X / np.linalg.norm(X, axis=0) * np.sqrt(2 * n)
    t = torch.as_tensor
    return t(X[:n], dtype=F64), t(y[:n], dtype=F64), t(X[n:], dtype=F64), t(y[n:], dtype=F64)


def lasso(X: Tensor, y: Tensor, tol: float = 1e-12, **kw) -> ProxGrad:
    """Lasso with ``θ = λ`` (sklearn's objective)."""
    return ProxGrad(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                    lambda v, t, s: prox.l1(v, s * t), tol=tol, maxiter=200_000, **kw)


def lambda_max(X: Tensor, y: Tensor) -> float:
    return float((X.T @ y).abs().max()) / X.shape[0]


def val_loss(Xv: Tensor, yv: Tensor):
    return lambda w: 0.5 * ((Xv @ w - yv) ** 2).mean()
