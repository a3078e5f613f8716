"""Distributionally robust learning: min over the model, max over sample weights in the simplex.

Data: ``tasks.data.group_shift`` (a minority group, 10% by default, on which a spurious feature
flips sign), split train / test, features standardised on train.

Inner problem (the adversary; train split, n rows, per-sample logistic losses
``ℓ_i(θ) = log(1 + exp(−y_i (x_iᵀw + b)))``, ``θ = (w, b)``):
    ``q*(θ) = argmax_{q ∈ Δ_n} Σ_i q_i ℓ_i(θ) − (ρ/2)·n‖q − 1/n‖²``,
    a χ²-penalised reweighting (``n‖q − 1/n‖²`` is the χ² divergence of ``q`` from uniform;
    ``ρ → ∞`` gives ERM). Solved as ``min_q −qᵀℓ + (ρn/2)‖q − 1/n‖²`` by ``solvers.ProxGrad``
    with the simplex projection (``solvers.prox.simplex``) as prox; the solution is
    ``q* = Π_Δ(1/n + ℓ/(ρn))``. Mapping ``H(θ, q) = q − Π_Δ(q − η∇_q f)``: nonsmooth where a
    weight enters or leaves the support of ``q*``; the engine differentiates the projection
    (its Jacobian ``I − 11ᵀ/|S|`` on the support) and restricts the system to the support.
Outer problem (train split): ``min_θ Σ_i q*_i ℓ_i(θ) − (ρ/2)·n‖q* − 1/n‖² + (μ/2)‖w‖²``, the
    robust risk (by Danskin's theorem the implicit term vanishes at ``q*``, so the
    hypergradient is ``Σ_i q*_i ∇ℓ_i(θ) + μw``), from ``θ = 0``.
``level="group"`` (default) puts one weight per group (``q ∈ Δ_G``, group DRO: ``ℓ`` is the
vector of group-mean losses, ``n`` becomes ``G``); ``level="sample"`` one per training sample.
Measured (seed 0, 100 Adam steps, ρ = 1): group level, worst-group test accuracy 0.81 against
ERM's 0.64 (average 0.86 against 0.89); sample level, the adversary's weight on the minority
saturates near 0.2–0.38 (ρ from 1 to 0.003) and the worst group stays at ERM's accuracy.
Test metric: worst-group accuracy on the test split (higher is better).
Extra metrics: test average accuracy, and ERM's worst-group and average accuracy.
Baseline: ERM, sklearn ``LogisticRegression(C = 1/(μn))`` (the same model and ridge, uniform
    weights) on the train split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.nn.functional import softplus

from bilevel.outer import BilevelProblem
from solvers import ProxGrad, prox
from tasks import data
from tasks.base import Task, resolve_dtype, resolve_inner


def group_accuracies(correct: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Average and worst-group accuracy of the boolean ``correct`` over ``groups``."""
    per_group = [float(correct[groups == g].mean()) for g in np.unique(groups)]
    return {"average": float(correct.mean()), "worst_group": min(per_group)}


