# One command runs all tests: `make test` (creates .venv, installs, runs pytest).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test lint install demo bench bench-pg bench-fetch bench-dispatch bench-users bench-prune bench-dashboard bench-pg-claims bench-lifecycle clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

install: $(STAMP)

# Two processes, a test file each at a time (module-scoped stacks stay whole); PYTEST_WORKERS=0 runs serially.
# Files go out in collection order (tests/conftest.py puts the longest first), not xdist's most-tests-first.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	DEMO_EXIT=$(DEMO_EXIT) $(BIN)/python dev/demo.py

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py

bench-fetch: $(STAMP)
	$(BIN)/python bench/fetch_pending.py

clean:
	rm -rf $(VENV) .pytest_cache

bench-dispatch: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --only dispatch

bench-users: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --only users

bench-prune: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --only prune

bench-dashboard: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --only dashboard

bench-lifecycle: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --only lifecycle

bench-pg-claims: $(STAMP)
	$(BIN)/python bench/pg_claims.py

# The bench on PostgreSQL with two web hosts: DATABASE_URL's server, or a throwaway cluster (dev/postgres.py).
bench-pg: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --postgres
