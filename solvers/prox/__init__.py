"""Prox and projection operators, one family per file, each documenting its kinks.

Operators (``v`` is the point; parameters broadcast against it):

- :func:`l1` ``(v, threshold)``: soft-thresholding, prox of ``threshold·‖·‖₁``.
- :func:`elastic_net` ``(v, l1, l2)``: prox of ``l1·‖·‖₁ + (l2/2)·‖·‖₂²``.
- :func:`nonneg` ``(v)``: projection onto ``{x ≥ 0}``.
- :func:`box` ``(v, lower, upper)``: projection onto ``[lower, upper]``.
- :func:`simplex` ``(v, radius=1.0)``: projection onto ``{x ≥ 0, Σx = radius}`` along the last
  dimension.
- :func:`l2_ball` ``(v, radius=1.0)``: projection onto ``{‖x‖₂ ≤ radius}`` along the last
  dimension.

Convention: each operator is a plain function of torch ops; at a point of nondifferentiability
(a *kink*) autograd returns the conservative-Jacobian element of the constant (inactive) piece,
i.e. a kinked coordinate gets a zero Jacobian row (``l2_ball`` has no constant piece and returns
the identity of its inside piece). Inside :func:`recording` every call appends one
:class:`ProxReport` (inactive mask, distance to the kink set, kink normal, symmetry).

``REGISTRY`` maps each operator's name to a :class:`ProxSpec` (the function, whether it is a
projection, whether it is separable, and example parameters) for conformance suites.

Note: the submodules share their names with the functions, so ``solvers.prox.l1`` is the
function; reach a module with ``importlib.import_module("solvers.prox.l1")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from solvers.prox.base import ProxReport, recording
from solvers.prox.box import box
from solvers.prox.elastic_net import elastic_net
from solvers.prox.l1 import l1
from solvers.prox.l2_ball import l2_ball
from solvers.prox.nonneg import nonneg
from solvers.prox.simplex import simplex


@dataclass(frozen=True)
class ProxSpec:
    """How to call one operator in a generic test.

    Attributes:
        fn: the operator, ``fn(v, **params) -> Tensor``.
        projection: ``fn`` is a Euclidean projection (idempotent, output feasible).
        separable: ``fn`` acts coordinate-wise (else along the last dimension).
        params: example keyword parameters (floats) valid for any ``v``.
    """

    fn: Callable[..., Tensor]
    projection: bool
    separable: bool
    params: Mapping[str, Any] = field(default_factory=dict)


REGISTRY: Mapping[str, ProxSpec] = MappingProxyType(
    {
        "l1": ProxSpec(l1, projection=False, separable=True, params={"threshold": 0.5}),
        "elastic_net": ProxSpec(
            elastic_net, projection=False, separable=True, params={"l1": 0.5, "l2": 0.3}
        ),
        "nonneg": ProxSpec(nonneg, projection=True, separable=True),
        "box": ProxSpec(box, projection=True, separable=True, params={"lower": -1.0, "upper": 2.0}),
        "simplex": ProxSpec(simplex, projection=True, separable=False, params={"radius": 1.0}),
        "l2_ball": ProxSpec(l2_ball, projection=True, separable=False, params={"radius": 1.5}),
    }
)

__all__ = [
    "REGISTRY",
    "ProxReport",
    "ProxSpec",
    "box",
    "elastic_net",
    "l1",
    "l2_ball",
    "nonneg",
    "recording",
    "simplex",
]
