"""What a task is: data, a bilevel problem, a test metric and the baseline it is compared with."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
        minibatch_hint: the setting that gives this task minibatch losses where its current
            settings have none (e.g. ``"task.cv_folds=null"``), for the stochastic methods' error.
    """

    name: str
    problem: BilevelProblem
    test_metric_name: str
    test_metric: Callable[[Tensor, Tensor], float]
    hyperparameters: Callable[[Tensor], dict[str, float]]
    baseline_name: str
    baseline: Callable[[], tuple[float, dict[str, float]]]
    extra_metrics: Callable[[Tensor, Tensor], dict[str, float]] | None = None
    minibatch_hint: str | None = None


def resolve_dtype(name: str) -> torch.dtype:
    """``"float64"`` → ``torch.float64``; a clear error for anything else."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@dataclass(frozen=True)
class Inner:
    """How a task's inner problem is solved, resolved from the app's ``inner`` config group.

    Attributes:
        solver: the algorithm, one the task offers for its inner problem.
        tol: the inner tolerance.
        options: further constructor options of the solver (``maxiter`` when set).
    """

    solver: str
    tol: float
    options: dict[str, Any]


def resolve_inner(inner: Mapping[str, Any] | None, task: str, solvers: Sequence[str],
                  tol: float) -> Inner:
    """The ``inner`` settings a task's ``build`` received, checked against the solvers it offers.

    Args:
        inner: ``{"solver": ..., "tol": ..., "maxiter": ...}`` (any key may be missing or None).
        task: the task's name (for messages).
        solvers: the algorithms the task offers, its default first.
        tol: the task's own tolerance (used when ``inner["tol"]`` is None).

    Returns:
        the chosen solver, the tolerance, and the extra constructor options (``maxiter``).

    Raises:
        ValueError: an unknown key, or a solver the task does not offer (the message lists them).
    """
    inner = dict(inner or {})
    unknown = set(inner) - {"solver", "tol", "maxiter"}
    if unknown:
        raise ValueError(f"unknown inner option(s) {sorted(unknown)}; inner takes solver, tol, "
                         "maxiter")
    solver = inner.get("solver") or "auto"
    if solver == "auto":
        solver = solvers[0]
    if solver not in solvers:
        raise ValueError(
            f"inner={solver} does not solve the inner problem of task {task}: it is solved by "
            f"{' | '.join(solvers)} (inner=default picks {solvers[0]})"
        )
    chosen_tol = tol if inner.get("tol") is None else float(inner["tol"])
    options = {} if inner.get("maxiter") is None else {"maxiter": int(inner["maxiter"])}
    return Inner(solver, chosen_tol, options)
