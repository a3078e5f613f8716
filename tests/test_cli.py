"""The `bilevel` app end to end: the Hydra composition, the run directory and its files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

RESULT_KEYS = {"task", "outer", "outer_value", "test_metric", "test_metric_name", "baseline",
               "baseline_metric", "hyperparameters", "wall_time_s", "n_outer_steps", "status"}


def run_app(tmp_path, *overrides):
    cmd = [sys.executable, "-m", "bilevel", f"hydra.run.dir={tmp_path}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_lasso_run_writes_result_and_metrics(tmp_path):
    proc = run_app(tmp_path, "steps=15", "outer.lr=0.2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert RESULT_KEYS <= result.keys()
    assert result["task"] == "lasso" and result["outer"] == "implicit"
    assert result["n_outer_steps"] == 15 and result["status"] in {"max_steps", "converged"}
    assert result["test_metric_name"] == "test_mse"
    # the tuned λ is a sensible Lasso: test error within 10% of LassoCV's on the same split
    assert result["test_metric"] <= 1.1 * result["baseline_metric"]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 15
    values = [float(r["outer_value"]) for r in rows]
    assert min(values) < values[0]  # the validation loss went down
    assert result["outer_value"] == pytest.approx(min(values))
    assert "test_mse" in proc.stdout and "LassoCV" in proc.stdout


def test_misspelled_key_is_an_error_naming_it(tmp_path):
    proc = run_app(tmp_path, "outer.lrr=0.1")
    assert proc.returncode != 0
    assert "lrr" in proc.stderr


def test_import_bilevel_does_not_import_hydra():
    code = "import sys, bilevel; assert 'hydra' not in sys.modules, 'hydra imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
