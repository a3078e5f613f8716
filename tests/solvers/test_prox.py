"""Conformance suite for the prox / projection operators of ``solvers.prox``.

Every operator of ``REGISTRY`` is checked for: autograd Jacobian vs central differences away
from kinks (w.r.t. ``v`` and its parameters), the inactive mask vs the zero rows of the
Jacobian, the constant-piece convention at exact kinks, idempotence and feasibility of the
projections, closed-form / bisection references, the recording protocol and input validation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torch import Tensor
from torch.func import jacrev

from solvers import prox
from solvers.prox import REGISTRY, ProxReport, recording

settings.register_profile("prox", max_examples=50, derandomize=True, deadline=None)
PROFILE = settings.get_profile("prox")

NAMES = sorted(REGISTRY)
PROJECTIONS = [name for name in NAMES if REGISTRY[name].projection]
DT = torch.float64
SMOOTH = 1e-3  # minimal kink distance at which central differences are trusted
H = 1e-6

ELEMENTS = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)
# Shapes (n,) or (batch, n); the last dimension is the vector of the non-separable operators.
POINTS = arrays(
    np.float64, array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5), elements=ELEMENTS
)


def _tensor(x: np.ndarray) -> Tensor:
    return torch.tensor(x, dtype=DT)


def _call(name: str, v: Tensor, **override: object) -> Tensor:
    spec = REGISTRY[name]
    return spec.fn(v, **{**spec.kwargs(v), **override})


def _report(name: str, v: Tensor, **override: object) -> tuple[Tensor, ProxReport]:
    with recording() as reports:
        out = _call(name, v, **override)
    assert len(reports) == 1
    return out, reports[0]


def _as_matrix(jac: Tensor, out_shape: torch.Size, in_shape: torch.Size) -> Tensor:
    return jac.reshape(int(np.prod(out_shape)), int(np.prod(in_shape)))


def _central_differences(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    flat = x.detach().reshape(-1)
    cols = []
    with torch.no_grad():
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = H
            plus = f((flat + e).reshape(x.shape)).reshape(-1)
            minus = f((flat - e).reshape(x.shape)).reshape(-1)
            cols.append((plus - minus) / (2 * H))
    return torch.stack(cols, dim=-1)


def _kink_distance(name: str, v: Tensor) -> float:
    _, report = _report(name, v)
    return float(report.kink_distance.min())


def test_registry_lists_every_operator() -> None:
    assert set(REGISTRY) == {
        "l1", "elastic_net", "nonneg", "box", "simplex", "l2_ball",
        "group_l1", "l1_ball", "linf_ball", "nonneg_l1",
    }
    for name, spec in REGISTRY.items():
        assert getattr(prox, name) is spec.fn
        assert name in prox.__all__
    # weighted ℓ1 is l1 with a vector threshold: an alias, not a new operator
    assert prox.weighted_l1 is prox.l1 and "weighted_l1" in prox.__all__


def test_sized_parameters_follow_the_last_dimension() -> None:
    spec = REGISTRY["group_l1"]
    for n in (1, 4, 5):
        groups = spec.kwargs(torch.zeros(3, n))["groups"]
        assert groups.shape == (n,) and groups.dtype == torch.long
    assert REGISTRY["l1"].kwargs(torch.zeros(2)) == {"threshold": 0.5}


# (1) autograd Jacobian = central differences at smooth points -----------------------------


@pytest.mark.parametrize("name", NAMES)
@PROFILE
@given(x=POINTS)
def test_jacobian_wrt_v_matches_finite_differences(name: str, x: np.ndarray) -> None:
    v = _tensor(x)
    assume(_kink_distance(name, v) > SMOOTH)
    f = lambda u: _call(name, u)  # noqa: E731
    out = f(v)
    jac = _as_matrix(jacrev(f)(v), out.shape, v.shape)
    torch.testing.assert_close(jac, _central_differences(f, v), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].params])
@PROFILE
@given(x=POINTS)
def test_jacobian_wrt_parameters_matches_finite_differences(name: str, x: np.ndarray) -> None:
    v = _tensor(x)
    assume(_kink_distance(name, v) > SMOOTH)
    for key, value in REGISTRY[name].params.items():
        p = torch.tensor(value, dtype=DT)
        f = lambda q, key=key: _call(name, v, **{key: q})  # noqa: E731
        out = f(p)
        jac = _as_matrix(jacrev(f)(p), out.shape, p.shape)
        torch.testing.assert_close(jac, _central_differences(f, p), atol=1e-6, rtol=0)


# (2) inactive mask = zero rows of the Jacobian -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@PROFILE
@given(x=POINTS)
def test_inactive_mask_is_the_zero_rows_of_the_jacobian(name: str, x: np.ndarray) -> None:
    v = _tensor(x)
    if name == "l2_ball":
        # A row of (r/‖v‖)(I − wwᵀ) vanishes where v lies on a coordinate axis (an isolated
        # point, not a constant piece), and the 1-d ball is a box with an inexact zero row.
        assume(v.shape[-1] >= 2 and bool((v.abs() > SMOOTH).all()))
    out, report = _report(name, v)
    assert report.inactive.dtype == torch.bool and report.inactive.shape == out.shape
    jac = _as_matrix(jacrev(lambda u: _call(name, u))(v), out.shape, v.shape)
    zero_rows = (jac == 0).all(dim=-1)
    assert torch.equal(zero_rows, report.inactive.reshape(-1))


# (3) projections: idempotent and feasible -----------------------------------------------------


@pytest.mark.parametrize("name", PROJECTIONS)
@PROFILE
@given(x=POINTS)
def test_projection_is_idempotent_and_feasible(name: str, x: np.ndarray) -> None:
    v = _tensor(x)
    p = _call(name, v)
    torch.testing.assert_close(_call(name, p), p, atol=1e-12, rtol=0)
    params = REGISTRY[name].params
    if name == "nonneg":
        assert bool((p >= 0).all())
    elif name == "box":
        assert bool((p >= params["lower"]).all() and (p <= params["upper"]).all())
    elif name == "simplex":
        assert bool((p >= 0).all())
        sums = p.sum(-1)
        torch.testing.assert_close(
            sums, torch.full_like(sums, params["radius"]), atol=1e-12, rtol=0
        )
    elif name == "l2_ball":
        assert bool((torch.linalg.vector_norm(p, dim=-1) <= params["radius"] + 1e-12).all())
    elif name == "l1_ball":
        assert bool((p.abs().sum(-1) <= params["radius"] + 1e-12).all())
    elif name == "linf_ball":
        assert bool((p.abs() <= params["radius"]).all())
    else:  # pragma: no cover - a new projection must add its feasibility check here
        raise AssertionError(f"no feasibility check for {name}")


# (4) exact kinks: the element of the constant piece --------------------------------------------


def _jac(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    return jacrev(f)(x)


def test_l1_at_kink_returns_zero() -> None:
    v = torch.tensor([0.5, -0.5, 0.0], dtype=DT)
    assert torch.equal(_jac(lambda u: prox.l1(u, 0.5), v), torch.zeros(3, 3, dtype=DT))
    # threshold 0 at v = 0: a kink too
    jac = _jac(lambda u: prox.l1(u, 0.0), v)
    assert torch.equal(jac, torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=DT)))


def test_elastic_net_at_kink_returns_zero() -> None:
    v = torch.tensor([0.5, -0.5, 2.0], dtype=DT)
    jac = _jac(lambda u: prox.elastic_net(u, 0.5, 1.0), v)
    assert torch.equal(jac, torch.diag(torch.tensor([0.0, 0.0, 0.5], dtype=DT)))


def test_nonneg_at_kink_returns_zero() -> None:
    v = torch.tensor([0.0, 1.0], dtype=DT)
    assert torch.equal(_jac(prox.nonneg, v), torch.diag(torch.tensor([0.0, 1.0], dtype=DT)))


def test_box_at_kink_returns_zero_wrt_v_and_one_wrt_the_bound() -> None:
    v = torch.tensor([-1.0, 2.0, 0.5], dtype=DT)
    lower = torch.tensor(-1.0, dtype=DT)
    upper = torch.tensor(2.0, dtype=DT)
    jac_v = _jac(lambda u: prox.box(u, lower, upper), v)
    assert torch.equal(jac_v, torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=DT)))
    jac_lower = _jac(lambda lo: prox.box(v, lo, upper), lower)
    jac_upper = _jac(lambda up: prox.box(v, lower, up), upper)
    assert torch.equal(jac_lower, torch.tensor([1.0, 0.0, 0.0], dtype=DT))
    assert torch.equal(jac_upper, torch.tensor([0.0, 1.0, 0.0], dtype=DT))
    # per-coordinate bounds, kink on every coordinate
    lo_vec = v.clone()
    jac_vec = _jac(lambda lo: prox.box(v, lo, 3.0), lo_vec)
    assert torch.equal(jac_vec, torch.eye(3, dtype=DT))
    assert torch.equal(_jac(lambda u: prox.box(u, lo_vec, 3.0), v), torch.zeros(3, 3, dtype=DT))


def test_simplex_at_kink_returns_zero_rows() -> None:
    # τ = 0.5 and v_1 = v_2 = τ: S = {0}; |S| = 1 makes every row zero.
    v = torch.tensor([1.5, 0.5, 0.5], dtype=DT)
    assert torch.equal(_jac(prox.simplex, v), torch.zeros(3, 3, dtype=DT))
    # τ = 0.25 and v_2 = τ: S = {0, 1}, Jacobian I − 11ᵀ/2 on S, zero row and column 2.
    v = torch.tensor([1.0, 0.5, 0.25], dtype=DT)
    out, report = _report("simplex", v)
    torch.testing.assert_close(out, torch.tensor([0.75, 0.25, 0.0], dtype=DT), atol=1e-15, rtol=0)
    expected = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=DT)
    assert torch.equal(_jac(prox.simplex, v), expected)
    assert report.inactive.tolist() == [False, False, True]
    assert float(report.kink_distance[2]) == 0.0


def test_l2_ball_at_kink_returns_identity() -> None:
    v = torch.tensor([0.6, 0.8], dtype=DT)  # ‖v‖ = 1 exactly
    assert torch.equal(_jac(prox.l2_ball, v), torch.eye(2, dtype=DT))
    # the origin: no NaN from the guarded branch
    assert torch.equal(_jac(prox.l2_ball, torch.zeros(3, dtype=DT)), torch.eye(3, dtype=DT))


def test_group_l1_at_kink_returns_zero_blocks() -> None:
    # group 0 = coordinates {0, 2}: ‖(3, 4)‖ = 5 = t on the kink; group 1 = {1, 3}: ‖(2, 0)‖ = 2.
    v = torch.tensor([3.0, 2.0, 4.0, 0.0], dtype=DT)
    groups = torch.tensor([0, 1, 0, 1])
    t = torch.tensor([5.0, 1.0], dtype=DT)
    out, report = _report("group_l1", v, threshold=t, groups=groups)
    assert torch.equal(out, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=DT))
    # active block of group 1: (1 − t/‖v‖) I + (t/‖v‖) wwᵀ with w = e_1 → diag(1, 0.5)
    expected = torch.diag(torch.tensor([0.0, 1.0, 0.0, 0.5], dtype=DT))
    assert torch.equal(_jac(lambda u: prox.group_l1(u, t, groups), v), expected)
    assert report.inactive.tolist() == [True, False, True, False]
    assert report.kink_distance.tolist() == [0.0, 1.0, 0.0, 1.0]
    # w.r.t. the thresholds: 0 on the kinked group (constant piece), −w on the active one
    jac_t = _jac(lambda q: prox.group_l1(v, q, groups), t)
    assert torch.equal(jac_t, torch.tensor([[0.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]],
                                           dtype=DT))
    # threshold 0 at v_g = 0: a kink too, zero block (no NaN from the norm at 0)
    v0 = torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=DT)
    jac0 = _jac(lambda u: prox.group_l1(u, 0.0, groups), v0)
    assert torch.equal(jac0, torch.diag(torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=DT)))


def test_l1_ball_at_kinks() -> None:
    # on the boundary ‖v‖₁ = r: the identity (inside piece), w.r.t. r: 0
    v = torch.tensor([0.5, -0.25, 0.25, 0.0], dtype=DT)
    out, report = _report("l1_ball", v, radius=1.0)
    assert torch.equal(out, v)
    assert torch.equal(_jac(prox.l1_ball, v), torch.eye(4, dtype=DT))
    radius = torch.tensor(1.0, dtype=DT)
    assert torch.equal(_jac(lambda r: prox.l1_ball(v, r), radius), torch.zeros(4, dtype=DT))
    assert not bool(report.inactive.any()) and bool((report.kink_distance == 0).all())
    # outside, τ = 0.75 = |v_2|: S = {0, 1}, I − ssᵀ/2 on S, zero row and column 2
    v = torch.tensor([2.0, 1.5, -0.75], dtype=DT)
    out, report = _report("l1_ball", v, radius=2.0)
    assert torch.equal(out, torch.tensor([1.25, 0.75, 0.0], dtype=DT))
    expected = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=DT)
    assert torch.equal(_jac(lambda u: prox.l1_ball(u, 2.0), v), expected)
    assert report.inactive.tolist() == [False, False, True]
    assert float(report.kink_distance[2]) == 0.0
    # signs enter the active block: s = (1, −1)
    v = torch.tensor([2.0, -1.5, 0.75], dtype=DT)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=DT)
    assert torch.equal(_jac(lambda u: prox.l1_ball(u, 2.0), v), expected)
    # |S| = 1: the output is the constant ±r, every row is zero
    v = torch.tensor([-3.0, 0.5], dtype=DT)
    out, report = _report("l1_ball", v, radius=1.0)
    assert torch.equal(out, torch.tensor([-1.0, 0.0], dtype=DT))
    assert torch.equal(_jac(prox.l1_ball, v), torch.zeros(2, 2, dtype=DT))
    assert bool(report.inactive.all())


def test_linf_ball_at_kink_returns_zero_wrt_v_and_the_sign_wrt_the_radius() -> None:
    v = torch.tensor([-1.5, 1.5, 0.2], dtype=DT)
    radius = torch.tensor(1.5, dtype=DT)
    out, report = _report("linf_ball", v, radius=radius)
    assert torch.equal(out, v)
    assert torch.equal(_jac(lambda u: prox.linf_ball(u, radius), v),
                       torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=DT)))
    assert torch.equal(_jac(lambda r: prox.linf_ball(v, r), radius),
                       torch.tensor([-1.0, 1.0, 0.0], dtype=DT))
    assert report.inactive.tolist() == [True, True, False]
    assert report.kink_normal.tolist() == [1.0, -1.0, -1.0]  # into the ball, nearest bound


def test_nonneg_l1_at_kink_returns_zero() -> None:
    v = torch.tensor([0.5, 1.0, -0.3], dtype=DT)
    t = torch.tensor(0.5, dtype=DT)
    assert torch.equal(_jac(lambda u: prox.nonneg_l1(u, t), v),
                       torch.diag(torch.tensor([0.0, 1.0, 0.0], dtype=DT)))
    assert torch.equal(_jac(lambda q: prox.nonneg_l1(v, q), t),
                       torch.tensor([0.0, -1.0, 0.0], dtype=DT))
    # threshold 0 at v = 0: the projection onto x ≥ 0 and its kink
    assert torch.equal(_jac(lambda u: prox.nonneg_l1(u, 0.0), torch.zeros(2, dtype=DT)),
                       torch.zeros(2, 2, dtype=DT))


@PROFILE
@given(x=arrays(np.float64, st.integers(1, 6), elements=ELEMENTS))
def test_separable_operators_on_their_kinks(x: np.ndarray) -> None:
    v = _tensor(x)
    zero = torch.zeros(v.numel(), v.numel(), dtype=DT)
    assert torch.equal(_jac(lambda u: prox.l1(u, v.abs()), v), zero)
    assert torch.equal(_jac(lambda u: prox.elastic_net(u, v.abs(), 0.7), v), zero)
    assert torch.equal(_jac(lambda u: prox.box(u, v, v + 1.0), v), zero)
    assert torch.equal(_jac(lambda u: prox.box(u, v - 1.0, v), v), zero)
    assert torch.equal(_jac(lambda u: prox.nonneg(u), torch.zeros_like(v)), zero)
    assert torch.equal(_jac(lambda u: prox.nonneg_l1(u, v.abs()), v.abs()), zero)
    # every coordinate on ±r: a vector of signs scaled to the radius
    r = float(v.abs().max()) + 0.5
    corner = torch.where(v >= 0, r, -r)
    assert torch.equal(_jac(lambda u: prox.linf_ball(u, r), corner), zero)
    # every group on ‖v_g‖ = t_g
    groups = torch.arange(v.numel()) % 2
    norms = torch.zeros(2, dtype=DT).scatter_add(0, groups, v * v).sqrt()
    assert torch.equal(_jac(lambda u: prox.group_l1(u, norms, groups), v), zero)
    with recording() as reports:
        prox.l1(v, v.abs())
        prox.box(v, v, v + 1.0)
        prox.nonneg_l1(v.abs(), v.abs())
        prox.linf_ball(corner, r)
    for report in reports:
        assert bool(report.inactive.all())
        assert bool((report.kink_distance == 0).all())


@pytest.mark.parametrize(
    ("name", "v", "params"),
    [
        ("l1", [0.5, -0.5], {"threshold": 0.5}),
        ("elastic_net", [0.5, -0.5], {"l1": 0.5, "l2": 0.3}),
        ("nonneg", [0.0, 0.0], {}),
        ("box", [-1.0, 2.0], {"lower": -1.0, "upper": 2.0}),
        ("simplex", [1.0, 0.5, 0.25], {"radius": 1.0}),
        ("nonneg_l1", [0.5, 0.5], {"threshold": 0.5}),
        ("linf_ball", [-1.5, 1.5, 0.2], {"radius": 1.5}),
        ("group_l1", [3.0, 0.1, 4.0], {"threshold": 5.0, "groups": torch.tensor([0, 1, 0])}),
        ("l1_ball", [2.0, 1.5, -0.75], {"radius": 2.0}),  # support kink |v_2| = τ
        ("l1_ball", [3.0, 1.0, -1.0], {"radius": 2.0}),  # two support kinks at once
        ("l1_ball", [0.5, -0.25, 0.25, 0.0], {"radius": 1.0}),  # the ball's boundary
    ],
)
def test_kink_normal_moves_onto_the_active_piece(
    name: str, v: list[float], params: dict[str, object]
) -> None:
    # As solvers.prox_mapping shifts them: only the kinked coordinates move, along the normal.
    x = torch.tensor(v, dtype=DT)
    _, at_kink = _report(name, x, **params)
    kinked = torch.broadcast_to(at_kink.kink_distance == 0, x.shape)
    assert bool(kinked.any())
    shift = torch.where(kinked, 1e-3 * at_kink.kink_normal, torch.zeros_like(x))
    _, moved = _report(name, x + shift, **params)
    assert not bool(moved.inactive[kinked].any())


# (5) references ----------------------------------------------------------------------------


def _simplex_bisection(v: np.ndarray, radius: float) -> np.ndarray:
    lo = v.min(-1, keepdims=True) - radius
    hi = v.max(-1, keepdims=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = np.maximum(v - mid, 0).sum(-1, keepdims=True) > radius
        lo = np.where(too_big, mid, lo)
        hi = np.where(too_big, hi, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


@PROFILE
@given(x=POINTS, radius=st.floats(0.1, 5.0))
def test_simplex_matches_bisection(x: np.ndarray, radius: float) -> None:
    out = prox.simplex(_tensor(x), radius)
    np.testing.assert_allclose(out.numpy(), _simplex_bisection(x, radius), atol=1e-10, rtol=0)


@PROFILE
@given(x=POINTS, radius=st.floats(0.1, 5.0))
def test_l2_ball_matches_closed_form(x: np.ndarray, radius: float) -> None:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    expected = x * np.minimum(1.0, radius / np.maximum(norm, 1e-300))
    out = prox.l2_ball(_tensor(x), radius)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12, rtol=0)


@PROFILE
@given(
    x=POINTS,
    t=st.floats(0.0, 3.0),
    l2=st.floats(0.0, 3.0),
    lower=st.floats(-3.0, 3.0),
    width=st.floats(0.0, 3.0),
)
def test_separable_operators_match_closed_forms(
    x: np.ndarray, t: float, l2: float, lower: float, width: float
) -> None:
    v = _tensor(x)
    soft = np.sign(x) * np.maximum(np.abs(x) - t, 0.0)
    np.testing.assert_allclose(prox.l1(v, t).numpy(), soft, atol=1e-15, rtol=0)
    np.testing.assert_allclose(
        prox.elastic_net(v, t, l2).numpy(), soft / (1.0 + l2), atol=1e-15, rtol=0
    )
    np.testing.assert_array_equal(prox.nonneg(v).numpy(), np.maximum(x, 0.0))
    upper = lower + width
    np.testing.assert_array_equal(prox.box(v, lower, upper).numpy(), np.clip(x, lower, upper))
    np.testing.assert_allclose(prox.nonneg_l1(v, t).numpy(), np.maximum(x - t, 0.0), atol=1e-15,
                               rtol=0)
    radius = width + 0.1
    np.testing.assert_array_equal(prox.linf_ball(v, radius).numpy(), np.clip(x, -radius, radius))


def _group_l1_reference(x: np.ndarray, t: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Block soft-thresholding, one group at a time (``t``: one threshold per group)."""
    out = np.zeros_like(x)
    for g in range(len(t)):
        cols = groups == g
        norm = np.linalg.norm(x[..., cols], axis=-1, keepdims=True)
        scale = np.maximum(1.0 - t[g] / np.where(norm > 0, norm, 1.0), 0.0)
        out[..., cols] = x[..., cols] * np.where(norm > 0, scale, 0.0)
    return out


