"""Minibatch first- and second-order oracles of a bilevel problem, by ``torch.autograd``.

With ``g(y, θ, I)`` the inner objective averaged over the inner samples ``I`` and ``f(y, θ, J)``
the outer objective averaged over the outer samples ``J`` (``None``: all samples), the
hypergradient of ``h(θ) = f(y*(θ), θ)`` is

    ∇h(θ) = ∇_θ f − ∇²_θy g · v*,    ∇²_yy g · v* = ∇_y f,

all at ``(y*(θ), θ)``. The stochastic methods replace each term by a minibatch estimate
(legitimate by the integral rule: the expectation of conservative gradients is a conservative
gradient). Second-order products are double-backward products: with ``d = ∇_y g`` built with
``create_graph=True``, the vector-Jacobian product of ``d`` with ``v`` returns both
``∇²_yy g · v`` and ``∇²_θy g · v`` in one backward pass; no Hessian is formed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel.errors import MissingMinibatchLosses
from bilevel.outer.base import BilevelProblem

Loss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def require_losses(problem: BilevelProblem, method: str) -> tuple[Loss, Loss]:
    """``(inner_loss, outer_loss)`` of the problem, or :class:`MissingMinibatchLosses` (a
    ValueError) naming the fix."""
    if problem.inner_loss is None or problem.outer_loss is None:
        raise MissingMinibatchLosses(
            f"{method} needs the minibatch losses of the problem: set BilevelProblem.inner_loss "
            "= g(y, θ, idx) and outer_loss = f(y, θ, idx) (with n_inner / n_outer), or use "
            "ImplicitGD, which needs only the inner solver and the outer loss"
        )
    return problem.inner_loss, problem.outer_loss


def _leaves(y: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    return y.detach().requires_grad_(True), theta.detach().requires_grad_(True)


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def inner_grad(g: Loss, y: Tensor, theta: Tensor, idx: Tensor | None) -> Tensor:
    """``∇_y g(y, θ, I)``."""
    y_ = y.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(g(y_, theta.detach(), idx), y_)
    return grad


def hvp(g: Loss, y: Tensor, theta: Tensor, idx: Tensor | None, v: Tensor) -> Tensor:
    """``∇²_yy g(y, θ, I) · v``."""
    y_ = y.detach().requires_grad_(True)
    (d,) = torch.autograd.grad(g(y_, theta.detach(), idx), y_, create_graph=True)
    (out,) = torch.autograd.grad(d, y_, grad_outputs=v, allow_unused=True)
    return _or_zeros(out, y)


@dataclass
class InnerOracle:
    """``∇_y g``, ``∇²_yy g · v`` and ``∇²_θy g · v`` on one inner minibatch, at one point."""

    grad_y: Tensor
    hvp: Tensor
    cross: Tensor


def inner_oracle(g: Loss, y: Tensor, theta: Tensor, idx: Tensor | None, v: Tensor
                 ) -> InnerOracle:
    """The three inner quantities at ``(y, θ)`` on samples ``idx`` (one double backward)."""
    y_, t_ = _leaves(y, theta)
    (d,) = torch.autograd.grad(g(y_, t_, idx), y_, create_graph=True)
    hv, cross = torch.autograd.grad(d, (y_, t_), grad_outputs=v, allow_unused=True)
    return InnerOracle(d.detach(), _or_zeros(hv, y), _or_zeros(cross, theta))


def neumann(g: Loss, y: Tensor, theta: Tensor, batches: Callable[[], Tensor | None],
            b: Tensor, eta: float, terms: int) -> Tensor:
    """``η Σ_{j<terms} (I − η∇²_yy g)^j b``: the Neumann series of ``(∇²_yy g)⁻¹ b`` truncated
    after ``terms`` terms, each Hessian-vector product on a fresh minibatch ``batches()``
    (it converges as ``terms → ∞`` when ``0 < ηL < 2``, ``L`` the curvature of ``g``)."""
    term = total = b
    for _ in range(terms - 1):
        term = term - eta * hvp(g, y, theta, batches(), term)
        total = total + term
    return eta * total


def cross(g: Loss, y: Tensor, theta: Tensor, idx: Tensor | None, v: Tensor) -> Tensor:
    """``∇²_θy g(y, θ, I) · v`` (the θ-part of the double-backward product)."""
    y_, t_ = _leaves(y, theta)
    (d,) = torch.autograd.grad(g(y_, t_, idx), y_, create_graph=True)
    (out,) = torch.autograd.grad(d, t_, grad_outputs=v, allow_unused=True)
    return _or_zeros(out, theta)


@dataclass
class OuterOracle:
    """``f``, ``∇_y f`` and ``∇_θ f`` on one outer minibatch, at one point."""

    value: Tensor
    grad_y: Tensor
    grad_theta: Tensor


def outer_oracle(f: Loss, y: Tensor, theta: Tensor, idx: Tensor | None) -> OuterOracle:
    """The outer value and its two partial gradients at ``(y, θ)`` on samples ``idx``."""
    y_, t_ = _leaves(y, theta)
    value = f(y_, t_, idx)
    gy, gt = torch.autograd.grad(value, (y_, t_), allow_unused=True)
    return OuterOracle(value.detach(), _or_zeros(gy, y), _or_zeros(gt, theta))

