"""Non-crossing quantile regression on diabetes: a QP layer makes the predicted quantiles ordered.

Network: ``x (10) → Linear → tanh → Linear → s (one score per level τ_1 < … < τ_K) → QP head``,
the head being the convex QP (a ``bilevel.layers.QPLayer``, trained end to end through its
implicit derivative)

    q*(s) = argmin_q ½‖q − s‖²   s.t.  q_j − q_{j+1} ≤ 0  (j < K)
          (Q = I, q = −s, G = D the forward differences, h = 0),

the Euclidean projection of the scores onto the monotone cone (isotonic regression): predicted
quantiles that never cross. Its KKT mapping has kinks where two neighbouring quantiles are equal
with a zero multiplier; the engine then returns the constant-piece element of the conservative
Jacobian, a valid stochastic gradient for training (the integral rule), so
:class:`bilevel.KinkWarning` is silenced inside ``fit``.

Loss: the pinball (quantile) loss averaged over the levels. Test metric: that loss on a held-out
split of sklearn's bundled diabetes, in the target's units (lower is better). Baseline: the same
network without the layer, trained with the same loss, optimiser, epochs and seed; its test
crossing rate and the loss of its outputs projected after training (no training through the
layer) are reported beside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.errors import KinkWarning
from bilevel.layers import QPLayer
from tasks.base import resolve_dtype, resolve_inner
from tasks.network import NetworkTask, train

N_FEATURES = 10


class MonotoneProjection(nn.Module):
    """``q*(s)``, the QP of the module docstring, batched over the rows of ``s``."""

    def __init__(self, levels: int, backend: str = "native", tol: float = 1e-10,
                 **options: Any):
        super().__init__()
        self.qp = QPLayer(backend, tol=tol, **options)
        self.levels = levels

    def forward(self, scores: Tensor) -> Tensor:
        k, like = self.levels, {"dtype": scores.dtype, "device": scores.device}
        eye = torch.eye(k, **like)
        differences = eye[:-1] - eye[1:]  # row j: q_j − q_{j+1}
        return self.qp(eye, -scores, differences, torch.zeros(k - 1, **like))


def pinball(levels: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``(q, y) ↦`` mean over rows and levels of ``max(τ r, (τ − 1) r)`` with ``r = y − q_τ``."""
    def loss(q: Tensor, y: Tensor) -> Tensor:
        r = y[:, None] - q
        return torch.maximum(levels * r, (levels - 1) * r).mean()
    return loss


def crossing_rate(q: Tensor) -> float:
    """Fraction of rows whose predicted quantiles are not non-decreasing."""
    return float((q[:, 1:] < q[:, :-1] - 1e-9).any(1).to(torch.float64).mean())


def mlp(levels: int, width: int, seed: int, dtype: torch.dtype, device: str) -> nn.Sequential:
    """``10 → width → tanh → levels`` with torch's default initialisation under ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, width), nn.Tanh(),
                         nn.Linear(width, levels)).to(dtype=dtype, device=device)


def diabetes(seed: int, test_fraction: float, dtype: torch.dtype, device: str
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """sklearn's diabetes split under ``seed``; features and target standardised on train.

    Returns:
        ``X_train, y_train, X_test, y_test`` and the target's train standard deviation.
    """
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X, y = load_diabetes(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed)
    mean, std = X_tr.mean(0), X_tr.std(0)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())

    def tensor(a: Any) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return (tensor((X_tr - mean) / std), tensor((y_tr - y_mean) / y_std),
            tensor((X_te - mean) / std), tensor((y_te - y_mean) / y_std), y_std)


def build(
    levels: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9),
    width: int = 32,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float = 1e-2,
    test_fraction: float = 0.25,
    backend: str = "native",
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> NetworkTask:
    """Build the non-crossing quantile regression on diabetes.

    Args:
        levels: the quantile levels ``τ_1 < … < τ_K`` in (0, 1).
        width: hidden width of the network (and of the baseline).
        epochs, batch_size, lr: Adam training, shared with the baseline.
        test_fraction: held-out fraction (split under ``seed``).
        backend: the QP backend (``"native"`` or ``"cvxpylayers"``).
        tol: QP tolerance (use ``≥ 1e-5`` in float32).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver native |
            cvxpylayers (overrides ``backend``), tol, maxiter.
        seed: split, initialisation and batch-order seed.
        dtype, device: where the computation runs.

    Raises:
        ValueError: levels not increasing inside (0, 1), or fewer than two.
    """
    if len(levels) < 2 or not all(0 < a < b < 1 for a, b in zip(levels[:-1], levels[1:],
                                                                 strict=True)):
        raise ValueError(f"levels must be at least two increasing values in (0, 1), got "
                         f"{list(levels)}")
    tdtype = resolve_dtype(dtype)
    X, y, X_test, y_test, scale = diabetes(seed, test_fraction, tdtype, device)
    how = resolve_inner(inner, "qp_layer", (backend, *(b for b in ("native", "cvxpylayers")
                                                       if b != backend)), tol)
    k = len(levels)
    head = MonotoneProjection(k, how.solver, how.tol, **how.options)
    model = nn.Sequential(mlp(k, width, seed, tdtype, device), head)
    loss = pinball(torch.tensor(list(levels), dtype=tdtype, device=device))

    def fit(callback=None) -> list[dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", KinkWarning)
            return train(model, loss, X, y, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, callback=callback)

    def predict(net: nn.Module) -> Tensor:
        net.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", KinkWarning)
            return net(X_test)

    def test_metric() -> float:
        return scale * float(loss(predict(model), y_test))

    def baseline() -> tuple[float, dict[str, float]]:
        net = mlp(k, width, seed, tdtype, device)
        train(net, loss, X, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        q = predict(net)
        projected = predict(nn.Sequential(net, head))
        return scale * float(loss(q, y_test)), {
            "crossing_rate": crossing_rate(q),
            "projected_after_training_pinball": scale * float(loss(projected, y_test)),
        }

    def hyperparameters() -> dict[str, float]:
        return {"crossing_rate": crossing_rate(predict(model))}

    return NetworkTask(
        name="qp_layer",
        fit=fit,
        test_metric_name="test_pinball",
        test_metric=test_metric,
        baseline_name="the same MLP without the QP layer (same pinball loss)",
        baseline=baseline,
        hyperparameters=hyperparameters,
    )
