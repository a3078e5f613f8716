"""Random tiny bilevel problems for the fuzzing of ``test_fuzz.py`` (hypothesis strategies).

Two kinds of problems:

- :class:`ProxProblem`: ``ProxGrad`` on ``f(y, θ) = (c/2)‖y‖² − (c v + θ_b)ᵀy`` plus ``g`` =
  one operator of ``solvers.prox.REGISTRY`` whose parameters are scaled by ``s·e^{θ_p}``
  (``θ = [θ_b, θ_p]``). With the isotropic quadratic, ``y*(θ) = prox_{g/c}((c v + θ_b)/c)``
  exactly: the closed form is an independent reference for finite differences (it calls the
  operator once, no solver), and the prox's own report says how far ``y*`` is from a kink.
  :func:`prox_kink_problems` places ``v`` exactly on a kink of one coordinate (or one group,
  or the ball's boundary) and gives a direction that crosses it.
- :class:`SolverProblem`: tiny random problems for the other solvers (working set, Newton,
  L-BFGS, the four fixed-point methods, both QP backends); finite differences re-solve them
  (warm-started) at ``θ ± h d``.

Every builder also takes a ``magnitude`` (a power of ten applied to the data or the
hyperparameters): the extreme-but-valid inputs of the no-silent-NaN check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import Tensor

import bilevel
from solvers import FixedPoint, ProxGrad, Smooth, models
from solvers.prox import REGISTRY, ProxReport, recording
from solvers.stacked import Stacked

F64 = torch.float64
NAMES = sorted(REGISTRY)
SMOOTH = 1e-3  # distance to the kink set (in the units of the prox's input) called smooth
H = 1e-6  # finite-difference step (central and one-sided)

COORD = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


def vector(draw: st.DrawFn, n: int, elements: st.SearchStrategy[float] = COORD) -> Tensor:
    return torch.tensor(draw(st.lists(elements, min_size=n, max_size=n)), dtype=F64)


def unit(draw: st.DrawFn, n: int) -> Tensor:
    """A random unit direction (the first axis plus the draw when the draw is nearly zero)."""
    d = vector(draw, n, st.floats(-1.0, 1.0))
    if float(d.norm()) < 0.1:
        d[0] += 1.0
    return d / d.norm()


# -- ProxGrad over every operator of the registry -------------------------------------------

@dataclass
class ProxProblem:
    """``min_y (c/2)‖y‖² − (c v + θ_b)ᵀy + g(y; s·e^{θ_p})`` at ``θ = 0`` (see module doc)."""

    name: str
    c: float
    v: Tensor
    scale: float
    stepsize: float | None
    direction: Tensor  # a unit direction in θ-space (n + 1 entries)
    weights: Tensor  # the outer loss is ⟨w, y⟩ + ¼‖y‖²
    forward: bool  # check forward mode (a Jacobian-vector product) instead of reverse mode
    warm: float | None = None  # start at y*(0) + warm·noise (the outer loop's warm start)
    maxiter: int = 10_000

    @property
    def n(self) -> int:
        return self.v.numel()

    @property
    def theta(self) -> Tensor:
        return torch.zeros(self.n + 1, dtype=F64)

    def params(self, theta: Tensor, eta: float | Tensor) -> dict[str, Any]:
        """The operator's parameters for the prox of ``η·g``: the registry's example
        parameters times ``s·e^{θ_p}``, times ``η`` for a prox (not for a projection)."""
        spec = REGISTRY[self.name]
        factor = self.scale * theta[-1].exp()
        if not spec.projection:
            factor = factor * eta
        out: dict[str, Any] = {k: value * factor for k, value in spec.params.items()}
        if spec.sized_params is not None:
            out.update(spec.sized_params(self.n))
        return out

    def prox(self, u: Tensor, theta: Tensor, eta: float) -> Tensor:
        return REGISTRY[self.name].fn(u, **self.params(theta, eta))

    def smooth(self, y: Tensor, theta: Tensor) -> Tensor:
        b = self.c * self.v + theta[:-1]
        return 0.5 * self.c * (y * y).sum() - (b * y).sum()

    def solver(self) -> ProxGrad:
        return ProxGrad(self.smooth, self.prox, stepsize=self.stepsize, tol=1e-11,
                        maxiter=self.maxiter)

    def init(self) -> Tensor:
        if self.warm is None:
            return torch.zeros(self.n, dtype=F64)
        noise = torch.linspace(-1.0, 1.0, self.n, dtype=F64)
        return self.reference(self.theta) + self.warm * noise

    def reference(self, theta: Tensor) -> Tensor:
        """``y*(θ) = prox_{g/c}(b(θ)/c)``, exact for the isotropic quadratic."""
        with torch.no_grad():
            return self.prox((self.c * self.v + theta[:-1]) / self.c, theta, 1.0 / self.c)

    def report(self, theta: Tensor | None = None) -> ProxReport:
        """The operator's report at the reference point (kink distances in its input units)."""
        theta = self.theta if theta is None else theta
        with recording() as reports:
            self.reference(theta)
        assert len(reports) == 1
        return reports[0]

    def outer(self, y: Tensor) -> Tensor:
        return (self.weights * y).sum() + 0.25 * (y * y).sum()


