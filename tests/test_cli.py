"""The `bilevel` app end to end: the Hydra composition, the run directory and its files."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time

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


def test_inner_group_switches_the_solver_and_keeps_the_trajectory(tmp_path):
    """inner=proxgrad solves the same Lasso by FISTA: the same λ path to the solvers' tolerance."""
    thetas = {}
    for inner in ("default", "proxgrad"):
        run_dir = tmp_path / inner
        run_dir.mkdir()
        proc = run_app(run_dir, f"inner={inner}", "steps=3", "test_every=0", "inner.tol=1e-12")
        assert proc.returncode == 0, proc.stderr
        thetas[inner] = [float(r["theta_0"]) for r in read_rows(run_dir / "metrics.csv")]
    assert thetas["proxgrad"] == pytest.approx(thetas["default"], abs=1e-7)


@pytest.mark.parametrize(("override", "named"), [
    ("inner=newton", "workingset | proxgrad"),  # a solver the task does not offer: lists them
    ("inner.tols=1e-8", "tols"),                # a misspelled key of the typed group
    ("inner=foo", "inner/foo"),                 # an option that does not exist
])
def test_bad_inner_choice_is_an_error_naming_it(tmp_path, override, named):
    proc = run_app(tmp_path, override, "steps=1")
    assert proc.returncode != 0
    assert named in proc.stderr


def test_import_bilevel_does_not_import_hydra():
    code = "import sys, bilevel; assert 'hydra' not in sys.modules, 'hydra imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def read_rows(path):
    return list(csv.DictReader(path.open()))


def theta_columns(rows):
    return [[r[k] for k in r if k.startswith("theta_")] for r in rows]


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    args = ("steps=24", "gtol=0", "checkpoint_every=3", "outer.lr=0.2")
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir(), cut_dir.mkdir()
    assert run_app(full_dir, *args).returncode == 0

    cmd = [sys.executable, "-m", "bilevel", f"hydra.run.dir={cut_dir}", *args]
    proc = subprocess.Popen(cmd, cwd=cut_dir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (cut_dir / "checkpoint.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (cut_dir / "result.json").exists()

    resumed = run_app(cut_dir, *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    full = json.loads((full_dir / "result.json").read_text())
    got = json.loads((cut_dir / "result.json").read_text())
    for key in ("outer_value", "test_metric", "hyperparameters", "n_outer_steps", "status"):
        assert got[key] == full[key], key
    full_rows, got_rows = read_rows(full_dir / "metrics.csv"), read_rows(cut_dir / "metrics.csv")
    assert theta_columns(got_rows) == theta_columns(full_rows)  # same trajectory, digit by digit
    assert [r["outer_value"] for r in got_rows] == [r["outer_value"] for r in full_rows]


@pytest.mark.slow
def test_resume_with_another_configuration_is_refused(tmp_path):
    assert run_app(tmp_path, "steps=2", "outer.lr=0.2").returncode == 0
    proc = run_app(tmp_path, "steps=4", "outer.lr=0.3", "resume=true")
    assert proc.returncode != 0
    assert "different run configuration" in proc.stderr


def test_a_stochastic_method_on_the_cv_form_names_the_task_setting_that_fixes_it(tmp_path):
    proc = run_app(tmp_path, "task=logreg_l2", "outer=soba", "steps=1")
    assert proc.returncode != 0
    assert "SOBA needs the minibatch losses" in proc.stderr
    assert "task=logreg_l2 has them with task.cv_folds=null" in proc.stderr


def test_divergence_exits_nonzero_naming_the_step_and_writes_the_best_iterate(tmp_path):
    # unbounded log-weights and a huge step: e^θ overflows after the first step
    proc = run_app(tmp_path, "task=logreg_l2", "task.cv_folds=null", "task.bounds=null",
                   "outer.optimizer=sgd", "outer.lr=1e6", "steps=20")
    assert proc.returncode == 2, proc.stderr
    assert "diverged at step 1" in proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "diverged" and "step 1" in result["message"]
    rows = read_rows(tmp_path / "metrics.csv")
    assert len(rows) == 1
    assert result["outer_value"] == pytest.approx(float(rows[0]["outer_value"]))
    # the best iterate is θ₀ = log(1e-3) for every feature, and its test metric is finite
    assert all(v == pytest.approx(1e-3) for v in result["hyperparameters"].values())
    assert result["test_metric"] < 1.0


def test_wrongly_typed_or_unknown_option_is_an_error_naming_it(tmp_path):
    proc = run_app(tmp_path, "steps=many")
    assert proc.returncode != 0 and "steps" in proc.stderr
    proc = run_app(tmp_path, "outer=sobaa")
    assert proc.returncode != 0 and "sobaa" in proc.stderr


def test_network_task_runs_through_the_app_with_its_baseline(tmp_path):
    proc = run_app(tmp_path, "task=deq", "dtype=float32", "task.epochs=2", "task.width=32")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["task"] == "deq" and result["n_outer_steps"] == 2
    assert result["test_metric_name"] == "test_accuracy" and 0.5 < result["test_metric"] <= 1
    assert 0.5 < result["baseline_metric"] <= 1 and "MLP" in result["baseline"]
    assert len(read_rows(tmp_path / "metrics.csv")) == 2
    assert (tmp_path / "convergence.png").stat().st_size > 1000


def test_qp_layer_task_runs_through_the_app_with_an_inner_choice(tmp_path):
    proc = run_app(tmp_path, "task=qp_layer", "task.epochs=2", "task.width=8", "inner=native",
                   "inner.tol=1e-9")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["task"] == "qp_layer" and result["n_outer_steps"] == 2
    assert result["test_metric_name"] == "test_pinball" and 0 < result["test_metric"] < 60
    assert result["hyperparameters"]["crossing_rate"] == 0.0  # the layer orders the quantiles
    assert "crossing_rate" in result["baseline_hyperparameters"]


def test_task_figures_and_test_metric_trace_reach_the_run_files(tmp_path):
    proc = run_app(tmp_path, "task=elastic_net", "steps=6", "test_every=2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["extra_metrics"]["n_nonzero"] >= 1
    rows = read_rows(tmp_path / "metrics.csv")
    assert [r["test_metric"] != "" for r in rows] == [True, False, True, False, True, False]
    assert (tmp_path / "convergence.png").stat().st_size > 1000


HYPERPARAMETER_TASKS = ["lasso", "weighted_lasso", "elastic_net", "logreg_l2", "sparse_logreg",
                        "multinomial_l2", "datacleaning", "dro"]


def test_every_hyperparameter_task_runs_from_the_command_line(tmp_path):
    """One short multirun over every task (the basic launcher runs them in one process)."""
    cmd = [sys.executable, "-m", "bilevel", "-m", f"task={','.join(HYPERPARAMETER_TASKS)}",
           "steps=1", "test_every=0", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")]
    assert sorted(r["task"] for r in results) == sorted(HYPERPARAMETER_TASKS)
    for r in results:
        assert r["status"] == "max_steps" and r["n_outer_steps"] == 1, r
        assert math.isfinite(r["test_metric"]) and math.isfinite(r["baseline_metric"]), r


def test_same_seed_twice_gives_bit_identical_results(tmp_path):
    results = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        proc = run_app(run_dir, "steps=8", "seed=3")
        assert proc.returncode == 0, proc.stderr
        result = json.loads((run_dir / "result.json").read_text())
        result.pop("wall_time_s")
        rows = [{k: v for k, v in r.items() if k != "time_s"}
                for r in read_rows(run_dir / "metrics.csv")]
        results.append((result, rows))
    assert results[0] == results[1]  # every value, digit for digit
