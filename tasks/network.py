"""What a network task is: a net with an optimisation layer, trained end to end, beside a baseline.

These tasks train a network's weights by minibatch SGD/Adam (the optimisation layer's implicit
derivative is one factor of the chain rule), so they do not fit ``BilevelProblem`` / ``run_outer``.
A task module's ``build(..., seed, dtype, device)`` returns a :class:`NetworkTask`; the Hydra app
calls ``fit`` (one metrics row per epoch), then ``test_metric`` and ``baseline``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Callback = Callable[[dict], None]


@dataclass
class NetworkTask:
    """A network task, built by a task module's ``build(...)``.

    Attributes:
        name: the task's config name.
        fit: ``fit(callback)`` trains for the configured epochs, calling ``callback`` (if any)
            with one row per epoch (at least ``step``, ``train_loss``, ``time_s``); returns the
            rows.
        test_metric_name: e.g. ``"test_accuracy"`` (higher is better when the name says
            accuracy).
        test_metric: ``() -> float`` on held-out test data, after ``fit``.
        baseline_name: the network it is compared with (the same net without the layer).
        baseline: ``() -> (test metric, {name: value})``: trains and evaluates that network.
        hyperparameters: ``() -> {name: value}`` of the trained model (may be ``{}``).
    """

    name: str
    fit: Callable[[Callback | None], list[dict]]
    test_metric_name: str
    test_metric: Callable[[], float]
    baseline_name: str
    baseline: Callable[[], tuple[float, dict[str, float]]]
    hyperparameters: Callable[[], dict[str, float]] = field(default=lambda: {})


def train(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], X: Tensor, y: Tensor, *,
          epochs: int, batch_size: int, lr: float, seed: int,
          callback: Callback | None = None) -> list[dict]:
    """Adam on ``loss(model(X_batch), y_batch)`` over shuffled minibatches.

    Returns:
        one row per epoch: ``step`` (epoch, from 1), ``train_loss`` (mean over the epoch's
        batches), ``time_s`` (wall time of the epoch); each row is passed to ``callback``.

    Raises:
        ValueError: ``epochs`` or ``batch_size`` below 1, or ``lr`` not positive.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs ≥ 1, batch_size ≥ 1 and lr > 0; got {epochs}, "
                         f"{batch_size}, {lr}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(X.shape[0], generator=generator).to(X.device)
        total = 0.0
        batches = 0
        model.train()
        for start in range(0, X.shape[0], batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad()
            value = loss(model(X[index]), y[index])
            value.backward()
            optimizer.step()
            total += float(value.detach())
            batches += 1
        row = {"step": epoch, "train_loss": total / batches, "time_s": time.perf_counter() - t0}
        rows.append(row)
        if callback is not None:
            callback(row)
    return rows


def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of rows whose largest output is the label (model in ``eval()`` mode)."""
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).to(torch.float64).mean())


def digits(seed: int, test_fraction: float, dtype: torch.dtype, device: str
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's bundled digits (1,797 8×8 images, 10 classes) split into train / test with
    ``seed`` (stratified), features standardised with the train mean and std.

    Returns:
        ``X_train, y_train, X_test, y_test`` (labels as int64).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, stratify=y,
                                              random_state=seed)
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0

    def features(a):
        return torch.as_tensor((a - mean) / std, dtype=dtype, device=device)

    def labels(a):
        return torch.as_tensor(a, dtype=torch.long, device=device)

    return features(X_tr), labels(y_tr), features(X_te), labels(y_te)
