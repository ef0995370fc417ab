#!/usr/bin/env bash
# CUDA benchmarks on an offline NVIDIA machine (H100/H200).
#
#   bash benchmarks/gpu.sh wheels [PYVER]   # on a machine WITH network: fetch the wheels the
#                                           # GPU machine lacks into benchmarks/work/wheels
#                                           # (PYVER of the GPU machine's python3, default 3.12)
#   bash benchmarks/gpu.sh run [ARGS...]    # on the GPU machine: install those wheels into
#                                           # /tmp/wg-site (no network), then
#                                           # python3 -m benchmarks.run --gpu ARGS...
#
# The GPU machine is expected to have python3 with a CUDA build of torch (plus numpy,
# safetensors, click).  What it lacks travels as wheels: cryptography (+cffi, pycparser),
# tensorizer (+libnacl, redis, hiredis, boto3, botocore, s3transfer, jmespath) and
# fastsafetensors, plus libsodium.so (tensorizer's encryption loads it with ctypes).
# Nothing else is needed: weightguard itself runs from the source tree (PYTHONPATH).
#
# Results land in benchmarks/results/gpu-*.json (and are copied to $OUT when set); render
# them with `python -m benchmarks.report` on any machine.  Without CUDA, `run` stops with
# "error: --gpu needs CUDA: ..." and exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${WG_WHEELS:-$ROOT/benchmarks/work/wheels}
PKGS=(cryptography cffi pycparser tensorizer libnacl redis hiredis boto3 botocore s3transfer
      jmespath fastsafetensors)

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
    specs=()
    for p in "${PKGS[@]}"; do specs+=("$(pin "$p")"); done
    python3 -m pip download --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
    sodium=$(ldconfig -p | awk '/libsodium\.so\.[0-9]+ .*x86-64/ {print $NF; exit}')
    if [ -n "$sodium" ]; then
        cp -L "$sodium" "$WHEELS/libsodium.so"
    else
        echo "warning: no libsodium here (apt-get install libsodium23); tensorizer" \
             "encryption will be unavailable on the GPU machine" >&2
    fi
    du -sh "$WHEELS"
    ;;
run)
    PY=${PYTHON:-python3}
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
    then
        echo "error: --gpu needs CUDA: $PY has no torch with a visible NVIDIA GPU" >&2
        (nvidia-smi -L >&2 2>/dev/null) || true
        exit 2
    fi
    SITE=${WG_SITE:-/tmp/wg-site}
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "note: no wheels in $WHEELS; using what $PY already has" >&2
    fi
    if [ -f "$WHEELS/libsodium.so" ]; then
        export LD_LIBRARY_PATH="$WHEELS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    export PYTHONPATH="$ROOT:$ROOT/cli:${PYTHONPATH:-}"
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    status=0
    "$PY" -m benchmarks.run --gpu "$@" || status=$?
    if [ -n "${OUT:-}" ]; then
        cp benchmarks/results/gpu-*.json "$OUT"/ 2>/dev/null || true
    fi
    exit $status
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels [PYVER] | run [benchmarks.run args]" >&2
    exit 2
    ;;
esac
