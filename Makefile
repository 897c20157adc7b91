# The two commands of the README: `make serve` and `make test`. Both run `setup`
# first, which installs what a fresh machine lacks and is a quick no-op afterwards.
#
#   make serve ARGS="--port 9000 --model tiny.en"
#   make test PYTEST_ARGS="-k models -x"

SHELL := /bin/bash
PYTHON ?= python3
DATA_DIR ?= ./data
ARGS ?=
PYTEST_ARGS ?=

VENV_PY := .venv/bin/python

.PHONY: setup serve test

setup:
	@PYTHON="$(PYTHON)" DATA_DIR="$(DATA_DIR)" bash scripts/setup.sh

serve: setup
	$(VENV_PY) -m app serve $(ARGS)

test: setup
	$(VENV_PY) -m pytest -q $(PYTEST_ARGS)
