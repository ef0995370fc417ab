"""The loader image's environment, built as the Dockerfile builds it, runs the k8s commands.

There is no Docker engine here (no daemon), so a virtualenv stands in for the image:
the same wheel, the same k8s/image/requirements.lock and the same k8s/image/install.sh
as the Dockerfile's runtime stage, offline from the wheel cache.  One difference: torch
comes from this machine's CPU build (a local find-links wheel) where the image takes
the CUDA build from TORCH_INDEX; TORCH_VERSION is the Dockerfile's.  Then the image's
smoke test runs in it, and tests/k8s/test_e2e.py (the rendered manifests' commands
against real OpenBao and SeaweedFS) with every container command in that virtualenv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.venvs import (
    CACHE,
    DIST,
    IMAGE,
    ROOT,
    cached,
    canonical,
    checked,
    clean_env,
    fill_cache,
    make_venv,
    run,
    site_packages_mib,
)

pytestmark = pytest.mark.slow

E2E = ROOT / "tests" / "k8s" / "test_e2e.py"


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wg_image_lock", IMAGE / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()
TORCH_VERSION: str = LOCK.torch_version(IMAGE / "Dockerfile")


def _find_links() -> list[Path]:
    """This machine's configured find-links directories (where a CPU torch may lie)."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    res = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            dirs += value.strip("'\"").split()
    return [
        Path(d.removeprefix("file://")) for d in dirs if Path(d.removeprefix("file://")).is_dir()
    ]


def _cpu_torch() -> Path | None:
    for d in [CACHE, *_find_links()]:
        found = sorted(d.glob(f"torch-{TORCH_VERSION}+cpu-cp311-*.whl"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def image(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    torch_wheel = _cpu_torch()
    if torch_wheel is None:
        pytest.skip(
            f"no CPU build of torch {TORCH_VERSION} in this machine's find-links "
            "(PyPI's would pull the multi-GB CUDA stack)"
        )
    bin_dir = make_venv(tmp_path_factory.mktemp("image") / "venv")
    lock = IMAGE / "requirements.lock"
    pins = {name: version for name, (version, _) in LOCK.pins(lock.read_text()).items()}
    if not cached(pins):  # once per machine (network: PyPI); later runs are offline
        fill_cache(bin_dir, "--require-hashes", "-r", lock)
    env = clean_env(
        PATH=f"{bin_dir}:/usr/bin:/bin",
        TORCH_VERSION=TORCH_VERSION,
        TORCH_INDEX="",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=f"{CACHE} {torch_wheel.parent}",
        # Not byte-compiling torch's ~10k modules halves the install; pyc files only.
        PIP_NO_COMPILE="1",
    )
    # The Dockerfile's RUN, with the build context's paths.
    checked(run(["sh", IMAGE / "install.sh", lock, wheel.parent], env=env, timeout=1200))
    print(f"image venv site-packages (CPU torch): {site_packages_mib(bin_dir):.0f} MiB")
    yield bin_dir


def test_image_holds_exactly_the_lock_torch_and_weightguard(image: Path) -> None:
    res = checked(run([image / "python", "-m", "pip", "list", "--format", "json"]))
    installed = {canonical(p["name"]): p["version"] for p in json.loads(res.stdout)}
    locked = {name: version for name, (version, _) in LOCK.pins(
        (IMAGE / "requirements.lock").read_text()).items()}  # fmt: skip
    assert installed.pop(DIST) == "0.1.0"
    assert installed.pop("torch").split("+")[0] == TORCH_VERSION
    installed.pop("pip")
    assert installed == locked


def test_image_smoke_test_verifies_and_loads(image: Path) -> None:
    res = run([image / "python", IMAGE / "smoke.py"], env=clean_env(PATH=f"{image}:/usr/bin:/bin"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == (
        f"smoke: ok (weightguard 0.1.0, torch {TORCH_VERSION}+cpu)"
    )


def test_rendered_k8s_commands_run_in_the_image_environment(image: Path) -> None:
    """tests/k8s/test_e2e.py with every container command run from the image's venv."""
    env = {**os.environ, "WEIGHTGUARD_IMAGE_BIN": str(image)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(E2E)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", summary), summary
    assert "skipped" not in summary and "failed" not in summary, res.stdout[-3000:]
