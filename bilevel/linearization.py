"""Products with the conservative Jacobian ``[A B] = [∂θH ∂yH]`` of an optimality mapping.

The graph of ``H`` is built once at ``(θ, y*)`` and reused by every product, so one iteration of
an adjoint linear solver costs one backward pass through ``H`` and nothing more:

- ``Bᵀu`` and ``Aᵀu`` are vector-Jacobian products on that one graph;
- ``Bw + Aθ̇`` (forward mode) uses the double-VJP identity: ``g(u) = [A B]ᵀu`` is linear in
  ``u``, so the VJP of ``g`` at ``(w, θ̇)`` is ``Bw + Aθ̇``; built on first use, then reused.

Two interchangeable backends: plain autograd (low per-call overhead) when no ``torch.func``
transform is active, and ``torch.func.vjp`` when ``implicit_solve`` itself runs inside one
(``torch.func.jvp``, ``grad``, ``vjp``), where plain autograd on fresh leaves is not allowed.

Vectors are handled in the flattened layout ``(m, k)`` used by ``bilevel.linalg``: ``m``
independent problems (the solver's leading batch dimensions) of ``k`` unknowns each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Mapping = Callable[[Tensor, tuple[Tensor, ...]], Tensor]
Vjp = Callable[[Tensor], tuple[Tensor, ...]]


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
        if torch._C._functorch.maybe_current_level() is None:
            H, self._vjp, self._vjp_y, self._vjp_theta = _autograd_vjp(mapping, self._y,
                                                                       self._thetas)
        else:
            H, self._vjp = torch.func.vjp(lambda yy, *ts: mapping(yy, ts), self._y, *self._thetas)
            self._vjp_y = lambda u: self._vjp(u)[0]
            self._vjp_theta = lambda u: tuple(self._vjp(u)[1:])
        if H.shape != y.shape:
            raise ValueError(
                f"the optimality mapping returned shape {tuple(H.shape)} for y of shape "
                f"{tuple(y.shape)}: H(θ, y) must be shaped like y"
            )
        self._H = H.detach()
        self._jvp: Vjp | None = None

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
        return self.flat(self._vjp_y(self.unflat(u)))

    def rmatvec_theta(self, u: Tensor) -> tuple[Tensor, ...]:
        """``Aᵀu``, one entry per θ (the backward pass skips what only ``Bᵀu`` needs)."""
        return self._vjp_theta(self.unflat(u))

    def rmatvec(self, u: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(Bᵀu, Aᵀu)`` from one VJP ``[A B]ᵀu`` (``Bᵀu`` in the ``(m, k)`` layout, ``Aᵀu``
        one entry per θ): the θ-part of a hypergradient and the residual of the ``u`` it
        comes from, for the price of one backward pass."""
        grads = self._vjp(self.unflat(u))
        return self.flat(grads[0]), tuple(grads[1:])

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
                return torch.func.vjp(self._mapping, self._y, self._thetas)[1](u)

            _, vjp = torch.func.vjp(transposed, torch.zeros_like(self._H))
            self._jvp = lambda cotangents: vjp((cotangents[0], cotangents[1:]))
        dots = tuple(theta_dots) + (None,) * (len(self._thetas) - len(theta_dots))
        cotangents = (
            torch.zeros(self.shape, dtype=self._y.dtype, device=self._y.device)
            if w is None else self.unflat(w),
            *(torch.zeros_like(t) if d is None else d
              for t, d in zip(self._thetas, dots, strict=True)),
        )
        (out,) = self._jvp(cotangents)
        return self.flat(out)


def _autograd_vjp(mapping: Mapping, y: Tensor, thetas: tuple[Tensor, ...]
                  ) -> tuple[Tensor, Vjp, Callable[[Tensor], Tensor], Vjp]:
    """``H``, ``u ↦ (Bᵀu, A₁ᵀu, …)``, ``u ↦ Bᵀu`` and ``u ↦ (A₁ᵀu, …)`` on one retained
    autograd graph (the partial ones skip the branches only the other part needs: the
    θ-gradients can be large, a QP's ``Q`` per batch item; ``Bᵀu`` can be the expensive part,
    a Hessian-vector product over all the data)."""
    with torch.enable_grad():
        leaves = (y.detach().requires_grad_(True),
                  *(t.detach().requires_grad_(True) for t in thetas))
        H = mapping(leaves[0], leaves[1:])

    def vjp(u: Tensor) -> tuple[Tensor, ...]:
        if not H.requires_grad:  # H depends on neither y nor θ
            return tuple(torch.zeros_like(x) for x in leaves)
        grads = torch.autograd.grad(H, leaves, u, retain_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g
                     for x, g in zip(leaves, grads, strict=True))

    def vjp_y(u: Tensor) -> Tensor:
        if not H.requires_grad:
            return torch.zeros_like(leaves[0])
        (grad,) = torch.autograd.grad(H, leaves[0], u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(leaves[0]) if grad is None else grad

    def vjp_theta(u: Tensor) -> tuple[Tensor, ...]:
        if not H.requires_grad or not thetas:
            return tuple(torch.zeros_like(x) for x in leaves[1:])
        grads = torch.autograd.grad(H, leaves[1:], u, retain_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g
                     for x, g in zip(leaves[1:], grads, strict=True))

    return H, vjp, vjp_y, vjp_theta
