"""Convergence plots of outer runs (PNG, matplotlib's non-interactive Agg backend).

One figure, two panels against wall time: the outer value ``F(y*(θ_t), θ_t)`` (log scale when
positive) and, when the rows carry it, the test metric. Used for each run's ``convergence.png``
and by ``bilevel-report`` to overlay the runs of a sweep. matplotlib is imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Rows = Sequence[Mapping[str, Any]]


def convergence_plot(runs: Mapping[str, Rows], path: Path, *, title: str = "",
                     metric_name: str = "test metric") -> Path:
    """Write the outer value (and test metric) against ``time_s`` of every run to ``path``.

    Args:
        runs: label → metrics rows (dicts with ``time_s``, ``outer_value`` and optionally
            ``test_metric``).
        path: the PNG to write (its folder must exist).
        title: figure title.
        metric_name: y-label of the test-metric panel.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_metric = any("test_metric" in row for rows in runs.values() for row in rows)
    fig, axes = plt.subplots(1, 2 if with_metric else 1, figsize=(10 if with_metric else 5.5, 4),
                             squeeze=False)
    value_ax = axes[0][0]
    finite: list[float] = []
    for label, rows in runs.items():
        times = [float(r["time_s"]) for r in rows]
        values = [float(r["outer_value"]) for r in rows]
        finite += [v for v in values if math.isfinite(v)]
        value_ax.plot(times, values, label=label)
        if with_metric:
            points = [(float(r["time_s"]), float(r["test_metric"])) for r in rows
                      if r.get("test_metric") not in (None, "")]
            if points:
                axes[0][1].plot(*zip(*points, strict=True), label=label)
    if finite and min(finite) > 0 and max(finite) > 10 * min(finite):  # spans a decade
        value_ax.set_yscale("log")
    value_ax.set_xlabel("wall time (s)")
    value_ax.set_ylabel("outer value")
    if with_metric:
        axes[0][1].set_xlabel("wall time (s)")
        axes[0][1].set_ylabel(metric_name)
    if 1 < len(runs) <= 12:
        value_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
