"""Red-team round on the surfaces added for issues 21, 22 and 26 (bundle shapes, streamed
whole-file/shard digests, co-signing, S3 verify, report/BOM): each break found, as a
test that fails on the code before its fix (or ``xfail(strict=True)`` where the fix is
in another area's files and is reported to its owner)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.format import build_safetensors
from tests.support.load import make_sign_keys

HOSTILE_NAME = "<img src=x onerror=alert(1)>`]x[y](javascript:alert(2))"
HOSTILE_IDENTITY = "<script>alert(3)</script>\r# injected heading"


def _plain_model(d: Path, weight_name: str = "model.safetensors") -> Path:
    d.mkdir(parents=True)
    t = {"w": ("F32", [2, 2], os.urandom(16))}
    (d / weight_name).write_bytes(build_safetensors(t, {"format": "pt"}))
    (d / "config.json").write_text("{}")
    return d


def _key(d: Path, name: str) -> tuple[Any, Path]:
    """(signer, public key file) of a fresh P-256 key pair."""
    keys = make_sign_keys(d, name)
    return keys.signer(), keys.public


# ------------------------------------------------------------------ report (issue 26)


def test_report_markdown_renders_hostile_names_as_text(tmp_path: Path) -> None:
    """A weight file name from the release and an identity from the access log are
    text in the Markdown twin too: rendered by a CommonMark renderer that passes raw
    HTML through (as many do), no tag, link or heading comes out of them.  Before: the
    names went into the Markdown verbatim (the file name also inside a code span it
    could close with a backtick), so the twin rendered an <img onerror> and <script>."""
    from markdown_it import MarkdownIt

    from weightguard import audit
    from weightguard.policy import PublicKey
    from weightguard.report import build_report, write_report
    from weightguard.signing import sign_model

    model = _plain_model(tmp_path / "m", f"{HOSTILE_NAME}.safetensors")
    signer, pub = _key(tmp_path, "rel")
    sign_model(model, tmp_path / "model.sig", signer)
    cp = tmp_path / "cp.pem"
    audit.generate_checkpoint_key(os.fspath(cp))
    log = tmp_path / "log.jsonl"
    with audit.AuditLog(str(log), signing_key=str(cp)) as a:
        a.emit(
            "load.ok",
            object={"uri": "m"},
            subject={"k8s_namespace": "ns", "k8s_service_account": HOSTILE_IDENTITY},
        )
    ev = build_report(
        model,
        PublicKey.from_file(pub),
        signature=tmp_path / "model.sig",
        access_logs=[log],
        checkpoint_key=Path(f"{cp}.pub"),
    )
    assert ev.provenance.verdict == "PASS" and ev.access.verdict == "OK"
    _, md_path = write_report(ev, tmp_path / "r.html", tmp_path / "r.md")
    md = md_path.read_text()
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    for bad in ("<img", "<script", "<a ", 'javascript:alert(2)"', "<h1>injected"):
        assert bad not in rendered, (bad, rendered)
    # still shown, as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in rendered
    # one line per table row: the identity's \r did not start a line of its own
    assert not any(line.startswith("# injected") for line in md.splitlines())
    # the page's timeline shows the \r as an escape (a font has no glyph for it)
    assert "\\x0d# injected heading" in (ev.access.timeline_svg or "")


# ------------------------------------------------------------------ co-signing (issue 22)


def test_cosigned_one_key_is_not_two_signers(tmp_path: Path) -> None:
    """--require-all with a CA root (security team) and a release key: the holder of
    the release key, given a certificate for that same key under the CA, signs twice
    (model.sig as a certificate bundle, a co-signature as a key bundle) and the release
    passes as signed by two signers."""
    from cryptography import x509

    from tests.support.signing import write_chain
    from weightguard.errors import VerificationError
    from weightguard.policy import CoSigned, trust_policy
    from weightguard.signing import CertificateSigner, KeySigner, cosignature_path, sign_model

    model = _plain_model(tmp_path / "m")
    pem = write_chain(tmp_path)
    leaf = x509.load_pem_x509_certificate(pem["leaf_cert"].read_bytes())
    inter = x509.load_pem_x509_certificate(pem["intermediate"].read_bytes())
    one_key = KeySigner.from_file(pem["leaf_key"])
    pub = tmp_path / "release.pub"
    from cryptography.hazmat.primitives import serialization

    pub.write_bytes(
        one_key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sig = model / "model.sig"
    sign_model(model, sig, CertificateSigner(one_key._key, leaf, [inter]))
    co = cosignature_path(sig, "security")
    co.parent.mkdir()
    sign_model(model, co, one_key)
    policy = trust_policy(
        trust_key=[pub], trust_chain=[pem["root"], pem["intermediate"]], require_all=True
    )
    assert isinstance(policy, CoSigned)
    from weightguard.signing import verify_bundle

    with pytest.raises(VerificationError, match=r"same key|one key|different keys"):
        verify_bundle(model, sig, policy)


def test_report_md_escaping_keeps_plain_names_readable() -> None:
    """The escaping leaves ordinary names alone (no noise in the raw Markdown)."""
    from weightguard._internal.report.render import _m, _mcode

    assert _m("model-00001-of-00002.safetensors") == "model-00001-of-00002.safetensors"
    assert _m("a|b`c") == "a\\|b\\`c"
    assert _mcode("it's `x`") == "`` it's `x` ``"
    assert json.dumps(_m("x\ny\rz")) == '"x y z"'


def _statement(sig: Path) -> Any:
    from weightguard._internal.signing import oms

    return oms.parse_statement(oms.parse_bundle(sig.read_bytes()).payload)


def test_cosigned_bundles_agree_on_every_digest_the_loader_uses(tmp_path: Path) -> None:
    """Two-person rule: the release team (A) and the security team (B) must both sign.
    B reviewed and signed model Y.  A ships X (one weight byte changed) with a bundle
    that claims Y's SHA-256 (what the co-signatures are compared by) but X's chunk
    digests (what the loader checks).  The secure loader returned X's tensors."""
    from weightguard._internal.signing import oms
    from weightguard.errors import WeightguardError
    from weightguard.loader import load_file
    from weightguard.policy import CoSigned, PublicKey
    from weightguard.signing import cosignature_path, sign_model

    a, a_pub = _key(tmp_path, "release")
    b, b_pub = _key(tmp_path, "security")
    y = _plain_model(tmp_path / "y")
    x = tmp_path / "x"
    import shutil

    shutil.copytree(y, x)
    w = bytearray((x / "model.safetensors").read_bytes())
    w[-1] ^= 0x40  # a weight byte (the last float's sign/exponent)
    (x / "model.safetensors").write_bytes(bytes(w))
    sign_model(y, tmp_path / "y.sig", b)  # B's review of Y, written as X's co-signature
    sign_model(x, x / "model.sig", a)
    st_x, st_y = _statement(x / "model.sig"), _statement(tmp_path / "y.sig")
    forged = oms.build_statement(
        st_x.model_name,
        st_y.resources,
        allow_symlinks=False,
        ignore_paths=list(st_x.ignore_paths),
        chunks=st_x.chunks,
        version="0.1.0",
        signed_at=None,
        hash_type=st_x.hash_type,
    )
    (x / "model.sig").write_bytes(a.make_bundle(forged))
    co = cosignature_path(x / "model.sig", "security")
    co.parent.mkdir()
    shutil.copy(tmp_path / "y.sig", co)
    policy = CoSigned(PublicKey.from_file(a_pub), PublicKey.from_file(b_pub))
    with pytest.raises(WeightguardError, match=r"different contents|digest"):
        load_file(x, policy=policy)


