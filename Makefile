# Set-up and the two main commands. `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On this CPU machine the pin resolves to a local CPU wheel; on a CUDA box the same pin gives CUDA torch.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Omniglot lives in datasets/omniglot (the download target). A local copy beside the checkout
# is linked there, so every mamlpp-train command finds it without dataset.source=.
SHARED_OMNIGLOT := $(abspath ../shared/datasets/omniglot)
ARGS ?=

.PHONY: install data train smoke test test-fast lint bench clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data:
	@for zip in images_background.zip images_evaluation.zip; do \
	  if [ ! -e datasets/omniglot/$$zip ] && [ -f $(SHARED_OMNIGLOT)/$$zip ]; then \
	    mkdir -p datasets/omniglot && ln -s $(SHARED_OMNIGLOT)/$$zip datasets/omniglot/$$zip; \
	    echo "linked datasets/omniglot/$$zip -> $(SHARED_OMNIGLOT)/$$zip"; \
	  fi; \
	done

train: install data
	$(BIN)/mamlpp-train experiment=quick $(ARGS)

smoke: install data
	$(BIN)/mamlpp-train experiment=smoke $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

# The in-process tier: no test that starts mamlpp-train or a launcher (see tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks script_generation_tools
	$(BIN)/ruff format --check src tests benchmarks script_generation_tools
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_meta_step.py $(ARGS)

# Issue 21: ours against the published MAML++ code, side by side (PUBLISHED: a checkout of
# github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch; default .gpu/published from gpu-prepare).
.PHONY: bench-side-by-side bench-scaling gpu-prepare gpu-dry-run
PUBLISHED ?= .gpu/published
bench-side-by-side: install
	$(BIN)/python benchmarks/bench_side_by_side.py --published $(PUBLISHED) $(ARGS)

bench-scaling: install
	$(BIN)/python benchmarks/bench_scaling.py --json benchmarks/scaling_cpu.json \
	  --plot benchmarks/scaling_cpu.png $(ARGS)

# Stage what a GPU machine without internet lacks (PUBLISHED_SRC: the published checkout).
gpu-prepare: install
	PUBLISHED_SRC=$${PUBLISHED_SRC:-../HowToTrainYourMAMLPytorch} bash benchmarks/gpu_prepare.sh

# The whole GPU suite on this CPU with tiny budgets; CUDA-only parts say they are skipped.
gpu-dry-run: gpu-prepare
	DEVICE=cpu PYTHON=$(BIN)/python OUT=$${OUT:-/tmp/mamlpp_gpu_dry_run} bash benchmarks/gpu_suite.sh
