"""Evidence for auditors: one self-contained page on a release's provenance, protection
and access, computed by verification under the caller's policy.

    from weightguard.policy import PublicKey
    from weightguard.report import build_report, write_report

    ev = build_report("release/", PublicKey.from_file("release.pub"),
                      access_logs=["audit.jsonl"], checkpoint_key="audit.pub")
    write_report(ev, "report.html")          # and report.md, its Markdown twin
    ev.verdict                                 # "PASS" | "ATTENTION" | "FAIL"

Nothing is copied from the release's own claims: the signer, the signing time and the
covered files come from :func:`weightguard.signing.verify_bundle` (every byte hashed),
the key references from the artifact headers (signed bytes when provenance passed),
and access figures only from audit logs that :func:`weightguard.audit.verify_log`
accepted, re-chained record by record as they are counted.  A log that does not verify
is shown as such and never summarised.  No data key, no torch: the core install with
the ``report`` extra (matplotlib draws the timeline, cyclonedx-python-lib the BOM).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from weightguard import __version__
from weightguard._internal.format.model_dir import is_weight_file
from weightguard._internal.report.access import AccessStats
from weightguard._internal.report.evidence import (
    ATTENTION,
    FAIL,
    PASS,
    Access,
    Certificate,
    CoveredFile,
    Evidence,
    LogVerdict,
    Protected,
    Protection,
    Provenance,
    SignerProof,
    Watermark,
)
from weightguard._internal.report.render import render_html, render_markdown
from weightguard._internal.report.source import local_release
from weightguard._internal.signing.location import default_signature
from weightguard.errors import ConfigError, SourceError, WeightguardError
from weightguard.manifest import S3Options, VerifiedManifest

__all__ = [
    "ATTENTION",
    "FAIL",
    "PASS",
    "Evidence",
    "base_model_of",
    "build_report",
    "default_signature",
    "release_evidence",
    "write_report",
]

Progress = Callable[[int], None]

_MAX_SIDE_FILE = 1 << 20


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(t: _dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


# ------------------------------------------------------------------------ provenance


def _cert(c: Any) -> Certificate:
    from cryptography.hazmat.primitives import hashes

    return Certificate(
        subject=c.subject.rfc4514_string(),
        issuer=c.issuer.rfc4514_string(),
        not_before=c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        not_after=c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        sha256=c.fingerprint(hashes.SHA256()).hex(),
    )


def _proofs(sig_data: bytes, where: str, policy: Any) -> list[SignerProof]:
    """Who signed, from the verifier's proofs (the bundle is proven again: cheap)."""
    from weightguard._internal.signing.oms import parse_bundle
    from weightguard.verifying import verify_signature

    bundle = parse_bundle(sig_data, path=where)
    res = verify_signature(bundle, policy, path=where)
    out = []
    for p in res.verified.proofs:
        tlog: list[dict[str, Any]] = []
        if bundle.kind == "sigstore":  # proven by sigstore-python with the identity above
            for e in bundle.document.get("verificationMaterial", {}).get("tlogEntries", []):
                if isinstance(e, dict):
                    t = str(e.get("integratedTime"))
                    tlog.append(
                        {
                            "kind": "rekor " + str(e.get("kindVersion", {}).get("kind", "")),
                            "log_index": e.get("logIndex"),
                            "integrated_time": _iso(_dt.datetime.fromtimestamp(int(t), _dt.UTC))
                            if str(t).isdigit()
                            else None,
                            "log_id": e.get("logId", {}).get("keyId"),
                        }
                    )
        anchor = getattr(p.anchor, "description", "") or type(p.anchor).__name__
        out.append(
            SignerProof(
                signer=p.signer,
                anchor=anchor,
                key_fingerprint=p.key_fingerprint,
                key_algorithm=_key_algorithm(p, bundle),
                chain=[_cert(c) for c in p.chain],
                signed_at=_iso(p.signed_at),
                time_source=p.time_source,
                tlog=tlog,
            )
        )
    return out


def _sub_policies(policy: Any) -> Sequence[Any] | None:
    """The policies of a co-signed policy (``--require-all``), else None."""
    from weightguard import policy as pol

    cosigned = getattr(pol, "CoSigned", None)
    if cosigned is not None and isinstance(policy, cosigned):
        return list(policy.policies)
    return None


