"""Inner solvers: each has ``run(theta, init) -> y`` and ``optimality(y, theta) -> H`` with
``H(θ, y*) = 0``. The ground floor of the framework: imports torch only (and cvxpy for QPs)."""

from solvers import datafits, models, penalties, prox
from solvers.base import ConvergenceWarning, DivergenceError, InnerSolver, SolveInfo, Structure
from solvers.fixed_point import FixedPoint
from solvers.proxgrad import ProxGrad
from solvers.qp.qp import QP
from solvers.smooth import Smooth
from solvers.stacked import Stacked
from solvers.workingset import WorkingSet

__all__ = [
    "ConvergenceWarning", "DivergenceError", "FixedPoint", "InnerSolver", "ProxGrad", "QP",
    "Smooth", "SolveInfo", "Stacked", "Structure", "WorkingSet", "datafits", "models",
    "penalties", "prox",
]