# ------------------------------------------------------------------ report from S3


class _Bucket:
    """Just enough of an S3 client for the report's copy: one listing page and
    downloads (the names are the point here; the real-server tests are in
    tests/report/test_s3.py)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloaded: list[str] = []

    def list_objects_v2(self, **kw: Any) -> dict[str, Any]:
        keys = sorted(k for k in self.objects if k.startswith(kw["Prefix"]))
        return {"Contents": [{"Key": k, "Size": len(self.objects[k])} for k in keys]}

    def download_file(self, bucket: str, key: str, dest: str) -> None:
        self.downloaded.append(key)
        Path(dest).write_bytes(self.objects[key])


@pytest.mark.parametrize(
    "hostile",
    ["m/x/../model.safetensors", "m//model.safetensors", "m/./config.json", "m/a\\b", "m/\x01"],
)
def test_report_s3_copy_refuses_names_the_loader_refuses(tmp_path: Path, hostile: str) -> None:
    """The report verifies an s3:// release on a local copy.  Before: a key such as
    ``x/../model.safetensors`` or ``//model.safetensors`` was skipped, so the copy (and
    the PASS verdict) left out an object that the loader and ``weightguard verify
    s3://`` refuse the release for.  Now the whole release is refused, as there."""
    from weightguard._internal.report.source import _download
    from weightguard.errors import FormatError

    bucket = _Bucket({"m/config.json": b"{}", "m/model.sig": b"x", hostile: b"evil"})
    with pytest.raises(FormatError, match="listing of s3://b/m/"):
        _download(bucket, "s3://b/m/", "b", "m/", tmp_path)
    assert hostile not in bucket.downloaded
    ok = _Bucket({"m/config.json": b"{}", "m/sub/": b"", "m/a:b.txt": b"1"})
    _download(ok, "s3://b/m/", "b", "m/", tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").rglob("*")) == ["a:b.txt", "config.json"]


# ------------------------------------------------------------------ bundle malleability


@pytest.mark.parametrize(
    "edit",
    [
        lambda pem: b"any text before the armour\n" + pem,
        lambda pem: pem + b"and after it\n",
        lambda pem: pem.replace(b"\n", b"\r\n"),
        lambda pem: pem.replace(b"-----\n", b"-----\nX-Note: 1\n\n", 1),
    ],
    ids=["leading-text", "trailing-text", "crlf", "pem-header"],
)
def test_old_key_bundle_rawbytes_is_canonical(tmp_path: Path, edit: Any) -> None:
    """model_signing 0.3.1 .. 1.0.1 key bundles carry the key as PEM in ``rawBytes``.
    PEM readers skip text around the armour and accept CRLF or headers, so an edited
    rawBytes still named the same key: the bundle verified (library and CLI) under a
    new bundle digest (the audit log records bundle digests), the class of issue 22's
    ``tlogEntries: [{"x": 1}]``.  Now refused; the released vectors still verify."""
    import base64
    import shutil

    from tests.vectors.oms import restore_untracked
    from weightguard.errors import FormatError
    from weightguard.policy import PublicKey
    from weightguard.signing import verify_bundle

    oms_dir = Path(__file__).resolve().parents[1] / "vectors" / "oms"
    src = oms_dir / "ms-1.0.1" / "key-files-sha256"
    shutil.copytree(src / "model", tmp_path / "model")
    restore_untracked(src, tmp_path / "model")
    sig = tmp_path / "model.sig"
    doc = json.loads((src / "model.sig").read_bytes())
    policy = PublicKey.from_file(oms_dir / "keys" / "key-pub.pem")
    sig.write_bytes((src / "model.sig").read_bytes())
    assert verify_bundle(tmp_path / "model", sig, policy).hashed  # as released
    pk = doc["verificationMaterial"]["publicKey"]
    pk["rawBytes"] = base64.b64encode(edit(base64.b64decode(pk["rawBytes"]))).decode()
    sig.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"rawBytes is not the canonical PEM"):
        verify_bundle(tmp_path / "model", sig, policy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda vm, s0: s0.update(keyid=None),
        lambda vm, s0: s0.pop("keyid"),
        lambda vm, s0: vm.pop("tlogEntries"),
        lambda vm, s0: (vm.pop("tlogEntries"), s0.update(keyid=None)),
    ],
    ids=["keyid-null", "keyid-removed", "tlogEntries-removed", "old-keyid-new-key"],
)
def test_key_bundle_shape_is_one_of_model_signings(tmp_path: Path, edit: Any) -> None:
    """model_signing wrote two shapes of key bundle: >= 1.1 ``tlogEntries: []``,
    ``keyid: ""`` and ``publicKey.hint``; 0.3.1 .. 1.0.1 no ``tlogEntries``,
    ``keyid: null`` and ``rawBytes``/``keyDetails``.  Every mix of the two verified
    (keyid "" / null / absent, tlogEntries [] / absent): a new bundle digest for the
    same signature.  Now only the two shapes; every released vector still verifies
    (tests/signing)."""
    from weightguard.errors import FormatError
    from weightguard.policy import PublicKey
    from weightguard.signing import sign_model, verify_bundle

    model = _plain_model(tmp_path / "m")
    signer, pub = _key(tmp_path, "k")
    sig = tmp_path / "m.sig"
    sign_model(model, sig, signer)
    verify_bundle(model, sig, PublicKey.from_file(pub))
    doc = json.loads(sig.read_bytes())
    edit(doc["verificationMaterial"], doc["dsseEnvelope"]["signatures"][0])
    sig.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"the shapes model_signing writes"):
        verify_bundle(model, sig, PublicKey.from_file(pub))


