"""benchmarks/report_scale.py at a small size: the script runs, every stage passes, and
the counting pass stays small (its memory does not grow with the log)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_report_scale_benchmark_small(tmp_path: Path) -> None:
    def run(events: int) -> dict[str, dict[str, float]]:
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.report_scale", "--events", str(events),
             "--dir", str(tmp_path), "--stages", "count,report"],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert "error" not in out["count"] and "error" not in out["report"], out
        return out

    small, large = run(2_000), run(20_000)
    # ten times the records, about the same memory for the count (interpreter included)
    assert large["count"]["peak_rss_mib"] < small["count"]["peak_rss_mib"] + 8, (small, large)
    assert large["count"]["peak_rss_mib"] < 64


def test_docs_scale_table_is_generated_from_the_committed_results() -> None:
    """docs/audit.md's scale table is `report_scale --table` of the results it names."""
    import re

    from benchmarks.report_scale import table

    doc = (ROOT / "docs" / "audit.md").read_text()
    m = re.search(r"<!-- report_scale: (\S+) -->\n(.*?)\n<!-- /report_scale -->", doc, re.S)
    assert m, "docs/audit.md has no report_scale table"
    results = [json.loads((ROOT / f).read_text()) for f in m.group(1).split(",")]
    assert m.group(2) == table(results)
    big = max(results, key=lambda r: r["events"])
    assert big["events"] >= 1_000_000 and "cpu_model" in big["machine"]
    assert "loadavg" in big["machine"] and "error" not in big["report"]
