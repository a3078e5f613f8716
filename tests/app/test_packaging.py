"""Installed as a user installs it (a regular, non-editable `pip install .`), run from another
directory: the configs ship inside the distribution and Hydra finds them as pkg://bilevel.conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_non_editable_install_runs_single_and_multirun_from_elsewhere(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    assert (site / "bilevel" / "conf" / "config.yaml").exists()
    assert (site / "bilevel" / "conf" / "hydra" / "launcher" / "parallel.yaml").exists()
    # the installed copy, not this checkout; its numba kernels would compile again beside the
    # installed files (about 30 s, once per install): this test is about packaging, so they run
    # as plain Python (numba's documented switch)
    env = {**os.environ, "PYTHONPATH": str(site), "NUMBA_DISABLE_JIT": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = subprocess.run([sys.executable, "-c", "import bilevel, sys; "
                            "assert 'hydra' not in sys.modules; print(bilevel.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site))

    single = subprocess.run([sys.executable, "-m", "bilevel", "steps=2", "hydra.run.dir=run"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    assert json.loads((elsewhere / "run" / "result.json").read_text())["n_outer_steps"] == 2

    multi = subprocess.run([sys.executable, "-m", "bilevel", "-m", "steps=1", "seed=0,1",
                            "hydra.sweep.dir=sweep"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr
    assert len(list((elsewhere / "sweep").rglob("result.json"))) == 2
