# Two commands for a new user; each sets up .venv by itself the first time.
#   make demo   ALE meta-analysis with Monte Carlo FWE on simulated data, on a local Dask cluster
#   make test   the whole test suite (installs NiMARE 0.22.1 as the parity oracle)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= daskmeta-demo

.PHONY: demo test lint bench clean

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

test: $(VENV)/.test
	$(BIN)/ruff check daskmeta tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
