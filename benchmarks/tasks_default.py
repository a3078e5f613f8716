"""Every task on its default configuration through the ``bilevel`` command, beside its baseline.

For each task of ``conf/task/`` (or ``--tasks``), runs ``python -m bilevel task=<task>
hydra.run.dir=<--out-dir>/<task> progress=false`` (plus the overrides of ``OVERRIDES`` and
``--set``) in a subprocess, one after the other, and reads the run's ``result.json``: the test
metric of the best iterate, the task's baseline on the same split (fitted by the command after
the run, not counted in the wall time), the wall time of the outer loop, the status and the
task's extra figures. A task whose command fails is reported with its exit status.

Run:  flock /tmp/bilevel-bench.lock .venv/bin/python benchmarks/tasks_default.py
      [--tasks lasso,deq --set steps=30 --json outputs/bench/tasks_default.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import write_results  # benchmarks/common.py

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("lasso", "weighted_lasso", "elastic_net", "logreg_l2", "sparse_logreg",
         "multinomial_l2", "datacleaning", "dro", "qp_layer", "deq")
OVERRIDES = {"deq": ["dtype=float32"]}  # the documented way to run the DEQ task


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_task(task: str, out_dir: Path, extra: list[str]) -> dict:
    overrides = [f"task={task}", *OVERRIDES.get(task, []), *extra]
    run_dir = out_dir / task
    cmd = [sys.executable, "-m", "bilevel", *overrides, f"hydra.run.dir={run_dir}",
           "progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    shown = "bilevel " + " ".join(overrides)
    out = {"task": task, "command": shown, "returncode": proc.returncode, "elapsed_s": elapsed}
    result = run_dir / "result.json"
    if result.exists():
        out["result"] = json.loads(result.read_text())
    else:
        out["stderr"] = proc.stderr[-600:]
    return out


def beats(res: dict) -> bool | None:
    """Whether ours beats the baseline (higher is better for accuracies, else lower)."""
    ours, base = res.get("test_metric"), res.get("baseline_metric")
    if not isinstance(ours, (int, float)) or not isinstance(base, (int, float)):
        return None
    higher = "accuracy" in res.get("test_metric_name", "")
    return ours > base if higher else ours < base


def row(r: dict) -> list[str]:
    res = r.get("result")
    if res is None:
        return [r["task"], f"`{r['command']}`", f"FAILED (exit {r['returncode']})", "—", "—",
                "—", f"{r['elapsed_s']:.1f} s", "—"]
    name = res.get("test_metric_name", "test metric")
    extra = res.get("extra_metrics") or {}
    extras = ", ".join(f"{k} {_fmt(v)}" for k, v in extra.items())
    status = res.get("status", "?") + (f" (exit {r['returncode']})" if r["returncode"] else "")
    won = {True: "yes", False: "no", None: "—"}[beats(res)]
    return [r["task"], f"`{r['command']}`", f"{name} {_fmt(res['test_metric'])}",
            f"{res.get('baseline', '?')}: {_fmt(res.get('baseline_metric'))}", won,
            f"{res.get('wall_time_s', float('nan')):.1f} s", f"{r['elapsed_s']:.1f} s",
            f"{status}, {res.get('n_outer_steps', '?')} steps" + (f"; {extras}" if extras else "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Hydra overrides added to every run (e.g. steps=30)")
    ap.add_argument("--out-dir", default="outputs/bench/tasks",
                    help="the runs' directories (<out-dir>/<task>)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="write the BENCHMARKS.md record here (common.write_results)")
    args = ap.parse_args()
    out_dir = Path(args.out_dir).resolve()
    results = []
    for task in [t for t in args.tasks.split(",") if t]:
        r = run_task(task, out_dir, args.set)
        results.append(r)
        print(" | ".join(row(r)), flush=True)
    columns = ["task", "command", "ours: test metric", "baseline (same split)", "ours better",
               "wall (outer loop)", "wall (command)", "status; extra figures"]
    notes = ["Each command runs in a fresh process (seed 0); 'wall (outer loop)' is the "
             "result.json wall time (the baseline's fit excluded), 'wall (command)' includes "
             "start-up, the baseline and the files written."]
    behind = [r["task"] for r in results if r.get("result") and beats(r["result"]) is False]
    failed = [r["task"] for r in results if not r.get("result")]
    notes.append(f"Every task beats its baseline on its default configuration (issue 6): "
                 f"{'met' if not behind and not failed else 'not met'}"
                 + (f"; behind: {', '.join(behind)}" if behind else "")
                 + (f"; failed: {', '.join(failed)}" if failed else "") + ".")
    write_results(args.json, "tasks_default",
                  [{"title": "Tasks on their default configuration", "columns": columns,
                    "rows": [row(r) for r in results]}],
                  notes=notes, data={"runs": results})


if __name__ == "__main__":
    main()
