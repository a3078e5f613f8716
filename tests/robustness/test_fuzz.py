"""Fuzzing the engine with random tiny problems across every solver and prox operator.

Checks (``strategies.py`` builds the problems):

- at smooth points (every coordinate at least ``SMOOTH`` from the prox's kink set, by the
  prox's own report), the implicit hypergradient (reverse mode) or Jacobian-vector product
  (forward mode) of ``bilevel.implicit_solve`` equals central differences of an independent
  reference: the closed form ``prox_{g/c}(b/c)`` for ``ProxGrad`` over every operator of
  ``solvers.prox.REGISTRY``, warm-started re-solves for the other solvers;
- at a kink (one coordinate, group or ball boundary exactly on it), a ``KinkWarning`` is raised
  and the returned derivative lies between the one-sided differences;
- with extreme but valid magnitudes (data, curvature and hyperparameters spanning 10^±100 to
  10^±120, log-hyperparameters up to ±700), no NaN or Inf comes out of a solve or a
  hypergradient without an error naming it (raised by the framework, not a raw torch error) —
  a QP item may be NaN only when its status marks it and a ``QPStatusWarning`` says so.

The default run (``make test``) runs at least ``MIN_EXAMPLES`` examples, counted as they run
and asserted by the last test; ``-m slow`` runs ``SLOW_FACTOR`` times as many, with other seeds,
and adds the cvxpylayers QP backend (20 draws: a solve costs ~0.3 s). The default run is
derandomized; hypothesis also mixes literal constants of the imported modules into its draws, so
the examples of a session depend on what else it imported (every one of them must pass).
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

import bilevel
from solvers.base import ConvergenceWarning
from solvers.prox import REGISTRY
from solvers.qp.native import QPStatusWarning
from tests.helpers import assert_between, central_difference, one_sided
from tests.robustness.strategies import (
    FAMILIES,
    NAMES,
    SLOW_FAMILIES,
    SMOOTH,
    H,
    ProxProblem,
    SolverProblem,
    prox_kink_problems,
    prox_problems,
    solver_problems,
)
from tests.solvers.registry import CASES

MIN_EXAMPLES = 500
SLOW_FACTOR = 10
COUNTS: Counter[str] = Counter()  # examples that ran to the end, per test
# per test: smooth-point examples per solver family ("family:…"), kink examples whose one-sided
# differences differ ("genuine kink"), how extreme examples ended ("finite", "error:…", …)
DETAILS: defaultdict[str, Counter[str]] = defaultdict(Counter)
_RUNNING = [""]  # the test whose example is running (DETAILS' key)


def note(what: str) -> None:
    DETAILS[_RUNNING[0]][what] += 1
REPO = Path(__file__).resolve().parents[2]


def _settings(budget: int, slow: bool) -> settings:
    return settings(max_examples=budget * SLOW_FACTOR if slow else budget, deadline=None,
                    derandomize=not slow, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def fuzz(name: str, make: Any, budget: int, families: tuple[str, ...] | None = None,
         slow: bool = False) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """``check(problem)`` on ``budget`` examples of the strategy ``make`` (×``SLOW_FACTOR``
    and another seed under ``-m slow``), each counted in ``COUNTS[name]`` once it passed. With
    ``families``, the test is parametrised over them and ``make(family)`` is the strategy:
    ``budget`` examples for each family."""
    def decorate(check: Callable[[Any], None]) -> Callable[..., None]:
        if families is None:
            def test(problem: Any) -> None:
                _RUNNING[0] = name
                check(problem)
                COUNTS[name] += 1

            test = given(make)(_settings(budget, slow)(test))
        else:
            def test(family: str, data: st.DataObject) -> None:
                _RUNNING[0] = name
                check(data.draw(make(family), label="problem"))
                COUNTS[name] += 1

            test = given(data=st.data())(_settings(budget, slow)(test))
            test = pytest.mark.parametrize("family", families)(test)
        if slow:
            test = pytest.mark.slow(seed(sum(map(ord, name)))(test))
        return test
    return decorate


# -- ProxGrad over every operator: smooth points ---------------------------------------------

def check_prox_smooth(problem: ProxProblem) -> None:
    assume(float(problem.report().kink_distance.min()) >= SMOOTH)
    solver, init = problem.solver(), problem.init()
    adjoint = bilevel.ImplicitAdjoint()
    theta0, d = problem.theta, problem.direction
    with warnings.catch_warnings():
        warnings.simplefilter("error", bilevel.KinkWarning)  # not a kink: no warning either
        warnings.simplefilter("error", ConvergenceWarning)
        if problem.forward:
            y, tangent = torch.func.jvp(
                lambda t: bilevel.implicit_solve(solver, t, init, adjoint=adjoint),
                (theta0,), (d,))
        else:
            theta = theta0.clone().requires_grad_(True)
            y = bilevel.implicit_solve(solver, theta, init, adjoint=adjoint)
            problem.outer(y).backward()
    reference = problem.reference(theta0)
    assert float((y.detach() - reference).abs().max()) <= 1e-9 * (1 + float(reference.abs().max()))
    assert adjoint.report.n_kinks == 0
    if problem.forward:
        for k in range(problem.n):
            fd = central_difference(lambda t, k=k: float(problem.reference(t)[k]), theta0, d, H)
            assert abs(float(tangent[k]) - fd) <= 1e-6 * max(1.0, abs(fd)), (k, tangent, fd)
    else:
        fd = central_difference(lambda t: float(problem.outer(problem.reference(t))),
                                theta0, d, H)
        ours = float((theta.grad * d).sum())
        assert abs(ours - fd) <= 1e-6 * max(1.0, abs(fd)), (ours, fd)


# -- ProxGrad over every operator: exactly on a kink -----------------------------------------

def check_prox_kink(case: tuple[ProxProblem, torch.Tensor]) -> None:
    problem, _ = case
    solver, init = problem.solver(), problem.init()
    theta0, d = problem.theta, problem.direction
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if problem.forward:
            _, tangent = torch.func.jvp(lambda t: bilevel.implicit_solve(solver, t, init),
                                        (theta0,), (d,))
        else:
            theta = theta0.clone().requires_grad_(True)
            problem.outer(bilevel.implicit_solve(solver, theta, init)).backward()
    categories = [w.category for w in caught]
    assert bilevel.KinkWarning in categories, categories
    assert not any(issubclass(c, ConvergenceWarning) for c in categories), categories
    if problem.forward:
        ref = problem.reference
        left = (ref(theta0) - ref(theta0 - H * d)) / H
        right = (ref(theta0 + H * d) - ref(theta0)) / H
        for k in range(problem.n):
            a, b = float(left[k]), float(right[k])
            assert_between(float(tangent[k]), a, b, atol=1e-5 * max(1.0, abs(a), abs(b)))
        genuine = float((left - right).abs().max()) > 1e-3
    else:
        a, b = one_sided(lambda t: float(problem.outer(problem.reference(t))), theta0, d, H)
        assert_between(float((theta.grad * d).sum()), a, b, atol=1e-5 * max(1.0, abs(a), abs(b)))
        genuine = abs(a - b) > 1e-3
    if genuine:
        note("genuine kink")


# -- the other solvers: smooth points, finite differences by warm-started re-solves ----------

def check_solver_smooth(problem: SolverProblem) -> None:
    theta0, d = problem.theta, problem.direction
    theta = theta0.clone().requires_grad_(True)
    adjoint = bilevel.ImplicitAdjoint()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = problem.solve(theta, adjoint=adjoint)
            problem.outer(y).backward()
        except bilevel.SingularJacobianError:
            assume(False)  # a singular draw (collinear support, dependent active rows): the
            #                catalogue of bad inputs checks those; here we want derivatives
    if not problem.smooth_mapping:  # random data may sit on a kink (a weakly active constraint)
        assume(float(problem.structure(y, theta0).kink_distance.min()) >= SMOOTH)
    categories = [w.category for w in caught]
    if problem.inexact and any(issubclass(c, ConvergenceWarning) for c in categories):
        note("skipped: inexact solve (ConvergenceWarning)")
        assume(False)
    assert not any(issubclass(c, (ConvergenceWarning, bilevel.KinkWarning)) for c in categories)
    assume(adjoint.report.rcond is None or adjoint.report.rcond > 1e-8)  # well-posed for FD
    pieces = _pieces(problem, y, theta0)
    solved, h = y.detach(), problem.fd_step
    values = {}
    for sign in (-1, 1):
        t = theta0 + sign * h * d
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            moved = problem.rerun(t, solved)
        assume(torch.equal(_pieces(problem, moved, t), pieces))  # the same smooth piece
        values[sign] = float(problem.outer(moved))
    fd = (values[1] - values[-1]) / (2 * h)
    ours = float((theta.grad * d).sum())
    assert abs(ours - fd) <= 1e-5 * max(1.0, abs(fd)), (problem.family, ours, fd)
    note(f"family:{problem.family}")


def _pieces(problem: SolverProblem, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    structure = problem.structure(y.detach(), theta)
    if structure is None or structure.inactive is None:
        return torch.zeros(0, dtype=torch.bool)
    return structure.inactive


# -- extreme but valid values: no NaN without an error ---------------------------------------

ERRORS = (ValueError, TypeError, RuntimeError)  # incl. DivergenceError, SingularJacobianError


def _raised_by_the_framework(err: BaseException) -> bool:
    """The innermost frame of the traceback is in the repository's own code (a ``raise``
    naming the cause), not in torch or another dependency."""
    frames = traceback.extract_tb(err.__traceback__)
    path = Path(frames[-1].filename).resolve()
    return path.is_relative_to(REPO) and ".venv" not in path.parts


def run_extreme(solve: Callable[[torch.Tensor], torch.Tensor], outer: Callable, theta0,
                status: Callable[[], Any] | None = None) -> None:
    theta = theta0.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = solve(theta)
            failed = ~torch.isfinite(y.detach())
            if status is not None and bool(failed.any()):
                # documented: per-item status, NaN and a warning naming the items
                assert int(status().reshape(-1)[0]) != 0
                assert any(issubclass(w.category, QPStatusWarning) for w in caught)
                note("qp status")
                return
            assert not bool(failed.any()), f"non-finite y* without an error: {y}"
            outer(y).backward()
        except ERRORS as err:
            assert str(err), type(err)
            assert _raised_by_the_framework(err), "".join(traceback.format_exception(err))
            note(f"error:{type(err).__name__}")
            return
    assert bool(torch.isfinite(theta.grad).all()), f"non-finite hypergradient: {theta.grad}"
    note("finite")


def check_prox_extreme(problem: ProxProblem) -> None:
    solver, init = problem.solver(), problem.init()
    run_extreme(lambda t: bilevel.implicit_solve(solver, t, init), problem.outer, problem.theta)


def check_solver_extreme(problem: SolverProblem) -> None:
    status = (lambda: problem.solver.status) if problem.family.startswith("qp") else None
    run_extreme(problem.solve, problem.outer, problem.theta, status)


# -- the tests: default budgets (≥ MIN_EXAMPLES in all) and the -m slow ones --------------------

# examples per test in the default run (per family for the solver tests)
BUDGETS = {
    "test_prox_grad_hypergradient_at_smooth_points": 150,
    "test_prox_grad_derivative_brackets_one_sided_limits_at_kinks": 100,
    "test_prox_grad_extreme_values_never_leak_nan": 90,
    "test_solvers_hypergradient_at_smooth_points": 8,
    "test_solvers_extreme_values_never_leak_nan": 6,
}
TESTS = {
    "test_prox_grad_hypergradient_at_smooth_points": (prox_problems(), check_prox_smooth),
    "test_prox_grad_derivative_brackets_one_sided_limits_at_kinks":
        (prox_kink_problems(), check_prox_kink),
    "test_prox_grad_extreme_values_never_leak_nan":
        (prox_problems(magnitude=True), check_prox_extreme),
    "test_solvers_hypergradient_at_smooth_points":
        (lambda family: solver_problems((family,)), check_solver_smooth),
    "test_solvers_extreme_values_never_leak_nan":
        (lambda family: solver_problems((family,), magnitude=True), check_solver_extreme),
}


SLOW_FAMILY_BUDGET = 2  # per family, ×SLOW_FACTOR: a cvxpylayers solve costs ~0.3 s


def fuzz_tests_of(name: str, slow: bool) -> dict[str, dict[str, int] | None]:
    """The tests made of ``TESTS[name]``: their names and, for the solver tests, the budget of
    each family they are parametrised over."""
    if not slow:
        families = {f: BUDGETS[name] for f in FAMILIES} if name.startswith("test_solvers") \
            else None
        return {name: families}
    if not name.startswith("test_solvers"):
        return {f"{name}_slow": None}
    return {f"{name}_slow": {f: BUDGETS[name] for f in FAMILIES},
            f"{name}_slow_cvxpylayers": {f: SLOW_FAMILY_BUDGET for f in SLOW_FAMILIES}}


def expected_examples(name: str, families: dict[str, int] | None, slow: bool) -> int:
    factor = SLOW_FACTOR if slow else 1
    return factor * (sum(families.values()) if families else BUDGETS[name])


for _name, (_make, _check) in TESTS.items():
    for _slow in (False, True):
        for _test, _families in fuzz_tests_of(_name, _slow).items():
            _budget = BUDGETS[_name] if _families is None else next(iter(_families.values()))
            globals()[_test] = fuzz(_test, _make, _budget,
                                    None if _families is None else tuple(_families),
                                    slow=_slow)(_check)


def test_every_registered_solver_and_prox_is_fuzzed():
    """A solver added to the conformance registry, or an operator added to the prox registry,
    needs its random problems here too."""
    assert NAMES == sorted(REGISTRY)
    for case in CASES:  # ProxGrad is fuzzed with every operator of the prox registry
        assert case.name in FAMILIES or case.name.startswith("proxgrad-"), case.name


def _budget_report(slow: bool) -> None:
    tests = {test: (name, families) for name in TESTS
             for test, families in fuzz_tests_of(name, slow).items()}
    ran = {test: COUNTS[test] for test in tests}
    if not all(ran.values()):
        pytest.skip(f"run the whole module: fuzz tests not run here: "
                    f"{[test for test, count in ran.items() if not count]}")
    assert sum(ran.values()) >= MIN_EXAMPLES * (SLOW_FACTOR if slow else 1), ran
    for test, (name, families) in tests.items():  # hypothesis did not stop short
        assert ran[test] >= expected_examples(name, families, slow), (test, ran[test])
    for test in tests:
        details = DETAILS[test]
        if "brackets" in test:  # the brackets have a real gap, mostly
            assert details["genuine kink"] >= ran[test] // 2, (test, details)
        if "extreme" in test:  # extreme problems mostly get solved, not all refused
            assert details["finite"] >= ran[test] // 4, (test, details)
        if "hypergradient" in test and tests[test][1]:  # each family got derivative checks
            checked = {k.removeprefix("family:") for k in details if k.startswith("family:")}
            assert checked == set(tests[test][1]), (test, checked)


def test_default_budget_ran_at_least_500_examples():
    _budget_report(slow=False)


@pytest.mark.slow
def test_slow_budget_ran_ten_times_as_many_examples():
    _budget_report(slow=True)


# -- regressions found by the fuzzing ----------------------------------------------------------

def test_simplex_and_l1_ball_jacobians_at_a_rounded_support_kink_are_one_piece():
    """The kink fuzzing found ``l1_ball`` (and ``simplex``, same threshold) returning a mix of
    its two pieces: at ``v`` below the sort puts ``v_1`` on the support (``τ`` averages three
    coordinates) while rounding gives ``v_1 − τ = −2.8e-17`` (a zero row 1), and the implicit
    derivative then left the one-sided bracket (0.333 outside [0, 0.111]). Now rows and columns
    follow the one sorted support, and the report's inactive mask is the zero rows."""
    from solvers import prox
    from solvers.prox import recording

    v = torch.tensor([0.202, 0.101, 0.202, 0.0, 0.0505], dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)

    def piece(support: list[int]) -> torch.Tensor:
        on = torch.zeros(5, dtype=torch.bool)
        on[support] = True
        block = eye - 1.0 / len(support)
        return torch.where(on[:, None] & on[None, :], block, 0.0)

    pieces = [piece([0, 1, 2]), piece([0, 2])]
    for op in (prox.simplex, prox.l1_ball):
        with recording() as reports:
            op(v, 0.202)
        jac = torch.func.jacrev(lambda u, op=op: op(u, 0.202))(v)
        assert any(torch.allclose(jac, p, atol=1e-15, rtol=0) for p in pieces), (op, jac)
        assert torch.equal(reports[0].inactive, (jac == 0).all(-1))
        assert float(reports[0].kink_distance[1]) < 1e-15  # it is a kink


