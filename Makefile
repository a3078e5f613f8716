# The two set-up commands of the README: `make run` and `make test`. Both create .venv on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)            ## λ selection for the Lasso on diabetes; writes outputs/<date>/<time>/result.json
	$(VENV)/bin/bilevel

test: $(STAMP)           ## the test suite (fast default; `-m slow` cases are deselected)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check bilevel solvers tasks tests benchmarks

# `make bench`: every script of benchmarks/ at the reference sizes of the issues, each writing its
# JSON record to $(BENCH)/, then benchmarks/write_report.py regenerates BENCHMARKS.md from them.
# About 15-20 min on the 2-core machine when it is quiet (< 30 min). A script that fails does not
# stop the others (its section then says "not run"), nor does one running past BENCH_TIMEOUT
# seconds (it is stopped). Not part of CI.
BENCH := outputs/bench
BENCH_TIMEOUT ?= 900
RUN_BENCH = -timeout $(BENCH_TIMEOUT) $(PY) benchmarks/

bench: $(STAMP)          ## the benchmarks beside their peers → $(BENCH)/*.json → BENCHMARKS.md
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps qpth==0.0.18   # qpth pins numpy<2: no deps
	rm -rf $(BENCH) && mkdir -p $(BENCH) benchmarks/figures
	$(RUN_BENCH)lasso_hypergrad.py --repeat 7 --jaxopt-repeat 3 --json $(BENCH)/lasso_hypergrad.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 7 --jaxopt-repeat 3 --n 500 --p 2000 --json $(BENCH)/lasso_hypergrad_500x2000.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --seed 1 --json $(BENCH)/lasso_hypergrad_seed1.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --lam-ratio 10 --json $(BENCH)/lasso_hypergrad_ratio10.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --lam-ratio 100 --json $(BENCH)/lasso_hypergrad_ratio100.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 3 --jaxopt-repeat 0 --n 2000 --p 10000 --json $(BENCH)/lasso_hypergrad_2000x10000.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --n 200 --p 1000 --json $(BENCH)/lasso_hypergrad_200x1000.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --n 200 --p 1000 --lam-ratio 10 --json $(BENCH)/lasso_hypergrad_200x1000_ratio10.json
	$(RUN_BENCH)lasso_hypergrad.py --repeat 5 --jaxopt-repeat 0 --n 100 --p 500 --json $(BENCH)/lasso_hypergrad_100x500.json
	$(RUN_BENCH)sparse_models.py --repeat 5 --json $(BENCH)/sparse_models.json
	$(RUN_BENCH)logreg_l2_hypergrad.py --repeat 5 --json $(BENCH)/logreg_l2_hypergrad.json
	$(RUN_BENCH)qp_layer.py --batch 1 128 --dtype float64 float32 --repeat 5 --json $(BENCH)/qp_layer.json
	$(RUN_BENCH)qp_layer.py --batch 1024 --dtype float64 float32 --methods native-hint moreau qpth --repeat 3 --json $(BENCH)/qp_layer_1024.json
	$(RUN_BENCH)deq.py --epochs 20 --seeds 0 1 2 --json $(BENCH)/deq.json
	$(RUN_BENCH)stochastic_bilevel.py --seeds 3 --budget 5 --maxiter 40 --plot benchmarks/figures/stochastic_bilevel.png --json $(BENCH)/stochastic_bilevel.json
	$(RUN_BENCH)stochastic_bilevel.py --dataset breast_cancer --seeds 3 --budget 5 --plot benchmarks/figures/stochastic_bilevel_breast_cancer.png --json $(BENCH)/stochastic_bilevel_breast_cancer.json
	$(RUN_BENCH)hyperparam_search.py --budget 30 --json $(BENCH)/hyperparam_search.json
	$(RUN_BENCH)precision.py --json $(BENCH)/precision.json
	$(RUN_BENCH)tasks_default.py --out-dir $(BENCH)/tasks --json $(BENCH)/tasks_default.json
	$(RUN_BENCH)cuda_check.py --json $(BENCH)/cuda_check.json
	$(PY) benchmarks/write_report.py $(BENCH) benchmarks/records --out BENCHMARKS.md

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
