"""Outer methods, one per file; each has ``init(problem)`` and ``step(problem, state)``."""

from bilevel.outer.base import BilevelProblem, OuterResult, OuterState, run_outer
from bilevel.outer.implicit import ImplicitGD

__all__ = ["BilevelProblem", "ImplicitGD", "OuterResult", "OuterState", "run_outer"]
