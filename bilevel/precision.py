"""Precision control: the inner tolerance derived from the hypergradient precision asked for.

**The bound.** Write ``h(θ) = F(θ, y*(θ))`` and, for any ``y``, the implicit hypergradient
evaluated at ``y``::

    g(θ, y) = ∂θF(θ, y) + A(θ, y)ᵀ u,     B(θ, y)ᵀ u = −∂yF(θ, y),     [A B] = ∂H(θ, y),

so that ``∇h(θ) = g(θ, y*)``. Suppose that, near ``y*``, ``∂F``, ``A`` and ``B`` are Lipschitz in
``y`` (constants ``L_F, L_A, L_B``), bounded (``‖A‖ ≤ M_A``, ``‖∂yF‖ ≤ M_F``), ``‖B⁻¹‖ ≤ 1/μ``
and ``‖ŷ − y*‖ ≤ ‖H(θ, ŷ)‖ / μ_H`` (``H`` strongly monotone, or ``B`` bounded below). Then
(Pedregosa 2016, *Hyperparameter optimization with approximate gradient*, Thm. 2;
Ghadimi & Wang 2018, Lemma 2.2)::

    ‖g(θ, ŷ) − ∇h(θ)‖ ≤ C · ‖H(θ, ŷ)‖,
    C = (L_F + L_A M_F/μ + M_A L_F/μ + M_A M_F L_B/μ²) / μ_H .

Every inner solver stops on a residual ``r`` that is such a norm of ``H`` up to a fixed factor
(``WorkingSet``: the largest KKT violation; ``ProxGrad``: ``max|H|/η``; ``Smooth``:
``‖∇_y f‖∞``; ``FixedPoint``: ``max‖y − T(y)‖∞/(1 + ‖y‖∞)``; ``NativeQP``: ``‖H‖∞``), so with
that factor absorbed in ``C``: **a solve to tolerance ε gives a hypergradient within C·ε**, and a
target precision δ is met by ``ε = δ / C``. For a nonsmooth ``H`` (the Lasso) the bound holds
where ``ŷ`` already has the selection of ``y*`` (same support and signs; under strict
complementarity, for ε small enough); a looser solve may have a wrong support and an O(1) error.
The adjoint linear solve adds its own error (relative ``ImplicitAdjoint.tol``, 1e-10 by
default), which this module does not control.

**Estimating C honestly.** The constants above are not known; ``C`` is *measured* at the current
θ by :func:`calibrate`: one warm-started continuation of the inner solve down a ladder of
tolerances ``tol_max, tol_max·10⁻³, …`` to ``tol_min``, a hypergradient ``g_i`` at each rung
(residual reached ``r_i``, the solver's ``info.residual``), and

    Ĉ = max_i ‖g_i − g_ref‖ / r_i      over the rungs with r_i > 10 · r_ref,

``g_ref`` the hypergradient at ``tol_min``. Residuals reached, not the tolerances asked, are the
denominators: a Newton step often lands far below its tolerance, and the bound is in what was
reached. A single ratio can sit an order of magnitude below the supremum ``C`` (the error
direction varies; measured on L2 logistic with L-BFGS: ratios from 1.3e-3 to 3.2e-2), hence the
maximum over rungs and the ``safety`` factor (default 10) in ``ε = δ / (safety · Ĉ)``, clipped to
``[tol_min, tol_max]``. No informative rung (the solver lands at ``r_ref`` from every rung, e.g.
the working-set Lasso, exact on its support) gives ``Ĉ = 0`` and ``ε = tol_max``. ``Ĉ`` is
trusted up to 10× the largest residual it was measured at: a solve that stops above that, or
``calibrate_every`` steps, triggers a new calibration.

**The schedule.** :meth:`PrecisionControl.target` gives the precision of step ``k``:
``δ_k = rtol · ‖g_{k−1}‖`` (relative to the last hypergradient: ``rtol < 1`` keeps
``⟨g̃, ∇h⟩ > 0``, an inexact gradient method; δ shrinks as the outer method converges) and/or
``δ_k = atol / (k + 1)^decay`` (absolute; ``decay > 1`` gives Pedregosa's summable tolerances);
with both, the smaller.

**Setting a solver's tolerance.** Every inner solver reads its ``tol`` attribute at each
``run``; :func:`inner_tolerance` sets it for a block and restores it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bilevel.errors import KinkWarning
from solvers.base import ConvergenceWarning

__all__ = [
    "Calibration",
    "PrecisionControl",
    "calibrate",
    "check_positive",
    "inner_tolerance",
    "validate",
]

TRUST = 10.0  # Ĉ is trusted up to TRUST × the largest residual it was measured at
INFORMATIVE = 10.0  # a rung counts when its residual is above INFORMATIVE × r_ref


def check_positive(name: str, value: float | None, *, below: float | None = None) -> None:
    """``value`` is None or a finite number ``> 0`` (and ``< below`` when given).

    Raises:
        ValueError: naming ``name``.
    """
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if ok and below is not None:
        ok = value < below
    if not ok:
        bound = f" and < {below:g}" if below is not None else ""
        raise ValueError(f"{name} must be a finite number > 0{bound}, got {value!r}")


@contextmanager
def inner_tolerance(solver: object, tol: float) -> Iterator[None]:
    """Run the block with ``solver.tol = tol``; the previous value is restored on exit.

    Raises:
        TypeError: the solver has no ``tol`` attribute to set.
    """
    if not hasattr(solver, "tol"):
        raise TypeError(
            f"{type(solver).__name__} has no `tol` attribute: precision control sets the inner "
            "solver's stopping tolerance between runs (give the solver a `tol` it reads in run())"
        )
    old = solver.tol  # type: ignore[attr-defined]
    solver.tol = tol  # type: ignore[attr-defined]
    try:
        yield
    finally:
        solver.tol = old  # type: ignore[attr-defined]


def reached_residual(solver: object, tol: float) -> float:
    """The residual the solver's last ``run`` reached (``info.residual``), else ``tol``."""
    info = getattr(solver, "info", None)
    residual = getattr(info, "residual", None)
    return float(residual) if residual is not None and math.isfinite(residual) else tol


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured.

    Attributes:
        constant: ``Ĉ = max_i ‖g_i − g_ref‖ / r_i`` over informative rungs (0.0 if none).
        residual: the largest residual of the rungs (where ``Ĉ`` was measured).
        grad, y: the reference hypergradient and inner solution (at ``tol_min``).
        rungs: ``(tol, residual, ‖g_i − g_ref‖)`` of every rung, the reference last.
    """

    constant: float
    residual: float
    grad: Tensor
    y: Tensor
    rungs: list[tuple[float, float, float]] = field(default_factory=list)


def ladder(tol_max: float, tol_min: float, ratio: float = 1e-3) -> list[float]:
    """Tolerances ``tol_max · ratio^i`` that stay ``≥ tol_min / ratio`` (at least ``tol_max``)."""
    tols = [tol_max]
    while tols[-1] * ratio * ratio >= tol_min * (1 - 1e-9):
        tols.append(tols[-1] * ratio)
    return tols


def calibrate(
    solver: object,
    hypergradient: Callable[[Tensor], tuple[Tensor, Tensor]],
    y0: Tensor,
    *,
    tol_max: float,
    tol_min: float,
    start: tuple[float, Tensor, Tensor] | None = None,
) -> Calibration:
    """Measure ``Ĉ`` at the current θ (see the module docstring).

    Args:
        solver: the inner solver (its ``tol`` is set per rung, then restored).
        hypergradient: ``y_init ↦ (g, y)``: solve at the solver's current ``tol`` from
            ``y_init`` and return the hypergradient and the (detached) solution.
        y0: warm start of the first rung.
        tol_max, tol_min: the first rung and the reference tolerance.
        start: ``(tol, g, y)`` of a solve already done at this θ (``solver.info`` still its
            own): used as the first rung instead of a solve at ``tol_max``.

    Returns:
        :class:`Calibration`; ``grad`` / ``y`` are the reference (the most precise) values.
    """
    points: list[tuple[float, float, Tensor]] = []
    y = y0
    tols = ladder(tol_max, tol_min)
    if start is not None:
        tol0, g, y = start
        points.append((tol0, reached_residual(solver, tol0), g))
        tols = [t for t in tols if t < tol0]
    with warnings.catch_warnings():  # loose rungs only measure the error: their kink and
        warnings.simplefilter("ignore", KinkWarning)  # convergence warnings are not the user's
        warnings.simplefilter("ignore", ConvergenceWarning)
        for tol in tols:
            with inner_tolerance(solver, tol):
                g, y = hypergradient(y)
            points.append((tol, reached_residual(solver, tol), g))
    with inner_tolerance(solver, tol_min):
        g_ref, y_ref = hypergradient(y)
    r_ref = reached_residual(solver, tol_min)
    constant, rungs = 0.0, []
    for tol, r, g in points:
        err = float(torch.linalg.vector_norm(g - g_ref))
        rungs.append((tol, r, err))
        if r > INFORMATIVE * r_ref and r > 0:
            constant = max(constant, err / r)
    rungs.append((tol_min, r_ref, 0.0))
    residual = max([r for _, r, _ in points] + [r_ref])
    return Calibration(constant, residual, g_ref, y_ref, rungs)


OPTIONS = ("rtol", "atol", "decay", "tol_min", "tol_max", "safety", "calibrate_every")


def validate(values: dict[str, object], names: dict[str, str] | None = None, *,
             need_target: bool = True) -> None:
    """Check :class:`PrecisionControl`'s options ``values`` (keyed by field name); errors name
    each option by ``names[field]`` (the caller's spelling, e.g. ``hypergrad_rtol``).
    ``need_target=False`` accepts ``rtol`` and ``atol`` both None (control off).

    Raises:
        ValueError: naming the first bad option.
    """
    def name(f: str) -> str:
        return (names or {}).get(f, f)

    if need_target and values["rtol"] is None and values["atol"] is None:
        raise ValueError(f"precision control needs {name('rtol')} or {name('atol')}")
    check_positive(name("rtol"), values["rtol"], below=1.0)  # type: ignore[arg-type]
    for f in ("atol", "tol_min", "tol_max", "safety"):
        check_positive(name(f), values[f])  # type: ignore[arg-type]
        if values[f] is None and f != "atol":
            raise ValueError(f"{name(f)} must be a finite number > 0, got None")
    decay = values["decay"]
    if not (isinstance(decay, (int, float)) and math.isfinite(decay) and decay >= 0):
        raise ValueError(f"{name('decay')} must be a finite number ≥ 0, got {decay!r}")
    if values["tol_min"] > values["tol_max"]:  # type: ignore[operator]
        raise ValueError(f"{name('tol_min')} ({values['tol_min']:g}) must be ≤ "
                         f"{name('tol_max')} ({values['tol_max']:g})")
    every = values["calibrate_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"{name('calibrate_every')} must be an integer ≥ 0, got {every!r}")


@dataclass(frozen=True)
class PrecisionControl:
    """The rule ``ε_k = clip(δ_k / (safety · Ĉ), tol_min, tol_max)`` and its schedule ``δ_k``.

    Stateless: the measured ``Ĉ`` and the last hypergradient norm live in the caller's state.

    Args:
        rtol: relative target ``δ_k = rtol · ‖g_{k−1}‖`` (in (0, 1)), or None.
        atol: absolute target ``δ_k = atol / (k + 1)^decay``, or None. At least one is set.
        decay: exponent of the absolute target (0: constant; > 1: summable).
        tol_min, tol_max: bounds of the inner tolerance (``tol_min`` is also the reference
            tolerance of :func:`calibrate`).
        safety: ``Ĉ`` is multiplied by it (a single measured ratio can be ~10× below ``C``).
        calibrate_every: measure ``Ĉ`` again every this many steps (0: only when a solve
            leaves the residual range it was measured on).

    Raises:
        ValueError: a non-positive, non-finite or inconsistent option (named).
    """

    rtol: float | None = None
    atol: float | None = None
    decay: float = 0.0
    tol_min: float = 1e-12
    tol_max: float = 1e-2
    safety: float = 10.0
    calibrate_every: int = 10

    def __post_init__(self) -> None:
        validate({f: getattr(self, f) for f in OPTIONS})

    def target(self, step: int, grad_norm: float) -> float:
        """``δ_k``: the smaller of ``rtol · grad_norm`` and ``atol / (step + 1)^decay``."""
        deltas = []
        if self.rtol is not None:
            deltas.append(self.rtol * grad_norm)
        if self.atol is not None:
            deltas.append(self.atol / (step + 1) ** self.decay)
        return min(deltas)

    def tolerance(self, delta: float, constant: float) -> float:
        """``ε = clip(δ / (safety · Ĉ), tol_min, tol_max)`` (``tol_max`` when ``Ĉ = 0``)."""
        if not delta > 0:  # a zero hypergradient: ask for the most
            return self.tol_min
        if not constant > 0:
            return self.tol_max
        return min(max(delta / (self.safety * constant), self.tol_min), self.tol_max)

    def due(self, step: int, calibrated_at: int) -> bool:
        """Whether step ``step`` measures ``Ĉ`` (never yet, or ``calibrate_every`` steps on)."""
        if calibrated_at < 0:
            return True
        return self.calibrate_every > 0 and step - calibrated_at >= self.calibrate_every

    def trusted(self, residual: float, calibrated_residual: float) -> bool:
        """Whether ``Ĉ`` measured up to ``calibrated_residual`` covers a solve that reached
        ``residual``."""
        return residual <= TRUST * max(calibrated_residual, self.tol_min)
