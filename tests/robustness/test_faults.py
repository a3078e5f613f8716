"""Faults of a whole run, in the default (fast) budget.

``tests/test_cli.py`` kills a ``bilevel`` process with SIGKILL and resumes it (``-m slow``: three
interpreters, about a minute) and runs a NaN divergence to exit status 2;
``tests/outer/test_checkpoint.py`` checks the checkpoint files (atomic writes, a corrupt latest
one falls back to the previous one, divergence keeps the best iterate). What was missing is the
fast path of the first and the two faults together through the app: a run killed with SIGKILL
mid-run whose latest checkpoint is then damaged (the partial write of a crash), resumed with
``resume=true``, must end where the uninterrupted run ends, digit for digit.

The killed run is the app's own entry point (``bilevel.cli.app``: argument parsing, Hydra,
the typed schema, the run loop, its checkpoints) in a forked copy of this process, so that no
new interpreter has to import torch, Hydra and scikit-learn (which is what costs a minute in
the slow variant).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from bilevel.outer.checkpoint import CheckpointWarning, load_checkpoint, previous_path
from tests.robustness.test_bad_inputs import run_cli
from tests.test_cli import read_rows, theta_columns

# 60 lasso steps with a checkpoint every 3: the kill lands well before the end
ARGS = ("task=lasso", "steps=60", "gtol=0", "checkpoint_every=3", "outer.lr=0.2", "test_every=0")
RESULT_KEYS = ("outer_value", "test_metric", "hyperparameters", "n_outer_steps", "status")


def _start_killable_run(run_dir: Path) -> int:
    """Fork; the child runs ``bilevel`` into ``run_dir`` and never returns to pytest."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            torch.set_num_threads(1)  # no thread pool inherited half-initialised
            code = run_cli(run_dir, *ARGS)[0]
        finally:
            os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_run_with_a_corrupt_latest_checkpoint_resumes_to_the_same_result(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    assert run_cli(full, *ARGS)[0] == 0

    latest = cut / "checkpoint.pt"
    pid = _start_killable_run(cut)
    deadline, ended = time.monotonic() + 120, (0, 0)
    try:
        while not previous_path(latest).exists() and ended == (0, 0):  # two checkpoints
            assert time.monotonic() < deadline, "no second checkpoint within 120 s"
            time.sleep(0.002)
            ended = os.waitpid(pid, os.WNOHANG)
    finally:
        if ended == (0, 0):
            os.kill(pid, signal.SIGKILL)
            ended = os.waitpid(pid, 0)
    status = ended[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert not (cut / "result.json").exists()  # killed mid-run
    # a crash during the next save: the latest checkpoint half written, a stray temporary file
    if latest.exists():  # (absent if the kill fell between the two renames of a save)
        blob = latest.read_bytes()
        latest.write_bytes(blob[: len(blob) // 2])
    latest.with_name(latest.name + ".tmp").write_bytes(b"partial")
    saved = load_checkpoint(previous_path(latest))  # what the resumed run must start from
    done = [row["time_s"] for row in saved["record"]["history"]]
    assert 3 <= saved["step"] == len(done) < 60

    with pytest.warns(CheckpointWarning, match="resuming from the previous one at step"):
        code, stderr = run_cli(cut, *ARGS, "resume=true")
    assert code == 0, stderr
    expected = json.loads((full / "result.json").read_text())
    got = json.loads((cut / "result.json").read_text())
    for key in RESULT_KEYS:
        assert got[key] == expected[key], key
    full_rows, cut_rows = read_rows(full / "metrics.csv"), read_rows(cut / "metrics.csv")
    assert len(cut_rows) == 60
    assert theta_columns(cut_rows) == theta_columns(full_rows)  # the same trajectory
    assert [r["outer_value"] for r in cut_rows] == [r["outer_value"] for r in full_rows]
    # the first steps are the killed run's own (their wall times), not a fresh start
    assert [float(r["time_s"]) for r in cut_rows[: len(done)]] == done
    assert done != [float(r["time_s"]) for r in full_rows[: len(done)]]