GROUPED = st.integers(1, 6).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, st.tuples(st.integers(1, 3), st.just(n)), elements=ELEMENTS),
        st.lists(st.integers(0, 2), min_size=n, max_size=n).map(np.array),
        st.lists(st.floats(0.0, 4.0), min_size=3, max_size=3).map(np.array),
    )
)


@PROFILE
@given(case=GROUPED, per_group=st.booleans())
def test_group_l1_matches_the_per_group_formula(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], per_group: bool
) -> None:
    x, groups, t = case
    if not per_group:
        t = np.full(3, t[0])
    threshold = _tensor(t) if per_group else float(t[0])
    v = _tensor(x)
    ids = torch.from_numpy(groups)
    out, report = _report("group_l1", v, threshold=threshold, groups=ids)
    np.testing.assert_allclose(out.numpy(), _group_l1_reference(x, t, groups), atol=1e-12,
                               rtol=0)
    # the rows of the coordinates of an inactive group (‖v_g‖ ≤ t_g) are zero, the others not
    norms = np.stack([np.linalg.norm(x[..., groups == g], axis=-1) for g in range(3)], -1)
    inactive = (norms <= t)[..., groups]
    assert report.inactive.numpy().tolist() == inactive.tolist()
    jac = _as_matrix(jacrev(lambda u: prox.group_l1(u, threshold, ids))(v), v.shape, v.shape)
    assert (jac == 0).all(-1).reshape(x.shape).numpy().tolist() == inactive.tolist()
    # one group per coordinate: soft-thresholding
    singles = torch.arange(x.shape[-1])
    torch.testing.assert_close(prox.group_l1(v, float(t[0]), singles), prox.l1(v, float(t[0])),
                               atol=1e-15, rtol=0)