def _cosigned_proofs(
    primary: bytes, where: str, sig_path: Path, policies: Sequence[Any]
) -> list[SignerProof]:
    """The proofs of every bundle (primary and co-signatures) that one of ``policies``
    accepts; verify_bundle already required each policy to have a bundle of its own."""
    bundles = [(where, primary)]
    d = Path(f"{sig_path}.d")
    if d.is_dir() and not d.is_symlink():
        for p in sorted(d.glob("*.sig"))[:16]:
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= 64 * 1024 * 1024:
                bundles.append((str(p), p.read_bytes()))
    out: list[SignerProof] = []
    seen: set[tuple[str, str | None]] = set()
    for label, data in bundles:
        for sub in policies:
            try:
                got = _proofs(data, label, sub)
            except WeightguardError:
                continue
            for proof in got:
                if (proof.signer, proof.key_fingerprint) not in seen:
                    seen.add((proof.signer, proof.key_fingerprint))
                    out.append(proof)
    return out


def _key_algorithm(proof: Any, bundle: Any) -> str | None:
    """``ECDSA P-256`` etc.: the signing key's algorithm, from the proven material."""
    key = getattr(proof.anchor, "key", None)
    if proof.chain:
        key = proof.chain[0].public_key()
    elif key is None and bundle.certificates:
        from cryptography import x509

        key = x509.load_der_x509_certificate(bundle.certificates[0]).public_key()
    curve = getattr(getattr(key, "curve", None), "name", None)
    if curve is None:
        return None
    names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
    return f"ECDSA {names.get(curve, curve)}"


def _uncovered_reason(name: str, allow_unsigned: Sequence[str]) -> str:
    import fnmatch

    for pat in allow_unsigned:
        if fnmatch.fnmatch(name, pat) or name.startswith(pat.rstrip("*")):
            return f"allowed by the caller (--allow-unsigned {pat})"
    return "left out by the signer (the signature's ignore_paths)"


def base_model_of(root: Path, manifest: VerifiedManifest) -> tuple[str, str] | None:
    """The base model a release declares, from signed files only: ``base_model`` in
    README.md's front matter (the Hugging Face model card field), else config.json's
    ``_name_or_path`` when it names a hub repository (``org/name``), not a local path.
    Files the signature does not cover are not read."""
    if root.is_file():
        return None
    if "README.md" in manifest.files:
        text = _small(root / "README.md")
        if text is not None and text.startswith("---"):
            front = text[3:].split("\n---", 1)[0]
            lines = front.splitlines()
            for i, line in enumerate(lines):
                if line.startswith("base_model:"):
                    value = line.split(":", 1)[1].strip().strip("'\"")
                    if not value and i + 1 < len(lines):
                        value = lines[i + 1].strip().lstrip("- ").strip("'\"")
                    if value:
                        return value, "README.md base_model (signed)"
    if "config.json" in manifest.files:
        text = _small(root / "config.json")
        try:
            cfg = json.loads(text) if text is not None else None
        except ValueError:
            cfg = None
        name = cfg.get("_name_or_path") if isinstance(cfg, dict) else None
        if (
            isinstance(name, str)
            and name.count("/") == 1
            and not name.startswith((".", "/", "~"))
            and all(part and " " not in part for part in name.split("/"))
        ):
            return name, "config.json _name_or_path (signed)"
    return None


