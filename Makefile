# The two commands: `make demo` and `make test`.  Each sets up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-full bench-loads bench-gpu clean venv

venv: $(STAMP)

# torch first, pinned to the local CPU build, so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/pip install -q -e '.[bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check weightguard cli tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

# issue 17's table: three models, every load anchor, first call, encrypt like with like;
# ~15 min on 2 cores; run it on a quiet machine (trials under chrt -f 1 where permitted)
bench-loads: $(STAMP)
	$(BIN)/python -m benchmarks.run --loads

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

# On an NVIDIA machine (no network there): see benchmarks/README.md, "GPU run".
bench-gpu:
	bash benchmarks/gpu.sh run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-out benchmarks/work
