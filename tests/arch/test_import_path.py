"""The loader's import path holds what a load runs, not what it never runs (issue 25,
item 2: `from weightguard import load_file` costs <= 30 ms above torch + safetensors).

`import weightguard.loader` imports what every load needs eagerly (so the first load costs
what later ones do; tests/load/test_import_cost.py), but not the code of other commands
or of trust anchors a load may never meet: each module here would add its module code
and its ``@dataclass`` classes (~0.5 ms each on CPython 3.11: every generated method is
compiled apart) to every process's first call.  Counts, not timings: a timed test would
be flaky on a shared machine (``python -m benchmarks.imports`` measures the time).
"""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded on first use, never by `import weightguard.loader`.
NOT_ON_LOAD_PATH = (
    "weightguard._internal.audit.verify",  # verify_log: `weightguard audit verify`, reports
    "weightguard._internal.signing.signers.certificate",  # X.509 bundles / CA anchors
    "weightguard._internal.signing.signers.sigstore",  # Sigstore bundles
    "weightguard._internal.signing.signers.vault_transit",  # signing with Vault
    "weightguard._internal.signing.x509path",
    "weightguard._internal.report",
    "weightguard._internal.watermark",
    "weightguard._internal.crypt.encrypt",
    "weightguard._internal.load.stream_digests",  # files signed by model_signing alone
    "weightguard._internal.foundation.vault",  # Vault clients: vault:// keys only
    "weightguard.signing",
    "weightguard.crypt",
    "weightguard.report",
    "weightguard.watermark",
    "weightguard.transfer",
    "weightguard.doctor",
    "weightguard.bom",
    "cryptography.x509",
)
# @dataclass classes the import creates; raise only with a reason (each costs ~0.5 ms).
# Internal records on the load path are NamedTuples (~10x cheaper to define, issue 25).
MAX_DATACLASSES = 28

_PROBE = """
import dataclasses, json, sys
made = []
process_class = dataclasses._process_class
def counted(cls, *a, **k):
    made.append(f"{cls.__module__}.{cls.__qualname__}")
    return process_class(cls, *a, **k)
dataclasses._process_class = counted
import weightguard.loader
print(json.dumps({"modules": sorted(sys.modules), "dataclasses": made}))
"""


def _probe() -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got: dict[str, list[str]] = json.loads(proc.stdout.splitlines()[-1])
    return got


def test_loader_import_leaves_out_what_a_load_never_runs() -> None:
    got = _probe()
    loaded = [
        m for m in got["modules"] if any(m == n or m.startswith(n + ".") for n in NOT_ON_LOAD_PATH)
    ]
    assert loaded == []
    # the package's own classes only (a dependency's are not ours to count)
    ours = [c for c in got["dataclasses"] if c.startswith("weightguard")]
    assert len(ours) <= MAX_DATACLASSES, ours
