# VisionTrack: `make` alone lists every target.
SHELL := bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

##@ Getting started

.PHONY: help
help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: up
up: deps venv ingestor-build ## Run the whole stack locally (Postgres, Redis, services, nginx on :8080, simulator)
	$(PY) -m stack.local up

.PHONY: down
down: ## Stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m stack.local down; else echo "nothing to stop"; fi

.PHONY: status
status: ## Show which local processes are running
	@$(PY) -m stack.local status

.PHONY: logs
logs: ## Follow the logs of every local process
	tail -F run/logs/*.log

##@ Development

.PHONY: deps
deps: ## Install missing system packages (apt: Postgres, Redis, nginx, Prometheus, wrk, Rust)
	./scripts/install-deps.sh

$(STAMP): requirements/dev.txt requirements/constraints.txt services/*/requirements.txt services/*/pyproject.toml
	@echo "==> creating $(VENV) and installing pinned Python dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/dev.txt -c requirements/constraints.txt
	$(PIP) install -q --no-deps -e services/common -e services/registry -e services/query -e services/aggregator
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv with the pinned Python dependencies and the services installed

.PHONY: test
test: deps venv ingestor-build ## Run every test: lint, unit, contract, integration, end-to-end, chart, observability, Rust
	$(VENV)/bin/ruff check services stack bench tests
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory ingestor-test

.PHONY: test-unit
test-unit: venv ## Run only the tests that need no servers
	$(PY) -m pytest -q -m unit

.PHONY: test-integration
test-integration: venv ## Run the tests with real Postgres, Redis, gunicorn, Celery and nginx
	$(PY) -m pytest -q -m "integration or e2e"

.PHONY: test-scale
test-scale: deps venv ingestor-build ## The e2e suite and failover drills on a Redis Cluster and a Postgres primary with a standby
	VT_TEST_BACKENDS=replicated $(PY) -m pytest -q tests/e2e tests/scale

.PHONY: lint
lint: venv ## Lint the Python code (ruff: unused and undefined names, likely bugs)
	$(VENV)/bin/ruff check services stack bench tests

.PHONY: bench
bench: deps venv ingestor-build ## Measure throughput and latency; prints tables
	$(PY) -m bench.pipeline
	$(MAKE) --no-print-directory ingestor-bench
	$(MAKE) --no-print-directory mqtt-bench
	$(PY) -m bench.end_to_end
	$(PY) -m bench.scale_out

.PHONY: migrate
migrate: venv ## Apply database migrations to DATABASE_URL
	$(VENV)/bin/visiontrack migrate

.PHONY: settings
settings: venv ## Print the table of every setting
	$(VENV)/bin/visiontrack settings

.PHONY: settings-doc
settings-doc: venv ## Regenerate the settings table of docs/settings.md from the code (a unit test checks it)
	$(VENV)/bin/visiontrack settings --update docs/settings.md

.PHONY: clean
clean: down ## Stop the stack and remove run/ (local data and logs)
	rm -rf run

include $(wildcard mk/*.mk)