def _l1_ball_reference(x: np.ndarray, radius: float) -> np.ndarray:
    inside = np.abs(x).sum(-1, keepdims=True) <= radius
    return np.where(inside, x, np.sign(x) * _simplex_bisection(np.abs(x), radius))


@PROFILE
@given(x=POINTS, radius=st.floats(0.1, 5.0))
def test_l1_ball_matches_bisection_and_is_a_feasible_idempotent_projection(
    x: np.ndarray, radius: float
) -> None:
    out = prox.l1_ball(_tensor(x), radius)
    np.testing.assert_allclose(out.numpy(), _l1_ball_reference(x, radius), atol=1e-10, rtol=0)
    assert bool((out.abs().sum(-1) <= radius + 1e-12).all())
    torch.testing.assert_close(prox.l1_ball(out, radius), out, atol=1e-12, rtol=0)
    assert bool((out * _tensor(x) >= 0).all())  # no sign flips


@PROFILE
@given(x=POINTS, radius=st.floats(0.1, 5.0))
def test_linf_ball_is_an_idempotent_clip(x: np.ndarray, radius: float) -> None:
    out = prox.linf_ball(_tensor(x), radius)
    np.testing.assert_array_equal(out.numpy(), np.clip(x, -radius, radius))
    assert torch.equal(prox.linf_ball(out, radius), out)


