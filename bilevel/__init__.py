"""bilevel: bilevel optimization with nonsmooth implicit differentiation in PyTorch.

The engine: :func:`implicit_solve` returns the solution of an inner problem with the derivative
given by the nonsmooth implicit function theorem attached; :class:`ImplicitAdjoint` says how
the linear systems are solved; diagnostics and errors say when that derivative is not unique or
not defined. Importing this package does not import Hydra (the app lives in ``bilevel.cli``).
"""

from bilevel.adjoint import LINEAR_SOLVERS, ImplicitAdjoint, ImplicitReport
from bilevel.diagnostics import KinkCertificate, kink_certificate
from bilevel.errors import (
    AdjointFallbackWarning,
    ConvergenceWarning,
    DivergenceError,
    KinkWarning,
    MissingMinibatchLosses,
    SingularJacobianError,
)
from bilevel.implicit import implicit_solve

__all__ = [
    "LINEAR_SOLVERS",
    "AdjointFallbackWarning",
    "ConvergenceWarning",
    "DivergenceError",
    "ImplicitAdjoint",
    "ImplicitReport",
    "KinkCertificate",
    "KinkWarning",
    "MissingMinibatchLosses",
    "SingularJacobianError",
    "implicit_solve",
    "kink_certificate",
]
__version__ = "0.1.0"
