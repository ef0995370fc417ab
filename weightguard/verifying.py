"""Verification of a model signature, in one place: the verifier proves, the policy narrows.

:func:`verify_bundle` accepts a bundle in this order, written down once here and run
in this order by :func:`_verify` (steps 2 to 5 are :func:`verify_signature`)::

    1. Parse the bundle (structure and sizes bounded; nothing in it is trusted yet).
    2. Collect the trust material the caller configured: the policy's
       ``trust_anchors()`` (public keys, pinned key fingerprints, X.509 roots and
       intermediates, Sigstore identities with their trusted root).  A policy naming
       none proves nothing and is refused, unless it is ``UnsafeNoVerification``.
    3. Prove: the DSSE signature must verify cryptographically under at least one
       anchor -- a key-signed bundle with a configured public key; a certificate bundle
       with its leaf's key after the leaf chains to a configured self-signed root
       (an intermediate CA only with ``allow_intermediate_anchor``) by RFC 5280 path
       validation (``cryptography.x509.verification``: path length, name constraints,
       critical extensions, issuer key usage) and the leaf may sign code; a Sigstore
       bundle by sigstore-python (Fulcio chain, SCT, transparency log, identity).
       Each signing method's proof sits beside its signer
       (``_internal/signing/signers/{ec_key,certificate,sigstore}.py``).
    4. Establish the signing time from what step 3 proved: the transparency log's
       integrated time, else the signer's signed claim (never in the future, inside
       the leaf's validity), else the leaf's notBefore (as model-signing does); the
       chain of step 3 is validated at that time.
    5. Narrow: the policy checks the proven facts (:class:`VerifiedSignature`).  It
       can refuse what was proven; it cannot accept what was not, because it only
       runs after step 3 succeeded and only sees proofs.
    6. Parse the signed statement (only the verified payload is parsed).
    7. Coverage: every weight file signed, nothing signed missing, sizes as signed
       (the listing rules: ``_internal/signing/listing.py``).
    8. Content: every byte against the signed OMS resource digests (one hash per
       byte, what model_signing checks; ``check_chunk_digests=True``: against the
       signed chunk digests too), or, for the loader, each chunk as it streams
       (``hash_files=False``).

``UnsafeNoVerification`` is the one way past step 3: it yields a result marked
``unsafe`` whose signer is ``UNVERIFIED``.  A :class:`~weightguard.policy.CoSigned`
policy runs steps 1 to 7 once per required signer, each on a bundle of its own, then
step 8 once.  The trust data (anchors, proofs) is in :mod:`weightguard.trust`.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from weightguard._internal.signing import listing as lst
from weightguard._internal.signing import oms
from weightguard._internal.signing.hashing import DEFAULT_STRIDE
from weightguard._internal.signing.location import (
    COSIGN_SUFFIX,
    PRIMARY_SIGNATURE,
    default_signature,
)
from weightguard.errors import (
    ConfigError,
    CoverageError,
    FormatError,
    IntegrityError,
    PolicyError,
    SourceError,
    UnsafeOptionRequired,
    VerificationError,
    WeightguardError,
)
from weightguard.manifest import FileDigests, VerifiedManifest
from weightguard.policy import CoSigned, Policy
from weightguard.trust import (
    ChainAnchor,
    FingerprintAnchor,
    KeyAnchor,
    NarrowingResult,
    Proof,
    SigstoreAnchor,
    TrustAnchor,
    UnsafeAnchor,
    VerifiedSignature,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from weightguard._internal.signing.oms import Bundle, Statement

__all__ = [
    "COSIGN_SUFFIX",
    "PRIMARY_SIGNATURE",
    "ChainAnchor",
    "FingerprintAnchor",
    "KeyAnchor",
    "NarrowingResult",
    "Proof",
    "SigstoreAnchor",
    "TrustAnchor",
    "UnsafeAnchor",
    "VerifiedSignature",
    "Verifier",
    "cosignature_path",
    "default_signature",
    "primary_ignores_cosignatures",
    "remote_cosignatures",
    "verify_bundle",
    "verify_signature",
]

#: A directory release's primary bundle, and the suffix of the folder beside a bundle
#: that holds its co-signatures (``model.sig.d/<name>.sig``): their home is
#: ``_internal/signing/location.py``, with :func:`default_signature`.
MAX_COSIGNATURES = 16
MAX_SIGNATURE_FILE = 64 * 1024 * 1024
_COSIGN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# The chunk digest algorithm that checks a file with the plain hash of the bundle's
# hash type (files signed without weightguard's chunk digests).
_CHUNKED_FOR_HASH = {"sha256": "sha256-chunked-v1", "blake3": "blake3-chunked-v1"}


class _Audit(Protocol):
    def emit(self, event: str, **kwargs: Any) -> None: ...


# ------------------------------------------------------------------ steps 2 to 5


class _Unproven(Exception):
    """An anchor that does not apply to this bundle (its reason, for messages)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Verifier:
    """Proves a bundle's signature under trust anchors (steps 2 to 4 above)."""

    def __init__(self, anchors: Iterable[TrustAnchor]) -> None:
        self.anchors = tuple(anchors)

    def verify(self, bundle: Bundle, *, path: str) -> VerifiedSignature:
        """Every anchor that proves the signature; refuses when none does."""
        proofs: list[Proof] = []
        failures: list[tuple[TrustAnchor, str]] = []
        proving = [a for a in self.anchors if not isinstance(a, UnsafeAnchor)]
        for anchor in proving:
            try:
                proofs.append(_prove(anchor, bundle, path))
            except (FormatError, _Unproven) as exc:
                failures.append((anchor, exc.message))
        if proofs:
            return VerifiedSignature(bundle, path, tuple(proofs), failures=tuple(failures))
        if any(isinstance(a, UnsafeAnchor) for a in self.anchors):
            return VerifiedSignature(bundle, path, (), unsafe=True, failures=tuple(failures))
        reasons = [r for _, r in failures]
        if not proving:
            reasons.append(
                "the policy names no trust anchor (public key, key fingerprint, CA root "
                "or Sigstore identity): a policy only narrows what a trust anchor proved"
            )
        raise PolicyError(
            f"signature {path} does not satisfy the policy: " + "; ".join(dict.fromkeys(reasons))
        )