def _small(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIDE_FILE + 1)
    except OSError:
        return None
    if len(data) > _MAX_SIDE_FILE:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _provenance(
    root: Path,
    release: str,
    sig_data: bytes | None,
    sig_display: str,
    sig_path: str,
    policy: Any,
    allow_unsigned: Sequence[str],
    audit: Any,
) -> tuple[Provenance, VerifiedManifest | None]:
    from weightguard.signing import verify_bundle

    describe = policy.describe() if hasattr(policy, "describe") else repr(policy)
    prov = Provenance(verdict=FAIL, summary="", policy=describe, signature=sig_display)
    if sig_data is None:
        prov.summary = f"no signature found (looked for {sig_display}): provenance unknown"
        return prov, None
    unsigned = list(allow_unsigned)
    inside: str | None = None
    if root.is_dir():
        # as `weightguard verify` does: the bundle itself is never a file it must cover
        with contextlib.suppress(ValueError):  # a bundle outside the directory
            inside = Path(sig_path).resolve().relative_to(root.resolve()).as_posix()
        if inside is not None:
            import glob

            unsigned.append(glob.escape(inside))
    try:
        cosigned = _sub_policies(policy)
        if cosigned is None:
            m = verify_bundle(root, sig_data, policy, allow_unsigned=unsigned, audit=audit)
            proofs = _proofs(sig_data, sig_display, policy)
        else:  # each signer by a bundle of its own: the primary and <sig>.d/*.sig
            m = verify_bundle(root, sig_path, policy, allow_unsigned=unsigned, audit=audit)
            proofs = _cosigned_proofs(sig_data, sig_display, Path(sig_path), cosigned)
    except WeightguardError as exc:
        prov.summary = f"verification failed: {exc}"
        return prov, None
    prov.verdict = PASS
    prov.unsafe = m.unsafe
    prov.bundle_sha256 = m.bundle_digest
    prov.kind = m.kind
    prov.signer = m.signer
    prov.signed_at = _iso(m.signed_at)
    prov.time_source = m.time_source
    prov.model_name = m.model_name
    prov.proofs = proofs
    prov.files = [
        CoveredFile(
            name=root.name if n == "." else n,
            size=f.size,
            digest_algorithm=f.resource_algorithm,
            digest=f.resource_digest.hex(),
            chunk_algorithm=f.algorithm,
            chunks=len(f.digests),
        )
        for n, f in sorted(m.files.items())
    ]
    sig_name = inside or Path(sig_display).name
    prov.uncovered = [
        (
            n,
            "the signature bundle itself"
            if n == sig_name
            else _uncovered_reason(n, allow_unsigned),
        )
        for n in m.uncovered
    ]
    prov.base_model = base_model_of(root, m)
    n_bytes = sum(f.size for f in m.files.values())
    prov.summary = (
        f"signed by {m.signer}"
        + (f" at {prov.signed_at} ({m.time_source})" if prov.signed_at else "")
        + f"; {len(m.files)} file(s), {n_bytes:,} bytes, match their signed digests; "
        f"{len(m.uncovered)} present file(s) not covered"
    )
    if m.unsafe:
        prov.verdict = FAIL
        prov.summary = "signer NOT verified (--unsafe-no-verification); " + prov.summary
    return prov, m


# ------------------------------------------------------------------------ protection


def _is_weight_name(name: str) -> bool:
    return is_weight_file(name) or name == "."


def _protection(
    root: Path,
    manifest: VerifiedManifest | None,
    watermark_commitment: str | None,
    watermark_key: str | None,
) -> Protection:
    from weightguard import crypt

    prot = Protection()
    try:
        info = crypt.inspect(root)
    except WeightguardError as exc:
        info = {}
        if root.is_dir() or crypt.is_encrypted(root):
            prot.error = f"cannot read the artifact headers: {exc}"
    per = ({".": info} if info else {}) if root.is_file() else dict(info.get("files", {}))
    for name, s in sorted(per.items()):
        key = s.get("key", {})
        prot.encrypted.append(
            Protected(
                name=root.name if name == "." else name,
                aead=s.get("algorithms", {}).get("aead", "?"),
                provider=str(key.get("provider")),
                key_uri=str(key.get("uri")),
                key_version=key.get("key_version"),
                context=str(key.get("context")),
                header_encrypted=bool(s.get("header_encrypted")),
                chunk_size=int(s.get("chunk_size", 0)),
                complete=bool(s.get("complete", True)),
            )
        )
    names = (
        list(manifest.files)
        if manifest is not None
        else (["."] if root.is_file() else [p.relative_to(root).as_posix()
                                             for p in sorted(root.rglob("*.safetensors"))])
    )  # fmt: skip
    prot.plain_weights = [
        (root.name if n == "." else n) for n in names if _is_weight_name(n) and n not in per
    ]
    _watermark(prot, root, manifest, watermark_commitment, watermark_key)
    return prot


