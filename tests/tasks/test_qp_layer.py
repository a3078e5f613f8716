"""The QP-head digits task: the head is the exact simplex projection, and the trained network
matches the same network without the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks import qp_layer
from tasks.network import NetworkTask


def sparsemax_reference(scores: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by sorting (Held, Wolfe & Crowder 1974), independent of any
    QP solver: ``p = max(s − τ, 0)`` with the threshold ``τ`` from the sorted scores."""
    out = np.empty_like(scores)
    for i, s in enumerate(scores):
        u = np.sort(s)[::-1]
        css = np.cumsum(u) - 1.0
        k = np.nonzero(u - css / np.arange(1, len(u) + 1) > 0)[0][-1]
        out[i] = np.maximum(s - css[k] / (k + 1), 0.0)
    return out


def test_head_is_the_simplex_projection_and_its_jacobian():
    scores = torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    head = qp_layer.SimplexProjection(10)
    s = scores.clone().requires_grad_(True)
    p = head(s)
    np.testing.assert_allclose(p.detach().numpy(), sparsemax_reference(scores.numpy()),
                               atol=1e-10)
    # Jacobian of sparsemax on its support S: I − 1 1ᵀ/|S| (zero outside S)
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (p * w).sum().backward()
    support = p.detach() > 1e-9
    expected = torch.zeros_like(w)
    for i in range(6):
        S = support[i]
        expected[i, S] = w[i, S] - w[i, S].mean()
    torch.testing.assert_close(s.grad, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.slow  # minutes on the shared 2-core machine: trains two networks
def test_trains_and_matches_the_network_without_the_layer():
    task = qp_layer.build(width=32, epochs=4, seed=0)
    assert isinstance(task, NetworkTask) and task.name == "qp_layer"
    rows = []
    returned = task.fit(rows.append)
    assert returned == rows and [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"step", "train_loss", "time_s"} <= set(r) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    accuracy = task.test_metric()
    baseline, _ = task.baseline()
    assert task.test_metric_name == "test_accuracy"
    assert accuracy >= 0.9 and baseline >= 0.9  # chance is 0.1
    assert accuracy >= baseline - 0.03
    support = task.hyperparameters()["mean_support_size"]
    assert 1.0 <= support < 10.0  # sparse probability vectors


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        qp_layer.build(dtype="float16")
    with pytest.raises(ValueError, match="test_fraction"):
        qp_layer.build(test_fraction=1.5)
