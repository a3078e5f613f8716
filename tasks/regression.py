"""What the sparse-regression tasks share (``lasso``, ``weighted_lasso``, ``elastic_net``):
the data split with a target centred on train, the squared-error outer loss and test metric,
the K-fold cross-validation problem on train ∪ validation, and the baseline protocol — a
scikit-learn CV estimator refitted on train ∪ validation, scored on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from solvers.base import InnerSolver
from tasks import data
from tasks.base import resolve_dtype
from tasks.crossval import CrossValidation, cross_validation, folds


@dataclass
class Regression:
    """A split regression problem.

    Attributes:
        splits: the numpy splits (features standardised on train).
        tensors: the same as tensors, target centred by ``offset``.
        offset: the train mean of the target.
        lam_max: ``‖Xᵀy‖∞ / n`` on train, the smallest ℓ1 weight with ``w* = 0``.
    """

    splits: data.Splits
    tensors: data.TensorSplits
    offset: float
    lam_max: float

    def validation_loss(self, w: Tensor, theta: Tensor) -> Tensor:
        """``F(w) = (1/2n_v)‖X_v w − y_v‖²``."""
        return half_mse(w, self.tensors.X_val, self.tensors.y_val)

    def cross_validation(self, k: int, make_solver: Callable[[Tensor, Tensor], InnerSolver]
                         ) -> CrossValidation:
        """The ``k``-fold CV problem on train ∪ validation with the folds of scikit-learn's
        ``cv=k`` (what the baseline's ``LassoCV(cv=k)`` averages), loss ``half_mse``."""
        t = self.tensors
        X = torch.cat([t.X_train, t.X_val])
        y = torch.cat([t.y_train, t.y_val])
        return cross_validation(X, y, folds(len(y), k), make_solver, half_mse)

    def test_mse(self, theta: Tensor, w: Tensor) -> float:
        """Mean squared error on the test split."""
        t = self.tensors
        return float(((t.X_test @ w - t.y_test) ** 2).mean())

    def baseline_mse(self, estimator: Any) -> tuple[float, Any]:
        """Fit ``estimator`` (no intercept: the target is centred) on train ∪ validation;
        returns its test MSE and the fitted estimator."""
        s = self.splits
        X_fit = np.vstack([s.X_train, s.X_val])
        y_fit = np.concatenate([s.y_train, s.y_val]) - self.offset
        model = estimator.fit(X_fit, y_fit)
        error = np.mean((model.predict(s.X_test) - (s.y_test - self.offset)) ** 2)
        return float(error), model


def half_mse(w: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """``(1/2n)‖X w − y‖²``."""
    return 0.5 * ((X @ w - y) ** 2).mean()


def load_regression(dataset: str, data_options: dict[str, Any] | None, val_fraction: float,
                    test_fraction: float, seed: int, dtype: str, device: str) -> Regression:
    """Load ``dataset`` (``tasks.data.load``: bundled, generated or a file), split it and make
    the tensors."""
    ds = data.load(dataset, labels="regression", seed=seed, **dict(data_options or {}))
    s = data.split(ds, val_fraction, test_fraction, seed)
    offset = float(s.y_train.mean())
    t = data.to_tensors(s, resolve_dtype(dtype), device, y_offset=offset)
    lam_max = float((t.X_train.T @ t.y_train).abs().max()) / t.X_train.shape[0]
    return Regression(s, t, offset, lam_max)
