"""Fresh virtualenvs with weightguard installed from its wheel, as a user or the image does.

Installs are offline from a wheel cache outside the checkout
(``$WEIGHTGUARD_WHEEL_CACHE``, default ``~/.cache/weightguard/wheels``); on a miss the
missing wheels are downloaded from PyPI once, so reruns take seconds.  pip runs with no
configuration file and no ``PIP_*`` settings of the developer's (indexes, find-links,
constraints), and nothing of this checkout on ``sys.path``: what the venv can import
is what the wheel and its declared dependencies put there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "k8s" / "image"
CACHE = Path(
    os.environ.get("WEIGHTGUARD_WHEEL_CACHE") or Path.home() / ".cache" / "weightguard" / "wheels"
)
DIST = "weightguard-ml"
_KEEP = {"PIP_CERT", "PIP_DEFAULT_TIMEOUT"}  # the machine's TLS trust, not its indexes
_FILE = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^-]*?)(-|\.tar\.gz$|\.zip$)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "UV_", "WEIGHTGUARD_", "PIP_")) or k in _KEEP
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.update(extra)
    return env


def run(argv: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", clean_env())
    kw.setdefault("timeout", 900)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in argv], capture_output=True, text=True, **kw
    )


def checked(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"{res.args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def build_wheel(dest: Path) -> Path:
    """The wheel of this checkout, built from what the Dockerfile's build stage copies."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("weightguard", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = dest / "wheels"
    pip = [sys.executable, "-m", "pip"]
    checked(run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", out, src]))
    (wheel,) = out.glob("*.whl")
    return wheel


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def make_venv(path: Path) -> Path:
    checked(run([sys.executable, "-m", "venv", path]))
    return path / "bin"


def cached(requirements: dict[str, str]) -> bool:
    """Whether the cache holds a file of every ``{name: version}``."""
    have = set()
    for f in CACHE.glob("*") if CACHE.is_dir() else ():
        m = _FILE.match(f.name)
        if m:
            have.add((canonical(m["name"]), m["version"]))
    return all((canonical(n), v) in have for n, v in requirements.items())


def fill_cache(bin_dir: Path, *args: str | Path) -> None:
    """``pip download`` into the cache (network: PyPI), never keeping our own wheel."""
    CACHE.mkdir(parents=True, exist_ok=True)
    checked(run([bin_dir / "python", "-m", "pip", "download", "--dest", CACHE, *args]))
    for ours in CACHE.glob(f"{DIST.replace('-', '_')}-*"):
        ours.unlink()


def install(bin_dir: Path, wheel: Path, requirement: str) -> None:
    """``pip install requirement`` with the wheel and the cache only (filled on a miss)."""
    links = ["--find-links", wheel.parent, "--find-links", CACHE]
    argv = [bin_dir / "python", "-m", "pip", "install", "--no-index", *links, requirement]
    if run(argv).returncode != 0:
        fill_cache(bin_dir, "--find-links", wheel.parent, requirement)
        checked(run(argv))


def site_packages_mib(bin_dir: Path) -> float:
    (site,) = (bin_dir.parent / "lib").glob("python3*/site-packages")
    total = sum(f.lstat().st_size for f in site.rglob("*") if f.is_file())
    return total / (1 << 20)
