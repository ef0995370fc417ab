"""Record 0 (the original safetensors header) is decrypted, checked and parsed once, and
a clear tensor table validated when the artifact header was read is not validated again
(issue 17, item 3)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.format import build_safetensors, key_uri, raw_header, replace_header
from weightguard import crypt
from weightguard._internal.format import layout as fmt
from weightguard._internal.format import safetensors as st
from weightguard._internal.keys.providers import provider_for
from weightguard.errors import FormatError


@pytest.mark.parametrize("encrypt_header", [False, True])
def test_open_st_header_parses_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypt_header: bool
) -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)
    key = crypt.create_key_file(tmp_path / "dev.key")
    data = os.urandom(5000)
    plain = build_safetensors(
        {"a": ("U8", [1000], data[:1000]), "b": ("BF16", [2000], data[1000:])}, {"format": "pt"}
    )
    (tmp_path / "m.safetensors").write_bytes(plain)
    enc = tmp_path / "m.enc"
    crypt.encrypt_file(
        tmp_path / "m.safetensors", enc, key_uri(key), chunk_size=4096,
        encrypt_header=encrypt_header,
    )  # fmt: skip
    blob = enc.read_bytes()
    with open(enc, "rb") as f:
        header = fmt.read_header(f, path=str(enc))
    assert (header.validated is None) is encrypt_header
    (dk,) = provider_for(key_uri(key)).unwrap_many([header.wrapped_key])
    cipher = fmt.ChunkCipher(header, dk)
    off, length = header.record_span(0)

    calls: list[bytes] = []
    real = st.parse_header_json

    def counting(raw: bytes, **kw: object) -> object:
        calls.append(raw)
        return real(raw, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(st, "parse_header_json", counting)
    segment, tensors, metadata = cipher.open_st_header(blob[off : off + length])

    n = int.from_bytes(plain[:8], "little")
    assert segment == plain[: 8 + n]
    expected = real(plain[8 : 8 + n], data_size=len(plain) - 8 - n, path="x")
    assert tensors == expected[1]
    assert metadata == {"format": "pt"}
    # a clear table is reused as validated on read; an encrypted one is parsed once here
    assert len(calls) == (1 if encrypt_header else 0)
    if not encrypt_header:
        assert header.validated is not None and tensors is header.validated[0]
    assert cipher.decrypt_st_header(blob[off : off + length]) == segment


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw[:-1] + b',"version":1}', "duplicate JSON key"),
        (lambda raw: raw.replace(b'"data_size":5000', b'"data_size":NaN'), "NaN is not JSON"),
        (lambda raw: raw.replace(b'"content":', b'"content" :'), "not in canonical form"),
        (lambda raw: raw[:-1], "malformed JSON"),
    ],
)
def test_fast_header_parse_still_names_what_is_wrong(
    tmp_path: Path, edit: Callable[[bytes], bytes], message: str
) -> None:
    warnings.simplefilter("ignore", crypt.PlaintextWriteWarning)
    key = crypt.create_key_file(tmp_path / "dev.key")
    plain = build_safetensors({"a": ("U8", [5000], os.urandom(5000))}, {})
    (tmp_path / "m.safetensors").write_bytes(plain)
    enc = tmp_path / "m.enc"
    crypt.encrypt_file(tmp_path / "m.safetensors", enc, key_uri(key), chunk_size=4096)
    data = enc.read_bytes()
    _, raw, _ = raw_header(data)
    bad = edit(raw)
    assert bad != raw
    (tmp_path / "bad.enc").write_bytes(replace_header(data, bad))
    with open(tmp_path / "bad.enc", "rb") as f, pytest.raises(FormatError, match=message):
        fmt.read_header(f, path="bad.enc")
