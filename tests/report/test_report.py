"""`weightguard report`: every verdict computed by verification, never copied from the
release or from a log that does not verify."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.report.conftest import BASE_MODEL, Release
from tests.support.load import make_sign_keys
from weightguard import audit
from weightguard.report import build_report, write_report

ROOT = Path(__file__).resolve().parents[2]


def _report(r: Release, **kw: Any) -> Any:
    kw.setdefault("access_logs", [r.log])
    kw.setdefault("checkpoint_key", r.checkpoint_pub)
    return build_report(r.path, kw.pop("policy", r.keys.policy()), **kw)


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_provenance_protection_and_access_from_verification(release: Release) -> None:
    from weightguard._internal.signing.signers.base import key_fingerprint
    from weightguard.policy import PublicKey

    ev = _report(release, watermark_key=f"file://{release.watermark_key}")
    p = ev.provenance
    assert p.verdict == "PASS"
    fp = key_fingerprint(PublicKey.from_file(release.keys.public).trust_anchors()[0].key)
    assert [x.key_fingerprint for x in p.proofs] == [fp]
    assert p.proofs[0].key_algorithm == "ECDSA P-256"
    # every covered file with the digest of the bytes on disk
    import hashlib

    got = {f.name: f.digest for f in p.files}
    assert got == {
        n: hashlib.sha256((release.path / n).read_bytes()).hexdigest()
        for n in ("README.md", "config.json", "model.safetensors")
    }
    assert p.uncovered == [("model.sig", "the signature bundle itself")]
    assert p.base_model == (BASE_MODEL, "README.md base_model (signed)")
    # protection: references only, never key material
    (a,) = ev.protection.encrypted
    assert (a.name, a.aead, a.provider) == ("model.safetensors", "AES-256-GCM", "file")
    assert a.key_uri == f"file://{release.data_key}"
    assert ev.protection.plain_weights == []
    wm = ev.protection.watermark
    if wm is not None:  # the watermark needs torch to embed (dev has it)
        assert wm.outputs_match == "3 of 3 marked output(s) are the verified files"
        assert wm.key_check == "the given key IS the committed watermark key"
    # access: the numbers of the log that was written
    st = ev.access.stats
    exp = release.expected
    assert ev.access.verdict == "OK"
    assert dict(st.loads_by_identity) == exp.loads
    assert (st.denied_total, st.tamper_total) == (exp.denied, exp.tamper)
    assert st.events == exp.events
    # rotation history from the rewrap events
    assert st.rotations_total == exp.rewraps >= 1
    assert st.rotations[0].object.endswith(
        "key=vault://transit/models@v2 (was vault://transit/models@v1)"
    )
    assert ev.verdict == "ATTENTION"  # a denial is worth reading
    # the four questions, answered in the verdict box
    q = dict(ev.answers)
    assert q["Who signed it?"].startswith(p.signer + ", at ")
    assert q["Is it intact?"] == "yes: 3 file(s) match their signed digests"
    assert q["Who loaded it, and when?"].startswith(f"{sum(exp.loads.values()):,} loads by 3 ")
    assert q["Was anything denied or tampered with?"] == (
        f"{exp.denied} denial(s) and {exp.tamper} tamper event(s), listed below"
    )
    html = write_report(ev, release.path.parent / "r.html", release.path.parent / "r.md")
    page = html[0].read_text()
    key_hex = release.data_key.read_text().strip()
    assert key_hex not in page and key_hex not in html[1].read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_timeline_points_match_the_log(release: Release) -> None:
    ev = _report(release)
    tl = ev.access.stats.timeline()
    # independently: distinct (identity, bin) of load.ok records, from the raw JSON
    recs = _records(release.log)

    def hour(r: dict[str, Any]) -> int:
        return int(datetime.fromisoformat(r["time"]).timestamp()) // 3600

    hours = [
        int(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()) // 3600
        for r in recs
        if r["event"] in ("load.ok", "load.denied", "tamper.detected")
    ]
    lo = min(hours)
    bins = {
        (
            f"{r['subject']['k8s_namespace']}/{r['subject']['k8s_service_account']}",
            (int(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()) // 3600 - lo)
            // tl.bin_hours,
        )
        for r in recs
        if r["event"] == "load.ok"
    }

    def bins_by(key: str) -> int:
        return len(
            {
                (r["subject"][key], (hour(r) - lo) // tl.bin_hours)
                for r in recs
                if r["event"] == "load.ok"
            }
        )

    assert ev.access.timeline_points == {
        "loads": len(bins),
        "denied": release.expected.denied,
        "tamper": release.expected.tamper,
        "pods": bins_by("k8s_pod"),
        "nodes": bins_by("k8s_node"),
    }
    assert 'id="wg-pod-5"' in ev.access.timeline_pod_svg  # six pods, one line each
    assert 'id="wg-node-2"' in ev.access.timeline_node_svg
    svg = ev.access.timeline_svg
    assert svg.startswith("<svg") and 'id="wg-denied"' in svg


def test_wrong_trust_key_fails_and_shows_no_signer(release: Release, tmp_path: Path) -> None:
    other = make_sign_keys(tmp_path, "other")
    ev = _report(release, policy=other.policy(), access_logs=[])
    assert ev.provenance.verdict == "FAIL"
    assert ev.provenance.summary.startswith("verification failed: signature ")
    assert "does not satisfy the policy" in ev.provenance.summary
    assert ev.provenance.signer is None and ev.provenance.files == []
    assert ev.verdict == "FAIL"
    assert dict(ev.answers)["Who signed it?"] == (
        "not established: the signature did not verify under the policy"
    )
    assert ev.headline[2] == (
        "Access",
        "ATTENTION",
        "no audit log given: who loaded it is not shown",
    )


def test_tampered_release_fails(release: Release, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(release.path, bad)
    p = bad / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-40] ^= 1
    p.write_bytes(bytes(data))
    ev = build_report(bad, release.keys.policy())
    assert ev.provenance.verdict == "FAIL"
    assert "content differs from the signed" in ev.provenance.summary
    assert ev.verdict == "FAIL"


def test_edited_log_is_unverifiable_and_not_summarised(release: Release, tmp_path: Path) -> None:
    lines = release.log.read_bytes().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if b'"load.denied"' in ln)
    lines[i] = lines[i].replace(b'"outcome":"denied"', b'"outcome":"ok"')
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(b"".join(lines))
    ev = _report(release, access_logs=[edited])
    (lv,) = ev.access.logs
    assert lv.verdict == "BROKEN" and not lv.summarised
    assert lv.text.startswith("BROKEN (edited)")
    assert ev.access.stats is None and ev.access.timeline_svg is None
    assert ev.access.verdict == "UNVERIFIABLE" and ev.verdict == "FAIL"
    page = write_report(ev, tmp_path / "r.html")[0].read_text()
    assert "its events are NOT summarised" in page and "<svg" not in page


def test_unsigned_log_is_labelled_unsigned(release: Release, tmp_path: Path) -> None:
    ev = _report(release, checkpoint_key=None)
    (lv,) = ev.access.logs
    assert lv.verdict == "UNSIGNED" and lv.text.startswith("UNSIGNED (chain intact")
    assert ev.access.verdict == "UNSIGNED" and ev.verdict == "ATTENTION"
    page = write_report(ev, tmp_path / "r.html")[0].read_text()
    assert "UNSIGNED: the chain is intact but no checkpoint key was given" in page


def test_each_log_is_read_once_and_counted_as_it_verifies(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read per log (verification hands each record to the count): no second pass
    that could read other bytes than those that verified."""
    from weightguard._internal.audit import verify as averify

    real, reads = averify.iter_lines, []

    def counted(src: str, **kw: Any) -> Any:
        reads.append(src)
        return real(src, **kw)

    monkeypatch.setattr(averify, "iter_lines", counted)
    monkeypatch.setattr(audit, "read_records", None)  # no second reader of the log
    ev = _report(release)
    assert reads == [str(release.log)]
    (lv,) = ev.access.logs
    assert lv.verdict == "OK" and lv.summarised
    assert ev.access.stats.events == release.expected.events


def test_progress_is_the_bytes_read_as_they_verify(release: Release) -> None:
    seen: list[tuple[str, int | None]] = []
    steps: list[int] = []
    ev = _report(release, progress=steps.append, on_log=lambda log, n: seen.append((log, n)))
    size = release.log.stat().st_size
    assert seen == [(str(release.log), size)] and ev.access.verdict == "OK"
    assert sum(steps) == size and len(steps) >= 2, steps  # it advances (about every MiB)


def test_a_log_broken_at_its_end_is_not_summarised(release: Release, tmp_path: Path) -> None:
    """Records were counted as they verified; the verdict comes at the end and a
    broken log's counts are dropped."""
    lines = release.log.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b'"ok"', b'"OK"', 1)  # the last line edited
    cut = tmp_path / "edited.jsonl"
    cut.write_bytes(b"".join(lines))
    ev = _report(release, access_logs=[cut])
    (lv,) = ev.access.logs
    assert lv.verdict == "BROKEN" and not lv.summarised
    assert ev.access.stats is None and ev.verdict == "FAIL"


def test_access_stats_memory_is_bounded() -> None:
    """The counting pass keeps counters and capped samples, not records."""
    from weightguard._internal.report.access import MAX_LISTED, AccessStats

    def feed(n: int) -> int:
        st = AccessStats()
        base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        tracemalloc.start()
        for i in range(n):
            t = datetime.fromtimestamp(base + i * 30, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            st.add(
                {
                    "event": "load.ok" if i % 50 else "load.denied",
                    "outcome": "ok" if i % 50 else "denied",
                    "time": t,
                    "seq": i,
                    "subject": {"k8s_namespace": "ns", "k8s_service_account": f"sa{i % 7}",
                                "k8s_pod": f"p{i % 11}", "k8s_node": f"n{i % 3}"},
                }
            )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(st.denied) == min(MAX_LISTED, n // 50) and st.denied_total == n // 50
        return peak

    small, large = feed(4_000), feed(20_000)
    assert large < small * 2.5 + 512 * 1024, (small, large)  # not 5x: bounded, not per record


def test_cli_report_writes_html_and_markdown(release: Release, tmp_path: Path) -> None:
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "own.jsonl")}
    out = tmp_path / "evidence.html"
    cmd = [
        sys.executable, "-m", "weightguard_cli", "report", str(release.path),
        "--trust-key", str(release.keys.public), "--access-log", str(release.log),
        "--checkpoint-key", str(release.checkpoint_pub), "-o", str(out), "--json",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["verdict"] == "ATTENTION" and doc["provenance"]["verdict"] == "PASS"
    assert doc["access"]["stats"]["denied"] == release.expected.denied
    assert out.is_file() and out.with_suffix(".md").is_file()
    md = out.with_suffix(".md").read_text()
    assert md.startswith(f"# Evidence report: `{release.path}`")
    assert "## Verdict: **ATTENTION**" in md
    verify_cmd = next(c for w, c in doc["commands"] if w.startswith("provenance"))
    assert verify_cmd.split()[:3] == ["weightguard", "verify", str(release.path)]
    assert f"--trust-key {release.keys.public}" in verify_cmd
    # the reproduce command reproduces: it passes
    v = subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *verify_cmd.split()[1:]],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert v.returncode == 0 and v.stdout.startswith("OK: "), v.stderr
    # a FAIL verdict exits 1, files still written
    other = make_sign_keys(tmp_path, "other")
    cmd[cmd.index(str(release.keys.public))] = str(other.public)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert p.returncode == 1 and json.loads(p.stdout)["verdict"] == "FAIL"


def test_report_and_bom_need_no_torch(release: Release, tmp_path: Path) -> None:
    """The auditor's install: no torch, scipy or safetensors importable (matplotlib, in
    the report extra, brings numpy)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'safetensors', 'scipy'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from weightguard_cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "own.jsonl")}
    base = [sys.executable, "-c", code]
    trust = ["--trust-key", str(release.keys.public)]
    r = subprocess.run(
        [*base, "report", str(release.path), *trust, "--access-log", str(release.log),
         "--checkpoint-key", str(release.checkpoint_pub), "-o", str(tmp_path / "r.html")],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ATTENTION: {release.path}")
    b = subprocess.run(
        [*base, "bom", str(release.path), *trust], capture_output=True, text=True, env=env,
        timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout)["specVersion"] == "1.6"


def test_missing_report_extra_is_a_typed_error(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from weightguard.errors import DependencyMissing

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    with pytest.raises(DependencyMissing, match=r"needs matplotlib.*weightguard-ml\[report\]"):
        _report(release)


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with its stderr on a pseudo-terminal; (exit status, stderr)."""
    import pty
    import threading

    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(cwd / "own.jsonl"), "TERM": "xterm"}
    env["COLUMNS"] = "240"  # room for the whole bar beside a long log path
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "weightguard_cli", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=slave,
        )  # fmt: skip
        os.close(slave)
        proc.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_counting_shows_a_progress_bar_on_a_terminal(release: Release, tmp_path: Path) -> None:
    args = ["report", str(release.path), "--trust-key", str(release.keys.public),
            "--access-log", str(release.log),
            "--checkpoint-key", str(release.checkpoint_pub)]  # fmt: skip
    rc, err = _on_a_terminal([*args, "-o", str(tmp_path / "r.html")], tmp_path)
    assert rc == 0, err
    assert f"verifying and counting {release.log}" in err
    # a bar of the log's bytes, that reached its end (one read verifies and counts)
    assert re.search(r"([0-9.]+)/\1 [kM]B", err), err[-2000:]
    rc, err = _on_a_terminal([*args, "-q", "-o", str(tmp_path / "q.html")], tmp_path)
    assert rc == 0 and "counting" not in err


def test_identity_counter_is_per_service_account(release: Release) -> None:
    recs = _records(release.log)
    c = Counter(
        f"{r['subject']['k8s_namespace']}/{r['subject']['k8s_service_account']}"
        for r in recs
        if r["event"] == "load.ok"
    )
    assert dict(c) == release.expected.loads


def test_hostile_identities_are_text(release: Release, tmp_path: Path) -> None:
    """Names from the log are data: escaped in HTML and SVG, no TeX, no hidden label."""
    log = tmp_path / "hostile.jsonl"
    names = ["<script>alert(1)</script>", "x$\\frac{$y", "a|b`c"]
    with audit.AuditLog(str(log), signing_key=str(release.checkpoint_pub)[: -len(".pub")]) as a:
        for n in names:
            a.emit(
                "load.ok",
                object={"uri": "m"},
                subject={"k8s_namespace": "ns", "k8s_service_account": n},
            )
        a.emit("load.ok", object={"uri": "m"}, subject={"user": "_u", "host": "h"})
    ev = _report(release, access_logs=[log])
    assert ev.access.verdict == "OK"
    page, md = write_report(ev, tmp_path / "h.html", tmp_path / "h.md")
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "x$\\frac{$y" in html and "_u@h" in ev.access.timeline_svg
    assert "a\\|b\\`c" in md.read_text()
    assert ev.access.timeline_points["loads"] == 4


def test_two_logs_one_broken(release: Release, tmp_path: Path) -> None:
    """The verified log is counted, the broken one is named and left out."""
    lines = release.log.read_bytes().splitlines(keepends=True)
    del lines[100]
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines))
    ev = _report(release, access_logs=[release.log, cut])
    ok, bad = ev.access.logs
    assert (ok.verdict, ok.summarised) == ("OK", True)
    assert (bad.verdict, bad.summarised) == ("BROKEN", False)
    assert bad.text.startswith("BROKEN (deleted)")
    assert ev.access.stats.events == release.expected.events  # the good log only, once
    assert ev.access.verdict == "UNVERIFIABLE" and ev.verdict == "FAIL"
    assert ev.headline[2][2] == f"UNVERIFIABLE log(s), not summarised: {cut} (BROKEN)"


