"""A deep-equilibrium (DEQ) classifier on digits, beside an explicit MLP of the same width.

Network: ``x (64) → z* → Linear → 10 logits`` with ``z*`` the fixed point of the cell

    z* = f(z*, x) = tanh(γ W z* / max(1, ‖W‖_F) + U x + b)    (W: width², U: 64 → width)

computed by :class:`bilevel.layers.FixedPointLayer` (Anderson forward from ``z = 0``, implicit
backward: one linear solve with ``I − ∂z f`` at ``z*`` per batch, no backpropagation through
the iterations). Since ``tanh`` is 1-Lipschitz and ``‖W‖₂ ≤ ‖W‖_F``, ``f`` is a
``γ``-contraction in ``z`` whatever the training does (``γ = contraction < 1``): the fixed point
exists and is unique, and ``I − ∂z f`` has singular values ``≥ 1 − γ``, so the forward and the
adjoint solves stay well posed (without it, a run at width 128 drifted to a non-contractive
``W`` after a few epochs and the adjoint GMRES failed).

Loss: cross-entropy. Test metric: accuracy on a stratified held-out split of sklearn's digits.
Baseline: the explicit two-layer MLP ``64 → width → tanh → width → tanh → 10`` (``U`` then
``W`` applied once each, the same parameter count plus one bias), same optimiser, epochs and seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.layers import FixedPointLayer
from tasks.base import resolve_dtype, resolve_inner
from tasks.network import NetworkTask, accuracy, digits, train

N_FEATURES, N_CLASSES = 64, 10


class Cell(nn.Module):
    """``f(z, x) = tanh(γ W z / max(1, ‖W‖_F) + U x + b)``, a ``γ``-contraction in ``z``."""

    def __init__(self, width: int, contraction: float):
        super().__init__()
        if not 0 < contraction < 1:
            raise ValueError(f"contraction must be in (0, 1), got {contraction}")
        self.U = nn.Linear(N_FEATURES, width)
        self.W = nn.Linear(width, width, bias=False)
        self.contraction = contraction

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        scale = self.contraction / torch.clamp(torch.linalg.matrix_norm(self.W.weight), min=1.0)
        return torch.tanh(scale * self.W(z) + self.U(x))


class DEQClassifier(nn.Module):
    """The fixed point ``z*`` of :class:`Cell`, then a linear head."""

    def __init__(self, width: int, contraction: float, tol: float, maxiter: int,
                 method: str = "anderson"):
        super().__init__()
        self.deq = FixedPointLayer(Cell(width, contraction), method=method, tol=tol,
                                   maxiter=maxiter, z_shape=(width,))
        self.head = nn.Linear(width, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.deq(x))


def build(
    width: int = 128,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 1e-3,
    contraction: float = 0.9,
    tol: float = 1e-4,
    maxiter: int = 30,
    inner: Mapping[str, Any] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> NetworkTask:
    """Build the DEQ classifier on digits.

    Args:
        width: width of ``z`` (and of the baseline's hidden layers).
        epochs, batch_size, lr: Adam training, shared with the baseline.
        contraction: ``γ``, the Lipschitz constant of ``f`` in ``z`` (in ``(0, 1)``).
        tol, maxiter: forward fixed-point tolerance and iteration cap.
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver anderson |
            broyden | picard | km (the forward fixed-point method), tol, maxiter.
        test_fraction: held-out fraction (stratified split under ``seed``).
        seed: split, initialisation and batch-order seed.
        dtype, device: where the computation runs.
    """
    tdtype = resolve_dtype(dtype)
    X, y, X_test, y_test = digits(seed, test_fraction, tdtype, device)
    torch.manual_seed(seed)
    how = resolve_inner(inner, "deq", ("anderson", "broyden", "picard", "km"), tol)
    model = DEQClassifier(width, contraction, how.tol, how.options.get("maxiter", maxiter),
                          how.solver).to(dtype=tdtype, device=device)

    def fit(callback=None) -> list[dict]:
        return train(model, nn.functional.cross_entropy, X, y, epochs=epochs,
                     batch_size=batch_size, lr=lr, seed=seed, callback=callback)

    def test_metric() -> float:
        return accuracy(model, X_test, y_test)

    def baseline() -> tuple[float, dict[str, float]]:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(N_FEATURES, width), nn.Tanh(), nn.Linear(width, width),
                            nn.Tanh(), nn.Linear(width, N_CLASSES)).to(dtype=tdtype,
                                                                       device=device)
        train(net, nn.functional.cross_entropy, X, y, epochs=epochs, batch_size=batch_size,
              lr=lr, seed=seed)
        return accuracy(net, X_test, y_test), {}

    def hyperparameters() -> dict[str, float]:
        """Forward iterations of the last batch (how hard the equilibrium is to find)."""
        info = model.deq.info
        return {} if info is None else {"forward_iterations": float(info.iterations)}

    return NetworkTask(
        name="deq",
        fit=fit,
        test_metric_name="test_accuracy",
        test_metric=test_metric,
        baseline_name=f"explicit MLP 64→{width}→tanh→{width}→tanh→10 (no fixed point)",
        baseline=baseline,
        hyperparameters=hyperparameters,
    )
