# Two commands for a new user; each sets up .venv by itself.
#   make demo   ALE meta-analysis with FWE correction on simulated data, on a local Dask cluster
#   make test   the whole test suite (NiMARE 0.22.1 is installed as the parity oracle)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= daskmeta-demo

.PHONY: demo test lint bench clean

$(BIN)/daskmeta: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/daskmeta

demo: $(BIN)/daskmeta
	$(BIN)/daskmeta demo --out $(OUT)

test: $(BIN)/daskmeta
	$(BIN)/ruff check daskmeta tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(BIN)/daskmeta
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
