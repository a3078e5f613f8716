"""Outer methods, one per file; each has ``init(problem)`` and ``step(problem, state)``.

Hypergradient descent with a ``torch.optim`` optimizer: :class:`ImplicitGD` (exact inner solve,
implicit hypergradient; deterministic or outer minibatches) and :class:`Unrolled` (ITD and
truncated backprop); :class:`BoundedLBFGS` (projected L-BFGS on the box with implicit
hypergradients). Stochastic joint / two-loop methods on minibatches: :class:`SOBA`,
:class:`SABA` (variance-reduced), :class:`AmIGO`, :class:`StocBiO`, :class:`TTSA`. Shared
pieces: :class:`StepSize` schedules (Robbins–Monro checked), :class:`MinibatchSampler`.
"""

from bilevel.outer.amigo import AmIGO
from bilevel.outer.base import BilevelProblem, OuterResult, OuterState, run_outer
from bilevel.outer.implicit import ImplicitGD
from bilevel.outer.lbfgsb import BoundedLBFGS
from bilevel.outer.saba import SABA
from bilevel.outer.sampling import MinibatchSampler
from bilevel.outer.schedules import StepSize, StepSizeWarning
from bilevel.outer.soba import SOBA
from bilevel.outer.stocbio import StocBiO
from bilevel.outer.ttsa import TTSA
from bilevel.outer.unrolled import Unrolled

__all__ = [
    "SABA",
    "SOBA",
    "TTSA",
    "AmIGO",
    "BilevelProblem",
    "BoundedLBFGS",
    "ImplicitGD",
    "MinibatchSampler",
    "OuterResult",
    "OuterState",
    "StepSize",
    "StepSizeWarning",
    "StocBiO",
    "Unrolled",
    "run_outer",
]
