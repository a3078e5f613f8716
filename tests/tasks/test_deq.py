"""The DEQ digits task: the layer returns a fixed point of the cell, and the trained DEQ
classifier is close to the explicit MLP of the same width."""

from __future__ import annotations

import pytest
import torch

from tasks import deq
from tasks.network import NetworkTask


def test_forward_is_a_fixed_point_of_the_cell():
    task_model = deq.DEQClassifier(width=16, contraction=0.9, tol=1e-10, maxiter=200).double()
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = task_model.deq(x)
    cell = task_model.deq.f
    assert float((z - cell(z, x)).detach().abs().max()) <= 1e-9
    # γ-contraction in z, whatever W is
    with torch.no_grad():
        cell.W.weight.mul_(100.0)
        z1, z2 = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
        ratio = (cell(z1, x) - cell(z2, x)).norm(dim=-1) / (z1 - z2).norm(dim=-1)
    assert float(ratio.max()) <= 0.9


@pytest.mark.slow  # minutes on the shared 2-core machine: trains two networks
def test_trains_and_is_close_to_the_explicit_mlp():
    task = deq.build(width=32, epochs=3, lr=3e-3, seed=0)
    assert isinstance(task, NetworkTask) and task.name == "deq"
    rows = task.fit(None)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    accuracy = task.test_metric()
    baseline, _ = task.baseline()
    assert accuracy >= 0.85 and baseline >= 0.85  # chance is 0.1
    assert accuracy >= baseline - 0.05
    assert task.hyperparameters()["forward_iterations"] >= 1
