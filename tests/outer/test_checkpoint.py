"""Checkpoints of outer runs: atomic writes, fallback on a corrupt latest file, and resuming
that continues the exact trajectory of an uninterrupted run (bit for bit)."""

from __future__ import annotations

import importlib
import math
import random

import numpy as np
import pytest
import torch

from bilevel.outer import BilevelProblem, run_outer
from bilevel.outer.checkpoint import (
    MAGIC,
    CheckpointError,
    CheckpointWarning,
    RunRecord,
    load_checkpoint,
    previous_path,
    restore_state,
    save_checkpoint,
)
from bilevel.outer.implicit import ImplicitGD
from bilevel.outer.lbfgsb import BoundedLBFGS
from solvers.smooth import Smooth

F64 = torch.float64


def ridge_problem(n: int = 128, p: int = 5, seed: int = 0) -> BilevelProblem:
    """Per-feature ridge: ``y*(θ) = argmin_y (1/2n)‖X y − b‖² + ½ Σ e^{θ_j} y_j²``, outer loss
    the validation MSE; with the minibatch losses the stochastic methods use."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=gen, dtype=F64)
    Xv = torch.randn(n, p, generator=gen, dtype=F64)
    w = torch.randn(p, generator=gen, dtype=F64)
    b = X @ w + 0.5 * torch.randn(n, generator=gen, dtype=F64)
    bv = Xv @ w + 0.5 * torch.randn(n, generator=gen, dtype=F64)

    def inner_loss(y, theta, idx=None):
        Xi, bi = (X, b) if idx is None else (X[idx], b[idx])
        return 0.5 * ((Xi @ y - bi) ** 2).mean() + 0.5 * (theta.exp() * y * y).sum()

    def outer_loss(y, theta, idx=None):
        Xi, bi = (Xv, bv) if idx is None else (Xv[idx], bv[idx])
        return 0.5 * ((Xi @ y - bi) ** 2).mean()

    return BilevelProblem(
        inner=Smooth(lambda y, t: inner_loss(y, t), tol=1e-12),
        outer=lambda y, t: outer_loss(y, t),
        theta0=torch.zeros(p, dtype=F64), y0=torch.zeros(p, dtype=F64), bounds=(-8.0, 4.0),
        inner_loss=inner_loss, outer_loss=outer_loss, n_inner=n, n_outer=n,
    )


def stochastic_methods() -> list:
    """Every stochastic outer method committed so far, with its defaults (bounded steps)."""
    found = []
    for module, cls in [("soba", "SOBA"), ("saba", "SABA"), ("amigo", "AmIGO"),
                        ("stocbio", "StocBiO"), ("ttsa", "TTSA"), ("unrolled", "Unrolled")]:
        try:
            found.append(getattr(importlib.import_module(f"bilevel.outer.{module}"), cls))
        except (ImportError, AttributeError):
            continue
    return found


def methods() -> list:
    return [lambda: ImplicitGD(optimizer="adam", lr=0.1), BoundedLBFGS] + [
        (lambda c=c: c()) for c in stochastic_methods()
    ]


def theta_trajectory(result) -> torch.Tensor:
    return torch.tensor([[row[k] for k in sorted(row) if k.startswith("theta_")]
                         for row in result.history])


def draw_global_rngs() -> tuple:
    # the global RNG states are what is under test
    return (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002


# -- the file format ---------------------------------------------------------------------------

def test_save_is_atomic_and_keeps_the_previous_checkpoint(tmp_path):
    problem = ridge_problem()
    method = ImplicitGD()
    state = method.init(problem)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state, RunRecord(history=[{"outer_value": 1.0}]))
    first = path.read_bytes()
    method.step(problem, state)
    save_checkpoint(path, state, RunRecord(history=[{"outer_value": 1.0}, {"outer_value": 0.5}]))
    assert previous_path(path).read_bytes() == first  # the former latest became .prev
    assert path.read_bytes().startswith(MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.prev"]  # no .tmp
    assert load_checkpoint(path)["step"] == 1
    assert load_checkpoint(previous_path(path))["step"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete"])
def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path, damage):
    problem = ridge_problem()
    method = ImplicitGD()
    state = method.init(problem)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state, RunRecord())
    method.step(problem, state)
    save_checkpoint(path, state, RunRecord())
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip_byte":
        path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    else:
        path.unlink()
    with pytest.warns(CheckpointWarning, match="previous one at step 0"):
        payload = load_checkpoint(path)
    assert payload["step"] == 0


def test_no_usable_checkpoint_is_an_error_naming_the_fix(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="resume=False"):
        load_checkpoint(path)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    problem = ridge_problem()
    path = tmp_path / "ckpt.pt"
    run_outer(ImplicitGD(), problem, 3, checkpoint=path, checkpoint_tag="lr=0.1")
    with pytest.raises(CheckpointError, match="different run configuration"):
        restore_state(ImplicitGD().init(problem), load_checkpoint(path), tag="lr=0.2")


def test_restore_sets_extra_values_generators_and_global_rngs(tmp_path):
    problem = ridge_problem()
    method = ImplicitGD()
    state = method.init(problem)
    gen = torch.Generator().manual_seed(5)
    state.extra.update(generator=gen, count=7, nested={"v": torch.arange(3.0), "lr": [0.5]})
    torch.manual_seed(1), np.random.seed(1), random.seed(1)  # noqa: NPY002 — the global state is under test
    save_checkpoint(tmp_path / "c.pt", state, RunRecord())
    expected_gen, expected_global = torch.rand(4, generator=gen), draw_global_rngs()

    fresh = method.init(problem)
    fresh.extra.update(generator=torch.Generator().manual_seed(0), count=0,
                       nested={"v": torch.zeros(3), "lr": [0.0]})
    torch.manual_seed(2), np.random.seed(2), random.seed(2)  # noqa: NPY002 — the global state is under test
    restore_state(fresh, load_checkpoint(tmp_path / "c.pt"))
    assert torch.equal(torch.rand(4, generator=fresh.extra["generator"]), expected_gen)
    got = draw_global_rngs()
    assert torch.equal(got[0], expected_global[0])
    assert np.array_equal(got[1], expected_global[1]) and got[2] == expected_global[2]
    assert fresh.extra["count"] == 7 and fresh.extra["nested"]["lr"] == [0.5]
    assert torch.equal(fresh.extra["nested"]["v"], torch.arange(3.0))


def test_unsaveable_extra_value_is_an_error_naming_the_type(tmp_path):
    problem = ridge_problem()
    state = ImplicitGD().init(problem)
    state.extra["callback"] = lambda: None
    with pytest.raises(TypeError, match="function"):
        save_checkpoint(tmp_path / "c.pt", state, RunRecord())


# -- resuming continues the same trajectory ----------------------------------------------------

@pytest.mark.parametrize("make_method", methods(), ids=lambda m: m().name)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, make_method):
    problem = ridge_problem()
    steps, cut = 12, 5
    torch.manual_seed(0)
    full = run_outer(make_method(), problem, steps, checkpoint=tmp_path / "full.pt",
                     checkpoint_every=5)

    torch.manual_seed(0)
    path = tmp_path / "cut.pt"
    first = run_outer(make_method(), problem, cut, checkpoint=path, checkpoint_every=5)
    assert first.status == "max_steps" and load_checkpoint(path)["step"] == cut
    torch.manual_seed(123)  # resuming restores the global RNG, whatever it is now
    resumed = run_outer(make_method(), problem, steps, checkpoint=path, checkpoint_every=5,
                        resume=True)

    assert len(resumed.history) == steps
    assert torch.equal(theta_trajectory(resumed), theta_trajectory(full))
    assert [r["outer_value"] for r in resumed.history] == [r["outer_value"] for r in full.history]
    assert torch.equal(resumed.theta, full.theta) and torch.equal(resumed.y, full.y)
    final_state = load_checkpoint(path)
    assert torch.equal(final_state["theta"], load_checkpoint(tmp_path / "full.pt")["theta"])


def test_resume_of_a_finished_run_returns_its_result_without_stepping(tmp_path):
    problem = ridge_problem()
    path = tmp_path / "c.pt"
    done = run_outer(ImplicitGD(), problem, 4, checkpoint=path)
    again = run_outer(ImplicitGD(), problem, 4, checkpoint=path, resume=True)
    assert again.status == done.status and len(again.history) == 4
    assert torch.equal(again.theta, done.theta)


def test_resume_without_a_checkpoint_warns_and_starts_at_step_zero(tmp_path):
    with pytest.warns(CheckpointWarning, match="starting at step 0"):
        result = run_outer(ImplicitGD(), ridge_problem(), 2, checkpoint=tmp_path / "c.pt",
                           resume=True)
    assert [r["step"] for r in result.history] == [0, 1]


# -- divergence --------------------------------------------------------------------------------

def test_divergence_in_the_inner_loss_stops_naming_the_step_and_keeps_the_best_iterate():
    problem = ridge_problem()
    problem.bounds = None
    # e^θ overflows after the first step: the inner solve of step 1 raises
    result = run_outer(ImplicitGD(optimizer="sgd", lr=1e6), problem, 50)
    assert result.status == "diverged"
    assert "diverged at step 1: NaN/Inf in the inner loss" in result.message
    assert len(result.history) == 1 and result.best_value == result.history[0]["outer_value"]
    assert torch.equal(result.theta, problem.theta0) and torch.isfinite(result.y).all()


def test_nan_outer_value_stops_naming_the_step_and_keeps_the_best_iterate():
    problem = ridge_problem()
    validation_loss = problem.outer
    problem.outer = lambda y, t: torch.where(t.abs().max() > 0.15, torch.nan,
                                             validation_loss(y, t))
    result = run_outer(ImplicitGD(optimizer="adam", lr=0.1), problem, 50)  # |Δθ| ≈ 0.1 a step
    assert result.status == "diverged"
    assert result.message.startswith("diverged at step 2: NaN/Inf in outer_value")
    values = [r["outer_value"] for r in result.history]
    assert len(values) == 3 and math.isnan(values[2])
    best = int(np.argmin(values[:2]))
    assert result.best_value == values[best]
    assert result.theta.tolist() == [result.history[best][f"theta_{i}"] for i in range(5)]
