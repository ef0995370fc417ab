"""First call: the loader's modules load with `weightguard.loader`, not inside the first
load, and optional back ends stay out until a load uses them (issue 17, item 2)."""

from __future__ import annotations

import json
import subprocess
import sys

# Back ends a local CPU load never needs: S3, Vault, Sigstore, OMS, the GPU kernel.
OPTIONAL = ("boto3", "botocore", "hvac", "requests", "sigstore", "model_signing", "triton")
LOAD_NEEDS = (
    "weightguard.audit",
    "weightguard.policy",
    "weightguard.verifying",
    "weightguard._internal.format.layout",
    "weightguard._internal.keys.providers",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.backends.openssl",
    "blake3",
)

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(module: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_loader_import_brings_what_a_load_needs() -> None:
    mods = _modules_after("weightguard.loader")
    assert [m for m in LOAD_NEEDS if m not in mods] == []
    assert sorted(m for m in mods if m.split(".")[0] in OPTIONAL) == []


def test_package_import_does_not_import_the_loader() -> None:
    mods = _modules_after("weightguard")
    assert "weightguard.loader" not in mods
    assert "weightguard.audit" not in mods
    assert sorted(m for m in mods if m.split(".")[0] in (*OPTIONAL, "torch", "cryptography")) == []


_GC_PROBE = """
import gc, json
{setup}
import weightguard
seen = []
gc.callbacks.append(lambda phase, info: phase == "start" and seen.append(info["generation"]))
from weightguard import load_file
print(json.dumps({{"enabled": gc.isenabled(), "collections": seen}}))
"""


def test_first_import_pauses_the_collector_and_restores_it() -> None:
    for setup, enabled in (("", True), ("gc.disable()", False)):
        proc = subprocess.run(
            [sys.executable, "-c", _GC_PROBE.format(setup=setup)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.splitlines()[-1])
        assert got["enabled"] is enabled
        # unpaused, the import runs ~30 collections here; paused, at most the one that the
        # counters start right after the collector is switched back on
        assert len(got["collections"]) <= 1 and 2 not in got["collections"]
