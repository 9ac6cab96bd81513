# Two commands on a fresh machine: `make run` (pipeline on the embedded default, then the Dagster UI)
# and `make test`. Everything else is a convenience.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export CRYPTO_DATA_LOCATION ?= $(CURDIR)/data
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
DAYS ?=
SOURCE ?= auto
# Model-selection preset of the one-command demo: `fast` trains in about a minute; `make run MODEL=default`.
MODEL ?= fast
PORT ?= 3000

.PHONY: run materialize ui test lint format bench clean

# Re-install only when the dependency set changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

run: materialize ui

materialize: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/crypto-platform materialize --source $(SOURCE) --model-config $(MODEL) $(if $(DAYS),--days $(DAYS))

# `dagster dev` runs the webserver and the daemon (schedules, sensors) in the foreground.
ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/model_quality.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/stream.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
