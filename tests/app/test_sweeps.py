"""Sweeps: `bilevel -m` with the joblib and submitit_local launchers, then `bilevel-report`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from bilevel.report import main as report_main


def sweep(tmp_path, *overrides):
    cmd = [sys.executable, "-m", "bilevel", "-m", f"hydra.sweep.dir={tmp_path / 'multirun'}",
           "task=lasso", "steps=2", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def results(root):
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("result.json")}


def test_joblib_sweep_then_report_tabulates_both_runs(tmp_path, capsys):
    proc = sweep(tmp_path, "outer.lr=0.01,0.1", "hydra/launcher=joblib")
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "multirun"
    found = results(root)
    assert sorted(found) == ["0", "1"]
    assert all(r["n_outer_steps"] == 2 and r["task"] == "lasso" for r in found.values())

    assert report_main([str(root)]) == 0
    table = capsys.readouterr().out
    assert "outer.lr=0.01" in table and "outer.lr=0.1" in table and "test_mse" in table
    rows = list(csv.DictReader((root / "report.csv").open()))
    assert len(rows) == 2
    by_overrides = {r["overrides"]: r for r in rows}
    for name, result in found.items():
        row = next(r for r in rows if r["run"] == name)
        assert float(row["test_metric"]) == result["test_metric"]
    assert {"task=lasso steps=2 outer.lr=0.01", "task=lasso steps=2 outer.lr=0.1"} \
        == set(by_overrides)
    assert (root / "report.png").stat().st_size > 1000


def test_submitit_local_preset_runs_a_two_job_sweep(tmp_path):
    proc = sweep(tmp_path, "seed=0,1", "hydra/launcher=local")
    assert proc.returncode == 0, proc.stderr
    found = results(tmp_path / "multirun")
    assert sorted(r["seed"] for r in found.values()) == [0, 1]


def test_report_names_a_missing_or_empty_directory(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 1
    assert "nowhere is not a directory" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 1
    assert "no result.json" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text("{truncated")
    assert report_main([str(tmp_path)]) == 1
    assert "result.json is not valid JSON" in capsys.readouterr().err
