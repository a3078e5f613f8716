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

bench: $(STAMP)          ## the CPU benchmarks of BENCHMARKS.md, beside their peers (not part of CI)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps qpth==0.0.18   # qpth pins numpy<2: no deps
	$(PY) benchmarks/lasso_hypergrad.py --repeat 7
	$(PY) benchmarks/lasso_hypergrad.py --repeat 7 --n 500 --p 2000
	$(PY) benchmarks/sparse_models.py
	$(PY) benchmarks/logreg_l2_hypergrad.py
	$(PY) benchmarks/qp_layer.py --batch 128 --dtype float64 --methods native moreau diffcp qpth --repeat 3
	$(PY) benchmarks/deq.py --epochs 20
	mkdir -p outputs && $(PY) benchmarks/stochastic_bilevel.py --seeds 3 --budget 5 --maxiter 40 --plot outputs/stochastic_bilevel.png

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
