"""Exceptions and warning classes of the engine.

:class:`ConvergenceWarning` belongs to the solvers floor and is re-exported here.
"""

from __future__ import annotations

from solvers.base import ConvergenceWarning, DivergenceError


class SingularJacobianError(RuntimeError):
    """``∂yH`` is singular (or too ill-conditioned) on the active set, or the adjoint linear
    solve missed its tolerance: the implicit function theorem does not give a derivative here.

    Fixes: remove the cause (e.g. duplicated features), regularise the system with
    ``ImplicitAdjoint(ridge=1e-8)``, or take the minimum-norm solution with
    ``ImplicitAdjoint(linear_solver="lstsq")``; both fallbacks warn.
    """


class KinkWarning(UserWarning):
    """The solution lies within tolerance of a kink of the optimality mapping: several
    conservative Jacobians exist and the returned derivative is one selection.
    ``bilevel.kink_certificate`` says whether the hypergradient depends on the selection."""


class MissingMinibatchLosses(ValueError):
    """A stochastic outer method (one that samples minibatches) was given a problem without the
    minibatch losses ``BilevelProblem.inner_loss`` / ``outer_loss``."""


class AdjointFallbackWarning(UserWarning):
    """A regularised (ridge) or least-squares adjoint solve was used: the returned derivative
    is that of a perturbed or minimum-norm system, not the implicit-function derivative."""


__all__ = [
    "AdjointFallbackWarning",
    "ConvergenceWarning",
    "DivergenceError",
    "KinkWarning",
    "MissingMinibatchLosses",
    "SingularJacobianError",
]
