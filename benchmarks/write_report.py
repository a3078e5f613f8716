"""Write BENCHMARKS.md from the JSON records of one benchmark run.

Every script in ``benchmarks/`` takes ``--json PATH`` and writes one record through
``common.write_results`` (its command, date, wall time, load, versions, tables, notes,
figures). This writer reads every ``*.json`` of a directory (``make bench`` fills
``outputs/bench/``), groups the records by benchmark, and writes one Markdown report: a header
with the machine and the versions, then one section per benchmark in a fixed order — its prose
(what is measured, how, against which peer; kept here, beside the code that fills the
section), the exact commands with their wall time and load, the tables (records of the same
benchmark with a table of the same title and columns are merged into one table, rows in
command order), the notes and the figures. A benchmark without a record says "not run"; a
record of a benchmark unknown here gets a section of its own at the end.

Run:  .venv/bin/python benchmarks/write_report.py outputs/bench [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

VERSIONS = ("torch", "numpy", "scipy", "scikit-learn", "cvxpy", "cvxpylayers", "diffcp",
            "moreau", "qpth", "celer", "torchdeq", "jax", "jaxlib", "jaxopt", "optuna")


@dataclass(frozen=True)
class Section:
    """One section of the report: the records of ``benchmarks`` under ``title``."""

    title: str
    benchmarks: tuple[str, ...]
    prose: str
    missing: str = ""  # what to say when no record exists (default: "not run")

    @property
    def short(self) -> str:
        """The title up to its colon (the label of its targets in the summary)."""
        return self.title.split(":")[0]


SECTIONS: tuple[Section, ...] = (
    Section(
        "Lasso: solve + hypergradient against celer, sklearn and JAXopt",
        ("lasso_hypergrad",),
        """Reference Lasso (issue 3): `make_regression(2n, p, n_informative=50, noise=5,
random_state=seed)`, each column scaled to norm √(2n), the first n rows train, the rest
validation, λ = λmax/ratio, θ = log λ; the reference size is n=1000, p=5000, λmax/30. Ours: a
fresh `solvers.models.lasso(X, y, tol=1e-10)` (the working-set solver the framework uses by
default for this model, cold start; its construction is timed; on the CPU its whole
working-set loop runs compiled, `solvers.coordinate_descent.solve_least_squares`, loaded from
numba's cache once per process before the timings, in the warm-up round) +
`bilevel.implicit_solve`, timed as
the solve; then the hypergradient, timed in its two parts: the validation loss's own
value and gradient `∂F/∂w` (`X_v w`, `X_vᵀr`, which any method pays), then the implicit part
`w.backward(∂F/∂w)`, which gives `dF/dθ`. Peers: celer `Lasso(tol=1e-8)` and sklearn
`Lasso(tol=1e-8)`, solve only. Ours, sklearn and celer run in interleaved rounds (a warm-up
round, then `--repeat` timed ones; medians), each call after 0.1 s idle, so that neither the
machine's drift nor a library's still-spinning worker threads favour one of them. JAXopt
`ProximalGradient(prox=prox_lasso, implicit_diff=True)` (FISTA with backtracking, its defaults,
tol 1e-8 on the gradient mapping, at most 10,000 iterations, float64), solve and
`jax.value_and_grad` of the validation loss, both `jax.jit`-compiled ahead of time (compile time
not counted), timed apart. "Implicit part / solve" is the hypergradient overhead that issue 3
asks to keep ≤ 0.1 on the reference Lasso (the cost of differentiating through the inner
solution; judged at n=1000, p=5000, reported at the other sizes); "hypergradient /
solve" adds the validation loss's own products. The relative error is against the closed form
on the support, `λ ∇F(w)_Sᵀ (−(X_SᵀX_S/n)⁻¹ sign(w_S))`. Issue 3's target: solve +
hypergradient ≤ 1.5× celer's solve alone, at every size, seed and ratio.""",
    ),
    Section(
        "Elastic net and sparse logistic regression against celer and sklearn",
        ("sparse_models",),
        """Same data as the Lasso; the logistic labels are `y > median(y)`. Ours: the working-set
solvers `models.elastic_net` (θ = (log λ₁, log λ₂)) and `models.sparse_logreg` (θ = log λ) at
tol 1e-10, cold start, + the hypergradient of the validation loss (MSE, log-loss), checked
against central differences (h = 1e-5, inner solves at tol 1e-12, with a check that support and
signs do not change at θ ± h). Peers, solve only at tol 1e-8: celer `ElasticNet` /
`LogisticRegression` and sklearn `ElasticNet` / `LogisticRegression(solver="liblinear")` on the
same objective. Working sets larger than 512 features are solved on their columns (compiled
coordinate descent, no Gram matrix): the elastic net's support here is dense (more than half of
the features), so its last working set is the whole problem.
The JAXopt peer is measured on the Lasso only.""",
    ),
    Section(
        "Per-feature L2 logistic regression (22 hyperparameters, ijcnn1-shaped)",
        ("logreg_l2_hypergrad",),
        """`make_classification(141691, 22, n_informative=12, weights=[0.9, 0.1],
random_state=0)`, standardised, the first 49,990 rows inner, the rest outer; θ = log(1e-3)·1;
inner solver `solvers.Smooth(..., method="newton", tol=1e-10)`, cold start. The hypergradient
is the outer loss's forward + backward through `implicit_solve`; its implicit part refines from
the Cholesky factor of the last Newton step's Hessian (one full and one θ-only VJP of `H`, the
residual checked inside them). Checked against
central differences along 3 random directions (h = 1e-4, inner tol 1e-12). Peer: scipy
L-BFGS-B on the same inner problem (numpy objective and gradient, gtol 1e-10), solve only.""",
    ),
    Section(
        "Differentiable QP layer: native batched QP against cvxpylayers (Moreau, diffcp) and qpth",
        ("qp_layer",),
        """Random strictly convex QPs, feasible by construction (issue 4): `Q = MᵀM + 1e-3·I`,
n=100, m=50 inequalities, every item its own `Q, q, G, h`; loss `Σ z*`, gradients w.r.t.
`Q, q, G, h`; median of the timed forward + backward calls after a warm-up call (layer
construction excluded). Ours: `native` = `bilevel.layers.QPLayer("native")` as a user calls it
(dual reduction, interior point, the engine's backward); `native, closed-form adjoint` = the
same forward and the backward from the solver's closed-form adjoint (`NativeQP.solve_adjoint`,
no `∂yH` formed), run where `native` is skipped (above B=128). Peers: cvxpylayers 1.x with
the Moreau backend and with diffcp/SCS at eps 1e-9 (its default tolerances give gradients off
by ~1e-3), and qpth (installed with `--no-deps`: it pins numpy < 2). Ratios are within one
row, i.e. one run. Issue 4's target: native ≤ 0.5× Moreau at B=128, float64.""",
    ),
    Section(
        "DEQ classifier on digits: FixedPointLayer against torchdeq",
        ("deq",),
        """Width-128 tanh cell `f(z, x) = tanh(Wz + Ux + b)`, batch 64, 1,400 training digits,
Adam; ours: `FixedPointLayer` with its defaults (Anderson forward to 1e-4, GMRES adjoint to
1e-3; torchdeq's backward stops at its 40-iteration cap at a relative residual of ~5e-3,
measured); torchdeq 0.1.0 `get_deq(f_solver="anderson", b_solver="anderson", ift=True)` with its
defaults; an explicit two-layer MLP of the same width for scale. The epochs of the three models
are interleaved in one process, so load drift hits them alike; the ratio is on median epoch
times. The comparison runs once per seed (split, initialisations, batch order); the verdict
takes the median of the per-seed time ratios and the mean test accuracy over the seeds, since a
single seed's final accuracy moves by points with any change of rounding (the cell is not
constrained to contract). Issue 4's target: ≤ 0.5× torchdeq's time per epoch at equal or better
accuracy.""",
    ),
    Section(
        "Stochastic and deterministic outer methods: h(θ_t) − h* against wall time",
        ("stochastic_bilevel",),
        """Per-feature L2 logistic regression (`tasks.logreg_l2`, 22 hyperparameters, θ in the
box [−12, 4]²², θ₀ = log 1e-3) on the ijcnn1-shaped data (49,990 inner rows, 91,701 outer
rows) and on breast_cancer (30 hyperparameters), issue 5. h* is the lowest h over every
deterministic iterate (`lbfgsb` run to convergence). Peer: scipy L-BFGS-B on h with exact
implicit gradients (warm-started scipy L-BFGS-B inner solves, numpy adjoint), capped by
`--peer-budget`. Ours: `lbfgsb` (projected L-BFGS, the recommended default for this task) and
every stochastic method with its default settings (`implicit_b64`: implicit GD on outer
minibatches of 64), several seeds with a fixed wall-time budget each; both deterministic methods
get an untimed warm-up (torch's one-time imports), and h(θ_t) is evaluated afterwards by a
numpy reference, outside the timed region.""",
    ),
    Section(
        "Hyperparameter search end to end: held-out error against wall time",
        ("hyperparam_search",),
        """The tasks `weighted_lasso` (one ℓ1 weight per feature, p = 100, sparse correlated
regression) and `logreg_l2` (one L2 weight per feature, p = 22, ijcnn1-shaped with a 20 % test
split of the outer rows; its validation-split form, `cv_folds=None, shrink=0`, whose test metric
is the model refitted on train ∪ validation), built by `tasks.<task>.build`.
Every search minimises the same validation loss with the task's inner solver over the task's
box and keeps the θ with the lowest validation loss so far; the held-out column is the test
metric of that θ (evaluated outside the timed region). Ours: `lbfgsb` and `implicit` (Adam) on
all p hyperparameters through `bilevel.outer.run_outer`. Peers: Optuna TPE (its defaults) over
the same p hyperparameters and over one shared value, each trial one warm-started inner solve,
for the same wall-time budget; a grid over one shared value (a grid over p hyperparameters
needs k^p solves); and the task's scikit-learn CV estimator (one shared value, 5-fold CV on
train ∪ validation, refitted: it optimises another loss, so only its held-out metric compares).
The last two columns say when `lbfgsb` reached each row's validation loss and how much longer
that row took.""",
    ),
    Section(
        "Tasks on their default configuration (the `bilevel` command)",
        ("tasks_default",),
        """Every task of `conf/task/` run by the command line as a user first runs it:
`bilevel task=<task>` with the default configuration (seed 0, float64, 100 outer steps of
`outer=implicit`, Adam lr 0.1, unless the task's yaml says otherwise; network tasks train for
their yaml's epochs; `deq` in float32), each in a fresh process. The test metric is the best
iterate's, beside the task's own baseline fitted on the same split (issue 6 asks every task to
beat it on its default configuration).""",
    ),
    Section(
        "Hypergradient accuracy against inner tolerance (precision control)",
        ("precision",),
        """How the hypergradient error follows the inner tolerance (issue 7, item 3): for tol
from 1e-2 to 1e-12, fresh inner solvers (FISTA and the working set on a Lasso, Newton and
L-BFGS on per-feature L2 logistic regression) solved to tol, the hypergradient compared with a
tight reference; then the rule that derives the inner tolerance from the hypergradient
precision an outer method asks for, checked against its targets, and an outer run with and
without it. The script's docstring (`benchmarks/precision.py`) gives the details.""",
        missing="Not run: no `precision` record in this run (benchmarks/precision.py did not "
                "run or did not write its `--json` record).",
    ),
    Section(
        "GPU: CUDA against CPU",
        ("cuda_check",),
        """`benchmarks/cuda_check.py` solves the same problems on the CPU and on the GPU in
float64 (working-set Lasso, ProxGrad Lasso, Smooth logistic, FixedPoint Anderson, the native
QP layer) and checks that solutions and hypergradients agree to 1e-8 and stay on their device;
it times the working-set Lasso n=2000, p=20000 and the native QP layer at B=4096 (float64 and
float32) on both devices of that machine.""",
        missing="No GPU was available to this run (no `cuda_check` record): nothing was "
                "measured on a GPU.",
    ),
)


