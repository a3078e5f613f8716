"""What the benchmark scripts share: the reference regression data and best-of-n timing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import make_regression

THREADS = 2  # torch threads in every benchmark (this project's machine has 2 cores)


def regression_data(n: int, p: int, seed: int) -> tuple[np.ndarray, ...]:
    """``make_regression(2n, p, n_informative=50, noise=5, random_state=seed)``, each column
    scaled to norm √(2n); returns ``X_train, y_train, X_val, y_val`` (first n rows train)."""
    X, y = make_regression(n_samples=2 * n, n_features=p, n_informative=50, noise=5,
                           random_state=seed)
    X = X * (math.sqrt(2 * n) / np.linalg.norm(X, axis=0))
    return X[:n], y[:n], X[n:], y[n:]


def best_time(fit: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Min wall time of ``repeat`` calls of ``fit()`` and the last result."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fit()
        times.append(time.perf_counter() - t0)
    return min(times), out
