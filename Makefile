# Every target runs in a virtual environment built from the requirements on first use.
# It lives outside the checkout, keyed by a hash of the requirement files, so a fresh clone
# reuses an environment that already exists on this machine and a changed requirement
# builds a new one.
PYTHON ?= python3
REQ_FILES := requirements.txt requirements-dev.txt constraints.txt
REQ_HASH := $(shell cat $(REQ_FILES) | sha256sum | cut -c1-12)
VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/lsmix/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.complete
ARGS ?=
EXP ?= quickstart
# Where runs and studies go (paths.output_dir): OUT=/tmp/x, or a paths.output_dir=... in ARGS.
# Training targets pass it on, and `make demo` / `make analysis` read the report from there.
OUT ?= $(or $(patsubst paths.output_dir=%,%,$(lastword $(filter paths.output_dir=%,$(ARGS)))),outputs)
OUT_ARG := $(if $(filter paths.output_dir=%,$(ARGS)),,$(if $(filter-out outputs,$(OUT)),paths.output_dir=$(OUT)))
RUNS ?= $(OUT)/quickstart

.DEFAULT_GOAL := help
.PHONY: help install train demo sweep analysis test test-fast test-cluster lint clean clean-outputs venv-path bench

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# No file prerequisites: the folder's name already holds the requirements' hash, and a fresh
# clone's files are newer than a shared environment's stamp, which must not rebuild it.
$(STAMP):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(INSTALL_PROJECT)
	touch $(STAMP)

# The project itself, editable and without dependencies (the requirements are in already):
# puts the console scripts lsmix-train, lsmix-analyse, lsmix-bench, lsmix-eval and lsmix-sync
# on the environment's path. Editable, so they run this checkout's code and read its conf/.
INSTALL_PROJECT = $(PY) -m pip install --quiet --no-deps -e .

# Optional extras (requirements-search.txt: the Optuna sweeper) layered on that environment,
# each version of the file with a stamp of its own: a change installs it, not the whole
# environment again (torch and all). Every target below needs the environment with them.
SEARCH_REQ := requirements-search.txt
SEARCH_STAMP := $(VENV)/.search-$(shell sha256sum $(SEARCH_REQ) | cut -c1-12)
ENV := $(SEARCH_STAMP)

$(SEARCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -r $(SEARCH_REQ) -c constraints.txt
	touch $@

install: $(ENV) ## Build the environment and install the project in it (console scripts lsmix-*)
	$(INSTALL_PROJECT)
	@echo "environment: $(VENV)"

train: $(ENV) ## One training run on the bundled digits (ARGS="key=value ..." to override; OUT=DIR: runs go to DIR, default outputs)
	$(PY) -m src.train $(OUT_ARG) $(ARGS)

demo: $(ENV) ## The quickstart study on the bundled digits, then its report (< 3 min on 2 cores; OUT=DIR: in DIR/quickstart)
	$(PY) -m src.train +experiment=quickstart hydra.callbacks.analysis.quiet=true $(OUT_ARG) $(ARGS)
	@cat $(OUT)/quickstart/analysis/report.md

sweep: $(ENV) ## A named study: make sweep EXP=noise_sweep [ARGS="dataset=... model=..."] [OUT=DIR]
	$(PY) -m src.train +experiment=$(EXP) $(OUT_ARG) $(ARGS)

analysis: $(ENV) ## Tables, plots and report of finished runs: make analysis RUNS=outputs/NAME (default OUT/quickstart)
	$(PY) -m analysis $(RUNS)

test: $(ENV) ## Run the test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(ENV) ## The tests without the slow end-to-end ones
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# A one-node SLURM on this machine for the cluster tests (scripts/cluster/slurm.sh: installs
# slurm-wlm and munge with apt where missing, needs root), taken down again whatever the tests
# did. Where it cannot come up the tests fail; LSMIX_NO_CLUSTER=1 skips them instead.
test-cluster: $(ENV) ## The cluster tests against a one-node SLURM started here (LSMIX_NO_CLUSTER=1: skip)
	@status=0; \
	if [ "$(LSMIX_NO_CLUSTER)" != 1 ]; then scripts/cluster/slurm.sh up || status=$$?; fi; \
	LSMIX_CLUSTER_TESTS=1 $(PY) -m pytest -q tests/cluster $(ARGS) || status=$$?; \
	if [ "$(LSMIX_NO_CLUSTER)" != 1 ]; then scripts/cluster/slurm.sh down || status=$$?; fi; \
	exit $$status

lint: $(ENV) ## Ruff over the code
	$(PY) -m ruff check src analysis tests

clean: ## Remove caches and build files; keeps outputs/ (results) and the environment
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Results take hours to remake: without FORCE=1 this only says what it would delete.
clean-outputs: ## Delete every run in outputs/ (only with FORCE=1; without, lists what would go)
ifeq ($(FORCE),1)
	rm -rf outputs/* multirun
	@mkdir -p outputs && touch outputs/.gitkeep
else
	@found="$$(ls -d outputs/* multirun 2>/dev/null)"; \
	if [ -n "$$found" ]; then \
		echo "make clean-outputs would delete:"; du -sh $$found; \
		echo "To delete them: make clean-outputs FORCE=1"; \
	else echo "outputs/ holds no runs: nothing to delete"; fi
endif

venv-path: ## Print the environment's folder
	@echo $(VENV)

bench: $(ENV) ## Time training step and epoch vs the reference loop (ARGS="--dataset digits")
	$(PY) -m src.tools.bench $(ARGS)

# No environment prerequisite: a bare GPU machine has none to build (no internet), so the
# script installs what is missing from .carry/wheels; where the project's environment exists,
# it runs there. Results go to $(OUT)/bench_gpu.
.PHONY: bench-gpu
bench-gpu: ## GPU figures for docs/performance.md, <= 8 min on one H100 (DRY=1: CPU dry run)
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/bench_gpu.sh --out $(OUT)/bench_gpu $(if $(DRY),--dry-run) $(ARGS)