def _stepsize(draw: st.DrawFn, c: float) -> float | None:
    """The solver's own estimate (backtracking), the exact ``1/c`` (one step), or a short one
    (then ``∂yH = I − (1 − ηc) J`` is not the identity on the active set)."""
    kind = draw(st.sampled_from(["auto", "exact", "short"]))
    return {"auto": None, "exact": 1.0 / c, "short": 0.8 / c}[kind]


def _warm(draw: st.DrawFn) -> float | None:
    """A cold start (zeros) or a warm start at a distance 10^-8 … 1 of the solution."""
    return draw(st.one_of(st.none(), st.sampled_from([1e-8, 1e-4, 1e-2, 1.0])))


@st.composite
def prox_problems(draw: st.DrawFn, magnitude: bool = False) -> ProxProblem:
    """A problem at a random point (smooth or not: the test asks the report); with
    ``magnitude``, ``c``, ``v`` and the parameters span 10^±120."""
    name = draw(st.sampled_from(NAMES))
    n = draw(st.integers(1, 5))
    if magnitude:
        power = st.integers(-120, 120)
        c = 10.0 ** draw(power)
        v = vector(draw, n) * 10.0 ** draw(power)
        scale = draw(st.floats(0.2, 3.0)) * 10.0 ** draw(power)
    else:
        c = draw(st.floats(0.25, 4.0))
        v = vector(draw, n)
        scale = draw(st.floats(0.2, 3.0))
    return ProxProblem(
        name, c, v, scale, _stepsize(draw, c), unit(draw, n + 1), vector(draw, n),
        draw(st.booleans()), None if magnitude else _warm(draw),
        maxiter=50 if magnitude else 10_000,
    )


@st.composite
def prox_kink_problems(draw: st.DrawFn) -> tuple[ProxProblem, Tensor]:
    """A problem whose ``y*(0)`` sits exactly on one kink of the operator, every other
    coordinate at least ``SMOOTH`` away from the kink set, and a direction (in ``θ_b``) that
    crosses the kink transversally; returns ``(problem, kinked)`` with ``kinked`` the mask of
    the coordinates on the kink."""
    name = draw(st.sampled_from(NAMES))
    n = draw(st.integers(2, 5))
    c = draw(st.floats(0.25, 4.0))
    scale = draw(st.floats(0.2, 3.0))
    problem = ProxProblem(name, c, vector(draw, n), scale, _stepsize(draw, c),
                          torch.zeros(n + 1, dtype=F64), vector(draw, n), draw(st.booleans()),
                          _warm(draw))
    at = {k: float(v) for k, v in problem.params(problem.theta, 1.0 / c).items()
          if k != "groups"}
    problem.v, intended = _on_kink(draw, name, problem.v, at)
    report = problem.report()
    distance = torch.broadcast_to(report.kink_distance, problem.v.shape)
    kinked = distance <= 1e-12 * (1 + float(problem.v.abs().max()))
    # exactly the intended kink: with two kinks at once, the engine's selection may combine
    # pieces that no single side of the crossing sees (no bracket then)
    assume(torch.equal(kinked, intended) and bool((distance[~kinked] >= SMOOTH).all()))
    # cross along the kink normal, plus a smaller random part on every coordinate
    normal = torch.where(kinked, torch.broadcast_to(report.kink_normal, problem.v.shape), 0.0)
    assume(float(normal.norm()) > 0.5)
    noise = 0.2 * vector(draw, n, st.floats(-1.0, 1.0)) / math.sqrt(n)
    d = torch.cat([normal / normal.norm() + noise, torch.zeros(1, dtype=F64)])
    problem.direction = d / d.norm()
    return problem, kinked


