#!/usr/bin/env bash
# The one GPU run (H100/H200, no network): checks, then benchmarks, one JSON result.
#
#   bash benchmarks/gpu.sh wheels [PYVER]   # on a machine WITH network: fetch the wheels the
#                                           # GPU machine lacks into benchmarks/work/wheels
#                                           # (PYVER of the GPU machine's python3, default 3.12)
#   bash benchmarks/gpu.sh run [ARGS...]    # on the GPU machine: install those wheels into
#                                           # /tmp/wg-site (no network), then in order:
#     1. preflight: import every runtime dependency (stops with status 3 naming the missing)
#     2. pytest -m cuda (tests/load/test_cuda.py: equality, review fixes, alignment probe
#        = a 3-byte U8 tensor, an fp8 matrix and a bf16 bias, then an fp8 GEMM)
#     3. GPU-decrypt kernel GB/s vs the pinned H2D copy; secure load with decrypt_on=gpu
#        and cpu vs safetensors.torch.load_file(device="cuda")   (benchmarks/gpu_checks.py)
#     4. python3 -m benchmarks.run --gpu ARGS...  (WG_GPU_SIZES, default 1024 MiB)
#   bash benchmarks/gpu.sh dry-run          # the same steps on a CPU machine: fake device,
#                                           # Triton interpreter, cases listed not timed
#
# The GPU image has python3 with a CUDA build of torch (2.11) and triton, nothing else.
# Everything else travels as wheels: the runtime dependencies (cryptography, blake3, hvac,
# boto3, numpy, safetensors, click, scipy, sigstore and what they need), pytest +
# hypothesis, and for the comparisons tensorizer (+libsodium.so) and fastsafetensors.
# weightguard itself runs from the source tree (PYTHONPATH).
#
# One result: benchmarks/results/gpu-run-<stamp>.json (copied to $OUT when set) holding
# the preflight, the pytest summary, the kernel/load figures and the benchmark file.
# Without CUDA, `run` stops with "error: --gpu needs CUDA: ..." and exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${WG_WHEELS:-$ROOT/benchmarks/work/wheels}
# resolved with their dependencies (none of them pulls torch)
RUNTIME_PKGS=(cryptography blake3 hvac boto3 numpy safetensors click scipy sigstore
              pytest pytest-timeout hypothesis)
# taken as they are (they depend on torch, which the image has)
BENCH_PKGS=(tensorizer libnacl redis hiredis fastsafetensors)
pin() {  # NAME -> NAME==VERSION as installed in .venv here (same versions as the CPU runs)
    local v
    v=$(.venv/bin/python -c "import importlib.metadata as m,sys; print(m.version(sys.argv[1]))" "$1" \
        2>/dev/null || true)
    if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

cmd=${1:-run}
shift || true
case "$cmd" in
wheels)
    pyver=${1:-3.12}
    mkdir -p "$WHEELS"
    plat=(--only-binary=:all: --python-version "$pyver" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
          --platform manylinux1_x86_64 --platform any)
    specs=()
    for p in "${RUNTIME_PKGS[@]}"; do specs+=("$(pin "$p")"); done
    python3 -m pip download "${plat[@]}" -d "$WHEELS" "${specs[@]}"
    specs=()
    for p in "${BENCH_PKGS[@]}"; do specs+=("$(pin "$p")"); done
    python3 -m pip download --no-deps "${plat[@]}" -d "$WHEELS" "${specs[@]}"
    sodium=$(ldconfig -p | awk '/libsodium\.so\.[0-9]+ .*x86-64/ {print $NF; exit}')
    if [ -n "$sodium" ]; then
        cp -L "$sodium" "$WHEELS/libsodium.so"
    else
        echo "warning: no libsodium here (apt-get install libsodium23); tensorizer" \
             "encryption will be unavailable on the GPU machine" >&2
    fi
    du -sh "$WHEELS"
    ;;
run|dry-run)
    PY=${PYTHON:-python3}
    DRY=""
    if [ "$cmd" = dry-run ]; then
        DRY=1
        PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
        export TRITON_INTERPRET=1
    elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        2>/dev/null; then
        echo "error: --gpu needs CUDA: $PY has no torch with a visible NVIDIA GPU" >&2
        (nvidia-smi -L >&2 2>/dev/null) || true
        exit 2
    fi
    SITE=${WG_SITE:-/tmp/wg-site}
    if [ -z "$DRY" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    elif [ -z "$DRY" ]; then
        echo "note: no wheels in $WHEELS; using what $PY already has" >&2
    fi
    if [ -f "$WHEELS/libsodium.so" ]; then
        export LD_LIBRARY_PATH="$WHEELS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    export PYTHONPATH="$ROOT:$ROOT/cli:${PYTHONPATH:-}"
    export PYTHONUNBUFFERED=1 WEIGHTGUARD_QUIET_KEYFILE=1
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    W=$(mktemp -d /tmp/wg-gpu-run.XXXXXX)
    mkdir -p benchmarks/results
    RESULT=benchmarks/results/gpu-run-$stamp.json
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        >"$W/gpu.txt" 2>/dev/null || echo "none" >"$W/gpu.txt"
    echo "== 1. preflight" >&2
    pre=0
    "$PY" -m benchmarks.gpu_checks preflight >"$W/preflight.json" || pre=$?
    cat "$W/preflight.json" >&2
    tests=skipped checks=skipped bench=skipped
    if [ "$pre" = 0 ]; then
        echo "== 2. pytest -m cuda" >&2
        tests=0
        timeout 900 "$PY" -m pytest -q -p no:cacheprovider -m cuda -o addopts="" \
            tests/load/test_cuda.py >"$W/pytest.txt" 2>&1 || tests=$?
        tail -25 "$W/pytest.txt" >&2
        echo "== 3. GPU decryption and loads" >&2
        checks=0
        timeout 900 "$PY" -m benchmarks.gpu_checks kernel ${DRY:+--dry-run} \
            >"$W/checks.json" || checks=$?
        cat "$W/checks.json" >&2 || true
        echo "== 4. benchmarks.run --gpu" >&2
        bench=0
        timeout 1800 "$PY" -m benchmarks.run --gpu --no-report --out "$W/bench.json" \
            --sizes "${WG_GPU_SIZES:-1024}" ${DRY:+--dry-run} "$@" || bench=$?
    fi
    "$PY" - "$W" "$RESULT" "$pre" "$tests" "$checks" "$bench" <<'PYEOF'
import json, pathlib, sys
w, result = pathlib.Path(sys.argv[1]), sys.argv[2]
def load(name):
    p = w / name
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return p.read_text()[-4000:]
out = {
    "gpu": (w / "gpu.txt").read_text().strip(),
    "status": dict(zip(["preflight", "pytest", "checks", "bench"], sys.argv[3:7])),
    "preflight": load("preflight.json"),
    "pytest_tail": (w / "pytest.txt").read_text()[-3000:] if (w / "pytest.txt").exists() else None,
    "checks": load("checks.json"),
    "bench": load("bench.json"),
}
pathlib.Path(result).write_text(json.dumps(out, indent=1) + "\n")
print(result)
PYEOF
    if [ -n "${OUT:-}" ]; then
        cp "$RESULT" "$OUT"/ 2>/dev/null || true
    fi
    rm -rf "$W"
    [ "$pre" = 0 ] || exit 3
    [ "$tests" = 0 ] && [ "$checks" = 0 ] && [ "$bench" = 0 ]
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels [PYVER] | run [benchmarks.run args] | dry-run" >&2
    exit 2
    ;;
esac
