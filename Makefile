# The fabric's developer entry points. `make demo` and `make test` are the
# README's two commands on a fresh Debian machine with Python 3.11.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo up test test-fast lint images clean migration

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

## Start the fabric on embedded defaults, run a sample feed end to end, stop.
demo: install
	$(BIN)/chris demo $(if $(BACKEND),--backend $(BACKEND))

## Run the fabric in the foreground (Ctrl-C stops it).
up: install
	$(BIN)/chris up $(if $(BACKEND),--backend $(BACKEND))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The whole suite: lint, types, every test (engine-backed ones skip locally
## when the engine is missing, and fail under CI=true).
test: lint
	$(BIN)/pytest -ra --durations=25

## Unit and API tests only (no end-to-end, no engines).
test-fast: install
	$(BIN)/pytest -ra -m "not slow"

## Build the Python base image and the reference plugin images (no pulls).
images: install
	$(BIN)/python plugins/images/build.py

## Autogenerate CUBE's next database migration from the models: make migration MSG="add notes"
migration: install
	@test -n "$(MSG)" || { echo 'usage: make migration MSG="what changes"'; exit 1; }
	$(BIN)/python -m cube.db.migrate revision -m "$(MSG)"
	$(BIN)/ruff format -q cube/db/migrations/versions

clean:
	rm -rf $(VENV) .chris build *.egg-info .pytest_cache .mypy_cache .ruff_cache
