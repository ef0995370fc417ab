"""The KServe storage initializer (``weightguard-storage-initializer SRC_URI DEST_DIR``),
run as KServe runs it: a process with two arguments and its configuration in the
environment or a mounted JSON file.  Local models and key files here; the k8s
end-to-end test runs the rendered manifest against real OpenBao and SeaweedFS."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.load import MODEL_LAYOUT, flip, make_sign_keys, sign, write_st
from weightguard import crypt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("kserve")
    plain = base / "plain"
    plain.mkdir()
    write_st(plain / "model.safetensors", MODEL_LAYOUT, seed=5)
    (plain / "config.json").write_text('{"model_type": "demo"}')
    kek = base / "kek.hex"
    crypt.create_key_file(kek)
    enc = base / "enc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(plain, enc, f"file://{kek}")
    keys = make_sign_keys(base, "release")
    sign(enc, enc / "model.sig", keys)
    return {"plain": plain, "enc": enc, "kek": kek, "keys": keys, "base": base}


@pytest.fixture()
def shm() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="wg-kserve-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(src: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The entry point as a process (the console script's module)."""
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(dest.parent),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "WEIGHTGUARD_AUDIT_LOG": "-",
    }
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli.storage_initializer", src, str(dest)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _errors(stderr: str) -> list[str]:
    """The error lines (the development key file's warning may precede them)."""
    lines = [x for x in stderr.strip().splitlines() if "development key file" not in x]
    assert all(x.startswith("error: ") for x in lines), stderr
    return lines


def test_fetches_into_tmpfs_group_readable(release: dict[str, Any], shm: Path) -> None:
    dest = shm / "mnt-models"
    env = {
        "WEIGHTGUARD_TRUST_KEY": str(release["keys"].public),
        "WEIGHTGUARD_ALLOW_KEY": f"file://{release['kek']}",
    }
    res = _run(str(release["enc"]), dest, env)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] and sorted(summary["files"]) == ["config.json", "model.safetensors"]
    for name in ("model.safetensors", "config.json"):
        assert (dest / name).read_bytes() == (release["plain"] / name).read_bytes()
        mode = stat.S_IMODE((dest / name).stat().st_mode)
        assert mode == 0o640, oct(mode)  # group (fsGroup) reads, others nothing
    events = [json.loads(x)["event"] for x in res.stdout.splitlines() if '"event"' in x]
    assert "verify.ok" in events and "fetch" in events


def test_config_file_and_prefix(release: dict[str, Any], shm: Path) -> None:
    conf = shm / "config.json"
    conf.write_text(
        json.dumps(
            {
                "trust_key": [str(release["keys"].public)],
                "allow_key": [f"file://{release['kek']}"],
            }
        )
    )
    res = _run(f"weightguard+{release['enc']}", shm / "out", {"WEIGHTGUARD_CONFIG": str(conf)})
    assert res.returncode == 0, res.stderr
    assert (shm / "out" / "model.safetensors").is_file()


def test_key_not_allowed_is_refused_before_unwrap(release: dict[str, Any], shm: Path) -> None:
    env = {
        "WEIGHTGUARD_TRUST_KEY": str(release["keys"].public),
        "WEIGHTGUARD_ALLOW_KEY": "vault://transit/wg-model-*",
    }
    res = _run(str(release["enc"]), shm / "out", env)
    assert res.returncode == 1
    (line,) = _errors(res.stderr)
    assert "names key file" in line and "used only when the caller names it" in line, line
    assert not (shm / "out").exists()


@pytest.mark.parametrize("case", ["tampered", "wrong-signer", "missing-side-file", "no-anchor"])
def test_bad_input_is_one_error_line_and_nothing_written(
    release: dict[str, Any], shm: Path, tmp_path: Path, case: str
) -> None:
    model = tmp_path / "m"
    shutil.copytree(release["enc"], model)
    trust = str(release["keys"].public)
    want = ""
    if case == "tampered":
        flip(model / "model.safetensors", (model / "model.safetensors").stat().st_size - 5)
        want = "chunk"
    elif case == "wrong-signer":
        trust = str(make_sign_keys(tmp_path, "other").public)
        want = "does not satisfy the policy"
    elif case == "missing-side-file":
        (model / "config.json").unlink()
        want = "config.json"
    else:
        trust = ""
        want = "no trust anchor given"
    allow = f"file://{release['kek']}"
    res = _run(
        str(model),
        shm / "out",
        {"WEIGHTGUARD_TRUST_KEY": trust, "WEIGHTGUARD_ALLOW_KEY": allow},
    )
    assert res.returncode == 1, res.stdout
    (line,) = _errors(res.stderr)
    assert want in line, line
    assert not (shm / "out").exists() or not any((shm / "out").iterdir())


