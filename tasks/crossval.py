"""K-fold cross-validation as a bilevel problem, and the refit that follows it.

With folds ``(T_k, V_k)`` of the fitting rows, one inner problem per fold on its training rows,

    ``y*_k(θ) = argmin_y  f(y, θ; T_k)``,   outer  ``F(θ) = (1/K) Σ_k ℓ(y*_k(θ); V_k)``,

solved together by :class:`solvers.stacked.Stacked` (block-diagonal ``∂yH``), so the
hypergradient is the mean of the folds' implicit hypergradients. This is the criterion
scikit-learn's ``*CV`` estimators minimise over a grid (mean validation loss over the same
unshuffled folds); here it is minimised over a continuum. After selection the model is refitted
on all fitting rows at the selected θ, as those estimators do, and that refit is what is tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from solvers.base import InnerSolver, Theta
from solvers.stacked import Stacked


def folds(n: int, k: int, labels: np.ndarray | None = None) -> list[tuple[Tensor, Tensor]]:
    """``k`` unshuffled folds of ``n`` rows, as scikit-learn's ``cv=k`` makes them: ``KFold``
    for regression, ``StratifiedKFold`` when classification ``labels`` are given.

    Returns:
        ``(train rows, validation rows)`` index tensors per fold.

    Raises:
        ValueError: ``k < 2`` or more folds than rows.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if not 2 <= k <= n:
        raise ValueError(f"cv_folds must be between 2 and the number of rows ({n}), got {k}; "
                         "use cv_folds=null for a single validation split")
    splitter = KFold(k) if labels is None else StratifiedKFold(k)
    return [(torch.as_tensor(tr), torch.as_tensor(va))
            for tr, va in splitter.split(np.zeros((n, 1)), labels)]


@dataclass
class CrossValidation:
    """The CV bilevel problem on fitting rows ``(X, Y)``.

    Attributes:
        inner: one solver per fold, stacked (``y`` has a leading fold dimension).
        outer: ``F(y, θ)``, the mean over folds of ``loss(y_k, X[V_k], Y[V_k])``.
        refit: ``(θ, y) ↦`` the solution on all rows at ``θ`` (warm-started at the folds' mean).
    """

    inner: Stacked
    outer: Callable[[Tensor, Theta], Tensor]
    refit: Callable[[Theta, Tensor], Tensor]


def cross_validation(
    X: Tensor,
    Y: Tensor,
    fold_rows: list[tuple[Tensor, Tensor]],
    make_solver: Callable[[Tensor, Tensor], InnerSolver],
    loss: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> CrossValidation:
    """Build the CV problem.

    Args:
        X, Y: the fitting rows (train ∪ validation) and their targets.
        fold_rows: from :func:`folds`.
        make_solver: ``(X_rows, Y_rows) ↦`` the task's inner solver on those rows.
        loss: ``(y, X_rows, Y_rows) ↦`` the validation loss of ``y`` on those rows (a mean).
    """
    device = X.device
    fold_rows = [(tr.to(device), va.to(device)) for tr, va in fold_rows]
    inner = Stacked([make_solver(X[tr], Y[tr]) for tr, _ in fold_rows])
    validation = [(X[va], Y[va]) for _, va in fold_rows]
    full = make_solver(X, Y)

    def outer(y: Tensor, theta: Theta) -> Tensor:
        return torch.stack([loss(y[k], Xv, Yv) for k, (Xv, Yv) in enumerate(validation)]).mean()

    def refit(theta: Theta, y: Tensor) -> Tensor:
        return full.run(theta, y.mean(0))

    return CrossValidation(inner, outer, refit)
