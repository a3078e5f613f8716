"""The ``inner`` settings of a task: resolution against the solvers it offers, and the config
group's options (each one names a solver that some task offers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from solvers import fixed_point, models, smooth
from tasks.base import resolve_inner

CONF = Path(__file__).resolve().parents[2] / "conf" / "inner"


def test_auto_picks_the_task_default_and_the_task_tolerance():
    how = resolve_inner(None, "lasso", models.SOLVERS, 1e-10)
    assert (how.solver, how.tol, how.options) == ("workingset", 1e-10, {})
    how = resolve_inner({"solver": "proxgrad", "tol": 1e-6, "maxiter": 50}, "lasso",
                        models.SOLVERS, 1e-10)
    assert (how.solver, how.tol, how.options) == ("proxgrad", 1e-6, {"maxiter": 50})


def test_a_solver_the_task_does_not_offer_lists_the_ones_it_does():
    with pytest.raises(ValueError, match=r"inner=newton does not solve .* lasso: .* workingset"):
        resolve_inner({"solver": "newton"}, "lasso", models.SOLVERS, 1e-10)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="tols"):
        resolve_inner({"tols": 1e-3}, "lasso", models.SOLVERS, 1e-10)


def test_every_option_of_the_group_is_a_solver_some_task_offers():
    offered = {"auto", *models.SOLVERS, *smooth.METHODS, *fixed_point.METHODS,
               "native", "cvxpylayers"}
    options = {p.stem: yaml.safe_load(p.read_text()) for p in CONF.glob("*.yaml")}
    assert {"default", "workingset", "proxgrad", "newton", "lbfgs", "anderson"} <= set(options)
    for name, cfg in options.items():
        assert set(cfg) == {"solver", "tol", "maxiter"}, name
        assert cfg["solver"] in offered, name
        assert name == "default" or cfg["solver"] == name, name