def test_certificate_bundle_carries_no_unused_certificates(tmp_path: Path) -> None:
    """Issue 22's canonical-bundle class for certificate bundles: the leaf appended
    once more to the chain leaves the proof unchanged and the bundle digest new.
    (Note: ECDSA signatures themselves stay malleable, (r, s) -> (r, n - s), and
    model_signing does not normalise s, so a bundle digest can never be the only name
    of a signature.)"""
    import base64

    from cryptography import x509

    from tests.support.signing import write_chain
    from weightguard.errors import WeightguardError
    from weightguard.policy import ChainRoot
    from weightguard.signing import CertificateSigner, KeySigner, sign_model, verify_bundle

    model = _plain_model(tmp_path / "m")
    pem = write_chain(tmp_path)
    leaf = x509.load_pem_x509_certificate(pem["leaf_cert"].read_bytes())
    inter = x509.load_pem_x509_certificate(pem["intermediate"].read_bytes())
    key = KeySigner.from_file(pem["leaf_key"])._key
    sig = tmp_path / "m.sig"
    sign_model(model, sig, CertificateSigner(key, leaf, [inter]))
    verify_bundle(model, sig, ChainRoot(pem["root"]))
    doc = json.loads(sig.read_bytes())
    certs = doc["verificationMaterial"]["x509CertificateChain"]["certificates"]
    certs.append({"rawBytes": certs[0]["rawBytes"]})
    assert base64.b64decode(certs[-1]["rawBytes"])
    sig.write_text(json.dumps(doc))
    with pytest.raises(WeightguardError, match="certificate"):
        verify_bundle(model, sig, ChainRoot(pem["root"]))


