"""Products with the conservative Jacobian ``[A B] = [∂θH ∂yH]`` of an optimality mapping.

The graph of ``H`` is built once at ``(θ, y*)`` and reused by every product, so one iteration of
an adjoint linear solver costs one backward pass through ``H`` and nothing more:

- ``Bᵀu`` and ``Aᵀu`` are vector-Jacobian products (``torch.func.vjp``, built once each);
- ``Bw + Aθ̇`` (forward mode) uses the double-VJP identity: ``g(u) = [A B]ᵀu`` is linear in
  ``u``, so the VJP of ``g`` at ``(w, θ̇)`` is ``Bw + Aθ̇``; built on first use, then reused.

``torch.func`` is used throughout so that the products also work when ``implicit_solve`` is
itself inside a ``torch.func`` transform (``jvp``, ``grad``, ``vjp``).

Vectors are handled in the flattened layout ``(m, k)`` used by ``bilevel.linalg``: ``m``
independent problems (the solver's leading batch dimensions) of ``k`` unknowns each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Mapping = Callable[[Tensor, tuple[Tensor, ...]], Tensor]


class Linearization:
    """``H`` linearised at ``(θ, y)``.

    Args:
        mapping: ``(y, thetas) -> H`` with ``H`` shaped like ``y``; differentiable.
        y: the point ``y*``.
        thetas: the outer variables.
        batch_ndim: leading dimensions of ``y`` indexing independent problems.

    Raises:
        ValueError: ``H`` is not shaped like ``y``.
    """

    def __init__(self, mapping: Mapping, y: Tensor, thetas: Sequence[Tensor], batch_ndim: int = 0):
        self.shape = y.shape
        self.m = int(torch.Size(y.shape[:batch_ndim]).numel())
        self.k = y.numel() // max(self.m, 1)
        self._y = y.detach()
        self._thetas = tuple(t.detach() for t in thetas)
        self._mapping = mapping
        H, self._vjp_y = torch.func.vjp(lambda yy: mapping(yy, self._thetas), self._y)
        if H.shape != y.shape:
            raise ValueError(
                f"the optimality mapping returned shape {tuple(H.shape)} for y of shape "
                f"{tuple(y.shape)}: H(θ, y) must be shaped like y"
            )
        self._H = H.detach()
        self._vjp_theta: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        self._jvp: Callable[[tuple[Tensor, ...]], tuple[Tensor]] | None = None

    @property
    def residual(self) -> Tensor:
        """``H(θ, y)`` at the linearisation point, in the ``(m, k)`` layout."""
        return self.flat(self._H)

    def flat(self, x: Tensor) -> Tensor:
        """``x`` shaped like ``y`` → ``(m, k)``."""
        return x.reshape(self.m, self.k)

    def unflat(self, x: Tensor) -> Tensor:
        """``(m, k)`` → shaped like ``y``."""
        return x.reshape(self.shape)

    def rmatvec_y(self, u: Tensor) -> Tensor:
        """``Bᵀu`` for ``u`` of shape ``(m, k)``."""
        (out,) = self._vjp_y(self.unflat(u))
        return self.flat(out)

    def rmatvec_theta(self, u: Tensor) -> tuple[Tensor, ...]:
        """``Aᵀu``, one entry per θ."""
        if self._vjp_theta is None:
            _, self._vjp_theta = torch.func.vjp(
                lambda *ts: self._mapping(self._y, ts), *self._thetas
            )
        return self._vjp_theta(self.unflat(u))

    def rows_y(self, index: Tensor) -> Tensor:
        """Rows ``index`` of ``B`` restricted to the columns ``index``, for every problem.

        Returns:
            ``(m, c, c)`` with ``out[b, i, j] = B_b[index[i], index[j]]`` (``c = len(index)``).
        """
        c = index.numel()
        onehot = torch.zeros(c, self.m, self.k, dtype=self._y.dtype, device=self._y.device)
        onehot[torch.arange(c, device=index.device), :, index] = 1.0
        try:
            rows = torch.vmap(self.rmatvec_y)(onehot)
        except RuntimeError:  # an op of H without a batching rule: one VJP per row
            rows = torch.stack([self.rmatvec_y(e) for e in onehot])
        return rows[:, :, index].permute(1, 0, 2)

    def matvec(self, w: Tensor | None, theta_dots: Sequence[Tensor | None] = ()) -> Tensor:
        """``B w + Σ_j A_j θ̇_j`` (forward-mode product), ``w`` of shape ``(m, k)`` or None."""
        if self._jvp is None:
            def transposed(u: Tensor) -> tuple[Tensor, ...]:
                _, vjp = torch.func.vjp(self._mapping, self._y, self._thetas)
                g_y, g_thetas = vjp(u)
                return (g_y, *g_thetas)

            _, self._jvp = torch.func.vjp(transposed, torch.zeros_like(self._H))
        dots = tuple(theta_dots) + (None,) * (len(self._thetas) - len(theta_dots))
        cotangents = (
            torch.zeros(self.shape, dtype=self._y.dtype, device=self._y.device)
            if w is None else self.unflat(w),
            *(torch.zeros_like(t) if d is None else d for t, d in zip(self._thetas, dots,
                                                                       strict=True)),
        )
        (out,) = self._jvp(cotangents)
        return self.flat(out)
