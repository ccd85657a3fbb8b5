# Two commands for a new user; each sets up .venv by itself the first time.
#   make demo   ALE meta-analysis with Monte Carlo FWE on simulated data, on a local Dask cluster
#   make test   the whole test suite (installs NiMARE 0.22.1 as the parity oracle)
#   make docs   the documentation site, into docs/_build/html
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= daskmeta-demo

.PHONY: demo test docs browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# After installing, compile daskmeta's numba code once (cached), so first runs do not.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m daskmeta.precompile
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m daskmeta.precompile
	touch $(VENV)/.runtime $@

demo: $(VENV)/.runtime
	$(BIN)/daskmeta demo --out $(OUT)

$(VENV)/.docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

# The report test opens a page in Debian's chromium: install it when missing (as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: could not install chromium (the report test will say so)"

test: $(VENV)/.test browser
	$(BIN)/ruff check daskmeta tests benchmarks
	$(BIN)/python -m pytest -q

docs: $(VENV)/.docs
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/_build docs/auto_examples docs/sg_execution_times.rst
