"""``python -m benchmarks.signverify``: model_signing vs weightguard, before/after, one run."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import signverify


def test_signverify_reports_both_ratios_per_model(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert (
        signverify.main(["--reps", "1", "--sizes", "4", "--before", "HEAD", "--out", str(out)]) == 0
    )
    res = json.loads(out.read_text())
    assert res["machine"]["cpu_model"] and len(res["machine"]["loadavg"]) == 3
    assert set(res["models"]) == {"synthetic-4mib", "synthetic-4mib-4shards"}
    for m in res["models"].values():
        ratios = m["ratio_model_signing_over_weightguard"]
        assert set(ratios) == {
            "weightguard sign",
            "weightguard verify",
            "weightguard verify (check_chunk_digests)",
            "weightguard sign (HEAD)",
            "weightguard verify (HEAD)",
        }
        assert all(r["wall"] > 0 and r["cpu"] > 0 for r in ratios.values())
        assert set(m["hash_cpu_s_per_gb"]) == {
            "sha256",
            "blake3 (4 MiB chunks)",
            "1 MiB read copies (model_signing)",
        }
        assert all(v >= 0 for v in m["hash_cpu_s_per_gb"].values())
