"""Sign and verify models as OpenSSF model-signing (OMS) bundles.

Bundles are byte-compatible with model-signing 1.x (``model_signing verify key`` /
``verify certificate`` accept them) and carry, inside the signed predicate, the
per-chunk digests the secure loader needs to check each byte range as it streams::

    from weightguard.signing import KeySigner, VaultTransitSigner, sign_model, verify_bundle
    from weightguard.policy import PublicKey

    sign_model("model/", "model.sig", KeySigner.from_file("release.pem"))
    m = verify_bundle("model/", "model.sig", PublicKey.from_file("release.pub"))
    m.files["model.safetensors"].digests   # per-chunk digests (bytes; .algorithm names them)

Signers: :class:`KeySigner` (EC P-256/384/521 PEM), :class:`CertificateSigner`
(X.509 leaf + chain), :class:`VaultTransitSigner` (non-exportable Transit ECDSA key,
``vault://<mount>/<key>``), :class:`SigstoreSigner` (keyless, OIDC).

Coverage is strict: a weight file (``*.safetensors``, index JSON, weightguard artifact)
that the signature does not cover fails verification whatever ``ignore_paths`` says,
and any other unsigned file fails unless ``allow_unsigned`` (or the signature's own
``ignore_paths``) names it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from weightguard import __version__
from weightguard._internal.signing.listing import GIT_PATHS
from weightguard._internal.signing.listing import Entry as _Entry
from weightguard._internal.signing.listing import is_weight as _is_weight
from weightguard._internal.signing.listing import match_prefix as _match_prefix
from weightguard._internal.signing.listing import walk as _walk
from weightguard._internal.signing.signers.base import Signer
from weightguard._internal.signing.signers.certificate import CertificateSigner
from weightguard._internal.signing.signers.ec_key import KeySigner, create_signing_key
from weightguard._internal.signing.signers.sigstore import SigstoreSigner
from weightguard._internal.signing.signers.vault_transit import (
    VaultTransitSigner,
    vault_public_keys,
)
from weightguard.errors import (
    ConfigError,
    CoverageError,
    FormatError,
    IntegrityError,
    SourceError,
    UnsafeOptionRequired,
    VerificationError,
    WeightguardError,
)
from weightguard.manifest import FileDigests, SignedModel, VerifiedManifest
from weightguard.policy import CoSigned, Policy, vault_key_policy
from weightguard.verifying import verify_signature

__all__ = [
    "CHUNK_ALGORITHMS",
    "COSIGN_SUFFIX",
    "DEFAULT_CHUNK_ALGORITHM",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_HASH_TYPE",
    "HASH_TYPES",
    "PRIMARY_SIGNATURE",
    "CertificateSigner",
    "FileDigests",
    "KeySigner",
    "SignedModel",
    "Signer",
    "SigstoreSigner",
    "VaultTransitSigner",
    "VerifiedManifest",
    "cosignature_path",
    "create_signing_key",
    "remote_cosignatures",
    "sign_model",
    "vault_key_policy",
    "vault_public_keys",
    "verify_bundle",
]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# Chunk digest algorithms (named in the signed record; see _internal/hashing.chunk_hasher).
DEFAULT_CHUNK_ALGORITHM = "blake3-chunked-v1"
CHUNK_ALGORITHMS = ("blake3-chunked-v1", "sha256-chunked-v1")
# OMS whole-file resource digests (serialization.hash_type); see docs/signing.md.
DEFAULT_HASH_TYPE = "sha256"
HASH_TYPES = ("sha256", "blake3")
_CHUNKED_FOR_HASH = {"sha256": "sha256-chunked-v1", "blake3": "blake3-chunked-v1"}
_MAX_SIGNATURE_FILE = 64 * 1024 * 1024


class _Audit(Protocol):
    def emit(self, event: str, **kwargs: Any) -> None: ...


# ------------------------------------------------------------------------ signers
# One module per signing method in weightguard._internal.signing.signers (imported above).


SIGNING_CURVES = ("P-256", "P-384", "P-521")


# ------------------------------------------------------------------------ listing
# The listing rules (git paths, ignore paths, weight files) live in
# weightguard._internal.signing.listing, shared by sign_model and verify_bundle.


def _layout(entry: _Entry, chunk_size: int) -> tuple[int, int]:
    """(head, stride) of the chunk digests (see docs/ARCHITECTURE.md, Signing)."""
    import struct

    from weightguard._internal.format.layout import MAGIC_PROBE, TAG_SIZE, is_artifact, read_header
    from weightguard._internal.format.safetensors import MAX_HEADER_SIZE

    size = entry.size
    try:
        with open(entry.path, "rb") as f:
            first = f.read(MAGIC_PROBE)
            if is_artifact(first):
                f.seek(0)
                hdr = read_header(f, path=entry.name)
                return hdr.data_offset, hdr.chunk_size + TAG_SIZE
            if len(first) >= 9 and first[8:9] == b"{":
                (n,) = struct.unpack("<Q", first[:8])
                if 8 + n <= size and n <= MAX_HEADER_SIZE:
                    return 8 + n, chunk_size
    except OSError as exc:
        raise SourceError(f"{entry.name}: cannot read: {exc.strerror}") from exc
    return size, chunk_size


# ------------------------------------------------------------------------ co-signing

#: A directory release's primary bundle, and the suffix of the folder beside a bundle
#: that holds its co-signatures (``model.sig.d/<name>.sig``).
PRIMARY_SIGNATURE = "model.sig"
COSIGN_SUFFIX = ".d"
MAX_COSIGNATURES = 16
_COSIGN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def cosignature_path(signature: str | os.PathLike[str], name: str) -> Path:
    """Where co-signature ``name`` of the bundle ``signature`` goes: ``<sig>.d/<name>.sig``."""
    if not _COSIGN_NAME.match(name) or name.endswith(".sig"):
        raise ConfigError(
            f"co-signature name {name[:70]!r} must be 1-64 of a-z 0-9 . _ - "
            "(e.g. security), without .sig"
        )
    return Path(os.fspath(signature) + COSIGN_SUFFIX) / f"{name}.sig"


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
    return {n: bytes(loc.read_small(n, limit=_MAX_SIGNATURE_FILE)) for n in names}


def _contents(m: VerifiedManifest) -> dict[str, tuple[int, str, bytes]]:
    return {n: (f.size, f.resource_algorithm, f.resource_digest) for n, f in m.files.items()}


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
        out[f"{sig_path.name}{COSIGN_SUFFIX}/{n}"] = _read_signature(p)
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
        accepted: dict[tuple[int, int], VerifiedManifest] = {}
        why: dict[int, list[str]] = {}
        for i, sub in enumerate(policy.policies):
            for j, (name, sig) in enumerate(candidates):
                try:
                    accepted[i, j] = verify_bundle(model, sig, sub, hash_files=False, **kw)
                except WeightguardError as exc:
                    why.setdefault(i, []).append(f"{name}: {exc.message}")
        match = _match_signers(len(policy.policies), len(candidates), accepted)
        if match is None:
            unmet = [
                p.describe()
                for i, p in enumerate(policy.policies)
                if not any((i, j) in accepted for j in range(len(candidates)))
            ] or ["two required signers share one signature"]
            raise VerificationError(
                f"{model}: the release is not signed by every required signer: "
                f"{'; '.join(unmet)} (looked at "
                f"{', '.join(n for n, _ in candidates)})",
                hint="each required signer adds a co-signature: weightguard sign "
                "--co-sign NAME ...",
            )
        used = [accepted[i, j] for i, j in enumerate(match)]
        first = used[0]
        digests = _contents(first)
        for i, m in enumerate(used[1:], 1):
            other = _contents(m)
            if other != digests:
                diff = sorted(set(other.items()) ^ set(digests.items()))
                raise VerificationError(
                    f"{model}: {candidates[match[i]][0]} and {candidates[match[0]][0]} sign "
                    f"different contents (first difference: {diff[0][0]})",
                    hint="every signer signs the same release: re-sign after the last change",
                )
        if hash_files:  # every byte once, against the (identical) signed digests
            first = verify_bundle(
                model, candidates[match[0]][1], policy.policies[0], hash_files=True, **kw
            )
    except WeightguardError as exc:
        if audit is not None:
            audit.emit(
                "verify.failed",
                outcome="denied",
                reason=exc.message,
                object={"uri": str(model), "signature": label},
            )
        raise
    import dataclasses

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


def _match_signers(
    n_policies: int, n_bundles: int, accepted: Mapping[tuple[int, int], Any]
) -> list[int] | None:
    """A different bundle for every policy (a small bipartite matching), or None."""
    match: list[int] = []

    def place(i: int, taken: set[int]) -> bool:
        if i == n_policies:
            return True
        for j in range(n_bundles):
            if j not in taken and (i, j) in accepted:
                match.append(j)
                if place(i + 1, taken | {j}):
                    return True
                match.pop()
        return False

    return match if place(0, set()) else None


# ------------------------------------------------------------------------ signing


def sign_model(
    model: str | os.PathLike[str],
    signature: str | os.PathLike[str],
    signer: Signer,
    *,
    ignore_paths: Iterable[str] = (),
    allow_symlinks: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_algorithm: str = DEFAULT_CHUNK_ALGORITHM,
    hash_type: str = DEFAULT_HASH_TYPE,
    audit: _Audit | None = None,
    replace: bool | None = None,
) -> SignedModel:
    """Hash ``model`` (file or directory) and write an OMS bundle to ``signature``.

    An existing ``signature`` is never replaced silently: ``replace=False`` (what
    ``weightguard sign`` passes without ``--replace``) refuses with ConfigError,
    ``replace=True`` replaces it, and the default replaces it with a warning on the
    ``weightguard.signing`` logger.  A second signer adds a co-signature beside the primary bundle
    instead, in ``<signature>.d/<name>.sig`` (:func:`cosignature_path`); a directory's
    bundles leave ``model.sig`` and ``model.sig.d/`` out of what they sign (recorded
    in ``ignore_paths``), so each verifies with the others present, with
    ``model_signing verify`` too.

    ``ignore_paths``: relative paths left out of the signature (recorded in it, as
    model_signing does); weight files cannot be ignored.  ``chunk_size``: stride of the
    chunk digests of plain safetensors files (encrypted artifacts use their own).
    ``chunk_algorithm``: ``"blake3-chunked-v1"`` (default; ~1.8x faster per core for the
    loader) or ``"sha256-chunked-v1"``.  ``hash_type``: the OMS whole-file resource
    digests: ``"sha256"`` (default: the model_signing 1.1.1 CLI ``verify key`` /
    ``verify certificate`` always re-hashes with SHA-256) or ``"blake3"`` (~2x less CPU;
    verified by weightguard and by the model_signing >= 1.1.0 API, not its 1.1.1 CLI).
    Whole-file and chunk digests come from one read of each file.
    """
    from weightguard._internal.foundation.atomic import atomic_write_bytes
    from weightguard._internal.signing import oms
    from weightguard._internal.signing.hashing import HashJob, chunk_hasher, hash_files

    t0 = time.monotonic()
    if not 4096 <= chunk_size <= (1 << 30):
        raise ConfigError(f"chunk size {chunk_size} outside 4 KiB .. 1 GiB")
    chunk_hasher(chunk_algorithm, path=str(model))  # unknown names fail before hashing
    if hash_type not in HASH_TYPES:
        raise ConfigError(
            f"hash type {str(hash_type)[:64]!r} is not supported; use one of "
            f"{', '.join(HASH_TYPES)}"
        )
    root = Path(model)
    sig_path = Path(signature)
    exists = sig_path.exists() or sig_path.is_symlink()
    if exists and replace is None:
        logging.getLogger("weightguard.signing").warning(
            "replacing the existing signature %s (pass replace=True to say so, or add a "
            "co-signature beside it: weightguard.signing.cosignature_path)",
            sig_path,
        )
    elif exists and not replace:
        raise ConfigError(
            f"{sig_path} already exists: weightguard never replaces a signature silently",
            hint="add yours beside it with --co-sign NAME (written to "
            f"{sig_path}{COSIGN_SUFFIX}/NAME.sig), or replace it with --replace "
            "(sign_model(replace=True))",
        )
    try:
        st = root.lstat()
    except OSError as exc:
        raise SourceError(f"{root}: cannot access: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode) and not allow_symlinks:
        raise VerificationError(f"{root} is a symbolic link; refused")
    single = root.is_file()
    ignored = list(GIT_PATHS)
    if not single:  # the release's signatures: every bundle leaves them all out
        ignored += [PRIMARY_SIGNATURE, PRIMARY_SIGNATURE + COSIGN_SUFFIX]
    for p in ignore_paths:
        q = p.replace(os.sep, "/").strip("/")
        if not q or q.startswith("/") or ".." in q.split("/"):
            raise ConfigError(f"ignore path {p!r} must be a relative path inside the model")
        ignored.append(q)
    exclude: str | None = None
    if not single:
        try:
            rel = sig_path.resolve().relative_to(root.resolve())
            exclude = rel.as_posix()
            if not _match_prefix(exclude, ignored):
                ignored.append(exclude)
        except ValueError:
            pass
    if single:
        entries = [_Entry(".", str(root), root.stat().st_size)]
        name = root.name
    else:
        if not root.is_dir():
            raise SourceError(f"{root} is neither a file nor a directory")
        everything = _walk(
            root, skip_dirs=GIT_PATHS, allow_symlinks=allow_symlinks, exclude=exclude
        )
        entries = []
        for e in everything:
            if _match_prefix(e.name, ignored):
                if _is_weight(e.name, e.path):
                    raise CoverageError(
                        f"refusing to leave weight file {e.name} out of the signature",
                        hint="remove it from the ignore paths",
                    )
                continue
            entries.append(e)
        name = root.resolve().name
        if not entries:
            raise SourceError(f"{root}: no files to sign")

    jobs = []
    layouts: dict[str, tuple[int, int]] = {}
    for e in entries:
        head, stride = _layout(e, chunk_size)
        layouts[e.name] = (head, stride)
        jobs.append(HashJob(e.name, e.path, e.size, head, stride, chunk_algorithm, hash_type))
    hashes = hash_files(jobs)
    now = datetime.now(UTC).replace(microsecond=0)
    signer.check_time(now)
    resources = {e.name: hashes[e.name].whole for e in entries}
    chunks = {
        e.name: oms.ChunkRecord(
            size=e.size,
            head=layouts[e.name][0],
            stride=layouts[e.name][1],
            digests=hashes[e.name].digests,
            algorithm=chunk_algorithm,
        )
        for e in entries
    }
    payload = oms.build_statement(
        name,
        resources,
        allow_symlinks=allow_symlinks,
        ignore_paths=ignored,
        chunks=chunks,
        version=__version__,
        signed_at=now,
        hash_type=hash_type,
    )
    bundle = signer.make_bundle(payload)
    try:
        atomic_write_bytes(sig_path, bundle)
    except WeightguardError:
        raise
    files = {
        n: FileDigests(
            c.size, c.head, c.stride, c.digests, resources[n], True, c.algorithm, hash_type
        )
        for n, c in chunks.items()
    }
    digest = hashlib.sha256(bundle).hexdigest()
    if audit is not None:
        audit.emit(
            "sign",
            object={
                "uri": str(root),
                "signature": str(sig_path),
                "digest": digest,
                "signer": signer.describe(),
            },
            bytes=sum(e.size for e in entries),
            duration_s=time.monotonic() - t0,
        )
    return SignedModel(sig_path, signer.describe(), files, digest, now)


# ------------------------------------------------------------------------ verification


def _read_signature(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIGNATURE_FILE + 1)
    except OSError as exc:
        raise SourceError(f"cannot read signature {path}: {exc.strerror}") from exc
    if len(data) > _MAX_SIGNATURE_FILE:
        raise FormatError(f"{path}: signature file larger than {_MAX_SIGNATURE_FILE} bytes")
    return data


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
) -> VerifiedManifest:
    """Verify ``signature`` for ``model`` under ``policy``; return the signed digests.

    Checks, in order: bundle structure, the policy (which verifies the signature), the
    statement, coverage (every weight file signed; other unsigned files only if the
    signature's ignore_paths or ``allow_unsigned`` glob patterns allow them; nothing
    signed is missing; sizes), then -- with ``hash_files`` -- every byte (whole-file
    digest and chunk digests).  ``hash_files=False`` is for the secure loader, which
    checks each chunk against ``files[name].digests`` as it streams.

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
        )
    t0 = time.monotonic()
    root = Path(model)
    if isinstance(signature, bytes | bytearray):
        sig_data: bytes | None = bytes(signature)
        sig_path = Path(f"{os.fspath(model)}:signature")
    else:
        sig_data = None
        sig_path = Path(signature)
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
        )
    except WeightguardError as exc:
        if audit is not None:
            audit.emit(
                "verify.failed",
                outcome="denied",
                reason=exc.message,
                object={"uri": str(root), "signature": str(sig_path)},
            )
        raise
    if audit is not None:
        audit.emit(
            "verify.ok",
            object={
                "uri": str(root),
                "signature": str(sig_path),
                "digest": manifest.bundle_digest,
                "signer": manifest.signer,
            },
            duration_s=time.monotonic() - t0,
            hashed=manifest.hashed,
        )
    return manifest


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
) -> VerifiedManifest:
    from weightguard._internal.signing import oms
    from weightguard._internal.signing.hashing import HashJob
    from weightguard._internal.signing.hashing import hash_files as run_hash

    if policy is None or not isinstance(policy, Policy):
        raise UnsafeOptionRequired(
            "a verification policy is required",
            hint="pass e.g. PublicKey.from_file(...); to skip, pass UnsafeNoVerification()",
        )
    where = str(sig_path)
    if sig_data is None:
        sig_data = _read_signature(sig_path)
    elif len(sig_data) > _MAX_SIGNATURE_FILE:
        raise FormatError(f"{where}: signature larger than {_MAX_SIGNATURE_FILE} bytes")
    # Steps 1-8 of weightguard.verifying: the signature is proven before the policy
    # narrows, and both before any byte of the statement is believed.
    bundle = oms.parse_bundle(sig_data, path=where)
    result = verify_signature(bundle, policy, path=where)
    st = oms.parse_statement(bundle.payload, path=where)

    from weightguard._internal.signing import listing as lst

    signed_names = set(st.resources)
    # Git paths: left out, unless the signature covers some (model_signing
    # --no-ignore-git-paths); then every git path present is compared.
    signs_git = lst.signs_git_paths(signed_names)
    skip = () if signs_git else GIT_PATHS
    listed: list[_Entry] | None = None
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
            f"{sig_path} signs a {'single file' if '.' in signed_names else 'directory'} "
            f"but {root} is a {'file' if single else 'directory'}"
        )

    ignore = [] if signs_git else list(GIT_PATHS)
    for p in st.ignore_paths:
        q = p.strip("/")
        if q and not q.startswith("/") and ".." not in q.split("/"):
            ignore.append(q)
    exclude: str | None = None
    if listed is not None:
        present = listed
    elif single:
        present = [_Entry(".", str(root), root.stat().st_size)]
    else:
        try:
            exclude = sig_path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            exclude = None
        present = _walk(root, skip_dirs=skip, allow_symlinks=allow_symlinks, exclude=exclude)

    cov = lst.classify(
        present,
        signed_names,
        ignore_paths=ignore,
        allow_unsigned=allow_unsigned,
        signature=str(sig_path),
        root=str(root),
        empty_unsigned_ok=st.method == "shards",
    )
    by_name = cov.present
    uncovered = list(cov.uncovered)
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

    files: dict[str, FileDigests] = {}
    for n, digest in st.resources.items():
        chunk_rec = st.chunks.get(n)
        shard_rec = st.shards.get(n)
        if chunk_rec is not None:
            c = chunk_rec
            files[n] = FileDigests(
                c.size, c.head, c.stride, c.digests, digest, True, c.algorithm, st.hash_type
            )
        elif shard_rec is not None:
            # model_signing shards: digests[k] is the plain hash of shard k, i.e. of
            # FileDigests.range(k) with head == stride == shard_size.
            files[n] = FileDigests(
                shard_rec.size,
                shard_rec.shard_size,
                shard_rec.shard_size,
                shard_rec.digests,
                b"",
                False,
                _CHUNKED_FOR_HASH.get(st.hash_type, "sha256-chunked-v1"),
                st.hash_type,
            )
        else:
            # No chunk record (e.g. signed by model_signing): the one "chunk" is the whole
            # file, checked with the resource's own function (the loader does the same).
            size = by_name[n].size
            files[n] = FileDigests(
                size,
                size,
                DEFAULT_CHUNK_SIZE,
                (digest,),
                digest,
                False,
                _CHUNKED_FOR_HASH.get(st.hash_type, "sha256-chunked-v1"),
                st.hash_type,
            )

    if hash_files:
        # Every file: the OMS resource digest (what model_signing checks) AND, where
        # signed, every chunk digest (what the loader checks), from one read of each
        # file.  Both are checked so that no bundle passes here and fails the reference
        # verifier, or the other way round (a signer can sign chunk digests that
        # disagree with its resource digests).
        from weightguard._internal.signing.hashing import hash_ranges

        whole = {n: f for n, f in files.items() if n not in st.shards}
        jobs = [
            HashJob(n, by_name[n].path, f.size, f.head, f.stride, f.algorithm, st.hash_type)
            for n, f in whole.items()
        ]
        got = run_hash(jobs)
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
            if f.chunked:
                for k, (want, have) in enumerate(zip(f.digests, h.digests, strict=True)):
                    if not hmac.compare_digest(want, have):
                        raise IntegrityError(
                            "content differs from the signed digest", path=n, chunk=k
                        )
            if not hmac.compare_digest(f.resource_digest, h.whole):
                raise IntegrityError(
                    f"content differs from the signed {st.hash_type.upper()} digest", path=n
                )

    return VerifiedManifest(
        root=root,
        files=files,
        signer=result.signer,
        signed_at=result.signed_at,
        time_source=result.time_source,
        uncovered=tuple(sorted(uncovered)),
        bundle_digest=bundle.digest,
        model_name=st.model_name,
        kind=bundle.kind,
        hashed=hash_files,
        unsafe=result.unsafe,
        weightguard_version=st.wg_version,
    )