def _watermark(
    prot: Protection,
    root: Path,
    manifest: VerifiedManifest | None,
    path: str | None,
    key: str | None,
) -> None:
    from weightguard.watermark import commitment_path, verify_commitment

    cpath = Path(path) if path else commitment_path(root)
    if not cpath.is_file():
        prot.watermark_note = (
            f"no watermark commitment at {cpath}"
            if path is None
            else f"watermark commitment {cpath} not found"
        )
        if path is not None:
            prot.error = prot.watermark_note
        return
    text = _small(cpath)
    try:
        doc = json.loads(text) if text is not None else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("commitment"), str):
        prot.watermark_note = f"{cpath} is not a watermark commitment"
        prot.error = prot.watermark_note
        return
    outputs = doc.get("outputs_sha256") if isinstance(doc.get("outputs_sha256"), dict) else {}
    assert isinstance(outputs, dict)
    match = "release not verified: not compared"
    tied = False
    if manifest is not None and not outputs:
        match = "no marked outputs listed: not tied to this release"
    elif manifest is not None:
        signed = {
            (root.name if n == "." else n): f.resource_digest.hex()
            for n, f in manifest.files.items()
            if f.resource_algorithm == "sha256"
        }
        if not signed:
            match = "not comparable: the release is signed with BLAKE3 digests"
        else:
            same = [n for n, d in outputs.items() if signed.get(n) == d]
            differ = [n for n in outputs if n not in same]
            match = f"{len(same)} of {len(outputs)} marked output(s) are the verified files"
            tied = not differ
            if differ:
                match += " (differ or absent: " + ", ".join(sorted(differ)[:5]) + ")"
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    assert isinstance(params, dict)
    wm = Watermark(
        path=str(cpath),
        scheme=str(params.get("scheme", "?")),
        time=str(doc.get("time", "?")),
        key_ref=str(doc.get("key_ref", "?")),
        commitment=str(doc["commitment"]),
        tensors_marked=doc.get("tensors_marked")
        if isinstance(doc.get("tensors_marked"), int)
        else None,
        outputs={str(k): str(v) for k, v in outputs.items()},
        outputs_match=match,
        tied=tied,
    )
    if key is not None:
        try:
            ok = verify_commitment(cpath, key)
        except WeightguardError as exc:
            wm.key_check = f"could not check the key: {exc}"
        else:
            wm.key_check = (
                "the given key IS the committed watermark key"
                if ok
                else "the given key is NOT the committed watermark key"
            )
    prot.watermark = wm


# ------------------------------------------------------------------------ access


def _timeline(acc: Access) -> None:
    from weightguard._internal.report.timeline import series_for_plot, timeline_svg

    st = acc.stats
    assert st is not None
    tl = st.timeline()
    acc.bin_hours = tl.bin_hours
    acc.timeline_svg = timeline_svg(
        tl, st.denied, st.tamper, title=f"loads per identity per {tl.bin_hours} h (UTC)"
    )
    acc.timeline_points = {
        "loads": sum(len(s) for _, s in series_for_plot(tl)),
        "denied": len(st.denied),
        "tamper": len(st.tamper),
    }
    for by in ("pod", "node"):  # the same bins, one line per pod, per node
        t = st.timeline(by=by)
        svg = timeline_svg(
            t, [], [], title=f"loads per {by} per {t.bin_hours} h (UTC)",
            gid=f"wg-{by}", size=(9.5, 2.8),
        )  # fmt: skip
        setattr(acc, f"timeline_{by}_svg", svg)
        acc.timeline_points[f"{by}s"] = sum(len(s) for _, s in series_for_plot(t))


