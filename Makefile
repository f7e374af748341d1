# Every target works on a fresh machine: it creates .venv and installs the pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real data sets for benchmarks (never downloaded); override with `make bench PRUNE_DATA_DIR=/path`.
PRUNE_DATA_DIR ?= $(abspath ../shared/data)
export PRUNE_DATA_DIR

.PHONY: demo test test-fast bench experiments install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/prune demo

# The whole suite, slow cases included: what CI runs (.ci/run calls `make test`).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# For development: the suite without the cases marked @pytest.mark.slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py --out results/bench

experiments: $(STAMP)
	PY=$(BIN)/python PRUNE=$(BIN)/prune bash benchmarks/run_all.sh results

clean:
	rm -rf $(VENV) prune-demo results
