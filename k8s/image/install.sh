#!/bin/sh
# Install weightguard into the current Python environment the way the loader image does:
# the Dockerfile runs this script, and tests/packaging/test_image.py runs the same script
# into a virtualenv, then the rendered k8s commands in it.
#
#   install.sh LOCK WHEEL_DIR
#
# TORCH_VERSION (required): the torch release, the one k8s/image/lock.py resolved against.
# TORCH_INDEX (optional): the index of the image's accelerator build of torch (CUDA); empty:
# pip's configured index and find-links.
set -eu
lock=$1
wheels=$2
: "${TORCH_VERSION:?set TORCH_VERSION}"

# 1. Every dependency but the accelerator stack, pinned, hash-checked, nothing else:
#    with --require-hashes pip refuses a dependency that the lock does not pin.
python -m pip install --no-cache-dir --require-hashes -r "$lock"

# 2. torch from the accelerator's index; its pure-Python dependencies are already there.
if [ -n "${TORCH_INDEX:-}" ]; then
    python -m pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
else
    python -m pip install --no-cache-dir "torch==$TORCH_VERSION"
fi

# 3. weightguard with the loader's and the watermark's extras and no index: a dependency
#    that neither the lock nor step 2 installed fails here, not in a pod.
python -m pip install --no-cache-dir --no-index --find-links "$wheels" "weightguard-ml[torch,watermark]"
python -m pip check
