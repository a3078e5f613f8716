"""The ``bilevel`` command: a Hydra app composing a task, an outer method and a run directory.

``bilevel task=lasso outer=implicit outer.lr=0.05`` builds the task (``conf/task/*.yaml``,
a ``_target_`` building a :class:`tasks.base.Task`), the outer method (``conf/outer/*.yaml``),
runs :func:`bilevel.outer.run_outer`, and writes into the Hydra run directory:

- ``metrics.csv``: one row per outer step;
- ``result.json``: task, outer, outer_value, test_metric(_name), baseline(_metric),
  hyperparameters (all of the best iterate), wall_time_s, n_outer_steps, status, message
  (and the traceback when a step raised);
- ``convergence.png``: outer value and test metric (every ``test_every`` steps) vs wall time;
- ``checkpoint.pt`` (and ``checkpoint.pt.prev``): the outer state every ``checkpoint_every``
  steps; ``bilevel hydra.run.dir=D resume=true`` continues a killed run started with
  ``hydra.run.dir=D`` and ends where the uninterrupted run would.

Network tasks (``task=qp_layer``, ``task=deq``: a :class:`tasks.network.NetworkTask`) train the
network end to end instead (one row per epoch) and report the same files.

The top-level keys are typed by :class:`bilevel.schema.RunConfig` (registered as
``base_config`` when the config package ``bilevel.conf`` is imported): a misspelled key or a
value of the wrong type is an error naming it.

Exit status: 0 (max_steps, converged), 2 (diverged: NaN/Inf in θ or a loss, message naming the
step), 3 (a step raised), 130 (interrupted by Ctrl-C or SIGTERM); the files are written in
every case.

This module is the composition root: it is the one module of ``bilevel`` that imports
``tasks``, and nothing imports it (``import bilevel`` stays free of Hydra).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bilevel.errors import MissingMinibatchLosses
from bilevel.outer.base import OuterResult, OuterState, run_outer
from bilevel.plots import convergence_plot
from bilevel.report import text_table
from tasks.base import Task
from tasks.network import NetworkTask

CHECKPOINT = "checkpoint.pt"  # in the run directory
EXIT_CODES = {"diverged": 2, "failed": 3, "interrupted": 130}  # 0 for max_steps / converged
# The configuration that decides a trajectory: a checkpoint only resumes the run that wrote it
# (``steps`` may grow, ``resume`` / ``checkpoint_every`` may change).
TRAJECTORY_KEYS = ("task", "inner", "outer", "seed", "dtype", "device", "gtol")


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run one configured job and write its files into ``out_dir``; returns the result.

    Every ``cfg.checkpoint_every`` steps the outer state is saved to ``out_dir/checkpoint.pt``;
    with ``cfg.resume`` the run continues from there (a killed run resumes bit-identically).
    ``metrics.csv`` and ``result.json`` (with the best iterate) are written whatever the
    status: max_steps, converged, diverged, failed or interrupted.
    """
    _check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    task = instantiate(cfg.task, seed=cfg.seed, dtype=cfg.dtype, device=cfg.device,
                       inner=OmegaConf.to_container(cfg.inner))
    if isinstance(task, NetworkTask):
        return run_network(cfg, task, out_dir, start)
    method = instantiate(cfg.outer)
    bar = tqdm(total=cfg.steps, desc=f"{task.name} · {method.name}", unit="step",
               disable=None if cfg.progress else True, leave=False)

    def on_step(row: dict[str, Any], state: OuterState) -> None:
        if cfg.test_every and row["step"] % cfg.test_every == 0:
            theta = torch.as_tensor([row[k] for k in row if k.startswith("theta_")],
                                    dtype=state.theta.dtype, device=state.theta.device)
            row["test_metric"] = task.test_metric(theta.reshape(state.theta.shape), state.y)
        bar.update(1)
        bar.set_postfix(outer=f"{row['outer_value']:.4g}")

    try:
        result = run_outer(
            method, task.problem, cfg.steps, gtol=cfg.gtol, on_step=on_step,
            checkpoint=out_dir / CHECKPOINT, checkpoint_every=cfg.checkpoint_every,
            resume=cfg.resume, checkpoint_tag=trajectory_tag(cfg),
        )
    except MissingMinibatchLosses as err:
        if task.minibatch_hint is None:
            raise
        raise MissingMinibatchLosses(f"{err}. task={task.name} has them with "
                                     f"{task.minibatch_hint}") from err
    finally:
        bar.close()
    wall = time.perf_counter() - start
    _write_csv(out_dir / "metrics.csv", result.history)
    summary = summarize(cfg, task, method.name, result, wall)
    _write_json(out_dir / "result.json", summary)
    _plot(out_dir, result.history, summary)
    return summary