def _counted_before(
    lv: LogVerdict,
    states: dict[str, tuple[Any, ...]],
    counted: dict[str, tuple[tuple[Any, ...], str]],
) -> bool:
    """Whether a verified log's ids were counted from an earlier source (then ``lv``
    says so).  The same log given twice (or a copy of it) is counted once: DUPLICATE;
    a log id whose records differ between two sources is a fork or an old copy:
    neither is the one log, so OVERLAP is not summarised and the access verdict fails."""
    again = sorted(set(states) & set(counted))
    if not again:
        return False
    first = counted[again[0]][1]
    if all(counted[i][0] == states[i] for i in again) and set(states) <= set(counted):
        lv.verdict = "DUPLICATE"
        lv.text = f"the same log as {first} (log {again[0][:8]}): counted once"
    else:
        lv.verdict = "OVERLAP"
        lv.text = (
            f"log {again[0][:8]} is also in {first} with other records: not "
            "summarised (give each log once, its newest copy)"
        )
    return True


def _access(
    logs: Sequence[str],
    *,
    checkpoint_key: str | None,
    checkpoint_vault_key: str | None,
    anchor: str | None,
    log_ids: Sequence[str] | None,
    max_unsigned_tail: int,
    progress: Progress | None,
    on_verified: Callable[[str, int], None] | None,
    on_verifying: Callable[[str], None] | None = None,
    on_log: Callable[[str, int | None], None] | None = None,
) -> Access:
    """Each log verified as `weightguard audit verify` does, in one streaming read that
    also counts (one parse per line); only the counts of those that verify are kept."""
    from weightguard.audit import log_size, verify_log

    acc = Access()
    stats = AccessStats()
    counted: dict[str, tuple[tuple[Any, ...], str]] = {}  # log id -> (its state, source)
    for src in logs:
        anc = anchor if anchor is not None else (src if src.startswith("s3://") else None)
        if on_verifying is not None:
            on_verifying(src)
        if on_log is not None:
            on_log(src, log_size(src))
        one = AccessStats()  # counted as the records verify; kept only if the log did

        def count(rec: dict[str, Any], one: AccessStats = one) -> None:
            one.add(rec, log=str(rec.get("log", ""))[:8])

        try:
            res = verify_log(
                src,
                checkpoint_key=checkpoint_key,
                checkpoint_vault_key=checkpoint_vault_key,
                anchor=anc,
                max_unsigned_tail=max_unsigned_tail,
                log_ids=log_ids or None,
                on_record=count,
                progress=progress,
            )
        except WeightguardError as exc:
            acc.logs.append(LogVerdict(src, "UNREADABLE", f"cannot verify: {exc}"))
            continue
        if not res.ok:
            acc.logs.append(LogVerdict(src, "BROKEN", res.describe(), list(res.warnings)))
            continue
        lv = LogVerdict(
            src,
            "OK" if res.signed else "UNSIGNED",
            res.describe(),
            list(res.warnings),
            [vars(s).copy() for s in res.logs],
        )
        acc.logs.append(lv)
        if on_verified is not None:
            on_verified(src, res.records)
        states = {s.log_id: (s.records, s.last_seq, s.head) for s in res.logs}
        if _counted_before(lv, states, counted):
            continue
        lv.summarised = True
        counted.update({i: (st, src) for i, st in states.items()})
        stats.merge(one)
        acc.stats = stats
    verdicts = {lv.verdict for lv in acc.logs}
    if not acc.logs:
        acc.verdict = "NONE"
    elif verdicts - {"OK", "UNSIGNED", "DUPLICATE"}:
        acc.verdict = "UNVERIFIABLE"
    else:
        acc.verdict = "UNSIGNED" if "UNSIGNED" in verdicts else "OK"
    if acc.stats is not None:
        _timeline(acc)
    return acc


# ------------------------------------------------------------------------ verdict


