# Two commands set up a fresh machine: `make repro` (the pipeline) and `make test` (the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install repro full gpu-full real scales test lint format ui clean

# The stamp is rebuilt when pyproject.toml changes, so `make` after a pull installs what it needs.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

# The full-quality profile (x3: the seed network, 150,000 steps of batch 20, the recipe the README's
# headline scores come from) and the other scales, as DVC experiments: each is its own MLflow run,
# scored on Set5/Set14/BSD100, registered as espcn-x<scale>; --temp runs them in a copy under
# .dvc/tmp/exps, leaving the workspace as it is (`dvc exp apply` brings one in). bench/gpu.sh reads
# FULL_PROFILE from here.
FULL_PROFILE := train.arch=seed train.batch_size=20 train.steps_per_epoch=1000 train.epochs=150

full: install
	dvc exp run --temp $(addprefix -S ,$(FULL_PROFILE))

# The full profile's quality in a fraction of its steps, for a GPU: the default network (contrast)
# on batches of 64 at lr 0.003, 24,000 steps (the README's GPU table; on a 2-core CPU it would take
# well over an hour). bench/gpu.sh reads GPU_FULL from here.
GPU_FULL := train.batch_size=64 train.lr=0.003 train.steps_per_epoch=2000 train.epochs=12

gpu-full: install
	dvc exp run --temp $(addprefix -S ,$(GPU_FULL))

# A model for compressed, noisy pictures (messengers' JPEGs, old scans, video calls): trained on the
# params' degrade chain, scored on JPEG q50 inputs, registered as espcn-x<scale>-real with a champion
# of its own. `srctl infer --model espcn-x3-real@champion photo.jpg` uses it.
real: install
	dvc exp run --temp -S train.degradation=real

scales: install
	dvc exp run --temp -S scale=2
	dvc exp run --temp -S scale=4

test: install
	python -m pytest

# ruff (configured in pyproject.toml): lint rules and the formatter's check; `make format` applies both fixes
lint: install
	ruff check .
	ruff format --check .

format: install
	ruff check --fix .
	ruff format .

ui: install
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean:
	rm -rf $(VENV)
