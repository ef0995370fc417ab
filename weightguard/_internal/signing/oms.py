"""OpenSSF model-signing (OMS) bundle encoding and strict, bounded decoding.

Byte-level facts (checked against model-signing 1.1.1):

* Bundle: Sigstore bundle JSON, ``mediaType`` ``application/vnd.dev.sigstore.bundle.v0.3+json``,
  ``verificationMaterial`` (``publicKey.hint`` | ``x509CertificateChain.certificates[].rawBytes``
  | ``certificate.rawBytes`` + ``tlogEntries`` for Sigstore keyless) and ``dsseEnvelope``.
* DSSE: ``payloadType`` ``application/vnd.in-toto+json``; exactly one signature over
  ``PAE = b"DSSEv1 %d %s %d %s" % (len(type), type, len(payload), payload)``; ECDSA DER.
* Payload: in-toto Statement v1, ``predicateType`` ``https://model_signing/signature/v1.0``,
  one subject whose sha256 = SHA-256 of the concatenated raw resource digests in listed
  order; resources sorted by POSIX path parts; a single-file model has one resource ``.``.
* Key hint: hex SHA-256 of the PEM SubjectPublicKeyInfo text of the public key.
  model_signing 0.3.1 .. 1.0.1 wrote ``publicKey`` as ``{"rawBytes": base64(PEM SPKI),
  "keyDetails": "PKIX_ECDSA_P<n>_SHA_<m>"}`` instead (no hint, no ``tlogEntries``,
  ``keyid: null``); both are verified against the configured key
  (``signers.ec_key.prove_key``).
* v0.2.0 signed the DSSE payload with a broken PAE (:func:`pae_compat`; certificate
  bundles with SHA-256 whatever the curve) and a predicate ``Digests/v0.1`` whose
  subjects are the files; model_signing 1.1.1 still verifies both, and so does
  weightguard.
* ``serialization.hash_type`` ``sha256``, ``blake2b`` (model_signing's ``blake2``:
  ``hashlib.blake2b()``, 64-byte digests) or ``blake3`` (model_signing >= 1.1.0); every
  resource's ``algorithm`` is the same name and its ``digest`` the hex whole-file digest
  (BLAKE3: 32-byte default output, as ``blake3.blake3(max_threads=AUTO)`` computes it).
  The subject digest is SHA-256 either way.
* ``serialization.method`` ``files`` (one resource per file) or ``shards`` (``shard_size``;
  one resource per shard, named ``<path>:<start>:<end>``; a file of size ``n`` has the
  shards ``[k*s, min((k+1)*s, n))``, an empty file none).  Parsed strictly: decimal
  offsets without sign or leading zeros, shards that tile each file exactly.

weightguard adds ``predicate.weightguard`` (signed; ignored by the reference verifier):
``{"version", "signed_at"?, "files": {name: {"algorithm", "size", "head", "stride",
"digests": [hex...]}}}`` where ``algorithm`` is ``blake3-chunked-v1`` (default) or
``sha256-chunked-v1`` (32-byte digests either way).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple

from weightguard._internal.foundation import boundedjson
from weightguard._internal.foundation.encoding import canonical_b64decode
from weightguard._internal.signing.hashing import (
    CHUNK_ALGORITHMS,
    SHA256_CHUNKED,
    WHOLE_ALGORITHMS,
    range_count,
)
from weightguard.errors import ConfigError, FormatError

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Bundle",
    "ChunkRecord",
    "ShardRecord",
    "Statement",
    "build_statement",
    "claimed_signing_time",
    "encode_bundle",
    "key_hint",
    "pae",
    "pae_compat",
    "parse_bundle",
    "parse_shard_name",
    "parse_statement",
    "resource_sort_key",
    "subject_digest",
    "validate_resource_name",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# model_signing v0.2.0's predicate: the files are the statement's subjects.
PREDICATE_TYPE_V02 = "https://model_signing/Digests/v0.1"
V02_MODEL_NAME = "compat-undefined-not-present"  # model_signing's name for such models
WG_VERSION_FIELD = "weightguard"

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_RESOURCES = 1_000_000
MAX_CERTS = 10
MAX_NAME_LEN = 4096
MAX_FILE_SIZE = 1 << 50
MIN_STRIDE = 16
MAX_STRIDE = 1 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_OFFSET = re.compile(r"0|[1-9][0-9]{0,17}")
MAX_SHARD_SIZE = 1 << 50
# publicKey.keyDetails as model_signing 0.3.1 .. 1.0.1 wrote it, by curve.
KEY_DETAILS = {
    "secp256r1": "PKIX_ECDSA_P256_SHA_256",
    "secp384r1": "PKIX_ECDSA_P384_SHA_384",
    "secp521r1": "PKIX_ECDSA_P521_SHA_512",
}


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """DSSE v1 pre-authentication encoding (what is actually signed)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def pae_compat(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The PAE model_signing v0.2.0 signed (its bug: ``"DSSEV1"`` and the payload's
    Python ``repr``); model_signing >= 1.0 still verifies such signatures."""
    return f"DSSEV1 {len(payload_type)} {payload_type} {len(payload)} {payload!r}".encode()


def key_hint(public_key: Any) -> str:
    """model-signing's ``publicKey.hint``: hex SHA-256 of the PEM SPKI text."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def resource_sort_key(name: str) -> tuple[str, ...]:
    """model-signing sorts resources as ``PurePosixPath`` objects: by path parts."""
    return tuple(name.split("/"))


def subject_digest(digests: list[bytes]) -> bytes:
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.digest()


def validate_resource_name(name: object, where: str, *, single_file_ok: bool = True) -> str:
    """A resource name must be a plain relative POSIX path inside the model.

    ``"."`` (a single-file model) is the one addition to the shared rule in
    :func:`weightguard._internal.foundation.names.safe_relative_name`.
    """
    from weightguard._internal.foundation.names import safe_relative_name

    if name == ".":
        if single_file_ok:
            return name
        raise FormatError(f"{where}: resource name '.' is only valid for a single-file model")
    return safe_relative_name(name, where)


def _b64decode(value: object, where: str, *, max_len: int = MAX_BUNDLE_BYTES) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a base64 string")
    if len(value) > max_len * 4 // 3 + 4:
        raise FormatError(f"{where}: value too large")
    try:
        return canonical_b64decode(value)
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a JSON object")
    return value


def _list(value: object, where: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a JSON array")
    if len(value) > max_items:
        raise FormatError(f"{where}: more than {max_items} entries")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a string")
    return value


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: expected an integer")
    if not lo <= value <= hi:
        raise FormatError(f"{where}: {value} out of range [{lo}, {hi}]")
    return value


def _hex32(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise FormatError(f"{where}: expected 64 lowercase hex characters (a SHA-256 digest)")
    return bytes.fromhex(value)


def _loads(data: bytes, where: str) -> Any:
    # Sigstore bundles nest ~6 deep, statements ~5; floats are allowed (finite only) so a
    # future model_signing field cannot make a valid bundle unreadable.
    return boundedjson.loads(
        data, what=where, max_bytes=MAX_BUNDLE_BYTES, max_depth=32, floats=True
    )


# ----------------------------------------------------------------------------- bundle


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Bundle(NamedTuple):
    """A parsed (not yet verified) OMS bundle."""

    raw: bytes
    media_type: str
    kind: str  # "key" | "x509" | "sigstore"
    key_hint: str | None  # publicKey.hint
    certificates: tuple[bytes, ...]  # DER, leaf first (x509 chain or sigstore cert)
    payload_type: str
    payload: bytes
    signature: bytes
    document: dict[str, Any]  # not in the repr
    # model_signing 0.3.1 .. 1.0.1 key bundles: publicKey.rawBytes (PEM) and keyDetails
    key_pem: bytes | None = None
    key_details: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def __repr__(self) -> str:
        shown = (f"{k}={getattr(self, k)!r}" for k in self._fields if k != "document")
        return f"Bundle({', '.join(shown)})"


_BUNDLE_FIELDS = frozenset({"mediaType", "verificationMaterial", "dsseEnvelope"})
_VM_FIELDS = frozenset(
    {
        "publicKey",
        "x509CertificateChain",
        "certificate",
        "tlogEntries",
        "timestampVerificationData",
    }
)
_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})


def _known(obj: dict[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise FormatError(f"{where}: unknown field {extra[0][:64]!r}")


def parse_bundle(data: bytes, *, path: str = "signature") -> Bundle:
    """Strictly parse a bundle; every failure names the file and the field."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise FormatError(f"{path}: bundle larger than {MAX_BUNDLE_BYTES} bytes")
    doc = _obj(_loads(data, path), path)
    media_type = doc.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise FormatError(
            f"{path}: mediaType is {media_type!r}, expected {BUNDLE_MEDIA_TYPE!r}",
            hint="sign the model again with weightguard or model_signing >= 1.0",
        )
    if "messageSignature" in doc:
        raise FormatError(f"{path}: messageSignature bundles are not model signatures")
    vm = _obj(doc.get("verificationMaterial"), f"{path}: verificationMaterial")
    env = _obj(doc.get("dsseEnvelope"), f"{path}: dsseEnvelope")
    # Fields of the Sigstore bundle v0.3 schema only, at every level weightguard reads
    # (as protobuf JSON parsers do): a renamed or smuggled field is an edit, not
    # something to skip over.
    _known(doc, _BUNDLE_FIELDS, path)
    _known(vm, _VM_FIELDS, f"{path}: verificationMaterial")
    _known(env, _ENVELOPE_FIELDS, f"{path}: dsseEnvelope")

    kind, hint, certs, key_pem, key_details = _parse_material(vm, path)

    payload_type = _str(env.get("payloadType"), f"{path}: dsseEnvelope.payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise FormatError(
            f"{path}: dsseEnvelope.payloadType is {payload_type!r}, expected {PAYLOAD_TYPE!r}"
        )
    payload = _b64decode(env.get("payload"), f"{path}: dsseEnvelope.payload")
    sigs = _list(env.get("signatures"), f"{path}: dsseEnvelope.signatures", 16)
    if len(sigs) != 1:
        raise FormatError(
            f"{path}: dsseEnvelope.signatures has {len(sigs)} entries, expected exactly 1",
            hint="a model signature carries one signature; re-sign the model",
        )
    sig_obj = _obj(sigs[0], f"{path}: dsseEnvelope.signatures[0]")
    _known(sig_obj, {"sig", "keyid"}, f"{path}: dsseEnvelope.signatures[0]")
    # keyid: "" (model_signing >= 1.1), null (0.2 .. 1.0) or absent (Sigstore); a value
    # would be an unverified claim.
    if sig_obj.get("keyid") not in ("", None):
        raise FormatError(
            f"{path}: dsseEnvelope.signatures[0].keyid must be empty "
            "(weightguard does not use or verify key ids)"
        )
    _check_shape(kind, hint, "tlogEntries" in vm, sig_obj, path)
    sig = _b64decode(sig_obj.get("sig"), f"{path}: dsseEnvelope.signatures[0].sig", max_len=4096)
    if not sig:
        raise FormatError(f"{path}: dsseEnvelope.signatures[0].sig is empty")
    return Bundle(
        raw=bytes(data),
        media_type=media_type,
        kind=kind,
        key_hint=hint,
        certificates=tuple(certs),
        payload_type=payload_type,
        payload=payload,
        signature=sig,
        document=doc,
        key_pem=key_pem,
        key_details=key_details,
    )


def _check_shape(
    kind: str, hint: str | None, has_tlog: bool, sig_obj: dict[str, Any], path: str
) -> None:
    """Key and certificate bundles in one of the two shapes model_signing wrote, never a
    mix (each mix would be another encoding of the same signature, a new bundle digest):
    >= 1.1 ``tlogEntries: []`` with ``keyid: ""`` (and a key's ``hint``), 0.3.1 .. 1.0.1
    no ``tlogEntries`` with ``keyid: null`` (and a key's ``rawBytes``/``keyDetails``);
    Sigstore bundles without ``keyid``."""
    keyid = sig_obj.get("keyid", ...)
    if kind == "sigstore":
        # sigstore-python writes no keyid (protobuf JSON leaves the empty default out)
        if keyid is not ...:
            raise FormatError(
                f"{path}: dsseEnvelope.signatures[0].keyid in a Sigstore bundle "
                "(sigstore writes none; the shapes model_signing writes)"
            )
        return
    if kind == "key" and (hint is not None) != has_tlog:
        raise FormatError(
            f"{path}: verificationMaterial: a key bundle with "
            + ("publicKey.hint carries tlogEntries: []" if hint else "rawBytes has no tlogEntries")
            + " (the shapes model_signing writes)"
        )
    if keyid is ... or keyid != ("" if has_tlog else None):
        raise FormatError(
            f"{path}: dsseEnvelope.signatures[0].keyid must be "
            + ('"" beside tlogEntries' if has_tlog else "null without tlogEntries")
            + " (the shapes model_signing writes)"
        )


def _parse_material(
    vm: dict[str, Any], path: str
) -> tuple[str, str | None, list[bytes], bytes | None, str | None]:
    """``verificationMaterial``: (kind, key hint, DER certificates leaf first, PEM key
    and keyDetails of model_signing 0.3.1 .. 1.0.1 key bundles)."""
    hint: str | None = None
    certs: list[bytes] = []
    present = [k for k in ("publicKey", "x509CertificateChain", "certificate") if k in vm]
    if len(present) != 1:
        raise FormatError(
            f"{path}: verificationMaterial must hold exactly one of publicKey, "
            f"x509CertificateChain, certificate (found {present or 'none'})"
        )
    tlog = vm.get("tlogEntries", [])
    _list(tlog, f"{path}: verificationMaterial.tlogEntries", 16)
    key_pem: bytes | None = None
    key_details: str | None = None
    if present[0] != "certificate":
        # Key and certificate bundles: weightguard (like model_signing) verifies no
        # transparency log entry or timestamp for them, so none may be there: an
        # unverified field would be a second encoding of the same signature.
        if tlog:
            raise FormatError(
                f"{path}: verificationMaterial.tlogEntries must be empty in a "
                f"{present[0]} bundle (nothing there is verified)",
                hint="only Sigstore keyless bundles carry transparency log entries",
            )
        if "timestampVerificationData" in vm:
            raise FormatError(
                f"{path}: verificationMaterial.timestampVerificationData in a "
                f"{present[0]} bundle (nothing there is verified)"
            )
    if present[0] == "publicKey":
        kind = "key"
        hint, key_pem, key_details = _parse_public_key(
            vm["publicKey"], f"{path}: verificationMaterial.publicKey"
        )
    elif present[0] == "x509CertificateChain":
        kind = "x509"
        chain = _obj(
            vm["x509CertificateChain"], f"{path}: verificationMaterial.x509CertificateChain"
        )
        _known(chain, {"certificates"}, f"{path}: verificationMaterial.x509CertificateChain")
        items = _list(
            chain.get("certificates"),
            f"{path}: verificationMaterial.x509CertificateChain.certificates",
            MAX_CERTS,
        )
        if not items:
            raise FormatError(f"{path}: x509CertificateChain.certificates is empty")
        for i, c in enumerate(items):
            where = f"{path}: x509CertificateChain.certificates[{i}]"
            _known(_obj(c, where), {"rawBytes"}, where)
            certs.append(_b64decode(c.get("rawBytes"), f"{where}.rawBytes", max_len=1 << 20))
    else:
        kind = "sigstore"
        c = _obj(vm["certificate"], f"{path}: verificationMaterial.certificate")
        _known(c, {"rawBytes"}, f"{path}: verificationMaterial.certificate")
        where = f"{path}: verificationMaterial.certificate.rawBytes"
        certs.append(_b64decode(c.get("rawBytes"), where, max_len=1 << 20))
        if not tlog:
            raise FormatError(
                f"{path}: Sigstore keyless bundle without tlogEntries",
                hint="a keyless signature must carry its transparency log entry",
            )
        # sigstore-python always writes it ({} before 4.x, {"rfc3161Timestamps": [...]}
        # since); removed, the same signature would verify under a new bundle digest
        if "timestampVerificationData" not in vm:
            raise FormatError(
                f"{path}: Sigstore keyless bundle without timestampVerificationData "
                "(sigstore-python always writes it)"
            )
    return kind, hint, certs, key_pem, key_details


def _parse_public_key(value: object, pkw: str) -> tuple[str | None, bytes | None, str | None]:
    """``publicKey``: (hint, rawBytes PEM, keyDetails); exactly one shape is present."""
    pk = _obj(value, pkw)
    hint: str | None = None
    key_pem: bytes | None = None
    key_details: str | None = None
    # Two shapes: {"hint"} (model_signing >= 1.1) or {"rawBytes", "keyDetails"}
    # (0.3.1 .. 1.0.1); each field is checked against the verifying key.
    if "hint" in pk:
        _known(pk, {"hint"}, pkw)
        h = pk["hint"]
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise FormatError(f"{pkw}.hint is not a hex SHA-256")
        hint = h
    else:
        _known(pk, {"rawBytes", "keyDetails"}, pkw)
        if set(pk) != {"rawBytes", "keyDetails"}:
            raise FormatError(
                f"{pkw} must hold either hint, or rawBytes and keyDetails "
                f"(found {sorted(pk) or 'none'})"
            )
        key_pem = _b64decode(pk["rawBytes"], f"{pkw}.rawBytes", max_len=1 << 16)
        _canonical_pem(key_pem, f"{pkw}.rawBytes")
        kd = pk["keyDetails"]
        if kd not in KEY_DETAILS.values():
            raise FormatError(
                f"{pkw}.keyDetails is {str(kd)[:64]!r}; expected one of "
                + ", ".join(sorted(KEY_DETAILS.values()))
            )
        key_details = str(kd)
    return hint, key_pem, key_details


def _canonical_pem(pem: bytes, where: str) -> None:
    """rawBytes must be the PEM SubjectPublicKeyInfo exactly as model_signing wrote it
    (cryptography's encoding): PEM readers skip text around the armour and accept other
    line breaks, so any other bytes would be a second encoding of the same signature
    (a new bundle digest for the same proof)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FormatError(f"{where} is not a PEM public key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_bytes(serialization.Encoding.PEM, spki) != pem:
        raise FormatError(
            f"{where} is not the canonical PEM SubjectPublicKeyInfo model_signing writes "
            "(extra text, other line breaks or wrapping)"
        )


def encode_bundle(
    payload: bytes,
    signature: bytes,
    *,
    key_hint: str | None = None,
    certificates: list[bytes] | None = None,
) -> bytes:
    """Encode a key or X.509-chain bundle exactly as model-signing writes it."""
    if certificates:
        vm: dict[str, Any] = {
            "x509CertificateChain": {
                "certificates": [
                    {"rawBytes": base64.b64encode(c).decode("ascii")} for c in certificates
                ]
            },
            "tlogEntries": [],
        }
    else:
        vm = {"publicKey": {"hint": key_hint}, "tlogEntries": []}
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": vm,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(doc, indent=2).encode("utf-8") + b"\n"


# -------------------------------------------------------------------------- statement


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class ChunkRecord(NamedTuple):
    size: int
    head: int
    stride: int
    digests: tuple[bytes, ...]
    algorithm: str = SHA256_CHUNKED  # chunk digest algorithm (hashing.chunk_hasher)


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class ShardRecord(NamedTuple):
    """One file of a ``shards`` statement: ``digests[k]`` covers
    ``[k*shard_size, min((k+1)*shard_size, size))``."""

    size: int
    shard_size: int
    digests: tuple[bytes, ...]


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Statement(NamedTuple):
    model_name: str
    subject_sha256: bytes
    resources: dict[str, bytes]  # name -> whole-file digest (hash_type), in listed order
    allow_symlinks: bool
    ignore_paths: tuple[str, ...]
    wg_version: str | None
    signed_at: datetime | None  # signer's claim (weightguard bundles only)
    chunks: dict[str, ChunkRecord]
    hash_type: str = "sha256"  # serialization.hash_type == every resource's algorithm
    # "files": resources[name] is the file's digest.  "shards": resources[name] is b""
    # and shards[name] holds the file's shard digests (model_signing file_shard).
    method: str = "files"
    shards: Mapping[str, ShardRecord] = MappingProxyType({})  # read-only: shared default


def build_statement(
    model_name: str,
    resources: dict[str, bytes],
    *,
    allow_symlinks: bool,
    ignore_paths: list[str],
    chunks: dict[str, ChunkRecord],
    version: str,
    signed_at: datetime | None,
    hash_type: str = "sha256",
) -> bytes:
    if hash_type not in WHOLE_ALGORITHMS:
        raise ConfigError(
            f"hash type {hash_type!r} is not supported; use one of {', '.join(WHOLE_ALGORITHMS)}"
        )
    names = sorted(resources, key=resource_sort_key)
    digests = [resources[n] for n in names]
    serialization: dict[str, Any] = {
        "method": "files",
        "hash_type": hash_type,
        "allow_symlinks": allow_symlinks,
    }
    if ignore_paths:
        serialization["ignore_paths"] = list(ignore_paths)
    wg: dict[str, Any] = {"version": version}
    if signed_at is not None:
        wg["signed_at"] = signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    wg["files"] = {
        n: {
            "algorithm": chunks[n].algorithm,
            "size": chunks[n].size,
            "head": chunks[n].head,
            "stride": chunks[n].stride,
            "digests": [d.hex() for d in chunks[n].digests],
        }
        for n in names
        if n in chunks
    }
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": subject_digest(digests).hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": serialization,
            "resources": [
                {"name": n, "algorithm": hash_type, "digest": resources[n].hex()} for n in names
            ],
            WG_VERSION_FIELD: wg,
        },
    }
    return json.dumps(doc, indent=2).encode("utf-8")


# What ``datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")`` accepts, exactly: _strptime's own
# patterns for these directives (Python 3.11-3.13), matched case-insensitively from the
# start, the whole string consumed; datetime() then checks the ranges.  strptime's first
# call costs about a millisecond (the _strptime module and its locale tables); this does
# not (tests/signing/test_signed_at.py compares the two on the edge cases).
_TIME_RE: re.Pattern[str] | None = None
_FIELDS = ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))


def _parse_time(value: object, where: str) -> datetime:
    global _TIME_RE
    s = _str(value, where)
    digits = s[0:4] + s[5:7] + s[8:10] + s[11:13] + s[14:16] + s[17:19]
    if len(s) == 20 and s[4::3] == "--T::Z" and digits.isascii() and digits.isdigit():
        # the form signers write: for two ASCII digits per field strptime's patterns
        # defer to datetime()'s range checks, so no pattern is needed
        try:
            y, mo, d, h, mi, sec = (int(digits[i:j]) for i, j in _FIELDS)
            t = datetime(y, mo, d, h, mi, sec)
        except ValueError as exc:
            raise FormatError(f"{where}: expected UTC time as YYYY-MM-DDTHH:MM:SSZ") from exc
        return t.replace(tzinfo=UTC)
    if _TIME_RE is None:
        _TIME_RE = re.compile(
            r"(?P<Y>\d\d\d\d)-(?P<m>1[0-2]|0[1-9]|[1-9])-(?P<d>3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9])"
            r"T(?P<H>2[0-3]|[0-1]\d|\d):(?P<M>[0-5]\d|\d):(?P<S>6[0-1]|[0-5]\d|\d)Z",
            re.IGNORECASE,
        )
    found = _TIME_RE.match(s)
    try:
        if found is None or found.end() != len(s):
            raise ValueError("not YYYY-MM-DDTHH:MM:SSZ")
        y, mo, d, h, mi, sec = (int(found[k]) for k in "YmdHMS")
        t = datetime(y, mo, d, h, mi, sec)
    except ValueError as exc:
        raise FormatError(f"{where}: expected UTC time as YYYY-MM-DDTHH:MM:SSZ") from exc
    return t.replace(tzinfo=UTC)


def _hash_name(value: object, shard_size: int, where: str) -> str:
    """serialization.hash_type: sha256 | blake2b | blake3, or (model_signing 0.3, shards)
    ``<hash>-sharded-<shard_size>``; returns the plain name."""
    if shard_size and isinstance(value, str) and value.endswith(f"-sharded-{shard_size}"):
        value = value[: -len(f"-sharded-{shard_size}")]
        if value == "blake3":
            value = None  # model_signing never shards BLAKE3
    if value not in WHOLE_ALGORITHMS:
        raise FormatError(
            f"{where}.hash_type is {str(value)[:64]!r}; "
            f"supported: {', '.join(repr(a) for a in WHOLE_ALGORITHMS)}",
            hint="re-sign with hash type sha256, blake2 or blake3",
        )
    return str(value)


def _digest_hex(value: object, algorithm: str, where: str) -> bytes:
    if algorithm == "blake2b":
        if not isinstance(value, str) or not _HEX128.fullmatch(value):
            raise FormatError(
                f"{where}: expected 128 lowercase hex characters (a BLAKE2b-512 digest)"
            )
        return bytes.fromhex(value)
    return _hex32(value, where)


def parse_shard_name(name: object, where: str) -> tuple[str, int, int]:
    """``(path, start, end)`` of a ``shards`` resource name ``<path>:<start>:<end>``.

    As model_signing reads it (exactly three ``:``-separated parts, so a path with
    ``:`` cannot be a shard), but stricter: offsets are plain decimals (no sign, no
    leading zero, no spaces or ``_``) with ``start < end``.
    """
    if not isinstance(name, str):
        raise FormatError(f"{where}: a shard name must be a string")
    parts = name.split(":")
    if len(parts) != 3:
        raise FormatError(
            f"{where}: shard name {name[:200]!r} is not <path>:<start>:<end> "
            "(a path containing ':' cannot be signed by shards)"
        )
    for part in parts[1:]:
        if not _OFFSET.fullmatch(part):
            raise FormatError(
                f"{where}: shard name {name[:200]!r}: offset {part[:32]!r} is not a decimal"
            )
    start, end = int(parts[1]), int(parts[2])
    if not start < end <= MAX_FILE_SIZE:
        raise FormatError(f"{where}: shard name {name[:200]!r}: empty or inverted range")
    return validate_resource_name(parts[0], f"{where}"), start, end


def _check_tiling(name: str, ranges: list[tuple[int, int]], shard_size: int, where: str) -> int:
    """The file's size if ``ranges`` (sorted) are exactly model_signing's shards of it."""
    size = ranges[-1][1]
    for k, (start, end) in enumerate(ranges):
        want = (k * shard_size, min((k + 1) * shard_size, size))
        if (start, end) != want:
            raise FormatError(
                f"{where}: shards of {name!r} do not tile the file: shard {k} is "
                f"[{start}, {end}), expected [{want[0]}, {want[1]}) for shard_size "
                f"{shard_size} (gap, overlap or wrong size)"
            )
    return size


def _parse_v02(doc: dict[str, Any], w: str) -> Statement:
    """model_signing v0.2.0's statement: each subject is a file and its SHA-256."""
    subjects = _list(doc.get("subject"), f"{w}.subject", MAX_RESOURCES)
    if not subjects:
        raise FormatError(f"{w}.subject is empty")
    resources: dict[str, bytes] = {}
    for i, sub in enumerate(subjects):
        sw = f"{w}.subject[{i}]"
        so = _obj(sub, sw)
        name = validate_resource_name(so.get("name"), f"{sw}.name")
        if name in resources:
            raise FormatError(f"{sw}.name {name!r} is listed twice")
        resources[name] = _hex32(_obj(so.get("digest"), f"{sw}.digest").get("sha256"), sw)
    if "." in resources and len(resources) != 1:
        raise FormatError(f"{w}.subject: '.' (single-file model) mixed with others")
    return Statement(
        model_name=V02_MODEL_NAME,
        subject_sha256=b"",
        resources=resources,
        allow_symlinks=False,
        ignore_paths=(),
        wg_version=None,
        signed_at=None,
        chunks={},
        hash_type="sha256",
    )


def parse_statement(payload: bytes, *, path: str = "signature") -> Statement:
    """Strictly parse the in-toto statement of an OMS bundle (after signature check)."""
    w = f"{path}: payload"
    doc = _obj(_loads(payload, w), w)
    if doc.get("_type") != STATEMENT_TYPE:
        raise FormatError(f"{w}._type is {doc.get('_type')!r}, expected {STATEMENT_TYPE!r}")
    if doc.get("predicateType") == PREDICATE_TYPE_V02:
        return _parse_v02(doc, w)
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise FormatError(
            f"{w}.predicateType is {doc.get('predicateType')!r}, expected {PREDICATE_TYPE!r}"
        )
    subjects = _list(doc.get("subject"), f"{w}.subject", 16)
    if len(subjects) != 1:
        raise FormatError(f"{w}.subject has {len(subjects)} entries, expected exactly 1")
    subj = _obj(subjects[0], f"{w}.subject[0]")
    model_name = _str(subj.get("name"), f"{w}.subject[0].name")
    sdig = _obj(subj.get("digest"), f"{w}.subject[0].digest")
    subject_sha = _hex32(sdig.get("sha256"), f"{w}.subject[0].digest.sha256")

    pred = _obj(doc.get("predicate"), f"{w}.predicate")
    ser = _parse_serialization(pred, w)
    resources, listed, shard_ranges = _parse_resources(pred, ser, w)
    if subject_digest(listed) != subject_sha:
        raise FormatError(
            f"{w}.subject[0].digest.sha256 does not match the listed resources",
            hint="the statement is inconsistent; it was not produced by a correct signer",
        )
    shards: dict[str, ShardRecord] = {}
    for name, per_file in shard_ranges.items():
        ranges = sorted(per_file)
        size = _check_tiling(name, ranges, ser.shard_size, f"{w}.predicate.resources")
        shards[name] = ShardRecord(size, ser.shard_size, tuple(per_file[r] for r in ranges))
    wg_version, signed_at, chunks = _parse_weightguard(pred, resources, w)
    if chunks and ser.method != "files":
        raise FormatError(
            f"{w}.predicate.weightguard: chunk digests with {ser.method} serialization"
        )
    return Statement(
        model_name=model_name,
        subject_sha256=subject_sha,
        resources=resources,
        allow_symlinks=ser.allow_symlinks,
        ignore_paths=ser.ignore_paths,
        wg_version=wg_version,
        signed_at=signed_at,
        chunks=chunks,
        hash_type=ser.hash_type,
        method=ser.method,
        shards=shards,
    )


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class _Serialization(NamedTuple):
    method: str  # "files" | "shards"
    shard_size: int  # 0 for "files"
    hash_type: str
    resource_algorithms: frozenset[str]  # what every resource's "algorithm" may say
    allow_symlinks: bool
    ignore_paths: tuple[str, ...]


def _parse_serialization(pred: dict[str, Any], w: str) -> _Serialization:
    sw = f"{w}.predicate.serialization"
    ser = _obj(pred.get("serialization"), sw)
    method = ser.get("method")
    if method not in ("files", "shards"):
        raise FormatError(
            f"{sw}.method is {str(method)[:64]!r}; supported: 'files', 'shards'",
            hint="sign with file serialization (the model_signing default)",
        )
    shard_size = 0
    if method == "shards":
        # protobuf Struct numbers: model_signing writes shard_size as 1000.0
        raw_size = ser.get("shard_size")
        if isinstance(raw_size, float) and raw_size.is_integer():
            raw_size = int(raw_size)
        shard_size = _int(raw_size, f"{sw}.shard_size", 1, MAX_SHARD_SIZE)
    hash_type = _hash_name(ser.get("hash_type"), shard_size, sw)
    # Resource algorithm: the hash type, or (shards) "<hash>-sharded-<shard_size>" as
    # model_signing 0.3 .. 1.1 name it; one name for every resource.
    resource_algorithms = {hash_type}
    if method == "shards":
        resource_algorithms.add(f"{hash_type}-sharded-{shard_size}")
    allow_symlinks = ser.get("allow_symlinks")
    if not isinstance(allow_symlinks, bool):
        raise FormatError(f"{sw}.allow_symlinks must be a boolean")
    ignore_raw = _list(ser.get("ignore_paths", []), f"{sw}.ignore_paths", 4096)
    ignore_paths = tuple(_str(p, f"{sw}.ignore_paths[{i}]") for i, p in enumerate(ignore_raw))
    return _Serialization(
        str(method),
        shard_size,
        hash_type,
        frozenset(resource_algorithms),
        allow_symlinks,
        ignore_paths,
    )


def _parse_resources(
    pred: dict[str, Any], ser: _Serialization, w: str
) -> tuple[dict[str, bytes], list[bytes], dict[str, dict[tuple[int, int], bytes]]]:
    """(resource digest by file -- b"" for sharded files --, every digest in listed
    order, shard digests by file and byte range)."""
    items = _list(pred.get("resources"), f"{w}.predicate.resources", MAX_RESOURCES)
    resources: dict[str, bytes] = {}
    listed: list[bytes] = []
    shard_ranges: dict[str, dict[tuple[int, int], bytes]] = {}
    first_algorithm: object = None
    for i, r in enumerate(items):
        rw = f"{w}.predicate.resources[{i}]"
        ro = _obj(r, rw)
        algorithm = ro.get("algorithm")
        if i == 0:
            first_algorithm = algorithm
        if algorithm not in ser.resource_algorithms or algorithm != first_algorithm:
            raise FormatError(
                f"{rw}.algorithm is {str(algorithm)[:64]!r}, expected "
                + " or ".join(repr(a) for a in sorted(ser.resource_algorithms))
                + " (the serialization.hash_type), the same for every resource"
            )
        digest = _digest_hex(ro.get("digest"), ser.hash_type, f"{rw}.digest")
        listed.append(digest)
        if ser.method == "shards":
            name, start, end = parse_shard_name(ro.get("name"), f"{rw}.name")
            per_file = shard_ranges.setdefault(name, {})
            if (start, end) in per_file:
                raise FormatError(f"{rw}.name {ro.get('name')!r} is listed twice")
            per_file[(start, end)] = digest
            resources[name] = b""
            continue
        name = validate_resource_name(ro.get("name"), f"{rw}.name")
        if name in resources:
            raise FormatError(f"{rw}.name {name!r} is listed twice")
        resources[name] = digest
    if "." in resources and len(resources) != 1:
        raise FormatError(f"{w}.predicate.resources: '.' (single-file model) mixed with others")
    return resources, listed, shard_ranges


def _parse_weightguard(
    pred: dict[str, Any], resources: dict[str, bytes], w: str
) -> tuple[str | None, datetime | None, dict[str, ChunkRecord]]:
    """``predicate.weightguard``: (version, signed_at, chunk records), if present."""
    wg_version: str | None = None
    signed_at: datetime | None = None
    chunks: dict[str, ChunkRecord] = {}
    if WG_VERSION_FIELD not in pred:
        return wg_version, signed_at, chunks
    ww = f"{w}.predicate.weightguard"
    wg = _obj(pred[WG_VERSION_FIELD], ww)
    wg_version = _str(wg.get("version"), f"{ww}.version")
    if "signed_at" in wg:
        signed_at = _parse_time(wg["signed_at"], f"{ww}.signed_at")
    files = _obj(wg.get("files"), f"{ww}.files")
    if len(files) > MAX_RESOURCES:
        raise FormatError(f"{ww}.files: too many entries")
    for name, rec in files.items():
        fw = f"{ww}.files[{name!r}]"
        if name not in resources:
            raise FormatError(f"{fw}: not a listed resource")
        chunks[name] = _parse_chunk_record(_obj(rec, fw), name, fw)
    return wg_version, signed_at, chunks


def _parse_chunk_record(ro: dict[str, Any], name: str, fw: str) -> ChunkRecord:
    algorithm = ro.get("algorithm")
    if algorithm not in CHUNK_ALGORITHMS:
        shown = str(algorithm)[:64]
        raise FormatError(
            f"{fw}.algorithm: file {name!r} is signed with unknown chunk digest "
            f"algorithm {shown!r}; supported: {', '.join(CHUNK_ALGORITHMS)}",
            hint="upgrade weightguard, or re-sign the model with this version",
        )
    size = _int(ro.get("size"), f"{fw}.size", 0, MAX_FILE_SIZE)
    head = _int(ro.get("head"), f"{fw}.head", 0, size)
    stride = _int(ro.get("stride"), f"{fw}.stride", MIN_STRIDE, MAX_STRIDE)
    expected = range_count(size, head, stride)
    dl = _list(ro.get("digests"), f"{fw}.digests", expected)
    if len(dl) != expected:
        raise FormatError(
            f"{fw}.digests has {len(dl)} entries, expected {expected} for "
            f"size {size}, head {head}, stride {stride}"
        )
    return ChunkRecord(
        size=size,
        head=head,
        stride=stride,
        digests=tuple(_hex32(d, f"{fw}.digests[{k}]") for k, d in enumerate(dl)),
        algorithm=str(algorithm),
    )


def claimed_signing_time(payload: bytes, *, path: str) -> datetime | None:
    """``predicate.weightguard.signed_at`` of a statement payload, or None if absent.

    Only meaningful once the signature over ``payload`` verified (the signer's claim).
    """
    try:
        doc = _loads(payload, f"{path}: payload")
        t = doc["predicate"][WG_VERSION_FIELD]["signed_at"]
    except (FormatError, KeyError, TypeError):
        return None
    return _parse_time(t, f"{path}: payload.predicate.weightguard.signed_at")
