"""What a task is: data, a bilevel problem, a test metric and the baseline it is compared with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel.outer import BilevelProblem

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Task:
    """A bilevel task, built by a task module's ``build(...)``.

    Attributes:
        name: the task's config name.
        problem: the bilevel problem the outer method optimises.
        test_metric_name: e.g. ``"test_mse"`` (lower is better unless the name says accuracy).
        test_metric: ``(θ, y*) -> float`` on held-out test data.
        hyperparameters: ``θ -> {name: value}`` in the user's units (e.g. λ, not log λ).
        baseline_name: what the method is compared against (e.g. ``"sklearn LassoCV"``).
        baseline: ``() -> (test metric, hyperparameters)`` of that baseline on the same split.
        extra_metrics: optional ``(θ, y*) -> {name: value}``: further figures the comparison
            needs (e.g. an F1 score, worst-group accuracy, the baselines' values of them).
    """

    name: str
    problem: BilevelProblem
    test_metric_name: str
    test_metric: Callable[[Tensor, Tensor], float]
    hyperparameters: Callable[[Tensor], dict[str, float]]
    baseline_name: str
    baseline: Callable[[], tuple[float, dict[str, float]]]
    extra_metrics: Callable[[Tensor, Tensor], dict[str, float]] | None = None


def resolve_dtype(name: str) -> torch.dtype:
    """``"float64"`` → ``torch.float64``; a clear error for anything else."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
