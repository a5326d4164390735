# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make demo   runs the governed gateway end to end on embedded defaults
#   make test   lint, type-check and test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint typecheck bench bench-quick lock wheelhouse clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama.cpp is compiled from source here: portable kernels, not ones tuned to (and crashing on) this CPU.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -e '.[dev,models]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff format --check mcp_gateway tests examples bench
	$(BIN)/ruff check mcp_gateway tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -m "not slow" -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Benchmarks: a few minutes (bench-quick: about two); write bench/results.json and print the tables.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# The offline bundle (docs/offline-install.md), built on a connected linux x86_64 machine with CPython 3.11:
#   make lock        re-resolve the runtime dependencies into requirements.lock (versions and sha256; needs PyPI)
#   make wheelhouse  dist/wheelhouse/: every wheel from the lock plus the gateway's own, an install lock pinning
#                    each file's sha256, sbom.cdx.json and SHA256SUMS; installed once offline to prove it complete
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --generate-hashes --extra postgres --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

wheelhouse: $(STAMP)
	scripts/wheelhouse.sh $(BIN)/python dist/wheelhouse

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