def _prove(anchor: TrustAnchor, bundle: Bundle, path: str) -> Proof:
    """What ``anchor`` proves about ``bundle``; FormatError / _Unproven say why not."""
    # certificate (X.509 bundles) and sigstore load below, only for the bundles needing them
    from weightguard._internal.signing.signers import ec_key
    from weightguard._internal.signing.signers.base import key_fingerprint

    kind = bundle.kind
    if isinstance(anchor, KeyAnchor):
        if kind == "sigstore":
            raise _Unproven(f"{anchor.description}: bundle is a Sigstore keyless signature")
        if kind == "x509":
            from weightguard._internal.signing.signers import certificate

            leaf_key = certificate.leaf_certificate(bundle, path=path).public_key()
            if key_fingerprint(leaf_key) != anchor.fingerprint:
                raise _Unproven(f"{anchor.description}: the leaf certificate holds a different key")
        ec_key.prove_key(bundle, anchor.key, path=path, check_hint=kind == "key")
        claimed = oms.claimed_signing_time(bundle.payload, path=path)
        source = "signer-claim" if claimed else None
        return Proof(anchor, anchor.description, anchor.fingerprint, (), claimed, source)
    if isinstance(anchor, FingerprintAnchor):
        if kind == "key":
            raise _Unproven(
                f"{anchor.description}: key-signed bundles do not carry the key; "
                "use PublicKey(pem) for them"
            )
        from weightguard._internal.signing.signers import certificate

        key = certificate.leaf_certificate(bundle, path=path).public_key()
        if key_fingerprint(key) != anchor.fingerprint:
            raise _Unproven(f"{anchor.description}: signing key is {key_fingerprint(key)}")
        ec_key.prove_key(bundle, key, path=path, check_hint=False)
        return Proof(anchor, f"key {anchor.fingerprint}", anchor.fingerprint)
    if isinstance(anchor, ChainAnchor):
        if kind != "x509":
            raise _Unproven(f"{anchor.description}: bundle is not signed with an X.509 chain")
        from weightguard._internal.signing.signers import certificate

        got = certificate.prove_chain(
            bundle,
            path=path,
            roots=anchor.roots,
            intermediates=anchor.intermediates,
            allow_intermediate_anchor=anchor.allow_intermediate_anchor,
            description=anchor.description,
        )
        fp = key_fingerprint(got.chain[0].public_key())
        source = "signer-claim" if got.claimed_at else None
        return Proof(anchor, got.signer, fp, got.chain, got.claimed_at, source)
    if isinstance(anchor, SigstoreAnchor):
        desc = anchor.description or f"Sigstore identity {anchor.identity}"
        if kind != "sigstore":
            raise _Unproven(f"{desc}: bundle is not a Sigstore keyless signature")
        from weightguard._internal.signing.signers import sigstore

        cert, when = sigstore.prove_sigstore(
            bundle,
            path=path,
            identity=anchor.identity,
            issuer=anchor.issuer,
            trusted_root=anchor.trusted_root(),
        )
        signer = f"{anchor.identity} (issuer {anchor.issuer})"
        source = "transparency-log" if when else None
        return Proof(anchor, signer, key_fingerprint(cert.public_key()), (), when, source)
    raise _Unproven(f"unknown trust anchor {type(anchor).__name__}")


def _best_time(proofs: Sequence[Proof]) -> tuple[datetime | None, str | None]:
    rank = {"transparency-log": 0, "signer-claim": 1, "certificate": 2}
    timed = sorted(
        (p for p in proofs if p.signed_at is not None),
        key=lambda p: rank.get(p.time_source or "", 3),
    )
    return (timed[0].signed_at, timed[0].time_source) if timed else (None, None)


