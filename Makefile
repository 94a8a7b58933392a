# The two commands of the README: `make reproduce` (the main job) and `make test` (ruff's lint and format
# check, then the test suite).
# Each builds .venv on first use: PyTorch 2.13.0 (the CPU build this machine ships), then kadam.
# `make test-oldest-torch` (CI runs it after `make test`): the optimizer tests against the oldest torch
# pyproject.toml declares, in .venv-oldest-torch (ci/oldest_torch.sh).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= kadam-report
PROFILE ?= quick

.PHONY: reproduce demo test test-oldest-torch clean

$(BIN)/kadam: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[experiments,distributed,dev,jax,integrations,triton]'
	touch $@

reproduce: $(BIN)/kadam
	$(BIN)/kadam reproduce --profile $(PROFILE) --out $(OUT)

demo: $(BIN)/kadam
	$(BIN)/kadam demo

test: $(BIN)/kadam
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

test-oldest-torch:
	PYTHON=$(PYTHON) bash ci/oldest_torch.sh

clean:
	rm -rf $(VENV) .venv-oldest-torch $(OUT)
