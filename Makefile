# The README's commands. Each one creates or refreshes the virtual environment in .venv/.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
# Data: $CIFAR10_DATA, else the shared copy beside the project, else ./data (fetched on demand).
DATA_DIR ?= $(or $(CIFAR10_DATA),$(wildcard ../shared/data),data)

.PHONY: venv run test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

run: venv  ## train the default recipe and print the final test accuracy
	$(VENV)/bin/cifarlab train --data-dir "$(DATA_DIR)" --download

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

test: venv lint  ## unit tests + a real-data smoke run when the data is there
	CIFAR10_DATA="$(abspath $(DATA_DIR))" $(VENV)/bin/pytest -q

bench: venv  ## full benchmark runs (tens of minutes); write benchmarks/results/*.json
	CIFAR10_DATA="$(abspath $(DATA_DIR))" $(VENV)/bin/python -m benchmarks.default

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