class _Narrowing(Protocol):
    """What the verifier needs of a policy (``weightguard.policy.Policy``)."""

    def trust_anchors(self) -> Sequence[TrustAnchor]: ...

    def check(self, verified: VerifiedSignature) -> Any: ...

    def describe(self) -> str: ...


def verify_signature(bundle: Bundle, policy: _Narrowing, *, path: str) -> NarrowingResult:
    """Steps 2 to 5: prove ``bundle`` under ``policy``'s anchors, then let it narrow."""
    verified = Verifier(policy.trust_anchors()).verify(bundle, path=path)
    result = policy.check(verified)
    if not getattr(result, "ok", False):
        reasons = tuple(getattr(result, "reasons", ()) or ("refused",))
        raise PolicyError(f"signature {path} does not satisfy the policy: " + "; ".join(reasons))
    # Who signed and when come from the proofs, never from the policy's own words.
    signed_at, source = _best_time(verified.proofs)
    signer = "; ".join(dict.fromkeys(p.signer for p in verified.proofs))
    if verified.unsafe:
        signer = "UNVERIFIED (UnsafeNoVerification)"
    return NarrowingResult(
        verified,
        signer=signer or "unknown",
        signed_at=signed_at,
        time_source=source,
        unsafe=verified.unsafe,
    )


# ------------------------------------------------------------------ the whole order


def _names(
    model: str | os.PathLike[str], signature: str | os.PathLike[str] | bytes, *, remote: bool
) -> tuple[str, Path, str, bytes | None]:
    """(model name, signature path, signature name, signature bytes or None).  Names in
    messages and audit records: a remote model's URI as given (a Path() would fold its
    s3:// into s3:/), a signature's bytes named after the model."""
    model_name = os.fspath(model) if remote else str(Path(model))
    if isinstance(signature, bytes | bytearray):
        sig_name = f"{model_name}:signature"
        return model_name, Path(sig_name), sig_name, bytes(signature)
    return model_name, Path(signature), str(Path(signature)), None


def verify_bundle(
    model: str | os.PathLike[str],
    signature: str | os.PathLike[str] | bytes,
    policy: Policy,
    *,
    allow_unsigned: Iterable[str] = (),
    hash_files: bool = True,
    allow_symlinks: bool = False,
    audit: _Audit | None = None,
    listing: Mapping[str, int] | None = None,
    cosignatures: Mapping[str, bytes] | None = None,
    check_chunk_digests: bool = False,
) -> VerifiedManifest:
    """Verify ``signature`` for ``model`` under ``policy``; return the signed digests.

    Checks, in order: bundle structure, the policy (which verifies the signature), the
    statement, coverage (every weight file signed; other unsigned files only if the
    signature's ignore_paths or ``allow_unsigned`` glob patterns allow them; nothing
    signed is missing; sizes), then -- with ``hash_files`` -- every byte against the
    signed OMS resource digests (whole-file or shard digests: they prove the files,
    as model_signing checks them).  ``check_chunk_digests=True`` also recomputes
    weightguard's signed chunk digests and refuses a bundle whose chunk digests do not
    match the bytes (a signer whose two kinds of digests disagree: the loader, which
    checks the chunk digests, would refuse or load other bytes); it costs a second hash
    of every byte.  ``hash_files=False`` is for the secure loader, which checks each
    chunk against ``files[name].digests`` as it streams.

    ``signature`` is a path, or the bundle's bytes (e.g. fetched from S3).
    ``listing`` (with ``hash_files=False`` only) checks coverage and sizes against a
    listing of a model that is not on the local disk (an S3 prefix): ``{name: size}``
    with names relative POSIX paths (``{".": size}`` for a single-file model, then
    ``model`` is only a display name).  The signature itself must not be in it.

    A :class:`~weightguard.policy.CoSigned` policy needs a bundle of its own for each
    of its policies: the primary ``signature`` and its co-signatures
    (``<signature>.d/*.sig`` on disk, or ``cosignatures``: ``{name: bytes}``).
    """
    if isinstance(policy, CoSigned):
        return _verify_cosigned(
            model,
            signature,
            policy,
            cosignatures,
            audit,
            allow_unsigned=allow_unsigned,
            hash_files=hash_files,
            allow_symlinks=allow_symlinks,
            listing=listing,
            check_chunk_digests=check_chunk_digests,
        )
    t0 = time.monotonic()
    root = Path(model)
    model_name, sig_path, sig_name, sig_data = _names(model, signature, remote=listing is not None)
    if listing is not None and hash_files:
        raise ConfigError(
            "verify_bundle(listing=...) can only check coverage and sizes",
            hint="pass hash_files=False (the loader checks the bytes as it streams them)",
        )
    unsigned = list(allow_unsigned)
    try:
        if listing is None and not allow_symlinks:
            # A Hugging Face cache snapshot verifies as it loads: its links must stay
            # in the repo's blobs/ (refused otherwise), and then they are followed.
            from weightguard._internal.format.hf_cache import local_layout

            layout = local_layout(root, is_dir=root.is_dir())
            allow_symlinks = layout.allow_symlinks
            unsigned += layout.allow_unsigned
        manifest = _verify(
            root,
            sig_path,
            policy,
            unsigned,
            hash_files,
            allow_symlinks,
            sig_data=sig_data,
            listing=listing,
            names=(model_name, sig_name),
            check_chunk_digests=check_chunk_digests,
        )
    except WeightguardError as exc:
        _audit_failed(audit, exc, model_name, sig_name)
        raise
    if audit is not None:
        audit.emit(
            "verify.ok",
            object={
                "uri": model_name,
                "signature": sig_name,
                "digest": manifest.bundle_digest,
                "signer": manifest.signer,
            },
            duration_s=time.monotonic() - t0,
            hashed=manifest.hashed,
        )
    return manifest


