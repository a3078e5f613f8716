"""The bilevel problem an outer method optimises, and the loop that drives any method.

Problem: ``min_θ  F(y*(θ), θ)`` with ``y*(θ)`` the solution returned by ``inner.run(θ)``.
An outer method is an object with ``init(problem) -> state`` and
``step(problem, state) -> metrics`` (mutating ``state``), so that a loop, a checkpoint or a test
can drive every method the same way.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from bilevel.outer.checkpoint import (
    CheckpointWarning,
    RunRecord,
    load_checkpoint,
    previous_path,
    remove_checkpoints,
    restore_state,
    save_checkpoint,
)
from solvers.base import DivergenceError, InnerSolver


@dataclass
class BilevelProblem:
    """``min_θ F(y*(θ), θ)``.

    Attributes:
        inner: the inner solver (``y*(θ) = inner.run(θ)``).
        outer: ``F(y, θ)``, a scalar.
        theta0: starting outer variable.
        y0: starting inner variable (warm start of the first inner solve).
        bounds: optional box ``(low, high)`` on θ, applied by projection after each step.
        inner_loss: ``g(y, θ, idx)``, the inner objective averaged over the inner samples ``idx``
            (a 1-D index tensor; ``None`` means all ``n_inner`` samples). Stochastic methods
            (SOBA, SABA, AmIGO, StocBiO, TTSA, unrolled) need it;
            ``y*(θ) = argmin_y g(y, θ, None)``.
        outer_loss: ``f(y, θ, idx)``, the outer objective averaged over the outer samples ``idx``
            (``None``: all ``n_outer`` samples; then it equals ``outer(y, θ)``).
        n_inner, n_outer: number of inner / outer samples (0 when the task has no sample
            structure).
    """

    inner: InnerSolver
    outer: Callable[[Tensor, Tensor], Tensor]
    theta0: Tensor
    y0: Tensor
    bounds: tuple[float, float] | None = None
    inner_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    outer_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None
    n_inner: int = 0
    n_outer: int = 0


@dataclass
class OuterState:
    """What an outer method carries between steps (everything needed to resume)."""

    theta: Tensor
    y: Tensor
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class OuterMethod(Protocol):
    name: str

    def init(self, problem: BilevelProblem) -> OuterState: ...

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, float]: ...


@dataclass
class OuterResult:
    """Outcome of :func:`run_outer`.

    Attributes:
        theta: the best iterate (lowest finite outer value seen).
        y: the inner solution at ``theta`` (methods leave ``state.y = y*(θ before the step)``).
        history: one metrics row per step (those before a resume included).
        status: ``"converged"``, ``"max_steps"``, ``"stalled"`` (the method's row said
            ``stalled``: e.g. a line search found no decrease), ``"diverged"`` (NaN/Inf in θ, y
            or a loss, or a :class:`~solvers.base.DivergenceError` from the inner solver),
            ``"failed"`` (another exception; in ``error``) or ``"interrupted"`` (KeyboardInterrupt).
        message: why the loop stopped (naming the step).
        best_value: the outer value at ``theta``.
        error: the exception that ended the loop, if any (re-raise it to see the traceback).
    """

    theta: Tensor
    y: Tensor
    history: list[dict[str, float]]
    status: str
    message: str
    best_value: float = math.inf
    error: BaseException | None = None


LOSS_KEYS = ("outer_value", "inner_value")  # metrics whose NaN/Inf means divergence


def run_outer(
    method: OuterMethod,
    problem: BilevelProblem,
    steps: int,
    *,
    gtol: float = 0.0,
    on_step: Callable[[dict[str, float], OuterState], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    checkpoint_tag: str = "",
) -> OuterResult:
    """Run outer steps until ``steps`` rows exist in the history; stop early when the
    hypergradient norm falls below ``gtol``, or on divergence.

    Divergence — NaN/Inf in θ, in the inner solution, in a row's ``outer_value`` or
    ``inner_value``, in the inner loss when a step raises, or a
    :class:`~solvers.base.DivergenceError` — stops the loop with status
    ``"diverged"`` and a message naming the step; any other exception gives ``"failed"`` and a
    KeyboardInterrupt ``"interrupted"``. In every case the best iterate so far is returned
    (nothing computed is lost). With ``checkpoint``, a final checkpoint is written when the
    run ends normally (``"max_steps"``, ``"converged"``); after a failure the last periodic one
    stays, since the interrupted step may have left the state half-updated.

    Args:
        method, problem: the outer method and the problem.
        steps: total number of outer steps (a resumed run counts the steps done before).
        gtol: stop when a row's ``hypergrad_norm`` is at most this (0: never; a stochastic
            method's estimate can vanish by chance, e.g. at its first step with ``v = 0``).
        on_step: called with every new metrics row and the state after that step (whose ``y``
            belongs to the row's θ, the θ before the update); it may add entries to the row
            (e.g. a test metric), and its own time is not counted in ``time_s``.
        checkpoint: file for :mod:`bilevel.outer.checkpoint` (``None``: no checkpoints).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        resume: load ``checkpoint`` into ``method.init(problem)``'s state and go on from there
            (bit-identical to an uninterrupted run); a run that had converged, or already has
            ``steps`` rows, returns its result without stepping (a larger ``steps`` extends it).
            Without a checkpoint file, warns and starts afresh.
        checkpoint_tag: fingerprint of the run's configuration, stored in the checkpoint and
            required to match on resume.

    Raises:
        ValueError: ``steps`` or ``checkpoint_every`` negative, or ``resume`` without
            ``checkpoint``.
        CheckpointError: the checkpoint belongs to another run, or no copy of it is readable.
    """
    if steps < 0 or checkpoint_every < 0:
        raise ValueError(f"steps and checkpoint_every must be ≥ 0, got {steps}, "
                         f"{checkpoint_every}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path of the checkpoint file>")
    state = method.init(problem)
    record = RunRecord()
    if checkpoint is not None:
        if resume and (Path(checkpoint).exists() or previous_path(checkpoint).exists()):
            record = restore_state(state, load_checkpoint(checkpoint), tag=checkpoint_tag)
        else:
            if resume:
                warnings.warn(f"resume: no checkpoint at {checkpoint} yet; starting at step 0",
                              CheckpointWarning, stacklevel=2)
            remove_checkpoints(checkpoint)
    if record.status not in ("converged", "stalled") and len(record.history) < steps:
        _loop(method, problem, state, record, steps, gtol, on_step, checkpoint,
              checkpoint_every, checkpoint_tag)
    theta = state.theta.detach().clone() if record.best_theta is None else record.best_theta
    y = state.y.detach().clone() if record.best_y is None else record.best_y
    return OuterResult(theta, y, record.history, record.status, record.message,
                       record.best_value, record.error)


def _loop(method: OuterMethod, problem: BilevelProblem, state: OuterState, record: RunRecord,
          steps: int, gtol: float,
          on_step: Callable[[dict[str, float], OuterState], None] | None,
          checkpoint: str | os.PathLike[str] | None, every: int, tag: str) -> None:
    """The stepping loop of :func:`run_outer`; fills ``record`` in place."""
    start = time.perf_counter() - record.elapsed_s
    record.status, record.message = "max_steps", f"ran {steps} outer steps"
    while len(record.history) < steps:
        theta_before = state.theta.detach().clone()
        step = state.step
        try:
            row = method.step(problem, state)  # measures the outer value at theta_before
        except DivergenceError as exc:
            record.status, record.message = "diverged", (
                f"diverged at step {step}: the inner solver failed ({exc}); kept the best "
                "iterate. Lower the learning rate or bound θ.")
            break
        except Exception as exc:  # noqa: BLE001 — reported in the result, nothing is lost
            record.error = exc
            if _inner_loss_non_finite(problem, state):
                record.status, record.message = "diverged", (
                    f"diverged at step {step}: NaN/Inf in the inner loss at θ ({exc}); kept the "
                    "best iterate. Lower the learning rate or bound θ.")
            else:
                record.status = "failed"
                record.message = f"failed at step {step}: {type(exc).__name__}: {exc}"
            break
        except KeyboardInterrupt as exc:
            record.status, record.message = "interrupted", f"interrupted at step {step}"
            record.error = exc
            break
        row["time_s"] = time.perf_counter() - start
        record.history.append(row)
        if on_step is not None:
            hook_start = time.perf_counter()
            on_step(row, state)
            start += time.perf_counter() - hook_start  # the hook's time is not the method's
        bad = _non_finite(row, state)
        if bad:
            record.status = "diverged"
            record.message = (f"diverged at step {step}: NaN/Inf in {', '.join(bad)}; kept the "
                              "best iterate. Lower the learning rate or bound θ.")
            break
        if row["outer_value"] < record.best_value:
            record.best_value = row["outer_value"]
            record.best_theta, record.best_y = theta_before, state.y.detach().clone()
        if row.get("stalled", 0):
            record.status = "stalled"
            record.message = (f"no progress at step {step}: the line search found no decrease "
                              "(θ optimal to working precision, or an inexact hypergradient: "
                              "tighten the inner tol)")
            break
        if gtol > 0 and row.get("hypergrad_norm", math.inf) <= gtol:
            record.status = "converged"
            record.message = f"hypergradient norm ≤ {gtol:g} at step {step}"
            break
        if checkpoint is not None and every > 0 and len(record.history) % every == 0 \
                and len(record.history) < steps:
            record.elapsed_s = time.perf_counter() - start
            status, record.status = record.status, "running"
            save_checkpoint(checkpoint, state, record, tag=tag)
            record.status = status
    record.elapsed_s = time.perf_counter() - start
    # A step cut short by an exception may have left the state half-updated: then the last
    # periodic checkpoint stays the one to resume from.
    if checkpoint is not None and record.status in ("max_steps", "converged", "stalled"):
        save_checkpoint(checkpoint, state, record, tag=tag)


def _non_finite(row: dict[str, float], state: OuterState) -> list[str]:
    """Names of what is NaN/Inf after a step: θ, y, or a loss in the row."""
    bad = [k for k in LOSS_KEYS if k in row and not math.isfinite(row[k])]
    if not bool(torch.isfinite(state.theta.detach()).all()):
        bad.append("θ")
    if not bool(torch.isfinite(state.y.detach()).all()):
        bad.append("the inner solution y")
    return bad


def _inner_loss_non_finite(problem: BilevelProblem, state: OuterState) -> bool:
    """Whether the full inner loss ``g(y, θ, None)`` is NaN/Inf at the state (the usual cause of
    an inner solver's error after a too-long outer step); ``False`` when the problem has none."""
    if problem.inner_loss is None:
        return False
    try:
        with torch.no_grad():
            value = problem.inner_loss(state.y.detach(), state.theta.detach(), None)
        return not bool(torch.isfinite(value).all())
    except Exception:  # noqa: BLE001 — the diagnosis must not raise on its own
        return False