def run_network(cfg: DictConfig, task: NetworkTask, out_dir: Path, start: float
                ) -> dict[str, Any]:
    """Train a network task end to end (its yaml sets the epochs); same files as :func:`run`."""
    history: list[dict[str, Any]] = []
    with tqdm(desc=task.name, unit="epoch", disable=None if cfg.progress else True,
              leave=False) as bar:
        def on_epoch(row: dict[str, Any]) -> None:
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4g}")

        task.fit(on_epoch)
    test_metric = task.test_metric()
    wall = time.perf_counter() - start
    rows = [{"outer_value": r["train_loss"], **r} for r in history]
    elapsed = 0.0
    for row in rows:  # epochs' own times, cumulated
        elapsed += float(row["time_s"])
        row["time_s"] = elapsed
    baseline_metric, baseline_hyper = task.baseline()
    summary = {
        "task": task.name,
        "outer": "end-to-end training (Adam)",
        "outer_value": rows[-1]["train_loss"] if rows else float("nan"),
        "test_metric": test_metric,
        "test_metric_name": task.test_metric_name,
        "baseline": task.baseline_name,
        "baseline_metric": baseline_metric,
        "baseline_hyperparameters": baseline_hyper,
        "hyperparameters": task.hyperparameters(),
        "wall_time_s": wall,
        "n_outer_steps": len(rows),
        "status": "max_steps",
        "message": f"trained {len(rows)} epochs",
        "seed": cfg.seed,
    }
    _write_csv(out_dir / "metrics.csv", rows)
    _write_json(out_dir / "result.json", summary)
    _plot(out_dir, rows, summary)
    return summary


def _plot(out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    if rows:
        convergence_plot({summary["task"]: rows}, out_dir / "convergence.png",
                         title=f"{summary['task']} · {summary['outer']}",
                         metric_name=summary["test_metric_name"])


def trajectory_tag(cfg: DictConfig) -> str:
    """The part of the configuration a resumed run must share with the one that wrote the
    checkpoint, as YAML."""
    return OmegaConf.to_yaml({k: cfg[k] for k in TRAJECTORY_KEYS}, resolve=True)


def summarize(cfg: DictConfig, task: Task, method_name: str, result: OuterResult,
              wall: float) -> dict[str, Any]:
    """The ``result.json`` record: the best iterate's metrics beside the task's baseline."""
    baseline_metric, baseline_hyper = task.baseline()
    return {
        "task": task.name,
        "outer": method_name,
        "outer_value": result.best_value,
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
        **({"extra_metrics": task.extra_metrics(result.theta, result.y)}
           if task.extra_metrics is not None else {}),
        **({"traceback": "".join(traceback.format_exception(result.error))}
           if result.status == "failed" and result.error is not None else {}),
    }


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
    """The final comparison, as a small table: ours beside the task's stated baseline."""
    def fmt(values: dict[str, Any], shown: int = 6) -> str:
        items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in values.items()]
        more = f", … ({len(items)} in result.json)" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    name = s["test_metric_name"]
    table = text_table([
        ["", name, "hyperparameters"],
        [f"ours ({s['outer']})", f"{s['test_metric']:.6g}", fmt(s["hyperparameters"])],
        [f"baseline ({s['baseline']})", f"{s['baseline_metric']:.6g}",
         fmt(s["baseline_hyperparameters"])],
    ], indent="  ")
    extra = f"\n  {fmt(s['extra_metrics'])}" if s.get("extra_metrics") else ""
    print(
        f"{s['task']} · {s['outer']} · {s['n_outer_steps']} steps · {s['wall_time_s']:.2f} s · "
        f"{s['status']}\n{table}{extra}\n"
        f"  written: {out_dir / 'result.json'}, metrics.csv, convergence.png"
    )


@hydra.main(version_base="1.3", config_path="pkg://bilevel.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """One run; returns the best outer value (what a Hydra sweeper such as Optuna minimises)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    # SIGTERM (a scheduler's kill) ends the loop like Ctrl-C: the files are still written.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    summary = run(cfg, out_dir)
    _print_summary(summary, out_dir)
    status = summary["status"]
    if status in EXIT_CODES:
        if "traceback" in summary:
            print(summary["traceback"], file=sys.stderr, end="")
        hint = " Resume with resume=true and the same hydra.run.dir." \
            if status == "interrupted" else ""
        print(f"run {status}: {summary['message']}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_CODES[status])
    return float(summary["outer_value"])


def _check_device(device: str) -> None:
    """A device this torch build and machine can use, else a ``ValueError`` saying which."""
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a torch device (cpu, cuda, cuda:1, ...): "
                         f"{err}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here (torch "
                         f"{torch.__version__}, built for CUDA {torch.version.cuda}): run with "
                         "device=cpu, or install a CUDA build of torch on a GPU machine")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point of ``bilevel``."""
    app()
