# `make demo` and `make test` work from a clean clone: they create .venv, install, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ANN_VENV := .venv-ann

.PHONY: demo test lint bench-quality bench-ann bench-build clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidrec demo --workdir artifacts/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

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

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(ANN_VENV) artifacts build *.egg-info
