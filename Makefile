# nfvha: `make demo` and `make test` are the whole set-up on a fresh Debian 12/13 root.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps demo test lint bench clean-testbeds

deps:
	@bash scripts/setup.sh

demo: deps
	$(PY) -m nfvha demo

test: deps
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy

bench: deps
	$(PY) benchmarks/checkpoint_cost.py

# Remove testbeds of interrupted runs (names nfvha and nfvt*).
clean-testbeds: deps
	$(PY) -m nfvha testbed down --name nfvha || true