def test_report_unsigned_watermark_commitment_is_not_a_fact(tmp_path: Path) -> None:
    """The watermark commitment (``<release>.wmcommit.json``) is not signed.  Anyone
    could put one beside a release and the verdict box said "watermark committed",
    even when it listed no marked output (\"0 of 0 marked output(s) are the verified
    files\") or outputs that are not the verified files.  Now only a commitment whose
    outputs are the verified files is stated as one; the BOM says whether it is tied."""
    from weightguard.bom import build_bom
    from weightguard.policy import PublicKey
    from weightguard.report import build_report
    from weightguard.signing import sign_model

    model = _plain_model(tmp_path / "m")
    signer, pub = _key(tmp_path, "rel")
    sign_model(model, tmp_path / "model.sig", signer)
    policy = PublicKey.from_file(pub)
    for outputs in ({}, {"model.safetensors": "00" * 32}):
        forged = {
            "commitment": "ab" * 32,
            "params": {"scheme": "wg-forged"},
            "key_ref": "vault://transit/keys/wm",
            "outputs_sha256": outputs,
        }
        (tmp_path / "m.wmcommit.json").write_text(json.dumps(forged))
        ev = build_report(model, policy, signature=tmp_path / "model.sig")
        assert ev.provenance.verdict == "PASS"
        (area, level, words) = ev.headline[1]
        assert area == "Protection" and "watermark committed" not in words
        assert "not tied to its verified files" in words and level != "PASS"
        assert ev.protection.watermark is not None and not ev.protection.watermark.tied
    bom = json.loads(build_bom(model, policy, signature=tmp_path / "model.sig"))
    props = {p["name"]: p["value"] for p in bom["metadata"]["component"]["properties"]}
    assert props["weightguard:watermark:tied_to_verified_files"] == "false"


