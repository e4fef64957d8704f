# One entry point for humans and CI. `make run` and `make test` need nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run demo test test-e2e test-chaos lint typecheck migrate bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup          ## the whole stack on embedded defaults; Ctrl-C stops it
	$(BIN)/embedder run

demo: setup         ## the same, one shot: ingest the sample corpus, summarise, stop
	$(BIN)/embedder demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck   ## lint, types, then every test: unit, integration, end-to-end, chaos
	$(BIN)/pytest -m "chaos or not chaos"

test-e2e: setup
	$(BIN)/pytest -m e2e

test-chaos: setup
	$(BIN)/pytest -m chaos

migrate: setup
	$(BIN)/embedder migrate

bench: setup
	$(BIN)/python bench/ingest.py

clean:
	rm -rf .data/test