def _headline(ev: Evidence) -> None:
    p, pr, acc = ev.provenance, ev.protection, ev.access
    lines: list[tuple[str, str, str]] = [("Provenance", p.verdict, p.summary)]
    if pr.error:
        plevel, pwords = FAIL, pr.error
    elif pr.plain_weights:
        plevel = ATTENTION
        pwords = f"{len(pr.plain_weights)} weight file(s) NOT encrypted at rest"
    elif pr.encrypted:
        providers = sorted({f"the {a.provider} provider ({a.key_uri})" for a in pr.encrypted})
        plevel = PASS
        pwords = (
            f"{len(pr.encrypted)} artifact(s) encrypted with "
            f"{', '.join(sorted({a.aead for a in pr.encrypted}))}; data keys wrapped by "
            + "; ".join(providers)
            + (
                "; tensor names hidden"
                if all(a.header_encrypted for a in pr.encrypted)
                else "; tensor names readable (header not encrypted)"
            )
        )
    else:
        plevel, pwords = ATTENTION, "nothing encrypted"
    if pr.watermark is not None and pr.watermark.tied:
        pwords += f"; watermark committed ({pr.watermark.scheme})"
    elif pr.watermark is not None:
        # the commitment file is not signed: a claim, unless its outputs are the
        # verified files
        plevel = FAIL if plevel == FAIL else ATTENTION
        pwords += (
            "; a watermark commitment is beside the release but not tied to its "
            f"verified files ({pr.watermark.outputs_match})"
        )
    lines.append(("Protection", plevel, pwords))
    st = acc.stats
    if acc.verdict == "NONE":
        lines.append(("Access", ATTENTION, "no audit log given: who loaded it is not shown"))
    elif acc.verdict == "UNVERIFIABLE":
        bad = [
            f"{lv.source} ({lv.verdict})"
            for lv in acc.logs
            if not lv.summarised and lv.verdict != "DUPLICATE"
        ]
        lines.append(("Access", FAIL, "UNVERIFIABLE log(s), not summarised: " + ", ".join(bad)))
    else:
        assert st is not None
        level = PASS if acc.verdict == "OK" else ATTENTION
        if st.denied_total or st.tamper_total:
            level = ATTENTION
        words = (
            ("log verified with its checkpoint key" if acc.verdict == "OK"
             else "UNSIGNED log (chain intact, no checkpoint key): self-consistent only")
            + f"; {st.loads:,} loads by {len(st.loads_by_identity)} identities, "
            f"{st.denied_total:,} denied, {st.tamper_total:,} tamper event(s)"
        )  # fmt: skip
        lines.append(("Access", level, words))
    ev.headline = lines
    ev.answers = _answers(ev)
    levels = [lvl for _, lvl, _ in lines]
    ev.verdict = FAIL if FAIL in levels else ATTENTION if ATTENTION in levels else PASS


def _answers(ev: Evidence) -> list[tuple[str, str]]:
    """The four questions an auditor comes with, answered in one line each."""
    p, acc = ev.provenance, ev.access
    st = acc.stats
    if p.verdict == "PASS":
        who = p.signer or "unknown"
        who += f", at {p.signed_at} ({p.time_source})" if p.signed_at else ", time unknown"
        intact = f"yes: {len(p.files)} file(s) match their signed digests"
    else:
        who = "not established: the signature did not verify under the policy"
        intact = "NOT shown: " + p.summary
    if st is None:
        loaded = (
            "not shown: no verified audit log"
            if acc.verdict != "UNVERIFIABLE"
            else "not shown: the audit log does not verify"
        )
        denied = loaded
    else:
        span = (
            f" between {st.first:%Y-%m-%d %H:%M} and {st.last:%Y-%m-%d %H:%M} UTC"
            if st.first and st.last
            else ""
        )
        top = ", ".join(f"{i} ({n:,})" for i, n in st.loads_by_identity.most_common(3))
        loaded = f"{st.loads:,} loads by {len(st.loads_by_identity)} identities{span}: {top}"
        if len(st.loads_by_identity) > 3:
            loaded += ", ..."
        denied = (
            f"{st.denied_total:,} denial(s) and {st.tamper_total:,} tamper event(s), listed below"
            if st.denied_total or st.tamper_total
            else "nothing was denied and no tampering was found"
        )
        if acc.verdict == "UNSIGNED":
            loaded += " (UNSIGNED log)"
            denied += " (UNSIGNED log)"
    return [
        ("Who signed it?", who),
        ("Is it intact?", intact),
        ("Who loaded it, and when?", loaded),
        ("Was anything denied or tampered with?", denied),
    ]


