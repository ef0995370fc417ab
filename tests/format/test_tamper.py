"""Tampering: every header field, every record, tag, order, truncation, key commitment."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.format import build_safetensors, key_uri, raw_header, replace_header
from weightguard import crypt
from weightguard._internal.format import layout as fmt
from weightguard._internal.keys.providers import provider_for
from weightguard.errors import (
    FormatError,
    IntegrityError,
    KeyProviderError,
    WeightguardError,
    WrongKeyError,
)

CHUNK = 4096
N_CHUNKS = 4


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)


@pytest.fixture
def art(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(artifact path, key file, artifact bytes): 4 data chunks, last one partial."""
    key = crypt.create_key_file(tmp_path / "dev.key")
    size = N_CHUNKS * CHUNK - 50
    data = os.urandom(size)
    st = build_safetensors(
        {"a": ("U8", [2000], data[:2000]), "b": ("U8", [2000], data[2000:4000]),
         "w": ("U8", [size - 4000], data[4000:])},
        {"format": "pt"},
    )  # fmt: skip
    (tmp_path / "m.safetensors").write_bytes(st)
    enc = tmp_path / "m.enc"
    crypt.encrypt_file(tmp_path / "m.safetensors", enc, key_uri(key), chunk_size=CHUNK)
    return enc, key, enc.read_bytes()


def _decrypt(tmp_path: Path, data: bytes, key: Path) -> None:
    p = tmp_path / "t.enc"
    p.write_bytes(data)
    out = tmp_path / "out.safetensors"
    try:
        crypt.decrypt_file(p, out, data_key=key_uri(key))
    finally:
        assert not out.exists(), "no output may be left after a failure"
        assert not [x for x in tmp_path.iterdir() if x.name.endswith(".wgtmp")]


def _header(path: Path) -> fmt.ArtifactHeader:
    with open(path, "rb") as f:
        return fmt.read_header(f, path=str(path))


def _edit(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    _, raw, _ = raw_header(data)
    doc = json.loads(raw)
    change(doc)
    return replace_header(data, fmt.canonical_json(doc))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        d = doc
        for p in parents:
            d = d[p]
        d[leaf] = value

    return change


def _flip_hex(path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        v = doc[path]
        doc[path] = ("1" if v[0] != "1" else "2") + v[1:]

    return change


def _hide(doc: dict[str, Any]) -> None:
    doc["header_encrypted"] = True
    doc["tensors"] = None


def _swap_offsets(doc: dict[str, Any]) -> None:
    t = doc["tensors"]
    t["a"]["data_offsets"], t["b"]["data_offsets"] = t["b"]["data_offsets"], t["a"]["data_offsets"]


def _rename(doc: dict[str, Any]) -> None:
    doc["tensors"]["z"] = doc["tensors"].pop("a")


# (edit, expected error, message fragment)
HEADER_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception], str]] = {
    "dtype": (_set("tensors.a.dtype", "I8"), IntegrityError, "header failed authentication"),
    "tensor name": (_rename, IntegrityError, "header failed authentication"),
    "offsets": (_swap_offsets, IntegrityError, "header failed authentication"),
    "metadata": (_set("tensors.__metadata__", {"format": "np"}), IntegrityError, "header"),
    "header_encrypted": (_hide, IntegrityError, "header failed authentication"),
    "nonce_prefix": (_flip_hex("nonce_prefix"), IntegrityError, "header failed"),
    "chunk_size": (
        lambda d: d.update(chunk_size=8192, num_chunks=2),
        IntegrityError,
        "header failed",
    ),
    "key uri": (_set("wrapped_key.uri", "file:///elsewhere"), IntegrityError, "header failed"),
    "key_version": (_set("wrapped_key.key_version", 7), IntegrityError, "header failed"),
    "salt": (_flip_hex("salt"), WrongKeyError, "commitment"),
    "commitment": (_flip_hex("commitment"), WrongKeyError, "commitment"),
    "context": (_set("wrapped_key.context", "other-model"), WrongKeyError, "cannot unwrap"),
    "wrapped ciphertext": (
        lambda d: d["wrapped_key"].update(
            ciphertext=d["wrapped_key"]["ciphertext"][:-6] + "AAAA=="
        ),
        WrongKeyError,
        "cannot unwrap",
    ),
    "provider": (_set("wrapped_key.provider", "aws-kms"), WrongKeyError, "not by a key file"),
    "algorithm": (_set("alg.aead", "AES-128-GCM"), FormatError, "unsupported algorithms"),
    "version": (_set("version", 2), FormatError, "version 2 is not supported"),
    "extra field": (_set("note", "x"), FormatError, "unexpected fields"),
    "data_size": (_set("data_size", N_CHUNKS * CHUNK), FormatError, "not covered"),
}


