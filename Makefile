# `make demo`: set up .venv and train BBN on digits-LT.  `make test`: set up, check the layer
# contract (pyproject.toml [tool.importlinter]) and run the tests.
PYTHON ?= python3
VENV ?= .venv
# Test processes: one per core (pytest-xdist); a test file stays in one process, so its
# module fixtures (trained runs) are made once. WORKERS=0 runs everything in this process.
WORKERS ?= auto
BIN := $(VENV)/bin

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/bbn train configs/digits_bbn.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install-dev
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