def test_report_counts_each_log_once(tmp_path: Path) -> None:
    """The same access log given twice (or a copy of it under another name) doubled
    every total: 3 loads reported as 6.  Now a log (by its id) is counted once; a
    second source holding the same log id with other records is not summarised and
    the access verdict is UNVERIFIABLE."""
    import shutil

    from weightguard import audit
    from weightguard.policy import PublicKey
    from weightguard.report import build_report
    from weightguard.signing import sign_model

    model = _plain_model(tmp_path / "m")
    signer, pub = _key(tmp_path, "rel")
    sign_model(model, tmp_path / "model.sig", signer)
    cp = tmp_path / "cp.pem"
    audit.generate_checkpoint_key(os.fspath(cp))
    log = tmp_path / "log.jsonl"
    with audit.AuditLog(str(log), signing_key=str(cp)) as a:
        for _ in range(3):
            a.emit("load.ok", object={"uri": "m"}, subject={"user": "u", "host": "h"})
    shutil.copy(log, tmp_path / "copy.jsonl")
    older = tmp_path / "older.jsonl"
    older.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:2]))

    def report(*logs: Path) -> Any:
        return build_report(
            model,
            PublicKey.from_file(pub),
            signature=tmp_path / "model.sig",
            access_logs=list(logs),
            checkpoint_key=Path(f"{cp}.pub"),
            max_unsigned_tail=10,
        )

    assert report(log).access.stats.loads == 3
    for second in (log, tmp_path / "copy.jsonl"):
        acc = report(log, second).access
        assert acc.stats.loads == 3 and acc.verdict == "OK"
        assert [lv.verdict for lv in acc.logs] == ["OK", "DUPLICATE"]
    acc = report(log, older).access
    assert acc.stats.loads == 3 and acc.verdict == "UNVERIFIABLE"
    assert acc.logs[1].verdict == "OVERLAP" and not acc.logs[1].summarised


# ------------------------------------------------------------------ verify s3://


def test_verify_s3_file_and_folder_of_one_name_is_typed_and_audited(
    s3_env: Any, bucket: str, tmp_path: Path
) -> None:
    """S3 (SeaweedFS here) stores ``p/config.json`` and ``p/config.json/x`` side by
    side; ``weightguard verify s3://`` copies the release into a temporary directory,
    where one name cannot be a file and a folder."""
    from weightguard.audit import AuditLog, MemorySink
    from weightguard.errors import WeightguardError
    from weightguard.policy import PublicKey
    from weightguard.signing import sign_model
    from weightguard.transfer import verify_release

    model = _plain_model(tmp_path / "m")
    signer, pub = _key(tmp_path, "k")
    sign_model(model, model / "model.sig", signer)
    client = s3_env.client()
    for p in model.iterdir():
        client.upload_file(str(p), bucket, f"rel/{p.name}")
    client.put_object(Bucket=bucket, Key="rel/config.json/x", Body=b"1")
    sink = MemorySink()
    with pytest.raises(WeightguardError, match=r"config\.json"):
        verify_release(f"s3://{bucket}/rel/", PublicKey.from_file(pub), audit=AuditLog(sink))
    assert [r["event"] for r in sink.records] == ["verify.failed"]


def test_co_signing_a_model_signing_release_keeps_it_verifiable(tmp_path: Path) -> None:
    """The release team signed with model_signing (no ignore_paths); the security team
    adds ``model.sig.d/security.sig`` with weightguard.  Before: the primary no longer
    verified ("files not covered ...: model.sig.d/security.sig"), nor the co-signed
    release, and ``sign --co-sign`` said nothing.  The bundle file itself is never a
    file its signature must cover; its co-signatures are bundles too."""
    import shutil

    from tests.vectors.oms import restore_untracked
    from weightguard.policy import CoSigned, PublicKey
    from weightguard.signing import cosignature_path, sign_model, verify_bundle

    oms_dir = Path(__file__).resolve().parents[1] / "vectors" / "oms"
    src = oms_dir / "ms-1.0.1" / "key-files-sha256"
    model = tmp_path / "model"
    shutil.copytree(src / "model", model)
    restore_untracked(src, model)
    shutil.copy(src / "model.sig", model / "model.sig")
    signer, pub = _key(tmp_path, "security")
    co = cosignature_path(model / "model.sig", "security")
    co.parent.mkdir()
    sign_model(model, co, signer)
    release = PublicKey.from_file(oms_dir / "keys" / "key-pub.pem")
    verify_bundle(model, model / "model.sig", release)
    verify_bundle(model, model / "model.sig", CoSigned(release, PublicKey.from_file(pub)))