def _audit_failed(
    audit: _Audit | None, exc: WeightguardError, model: object, signature: str
) -> None:
    if audit is not None:
        audit.emit(
            "verify.failed",
            outcome="denied",
            reason=exc.message,
            object={"uri": str(model), "signature": signature},
        )


def _verify(
    root: Path,
    sig_path: Path,
    policy: Policy,
    allow_unsigned: list[str],
    hash_files: bool,
    allow_symlinks: bool,
    *,
    sig_data: bytes | None = None,
    listing: Mapping[str, int] | None = None,
    names: tuple[str, str] | None = None,
    check_chunk_digests: bool = False,
) -> VerifiedManifest:
    """Steps 1 to 8, in order: nothing of the statement is believed before step 5.

    ``names``: the model's and the signature's names in messages (default: the paths).
    """
    if policy is None or not isinstance(policy, Policy):
        raise UnsafeOptionRequired(
            "a verification policy is required",
            hint="pass e.g. PublicKey.from_file(...); to skip, pass UnsafeNoVerification()",
        )
    names = names or (str(root), str(sig_path))
    where = names[1]
    if sig_data is None:
        sig_data = read_signature(sig_path)
    elif len(sig_data) > MAX_SIGNATURE_FILE:
        raise FormatError(f"{where}: signature larger than {MAX_SIGNATURE_FILE} bytes")
    bundle = oms.parse_bundle(sig_data, path=where)  # 1
    result = verify_signature(bundle, policy, path=where)  # 2 to 5
    st = oms.parse_statement(bundle.payload, path=where)  # 6
    cov = _coverage(root, sig_path, st, allow_unsigned, allow_symlinks, listing, names)  # 7
    files = _signed_digests(st, cov.present)
    if hash_files:  # 8 (else the loader checks each chunk as it streams)
        _check_content(st, files, cov.present, chunks=check_chunk_digests)
    return VerifiedManifest(
        root=root,
        files=files,
        signer=result.signer,
        signed_at=result.signed_at,
        time_source=result.time_source,
        uncovered=tuple(sorted(cov.uncovered)),
        bundle_digest=bundle.digest,
        model_name=st.model_name,
        kind=bundle.kind,
        hashed=hash_files,
        unsafe=result.unsafe,
        weightguard_version=st.wg_version,
    )