def load_records(*paths: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record (a ``*.json`` file with a ``benchmark`` key) of ``paths`` (directories:
    their ``*.json``; or files), in the order the runs finished (file name as tie-break)."""
    records = []
    files = [f for p in map(Path, paths)
             for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"write_report: skipped {path}: {err}", file=sys.stderr)
            continue
        if isinstance(record, dict) and "benchmark" in record:
            record["_file"] = path.name
            records.append(record)
    records.sort(key=lambda r: (r.get("finished", ""), r["_file"]))
    return records


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return "RAM unknown"


def machine() -> dict[str, str]:
    """What the writer can see of the machine and the environment (the same as the run's when
    it runs right after the benchmarks, as ``make bench`` does)."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "os": platform.platform(),
        "python": platform.python_version(),
        **{name: _version(name) for name in VERSIONS},
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def merge_tables(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tables of ``records``, those with the same title and columns merged (rows kept in
    record order), in order of first appearance."""
    merged: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for record in records:
        for table in record.get("tables", []):
            key = (table.get("title", ""), tuple(table.get("columns", [])))
            if key not in merged:
                merged[key] = {"title": key[0], "columns": list(key[1]), "rows": []}
            merged[key]["rows"].extend(table.get("rows", []))
    return list(merged.values())


def _run_line(record: dict[str, Any]) -> str:
    load = record.get("load_avg")
    extra = [f"{record['wall_s']:.0f} s" if isinstance(record.get("wall_s"), (int, float))
             else None,
             f"load {load[0]:.1f}" if load else None,
             f"torch {record.get('threads')} threads" if record.get("threads") else None,
             record.get("finished") or record.get("date")]
    return f"`{record.get('command', '?')}` ({', '.join(e for e in extra if e)})"


def render_section(section: Section, records: list[dict[str, Any]]) -> str:
    out = [f"## {section.title}", "", " ".join(section.prose.split()), ""]
    if not records:
        out += [f"**{section.missing or 'Not run in this run: no record of ' + ', '.join(section.benchmarks) + '.'}**", ""]  # noqa: E501
        return "\n".join(out)
    label = "Command" if len(records) == 1 else "Commands"
    out += [f"{label} (repository root, the project's virtual environment):", ""]
    out += [f"- {_run_line(r)}" for r in records]
    out.append("")
    for table in merge_tables(records):
        if table["title"]:
            out += [f"**{table['title']}**", ""]
        out += [markdown_table(table["columns"], table["rows"]), ""]
    notes = list(dict.fromkeys(n for r in records for n in r.get("notes", [])))
    out += [f"- {' '.join(n.split())}" for n in notes]
    if notes:
        out.append("")
    figures = list(dict.fromkeys(f for r in records for f in r.get("figures", [])))
    for figure in figures:
        if Path(figure).suffix.lower() in (".png", ".svg", ".jpg"):
            out += [f"![{section.title}]({figure})", ""]
    return "\n".join(out)


def render(records: list[dict[str, Any]], info: dict[str, str] | None = None) -> str:
    """The whole report as Markdown."""
    info = machine() if info is None else info
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_name.setdefault(record["benchmark"], []).append(record)
    dates = sorted({r.get("date", "?") for r in records})
    threads = sorted({str(r["threads"]) for r in records if r.get("threads")})
    loads = [r["load_avg"][0] for r in records if r.get("load_avg")]
    wall = sum(r.get("wall_s") or 0 for r in records)
    devices = sorted({r.get("device", "cpu") for r in records})
    head = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`benchmarks/write_report.py` from the JSON records of one "
        "run; do not edit by hand: change the scripts or the writer and rerun). Every figure "
        "below comes with the command that produced it. Times are medians over each script's "
        "repeats unless a table says otherwise; peers were measured in the same run as ours, "
        "and a ratio is ours / the peer's, within that run. Load is the 1-minute load "
        "average when the script finished: on this 2-core machine, figures taken at a load "
        "above ~1.5 are inflated.",
        "",
        "| run | |",
        "|---|---|",
        f"| date | {', '.join(dates) or '—'} |",
        f"| machine | {info['cpu']}, {info['cores']} cores, {info['memory']}, "
        f"{', '.join(devices)} |",
        f"| OS | {info['os']} |",
        f"| Python | {info['python']} |",
        f"| torch threads | {', '.join(threads) or '—'} |",
        f"| load average (1 min) at the end of each script | "
        f"{f'{min(loads):.1f} – {max(loads):.1f}' if loads else '—'} |",
        f"| wall time of the scripts | {wall / 60:.1f} min |",
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {name} | {info.get(name, '?')} |" for name in VERSIONS),
        "",
    ]
    targets, body, known = [], [], set()
    for section in SECTIONS:
        known.update(section.benchmarks)
        recs = [r for name in section.benchmarks for r in by_name.get(name, [])]
        targets += [f"{section.short}: {' '.join(n.split())}"
                    for n in dict.fromkeys(n for r in recs for n in r.get("notes", []))
                    if "(issue " in n]
        body.append(render_section(section, recs))
    if targets:
        head += ["**Targets of the issues, as measured in this run:**", ""]
        head += [f"- {t}" for t in targets]
        head.append("")
    for name, recs in by_name.items():
        if name not in known:
            body.append(render_section(Section(name, (name,), f"Records of `{name}`."), recs))
    return "\n".join(head) + "\n" + "\n".join(body).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+",
                    help="directories (every *.json in them) or files of JSON records, e.g. "
                         "outputs/bench")
    ap.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file to write")
    args = ap.parse_args(argv)
    missing = [p for p in args.records if not Path(p).exists()]
    if missing:
        print(f"write_report: no such directory or file: {', '.join(missing)}", file=sys.stderr)
        return 2
    records = load_records(*args.records)
    if not records:
        print(f"write_report: no records in {args.records}; {args.out} left as it is",
              file=sys.stderr)
        return 1
    text = render(records)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"write_report: {len(records)} records → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
