"""The BENCHMARKS.md writer on synthetic records, and the ``--json`` contract of every benchmark
script (each one's ``--help`` lists it). No benchmark is run here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NOT_SCRIPTS = {"common.py", "write_report.py"}  # the shared helpers and the writer itself


@pytest.fixture()
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their neighbours by name
    return monkeypatch


def load(name: str, monkeypatch):
    """Import ``benchmarks/<name>`` as a fresh module (registered while the test runs, as
    dataclasses need)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(name).stem}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def record(common, path: Path, argv: list[str], rows: list[list[str]], notes: list[str],
           monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    common.write_results(str(path), "lasso_hypergrad",
                         [{"title": "Lasso: solve + hypergradient (medians)",
                           "columns": ["problem", "ours", "celer", "ours / celer"],
                           "rows": rows}],
                         notes=notes, figures=["benchmarks/figures/x.png"], data={"x": 1.0})


def test_writer_merges_records_and_shows_commands(tmp_path, bench_path, monkeypatch):
    common, writer = load("common.py", monkeypatch), load("write_report.py", monkeypatch)
    runs = tmp_path / "bench"
    record(common, runs / "a.json", ["benchmarks/lasso_hypergrad.py", "--repeat", "7"],
           [["n=1000, p=5000", "0.041 s", "0.098 s", "0.42"]],
           ["n=1000, p=5000: ≤ 1.5× celer (issue 3): met (0.42×)."], monkeypatch)
    record(common, runs / "b.json", ["benchmarks/lasso_hypergrad.py", "--n", "500"],
           [["n=500, p=2000", "0.032 s", "0.012 s", "2.7"]], ["a | pipe"], monkeypatch)
    (runs / "junk.json").write_text("{not json")  # skipped with a message, not fatal
    out = tmp_path / "B.md"
    assert writer.main([str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    # one section, one merged table holding both rows, both commands, notes and the figure
    assert text.count("**Lasso: solve + hypergradient (medians)**") == 1
    assert "| n=1000, p=5000 | 0.041 s | 0.098 s | 0.42 |" in text
    assert "| n=500, p=2000 | 0.032 s | 0.012 s | 2.7 |" in text
    assert "`python benchmarks/lasso_hypergrad.py --repeat 7`" in text
    assert "`python benchmarks/lasso_hypergrad.py --n 500`" in text
    assert "- a | pipe" in text
    assert "![" in text and "(benchmarks/figures/x.png)" in text
    # the header: machine, versions, and the issue targets gathered at the top
    assert "| machine |" in text and "| torch |" in text and "| jaxopt |" in text
    assert "Lasso: n=1000, p=5000: ≤ 1.5× celer (issue 3): met" in text
    # benchmarks without a record are stated, not silently dropped
    assert "## Hypergradient accuracy against inner tolerance" in text
    assert "Not run: no `precision` record" in text
    assert "No GPU was available to this run" in text
    data = json.loads((runs / "a.json").read_text())
    assert data["benchmark"] == "lasso_hypergrad" and data["data"] == {"x": 1.0}
    assert data["command"] == "python benchmarks/lasso_hypergrad.py --repeat 7"


def test_writer_table_cells_and_unknown_benchmarks(bench_path):
    writer = load("write_report.py", bench_path)
    table = writer.markdown_table(["a", "b"], [["x|y", 1]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]
    rec = {"benchmark": "new_thing", "command": "python benchmarks/new_thing.py",
           "tables": [{"title": "T", "columns": ["c"], "rows": [["v"]]}], "notes": []}
    text = writer.render([rec], info={k: "?" for k in ("cpu", "cores", "memory", "os",
                                                        "python")})
    assert "## new_thing" in text and "| v |" in text


def test_writer_refuses_an_empty_directory(tmp_path, bench_path):
    writer = load("write_report.py", bench_path)
    assert writer.main([str(tmp_path), "--out", str(tmp_path / "B.md")]) == 1
    assert not (tmp_path / "B.md").exists()


SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_a_json_option(name, bench_path, monkeypatch, capsys):
    module = load(name, monkeypatch)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "--json" in capsys.readouterr().out