def test_disk_destination_refused(release: dict[str, Any], tmp_path: Path) -> None:
    env = {"WEIGHTGUARD_TRUST_KEY": str(release["keys"].public)}
    res = _run(str(release["enc"]), tmp_path / "disk", env)
    if res.returncode == 0:  # pragma: no cover - tmp_path is on tmpfs on this machine
        pytest.skip("tmp_path is on a memory file system here")
    assert "is not on tmpfs" in res.stderr


def test_usage() -> None:
    from weightguard_cli.storage_initializer import main

    assert main(["only-one"]) == 2


def test_help_exits_0_and_names_the_variables(capsys: pytest.CaptureFixture[str]) -> None:
    from weightguard_cli.storage_initializer import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: weightguard-storage-initializer SRC_URI DEST_DIR")
    assert "WEIGHTGUARD_TRUST_KEY" in out and "WEIGHTGUARD_ALLOW_KEY" in out


def test_previous_variable_names_work_with_a_deprecation_warning(
    release: dict[str, Any], shm: Path
) -> None:
    env = {
        "WEIGHTGUARD_TRUST_KEYS": str(release["keys"].public),
        "WEIGHTGUARD_ALLOW_KEY": f"file://{release['kek']}",
    }
    res = _run(str(release["enc"]), shm / "out", env)
    assert res.returncode == 0, res.stderr
    assert "warning: WEIGHTGUARD_TRUST_KEYS is deprecated: use WEIGHTGUARD_TRUST_KEY" in res.stderr
    from weightguard.integrations.kserve import settings

    with pytest.warns(FutureWarning, match="'trust_cert_chain' is deprecated: use 'trust_chain'"):
        conf_file = shm / "conf.json"
        conf_file.write_text(json.dumps({"trust_cert_chain": ["/ca.pem"]}))
        assert settings({"WEIGHTGUARD_CONFIG": str(conf_file)})["trust_chain"] == ["/ca.pem"]


@pytest.mark.parametrize("case", ["no-anchor", "disk", "key-not-allowed", "not-empty", "unsigned"])
def test_error_hints_name_only_the_initializers_variables(
    release: dict[str, Any], shm: Path, tmp_path: Path, case: str
) -> None:
    """Issue 20: the initializer's hints named CLI flags (--trust-key, --replace,
    --allow-disk) it does not have; every option-like word in a hint must now be one of
    its variables."""
    import re

    from weightguard.errors import WeightguardError
    from weightguard.integrations.kserve import VARIABLES, storage_initialize

    env = {
        "WEIGHTGUARD_TRUST_KEY": str(release["keys"].public),
        "WEIGHTGUARD_ALLOW_KEY": f"file://{release['kek']}",
        "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    src, dest = str(release["enc"]), shm / "out"
    if case == "no-anchor":
        del env["WEIGHTGUARD_TRUST_KEY"]
    elif case == "disk":
        dest = tmp_path / "disk"  # not tmpfs here (the test below skips where it is)
    elif case == "key-not-allowed":
        env["WEIGHTGUARD_ALLOW_KEY"] = "vault://transit/*"
    elif case == "not-empty":
        dest.mkdir()
        (dest / "old").write_text("x")
    else:
        model = tmp_path / "m"
        shutil.copytree(release["enc"], model)
        (model / "model.sig").unlink()
        src = str(model)
    with pytest.raises(WeightguardError) as ei:
        storage_initialize(src, str(dest), env)
    text = str(ei.value)
    assert not re.findall(r"(?<![\w-])--[a-z]", text), text
    named = set(re.findall(r"\bWEIGHTGUARD_[A-Z_]+", text))
    assert named <= set(VARIABLES), (named, text)
    if case in ("no-anchor", "disk", "key-not-allowed"):
        assert named, text  # says which variable to set
    # every refusal is audited (issue 22), the configuration's own included
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r for r in records if r.get("outcome") == "denied"], records
