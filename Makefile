# `make demo` and `make test` set everything up on a fresh machine (a virtual environment in
# .venv); `make lint` runs ruff and mypy; `make bench` prints the benchmark ratios.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.mixq-installed

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip takes the local CPU wheel instead of several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ray]"
	# Debian's chromium renders the HTML report in its test (needs root and apt; else skipped)
	command -v chromium >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: chromium not installed; the HTML report test will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mixq demo --out out/demo

test: $(STAMP)
	MIXQ_PROGRESS=0 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/sim_overhead.py
	MIXQ_PROGRESS=0 $(BIN)/python bench/sensitivity_speed.py
	MIXQ_PROGRESS=0 $(BIN)/python bench/export_speed.py
	MIXQ_PROGRESS=0 $(BIN)/python bench/transforms.py
	MIXQ_PROGRESS=0 $(BIN)/python bench/search_quality.py
	# mixq vs ORT dynamic / static and NNCF (~3.5 min; the full run: python bench/peers.py)
	MIXQ_PROGRESS=0 $(BIN)/python bench/peers.py --quick

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
