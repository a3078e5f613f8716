"""A deep-equilibrium (DEQ) classifier on digits, beside an explicit MLP of the same width.

Network: ``x (64) → z* → Linear → 10 logits`` with ``z*`` the fixed point of the cell

    z* = f(z*, x) = tanh(W z* + U x + b)          (W: width × width, U: 64 → width)

computed by :class:`bilevel.layers.FixedPointLayer` (Anderson forward from ``z = 0``, implicit
backward: one linear solve with ``I − ∂z f`` at ``z*`` per batch, no backpropagation through
the iterations). ``W`` starts at ``--w_scale`` times torch's default initialisation so that
``f`` starts as a contraction in ``z``.

Loss: cross-entropy. Test metric: accuracy on a stratified held-out split of sklearn's digits.
Baseline: the explicit two-layer MLP ``64 → width → tanh → width → tanh → 10`` (``U`` then
``W`` applied once each, the same parameter count plus one bias), same optimiser, epochs and seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilevel.layers import FixedPointLayer
from tasks.base import resolve_dtype
from tasks.network import NetworkTask, accuracy, digits, train

N_FEATURES, N_CLASSES = 64, 10


class Cell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)``."""

    def __init__(self, width: int, w_scale: float):
        super().__init__()
        self.U = nn.Linear(N_FEATURES, width)
        self.W = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.W.weight.mul_(w_scale)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.W(z) + self.U(x))


class DEQClassifier(nn.Module):
    """The fixed point ``z*`` of :class:`Cell`, then a linear head."""

    def __init__(self, width: int, w_scale: float, tol: float, maxiter: int):
        super().__init__()
        self.deq = FixedPointLayer(Cell(width, w_scale), tol=tol, maxiter=maxiter,
                                   z_shape=(width,))
        self.head = nn.Linear(width, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.deq(x))


def build(
    width: int = 128,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-3,
    w_scale: float = 0.5,
    tol: float = 1e-4,
    maxiter: int = 30,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> NetworkTask:
    """Build the DEQ classifier on digits.

    Args:
        width: width of ``z`` (and of the baseline's hidden layers).
        epochs, batch_size, lr: Adam training, shared with the baseline.
        w_scale: factor on ``W``'s initial weights (``< 1`` keeps ``f`` contractive at start).
        tol, maxiter: forward fixed-point tolerance and iteration cap.
        test_fraction: held-out fraction (stratified split under ``seed``).
        seed: split, initialisation and batch-order seed.
        dtype, device: where the computation runs.
    """
    tdtype = resolve_dtype(dtype)
    X, y, X_test, y_test = digits(seed, test_fraction, tdtype, device)
    torch.manual_seed(seed)
    model = DEQClassifier(width, w_scale, tol, maxiter).to(dtype=tdtype, device=device)

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