def test_report_survives_absurd_record_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log anyone can write (UNSIGNED, still summarised with that label) whose
    records say year 1 and year 9999: matplotlib's date axis raised ValueError
    ("dates must be between year 0001 and 9999") and no report was written at all.
    Now such records are counted but not placed in time."""
    from weightguard import audit
    from weightguard.policy import PublicKey
    from weightguard.report import build_report, write_report
    from weightguard.signing import sign_model

    model = _plain_model(tmp_path / "m")
    signer, pub = _key(tmp_path, "rel")
    sign_model(model, tmp_path / "model.sig", signer)
    log = tmp_path / "log.jsonl"
    times = iter(["0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"])
    monkeypatch.setattr(audit, "utc_now", lambda: next(times))
    with audit.AuditLog(str(log)) as a:
        for _ in range(2):
            a.emit("load.ok", object={"uri": "m"}, subject={"user": "u", "host": "h"})
    monkeypatch.undo()
    ev = build_report(model, PublicKey.from_file(pub), signature=tmp_path / "model.sig",
                      access_logs=[log])  # fmt: skip
    assert ev.access.verdict == "UNSIGNED" and ev.access.stats.loads == 2
    page, md = write_report(ev, tmp_path / "r.html", tmp_path / "r.md")
    assert "2 successful loads" in page.read_text() and "**0 denied**" in md.read_text()


@pytest.mark.parametrize("keyid", ["", None])
def test_sigstore_bundle_carries_no_keyid(tmp_path: Path, keyid: str | None) -> None:
    """sigstore-python writes no ``keyid``; ``"keyid": ""`` or ``null`` added to a
    model_signing Sigstore bundle verified (offline, pinned trusted root) under a new
    bundle digest.  Now refused."""
    interop = Path(__file__).resolve().parents[2].parent / "shared" / "interop"
    v = interop / "model-signing-v1.1.0" / "v1.1.0-sigstore"
    if not v.is_dir():
        pytest.skip("../shared/interop not present")
    import shutil

    from weightguard.errors import FormatError
    from weightguard.policy import SigstoreIdentity
    from weightguard.signing import verify_bundle

    model = tmp_path / "model"
    shutil.copytree(v, model)
    for p in [model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    sig = model / "model.sig"
    ident = SigstoreIdentity("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")
    verify_bundle(model, sig, ident)  # as released
    doc = json.loads(sig.read_text())
    doc["dsseEnvelope"]["signatures"][0]["keyid"] = keyid
    sig.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"keyid in a Sigstore bundle"):
        verify_bundle(model, sig, ident)


def test_sigstore_bundle_keeps_its_timestamp_verification_data(tmp_path: Path) -> None:
    """sigstore-python always writes ``timestampVerificationData`` (``{}`` before 4.x,
    ``{"rfc3161Timestamps": [...]}`` since; every released model_signing Sigstore
    bundle carries it).  Removed, the bundle verified (offline, pinned trusted root)
    under a new bundle digest.  Now refused.  Emptied (``{}``) it still verifies: that
    is what model_signing 0.3.1 .. 1.0.1 bundles carry, so it cannot be told from a
    bundle written without a timestamp authority (docs/signing.md)."""
    import shutil

    from weightguard.errors import FormatError
    from weightguard.policy import SigstoreIdentity
    from weightguard.signing import verify_bundle

    hist = Path(__file__).resolve().parents[1] / "vectors" / "oms" / "historical"
    model = tmp_path / "model"
    shutil.copytree(hist / "v1.1.0-sigstore", model)
    sig = model / "model.sig"
    ident = SigstoreIdentity(
        "stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2", offline=True
    )
    verify_bundle(model, sig, ident)  # as released
    doc = json.loads(sig.read_text())
    assert doc["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    doc["verificationMaterial"].pop("timestampVerificationData")
    sig.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"without timestampVerificationData"):
        verify_bundle(model, sig, ident)
    doc["verificationMaterial"]["timestampVerificationData"] = {}
    sig.write_text(json.dumps(doc))
    assert verify_bundle(model, sig, ident).kind == "sigstore"
