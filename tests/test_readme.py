"""The README's code runs as written, and its quick start gives the closed-form hypergradient."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_matches_closed_form():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    X, y, Xv, yv, w = (namespace[k] for k in ("X", "y", "Xv", "yv", "w"))
    lam = float(namespace["log_lam"].detach().exp())
    w = w.detach()
    S = w.abs() > 0
    dw = -torch.linalg.solve(X[:, S].T @ X[:, S] / X.shape[0], torch.sign(w[S]))
    ref = lam * float((Xv.T @ (Xv @ w - yv) / Xv.shape[0])[S] @ dw)
    assert abs(float(namespace["log_lam"].grad) - ref) <= 1e-8 * abs(ref)
    for block in blocks[1:]:  # the later examples run in the quick start's namespace
        exec(compile(block, "README example", "exec"), namespace)
    assert namespace["adjoint"].report.linear_solver == "cg"
    assert torch.allclose(namespace["w"], w, atol=1e-8)  # the working-set solver agrees
