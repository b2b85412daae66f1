# nfvha: `make demo` and `make test` are the whole set-up on a fresh Debian 12/13 root.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps demo test soak fuzz lint bench clean-testbeds

deps:
	@bash scripts/setup.sh

demo: deps
	$(PY) -m nfvha demo

test: deps
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The fencing faults of tests/e2e/test_fencing.py, the manager cluster's leader faults of
# tests/e2e/test_manager_cluster.py and the forwarder pair's takeovers of
# tests/e2e/test_forwarder_pair.py, 20 repetitions each (make test: one or two).
SOAK_REPS ?= 20
soak: deps
	NFVHA_REPS=$(SOAK_REPS) NFVHA_CLUSTER_REPS=$(SOAK_REPS) NFVHA_PAIR_REPS=$(SOAK_REPS) $(PY) -m pytest -q -s -p no:cacheprovider tests/e2e/test_fencing.py tests/e2e/test_manager_cluster.py tests/e2e/test_forwarder_pair.py $(PYTEST_ARGS)

# Schemathesis against the three APIs with more examples per operation (make test: 10).
FUZZ_EXAMPLES ?= 200
fuzz: deps
	NFVHA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy

# Every experiment, then docs/evaluation.md regenerated from results/*.json.
# Quick mode (each experiment under a minute) by default; FULL=1 for the full runs.
BENCH_MODE := $(if $(FULL),,--quick)
BENCH_EXPERIMENTS := checkpoint_cost recovery rpo dataplane campaign scale idle_cost tcp_lock manager_failover

bench: deps
	@set -e; for e in $(BENCH_EXPERIMENTS); do \
	  echo "== benchmarks/$$e.py $(BENCH_MODE)"; \
	  $(PY) benchmarks/$$e.py $(BENCH_MODE); \
	done
	$(PY) benchmarks/report.py

# Remove testbeds of interrupted runs (names nfvha and nfvt*).
clean-testbeds: deps
	$(PY) -m nfvha testbed down --name nfvha || true
