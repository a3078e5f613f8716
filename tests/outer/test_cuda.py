"""Device-agnostic outer methods: every method, a few steps on the GPU, agrees with the same
steps on the CPU in float64 (minibatch indices come from CPU generators, so both devices see
the same samples). Skipped without CUDA; run it whenever a GPU machine is available."""

from __future__ import annotations

import pytest
import torch

from bilevel.outer import SABA, SOBA, TTSA, AmIGO, ImplicitGD, StocBiO, Unrolled
from tests.outer.quadratic import quadratic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

METHODS = {
    "implicit": lambda: ImplicitGD(optimizer="sgd", lr=0.5, batch_size=32, seed=1),
    "soba": lambda: SOBA(seed=1),
    "saba": lambda: SABA(seed=1, batch_size=16),
    "amigo": lambda: AmIGO(seed=1, inner_steps=2, linear_steps=2),
    "stocbio": lambda: StocBiO(seed=1, inner_steps=2, neumann_terms=3),
    "ttsa": lambda: TTSA(seed=1),
    "unrolled": lambda: Unrolled(seed=1, steps=5, truncate=3, batch_size=32),
}


@pytest.mark.parametrize("name", METHODS)
def test_gpu_trajectory_matches_cpu(name):
    results = {}
    for device in ("cpu", "cuda"):
        problem = quadratic(n_inner=64, n_outer=64, device=device).problem
        method = METHODS[name]()
        state = method.init(problem)
        for _ in range(4):
            method.step(problem, state)
        assert state.theta.device.type == device and state.y.device.type == device
        for value in state.extra.values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.device.type == device
        results[device] = (state.theta.detach().cpu(), state.y.cpu())
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-10, atol=1e-12)