def _on_kink(draw: st.DrawFn, name: str, v: Tensor, at: dict[str, float]
             ) -> tuple[Tensor, Tensor]:
    """``v`` moved so that one coordinate (one group; the ball's boundary) is on a kink of the
    operator ``name`` with parameters ``at`` (those of the prox at the reference point), and
    the mask of the coordinates meant to be on it."""
    n = v.numel()
    i = draw(st.integers(0, n - 1))
    v = v.clone()
    one = torch.arange(n) == i
    sign = draw(st.sampled_from([-1.0, 1.0]))
    if name in ("l1", "elastic_net"):
        v[i] = sign * at["threshold" if name == "l1" else "l1"]
    elif name == "nonneg_l1":
        v[i] = at["threshold"]
    elif name == "nonneg":
        v[i] = 0.0
    elif name == "box":
        v[i] = at["lower"] if sign < 0 else at["upper"]
    elif name == "linf_ball":
        v[i] = sign * at["radius"]
    elif name == "l2_ball":
        v = v if float(v.norm()) > 0 else torch.ones_like(v)
        return v * (at["radius"] / v.norm()), torch.ones(n, dtype=torch.bool)
    elif name == "group_l1":
        group = torch.arange(n) % 2 == i % 2
        norm = float(v[group].norm())
        v[group] = v[group] * (at["threshold"] / norm) if norm > 0 else at["threshold"] / math.sqrt(
            int(group.sum()))
        return v, group
    elif name in ("simplex", "l1_ball"):
        if name == "l1_ball" and draw(st.booleans()):  # the ball's boundary
            v = v if float(v.abs().sum()) > 0 else torch.ones_like(v)
            v = v * (at["radius"] / v.abs().sum())
            # off the corners v_i = 0 of the boundary, where −sign(v) does not lead inside
            assume(bool((v.abs() >= SMOOTH).all()))
            return v, torch.ones(n, dtype=torch.bool)
        v = _support_kink(draw, name, n, i, at["radius"])
    else:  # a new operator: teach this function its kink set
        raise AssertionError(f"no kink construction for {name!r}")
    return v, one


def _support_kink(draw: st.DrawFn, name: str, n: int, i: int, radius: float) -> Tensor:
    """``v`` whose projection ``x`` has support ``S`` (not containing ``i``), threshold ``τ``,
    and ``v_i = ±τ`` exactly: coordinate ``i`` is about to enter the support."""
    others = [j for j in range(n) if j != i]
    support = draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    support[draw(st.integers(0, n - 2))] = True
    mass = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=n - 1, max_size=n - 1)),
                        dtype=F64)
    signs = torch.tensor(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)),
                         dtype=F64)
    if name == "simplex":
        tau = draw(st.floats(-1.0, 1.0))
        signs = torch.ones(n, dtype=F64)
    else:
        tau = draw(st.floats(0.05, 1.0))
    on = torch.tensor(support)
    x = torch.where(on, mass, 0.0)
    x = radius * x / x.sum()
    magnitudes = torch.empty(n, dtype=F64)
    magnitudes[i] = tau
    shrink = torch.tensor(draw(st.lists(st.floats(0.0, 0.9), min_size=n - 1, max_size=n - 1)),
                          dtype=F64)
    # off the support: below the threshold (simplex: by 0.05..1; l1 ball: |v_j| ≤ 0.9 τ)
    below = tau - 0.05 - shrink if name == "simplex" else tau * shrink
    magnitudes[others] = torch.where(on, x + tau, below)
    return signs * magnitudes


# -- the other solvers -----------------------------------------------------------------------

@dataclass
class SolverProblem:
    """``outer(y*(θ))`` at ``theta`` for a solver of the registry family ``family``.

    ``solve(θ)`` is what the engine is given (a vector θ; the QP builds its tuple from it),
    ``rerun(θ, init)`` re-solves without the engine for finite differences, with ``reference``
    when given (an independent, tighter solver), else with the solver itself."""

    family: str
    solver: Any
    theta: Tensor
    init: Tensor | None
    outer: Callable[[Tensor], Tensor]
    direction: Tensor  # a unit direction shaped like theta
    arguments: Callable[[Tensor], Any] = field(default=lambda t: t)
    smooth_mapping: bool = False  # no kinks at all (Newton, L-BFGS, fixed points)
    reference: Any = None
    fd_step: float = 1e-5  # QPs: y* is piecewise linear in θ, a larger step costs no accuracy
    inexact: bool = False  # may miss its tolerance (SCS): a ConvergenceWarning skips the draw

    def solve(self, theta: Tensor, **kw: Any) -> Tensor:
        return bilevel.implicit_solve(self.solver, self.arguments(theta), self.init, **kw)

    def rerun(self, theta: Tensor, init: Tensor | None) -> Tensor:
        solver = self.solver if self.reference is None else self.reference
        return solver.run(self.arguments(theta), init)

    def structure(self, y: Tensor, theta: Tensor):
        get = getattr(self.solver, "structure", None)
        return None if get is None else get(y, self.arguments(theta))


