"""Byte layout of weightguard encrypted artifacts (format version 1; spec: docs/FORMAT.md).

    file     = MAGIC(16; 0.1.0: 8) || u32le(L) || header JSON (L bytes) || header MAC(32)
               || record 0 || record 1 .. record n
    record 0 = AES-256-GCM(original safetensors header segment: u64 length + JSON)
    record i = AES-256-GCM(data-section bytes [(i-1)*chunk_size, min(i*chunk_size, data_size)))

Per-file data key DK (32 random bytes, wrapped by a key provider). From DK and the
header's random salt, HKDF-SHA256 derives the AEAD key, the header MAC key and the key
commitment.  Record nonce = nonce_prefix(7) || u32be(index) || u8(final); record AAD =
"weightguard/v1 record\\0" || SHA-256(header without wrapped_key) || u32be(index) ||
u8(final), so records cannot be reordered, duplicated, dropped, truncated or moved to
another artifact, and a rewrap (which changes only ``wrapped_key``) keeps every record
byte-identical.

This module has no I/O policy of its own besides the streaming helpers at the end; the
public entry points are in :mod:`weightguard.crypt`, the loader uses
:func:`read_header` and :class:`ChunkCipher` directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from weightguard._internal.format.safetensors import (
    MAX_HEADER_SIZE as MAX_ST_HEADER_SIZE,
)
from weightguard._internal.format.safetensors import (
    TensorInfo,
    tensor_count_bound,
    validate_header_dict,
)
from weightguard._internal.foundation import boundedjson
from weightguard._internal.foundation.memory import wipe
from weightguard.errors import (
    FormatError,
    IntegrityError,
    SourceError,
    TruncatedError,
    WrongKeyError,
)
from weightguard.manifest import WrappedKey

__all__ = [
    "AAD_LABEL",
    "ALGORITHMS",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "LEGACY_MAGIC",
    "MAC_SIZE",
    "MAGIC",
    "MAGIC_PROBE",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_LEN",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "ArtifactHeader",
    "ChunkCipher",
    "FileRandomness",
    "artifact_magic",
    "canonical_json",
    "decrypt_stream",
    "encrypt_stream",
    "is_artifact",
    "new_header",
    "read_header",
    "rewrapped_header",
]

# Read as a safetensors file, MAGIC is "header length 8" followed by 8 bytes that are
# not JSON (0x89 is not UTF-8, and not "{"): every reader that trusts the u64 fails
# fast after an 8-byte read, and no valid safetensors file can start like this.
# LEGACY_MAGIC (0.1.0) reads as a ~7.4e17-byte header, which some readers try to
# allocate (vLLM: MemoryError); it stays readable, new artifacts never use it.
LEGACY_MAGIC = b"\x89WGUARD\n"
MAGIC = b"\x08\x00\x00\x00\x00\x00\x00\x00" + LEGACY_MAGIC
MAGICS = (MAGIC, LEGACY_MAGIC)
MAGIC_PROBE = len(MAGIC)  # bytes to read to tell an artifact (either magic) apart
FORMAT_VERSION = 1
LEN_SIZE = 4
MAC_SIZE = 32
TAG_SIZE = 16
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
KEY_SIZE = 32
MAX_HEADER_LEN = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_DATA_SIZE = 1 << 50  # 1 PiB
MAX_CHUNKS = (1 << 32) - 1  # indices are u32; 0 is the safetensors header record
ALGORITHMS = {"aead": "AES-256-GCM", "kdf": "HKDF-SHA256", "mac": "HMAC-SHA256"}
INFO_AEAD = b"weightguard/v1 aead key"
INFO_MAC = b"weightguard/v1 header mac key"
INFO_COMMIT = b"weightguard/v1 key commitment"
AAD_LABEL = b"weightguard/v1 record\x00"
CONTENT_KINDS = ("safetensors", "raw")
HEADER_KEYS = frozenset(
    {
        "version",
        "alg",
        "content",
        "chunk_size",
        "data_size",
        "st_header_size",
        "num_chunks",
        "salt",
        "nonce_prefix",
        "commitment",
        "wrapped_key",
        "header_encrypted",
        "tensors",
    }
)
WRAPPED_KEY_KEYS = frozenset({"provider", "uri", "key_version", "context", "ciphertext"})
_HEX = re.compile(r"[0-9a-f]*")
_MAX_KEY_FIELD = 64 * 1024


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding of a header: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def artifact_magic(first_bytes: bytes) -> bytes | None:
    """The magic ``first_bytes`` (at least :data:`MAGIC_PROBE` of them) start with."""
    return next((m for m in MAGICS if first_bytes[: len(m)] == m), None)


def is_artifact(first_bytes: bytes) -> bool:
    """Whether a file starting with ``first_bytes`` (:data:`MAGIC_PROBE` bytes) is an artifact."""
    return artifact_magic(first_bytes) is not None


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class ArtifactHeader:
    """A parsed (not yet authenticated) artifact header.

    The header MAC is checked by :class:`ChunkCipher` once the data key is known; until
    then nothing in here may be trusted for more than locating bytes.
    """

    raw: bytes  # exact header JSON bytes as stored (MAC input, with the magic and length)
    chunk_size: int
    num_chunks: int
    data_size: int
    st_header_size: int
    wrapped_key: WrappedKey
    header_encrypted: bool
    tensors: dict[str, Any] | None
    preamble_size: int
    data_offset: int
    version: int = FORMAT_VERSION
    content: str = "safetensors"
    salt: bytes = field(default=b"", repr=False)
    nonce_prefix: bytes = field(default=b"", repr=False)
    commitment: bytes = field(default=b"", repr=False)
    mac: bytes = field(default=b"", repr=False)
    core_digest: bytes = field(default=b"", repr=False)
    path: str = ""
    magic: bytes = MAGIC  # which of MAGICS the file starts with (MAC input)
    # ``tensors`` as validated when the header was read (sorted TensorInfo, metadata), so
    # record 0's copy of the same table is compared, not validated a second time
    validated: tuple[tuple[TensorInfo, ...], dict[str, str] | None] | None = field(
        default=None, repr=False, compare=False
    )

    def __repr__(self) -> str:
        return (
            f"ArtifactHeader(path={self.path!r}, content={self.content!r}, "
            f"chunk_size={self.chunk_size}, num_chunks={self.num_chunks}, "
            f"data_size={self.data_size}, header_encrypted={self.header_encrypted}, "
            f"key={self.wrapped_key.uri!r} v{self.wrapped_key.key_version})"
        )

    @property
    def record_count(self) -> int:
        """Records in the file: record 0 plus ``num_chunks`` data records."""
        return self.num_chunks + 1

    @property
    def total_size(self) -> int:
        """The artifact's exact size in bytes."""
        return self.data_offset + self.data_size + TAG_SIZE * self.num_chunks

    @property
    def plaintext_size(self) -> int:
        """Size of the decrypted file (original safetensors header + data section)."""
        return self.st_header_size + self.data_size

    def plain_size(self, index: int) -> int:
        """Plaintext bytes in record ``index``."""
        self._check_index(index)
        if index == 0:
            return self.st_header_size
        start = (index - 1) * self.chunk_size
        return min(self.chunk_size, self.data_size - start)

    def plain_offset(self, index: int) -> int:
        """Offset of record ``index``'s plaintext in the decrypted file."""
        self._check_index(index)
        return 0 if index == 0 else self.st_header_size + (index - 1) * self.chunk_size

    def record_span(self, index: int) -> tuple[int, int]:
        """(file offset, length incl. tag) of record ``index`` (0 = safetensors header)."""
        self._check_index(index)
        if index == 0:
            return self.preamble_size, self.st_header_size + TAG_SIZE
        offset = self.data_offset + (index - 1) * (self.chunk_size + TAG_SIZE)
        return offset, self.plain_size(index) + TAG_SIZE

    def chunk_for_data_offset(self, offset: int) -> int:
        """Data record index holding data-section byte ``offset``."""
        if not 0 <= offset < max(self.data_size, 1):
            raise ValueError(f"data offset {offset} outside the data section")
        return offset // self.chunk_size + 1

    def _check_index(self, index: int) -> None:
        if not 0 <= index <= self.num_chunks:
            raise IndexError(f"record {index} outside 0..{self.num_chunks}")


