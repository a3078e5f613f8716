"""``QP``: one differentiable convex QP solver, whatever the backend.

    min_z ½ zᵀQz + qᵀz   s.t.  A z = b,  G z ≤ h      (θ = (Q, q, G, h, A, b))

Both backends return ``y = [z, ν, λ]`` and share the KKT optimality mapping of
:mod:`solvers.qp.kkt`, so ``bilevel.implicit_solve`` differentiates either the same way (never
through cvxpylayers' own backward):

- ``"native"``: :class:`~solvers.qp.native.NativeQP`, a batched interior-point method in torch
  (CPU and CUDA, per-item status: an infeasible item gets NaN, the rest of the batch goes on);
- ``"cvxpylayers"``: :class:`~solvers.qp.cvxpylayers_backend.CvxpyQP`, cvxpylayers' forward pass
  at tight tolerances (built once per problem size; one infeasible item fails the batch).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from solvers.base import Structure, Theta
from solvers.qp.kkt import QPParams, as_params, kkt_mapping, kkt_structure
from solvers.qp.native import NativeQP

BACKENDS = ("native", "cvxpylayers")


class QP:
    """A convex QP solved by ``backend`` (see the module docstring).

    Args:
        backend: ``"native"`` or ``"cvxpylayers"``.
        **options: the backend's own options (e.g. ``tol``, ``maxiter``; ``solver_args`` for
            cvxpylayers).

    Attributes:
        info, status, batch_ndim: those of the backend after the last ``run``.
    """

    def __init__(self, backend: str = "native", **options: Any):
        if backend not in BACKENDS:
            raise ValueError(f"unknown QP backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.options = options
        self._native = NativeQP(**options) if backend == "native" else None
        self._layers: dict[tuple[int, int, int], Any] = {}
        self._last: Any = self._native

    @property
    def tol(self) -> float:
        return self._last.tol if self._last is not None else self.options.get("tol", 0.0)

    @tol.setter
    def tol(self, value: float) -> None:  # read by the backends at each run
        self.options["tol"] = value
        for backend in (self._native, *self._layers.values()):
            if backend is not None:
                backend.tol = value

    def __getattr__(self, name: str) -> Any:  # info, status, batch_ndim of the last backend
        if name.startswith("_") or self.__dict__.get("_last") is None:
            raise AttributeError(name)
        return getattr(self.__dict__["_last"], name)

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Solve at ``θ = (Q, q, G, h, A, b)``; returns ``y = [z, ν, λ]``."""
        params = as_params(*theta)  # validated once, here (the native backend trusts it)
        self._last = self._backend(params)
        return self._last.run(params if self._last is self._native else theta, init)

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """The backend's KKT mapping: the native one gives the items it could not solve (NaN
        in ``y``) identity rows, so that they do not make ``∂yH`` singular."""
        if self._last is not None:
            return self._last.optimality(y, theta)
        return kkt_mapping(y, theta)

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        return kkt_structure(y, theta)

    def _backend(self, params: QPParams) -> Any:
        if self._native is not None:
            return self._native
        sizes = params.sizes
        if sizes not in self._layers:
            from solvers.qp.cvxpylayers_backend import CvxpyQP  # imports cvxpy: on demand

            n, p, m = sizes
            self._layers[sizes] = CvxpyQP(n, m, p, **self.options)
        return self._layers[sizes]