def test_simplex_and_l1_ball_keep_a_radius_below_the_rounding_of_v():
    """The extreme-value fuzzing found ``simplex((1e20, 0), 1)`` = ``(Inf, Inf)`` (and NaN
    through ``ProxGrad``): the radius vanished from the cumulative sums, leaving an empty
    support. The threshold is now computed on ``v − max(v)``."""
    from solvers import prox

    v = torch.tensor([1e20, 0.0, -3.0], dtype=torch.float64)
    assert prox.simplex(v, 1.0).tolist() == [1.0, 0.0, 0.0]
    assert prox.l1_ball(-v, 2.0).tolist() == [-2.0, 0.0, 0.0]
    huge = torch.tensor([1.75e119, 6.9e117], dtype=torch.float64)  # the fuzzed point
    assert prox.simplex(huge, 1.07e69).tolist() == [1.07e69, 0.0]
    # ordinary scales are unchanged: the example of the simplex's docstring tests
    torch.testing.assert_close(prox.simplex(torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)),
                               torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))


def test_prox_grad_raises_divergence_instead_of_returning_non_finite_iterates():
    """The extreme-value fuzzing found ``ProxGrad.run`` returning NaN after ``maxiter``
    iterations with a ConvergenceWarning only (the engine then refused it); the solver now
    stops at the first non-finite iterate with a ``DivergenceError`` naming the cause."""
    from solvers import DivergenceError, ProxGrad

    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    solver = ProxGrad(lambda y, t: 0.5 * (y * y).sum() - (b * y).sum(),
                      lambda v, t, step: v * t.exp(), stepsize=0.5)  # e^800 overflows
    with pytest.raises(DivergenceError, match="non-finite at iteration 1"):
        solver.run(torch.tensor(800.0, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert solver.info is not None and not solver.info.converged
