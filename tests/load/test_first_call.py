"""The first signed + encrypted local load imports no module of the package: they all
came with `weightguard.loader` (its list of what a load needs), so the first load costs
what later ones do (issue 25, item 2; tests/arch/test_import_path.py holds what the
loader's import leaves out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.arch.test_import_path import NOT_ON_LOAD_PATH
from tests.support.load import (
    MODEL_LAYOUT,
    SignKeys,
    encrypt,
    file_key,  # noqa: F401 - fixture
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)

_LOAD = """
import inspect, json, sys
import torch
from weightguard import load_file
from weightguard.policy import PublicKey
policy = PublicKey.from_file(sys.argv[2])  # the caller's (PEM parsing), before the load
# the data key's keyword: data_key since the keyword renames (key before)
kw = "data_key" if "data_key" in inspect.signature(load_file).parameters else "key"
before = set(sys.modules)
tensors = load_file(sys.argv[1], "cpu", policy=policy, **{kw: sys.argv[3]})
print(json.dumps({"tensors": len(tensors), "new": sorted(set(sys.modules) - before)}))
"""


def test_first_load_imports_no_weightguard_module(
    tmp_path: Path,
    file_key: str,  # noqa: F811
    sign_keys: SignKeys,  # noqa: F811
) -> None:
    """No new ``weightguard`` module in the first load, nor any a load never runs (the
    policy is built before it: parsing its PEM is the caller's cost)."""
    write_st(tmp_path / "plain.safetensors", MODEL_LAYOUT)
    enc = tmp_path / "enc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(tmp_path / "plain.safetensors", enc, file_key)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    env = dict(os.environ, WEIGHTGUARD_AUDIT_LOG=str(tmp_path / "audit.jsonl"))
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, str(enc), str(sign_keys.public), file_key],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["tensors"] == len(MODEL_LAYOUT)
    new = got["new"]
    assert [m for m in new if m.split(".")[0] == "weightguard"] == []
    assert [m for m in new if any(m == n or m.startswith(n + ".") for n in NOT_ON_LOAD_PATH)] == []
