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


def write_results(path: str | None, benchmark: str, tables: list[dict[str, Any]],
                  notes: list[str] | tuple[str, ...] = (),
                  figures: list[str] | tuple[str, ...] = ()) -> None:
    """Write a benchmark's figures as JSON for the BENCHMARKS.md writer (no-op if ``path`` is None).

    Args:
        path: output file (the scripts' ``--json`` option).
        benchmark: the script's name, e.g. ``"lasso_hypergrad"``.
        tables: ``{"title": str, "columns": [str, ...], "rows": [[cell, ...], ...]}`` each,
            cells already formatted as the report should print them.
        notes: sentences printed under the tables (targets met or not, caveats).
        figures: image paths (relative to the repository root) the section shows.
    """
    if path is None:
        return
    import json
    import platform
    import sys

    import torch

    record = {
        "benchmark": benchmark,
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tables": tables,
        "notes": list(notes),
        "figures": list(figures),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
