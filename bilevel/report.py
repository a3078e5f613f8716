"""``bilevel-report DIR``: one table and one plot for all the runs under a (multi)run directory.

Every folder below ``DIR`` holding a ``result.json`` (what the ``bilevel`` command writes) is one
run; its Hydra overrides (``.hydra/overrides.yaml``) name it. The command prints the table
(task, outer method, overrides, status, outer value, test metric beside the task's baseline,
wall time), writes it to ``DIR/report.csv`` and overlays the runs' ``metrics.csv`` in
``DIR/report.png``. It needs no Hydra: it reads files.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from bilevel.plots import convergence_plot

COLUMNS = ("run", "task", "outer", "overrides", "status", "outer_value", "test_metric_name",
           "test_metric", "baseline_metric", "wall_time_s", "n_outer_steps")


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per ``result.json`` under ``root`` (sorted by path).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no ``result.json``.
        ValueError: a ``result.json`` is not valid JSON (the message names it).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the multirun (or run) folder")
    rows = []
    for path in sorted(root.rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); rerun that job") from err
        row = {key: result.get(key, "") for key in COLUMNS}
        row["run"] = str(path.parent.relative_to(root)) or "."
        row["overrides"] = " ".join(_overrides(path.parent))
        row["dir"] = path.parent
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no result.json under {root}: is it a bilevel run directory?")
    return rows


def _overrides(run_dir: Path) -> list[str]:
    """The command-line overrides Hydra recorded for a run (``- key=value`` lines)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line[2:].strip() for line in lines if line.startswith("- ")]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of ``rows``."""
    shown = ("run", "overrides", "status", "outer_value", "test_metric", "baseline_metric",
             "wall_time_s")
    header = list(shown)
    if rows:
        header[4] = str(rows[0]["test_metric_name"] or "test_metric")
    return text_table([header] + [[_cell(row[key]) for key in shown] for row in rows])


def text_table(cells: list[list[str]], indent: str = "") -> str:
    """Left-aligned columns, two spaces apart, each line prefixed by ``indent``."""
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in cells)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def report(root: Path) -> tuple[str, Path, Path | None]:
    """Build the report of ``root``; returns the table, the CSV path and the PNG path (None
    when no run wrote metrics)."""
    rows = collect(root)
    csv_path = root / "report.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    runs = {row["overrides"] or row["run"]: _metrics(row["dir"]) for row in rows}
    runs = {label: metrics for label, metrics in runs.items() if metrics}
    png = None
    if runs:
        png = convergence_plot(runs, root / "report.png", title=str(root),
                               metric_name=str(rows[0]["test_metric_name"] or "test metric"))
    return format_table(rows), csv_path, png


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point of ``bilevel-report``."""
    parser = argparse.ArgumentParser(prog="bilevel-report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a multirun (or run) directory")
    args = parser.parse_args(argv)
    try:
        table, csv_path, png = report(args.directory)
    except (FileNotFoundError, ValueError) as err:
        print(f"bilevel-report: {err}", file=sys.stderr)
        return 1
    print(table)
    print(f"written: {csv_path}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
