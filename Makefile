# `make demo` and `make test` work from a clean clone: they create .venv, install, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ANN_VENV := .venv-ann

.PHONY: demo test postgres chromium lint bench-quality bench-ann bench-build bench-events clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidrec demo --workdir artifacts/demo

test: $(STAMP) postgres chromium
	$(BIN)/python -m pytest -q

# The event store's tests start a throwaway PostgreSQL server (tests/pg_cluster.py) from the
# server programs of Debian's `postgresql` package (not on PATH: `pg_config --bindir`). Installed
# here when absent (CI runs as root); the tests fail, never skip, without them.
postgres:
	@if [ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's postgresql for the event store tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
		echo "PostgreSQL's server programs are missing: sudo apt-get install postgresql" >&2; \
		exit 1; \
	fi

# The inspector's browser test (tests/pipelines/test_inspector.py) drives Debian's chromium with
# Playwright, which cannot download its own browser here. Installed when absent (CI runs as
# root); the test fails, never skips, without it.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the inspector's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing: sudo apt-get install chromium" >&2; \
		exit 1; \
	fi

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py --out artifacts/bench/quality

# The offline build of 1M videos (embed + index + verify + bundle), its peak memory measured alone.
bench-build: $(STAMP)
	$(BIN)/python benchmarks/build.py --out artifacts/bench/build

# ScaNN breaks tensorflow-recommenders' import, so the ANN benchmark has its own environment.
$(ANN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ANN_VENV)
	$(ANN_VENV)/bin/pip install --quiet --upgrade pip
	$(ANN_VENV)/bin/pip install --quiet -e '.[ann-bench]'
	touch $@

bench-ann: $(ANN_VENV)/.installed
	$(ANN_VENV)/bin/python benchmarks/ann.py --sizes 100000 1000000 --out artifacts/bench/ann

# Feedback ingestion, recommend latency and an outage, on SQLite and PostgreSQL (a few minutes).
bench-events: $(STAMP) postgres
	$(BIN)/python benchmarks/events.py --out artifacts/bench/events

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(ANN_VENV) artifacts build *.egg-info