@pytest.mark.parametrize("field", sorted(HEADER_EDITS))
def test_any_header_field_change_fails(
    tmp_path: Path, art: tuple[Path, Path, bytes], field: str
) -> None:
    _, key, data = art
    change, exc_type, fragment = HEADER_EDITS[field]
    with pytest.raises(exc_type, match=fragment):
        _decrypt(tmp_path, _edit(data, change), key)


def test_header_mac_and_length_bits(tmp_path: Path, art: tuple[Path, Path, bytes]) -> None:
    _, key, data = art
    n, raw, mac_at = raw_header(data)
    flipped = bytearray(data)
    flipped[mac_at + 5] ^= 0x01
    with pytest.raises(IntegrityError, match="header failed authentication") as ei:
        _decrypt(tmp_path, bytes(flipped), key)
    assert ei.value.chunk is None
    # non-canonical but equivalent JSON is refused too
    spaced = replace_header(data, raw.replace(b'"version":1', b'"version": 1'))
    with pytest.raises(FormatError, match="canonical"):
        _decrypt(tmp_path, spaced, key)
    # every single bit of the header JSON region: always a typed failure
    pre = len(fmt.MAGIC) + 4
    for pos in range(pre, pre + n, max(1, n // 97)):
        for bit in (0x01, 0x20, 0x80):
            b = bytearray(data)
            b[pos] ^= bit
            with pytest.raises(WeightguardError):
                _decrypt(tmp_path, bytes(b), key)


@pytest.mark.parametrize("length", [0, 1, 2**24 + 1, 2**32 - 1, 10_000_000])
def test_header_length_field_bounds(
    tmp_path: Path, art: tuple[Path, Path, bytes], length: int
) -> None:
    _, key, data = art
    m = len(fmt.MAGIC)
    bad = data[:m] + length.to_bytes(4, "little") + data[m + 4 :]
    with pytest.raises(FormatError, match=r"header length|outside the allowed range|past the end"):
        _decrypt(tmp_path, bad, key)


def test_every_record_and_tag_is_authenticated(
    tmp_path: Path, art: tuple[Path, Path, bytes]
) -> None:
    enc, key, data = art
    h = _header(enc)
    for i in range(h.num_chunks + 1):
        off, ln = h.record_span(i)
        for pos in (off, off + ln // 2, off + ln - 1):  # first byte, middle, tag
            b = bytearray(data)
            b[pos] ^= 0x04
            with pytest.raises(IntegrityError, match=f"record {i} failed") as ei:
                _decrypt(tmp_path, bytes(b), key)
            assert ei.value.chunk == i and f"chunk {i}" in str(ei.value)


def _records(data: bytes, h: fmt.ArtifactHeader) -> list[bytes]:
    return [data[o : o + n] for o, n in (h.record_span(i) for i in range(h.num_chunks + 1))]


def test_reorder_duplicate_drop_truncate_name_the_chunk(
    tmp_path: Path, art: tuple[Path, Path, bytes]
) -> None:
    enc, key, data = art
    h = _header(enc)
    pre = data[: h.preamble_size]
    r = _records(data, h)  # r[0] header record, r[1..4] data
    cases = {
        "reorder": (pre + r[0] + r[2] + r[1] + r[3] + r[4], 1, "failed authentication"),
        "duplicate": (pre + r[0] + r[1] + r[2] + r[2] + r[3] + r[4], 3, "failed authentication"),
        "drop": (pre + r[0] + r[1] + r[3] + r[4], 2, "failed authentication"),
        "drop last": (pre + r[0] + r[1] + r[2] + r[3], 4, "incomplete"),
        "truncate mid": (data[: len(data) - 7], 4, "incomplete"),
        "truncate to header": (pre, 0, "incomplete"),
        "append": (data + r[4], 4, "unexpected bytes after the final record"),
        "swap header record": (pre + r[1] + r[0] + r[2] + r[3] + r[4], 0, "record 0|incomplete"),
    }
    for name, (bad, chunk, fragment) in cases.items():
        with pytest.raises(IntegrityError, match=fragment) as ei:
            _decrypt(tmp_path, bad, key)
        assert ei.value.chunk == chunk, name


def test_final_flag_detects_truncation_even_with_a_forged_header(
    tmp_path: Path, art: tuple[Path, Path, bytes]
) -> None:
    """A key holder who rewrites the header to claim fewer chunks still cannot make the
    truncated stream authenticate: record 3 was sealed as non-final."""
    enc, key, data = art
    h = _header(enc)
    dk = provider_for(key_uri(key), quiet=True).unwrap(h.wrapped_key)
    doc = json.loads(h.raw)
    doc["tensors"]["w"]["shape"] = [3 * CHUNK - 4000]
    doc["tensors"]["w"]["data_offsets"] = [4000, 3 * CHUNK]
    doc.update(data_size=3 * CHUNK, num_chunks=3)
    forged, preamble = fmt._serialize(doc, dk, path="forged")
    r = _records(data, h)
    cipher = fmt.ChunkCipher(forged, dk)
    off, ln = forged.record_span(3)
    body = preamble + r[0] + r[1] + r[2] + r[3][:ln]
    with pytest.raises(IntegrityError, match="record 3 failed") as ei:
        cipher.decrypt_record_into(
            3, memoryview(body)[off : off + ln], memoryview(bytearray(CHUNK))
        )
    assert ei.value.chunk == 3


def test_record_from_another_artifact_with_same_key_fails(
    tmp_path: Path, art: tuple[Path, Path, bytes]
) -> None:
    enc, key, data = art
    h = _header(enc)
    # same data key, fresh salt/nonce: a "sibling" artifact
    dk = provider_for(key_uri(key), quiet=True).unwrap(h.wrapped_key)
    doc = json.loads(h.raw)
    sib, _ = fmt.new_header(
        data_key=dk, wrapped_key=h.wrapped_key, content="safetensors", st_header=doc["tensors"],
        st_header_size=h.st_header_size, data_size=h.data_size, chunk_size=CHUNK,
    )  # fmt: skip
    sib_cipher = fmt.ChunkCipher(sib, dk)
    off, ln = h.record_span(1)
    with pytest.raises(IntegrityError, match="record 1 failed"):
        sib_cipher.decrypt_record_into(
            1, memoryview(data)[off : off + ln], memoryview(bytearray(CHUNK))
        )


def test_key_commitment(tmp_path: Path, art: tuple[Path, Path, bytes]) -> None:
    enc, key, data = art
    h = _header(enc)
    for _ in range(20):
        other = bytearray(os.urandom(32))
        with pytest.raises(WrongKeyError, match="key commitment mismatch"):
            fmt.ChunkCipher(h, other)
    # commitment is checked before the MAC: a wrong key on a tampered header says wrong key
    tampered = _header_from_bytes(tmp_path, _edit(data, _set("tensors.a.dtype", "I8")))
    with pytest.raises(WrongKeyError):
        fmt.ChunkCipher(tampered, bytearray(os.urandom(32)))
    # the commitment is a keyed value: different per artifact even with the same key
    dk = provider_for(key_uri(key), quiet=True).unwrap(h.wrapped_key)
    s2, _ = fmt.new_header(
        data_key=dk, wrapped_key=h.wrapped_key, content="raw", st_header=None,
        st_header_size=0, data_size=10,
    )  # fmt: skip
    assert s2.commitment != h.commitment


def _header_from_bytes(tmp_path: Path, data: bytes) -> fmt.ArtifactHeader:
    p = tmp_path / "h.enc"
    p.write_bytes(data)
    return _header(p)


def test_wrong_key_file(tmp_path: Path, art: tuple[Path, Path, bytes]) -> None:
    enc, _, _ = art
    other = crypt.create_key_file(tmp_path / "other.key")
    with pytest.raises(WrongKeyError, match="is not the key this artifact was wrapped with"):
        crypt.decrypt_file(enc, tmp_path / "o", data_key=key_uri(other))
    assert not (tmp_path / "o").exists()
    with pytest.raises(KeyProviderError, match="does not exist"):
        crypt.decrypt_file(enc, tmp_path / "o", data_key=key_uri(tmp_path / "missing.key"))


def test_decrypt_record_into_rejects_wrong_sizes(art: tuple[Path, Path, bytes]) -> None:
    enc, key, data = art
    h = _header(enc)
    dk = provider_for(key_uri(key), quiet=True).unwrap(h.wrapped_key)
    c = fmt.ChunkCipher(h, dk)
    off, ln = h.record_span(2)
    with pytest.raises(IntegrityError, match="record 2 has") as ei:
        c.decrypt_record_into(2, memoryview(data)[off : off + ln - 1], memoryview(bytearray(CHUNK)))
    assert ei.value.chunk == 2
    # a failed decryption leaves no unauthenticated plaintext in the caller's buffer
    bad = bytearray(data[off : off + ln])
    bad[3] ^= 1
    out = bytearray(b"\xaa" * CHUNK)
    with pytest.raises(IntegrityError):
        c.decrypt_record_into(2, memoryview(bad), memoryview(out))
    assert out[: ln - 16] == bytes(ln - 16)
