"""Prox and projection operators, one family per file, each documenting its kinks.

Operators (``v`` is the point; parameters broadcast against it):

- :func:`l1` ``(v, threshold)``: soft-thresholding, prox of ``threshold·‖·‖₁``; with a vector
  ``threshold`` it is the weighted ℓ1 prox, also exported as :data:`weighted_l1`.
- :func:`group_l1` ``(v, threshold, groups)``: block soft-thresholding, prox of
  ``Σ_g threshold_g·‖v_g‖₂`` (group Lasso) with ``groups`` the group id of each coordinate of
  the last dimension.
- :func:`nonneg_l1` ``(v, threshold)``: ``max(v − threshold, 0)``, prox of
  ``threshold·Σy + indicator(y ≥ 0)``.
- :func:`elastic_net` ``(v, l1, l2)``: prox of ``l1·‖·‖₁ + (l2/2)·‖·‖₂²``.
- :func:`nonneg` ``(v)``: projection onto ``{x ≥ 0}``.
- :func:`box` ``(v, lower, upper)``: projection onto ``[lower, upper]``.
- :func:`simplex` ``(v, radius=1.0)``: projection onto ``{x ≥ 0, Σx = radius}`` along the last
  dimension.
- :func:`l1_ball` ``(v, radius=1.0)``: projection onto ``{‖x‖₁ ≤ radius}`` along the last
  dimension.
- :func:`l2_ball` ``(v, radius=1.0)``: projection onto ``{‖x‖₂ ≤ radius}`` along the last
  dimension.
- :func:`linf_ball` ``(v, radius=1.0)``: projection onto ``{‖x‖∞ ≤ radius}`` (clipping to
  ``[−radius, radius]``, one radius per vector).

Convention: each operator is a plain function of torch ops; at a point of nondifferentiability
(a *kink*) autograd returns the conservative-Jacobian element of the constant (inactive) piece,
i.e. a kinked coordinate gets a zero Jacobian row (on the boundary of their ball, ``l2_ball``,
which has no constant piece, and ``l1_ball`` return the identity of their inside piece). Inside
:func:`recording` every call appends one :class:`ProxReport` (inactive mask, distance to the
kink set, kink normal, symmetry).

``REGISTRY`` maps each operator's name to a :class:`ProxSpec` (the function, whether it is a
projection, whether it is separable, and example parameters) for conformance suites; call an
operator there as ``spec.fn(v, **spec.kwargs(v))``.

Note: the submodules share their names with the functions, so ``solvers.prox.l1`` is the
function; reach a module with ``importlib.import_module("solvers.prox.l1")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from solvers.prox.base import ProxReport, recording
from solvers.prox.box import box
from solvers.prox.elastic_net import elastic_net
from solvers.prox.group_l1 import group_l1
from solvers.prox.l1 import l1
from solvers.prox.l1_ball import l1_ball
from solvers.prox.l2_ball import l2_ball
from solvers.prox.linf_ball import linf_ball
from solvers.prox.nonneg import nonneg
from solvers.prox.nonneg_l1 import nonneg_l1
from solvers.prox.simplex import simplex

#: Weighted ℓ1 prox: :func:`l1` with a per-coordinate ``threshold`` (the same function).
weighted_l1 = l1


@dataclass(frozen=True)
class ProxSpec:
    """How to call one operator in a generic test.

    Attributes:
        fn: the operator, ``fn(v, **spec.kwargs(v)) -> Tensor``.
        projection: ``fn`` is a Euclidean projection (idempotent, output feasible).
        separable: ``fn`` acts coordinate-wise (else along the last dimension).
        params: example keyword parameters (floats) valid for any ``v``; the differentiable
            parameters of ``fn``.
        sized_params: builds the example parameters whose shape follows the last dimension
            ``n`` of ``v`` (``group_l1``'s ``groups``), ``n -> {name: value}``; ``None``: none.
    """

    fn: Callable[..., Tensor]
    projection: bool
    separable: bool
    params: Mapping[str, Any] = field(default_factory=dict)
    sized_params: Callable[[int], Mapping[str, Any]] | None = None

    def kwargs(self, v: Tensor) -> dict[str, Any]:
        """All example keyword parameters for a call at ``v``: ``fn(v, **spec.kwargs(v))``."""
        sized = self.sized_params(v.shape[-1]) if self.sized_params is not None else {}
        return {**self.params, **sized}


def _alternating_groups(n: int) -> dict[str, Tensor]:
    """Two interleaved groups (even and odd coordinates): ``groups = [0, 1, 0, 1, …]``."""
    return {"groups": torch.arange(n) % 2}


REGISTRY: Mapping[str, ProxSpec] = MappingProxyType(
    {
        "l1": ProxSpec(l1, projection=False, separable=True, params={"threshold": 0.5}),
        "group_l1": ProxSpec(
            group_l1,
            projection=False,
            separable=False,
            params={"threshold": 0.5},
            sized_params=_alternating_groups,
        ),
        "nonneg_l1": ProxSpec(
            nonneg_l1, projection=False, separable=True, params={"threshold": 0.5}
        ),
        "elastic_net": ProxSpec(
            elastic_net, projection=False, separable=True, params={"l1": 0.5, "l2": 0.3}
        ),
        "nonneg": ProxSpec(nonneg, projection=True, separable=True),
        "box": ProxSpec(box, projection=True, separable=True, params={"lower": -1.0, "upper": 2.0}),
        "simplex": ProxSpec(simplex, projection=True, separable=False, params={"radius": 1.0}),
        "l1_ball": ProxSpec(l1_ball, projection=True, separable=False, params={"radius": 2.0}),
        "l2_ball": ProxSpec(l2_ball, projection=True, separable=False, params={"radius": 1.5}),
        "linf_ball": ProxSpec(linf_ball, projection=True, separable=True, params={"radius": 1.5}),
    }
)

__all__ = [
    "REGISTRY",
    "ProxReport",
    "ProxSpec",
    "box",
    "elastic_net",
    "group_l1",
    "l1",
    "l1_ball",
    "l2_ball",
    "linf_ball",
    "nonneg",
    "nonneg_l1",
    "recording",
    "simplex",
    "weighted_l1",
]
