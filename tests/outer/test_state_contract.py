"""The checkpoint contract of every outer method: everything needed to continue lives in the
OuterState (θ, y, step, extra), so that saving it after k steps (torch.save of tensors,
generator states and state_dicts), loading it into the state of a fresh ``method.init`` and
continuing gives the uninterrupted trajectory bit for bit. Nothing mutable lives on the
method object: the same object can drive two runs."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from bilevel.outer import SABA, SOBA, TTSA, AmIGO, ImplicitGD, OuterState, StocBiO, Unrolled
from tests.outer.quadratic import quadratic

METHODS = {
    "implicit_adam_minibatch": lambda: ImplicitGD(optimizer="adam", lr=0.1, batch_size=32,
                                                  seed=3),
    "soba": lambda: SOBA(seed=3, batch_size=16, curvature_every=2),
    "saba": lambda: SABA(seed=3, batch_size=16, sampling="replacement"),
    "amigo": lambda: AmIGO(seed=3, inner_steps=2, linear_steps=2, outer_decay=0.75),
    "stocbio": lambda: StocBiO(seed=3, inner_steps=2, neumann_terms=3),
    "ttsa": lambda: TTSA(seed=3),
    "unrolled_truncated_minibatch": lambda: Unrolled(seed=3, steps=6, truncate=2,
                                                     batch_size=32, outer_batch_size=32),
}


def pack(value: Any) -> Any:
    if isinstance(value, torch.Generator):
        return {"generator": value.get_state()}
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if hasattr(value, "state_dict"):
        return {"state_dict": value.state_dict()}
    assert isinstance(value, (int, float)), f"unexpected state.extra value {type(value)}"
    return value


def unpack_into(fresh: Any, saved: Any) -> Any:
    if isinstance(fresh, torch.Generator):
        fresh.set_state(saved["generator"])
        return fresh
    if isinstance(fresh, torch.Tensor):
        with torch.no_grad():
            fresh.copy_(saved)
        return fresh
    if hasattr(fresh, "load_state_dict"):
        fresh.load_state_dict(saved["state_dict"])
        return fresh
    return saved


def save(state: OuterState) -> bytes:
    buffer = io.BytesIO()
    torch.save({"theta": state.theta.detach().clone(), "y": state.y.clone(), "step": state.step,
                "extra": {k: pack(v) for k, v in state.extra.items()}}, buffer)
    return buffer.getvalue()


def load(state: OuterState, blob: bytes) -> None:
    saved = torch.load(io.BytesIO(blob), weights_only=True)
    with torch.no_grad():
        state.theta.copy_(saved["theta"])
    state.y, state.step = saved["y"], saved["step"]
    assert set(saved["extra"]) == set(state.extra)
    for key, value in saved["extra"].items():
        state.extra[key] = unpack_into(state.extra[key], value)


def trajectory(method, problem, state, steps):
    return [method.step(problem, state) for _ in range(steps)]


@pytest.mark.parametrize("name", METHODS)
def test_resume_from_saved_state_is_bit_identical(name):
    problem = quadratic(n_inner=64, n_outer=64).problem
    method = METHODS[name]()
    state = method.init(problem)
    first = trajectory(method, problem, state, 4)
    blob = save(state)
    rest = trajectory(method, problem, state, 5)

    resumed = method.init(problem)  # the same method object: it holds nothing mutable
    load(resumed, blob)
    again = trajectory(method, problem, resumed, 5)
    assert again == rest
    assert torch.equal(resumed.theta.detach(), state.theta.detach())
    assert torch.equal(resumed.y, state.y)

    fresh = METHODS[name]()
    uninterrupted = fresh.init(problem)
    assert trajectory(fresh, problem, uninterrupted, 9) == first + rest


def test_seeds_change_the_trajectory_and_state_is_not_shared():
    problem = quadratic(n_inner=64, n_outer=64).problem
    a, b = SOBA(seed=0), SOBA(seed=1)
    sa, sb = a.init(problem), b.init(problem)
    assert trajectory(a, problem, sa, 3) != trajectory(b, problem, sb, 3)
    s2 = a.init(problem)
    assert trajectory(a, problem, s2, 3)[0]["theta_0"] == 0.0  # a fresh state starts afresh
