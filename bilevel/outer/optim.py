"""The ``torch.optim`` optimizer on θ of the hypergradient-descent methods (implicit, unrolled).

The optimizer lives in ``state.extra["optimizer"]`` (saved through its ``state_dict``); its
step size follows a :class:`~bilevel.outer.schedules.StepSize` of the step counter, set before
every update, so that no scheduler object needs saving. :func:`bind` keeps the optimizer
attached to ``state.theta`` even when a restore replaced the tensor object.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bilevel.outer.schedules import StepSize

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")


def make_optimizer(name: str, theta: Tensor, lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name]([theta], lr=lr)


def bind(opt: torch.optim.Optimizer, theta: Tensor) -> None:
    """Make ``theta`` the optimizer's parameter, carrying over its per-parameter state (Adam's
    moments) when a checkpoint restore assigned a new tensor to ``state.theta``."""
    group = opt.param_groups[0]
    old = group["params"][0]
    if old is theta:
        return
    group["params"] = [theta]
    if old in opt.state:
        opt.state[theta] = opt.state.pop(old)


def set_lr(opt: torch.optim.Optimizer, schedule: StepSize, step: int) -> float:
    lr = schedule(step)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr
