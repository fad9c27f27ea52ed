# The two commands a newcomer needs: `make demo` and `make test`. `make help` lists every target.
# Each target creates .venv if it is missing and installs from this repository's own files; a
# second run reinstalls only what changed (the stamps below depend on the requirement files).

PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= /tmp/sequencer-demo
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST := $(BIN)/python -m pytest -q

.DEFAULT_GOAL := help
.PHONY: help install demo test test-quick test-slow clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The runtime stack at the tested versions, then this package with its training extras.
$(VENV)/.installed-train: $(BIN)/python pyproject.toml requirements.txt
	$(PIP) install -r requirements.txt
	$(PIP) install --no-build-isolation -e '.[train]'
	@touch $@

# The test extras; timm without its dependencies (its torchvision would replace the CPU torch).
$(VENV)/.installed-test: $(VENV)/.installed-train requirements-test.txt
	$(PIP) install -r requirements-test.txt
	$(PIP) install --no-build-isolation -e '.[test]'
	$(PIP) install --no-deps timm==1.0.31
	@touch $@

install: $(VENV)/.installed-train ## Create .venv and install the package for training.

demo: $(VENV)/.installed-train ## Train the offline demo on the CPU (WORKDIR=DIR, default /tmp/sequencer-demo).
	$(BIN)/python main.py --config=configs/demo.py --workdir=$(WORKDIR)

test: $(VENV)/.installed-test ## The whole suite: the quick tier, then the slow tier.
	$(PYTEST) -n auto --dist worksteal -m 'not slow' tests
	$(PYTEST) -m slow tests

test-quick: $(VENV)/.installed-test ## The quick tier: unit and parity tests, no subprocesses.
	$(PYTEST) -n auto --dist worksteal -m 'not slow' tests

test-slow: $(VENV)/.installed-test ## The slow tier: processes, kills, end-to-end training.
	$(PYTEST) -m slow tests

clean: ## Remove .venv and the caches (never a WORKDIR).
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