def test_single_file_release(release: Release, tmp_path: Path) -> None:
    from tests.support.load import sign
    from weightguard import crypt
    from weightguard.bom import build_bom

    art = tmp_path / "one.wg"
    crypt.encrypt_file(release.path.parent / "plain" / "model.safetensors", art,
                       f"file://{release.data_key}")  # fmt: skip
    sign(art, tmp_path / "one.wg.sig", release.keys)
    ev = build_report(art.resolve(), release.keys.policy())
    assert ev.provenance.verdict == "PASS"
    assert [(f.name, f.encrypted) for f in ev.provenance.files] == [("one.wg", True)]
    assert ev.provenance.base_model is None
    assert dict(ev.answers)["Is it intact?"] == "yes: 1 file(s) match their signed digests"
    bom = json.loads(build_bom(art, release.keys.policy()))
    assert bom["metadata"]["component"]["externalReferences"][0]["url"] == "one.wg.sig"


def test_signature_inside_but_not_in_its_ignore_paths(release: Release, tmp_path: Path) -> None:
    """As `weightguard verify`: the bundle in the directory is never a file to cover."""
    from tests.support.load import sign

    model = tmp_path / "m"
    shutil.copytree(release.path, model)
    (model / "model.sig").unlink()
    sign(model, tmp_path / "outside.sig", release.keys)  # its ignore_paths name no model.sig
    shutil.move(tmp_path / "outside.sig", model / "model.sig")
    ev = build_report(model, release.keys.policy())
    assert ev.provenance.verdict == "PASS", ev.provenance.summary
    assert ev.provenance.uncovered == [("model.sig", "the signature bundle itself")]


def test_co_signed_release_with_require_all(release: Release, tmp_path: Path) -> None:
    """Two signers, each by a bundle of its own (--require-all): both shown, and the
    reproduce command repeats every trust option as given."""
    from weightguard.signing import cosignature_path, sign_model

    model = tmp_path / "m"
    shutil.copytree(release.path, model)
    security = make_sign_keys(tmp_path, "security")
    co = cosignature_path(model / "model.sig", "security")
    co.parent.mkdir()
    sign_model(model, co, security.signer())
    env = {**os.environ, "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "own.jsonl")}
    args = ["report", str(model), "--trust-key", str(release.keys.public),
            "--trust-key", str(security.public), "--require-all",
            "-o", str(tmp_path / "r.html"), "--json"]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "weightguard_cli", *args],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    prov = doc["provenance"]
    assert prov["verdict"] == "PASS", prov["summary"]
    assert len(prov["proofs"]) == 2
    verify_cmd = next(c for w, c in doc["commands"] if w.startswith("provenance"))
    assert verify_cmd.endswith(
        f"--trust-key {release.keys.public} --trust-key {security.public} --require-all"
    )
    v = subprocess.run([sys.executable, "-m", "weightguard_cli", *verify_cmd.split()[1:]],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)  # fmt: skip
    assert v.returncode == 0, v.stderr
    # one signer missing: not every anchor signed
    (co).unlink()
    p = subprocess.run([sys.executable, "-m", "weightguard_cli", *args],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)  # fmt: skip
    assert p.returncode == 1 and json.loads(p.stdout)["provenance"]["verdict"] == "FAIL"


def test_many_pods_and_identities_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ephemeral pods by the thousand: counted one by one up to a cap, then as (other)."""
    from weightguard._internal.report import access

    monkeypatch.setattr(access, "MAX_KEYS", 50)
    monkeypatch.setattr(access, "MAX_IDENTITIES", 5)
    st = access.AccessStats()
    for i in range(300):
        st.add({"event": "load.ok", "outcome": "ok", "time": "2026-01-01T00:00:00Z", "seq": i,
                "subject": {"k8s_namespace": "ns", "k8s_service_account": f"sa{i}",
                            "k8s_pod": f"pod-{i}", "k8s_node": "n"}})  # fmt: skip
    assert len(st.loads_by_pod) == 51 and st.loads_by_pod[access.OTHER] == 250
    assert len(st.loads_by_identity) == 51 and sum(st.loads_by_identity.values()) == 300
    assert len(st.hourly) == 6 and sum(st.hourly[access.OTHER].values()) == 295
    assert st.loads == 300
