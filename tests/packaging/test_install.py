"""The wheel, and the core install (release and audit roles) in a fresh virtualenv.

The core is ``pip install weightguard-ml``: encrypt, sign, verify, inspect, fetch, audit,
without torch, numpy or scipy.  This installs the built wheel into a new virtualenv
(dependencies from PyPI through the wheel cache, see tests/packaging/venvs.py) and runs
the release and audit commands there for real, with file keys; a command that needs the
``[torch]`` extra fails with one line naming it.
"""

from __future__ import annotations

import email
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.venvs import (
    DIST,
    install,
    make_venv,
    run,
    site_packages_mib,
    wheel_names,
)

pytestmark = pytest.mark.slow

# The core may grow, but a stray torch (~700 MiB CPU, GBs with CUDA) must not slip in.
CORE_MAX_MIB = 250
EXTRA_HINT = "(install the 'torch' extra: pip install 'weightguard-ml[torch]')"


@pytest.fixture(scope="module")
def core(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    bin_dir = make_venv(tmp_path_factory.mktemp("core") / "venv")
    install(bin_dir, wheel, DIST)
    yield bin_dir


def _metadata(wheel: Path) -> email.message.Message:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def test_wheel_holds_the_two_packages_and_py_typed(wheel: Path) -> None:
    names = wheel_names(wheel)
    dist_info = "weightguard_ml-0.1.0.dist-info/"
    tops = {n.split("/", 1)[0] + "/" for n in names}
    assert tops == {"weightguard/", "weightguard_cli/", dist_info}, tops
    assert "weightguard/py.typed" in names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert f"{dist_info}entry_points.txt" in names
    meta = _metadata(wheel)
    assert meta["Name"] == DIST
    assert set(meta.get_all("Provides-Extra") or []) >= {"torch", "transformers", "vllm", "dev"}
    core = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names_core = {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in core}
    assert names_core == {
        "cryptography",
        "click",
        "hvac",
        "boto3",
        "sigstore",
        "blake3",
        "rich",
        "requests",
        "sigstore-models",
    }


def test_wheel_has_no_test_infrastructure(wheel: Path) -> None:
    names = wheel_names(wheel)
    assert not [n for n in names if n.endswith("/services.py") or n.startswith("tests/")]
    assert "weightguard/py.typed" in names


def _env(work: Path, bin_dir: Path) -> dict[str, str]:
    (work / "home").mkdir(exist_ok=True)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(work / "home"),
        "LANG": "C.UTF-8",
        "WEIGHTGUARD_AUDIT_LOG": str(work / "audit.jsonl"),
        "WEIGHTGUARD_AUDIT_SIGNING_KEY": str(work / "audit.key"),
    }


def _model(root: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    model = root / "model"
    model.mkdir()
    rng = np.random.default_rng(16)
    save_file({"w": rng.standard_normal((32, 16)).astype(np.float32)}, str(model / "w.safetensors"))
    (model / "config.json").write_text('{"model_type": "core-test"}')
    return model


def _signing_key(root: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = root / "signing.pem", root / "signing.pub"
    private.write_bytes(
        key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    )
    os.chmod(private, 0o600)
    public.write_bytes(
        key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def test_core_signs_verifies_and_audits_without_torch(core: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, core)
    wg = core / "weightguard"

    def cli(*args: str | Path) -> tuple[int, str, str]:
        res = run([wg, *args], env=env, cwd=tmp_path, timeout=300)
        return res.returncode, res.stdout, res.stderr

    no_torch = run([core / "python", "-c", "import torch"], env=env)
    assert no_torch.returncode == 1
    assert "No module named 'torch'" in no_torch.stderr
    for module in ("numpy", "scipy", "safetensors"):
        res = run([core / "python", "-c", f"import {module}"], env=env)
        assert res.returncode == 1, f"{module} is installed with the core"

    model = _model(tmp_path)
    private, public = _signing_key(tmp_path)
    create = "from weightguard.crypt import create_key_file; create_key_file('dev.key')"
    assert run([core / "python", "-c", create], env=env, cwd=tmp_path).returncode == 0
    rc, out, err = cli("audit", "keygen", tmp_path / "audit.key")
    assert rc == 0 and out.startswith("wrote "), err

    rc, out, err = cli("encrypt", model, "-o", "release", "--data-key", "file://dev.key")
    assert rc == 0 and out.startswith("encrypted 1 file(s)"), err
    rc, out, err = cli("inspect", "release/w.safetensors")
    assert rc == 0 and "weightguard artifact v1" in out, err
    sig_arg = ("--signature", "release/model.sig")
    rc, out, err = cli("sign", "release", *sig_arg, "--signing-key", private)
    assert rc == 0 and out.startswith("signed 2 file(s) -> release/model.sig"), err
    signer = out.splitlines()[1]
    rc, out, err = cli("verify", "release", *sig_arg, "--trust-key", public)
    assert rc == 0, err
    assert out.splitlines()[0] == "OK: release matches release/model.sig"
    assert signer.split()[-1] in out  # the fingerprint sign printed

    # Tamper: verify refuses, the audit chain still verifies and records the refusal.
    sig = tmp_path / "release" / "model.sig"
    data = bytearray((tmp_path / "release" / "w.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "release" / "w.safetensors").write_bytes(bytes(data))
    rc, out, err = cli("verify", "release", "--signature", sig, "--trust-key", public)
    assert rc == 1 and err.startswith("error: "), out + err

    rc, out, err = cli("audit", "verify", tmp_path / "audit.jsonl", "--checkpoint-key",
                       tmp_path / "audit.key.pub")  # fmt: skip
    assert rc == 0, out + err
    assert out.startswith("OK: log ") and "checkpoints verified" in out
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events if "event" in e]
    assert {"encrypt", "sign", "verify.ok"} <= set(names), names
    assert any(e.get("outcome") == "denied" for e in events), names


def test_core_load_names_the_extra_to_install(core: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, core)
    del env["WEIGHTGUARD_AUDIT_SIGNING_KEY"]  # an unsigned log is enough here
    model = _model(tmp_path)
    res = run([core / "weightguard", "load", model, "--unsafe-no-verification"], env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == f"error: loading tensors needs torch, which is not installed {EXTRA_HINT}"
    assert "Traceback" not in res.stderr
    events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    denied = [e for e in events if e.get("outcome") == "denied"]
    assert denied and "DependencyMissing" in denied[-1]["reason"], events

    key = tmp_path / "wm.key"
    key.write_bytes(os.urandom(32))
    res = run([core / "weightguard", "watermark", "embed", model / "w.safetensors",
               "-o", tmp_path / "marked.safetensors", "--watermark-key", key], env=env)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: the watermark needs torch, which is not installed "
        "(install the 'watermark' extra: pip install 'weightguard-ml[watermark]')"
    )
    assert not (tmp_path / "marked.safetensors").exists()


def test_core_install_size(core: Path) -> None:
    size = site_packages_mib(core)
    print(f"core site-packages: {size:.0f} MiB")
    assert size < CORE_MAX_MIB, f"the core install is {size:.0f} MiB"
