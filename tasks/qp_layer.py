"""Digits with a QP head: class probabilities as the Euclidean projection onto the simplex.

Network: ``x (64) → Linear → tanh → Linear → s (10 scores) → QP head``, the head being the convex
QP (a ``bilevel.layers.QPLayer``, trained end to end through its implicit derivative)

    p*(s) = argmin_p ½‖p‖² − sᵀp   s.t.  p ≥ 0,  1ᵀp = 1
          (Q = I, q = −s, G = −I, h = 0, A = 1ᵀ, b = 1),

the projection of the scores onto the probability simplex (sparsemax): a probability vector
with exact zeros. Its KKT mapping has kinks where a class sits exactly on the boundary of the
support (``p_i = 0`` with zero multiplier); the engine then returns the constant-piece element
of the conservative Jacobian, which is a valid stochastic gradient for training (the integral
rule), so :class:`bilevel.KinkWarning` is silenced inside ``fit``.

Loss: the Brier score ``½‖p* − e_y‖²`` (needs the layer's derivative). Test metric: accuracy
on a stratified held-out split of sklearn's bundled digits. Baseline: the same network without
the layer (softmax + cross-entropy), trained with the same optimiser, epochs and seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.errors import KinkWarning
from bilevel.layers import QPLayer
from tasks.base import resolve_dtype, resolve_inner
from tasks.network import NetworkTask, accuracy, digits, train

N_FEATURES, N_CLASSES = 64, 10


class SimplexProjection(nn.Module):
    """``p*(s)``, the QP of the module docstring, batched over the rows of ``s``."""

    def __init__(self, classes: int, backend: str = "native", tol: float = 1e-10,
                 **options: Any):
        super().__init__()
        self.qp = QPLayer(backend, tol=tol, **options)
        self.classes = classes

    def forward(self, scores: Tensor) -> Tensor:
        k, like = self.classes, {"dtype": scores.dtype, "device": scores.device}
        eye = torch.eye(k, **like)
        return self.qp(eye, -scores, -eye, torch.zeros(k, **like), torch.ones(1, k, **like),
                       torch.ones(1, **like))


def mlp(width: int, seed: int, dtype: torch.dtype, device: str) -> nn.Sequential:
    """``64 → width → tanh → 10`` with torch's default initialisation under ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, width), nn.Tanh(),
                         nn.Linear(width, N_CLASSES)).to(dtype=dtype, device=device)


def build(
    width: int = 64,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 1e-2,
    test_fraction: float = 0.25,
    backend: str = "native",
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> NetworkTask:
    """Build the simplex-head classifier on digits.

    Args:
        width: hidden width of the network (and of the baseline).
        epochs, batch_size, lr: Adam training, shared with the baseline.
        test_fraction: held-out fraction (stratified split under ``seed``).
        backend: the QP backend (``"native"`` or ``"cvxpylayers"``).
        tol: QP tolerance (use ``≥ 1e-5`` in float32).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver native |
            cvxpylayers (overrides ``backend``), tol, maxiter.
        seed: split, initialisation and batch-order seed.
        dtype, device: where the computation runs.
    """
    tdtype = resolve_dtype(dtype)
    X, y, X_test, y_test = digits(seed, test_fraction, tdtype, device)
    how = resolve_inner(inner, "qp_layer", (backend, *(b for b in ("native", "cvxpylayers")
                                                       if b != backend)), tol)
    model = nn.Sequential(mlp(width, seed, tdtype, device),
                          SimplexProjection(N_CLASSES, how.solver, how.tol, **how.options))

    def brier(p: Tensor, labels: Tensor) -> Tensor:
        target = nn.functional.one_hot(labels, N_CLASSES).to(p.dtype)
        return 0.5 * ((p - target) ** 2).sum(-1).mean()

    def fit(callback=None) -> list[dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", KinkWarning)
            return train(model, brier, X, y, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, callback=callback)

    def test_metric() -> float:
        return accuracy(model, X_test, y_test)

    def baseline() -> tuple[float, dict[str, float]]:
        net = mlp(width, seed, tdtype, device)
        train(net, nn.functional.cross_entropy, X, y, epochs=epochs, batch_size=batch_size,
              lr=lr, seed=seed)
        return accuracy(net, X_test, y_test), {}

    def hyperparameters() -> dict[str, float]:
        """Mean number of classes with nonzero probability on the test set (sparsity)."""
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", KinkWarning)
            p = model(X_test)
        return {"mean_support_size": float((p > 1e-9).sum(-1).to(torch.float64).mean())}

    return NetworkTask(
        name="qp_layer",
        fit=fit,
        test_metric_name="test_accuracy",
        test_metric=test_metric,
        baseline_name="the same MLP with softmax + cross-entropy (no QP layer)",
        baseline=baseline,
        hyperparameters=hyperparameters,
    )