def _fail(path: str, what: str) -> FormatError:
    return FormatError(f"{path}: invalid artifact header: {what}")


def _hex_field(doc: dict[str, Any], name: str, size: int, path: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        raise _fail(path, f"{name} must be {size} bytes as lowercase hex")
    return bytes.fromhex(value)


def _int_field(doc: dict[str, Any], name: str, lo: int, hi: int, path: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _fail(path, f"{name} must be an integer in [{lo}, {hi}]")
    return value


def _wrapped_key_from_doc(value: Any, path: str) -> WrappedKey:
    if not isinstance(value, dict) or set(value) != WRAPPED_KEY_KEYS:
        raise _fail(path, f"wrapped_key must have exactly {sorted(WRAPPED_KEY_KEYS)}")
    for name in ("provider", "uri", "context", "ciphertext"):
        v = value[name]
        if not isinstance(v, str) or not v or len(v) > _MAX_KEY_FIELD:
            raise _fail(path, f"wrapped_key.{name} must be a non-empty string")
    kv = value["key_version"]
    if kv is not None and (not isinstance(kv, int) or isinstance(kv, bool) or kv < 0):
        raise _fail(path, "wrapped_key.key_version must be a non-negative integer or null")
    return WrappedKey(
        provider=value["provider"],
        uri=value["uri"],
        key_version=kv,
        context=value["context"],
        ciphertext=value["ciphertext"],
    )


def _wrapped_key_to_doc(w: WrappedKey) -> dict[str, Any]:
    return {
        "provider": w.provider,
        "uri": w.uri,
        "key_version": w.key_version,
        "context": w.context,
        "ciphertext": w.ciphertext,
    }


def _core_digest(doc: dict[str, Any]) -> bytes:
    core = {k: v for k, v in doc.items() if k != "wrapped_key"}
    return hashlib.sha256(canonical_json(core)).digest()


def _canonical_and_core(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    """``canonical_json(doc)`` and the digest of its core (:func:`_core_digest`), each
    top-level value encoded once (the tensor table is most of a header): a canonical
    object is ``{`` + its sorted ``"key":value`` members joined by ``,`` + ``}``."""
    members = {k: canonical_json(k) + b":" + canonical_json(v) for k, v in doc.items()}
    keys = sorted(members)
    whole = b"{" + b",".join(members[k] for k in keys) + b"}"
    core = b"{" + b",".join(members[k] for k in keys if k != "wrapped_key") + b"}"
    return whole, hashlib.sha256(core).digest()


# Every ASCII digit becomes "0", every other byte "."; a run of _LONG_DIGITS in the
# result is a number (or part of a string) too long to take without the bounded reader.
_DIGIT_RUNS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_LONG_DIGITS = b"0" * 19  # |n| < 10**18 < 2**63: every shorter integer is within INT64


def _canonical_doc(raw: bytes) -> tuple[dict[str, Any], bytes] | None:
    """``(doc, core digest)`` when ``raw`` is the canonical encoding of a document the
    bounded reader would return unchanged; None when it may not be (then the caller
    goes the bounded reader's way, which reports what is wrong).

    The C parser with no per-integer or per-object hook, and each of the bounded
    reader's rules held another way: the size (checked); UTF-8 (strict decode);
    NaN/Infinity and floats (refused by hooks that run only when one occurs);
    integers (no run of 19 digits anywhere, so every integer is within INT64 and far
    under 40 digits; a run inside a string only sends the header the slow way);
    duplicate keys (the parser keeps the last, so the canonical re-encoding of a
    document read from bytes with a duplicate key is shorter than those bytes: not
    equal); depth (a header that passes :func:`_header_from_doc`'s checks is at most 4
    deep, under the limit of 6, and the caller takes this way only for one that
    passes them; deeper than 6 is measured before the C parser runs, as there).
    """
    if len(raw) > MAX_HEADER_LEN or _LONG_DIGITS in raw.translate(_DIGIT_RUNS):
        return None
    # Unverified bytes: measured before the recursive C parser runs (a raised recursion
    # limit lets deep nesting exhaust the C stack before any RecursionError).
    if boundedjson.depth(raw) > 6:
        return None
    try:
        doc = _FAST_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError, _NotTheTable):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        canonical, core_digest = _canonical_and_core(doc)
    except (UnicodeEncodeError, ValueError):
        return None
    return (doc, core_digest) if canonical == raw else None


def _header_from_raw(raw: bytes, mac: bytes, *, path: str, magic: bytes = MAGIC) -> ArtifactHeader:
    """Parse and check the artifact header ``raw``: the bounded reader's rules, the
    canonical form, then the fields (:func:`_header_from_doc`).

    A canonical header is read once by the C parser (:func:`_canonical_doc`); any
    refusal on that way is reported as before: the header is then read again the
    bounded reader's way, whose checks come first."""
    # A clear tensor table names at most MAX_TENSORS tensors: counted before parsing.
    tensor_count_bound(raw, path=f"{path} (artifact header)")
    fast = _canonical_doc(raw)
    if fast is not None:
        with contextlib.suppress(FormatError):
            return _header_from_doc(fast[0], fast[1], raw, mac, path=path, magic=magic)
    # Depth 6: header -> tensors -> name -> shape is 4; anything deeper is not ours.
    doc = boundedjson.loads(
        raw,
        what=f"{path}: invalid artifact header",
        max_bytes=MAX_HEADER_LEN,
        max_depth=6,
        int_range=boundedjson.INT64,
    )
    if not isinstance(doc, dict):
        raise _fail(path, "not a JSON object")
    core_digest = b""
    try:
        canonical, core_digest = _canonical_and_core(doc)
    except (UnicodeEncodeError, ValueError):
        canonical = b""
    if canonical != raw:  # (duplicate keys and NaN were refused by the bounded reader)
        try:
            canonical_json(doc)
        except (UnicodeEncodeError, ValueError) as exc:
            raise _fail(path, f"not encodable canonically ({str(exc)[:80]})") from None
        raise _fail(path, "JSON is not in canonical form (sorted keys, no whitespace)")
    return _header_from_doc(doc, core_digest, raw, mac, path=path, magic=magic)


def _header_from_doc(
    doc: dict[str, Any], core_digest: bytes, raw: bytes, mac: bytes, *, path: str, magic: bytes
) -> ArtifactHeader:
    """The fields of a parsed, canonical artifact header ``doc`` (read from ``raw``)."""
    version = doc.get("version")
    # type first: JSON true == 1 in Python, and the version steers how the rest is read
    if type(version) is not int or version != FORMAT_VERSION:
        raise FormatError(
            f"{path}: artifact format version {str(version)[:20]} is not supported "
            f"(this weightguard reads version {FORMAT_VERSION})",
            hint="upgrade weightguard",
        )
    if set(doc) != HEADER_KEYS:
        extra = sorted(set(doc) - HEADER_KEYS)
        missing = sorted(HEADER_KEYS - set(doc))
        raise _fail(path, f"unexpected fields {extra[:5]} / missing fields {missing[:5]}")
    if doc["alg"] != ALGORITHMS:
        raise FormatError(
            f"{path}: unsupported algorithms {str(doc['alg'])[:200]}; version 1 requires "
            f"{ALGORITHMS}",
            hint="upgrade weightguard",
        )
    content = doc["content"]
    if content not in CONTENT_KINDS:
        raise _fail(path, f"content must be one of {CONTENT_KINDS}")
    chunk_size = _int_field(doc, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, path)
    data_size = _int_field(doc, "data_size", 0, MAX_DATA_SIZE, path)
    num_chunks = _int_field(doc, "num_chunks", 1, MAX_CHUNKS, path)
    if num_chunks != max(1, -(-data_size // chunk_size)):
        raise _fail(path, "num_chunks does not match data_size and chunk_size")
    header_encrypted = doc["header_encrypted"]
    if not isinstance(header_encrypted, bool):
        raise _fail(path, "header_encrypted must be a boolean")
    tensors = doc["tensors"]
    validated: tuple[tuple[TensorInfo, ...], dict[str, str] | None] | None = None
    if content == "raw":
        st_header_size = _int_field(doc, "st_header_size", 0, 0, path)
        if header_encrypted or tensors is not None:
            raise _fail(path, "raw content has no safetensors header or tensor table")
    else:
        st_header_size = _int_field(doc, "st_header_size", 10, 8 + MAX_ST_HEADER_SIZE, path)
        if header_encrypted:
            if tensors is not None:
                raise _fail(path, "tensors must be null when header_encrypted is true")
        else:
            if not isinstance(tensors, dict):
                raise _fail(path, "tensors must be an object when header_encrypted is false")
            infos, meta, _ = validate_header_dict(
                tensors, data_size=data_size, path=f"{path} (header)"
            )
            validated = (infos, meta)
    preamble_size = len(magic) + LEN_SIZE + len(raw) + MAC_SIZE
    return ArtifactHeader(
        raw=raw,
        chunk_size=chunk_size,
        num_chunks=num_chunks,
        data_size=data_size,
        st_header_size=st_header_size,
        wrapped_key=_wrapped_key_from_doc(doc["wrapped_key"], path),
        header_encrypted=header_encrypted,
        tensors=tensors,
        preamble_size=preamble_size,
        data_offset=preamble_size + st_header_size + TAG_SIZE,
        version=version,
        content=content,
        salt=_hex_field(doc, "salt", SALT_SIZE, path),
        nonce_prefix=_hex_field(doc, "nonce_prefix", NONCE_PREFIX_SIZE, path),
        commitment=_hex_field(doc, "commitment", KEY_SIZE, path),
        mac=mac,
        core_digest=core_digest,
        path=path,
        magic=magic,
        validated=validated,
    )


class _NotTheTable(Exception):
    pass


def _refuse_value(text: str) -> Any:
    raise _NotTheTable(text[:24])


# The artifact header's fast reader (:func:`_canonical_doc`): floats and NaN refused.
_FAST_DECODER = json.JSONDecoder(parse_float=_refuse_value, parse_constant=_refuse_value)


def _unique_pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(items)
    if len(out) != len(items):
        raise _NotTheTable("duplicate key")
    return out


def _same_table(raw: bytes, table: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` (a decrypted safetensors header's JSON) parsed, when it is exactly the
    validated clear ``table``; None otherwise (the caller then parses it under the
    bounded reader's limits and reports what differs).

    The C parser, with no per-integer hook: a result equal to ``table`` has only the
    validated table's integers, so the bounded reader's integer limits hold; floats,
    NaN/Infinity and duplicate keys (which could compare equal: ``1.0 == 1``, last
    key wins) are refused here as there; strict UTF-8; too deep: RecursionError.
    """
    try:
        text = raw.decode("utf-8")
        parsed = _FAST_DECODER.decode(text)  # no per-object hook: keys counted below
    except (ValueError, RecursionError, _NotTheTable):
        return None
    if not isinstance(parsed, dict) or not same_table(parsed, table, raw):
        return None
    # A duplicate key (the parser keeps the last) leaves fewer members than keys in the
    # text.  The table's objects are the top level and each entry; outside strings a
    # ":" is only a member's separator, so the text's ":" bytes are at least its keys:
    # as many as the members means no duplicate; more (a ":" inside a name or value, or
    # a duplicate), the per-object hook says exactly.
    members = len(parsed) + sum(len(v) for v in parsed.values() if isinstance(v, dict))
    if raw.count(b":") == members:
        return parsed
    try:
        parsed = json.loads(
            text,
            object_pairs_hook=_unique_pairs,
            parse_float=_refuse_value,
            parse_constant=_refuse_value,
        )
    except (ValueError, RecursionError, _NotTheTable):
        return None
    return parsed if isinstance(parsed, dict) and same_table(parsed, table, raw) else None


def same_table(parsed: Any, table: dict[str, Any], raw: bytes) -> bool:
    """Whether ``parsed`` (from ``raw``) is the validated ``table``, value for value and
    type for type: Python's ``==`` holds ``true == 1`` (and ``false == 0``), so a
    decrypted header with a boolean where the table has 0 or 1 would pass and be written
    out by decrypt.  Only a header containing the literal can hold one; then the two are
    compared by their JSON encodings (C encoder; ``true`` is not ``1`` there)."""
    if parsed != table:
        return False
    if b"true" not in raw and b"false" not in raw:
        return True
    enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return enc.encode(parsed) == enc.encode(table)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        block = f.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def read_header(f: BinaryIO, *, path: str) -> ArtifactHeader:
    """Read and structurally validate the preamble of the artifact open as ``f`` (at 0).

    Bounded: reads at most 20 + 16 MiB + 32 bytes.  Both magics are read (0.1.0
    artifacts start with :data:`LEGACY_MAGIC`).  Raises :class:`FormatError` for a
    file that is not an artifact (naming a plain safetensors file as such),
    :class:`TruncatedError` when the file ends inside the preamble.
    """
    magic = _read_exact(f, len(LEGACY_MAGIC))
    if magic == MAGIC[: len(LEGACY_MAGIC)]:
        rest = _read_exact(f, len(MAGIC) - len(magic))
        if rest != MAGIC[len(magic) :]:
            if MAGIC[len(magic) :].startswith(rest):
                raise TruncatedError(f"{path}: file ends inside the artifact magic")
            raise FormatError(f"{path} is not a weightguard artifact (bad magic bytes)")
        magic = MAGIC
    elif magic != LEGACY_MAGIC:
        if len(magic) == 8:
            (n,) = struct.unpack("<Q", magic)
            if n <= MAX_ST_HEADER_SIZE and f.read(1) == b"{":
                raise FormatError(
                    f"{path} is a plain (unencrypted) safetensors file, not a weightguard artifact",
                    hint="encrypt it with `weightguard encrypt`, or load it without a key",
                )
        if magic and any(len(magic) < 8 and m.startswith(magic) for m in MAGICS):
            raise TruncatedError(f"{path}: file ends inside the artifact magic")
        raise FormatError(f"{path} is not a weightguard artifact (bad magic bytes)")
    head = _read_exact(f, LEN_SIZE)
    if len(head) != LEN_SIZE:
        raise TruncatedError(f"{path}: file ends inside the artifact header length")
    (length,) = struct.unpack("<I", head)
    if not 2 <= length <= MAX_HEADER_LEN:
        raise FormatError(
            f"{path}: artifact header length {length} is outside the allowed range "
            f"2..{MAX_HEADER_LEN}"
        )
    raw = _read_exact(f, length)
    if len(raw) != length:
        raise TruncatedError(
            f"{path}: artifact header length {length} points past the end of the file"
        )
    mac = _read_exact(f, MAC_SIZE)
    if len(mac) != MAC_SIZE:
        raise TruncatedError(f"{path}: file ends inside the artifact header MAC")
    return _header_from_raw(raw, mac, path=path, magic=magic)


# --------------------------------------------------------------------------- keys


def _hkdf(data_key: bytes | bytearray, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(
        bytes(data_key)
    )


def _commitment(data_key: bytes | bytearray, salt: bytes) -> bytes:
    return _hkdf(data_key, salt, INFO_COMMIT)


def _mac_input(raw: bytes, magic: bytes = MAGIC) -> bytes:
    return magic + struct.pack("<I", len(raw)) + raw


def _header_mac(mac_key: bytes | bytearray, raw: bytes, magic: bytes = MAGIC) -> bytes:
    return hmac.new(bytes(mac_key), _mac_input(raw, magic), hashlib.sha256).digest()


def _check_data_key(data_key: bytes | bytearray) -> None:
    if len(data_key) != KEY_SIZE:
        raise WrongKeyError(f"data key has {len(data_key)} bytes, expected {KEY_SIZE}")


class ChunkCipher:
    """AEAD for one artifact's records, built from its unwrapped data key.

    The constructor checks the key commitment (-> :class:`WrongKeyError`) and then the
    header MAC (-> :class:`IntegrityError` naming the header) before anything else.
    Thread-safe: records may be en/decrypted concurrently.
    """

    def __init__(self, header: ArtifactHeader, data_key: bytearray) -> None:
        _check_data_key(data_key)
        self.header = header
        commitment = _commitment(data_key, header.salt)
        if not hmac.compare_digest(commitment, header.commitment):
            raise WrongKeyError(
                f"{header.path}: the data key does not open this artifact (key commitment "
                "mismatch: wrong key, or the header's salt/commitment was altered)"
            )
        mac_key = bytearray(_hkdf(data_key, header.salt, INFO_MAC))
        try:
            if not hmac.compare_digest(_header_mac(mac_key, header.raw, header.magic), header.mac):
                raise IntegrityError(
                    "artifact header failed authentication (HMAC mismatch)", path=header.path
                )
        finally:
            wipe(mac_key)
        aead_key = bytearray(_hkdf(data_key, header.salt, INFO_AEAD))
        # Kept (wiped by wipe()) for decryption on the GPU: the kernel needs the round
        # keys and the tag-only check needs E_K(0), which AESGCM does not expose.
        self._aead_key: bytearray | None = aead_key
        self._aead: AESGCM | None = AESGCM(aead_key)
        self._prefix = header.nonce_prefix
        self._aad_prefix = AAD_LABEL + header.core_digest

    def __repr__(self) -> str:
        return f"ChunkCipher(path={self.header.path!r}, key=<hidden>)"

    def __del__(self) -> None:
        # A handle dropped without close(): its AEAD key is zeroed, not freed as is.
        if getattr(self, "_aead_key", None) is not None:
            self.wipe()

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            raise ValueError("ChunkCipher was wiped")
        return self._aead

    def _nonce_aad(self, index: int) -> tuple[bytes, bytes]:
        final = 1 if index == self.header.num_chunks else 0
        tail = struct.pack(">IB", index, final)
        return self._prefix + tail, self._aad_prefix + tail

    def encrypt_record_into(self, index: int, plaintext: memoryview, out: memoryview) -> int:
        """Encrypt record ``index`` into ``out`` (>= len + 16 bytes); returns bytes written."""
        n = self.header.plain_size(index)
        if len(plaintext) != n:
            raise ValueError(f"record {index} needs {n} plaintext bytes, got {len(plaintext)}")
        nonce, aad = self._nonce_aad(index)
        return int(self._cipher().encrypt_into(nonce, plaintext, aad, out[: n + TAG_SIZE]))

    def decrypt_record_into(self, index: int, ciphertext: memoryview, out: memoryview) -> None:
        """Authenticate and decrypt record ``index`` (ciphertext || tag) into ``out``.

        ``out`` must hold at least the record's plaintext size
        (``header.plain_size(index)``); only that prefix is written.  On failure the
        written prefix is zeroed and :class:`IntegrityError` names the record.
        """
        n = self.header.plain_size(index)
        self._check_record_size(index, ciphertext, n)
        if len(out) < n:
            raise ValueError(f"output buffer of {len(out)} bytes < record size {n}")
        nonce, aad = self._nonce_aad(index)
        target = out[:n]
        try:
            self._cipher().decrypt_into(nonce, ciphertext, aad, target)
        except InvalidTag:
            wipe(target)
            raise self._tag_failed(index) from None

    def decrypt_record_pieces(
        self, index: int, ciphertext: memoryview, outs: Sequence[memoryview]
    ) -> None:
        """:meth:`decrypt_record_into`, the plaintext written straight into ``outs``:
        consecutive pieces of the record, in order (their lengths add up to its size).

        AES-GCM's streaming decryptor with the same key, nonce, AAD and tag (the last 16
        bytes) as the one-shot path, so both accept exactly the same records; each piece
        is written once.  The tag is checked after the last piece: on failure every piece
        is zeroed and :class:`IntegrityError` names the record, as above.
        """
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        n = self.header.plain_size(index)
        self._check_record_size(index, ciphertext, n)
        if sum(len(o) for o in outs) != n:
            raise ValueError(f"pieces of record {index} do not add up to its {n} bytes")
        if self._aead_key is None:
            raise ValueError("ChunkCipher was wiped")
        nonce, aad = self._nonce_aad(index)
        tag = bytes(ciphertext[n:])
        dec = Cipher(algorithms.AES(self._aead_key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        at = 0
        try:
            for o in outs:
                if len(o):
                    dec.update_into(ciphertext[at : at + len(o)], o)
                    at += len(o)
            dec.finalize()
        except BaseException as exc:
            for o in outs:
                wipe(o)
            if isinstance(exc, InvalidTag):
                raise self._tag_failed(index) from None
            raise

    def _check_record_size(self, index: int, ciphertext: memoryview, n: int) -> None:
        if len(ciphertext) != n + TAG_SIZE:
            raise IntegrityError(
                f"record {index} has {len(ciphertext)} bytes, expected {n + TAG_SIZE} "
                "(truncated or resized)",
                path=self.header.path,
                chunk=index,
            )

    def _tag_failed(self, index: int) -> IntegrityError:
        what = "safetensors header record" if index == 0 else "data record"
        return IntegrityError(
            f"{what} {index} failed authentication (modified, reordered, duplicated, "
            "or taken from another artifact)",
            path=self.header.path,
            chunk=index,
        )

    def decrypt_st_header(self, ciphertext: bytes) -> bytes:
        """Decrypt record 0 and check it against the header; returns the original
        safetensors header segment (8-byte length + JSON)."""
        return self.open_st_header(ciphertext)[0]

    def open_st_header(
        self, ciphertext: bytes
    ) -> tuple[bytes, tuple[TensorInfo, ...], dict[str, str] | None]:
        """:meth:`decrypt_st_header` and its parse, done once: (segment, tensors sorted by
        offset, metadata); tensors and metadata are empty for non-safetensors content."""
        h = self.header
        tensors: tuple[TensorInfo, ...] = ()
        metadata: dict[str, str] | None = None
        out = bytearray(h.st_header_size)
        self.decrypt_record_into(0, memoryview(ciphertext), memoryview(out))
        plain = bytes(out)
        if h.content == "safetensors":
            (n,) = struct.unpack("<Q", plain[:8])
            if n != h.st_header_size - 8:
                raise IntegrityError(
                    "decrypted safetensors header length does not match the artifact header",
                    path=h.path,
                    chunk=0,
                )
            from weightguard._internal.format.safetensors import parse_header_json

            parsed: Any = None
            same = False  # parsed and compared with the clear table (by _same_table)
            tensor_count_bound(plain[8:], path=h.path)  # before any JSON parse of it
            if h.tensors is not None and h.validated is not None:
                # the clear table was validated when read: compare, do not validate again
                parsed = _same_table(plain[8:], h.tensors)
                same = parsed is not None
                if parsed is None:
                    with contextlib.suppress(FormatError):
                        parsed = boundedjson.loads(
                            plain[8:],
                            what=f"{h.path}: safetensors header",
                            max_bytes=len(plain),
                            max_depth=4,
                        )
                tensors, metadata = h.validated
            if parsed is None:  # encrypted table (or not JSON: its FormatError)
                parsed, tensors, metadata, _ = parse_header_json(
                    plain[8:], data_size=h.data_size, path=h.path
                )
            if h.tensors is not None and not same and not same_table(parsed, h.tensors, plain[8:]):
                raise IntegrityError(
                    "decrypted safetensors header differs from the tensor table in the "
                    "artifact header",
                    path=h.path,
                    chunk=0,
                )
        return plain, tensors, metadata

    def gcm_record(self, index: int) -> tuple[bytearray, bytes, bytes]:
        """(AEAD key, 12-byte nonce, AAD) of record ``index``, for decryption on a device.

        The key is this cipher's own buffer: use it, never keep it (wipe() zeroes it).
        """
        if self._aead_key is None:
            raise ValueError("ChunkCipher was wiped")
        nonce, aad = self._nonce_aad(index)
        return self._aead_key, nonce, aad

    def wipe(self) -> None:
        """Drop the AEAD key; the cipher cannot be used afterwards."""
        self._aead = None
        if self._aead_key is not None:
            wipe(self._aead_key)
            self._aead_key = None


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class FileRandomness:
    """Per-file random values; injectable only to produce the spec's test vectors."""

    salt: bytes
    nonce_prefix: bytes

    @classmethod
    def fresh(cls) -> FileRandomness:
        return cls(os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE))

    def __repr__(self) -> str:
        return "FileRandomness(<hidden>)"


def _serialize(
    doc: dict[str, Any], data_key: bytearray, *, path: str, magic: bytes = MAGIC
) -> tuple[ArtifactHeader, bytes]:
    raw = canonical_json(doc)
    if len(raw) > MAX_HEADER_LEN:
        raise FormatError(
            f"{path}: the artifact header would be {len(raw)} bytes, above the "
            f"{MAX_HEADER_LEN}-byte limit",
            hint="use --encrypt-header to keep the tensor table out of the header",
        )
    salt = bytes.fromhex(doc["salt"])
    mac_key = bytearray(_hkdf(data_key, salt, INFO_MAC))
    try:
        mac = _header_mac(mac_key, raw, magic)
    finally:
        wipe(mac_key)
    header = _header_from_raw(raw, mac, path=path, magic=magic)
    return header, _mac_input(raw, magic) + mac


def new_header(
    *,
    data_key: bytearray,
    wrapped_key: WrappedKey,
    content: str,
    st_header: dict[str, Any] | None,
    st_header_size: int,
    data_size: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    header_encrypted: bool = False,
    randomness: FileRandomness | None = None,
    path: str = "",
    magic: bytes = MAGIC,
) -> tuple[ArtifactHeader, bytes]:
    """Build a new artifact header; returns it and the preamble bytes to write.

    ``st_header``: the parsed safetensors header (stored in the clear unless
    ``header_encrypted``).  ``randomness`` and ``magic`` (:data:`LEGACY_MAGIC`): only
    for test vectors.
    """
    if magic not in MAGICS:
        raise ValueError("unknown artifact magic")
    _check_data_key(data_key)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(
            f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes",
            hint="choose a chunk size between 4 KiB and 64 MiB",
        )
    rnd = randomness or FileRandomness.fresh()
    if content == "raw":
        header_encrypted = False
    tensors = None if (header_encrypted or content == "raw") else st_header
    doc: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "alg": dict(ALGORITHMS),
        "content": content,
        "chunk_size": chunk_size,
        "data_size": data_size,
        "st_header_size": st_header_size,
        "num_chunks": max(1, -(-data_size // chunk_size)),
        "salt": rnd.salt.hex(),
        "nonce_prefix": rnd.nonce_prefix.hex(),
        "commitment": _commitment(data_key, rnd.salt).hex(),
        "wrapped_key": _wrapped_key_to_doc(wrapped_key),
        "header_encrypted": header_encrypted,
        "tensors": tensors,
    }
    if doc["num_chunks"] > MAX_CHUNKS:
        raise FormatError(f"{path}: too many chunks; use a larger chunk size")
    return _serialize(doc, data_key, path=path, magic=magic)


def rewrapped_header(
    header: ArtifactHeader, data_key: bytearray, wrapped_key: WrappedKey
) -> tuple[ArtifactHeader, bytes]:
    """The same header with a new wrapped key (and MAC); records stay valid unchanged.

    The new preamble always starts with :data:`MAGIC`: rewrapping a 0.1.0 artifact also
    moves it to the magic that plain safetensors readers reject cheaply.
    """
    ChunkCipher(header, data_key).wipe()  # commitment + MAC of the old header
    doc = json.loads(header.raw.decode("utf-8"))
    doc["wrapped_key"] = _wrapped_key_to_doc(wrapped_key)
    new, preamble = _serialize(doc, data_key, path=header.path)
    if new.core_digest != header.core_digest:  # pragma: no cover - invariant
        raise AssertionError("rewrap changed authenticated record context")
    return new, preamble


# --------------------------------------------------------------------------- streaming


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


Progress = Callable[[int], None]


def _run_parallel(
    indices: Sequence[int],
    workers: int,
    buf_size: int,
    job: Callable[[int, memoryview, memoryview], int],
    progress: Progress | None,
) -> None:
    """Run ``job(index, buf_a, buf_b)`` over ``indices`` on ``workers`` threads.

    Each thread owns two reused buffers of ``buf_size`` bytes, zeroed when it ends.
    Indices are handed out in increasing order; on failure the error of the smallest
    failing index is raised (deterministic: every smaller index was already started).
    """
    it = iter(indices)
    lock = threading.Lock()
    stop = threading.Event()
    errors: dict[int, BaseException] = {}

    def worker() -> None:
        a, b = bytearray(buf_size), bytearray(buf_size)
        va, vb = memoryview(a), memoryview(b)
        try:
            while not stop.is_set():
                with lock:
                    index = next(it, None)
                if index is None:
                    return
                try:
                    done = job(index, va, vb)
                except BaseException as exc:
                    with lock:
                        errors[index] = exc
                    stop.set()
                    return
                if progress is not None:
                    with lock:
                        progress(done)
        finally:
            va.release()
            vb.release()
            wipe(a)
            wipe(b)

    workers = max(1, min(workers, len(indices)))
    if workers == 1:
        worker()
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="weightguard-crypt") as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                stop.set()
                raise
    if errors:
        raise errors[min(errors)]


def _reader(src: int | memoryview) -> Callable[[memoryview, int], int]:
    """``read(view, offset) -> n``: positional reads from a file descriptor or a buffer."""
    if isinstance(src, int):
        return lambda view, offset: _pread_full(src, view, offset)
    data = src.cast("B") if src.format != "B" or src.ndim != 1 else src

    def read(view: memoryview, offset: int) -> int:
        n = max(0, min(len(view), len(data) - offset))
        view[:n] = data[offset : offset + n]
        return n

    return read


def encrypt_stream(
    src_fd: int | memoryview,
    dst_fd: int,
    header: ArtifactHeader,
    preamble: bytes,
    cipher: ChunkCipher,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    src_path: str = "",
) -> None:
    """Write the whole artifact for the plaintext file ``src_fd`` (a file descriptor, or
    an in-memory buffer holding the whole plaintext file) into ``dst_fd``.

    Positional reads and writes only (``preadv``/``pwrite``), so records are encrypted in
    parallel with bounded, reused, wiped buffers.
    """
    read = _reader(src_fd)
    _pwrite_full(dst_fd, memoryview(preamble), 0)
    st = bytearray(header.st_header_size)
    try:
        if read(memoryview(st), 0) != len(st):
            raise SourceError(f"{src_path}: source file shrank while encrypting")
        out = bytearray(len(st) + TAG_SIZE)
        cipher.encrypt_record_into(0, memoryview(st), memoryview(out))
        _pwrite_full(dst_fd, memoryview(out), header.preamble_size)
    finally:
        wipe(st)

    def job(index: int, plain: memoryview, out: memoryview) -> int:
        n = header.plain_size(index)
        if read(plain[:n], header.plain_offset(index)) != n:
            raise SourceError(
                f"{src_path}: source file shrank while encrypting (chunk {index})",
                hint="do not modify the input while it is being encrypted",
            )
        written = cipher.encrypt_record_into(index, plain[:n], out)
        offset, _length = header.record_span(index)
        _pwrite_full(dst_fd, out[:written], offset)
        return n

    _run_parallel(
        range(1, header.num_chunks + 1),
        workers,
        header.chunk_size + TAG_SIZE,
        job,
        progress,
    )


def decrypt_stream(
    src_fd: int,
    dst_fd: int,
    cipher: ChunkCipher,
    *,
    src_size: int,
    workers: int = 1,
    progress: Progress | None = None,
) -> None:
    """Authenticate and decrypt every record of the artifact ``src_fd`` into ``dst_fd``,
    reproducing the original file byte for byte.  Raises :class:`IntegrityError` naming
    the first bad, missing or extra record."""
    header = cipher.header
    offset, length = header.record_span(0)
    rec0 = bytearray(length)
    got = _pread_full(src_fd, memoryview(rec0), offset)
    if got != length:
        raise IntegrityError(
            "safetensors header record 0 is incomplete (file truncated)",
            path=header.path,
            chunk=0,
        )
    plain0 = cipher.decrypt_st_header(bytes(rec0))
    _pwrite_full(dst_fd, memoryview(plain0), 0)

    def job(index: int, enc: memoryview, plain: memoryview) -> int:
        off, ln = header.record_span(index)
        got = _pread_full(src_fd, enc[:ln], off)
        if got != ln:
            raise IntegrityError(
                f"data record {index} is incomplete: the file ends {ln - got} bytes early "
                "(truncated, or records were removed)",
                path=header.path,
                chunk=index,
            )
        n = ln - TAG_SIZE
        cipher.decrypt_record_into(index, enc[:ln], plain)
        _pwrite_full(dst_fd, plain[:n], header.plain_offset(index))
        return n

    _run_parallel(
        range(1, header.num_chunks + 1),
        workers,
        header.chunk_size + TAG_SIZE,
        job,
        progress,
    )
    if src_size != header.total_size:
        raise IntegrityError(
            f"{src_size - header.total_size} unexpected bytes after the final record "
            "(records were duplicated or appended)",
            path=header.path,
            chunk=header.num_chunks,
        )
