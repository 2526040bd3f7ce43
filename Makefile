# `make demo` and `make test` work from a clean clone: they create .venv, install, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ANN_VENV := .venv-ann

.PHONY: demo test postgres chromium wrk lint bench-quality bench-ann bench-build bench-serving bench-events clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidrec demo --workdir artifacts/demo

test: $(STAMP) postgres chromium
	$(BIN)/python -m pytest -q

# A Debian package a target needs, installed when absent (CI runs as root); otherwise the
# target fails with the command to run, and the tests that need it fail, never skip.
# $(call debian_package,<shell test that it is present>,<package>,<what needs it>)
define debian_package
	@if $(1); then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's $(2) for $(3)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	else \
		echo "$(2) is missing ($(3)): sudo apt-get install $(2)" >&2; \
		exit 1; \
	fi
endef

# The event store's tests start a throwaway PostgreSQL server (tests/pg_cluster.py) from the
# server programs of Debian's `postgresql` package (not on PATH: `pg_config --bindir`).
postgres:
	$(call debian_package,[ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1,postgresql,the event store tests)

# The inspector's browser test (tests/pipelines/test_inspector.py) drives Debian's chromium with
# Playwright, which cannot download its own browser here.
chromium:
	$(call debian_package,[ -x /usr/bin/chromium ],chromium,the inspector's browser test)

# HTTP load for the serving benchmark.
wrk:
	$(call debian_package,command -v wrk >/dev/null,wrk,the serving benchmark's HTTP load)

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py --out artifacts/bench/quality

# The offline build of 1M videos (embed + index + verify + bundle), its peak memory measured alone.
bench-build: $(STAMP)
	$(BIN)/python benchmarks/build.py --out artifacts/bench/build

# The request path at 1M videos in process, then two workers over HTTP: load, memory, hot swap.
bench-serving: $(STAMP) wrk
	$(BIN)/python benchmarks/serving.py --out artifacts/bench/serving

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
