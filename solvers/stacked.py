"""K independent inner problems that share θ, solved as one: e.g. the K folds of a cross-validation.

With solvers ``S_1 … S_K`` whose solutions have one shape, ``y = (y_1, …, y_K)`` stacked along a
new leading dimension and

    ``H(θ, y) = (H_1(θ, y_1), …, H_K(θ, y_K))``,   ``H(θ, y*(θ)) = 0``.

``∂yH`` is block diagonal (``batch_ndim = 1``: the engine solves one implicit system per fold), and
``∂θH`` stacks the members' blocks, so the hypergradient of ``F(y_1, …, y_K)`` sums the folds'
contributions. The kinks of ``H`` are those of its members; ``structure`` stacks their hints
(inactive rows, kink distances, block-diagonal preconditioner) where every member gives one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from solvers.base import InnerSolver, SolveInfo, Structure, Theta


class Stacked:
    """``K`` inner solvers with a common θ and a common solution shape, as one solver.

    Args:
        solvers: the members (each ``batch_ndim = 0``).

    Attributes:
        info: the members' last solves combined: iterations summed, the largest residual,
            converged when all are.

    Raises:
        ValueError: no member, or a member that is itself batched.
    """

    batch_ndim = 1

    def __init__(self, solvers: Sequence[InnerSolver]):
        self.solvers = list(solvers)
        if not self.solvers:
            raise ValueError("Stacked needs at least one solver")
        for k, s in enumerate(self.solvers):
            if getattr(s, "batch_ndim", 0) != 0:
                raise ValueError(f"solver {k} is batched (batch_ndim={s.batch_ndim}); Stacked "
                                 "takes unbatched members: stack the batch items instead")
        self.info: SolveInfo | None = None

    @property
    def tol(self) -> float | None:
        """The loosest member tolerance (the engine's default kink tolerance follows it)."""
        tols = [getattr(s, "tol", None) for s in self.solvers]
        return max(tols) if all(t is not None for t in tols) else None

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """``y*_k(θ)`` for every member, stacked; ``init[k]`` warm-starts member ``k``."""
        if init is not None and init.shape[0] != len(self.solvers):
            raise ValueError(f"init has {init.shape[0]} rows along its first dimension but "
                             f"Stacked has {len(self.solvers)} solvers: pass one start per member")
        ys = [s.run(theta, None if init is None else init[k]) for k, s in enumerate(self.solvers)]
        infos = [getattr(s, "info", None) for s in self.solvers]
        if all(i is not None for i in infos):
            self.info = SolveInfo(
                iterations=sum(i.iterations for i in infos),
                residual=max(i.residual for i in infos),
                tol=max(i.tol for i in infos),
                converged=all(i.converged for i in infos),
            )
        return torch.stack(ys)

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """``H(θ, y) = (H_k(θ, y_k))_k``, stacked like ``y``."""
        return torch.stack([s.optimality(y[k], theta) for k, s in enumerate(self.solvers)])

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        """The members' hints stacked; a hint is dropped unless every member gives it."""
        parts = [s.structure(y[k], theta) if hasattr(s, "structure") else Structure()
                 for k, s in enumerate(self.solvers)]
        inactive = _stack([p.inactive for p in parts])
        kinks = [p.kink_distance for p in parts]
        if any(d is not None for d in kinks):
            kinks = [torch.full_like(y[k], torch.inf) if d is None else d.expand_as(y[k])
                     for k, d in enumerate(kinks)]
        kink_distance = _stack(kinks)
        preconditioners = [p.preconditioner for p in parts]
        preconditioner = None
        if all(p is not None for p in preconditioners):
            preconditioner = _block_diagonal(preconditioners)
        return Structure(inactive=inactive, kink_distance=kink_distance,
                         symmetric=all(p.symmetric for p in parts), preconditioner=preconditioner)


def _stack(tensors: list[Tensor | None]) -> Tensor | None:
    return torch.stack(tensors) if all(t is not None for t in tensors) else None


def _block_diagonal(blocks: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    """``r ↦ (P_k r_k)_k`` on the ``(K, k)`` layout (one row per member)."""
    def apply(r: Tensor) -> Tensor:
        return torch.cat([P(r[k:k + 1]) for k, P in enumerate(blocks)])
    return apply
