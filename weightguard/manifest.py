"""Public data types: what weightguard's components hand each other and their callers.

The glue between the components (signing, loading, key providers, transfer), as
model-transparency's ``manifest`` module: plain frozen records with no behaviour beyond
small derived values, importing nothing of weightguard but the standard library.
``weightguard._internal`` may import this module (it is the bottom layer with
:mod:`weightguard.errors`); the components re-export each type where it was first
published, so ``weightguard.signing.VerifiedManifest`` and
``weightguard.manifest.VerifiedManifest`` are the same class.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "FetchResult",
    "FileDigests",
    "RetryPolicy",
    "S3Options",
    "SignedModel",
    "VerifiedManifest",
    "WrappedKey",
]


# ------------------------------------------------------------------------ signatures


@dataclass(frozen=True)
class FileDigests:
    """What the loader checks for one file: ranges ``[0, head)`` then ``stride`` steps.

    ``digests[0]`` covers ``[0, min(head, size))``; ``digests[k]`` (k >= 1) covers
    ``[head + (k-1)*stride, min(head + k*stride, size))`` (:meth:`range`).
    ``resource_digest`` is the OMS whole-file digest, computed with ``resource_algorithm``
    (``"sha256"``, ``"blake2b"`` or ``"blake3"``: the bundle's hash type; hashers only from
    ``weightguard._internal.signing.hashing.whole_hasher``).  ``algorithm`` names the
    weightguard chunk digest (``blake3-chunked-v1`` or ``sha256-chunked-v1``), as signed.

    ``chunked`` is False for files signed without weightguard's chunk digests (by
    model_signing): then ``digests[k]`` is the plain ``resource_algorithm`` hash of byte
    range ``range(k)``, and the ranges tile the file:

    * ``files`` serialization: ``head == size``, one digest (the whole file);
    * ``shards`` serialization: ``head == stride == shard_size``, one digest per shard
      (a file smaller than a shard: one digest of the whole file; an empty file: one
      digest of no bytes).

    The loader hashes each such range in file order as the load's one read streams by
    (weightguard._internal.load.stream_digests); ``algorithm`` is then not used.
    """

    size: int
    head: int
    stride: int
    digests: tuple[bytes, ...]
    resource_digest: bytes
    chunked: bool = True
    algorithm: str = "sha256-chunked-v1"
    resource_algorithm: str = "sha256"

    @property
    def sha256(self) -> bytes:
        """The whole-file SHA-256 when the bundle's hash type is sha256 (else empty)."""
        return self.resource_digest if self.resource_algorithm == "sha256" else b""

    def range(self, index: int) -> tuple[int, int]:
        """(offset, length) of digest ``index``'s byte range."""
        if index == 0:
            return 0, min(self.head, self.size)
        start = self.head + (index - 1) * self.stride
        return start, min(self.stride, self.size - start)


@dataclass(frozen=True)
class VerifiedManifest:
    """A verified signature: who signed, when, and the digests of every covered file.

    ``files`` is keyed by resource name (POSIX path relative to the model directory;
    ``"."`` for a single-file model).  ``uncovered`` lists files present but not signed
    (allowed by the signature's ignore_paths or by ``allow_unsigned``).  ``hashed`` says
    whether file contents were checked (``hash_files=True``) or only names and sizes.
    """

    root: Path
    files: dict[str, FileDigests]
    signer: str
    signed_at: datetime | None
    time_source: str | None
    uncovered: tuple[str, ...]
    bundle_digest: str
    model_name: str
    kind: str
    hashed: bool
    unsafe: bool
    weightguard_version: str | None

    def path_of(self, name: str) -> Path:
        """Filesystem path of resource ``name``."""
        return self.root if name == "." else self.root / name

    def to_dict(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "signed_at": self.signed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.signed_at else None,
            "time_source": self.time_source,
            "kind": self.kind,
            "model_name": self.model_name,
            "bundle_sha256": self.bundle_digest,
            "hashed": self.hashed,
            "unsafe": self.unsafe,
            "weightguard_version": self.weightguard_version,
            "covered": sorted(self.files),
            "uncovered": list(self.uncovered),
            "files": {
                n: {
                    "size": f.size,
                    "head": f.head,
                    "stride": f.stride,
                    "chunks": len(f.digests),
                    "digest": f.resource_digest.hex(),
                    "digest_algorithm": f.resource_algorithm,
                    "chunked": f.chunked,
                    "algorithm": f.algorithm,
                }
                for n, f in sorted(self.files.items())
            },
        }


@dataclass(frozen=True)
class SignedModel:
    signature: Path
    signer: str
    files: dict[str, FileDigests]
    bundle_digest: str
    signed_at: datetime


# ------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class WrappedKey:
    """A wrapped data key as stored in (and authenticated by) the artifact header."""

    provider: str  # "vault-transit" | "aws-kms" | "file"
    uri: str  # e.g. vault://transit/models
    key_version: int | None
    context: str  # derivation / encryption context (model id), not secret
    ciphertext: str = field(repr=False)  # provider's wrapped form


# ------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with capped exponential backoff and full jitter."""

    max_attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return random.uniform(0, cap)


@dataclass(frozen=True)
class S3Options:
    """How to reach S3.  Every field is optional; unset ones follow boto3's defaults."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 8  # concurrent ranged GETs
    part_size: int = 8 * 1024 * 1024  # split single large reads into parts of this size
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    # Bounds of one prefix listing (ListObjectsV2); past any of them the listing is
    # refused whole (SourceError): a model is a few thousand files at most.
    max_list_keys: int = 100_000
    max_list_pages: int = 1_000
    max_list_bytes: int = 128 * 1024 * 1024  # response bodies, all pages together
    list_timeout_s: float = 300.0  # the whole listing, slow bodies included
    client: Any = field(default=None, repr=False)  # a ready boto3 S3 client (tests, custom auth)

    def __repr__(self) -> str:  # never show the client (it holds credentials)
        return (
            f"S3Options(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"profile={self.profile!r}, concurrency={self.concurrency})"
        )


# ------------------------------------------------------------------------ transfer


@dataclass
class FetchResult:
    directory: str
    files: list[str]
    bytes: int
