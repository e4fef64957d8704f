# One entry point for humans and CI. `make run` and `make test` need nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every dependency's version, pinned: CI (below) and the image (Dockerfile) install with
# `-c $(LOCK)`. Constraints pin versions without adding packages, so one file serves both:
# the image installs only the runtime dependencies, CI the `dev` extra (which includes `local`).
LOCK   := constraints.txt

.PHONY: setup system-deps run demo test test-e2e test-chaos lint typecheck migrate bench clean lock lock-upgrade

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# `make lock` after editing pyproject.toml's dependencies: resolves again, keeping every pin
# that still fits. `make lock-upgrade`: the newest releases pyproject.toml allows. Either
# resolves for Python 3.11 on every platform (markers in the file) from the package index.
# Needs only uv (pinned in the dev extra), not an installed project, so a pin that no longer
# fits pyproject.toml can still be re-locked.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	--custom-compile-command "make lock" --quiet --output-file $(LOCK)

lock: $(BIN)/uv
	$(UV_COMPILE)

lock-upgrade: $(BIN)/uv
	$(UV_COMPILE) --upgrade

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) uv

# What the tests need from the system: Debian's PgBouncer (it has OpenSSL; it terminates TLS
# in front of the embedded server, which has none), redis-server (a private one is started
# when no Redis answers), chromium (Flower's pages in a real browser, driven by playwright)
# and prometheus for its promtool (the alert rules' tests). An entry is a command, or
# `command:package` when the package that provides it has another name. Installed with apt
# when we are root; otherwise one line says what to install, before anything runs.
SYSTEM_PACKAGES := pgbouncer redis-server chromium promtool:prometheus
system-deps:
	@missing=""; \
	for entry in $(SYSTEM_PACKAGES); do \
	  cmd=$${entry%%:*}; pkg=$${entry#*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "make test needs$$missing: install it (Debian/Ubuntu: sudo apt-get install$$missing), then run make test again" >&2; \
	    exit 2; \
	  fi; \
	fi

run: setup          ## the whole stack on embedded defaults; Ctrl-C stops it
	$(BIN)/python -m devstack run

demo: setup         ## the same, one shot: ingest the sample corpus, summarise, stop
	$(BIN)/python -m devstack demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: system-deps setup lint typecheck   ## lint, import layers, types, then every test: unit, integration, end-to-end, chaos, bench smoke
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