def _commands(
    ev: Evidence,
    release: str,
    sig: str,
    trust_args: Sequence[str],
    allow_unsigned: Sequence[str],
    logs: Sequence[str],
    audit_args: Sequence[str],
    watermark_commitment: str | None,
) -> None:
    q = shlex.join
    cmds: list[tuple[str, str]] = []
    target = release
    if release.startswith("s3://"):
        copy = ["aws", "s3", "cp", "--recursive", release, "release/"]
        cmds.append(("copy the release", q(copy)))
        target = "release/"
        sig = default_signature(target, is_dir=True)
    extra = [a for pat in allow_unsigned for a in ("--allow-unsigned", pat)]
    cmds.append(
        (
            "provenance: signature, policy, every byte",
            q(["weightguard", "verify", target, "--signature", sig, *trust_args, *extra]),
        )
    )
    cmds.append(("protection: algorithm and key references", q(["weightguard", "inspect", target])))
    if ev.protection.watermark is not None:
        cmds.append(
            (
                "watermark: key commitment and detection (needs the data key if encrypted)",
                q(["weightguard", "watermark", "check", target, "--watermark-key", "KEYREF",
                   "--commitment", ev.protection.watermark.path]),
            )
        )  # fmt: skip
    for log in logs:
        cmds.append(("access: the log's chain and signed checkpoints",
                     q(["weightguard", "audit", "verify", log, *audit_args])))  # fmt: skip
        cmds.append(("access: every denial", q(["weightguard", "audit", "show", log,
                                                 "--outcome", "denied"])))  # fmt: skip
        cmds.append(("access: every tamper event", q(["weightguard", "audit", "show", log,
                                                       "--event", "tamper.detected"])))  # fmt: skip
    cmds.append(
        ("machine-readable bill of materials",
         q(["weightguard", "bom", target, "--signature", sig, *trust_args, "-o", "bom.json"]))
    )  # fmt: skip
    ev.commands = cmds


# ------------------------------------------------------------------------ front


def release_evidence(
    release: str | os.PathLike[str],
    policy: Any,
    *,
    signature: str | os.PathLike[str] | None = None,
    allow_unsigned: Iterable[str] = (),
    watermark_commitment: str | os.PathLike[str] | None = None,
    watermark_key: str | None = None,
    s3: S3Options | None = None,
    audit: Any = None,
) -> tuple[Provenance, Protection]:
    """Provenance (verified under ``policy``) and protection of a release: what the
    report's first two sections and the BOM state.  An ``s3://`` release is copied to
    a private temporary directory, verified there, and removed."""
    rel = os.fspath(release)
    unsigned = list(allow_unsigned)
    sig = os.fspath(signature) if signature is not None else default_signature(rel)
    with local_release(rel, s3=s3) as root:
        sig_local = sig
        if rel.startswith("s3://") and signature is None:
            sig_local = default_signature(root, is_dir=True)
        sig_data: bytes | None = None
        if os.path.isfile(sig_local):
            with open(sig_local, "rb") as f:
                sig_data = f.read(64 * 1024 * 1024 + 1)
        elif signature is not None:
            raise SourceError(f"signature {sig} not found")
        prov, manifest = _provenance(root, rel, sig_data, sig, sig_local, policy, unsigned, audit)
        prot = _protection(
            root,
            manifest,
            os.fspath(watermark_commitment) if watermark_commitment else None,
            watermark_key,
        )
        if rel.startswith("s3://") and not watermark_commitment and prot.watermark is None:
            prot.watermark_note = "no watermark commitment given (--watermark-commitment)"
    encrypted = {a.name for a in prot.encrypted}
    for cf in prov.files:
        cf.encrypted = cf.name in encrypted
    return prov, prot


def _audit_args(
    checkpoint_key: str | os.PathLike[str] | None,
    checkpoint_vault_key: str | None,
    anchor: str | None,
    log_ids: Sequence[str] | None,
    max_unsigned_tail: int,
) -> list[str]:
    """The `weightguard audit verify` options that reproduce the report's log checks."""
    out: list[str] = []
    if checkpoint_key:
        out += ["--checkpoint-key", os.fspath(checkpoint_key)]
    if checkpoint_vault_key:
        out += ["--checkpoint-vault-key", checkpoint_vault_key]
    if anchor:
        out += ["--anchor", anchor]
    for i in log_ids or ():
        out += ["--log-id", i]
    if max_unsigned_tail:
        out += ["--max-unsigned-tail", str(max_unsigned_tail)]
    return out


