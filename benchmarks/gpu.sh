#!/usr/bin/env bash
# The one GPU run (H100/H200, no network), made for one short lease: every step capped,
# the whole run inside 8 minutes, $OUT/result.json rewritten after every step.
#
#   bash benchmarks/gpu.sh wheels     # here (network): the wheels the GPU image lacks,
#                                     # for CPython 3.11-3.13, into benchmarks/work/wheels
#                                     # (ignored; carry it: ~7 MiB, limit 40 MiB)
#   bash benchmarks/gpu.sh run        # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh dry-run    # the same steps on a CPU machine: fake device,
#                                     # Triton's interpreter, small sizes (CI runs it)
#
# With the workplace's device tool:
#   run(command="bash benchmarks/gpu.sh run", carry=["benchmarks/work/wheels"], timeout_s=560)
# The steps and the JSON are described in benchmarks/gpu_checks.py; the result is
# $OUT/result.json (benchmarks/work/gpu-out/result.json without $OUT).
# Exit status: 0 all steps ok, 1 a step failed, 3 the machine lacks something (the JSON
# says what), 4 no python3 at all.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 4
ROOT=$PWD
WHEELS=${WG_WHEELS:-$ROOT/benchmarks/work/wheels}
OUTDIR=${OUT:-$ROOT/benchmarks/work/gpu-out}
mkdir -p "$OUTDIR"
# What the run imports that the GPU image lacks (its package list: KINDS.md); the
# versions are those of .venv here, so both machines run the same code.
WHEEL_PKGS=(cryptography cffi pycparser blake3)

verdict() {  # a JSON verdict without Python (there is none to run the orchestrator)
    printf '{"schema": "weightguard-gpu-run/1", "mode": "%s", "verdict": "%s", "steps": {}}\n' \
        "$1" "$2" >"$OUTDIR/result.json"
    cat "$OUTDIR/result.json"
}

cmd=${1:-run}
case "$cmd" in
wheels)
    mkdir -p "$WHEELS"
    specs=()
    for p in "${WHEEL_PKGS[@]}"; do
        v=$(.venv/bin/python -c "import importlib.metadata as m,sys; print(m.version(sys.argv[1]))" \
            "$p" 2>/dev/null || true)
        specs+=("$p${v:+==$v}")
    done
    for pyver in 3.11 3.12 3.13; do
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
            --python-version "$pyver" --implementation cp \
            --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHEELS" "${specs[@]}" || exit 1
    done
    # CPython 3.10: these versions publish no 3.10 wheels, and weightguard needs >= 3.11;
    # the run's env step says so in its verdict instead of failing later.
    du -sh "$WHEELS"
    total=$(du -sb "$WHEELS" | cut -f1)
    if [ "$total" -gt $((40 << 20)) ]; then
        echo "error: wheels are $total bytes, over the 40 MiB budget" >&2
        exit 1
    fi
    ;;
run|dry-run)
    PY=${PYTHON:-}
    if [ -z "$PY" ]; then
        if [ "$cmd" = dry-run ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python
        else PY=$(command -v python3 || true); fi
    fi
    if [ -z "$PY" ]; then
        verdict "$cmd" "stopped at env: missing python3"
        exit 4
    fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    # The orchestrator uses the standard library only until its install step has run;
    # its own deadline (470 s run, 170 s dry-run) ends it; `timeout` is the backstop.
    limit=$([ "$cmd" = run ] && echo 540 || echo 178)
    extra=()
    [ "$cmd" = dry-run ] && extra=(--dry-run)
    timeout -k 5 "$limit" "$PY" -m benchmarks.gpu_checks run ${extra[@]+"${extra[@]}"} \
        --out "$OUTDIR" --wheels "$WHEELS" --site "${WG_SITE:-/tmp/wg-site}"
    rc=$?
    "$PY" -m benchmarks.gpu_checks summary "$OUTDIR/result.json" 2>/dev/null || true
    exit $rc
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels | run | dry-run" >&2
    exit 2
    ;;
esac
