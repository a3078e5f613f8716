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

bench: $(STAMP)          ## the CPU benchmarks of BENCHMARKS.md (celer: pip install -e '.[bench]')
	$(PY) benchmarks/lasso_hypergrad.py --repeat 5
	$(PY) benchmarks/sparse_models.py
	$(PY) benchmarks/logreg_l2_hypergrad.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