def test_elastic_net_is_the_prox_of_its_objective() -> None:
    # argmin_x ½‖x − v‖² + λ₁‖x‖₁ + (λ₂/2)‖x‖²: the output is a minimizer (checked on a grid).
    v = torch.tensor([2.0, -0.3, 0.9, -4.0], dtype=DT)
    l1w, l2w = 0.5, 0.8
    out = prox.elastic_net(v, l1w, l2w)
    grid = torch.linspace(-5, 5, 100001, dtype=DT)[:, None]
    obj = 0.5 * (grid - v) ** 2 + l1w * grid.abs() + 0.5 * l2w * grid**2
    torch.testing.assert_close(out, grid[obj.argmin(0), 0], atol=1e-4, rtol=0)


def test_parameters_broadcast_per_coordinate_and_per_vector() -> None:
    v = torch.tensor([[3.0, -1.0, 0.2], [0.1, 0.2, 0.3]], dtype=DT)
    t = torch.tensor([0.5, 2.0, 0.1], dtype=DT)
    torch.testing.assert_close(prox.l1(v, t)[0], torch.tensor([2.5, 0.0, 0.1], dtype=DT))
    radius = torch.tensor([1.0, 2.0], dtype=DT)
    for fn in (prox.simplex, prox.l2_ball, prox.l1_ball, prox.linf_ball):
        batched = fn(v, radius)
        for i in range(2):
            torch.testing.assert_close(batched[i], fn(v[i], float(radius[i])))
    # one vector, several radii: the batch dimension comes from the radius
    assert prox.simplex(v[0], radius).shape == (2, 3)
    with recording() as reports:
        prox.simplex(v[0], radius)
        prox.l1_ball(v[0], radius)
        prox.linf_ball(v[0], radius)
    assert [r.inactive.shape for r in reports] == [(2, 3)] * 3
    # group_l1: per-group thresholds, one row of them per vector
    groups = torch.tensor([0, 1, 0])
    t_groups = torch.tensor([[0.5, 2.0], [0.1, 0.0]], dtype=DT)
    batched = prox.group_l1(v, t_groups, groups)
    for i in range(2):
        torch.testing.assert_close(batched[i], prox.group_l1(v[i], t_groups[i], groups))
    with recording() as reports:
        assert prox.group_l1(v[0], t_groups, groups).shape == (2, 3)
    assert reports[0].inactive.shape == (2, 3)
    # a per-coordinate threshold for nonneg_l1, as for l1 (alias weighted_l1)
    torch.testing.assert_close(prox.nonneg_l1(v, t)[0], torch.tensor([2.5, 0.0, 0.1], dtype=DT))
    torch.testing.assert_close(prox.weighted_l1(v, t), prox.l1(v, t))


