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
import logging
import os
import stat
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from weightguard import __version__
from weightguard._internal.format.layout import DEFAULT_CHUNK_SIZE
from weightguard._internal.signing.hashing import CHUNK_ALGORITHMS, DEFAULT_CHUNK_ALGORITHM
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
    SourceError,
    VerificationError,
)
from weightguard.manifest import FileDigests, SignedModel, VerifiedManifest
from weightguard.policy import vault_key_policy

# Verification lives in weightguard.verifying (the whole order, co-signatures included);
# these names stay importable from here.
from weightguard.verifying import (
    COSIGN_SUFFIX,
    PRIMARY_SIGNATURE,
    cosignature_path,
    primary_ignores_cosignatures,
    remote_cosignatures,
    verify_bundle,
)

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import ChunkRecord

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
    "primary_ignores_cosignatures",
    "remote_cosignatures",
    "sign_model",
    "vault_key_policy",
    "vault_public_keys",
    "verify_bundle",
]

# DEFAULT_CHUNK_SIZE (imported above) is the artifact's default record size: a plain
# file's chunk digest stride is the same unit of checking (docs/lazy.md, "Record size").
# Chunk digest algorithms (DEFAULT_CHUNK_ALGORITHM, CHUNK_ALGORITHMS): named in the
# signed record, defined in _internal/signing/hashing.py (chunk_hasher).
# OMS whole-file resource digests (serialization.hash_type); see docs/signing.md.
DEFAULT_HASH_TYPE = "sha256"
HASH_TYPES = ("sha256", "blake3")


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

    t0 = time.monotonic()
    _check_settings(model, chunk_size, chunk_algorithm, hash_type)
    root = Path(model)
    sig_path = Path(signature)
    _check_replace(sig_path, replace)
    entries, ignored, name = _entries_to_sign(root, sig_path, ignore_paths, allow_symlinks)
    chunks, resources = _digests(entries, chunk_size, chunk_algorithm, hash_type)
    now = datetime.now(UTC).replace(microsecond=0)
    signer.check_time(now)
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
    _check_bundle_size(len(payload) * 4 // 3, chunks)  # base64 in the bundle; before signing
    bundle = signer.make_bundle(payload)
    _check_bundle_size(len(bundle), chunks)
    atomic_write_bytes(sig_path, bundle)
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


def _check_bundle_size(size: int, chunks: dict[str, Any]) -> None:
    """Refuse a signature no verifier would read (bundles above MAX_BUNDLE_BYTES):
    about 107 bytes a chunk digest, so 64 MiB holds ~600 GiB of weights at 1 MiB chunks."""
    from weightguard._internal.signing import oms

    if size > oms.MAX_BUNDLE_BYTES:
        n = sum(len(c.digests) for c in chunks.values())
        raise ConfigError(
            f"the signature would be about {size} bytes ({n} chunk digests), over the "
            f"{oms.MAX_BUNDLE_BYTES} bytes a verifier reads",
            hint="sign with a larger --chunk-size (chunk_size=); an encrypted artifact's "
            "digests follow its record size (weightguard encrypt --chunk-size)",
        )


def _check_settings(
    model: str | os.PathLike[str], chunk_size: int, chunk_algorithm: str, hash_type: str
) -> None:
    """Refuse bad settings before anything is hashed."""
    from weightguard._internal.signing.hashing import chunk_hasher

    if not 4096 <= chunk_size <= (1 << 30):
        raise ConfigError(f"chunk size {chunk_size} outside 4 KiB .. 1 GiB")
    chunk_hasher(chunk_algorithm, path=str(model))  # unknown names fail before hashing
    if hash_type not in HASH_TYPES:
        raise ConfigError(
            f"hash type {str(hash_type)[:64]!r} is not supported; use one of "
            f"{', '.join(HASH_TYPES)}"
        )


def _check_replace(sig_path: Path, replace: bool | None) -> None:
    """An existing signature is replaced only when asked (None: with a warning)."""
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


def _entries_to_sign(
    root: Path, sig_path: Path, ignore_paths: Iterable[str], allow_symlinks: bool
) -> tuple[list[_Entry], list[str], str]:
    """(the files to sign, the ignore paths to record, the model name)."""
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
    return entries, ignored, name


def _digests(
    entries: list[_Entry], chunk_size: int, chunk_algorithm: str, hash_type: str
) -> tuple[dict[str, ChunkRecord], dict[str, bytes]]:
    """One read of each file: (chunk records, whole-file resource digests)."""
    from weightguard._internal.signing import oms
    from weightguard._internal.signing.hashing import HashJob, hash_files

    jobs = []
    layouts: dict[str, tuple[int, int]] = {}
    for e in entries:
        head, stride = _layout(e, chunk_size)
        layouts[e.name] = (head, stride)
        jobs.append(HashJob(e.name, e.path, e.size, head, stride, chunk_algorithm, hash_type))
    hashes = hash_files(jobs)
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
    return chunks, resources
