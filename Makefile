# Two commands do all the set-up from nothing: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_ARGS ?=
PKG_DIR := build/package-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[experiments,test,ray,docs]"
	touch $(STAMP)

.PHONY: install test lint docs package-check demo bench
install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs examples

# The documentation site (Sphinx): any warning, e.g. a broken reference, fails the build.
docs: $(STAMP)
	rm -rf docs/_build
	$(BIN)/python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html

# Build the sdist and the wheel, install the wheel into a clean virtual environment, smoke-test it.
package-check: $(STAMP)
	rm -rf $(PKG_DIR) && mkdir -p $(PKG_DIR)
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir $(PKG_DIR)/dist . > $(PKG_DIR)/build.log
	$(PYTHON) -m venv $(PKG_DIR)/venv
	$(PKG_DIR)/venv/bin/pip install -q "torch==2.13.0"
	$(PKG_DIR)/venv/bin/pip install -q $(PKG_DIR)/dist/*.whl
	cd $(PKG_DIR) && venv/bin/python ../../tests/package_smoke.py dist

# The CUDA tests are skipped without a GPU; their CPU dry run keeps their own code working.
test: lint docs package-check
	$(BIN)/python -m pytest -n 2 $(TEST_ARGS)
	LATENTGRAD_TEST_DEVICE=cpu $(BIN)/python -m pytest -q tests/cuda

demo: $(STAMP)
	$(BIN)/latentgrad demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mappings.py