def read_signature(path: Path) -> bytes:
    """A signature file's bytes (bounded: :data:`MAX_SIGNATURE_FILE`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_FILE + 1)
    except OSError as exc:
        raise SourceError(f"cannot read signature {path}: {exc.strerror}") from exc
    if len(data) > MAX_SIGNATURE_FILE:
        raise FormatError(f"{path}: signature file larger than {MAX_SIGNATURE_FILE} bytes")
    return data


def _coverage(
    root: Path,
    sig_path: Path,
    st: Statement,
    allow_unsigned: list[str],
    allow_symlinks: bool,
    listing: Mapping[str, int] | None,
    names: tuple[str, str],
) -> lst.Coverage:
    """Step 7: what is present against what is signed (names, then sizes)."""
    model_name, sig_name = names
    signed_names = set(st.resources)
    # Git paths: left out, unless the signature covers some (model_signing
    # --no-ignore-git-paths); then every git path present is compared.
    signs_git = lst.signs_git_paths(signed_names)
    listed: list[lst.Entry] | None = None
    if listing is not None:
        single, listed = lst.listed_entries(listing, skip_git=not signs_git)
    else:
        try:
            root_st = root.lstat()
        except OSError as exc:
            raise SourceError(f"{root}: cannot access: {exc.strerror}") from exc
        if stat.S_ISLNK(root_st.st_mode) and not allow_symlinks:
            raise VerificationError(f"{root} is a symbolic link; refused")
        single = root.is_file()
    if single != ("." in signed_names):
        raise CoverageError(
            f"{sig_name} signs a {'single file' if '.' in signed_names else 'directory'} "
            f"but {model_name} is a {'file' if single else 'directory'}"
        )
    ignore = [] if signs_git else list(lst.GIT_PATHS)
    for p in st.ignore_paths:
        q = p.strip("/")
        if q and not q.startswith("/") and ".." not in q.split("/"):
            ignore.append(q)
    sig_rel: tuple[str, ...] | None = None  # the signature's path inside the model, resolved
    if listed is not None:
        present = listed
    elif single:
        present = [lst.Entry(".", str(root), root.stat().st_size)]
    else:
        try:
            inside = sig_path.resolve().relative_to(root.resolve())
            exclude: str | None = inside.as_posix()
            sig_rel = inside.parts
        except ValueError:
            exclude = None
        skip = () if signs_git else lst.GIT_PATHS
        present = lst.walk(root, skip_dirs=skip, allow_symlinks=allow_symlinks, exclude=exclude)
    if not single:
        # present, not covered (as when ignore_paths name them)
        ignore += sorted(
            _release_signatures(present, signed_names, sig_rel, remote=listed is not None)
        )
    cov = lst.classify(
        present,
        signed_names,
        ignore_paths=ignore,
        allow_unsigned=allow_unsigned,
        signature=sig_name,
        root=model_name,
        empty_unsigned_ok=st.method == "shards",
    )
    by_name = cov.present
    for n, rec in st.chunks.items():
        if by_name[n].size != rec.size:
            raise IntegrityError(
                f"size is {by_name[n].size} bytes, signed size is {rec.size}", path=n
            )
    for n, sh in st.shards.items():
        if by_name[n].size != sh.size:
            raise IntegrityError(
                f"size is {by_name[n].size} bytes, signed size is {sh.size} "
                f"(the end of its last shard)",
                path=n,
            )
    return cov


def _release_signatures(
    present: Sequence[lst.Entry],
    signed_names: set[str],
    sig_rel: tuple[str, ...] | None,
    *,
    remote: bool,
) -> set[str]:
    """The release's other signatures in the listing: never files a signature covers.

    The primary ``model.sig`` is left out of its own listing (a bundle never covers
    itself); its co-signatures ``model.sig.d/<name>.sig`` -- and, for a co-signature,
    the primary -- are bundles too.  weightguard's own signatures record both in
    ``ignore_paths``; model_signing's do not, so without this a model_signing release
    could not be co-signed.  Left out only when they are what they claim: a
    co-signature's name, a regular file that parses as a bundle (a listing of a
    remote release gives names and sizes only: name and size there).

    ``sig_rel``: the signature's resolved path relative to the resolved model directory
    (its parts), None when it lies outside (then no file is left out)."""
    if remote:
        primary = PRIMARY_SIGNATURE
    else:
        if sig_rel is None:
            return set()
        rel = sig_rel
        if len(rel) == 1:
            primary = rel[0]
        elif len(rel) == 2 and rel[0].endswith(COSIGN_SUFFIX) and rel[1].endswith(".sig"):
            primary = rel[0][: -len(COSIGN_SUFFIX)]
        else:
            return set()
    folder = primary + COSIGN_SUFFIX + "/"
    out: set[str] = set()
    for e in present:
        if e.name in signed_names or e.size > MAX_SIGNATURE_FILE:
            continue
        if e.name != primary:
            tail = e.name[len(folder) :] if e.name.startswith(folder) else ""
            if not tail.endswith(".sig") or not _COSIGN_NAME.match(tail[: -len(".sig")]):
                continue
        if e.path:
            try:
                oms.parse_bundle(read_signature(Path(e.path)), path=e.name)
            except WeightguardError:
                continue  # not a bundle: an ordinary file, covered or refused as such
        out.add(e.name)
    return out


def _signed_digests(st: Statement, by_name: Mapping[str, lst.Entry]) -> dict[str, FileDigests]:
    """What the loader checks per file, from the statement (after step 7)."""
    files: dict[str, FileDigests] = {}
    plain = _CHUNKED_FOR_HASH.get(st.hash_type, "sha256-chunked-v1")
    for n, digest in st.resources.items():
        c = st.chunks.get(n)
        sh = st.shards.get(n)
        if c is not None:
            files[n] = FileDigests(
                c.size, c.head, c.stride, c.digests, digest, True, c.algorithm, st.hash_type
            )
        elif sh is not None:
            # model_signing shards: digests[k] is the plain hash of shard k, i.e. of
            # FileDigests.range(k) with head == stride == shard_size.
            files[n] = FileDigests(
                sh.size, sh.shard_size, sh.shard_size, sh.digests, b"", False, plain, st.hash_type
            )
        else:
            # No chunk record (e.g. signed by model_signing): the one "chunk" is the whole
            # file, checked with the resource's own function (the loader does the same).
            size = by_name[n].size
            files[n] = FileDigests(
                size, size, DEFAULT_STRIDE, (digest,), digest, False, plain, st.hash_type
            )
    return files


def _check_content(
    st: Statement,
    files: Mapping[str, FileDigests],
    by_name: Mapping[str, lst.Entry],
    *,
    chunks: bool = False,
) -> None:
    """Step 8: every file's OMS resource digest (what model_signing checks), one hash
    per byte; with ``chunks`` also, where signed, every chunk digest (what the loader
    checks), from the same read of each file.

    The resource digests alone prove the files: they are signed, collision-resistant,
    and cover every byte, so no bundle passes here and fails the reference verifier,
    or the other way round.  The chunk digests are signed too; recomputing them proves
    nothing more about the bytes, only that the signer's two kinds of digests agree
    (which the loader checks anyway, chunk by chunk, on every load): ``chunks=True``
    (``check_chunk_digests``) is that consistency check.
    """
    from weightguard._internal.signing.hashing import HashJob, hash_files, hash_ranges

    whole = {n: f for n, f in files.items() if n not in st.shards}
    jobs = [
        HashJob(n, by_name[n].path, f.size, f.head, f.stride, f.algorithm, st.hash_type)
        for n, f in whole.items()
    ]
    # Chunk digests only where signed (a file without a chunk record has none to check).
    got = hash_files(jobs, chunks=chunks and any(f.chunked for f in whole.values()))
    sharded = hash_ranges([(n, by_name[n].path, files[n]) for n in st.shards], st.hash_type)
    for n in sorted(st.shards, key=oms.resource_sort_key):
        for k, (want, have) in enumerate(zip(files[n].digests, sharded[n], strict=True)):
            if not hmac.compare_digest(want, have):
                start, length = files[n].range(k)
                raise IntegrityError(
                    f"content differs from the signed {st.hash_type} digest of shard "
                    f"[{start}, {start + length})",
                    path=n,
                    chunk=k,
                )
    for n in sorted(whole, key=oms.resource_sort_key):
        f, h = files[n], got[n]
        if f.chunked and chunks:
            for k, (want, have) in enumerate(zip(f.digests, h.digests, strict=True)):
                if not hmac.compare_digest(want, have):
                    raise IntegrityError("content differs from the signed digest", path=n, chunk=k)
        if not hmac.compare_digest(f.resource_digest, h.whole):
            raise IntegrityError(
                f"content differs from the signed {st.hash_type.upper()} digest",
                path=n,
                chunk=None if chunks else _first_differing_chunk(f, by_name[n].path, n, st),
            )


def _first_differing_chunk(f: FileDigests, path: str, name: str, st: Statement) -> int | None:
    """On a failed resource digest only: the first signed chunk digest that differs from
    the file (the place to look), or None (no chunk digests, or all of them match)."""
    from weightguard._internal.signing.hashing import HashJob, hash_files

    if not f.chunked:
        return None
    job = HashJob(name, path, f.size, f.head, f.stride, f.algorithm, st.hash_type)
    try:
        got = hash_files([job])[name].digests
    except WeightguardError:  # e.g. the file changes again: the mismatch stands, unlocated
        return None
    pairs = enumerate(zip(f.digests, got, strict=True))
    return next((k for k, (a, b) in pairs if not hmac.compare_digest(a, b)), None)


# ------------------------------------------------------------------ co-signatures


def cosignature_path(signature: str | os.PathLike[str], name: str) -> Path:
    """Where co-signature ``name`` of the bundle ``signature`` goes: ``<sig>.d/<name>.sig``."""
    if not _COSIGN_NAME.match(name) or name.endswith(".sig"):
        raise ConfigError(
            f"co-signature name {name[:70]!r} must be 1-64 of a-z 0-9 . _ - "
            "(e.g. security), without .sig"
        )
    return Path(os.fspath(signature) + COSIGN_SUFFIX) / f"{name}.sig"


def primary_ignores_cosignatures(signature: str | os.PathLike[str]) -> bool:
    """Whether the bundle ``signature`` records its co-signature folder
    (``model.sig.d``) in ``ignore_paths``, as every weightguard directory signature
    does and model_signing's never do.  Read without verifying: only for a notice
    (``sign --co-sign``: the model_signing CLI then needs ``--ignore-paths
    model.sig.d`` to verify the primary); weightguard itself verifies either."""
    sig = Path(signature)
    st = oms.parse_statement(oms.parse_bundle(read_signature(sig), path=str(sig)).payload)
    folder = sig.name + COSIGN_SUFFIX
    return lst.match_prefix(folder + "/x.sig", [p.strip("/") for p in st.ignore_paths])


def remote_cosignatures(loc: Any, policy: Policy) -> dict[str, bytes] | None:
    """The co-signatures of a release that is not on local disk (``model.sig.d/*.sig``
    under an S3 prefix), read only when ``policy`` needs them (:class:`CoSigned`)."""
    if not isinstance(policy, CoSigned) or not getattr(loc, "is_dir", False):
        return None
    prefix = PRIMARY_SIGNATURE + COSIGN_SUFFIX + "/"
    names = sorted(
        n
        for n in loc.names()
        if n.startswith(prefix) and n.endswith(".sig") and "/" not in n[len(prefix) :]
    )
    if len(names) > MAX_COSIGNATURES:
        raise FormatError(f"{loc.uri}: more than {MAX_COSIGNATURES} co-signatures")
    return {n: bytes(loc.read_small(n, limit=MAX_SIGNATURE_FILE)) for n in names}


def _whole_file(f: FileDigests) -> bool:
    """A record that checks a file only by its whole-file digest (model_signing's
    ``files`` serialization): one range, the whole file, its digest the resource's."""
    return (
        not f.chunked
        and bool(f.resource_digest)
        and f.head == f.size
        and f.digests == (f.resource_digest,)
    )


def _agreed_digests(
    model: object, named: Sequence[tuple[str, VerifiedManifest]]
) -> dict[str, FileDigests]:
    """The digests the loader may use, each signed by every bundle in ``named``.

    A file's records must be equal in every bundle (chunk digests, their algorithm,
    head and stride, resource digest).  One exception keeps model_signing releases
    co-signable: where some bundles check a file by its whole-file digest only (signed
    by model_signing) and the others carry chunk digests besides the same whole-file
    digest, every signer signed that whole-file digest, and it is the one used.
    """
    (first_name, first), rest = named[0], named[1:]
    agreed: dict[str, FileDigests] = {}
    for n in sorted(first.files, key=oms.resource_sort_key):
        records = [(first_name, first.files[n])]
        for other_name, m in rest:
            if n not in m.files:
                raise VerificationError(
                    f"{model}: {other_name} and {first_name} "
                    f"sign different contents ({n} is signed by one only)",
                    hint="every signer signs the same release: re-sign after the last change",
                )
            records.append((other_name, m.files[n]))
        agreed[n] = _agree_on(model, n, records)
    for other_name, m in rest:
        extra = sorted(set(m.files) - set(first.files))
        if extra:
            raise VerificationError(
                f"{model}: {other_name} and {first_name} "
                f"sign different contents ({extra[0]} is signed by one only)",
                hint="every signer signs the same release: re-sign after the last change",
            )
    return agreed


def _agree_on(model: object, name: str, records: Sequence[tuple[str, FileDigests]]) -> FileDigests:
    (a_name, a), rest = records[0], records[1:]
    if all(f == a for _, f in rest):
        return a
    chunked = [(b, f) for b, f in records if f.chunked]
    whole_only = [(b, f) for b, f in records if not f.chunked]
    base = records[0][1]
    same_file = all(
        (f.size, f.resource_algorithm, f.resource_digest)
        == (base.size, base.resource_algorithm, base.resource_digest)
        for _, f in records
    )
    if (
        same_file
        and all(_whole_file(f) for _, f in whole_only)
        and whole_only
        and all(f == chunked[0][1] for _, f in chunked)
    ):
        return whole_only[0][1]
    b_name, _ = next((b, f) for b, f in rest if f != a)
    what = "whole-file digest or size" if not same_file else "chunk digests"
    raise VerificationError(
        f"{model}: {b_name} and {a_name} sign different contents (different {what} of {name})",
        hint="every signer signs the same release, every digest of it: re-sign "
        "after the last change",
    )


def _local_cosignatures(sig_path: Path) -> dict[str, bytes]:
    d = Path(str(sig_path) + COSIGN_SUFFIX)
    if not d.is_dir() or d.is_symlink():
        return {}
    names = sorted(p.name for p in d.iterdir() if p.name.endswith(".sig"))
    if len(names) > MAX_COSIGNATURES:
        raise FormatError(f"{d}: more than {MAX_COSIGNATURES} co-signatures")
    out = {}
    for n in names:
        p = d / n
        if p.is_symlink() or not p.is_file():
            raise VerificationError(f"{p}: a co-signature must be a regular file")
        out[f"{sig_path.name}{COSIGN_SUFFIX}/{n}"] = read_signature(p)
    return out


def _verify_cosigned(
    model: str | os.PathLike[str],
    signature: str | os.PathLike[str] | bytes,
    policy: CoSigned,
    cosignatures: Mapping[str, bytes] | None,
    audit: _Audit | None,
    **kw: Any,
) -> VerifiedManifest:
    """Every policy of ``policy`` accepted by a bundle of its own, all signing the same."""
    t0 = time.monotonic()
    primary: str | Path | bytes
    if isinstance(signature, bytes | bytearray):
        primary, label = bytes(signature), PRIMARY_SIGNATURE
    else:
        primary, label = Path(signature), Path(signature).name
    try:
        if cosignatures is None:
            cosignatures = {} if isinstance(primary, bytes) else _local_cosignatures(primary)
        if len(cosignatures) > MAX_COSIGNATURES:
            raise FormatError(f"more than {MAX_COSIGNATURES} co-signatures")
        candidates: list[tuple[str, Any]] = [(label, primary), *cosignatures.items()]
        hash_files = kw.pop("hash_files", True)
        match, used = _required_signers(model, policy, candidates, kw)
        first = used[0]
        # Every digest the loader may use, signed by every required signer.
        files = _agreed_digests(
            model,
            [(f"{candidates[j][0]} ({m.signer})", m) for j, m in zip(match, used, strict=True)],
        )
        if hash_files:  # every byte once: the first bundle's digests, a superset of files'
            first = verify_bundle(
                model, candidates[match[0]][1], policy.policies[0], hash_files=True, **kw
            )
        first = dataclasses.replace(first, files=files)
    except WeightguardError as exc:
        _audit_failed(audit, exc, model, label)
        raise
    result = dataclasses.replace(first, signer="; ".join(m.signer for m in used))
    if audit is not None:
        audit.emit(
            "verify.ok",
            object={
                "uri": str(model),
                "signature": label,
                "digest": result.bundle_digest,
                "signer": result.signer,
            },
            duration_s=time.monotonic() - t0,
            hashed=result.hashed,
            bundles=[candidates[j][0] for j in match],
            bundle_digests=[m.bundle_digest for m in used],
        )
    return result


def _required_signers(
    model: str | os.PathLike[str],
    policy: CoSigned,
    candidates: list[tuple[str, Any]],
    kw: Mapping[str, Any],
) -> tuple[list[int], list[VerifiedManifest]]:
    """A different bundle accepted by each of ``policy``'s policies (steps 1 to 7 for
    each pair): (the bundle index per policy, their manifests); refuses otherwise."""
    accepted: dict[tuple[int, int], VerifiedManifest] = {}
    for i, sub in enumerate(policy.policies):
        for j, (_name, sig) in enumerate(candidates):
            try:
                accepted[i, j] = verify_bundle(model, sig, sub, hash_files=False, **kw)
            except WeightguardError:
                continue
    keys = _signing_keys(policy, candidates, accepted)
    match = _match_signers(len(policy.policies), len(candidates), accepted, keys)
    if match is None:
        unmet = [
            p.describe()
            for i, p in enumerate(policy.policies)
            if not any((i, j) in accepted for j in range(len(candidates)))
        ] or [
            "two required signers share one key (each required signer signs with a different key)"
            if _match_signers(len(policy.policies), len(candidates), accepted)
            else "two required signers share one signature"
        ]
        raise VerificationError(
            f"{model}: the release is not signed by every required signer: "
            f"{'; '.join(unmet)} (looked at "
            f"{', '.join(n for n, _ in candidates)})",
            hint="each required signer adds a co-signature: weightguard sign --co-sign NAME ...",
        )
    return match, [accepted[i, j] for i, j in enumerate(match)]


def _signing_keys(
    policy: CoSigned,
    candidates: Sequence[tuple[str, Any]],
    accepted: Mapping[tuple[int, int], Any],
) -> dict[int, frozenset[str]]:
    """The fingerprints of the keys that signed each accepted bundle, from the proofs
    (a key bundle does not carry its key: the policy's key that verified it names it).

    Required signers are different keys: one key signing twice (say once as a
    certificate bundle, once as a key bundle) is one signer.  A bundle proven by no
    key (``UnsafeNoVerification``) is a key of its own."""
    keys: dict[int, frozenset[str]] = {}
    for i, j in sorted(accepted):
        if j in keys:
            continue
        name, sig = candidates[j]
        data = sig if isinstance(sig, bytes) else read_signature(Path(sig))
        bundle = oms.parse_bundle(data, path=name)
        proofs = Verifier(policy.policies[i].trust_anchors()).verify(bundle, path=name).proofs
        fps = frozenset(p.key_fingerprint for p in proofs if p.key_fingerprint)
        keys[j] = fps or frozenset({f"bundle #{j}"})
    return keys


def _match_signers(
    n_policies: int,
    n_bundles: int,
    accepted: Mapping[tuple[int, int], Any],
    keys: Mapping[int, frozenset[str]] | None = None,
) -> list[int] | None:
    """A different bundle, signed by a different key, for every policy (a small
    bipartite matching), or None."""
    match: list[int] = []
    key_of = keys or {}

    def place(i: int, taken: set[int], used: frozenset[str]) -> bool:
        if i == n_policies:
            return True
        for j in range(n_bundles):
            k = key_of.get(j, frozenset())
            if j not in taken and (i, j) in accepted and not (k & used):
                match.append(j)
                if place(i + 1, taken | {j}, used | k):
                    return True
                match.pop()
        return False

    return match if place(0, set(), frozenset()) else None