def build(
    n_samples: int = 4000,
    minority_fraction: float = 0.1,
    n_noise: int = 3,
    spurious_noise: float = 1.0,
    rho: float = 1.0,
    level: str = "group",
    ridge: float = 1e-3,
    test_fraction: float = 0.5,
    tol: float = 1e-10,
    inner: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
) -> Task:
    """Build the χ²-DRO task on the group-shift data.

    Args:
        n_samples, minority_fraction, n_noise, spurious_noise: the data
            (``tasks.data.group_shift``).
        rho: χ² penalty ``ρ`` (> 0; large: close to ERM, small: the worst samples dominate).
        level: ``"sample"`` (one weight per training sample, ``q ∈ Δ_n``) or ``"group"`` (one
            weight per group, ``q ∈ Δ_G``, sample ``i`` weighted ``q_{g_i}/n_{g_i}``: group
            DRO; ``ℓ`` is then the vector of group-mean losses and ``n`` becomes ``G``).
        ridge: ``μ``, the outer ℓ2 weight on ``w`` (≥ 0).
        test_fraction: fraction of rows held out for the test metrics (stratified by group).
        tol: inner ProxGrad tolerance (gradient-mapping norm).
        inner: the app's ``inner`` group (``tasks.base.resolve_inner``): solver
            proxgrad, tol, maxiter.
        seed: data and split seed.
        dtype, device: where the computation runs.

    Raises:
        ValueError: ``rho ≤ 0`` or ``ridge < 0``.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if level not in ("sample", "group"):
        raise ValueError(f"level must be 'sample' or 'group', got {level!r}")
    if ridge < 0:
        raise ValueError(f"ridge must be ≥ 0, got {ridge}")
    X, y, g = data.group_shift(n_samples, minority_fraction, n_noise, spurious_noise, seed)
    X_tr, X_te, y_tr, y_te, g_tr, g_te = train_test_split(
        X, y, g, test_size=test_fraction, random_state=seed, stratify=g
    )
    mean, std = X_tr.mean(0), X_tr.std(0)
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    tdtype = resolve_dtype(dtype)
    Xt, yt = (torch.as_tensor(a, dtype=tdtype, device=device) for a in (X_tr, y_tr))
    Xs = torch.as_tensor(X_te, dtype=tdtype, device=device)
    p = Xt.shape[1]
    # group-mean operator: (G, n) rows averaging each group's samples
    members = torch.as_tensor(np.stack([g_tr == k for k in np.unique(g_tr)]), dtype=tdtype,
                              device=device)
    averaging = members / members.sum(1, keepdim=True)
    n = Xt.shape[0] if level == "sample" else averaging.shape[0]

    def losses(theta: Tensor) -> Tensor:
        per_sample = softplus(-yt * (Xt @ theta[:-1] + theta[-1]))
        return per_sample if level == "sample" else averaging @ per_sample

    def adversary(q: Tensor, theta: Tensor) -> Tensor:  # minimised by the inner solver
        return -(q * losses(theta)).sum() + 0.5 * rho * n * ((q - 1.0 / n) ** 2).sum()

    def robust_risk(q: Tensor, theta: Tensor) -> Tensor:
        return -adversary(q, theta) + 0.5 * ridge * (theta[:-1] ** 2).sum()

    def test_accuracies(theta: Tensor) -> dict[str, float]:
        predicted = torch.sign(Xs @ theta[:-1] + theta[-1]).detach().cpu().numpy()
        return group_accuracies(predicted == y_te, g_te)

    def erm() -> dict[str, float]:
        C = 1.0 / (ridge * len(y_tr)) if ridge > 0 else 1e12
        model = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X_tr, y_tr)
        return group_accuracies(model.predict(X_te) == y_te, g_te)

    def extra_metrics(theta: Tensor, q: Tensor) -> dict[str, float]:
        ours, base = test_accuracies(theta), erm()
        return {"test_average_accuracy": ours["average"],
                "erm_worst_group_accuracy": base["worst_group"],
                "erm_average_accuracy": base["average"],
                "minority_weight": float(q[torch.as_tensor(g_tr == 1)].sum() if level == "sample"
                                         else q[-1])}

    how = resolve_inner(inner, "dro", ("proxgrad",), tol)
    solver = ProxGrad(adversary, lambda v, theta, step: prox.simplex(v), tol=how.tol,
                      **how.options)
    problem = BilevelProblem(
        inner=solver,
        outer=robust_risk,
        theta0=torch.zeros(p + 1, dtype=tdtype, device=device),
        y0=torch.full((n,), 1.0 / n, dtype=tdtype, device=device),
    )
    return Task(
        name="dro",
        problem=problem,
        test_metric_name="test_worst_group_accuracy",
        test_metric=lambda theta, q: test_accuracies(theta)["worst_group"],
        hyperparameters=lambda theta: {"rho": rho, "ridge": ridge,
                                       "norm_w": float(theta[:-1].norm())},
        baseline_name="ERM (sklearn LogisticRegression, same ridge, uniform weights)",
        baseline=lambda: (erm()["worst_group"], {"ridge": ridge}),
        extra_metrics=extra_metrics,
    )
