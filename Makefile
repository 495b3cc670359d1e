# Set-up and the two main commands. `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On this CPU machine the pin resolves to a local CPU wheel; on a CUDA box the same pin gives CUDA torch.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Omniglot: datasets/omniglot (download target) unless a local copy sits beside the checkout.
SHARED_OMNIGLOT := $(abspath ../shared/datasets/omniglot)
DATA_ARGS := $(if $(wildcard datasets/omniglot/images_background.zip),,$(if $(wildcard $(SHARED_OMNIGLOT)/images_background.zip),dataset.source=$(SHARED_OMNIGLOT)))
ARGS ?=

.PHONY: install train smoke test lint bench clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/mamlpp-train experiment=quick $(DATA_ARGS) $(ARGS)

smoke: install
	$(BIN)/mamlpp-train experiment=smoke $(DATA_ARGS) $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks script_generation_tools
	$(BIN)/ruff format --check src tests benchmarks script_generation_tools

bench: install
	$(BIN)/python benchmarks/bench_meta_step.py $(ARGS)
