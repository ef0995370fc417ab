"""The report in a real headless Chromium (Debian's ``chromium`` package): it renders
with no console message at all (no error, no blocked resource), and the timeline holds
one marker per time bin and per denial, each drawn inside the plot.

Skipped when no Chromium is installed, unless WEIGHTGUARD_REQUIRE_CHROMIUM=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report.conftest import Release
from weightguard.report import build_report, write_report


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("WEIGHTGUARD_REQUIRE_CHROMIUM") == "1":
        pytest.fail("no chromium installed (apt-get install -y chromium)")
    pytest.skip("no chromium installed (apt-get install -y chromium)")


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# Counts the timeline's markers in the rendered page and checks each one is drawn inside
# the plot's box; writes the result into the DOM for --dump-dom to return.
_PROBE = """<script>
const errors = [];
window.addEventListener("error", e => errors.push(String(e.message)));
window.addEventListener("load", () => {
  const svg = document.querySelector("#timeline svg").getBoundingClientRect();
  const count = sel => document.querySelectorAll(sel).length;
  let outside = 0;
  for (const plot of document.querySelectorAll("div.plot")) {
    const box = plot.querySelector("svg").getBoundingClientRect();
    for (const u of plot.querySelectorAll('g[id^="wg-"] use')) {
      const r = u.getBoundingClientRect();
      const cx = r.x + r.width / 2, cy = r.y + r.height / 2;
      if (r.width <= 0 || cx < box.left || cx > box.right || cy < box.top || cy > box.bottom)
        outside++;
    }
  }
  const out = document.createElement("pre");
  out.id = "wg-probe";
  out.textContent = JSON.stringify({
    loads: count('#timeline g[id^="wg-loads-"] use'),
    denied: count("#timeline #wg-denied use"),
    tamper: count("#timeline #wg-tamper use"),
    pods: count('#timeline-pod g[id^="wg-pod-"] use'),
    nodes: count('#timeline-node g[id^="wg-node-"] use'),
    outside, errors, width: svg.width,
  });
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_chromium(release: Release, tmp_path: Path) -> None:
    ev = build_report(
        release.path,
        release.keys.policy(),
        access_logs=[release.log],
        checkpoint_key=release.checkpoint_pub,
    )
    page, _ = write_report(ev, tmp_path / "report.html")

    # 1. the page as written: no console message at all, every section in the DOM
    p = _run(tmp_path, "--dump-dom", page.as_uri())
    assert p.returncode == 0, p.stderr[-2000:]
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == []
    sections = ("verdict", "provenance", "protection", "access", "reproduce", "timeline",
                "timeline-pod", "timeline-node")  # fmt: skip
    for section in sections:
        assert f'id="{section}"' in p.stdout

    # 2. the timeline's points, counted by the browser in the rendered SVG
    html = page.read_text()
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = probe.replace("</body>", _PROBE + "</body>")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(probe)
    p = _run(tmp_path, "--window-size=1200,2000", "--dump-dom", probe_page.as_uri())
    m = re.search(r'<pre id="wg-probe">(.*?)</pre>', p.stdout)
    assert m, p.stderr[-2000:]
    got = json.loads(m.group(1).replace("&quot;", '"'))
    assert got["errors"] == [] and got["outside"] == 0 and got["width"] > 300
    points = ("loads", "denied", "tamper", "pods", "nodes")
    assert {k: got[k] for k in points} == ev.access.timeline_points
    assert got["denied"] == release.expected.denied

    # 3. a screenshot renders
    shot = tmp_path / "report.png"
    p = _run(tmp_path, "--hide-scrollbars", "--window-size=1200,1600",
             f"--screenshot={shot}", page.as_uri())  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
