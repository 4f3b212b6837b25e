# Quick start: `make run` serves on the defaults, `make test` runs the whole suite.
# Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run dev test lint format system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Files only read at run time (the /docs assets), without their declared dependencies.
INSTALL_ASSETS := $(BIN)/pip install --quiet --no-deps -r requirements-assets.txt

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.runtime: requirements.txt requirements-assets.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(INSTALL_ASSETS)
	touch $@

$(VENV)/.dev: requirements.txt requirements-assets.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(INSTALL_ASSETS)
	$(BIN)/pip install --quiet --no-deps --editable .
	touch $@ $(VENV)/.runtime

install: $(VENV)/.dev  ## runtime + test/lint tools + the clustr-aio console script

run: $(VENV)/.runtime  ## serve on the defaults (config.toml < .env < environment)
	$(BIN)/python -m clustr_aio

dev: $(VENV)/.runtime  ## serve, restarting on code changes
	RELOAD=true $(BIN)/python -m clustr_aio

system-deps:  ## Debian packages the tests drive (curl, …); installs only what is missing
	./.ci/system-deps

# The JavaScript tus clients of tests/tus/ (tus-js-client, Uppy's build), from the lock file.
JS_TESTS := tests/tus/js
$(JS_TESTS)/node_modules/.installed: $(JS_TESTS)/package.json $(JS_TESTS)/package-lock.json
	npm ci --prefix $(JS_TESTS) --no-audit --no-fund --loglevel=error
	touch $@

test: install system-deps $(JS_TESTS)/node_modules/.installed  ## the whole suite, through real servers, sockets and clients
	$(BIN)/python -m pytest

$(VENV)/.bench: requirements.txt requirements-assets.txt requirements-bench.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(INSTALL_ASSETS)
	touch $@

# clustr_aio against nginx (dav PUT, static) on this machine, ~6 min with the default 5 rounds;
# BENCH_ROUNDS, BENCH_ONLY=L,B,… and more: see bench/run.py. Writes bench/results/.
# TL and TB's reference tus server, @tus/server with @tus/file-store, from its lock file.
bench/tus_reference/node_modules/.installed: bench/tus_reference/package.json bench/tus_reference/package-lock.json
	npm ci --prefix bench/tus_reference --no-audit --no-fund --loglevel=error
	touch $@

# Then STORAGE=s3 against SeaweedFS (L3, B3: bench/s3.py).
bench: $(VENV)/.bench bench/tus_reference/node_modules/.installed  ## benchmark against nginx (and @tus/server, SeaweedFS)
	./.ci/system-deps wrk:wrk
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.s3

lint: install $(VENV)/.bench  ## ruff + mypy --strict (bench/ included, hence its packages)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