@pytest.mark.parametrize("name", NAMES)
def test_dtype_follows_the_input(name: str) -> None:
    v = torch.tensor([[0.3, -1.2, 2.5]], dtype=torch.float32)
    assert _call(name, v).dtype == torch.float32


# (6) recording --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_recording_collects_one_report_per_call(name: str) -> None:
    v = torch.tensor([[0.3, -1.2, 2.5], [0.0, 0.7, -0.1]], dtype=DT)
    _call(name, v)  # outside: nothing to collect
    with recording() as reports:
        assert reports == []
        out = _call(name, v)
        assert len(reports) == 1
        _call(name, v)
        assert len(reports) == 2
    _call(name, v)
    assert len(reports) == 2
    report = reports[0]
    assert isinstance(report, ProxReport)
    assert report.inactive.shape == out.shape
    assert torch.broadcast_shapes(report.kink_distance.shape, out.shape) == out.shape
    assert torch.broadcast_shapes(report.kink_normal.shape, out.shape) == out.shape
    assert bool((report.kink_distance >= 0).all())
    assert isinstance(report.symmetric, bool)


@pytest.mark.parametrize("name", NAMES)
def test_no_report_is_built_outside_recording(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(f"solvers.prox.{name}")

    def fail(*args: object, **kwargs: object) -> ProxReport:
        raise AssertionError("report built outside recording()")

    monkeypatch.setattr(module, "_report", fail)
    _call(name, torch.tensor([0.3, -1.2], dtype=DT))
    with recording(), pytest.raises(AssertionError, match="outside recording"):
        _call(name, torch.tensor([0.3, -1.2], dtype=DT))


def test_nested_recordings_and_user_lambdas() -> None:
    v = torch.tensor([0.3, -1.2], dtype=DT)
    user_prox = lambda u, t, step: prox.l1(u, step * t.exp())  # noqa: E731
    with recording() as outer:
        user_prox(v, torch.tensor(0.0, dtype=DT), 0.5)
        with recording() as inner:
            prox.nonneg(v)
        prox.box(v, 0.0, 1.0)
    assert len(outer) == 2 and len(inner) == 1


def test_symmetry_flags() -> None:
    v = torch.tensor([0.3, -1.2], dtype=DT)
    for name in ("l1", "elastic_net", "nonneg", "box", "nonneg_l1", "linf_ball"):
        assert _report(name, v)[1].symmetric
    assert not _report("simplex", v)[1].symmetric
    assert not _report("group_l1", v)[1].symmetric
    assert _report("l1_ball", v, radius=2.0)[1].symmetric  # inside: Jacobian I
    assert not _report("l1_ball", v, radius=1.0)[1].symmetric  # outside: I − ssᵀ/|S| on S
    assert _report("l2_ball", v, radius=2.0)[1].symmetric  # inside: Jacobian I
    assert not _report("l2_ball", v, radius=1.0)[1].symmetric  # outside: (r/‖v‖)(I − wwᵀ)


# (7) validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda v: prox.l1(v, -0.1), "threshold"),
        (lambda v: prox.l1(v, torch.tensor([0.1, -0.1], dtype=DT)), "threshold"),
        (lambda v: prox.elastic_net(v, -0.1, 0.0), "l1"),
        (lambda v: prox.elastic_net(v, 0.1, torch.tensor(-1.0, dtype=DT)), "l2"),
        (lambda v: prox.box(v, 1.0, 0.0), "lower"),
        (lambda v: prox.box(v, torch.tensor([0.0, 2.0], dtype=DT), 1.0), "upper"),
        (lambda v: prox.simplex(v, 0.0), "radius"),
        (lambda v: prox.simplex(v, torch.tensor(-1.0, dtype=DT)), "radius"),
        (lambda v: prox.l2_ball(v, 0.0), "radius"),
        (lambda v: prox.l2_ball(v, torch.tensor([1.0, -2.0], dtype=DT)), "radius"),
        (lambda v: prox.l1_ball(v, 0.0), "radius"),
        (lambda v: prox.l1_ball(v, torch.tensor([1.0, -2.0], dtype=DT)), "radius"),
        (lambda v: prox.linf_ball(v, -1.0), "radius"),
        (lambda v: prox.linf_ball(v, torch.tensor(0.0, dtype=DT)), "radius"),
        (lambda v: prox.nonneg_l1(v, -0.1), "threshold"),
        (lambda v: prox.nonneg_l1(v, torch.tensor([0.1, -0.1], dtype=DT)), "threshold"),
        (lambda v: prox.group_l1(v, -0.1, torch.tensor([0, 0])), "threshold"),
        (lambda v: prox.group_l1(v, torch.tensor([0.1, -0.1], dtype=DT), torch.tensor([0, 1])),
         "threshold"),
        # one threshold per group, but groups has ids up to 2
        (lambda v: prox.group_l1(v, torch.tensor([0.1, 0.1], dtype=DT), torch.tensor([0, 2])),
         "threshold"),
        (lambda v: prox.group_l1(v, 0.1, torch.tensor([0.0, 1.0])), "groups"),
        (lambda v: prox.group_l1(v, 0.1, [0, 1]), "groups"),
        (lambda v: prox.group_l1(v, 0.1, torch.tensor([0, 1, 1])), "groups"),
        (lambda v: prox.group_l1(v, 0.1, torch.tensor([[0, 1]])), "groups"),
        (lambda v: prox.group_l1(v, 0.1, torch.tensor([0, -1])), "groups"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(
    call: Callable[[Tensor], Tensor], argument: str
) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call(torch.tensor([0.3, -1.2], dtype=DT))


def test_degenerate_but_valid_parameters_are_accepted() -> None:
    v = torch.tensor([0.3, -1.2], dtype=DT)
    assert torch.equal(prox.l1(v, 0.0), v)
    assert torch.equal(prox.box(v, 0.5, 0.5), torch.full_like(v, 0.5))
    assert torch.equal(prox.box(v, -float("inf"), float("inf")), v)
    assert torch.equal(prox.nonneg_l1(v, 0.0), prox.nonneg(v))
    assert torch.equal(prox.group_l1(v, 0.0, torch.tensor([0, 0])), v)
    # a group without coordinates (id 1 unused) and int32 ids
    assert torch.equal(prox.group_l1(v, torch.tensor([0.0, 7.0], dtype=DT),
                                     torch.tensor([0, 0], dtype=torch.int32)), v)


def test_operators_compose_with_vmap_over_parameters() -> None:
    v = torch.tensor([[0.3, -1.2, 2.5], [0.0, 0.7, -0.1]], dtype=DT)
    t = torch.tensor([0.5, 0.05], dtype=DT)
    batched = torch.func.vmap(prox.l1)(v, t)
    torch.testing.assert_close(batched, torch.stack([prox.l1(v[i], t[i]) for i in range(2)]))
    batched = torch.func.vmap(prox.simplex)(v, t + 1.0)
    torch.testing.assert_close(batched, prox.simplex(v, t + 1.0))
    batched = torch.func.vmap(prox.l1_ball)(v, t + 1.0)
    torch.testing.assert_close(batched, prox.l1_ball(v, t + 1.0))
    groups = torch.tensor([0, 1, 0])
    batched = torch.func.vmap(lambda u, q: prox.group_l1(u, q, groups))(v, t)
    torch.testing.assert_close(batched, prox.group_l1(v, t[:, None].expand(2, 2), groups))