def build_report(
    release: str | os.PathLike[str],
    policy: Any,
    *,
    signature: str | os.PathLike[str] | None = None,
    allow_unsigned: Iterable[str] = (),
    access_logs: Iterable[str | os.PathLike[str]] = (),
    checkpoint_key: str | os.PathLike[str] | None = None,
    checkpoint_vault_key: str | None = None,
    anchor: str | None = None,
    log_ids: Sequence[str] | None = None,
    max_unsigned_tail: int = 0,
    watermark_commitment: str | os.PathLike[str] | None = None,
    watermark_key: str | None = None,
    s3: S3Options | None = None,
    audit: Any = None,
    trust_args: Sequence[str] = (),
    progress: Progress | None = None,
    on_verified: Callable[[str, int], None] | None = None,
    on_verifying: Callable[[str], None] | None = None,
    on_log: Callable[[str, int | None], None] | None = None,
) -> Evidence:
    """Gather the evidence on ``release`` (directory, file or ``s3://`` prefix).

    ``policy`` is the caller's trust (a :class:`weightguard.policy.Policy`); the
    provenance verdict is what :func:`~weightguard.signing.verify_bundle` says under it.
    ``access_logs`` are verified with ``checkpoint_key`` (Ed25519 PEM) or
    ``checkpoint_vault_key`` and ``anchor`` as ``weightguard audit verify`` does; only
    those that verify are counted.  ``watermark_key`` checks the watermark's key
    commitment (no data key is needed).  ``trust_args`` are the CLI options that
    express ``policy``, repeated in the commands that reproduce each check.
    Each log is read once, in bounded memory, counted as it verifies (counts kept only
    if it verified).  Before each log: ``on_verifying(log)``, ``on_log(log, size)`` (its
    bytes; ``None``: stdin, S3); ``progress(n)``: ``n`` more bytes read and verified;
    ``on_verified(log, records)`` once a log verified.
    """
    if checkpoint_key is not None and checkpoint_vault_key is not None:
        raise ConfigError("give a checkpoint key file or a Vault checkpoint key, not both")
    rel = os.fspath(release)
    unsigned = list(allow_unsigned)
    logs = [os.fspath(x) for x in access_logs]
    sig = os.fspath(signature) if signature is not None else default_signature(rel)
    prov, prot = release_evidence(
        rel,
        policy,
        signature=signature,
        allow_unsigned=unsigned,
        watermark_commitment=watermark_commitment,
        watermark_key=watermark_key,
        s3=s3,
        audit=audit,
    )
    acc = _access(
        logs,
        checkpoint_key=os.fspath(checkpoint_key) if checkpoint_key else None,
        checkpoint_vault_key=checkpoint_vault_key,
        anchor=anchor,
        log_ids=log_ids,
        max_unsigned_tail=max_unsigned_tail,
        progress=progress,
        on_verified=on_verified,
        on_verifying=on_verifying,
        on_log=on_log,
    )
    ev = Evidence(
        release=rel,
        generated_at=_now(),
        generator=f"weightguard {__version__}",
        provenance=prov,
        protection=prot,
        access=acc,
    )
    _headline(ev)
    audit_args = _audit_args(
        checkpoint_key, checkpoint_vault_key, anchor, log_ids, max_unsigned_tail
    )
    _commands(
        ev,
        rel,
        sig,
        trust_args,
        unsigned,
        logs,
        audit_args,
        os.fspath(watermark_commitment) if watermark_commitment else None,
    )
    return ev


def write_report(
    evidence: Evidence,
    html_path: str | os.PathLike[str],
    markdown_path: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path | None]:
    """Write the HTML page and (``markdown_path``) its Markdown twin, atomically."""
    from weightguard._internal.foundation.atomic import atomic_write_bytes

    hp = Path(html_path)
    atomic_write_bytes(hp, render_html(evidence).encode("utf-8"))
    mp = Path(markdown_path) if markdown_path is not None else None
    if mp is not None:
        atomic_write_bytes(mp, render_markdown(evidence).encode("utf-8"))
    return hp, mp
