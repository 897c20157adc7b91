# The two commands of the README: `make serve` and `make test`. Both run `setup`
# first, which installs what a fresh machine lacks and is a quick no-op afterwards.
#
#   make serve ARGS="--port 9000 --model tiny.en"
#   make test PYTEST_ARGS="-k models -x"
#   make check       (only ruff, mypy and the import contracts)

SHELL := /bin/bash
PYTHON ?= python3
DATA_DIR ?= ./data
ARGS ?=
PYTEST_ARGS ?=

VENV_PY := .venv/bin/python

.PHONY: setup serve check test

setup:
	@PYTHON="$(PYTHON)" DATA_DIR="$(DATA_DIR)" bash scripts/setup.sh

serve: setup
	$(VENV_PY) -m app serve $(ARGS)

# Lint (with the async rules), types, and the layering contracts of pyproject.toml;
# each stops the run on its first finding, before the slower suite starts.
check: setup
	$(VENV_PY) -m ruff check .
	$(VENV_PY) -m mypy
	.venv/bin/lint-imports

test: check
	$(VENV_PY) -m pytest -q $(PYTEST_ARGS)
