"""The typed top level of the ``bilevel`` configuration, for Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``base_config``: this dataclass, registered
under that name when the config package ``bilevel.conf`` is imported (by the app or by Hydra's
compose API), so a misspelled top-level key or a value of the wrong type is an error naming it.
Imports Hydra: only the app and the config package import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class InnerConfig:
    """How the task's inner problem is solved (``conf/inner/*.yaml``).

    Attributes:
        solver: an algorithm the task offers (``tasks.base.resolve_inner`` lists them per task),
            or ``auto``: the task's default.
        tol: the inner tolerance (null: the task's ``tol``).
        maxiter: the inner solver's iteration cap (null: its default).
    """

    solver: str = "auto"
    tol: Optional[float] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    maxiter: Optional[int] = None  # noqa: UP045


@dataclass
class RunConfig:
    """The typed top level of the ``bilevel`` configuration (``conf/config.yaml``).

    Attributes:
        task, outer: the selected ``conf/task/*.yaml`` and ``conf/outer/*.yaml`` entries.
        inner: the selected ``conf/inner/*.yaml`` entry, typed by :class:`InnerConfig`.
        seed, device, dtype: where and how every tensor is made.
        steps: outer steps (network tasks train for their yaml's ``epochs`` instead).
        gtol: stop when the hypergradient norm falls below it (0: never).
        checkpoint_every, resume: checkpoints in the run directory, and resuming from them.
        test_every: evaluate the test metric every this many steps for the plot (0: never).
        progress: show a progress bar on a terminal.
    """

    task: Any = MISSING
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: Any = MISSING
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    steps: int = 100
    gtol: float = 1e-8
    checkpoint_every: int = 10
    resume: bool = False
    test_every: int = 5
    progress: bool = True


def register() -> None:
    """Store :class:`RunConfig` as ``base_config`` (idempotent)."""
    ConfigStore.instance().store(name="base_config", node=RunConfig)