def _matrix(draw: st.DrawFn, rows: int, cols: int) -> Tensor:
    return vector(draw, rows * cols, st.floats(-2.0, 2.0)).reshape(rows, cols)


def _outer(draw: st.DrawFn, n: int, primal: int | None = None) -> Callable[[Tensor], Tensor]:
    w = vector(draw, n)
    k = n if primal is None else primal

    def outer(y: Tensor) -> Tensor:
        z = y[..., :k]
        return (w[:k] * z).sum() + 0.25 * (z * z).sum()
    return outer


def _direction(draw: st.DrawFn, theta: Tensor) -> Tensor:
    return unit(draw, theta.numel()).reshape(theta.shape)


WORKING_SET = ("lasso", "elastic_net", "nonneg_lasso", "sparse_logreg",
               "lasso-torch_sub", "nonneg_lasso-torch_sub")  # the GPU's sub-solver, on the CPU
FIXED_POINT = ("picard", "km", "anderson", "broyden")
FAMILIES = (*(f"workingset-{m}" for m in WORKING_SET), "stacked-lasso_cv", "smooth-newton",
            "smooth-lbfgs", *(f"fixed_point-{m}" for m in FIXED_POINT), "qp-native")
SLOW_FAMILIES = ("qp-cvxpylayers",)


@st.composite
def solver_problems(draw: st.DrawFn, families: tuple[str, ...] = FAMILIES,
                    magnitude: bool = False) -> SolverProblem:
    """A tiny random problem of one of ``families``; with ``magnitude``, the data and θ take
    extreme (but finite, valid) values."""
    family = draw(st.sampled_from(families))
    power = draw(st.integers(-100, 100)) if magnitude else 0
    kind, _, method = family.partition("-")
    if kind == "workingset":
        return _workingset(draw, method, power, magnitude)
    if kind == "stacked":
        return _stacked(draw, power, magnitude)
    if kind == "smooth":
        return _smooth(draw, method, power, magnitude)
    if kind == "fixed_point":
        return _fixed_point(draw, method, power, magnitude)
    return _qp(draw, method, power, magnitude)


def _workingset(draw: st.DrawFn, family: str, power: int, magnitude: bool) -> SolverProblem:
    model, _, sub = family.partition("-")
    n, p = draw(st.integers(4, 8)), draw(st.integers(1, 4))
    X = _matrix(draw, n, p) * 10.0 ** power
    y = vector(draw, n)
    if model == "sparse_logreg":
        y = torch.where(y >= 0, 1.0, -1.0).to(F64)
        lam_max = float((X.T @ y).abs().max()) / (2 * n)
    else:
        lam_max = float((X.T @ y).abs().max()) / n
    assume(lam_max > 0)
    if magnitude:
        log_lam = draw(st.floats(-700.0, 700.0))
    else:
        log_lam = math.log(lam_max * draw(st.floats(0.05, 0.9)))
    theta = torch.tensor(log_lam, dtype=F64)
    if model == "elastic_net":
        theta = torch.stack([theta, theta + draw(st.floats(-3.0, 1.0))])
    # extremes: few iterations (an absolute tol can be out of reach of badly scaled data, and
    # the default caps allow 100 working sets × 20,000 sub-iterations)
    options = {"maxiter": 2, "sub_maxiter": 10} if magnitude else {}
    solver = getattr(models, model)(X, y, tol=1e-13 if not magnitude else 1e-10,
                                    sub_solver="torch" if sub == "torch_sub" else "auto", **options)
    return SolverProblem(f"workingset-{family}", solver, theta, None, _outer(draw, p),
                         _direction(draw, theta))


def _stacked(draw: st.DrawFn, power: int, magnitude: bool) -> SolverProblem:
    """``K`` = 2 or 3 Lasso members (the folds of a cross-validation) sharing ``θ = log λ``."""
    K, p = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    data = [(_matrix(draw, draw(st.integers(4, 6)), p) * 10.0 ** power, None) for _ in range(K)]
    data = [(X, vector(draw, X.shape[0])) for X, _ in data]
    lam_max = min(float((X.T @ y).abs().max()) / X.shape[0] for X, y in data)
    assume(lam_max > 0)
    log_lam = draw(st.floats(-700.0, 700.0)) if magnitude else math.log(
        lam_max * draw(st.floats(0.05, 0.9)))
    options = {"maxiter": 2, "sub_maxiter": 10} if magnitude else {}
    solver = Stacked([models.lasso(X, y, tol=1e-13 if not magnitude else 1e-10, **options)
                      for X, y in data])
    theta = torch.tensor(log_lam, dtype=F64)
    outer = _outer(draw, p)
    return SolverProblem("stacked-lasso_cv", solver, theta, None,
                         lambda Y: sum(outer(Y[k]) for k in range(K)), _direction(draw, theta))


def _smooth(draw: st.DrawFn, method: str, power: int, magnitude: bool) -> SolverProblem:
    """Logistic loss + ``½ Σ e^{θ_j} y_j²``: smooth, strongly convex."""
    n, p = draw(st.integers(3, 8)), draw(st.integers(1, 4))
    X = _matrix(draw, n, p) * 10.0 ** power
    labels = torch.where(vector(draw, n) >= 0, 1.0, -1.0).to(F64)

    def objective(w: Tensor, t: Tensor) -> Tensor:
        return (torch.nn.functional.softplus(-labels * (X @ w)).mean()
                + 0.5 * (t.exp() * w * w).sum())

    low, high = (-300.0, 300.0) if magnitude else (-3.0, 1.0)
    theta = vector(draw, p, st.floats(low, high))
    solver = Smooth(objective, method=method, tol=1e-12, maxiter=200 if not magnitude else 5)
    return SolverProblem(f"smooth-{method}", solver, theta, torch.zeros(p, dtype=F64),
                         _outer(draw, p), _direction(draw, theta), smooth_mapping=True)


def _fixed_point(draw: st.DrawFn, method: str, power: int, magnitude: bool) -> SolverProblem:
    """``T(z, θ) = tanh(W z + U θ + b)`` with ``‖W‖₂ = ρ < 1``: a contraction."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    M = _matrix(draw, n, n)
    norm = float(torch.linalg.matrix_norm(M, 2))
    assume(norm > 1e-3)
    W = draw(st.floats(0.05, 0.9)) * M / norm
    U = _matrix(draw, n, k) * 10.0 ** power
    b = vector(draw, n)
    solver = FixedPoint(lambda z, t: torch.tanh(z @ W.T + t @ U.T + b), method=method,
                        tol=1e-13, maxiter=2000 if not magnitude else 50)
    low, high = (-300.0, 300.0) if magnitude else (-1.0, 1.0)
    theta = vector(draw, k, st.floats(low, high))
    return SolverProblem(f"fixed_point-{method}", solver, theta, torch.zeros(n, dtype=F64),
                         _outer(draw, n), _direction(draw, theta), smooth_mapping=True)


_CVXPY_QP: dict[str, Any] = {}  # one cvxpylayers front for the whole run: layers cached per size


def _qp(draw: st.DrawFn, backend: str, power: int, magnitude: bool) -> SolverProblem:
    """A feasible strictly convex QP in ``θ = [q, h]``: ``Q = LLᵀ + μI``, constraints built
    around a random point ``z0`` (``A z0 = b``, ``G z0 ≤ h``)."""
    from solvers import QP

    n, m, p = draw(st.integers(1, 4)), draw(st.integers(0, 4)), draw(st.integers(0, 1))
    L = _matrix(draw, n, n)
    Q = (L @ L.T + draw(st.floats(0.1, 2.0)) * torch.eye(n, dtype=F64)) * 10.0 ** power
    z0 = vector(draw, n)
    G, A = _matrix(draw, m, n), _matrix(draw, p, n)
    slack = vector(draw, m, st.floats(0.0, 2.0))
    h, b = G @ z0 + slack, A @ z0
    q = vector(draw, n) * 10.0 ** power
    native = QP("native", maxiter=50 if not magnitude else 15)
    cvxpylayers = backend == "cvxpylayers"
    solver = _CVXPY_QP.setdefault("qp", QP("cvxpylayers")) if cvxpylayers else native
    theta = torch.cat([q, h])
    return SolverProblem(f"qp-{backend}", solver, theta, None, _outer(draw, n + p + m, n),
                         _direction(draw, theta), arguments=lambda t: (Q, t[:n], G, t[n:], A, b),
                         reference=native if cvxpylayers else None, fd_step=1e-3,
                         inexact=cvxpylayers)
