"""The ``bilevel`` command: a Hydra app composing a task, an outer method and a run directory.

``bilevel task=lasso outer=implicit outer.lr=0.05`` builds the task (``conf/task/*.yaml``,
a ``_target_`` building a :class:`tasks.base.Task`), the outer method (``conf/outer/*.yaml``),
runs :func:`bilevel.outer.run_outer`, and writes into the Hydra run directory:

- ``metrics.csv``: one row per outer step;
- ``result.json``: task, outer, outer_value, test_metric(_name), baseline(_metric),
  hyperparameters, wall_time_s, n_outer_steps, status, message.

This module is the composition root: it is the one module of ``bilevel`` that imports
``tasks``, and nothing imports it (``import bilevel`` stays free of Hydra).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from bilevel.outer import run_outer


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run one configured job and write its files into ``out_dir``; returns the result."""
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    task = instantiate(cfg.task, seed=cfg.seed, dtype=cfg.dtype, device=cfg.device)
    method = instantiate(cfg.outer)
    result = run_outer(method, task.problem, cfg.steps, gtol=cfg.gtol)
    wall = time.perf_counter() - start
    baseline_metric, baseline_hyper = task.baseline()
    summary = {
        "task": task.name,
        "outer": method.name,
        "outer_value": min((r["outer_value"] for r in result.history), default=float("nan")),
        "test_metric": task.test_metric(result.theta, result.y),
        "test_metric_name": task.test_metric_name,
        "baseline": task.baseline_name,
        "baseline_metric": baseline_metric,
        "baseline_hyperparameters": baseline_hyper,
        "hyperparameters": task.hyperparameters(result.theta),
        "wall_time_s": wall,
        "n_outer_steps": len(result.history),
        "status": result.status,
        "message": result.message,
        "seed": cfg.seed,
    }
    _write_csv(out_dir / "metrics.csv", result.history)
    _write_json(out_dir / "result.json", summary)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _print_summary(s: dict[str, Any], out_dir: Path) -> None:
    hyper = ", ".join(f"{k}={v:.4g}" for k, v in s["hyperparameters"].items())
    base = ", ".join(f"{k}={v:.4g}" for k, v in s["baseline_hyperparameters"].items())
    print(
        f"{s['task']} · {s['outer']} · {s['n_outer_steps']} steps · {s['wall_time_s']:.2f} s · "
        f"{s['status']}\n"
        f"  {s['test_metric_name']} {s['test_metric']:.6g} ({hyper})\n"
        f"  baseline {s['baseline']}: {s['baseline_metric']:.6g} ({base})\n"
        f"  written: {out_dir / 'result.json'}, {out_dir / 'metrics.csv'}"
    )


@hydra.main(version_base="1.3", config_path="pkg://bilevel.conf", config_name="config")
def app(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(cfg, out_dir)
    _print_summary(summary, out_dir)
    if summary["status"] == "diverged":
        raise SystemExit(f"run diverged: {summary['message']}")


def main() -> None:
    """Console-script entry point of ``bilevel``."""
    app()
