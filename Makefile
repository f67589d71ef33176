# Two commands set up a fresh machine: `make repro` (the pipeline) and `make test` (the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install repro test ui clean

# The stamp is rebuilt when pyproject.toml changes, so `make` after a pull installs what it needs.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

test: install
	python -m pytest

ui: install
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean:
	rm -rf $(VENV)
