"""What the benchmark scripts share: the reference regression data, timing over repeats, and
the JSON record each script writes for the BENCHMARKS.md writer (``--json PATH``)."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import make_regression

THREADS = 2  # torch threads in every benchmark (this project's machine has 2 cores)
_STARTED = time.time()  # the import of this module ≈ the start of the script (wall_s)


def regression_data(n: int, p: int, seed: int) -> tuple[np.ndarray, ...]:
    """``make_regression(2n, p, n_informative=50, noise=5, random_state=seed)``, each column
    scaled to norm √(2n); returns ``X_train, y_train, X_val, y_val`` (first n rows train)."""
    X, y = make_regression(n_samples=2 * n, n_features=p, n_informative=50, noise=5,
                           random_state=seed)
    X = X * (math.sqrt(2 * n) / np.linalg.norm(X, axis=0))
    return X[:n], y[:n], X[n:], y[n:]


def timings(fit: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` calls of ``fit()`` and the last result."""
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fit()
        times.append(time.perf_counter() - t0)
    return times, out


def median_time(fit: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls of ``fit()`` and the last result."""
    times, out = timings(fit, repeat)
    return statistics.median(times), out


def best_time(fit: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Min wall time of ``repeat`` calls of ``fit()`` and the last result."""
    times, out = timings(fit, repeat)
    return min(times), out


def fmt_s(seconds: float | None, digits: int = 3) -> str:
    """``0.0412`` → ``"0.041 s"``; ``None``/NaN → ``"—"``; below 10 ms in ms."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 0.01:
        return f"{1e3 * seconds:.2g} ms" if seconds < 0.001 else f"{1e3 * seconds:.1f} ms"
    return f"{seconds:.{digits}f} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_ratio(num: float | None, den: float | None) -> str:
    """``num / den`` with two significant digits, ``"—"`` when either is missing."""
    if num is None or den is None or not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return "—"
    r = num / den
    return f"{r:.2f}" if r < 10 else f"{r:.1f}" if r < 100 else f"{r:.0f}"


def write_results(path: str | None, benchmark: str, tables: list[dict[str, Any]],
                  notes: list[str] | tuple[str, ...] = (),
                  figures: list[str] | tuple[str, ...] = (),
                  data: dict[str, Any] | None = None) -> None:
    """Write a benchmark's figures as JSON for the BENCHMARKS.md writer (no-op if ``path`` is None).

    Args:
        path: output file (the scripts' ``--json`` option).
        benchmark: the script's name, e.g. ``"lasso_hypergrad"``; records with the same name
            form one section of the report (their tables of the same title are merged).
        tables: ``{"title": str, "columns": [str, ...], "rows": [[cell, ...], ...]}`` each,
            cells already formatted as the report should print them.
        notes: sentences printed under the tables (targets met or not, caveats).
        figures: image paths (relative to the repository root) the section shows.
        data: optional raw numbers (not printed; for whoever reads the JSON).
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
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(time.time() - _STARTED, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "tables": tables,
        "notes": list(notes),
        "figures": list(figures),
    }
    if data is not None:
        record["data"] = data
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=_jsonable)


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars and arrays in ``data`` as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
