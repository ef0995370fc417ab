"""One hypothesis fuzz target per parser of untrusted bytes.

Each target feeds random bytes and mutations of a valid input (bit flips, cuts,
insertions, splices of hostile JSON fragments) and asserts the parser returns or
raises its one ``weightguard.errors`` type -- never anything else.  CI runs a short
budget; ``make fuzz`` sets ``WEIGHTGUARD_FUZZ_EXAMPLES`` for a longer one.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightguard._internal.audit.checkpoint import _parse_anchor
from weightguard._internal.audit.record import parse_record
from weightguard._internal.audit.verify import verify_lines
from weightguard._internal.format import layout as fmt
from weightguard._internal.format.safetensors import parse_header_json
from weightguard._internal.foundation import boundedjson
from weightguard._internal.signing import oms
from weightguard._internal.watermark.io import read_st_header
from weightguard.errors import (
    AuditError,
    FormatError,
    VerificationError,
    WeightguardError,
)

EXAMPLES = int(os.environ.get("WEIGHTGUARD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("WEIGHTGUARD_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAGMENTS = [
    b"[" * 3000,
    b"{" * 64,
    b"Infinity",
    b"-Infinity",
    b"NaN",
    b"1e400",
    b"1e200",
    b"9" * 60,
    b'"\\ud800"',
    b'\\"',
    b"\xff\xfe",
    b"\x00",
    b'"a":1,"a":2',
    b"true",
    b"-1",
]


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with a few flips, cuts, insertions of hostile fragments."""
    edit = st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]),
        st.integers(0, max(0, len(seed) - 1)),
        st.integers(0, 255),
        st.sampled_from(FRAGMENTS),
    )

    def apply(edits: list[tuple[str, int, int, bytes]]) -> bytes:
        b = bytearray(seed)
        for kind, pos, val, frag in edits:
            pos = min(pos, max(0, len(b) - 1))
            if kind == "flip" and b:
                b[pos] ^= 1 << (val % 8)
            elif kind == "cut":
                del b[pos:]
            elif kind == "insert":
                b[pos:pos] = frag
            elif b:
                del b[pos : pos + 1 + val % 16]
        return bytes(b)

    return st.lists(edit, min_size=1, max_size=4).map(apply)


def inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seed), st.binary(max_size=512))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


# ----------------------------------------------------------------------------- the reader


@FUZZ
@given(json_values)
def test_fuzz_reader_agrees_with_json_within_limits(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert boundedjson.depth(raw) == _depth(value)

    def ints_ok(v: Any) -> bool:
        if isinstance(v, bool) or v is None or isinstance(v, str | float):
            return True
        if isinstance(v, int):
            return boundedjson.INT64[0] <= v <= boundedjson.INT64[1]
        items = v.values() if isinstance(v, dict) else v
        return all(ints_ok(x) for x in items)

    try:
        got = boundedjson.loads(raw, what="x", max_bytes=1 << 20, max_depth=64, floats=True)
    except FormatError as exc:
        assert not ints_ok(value), str(exc)
        return
    assert ints_ok(value)
    assert got == json.loads(raw)


@FUZZ
@given(inputs(b'{"a": [1, 2.5, {"b": "c\\"]"}], "d": null, "e": -3}'))
def test_fuzz_reader(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        boundedjson.loads(data, what="x", max_bytes=1 << 16, max_depth=8, floats=True)


# ----------------------------------------------------------------------------- headers

ST_HEADER = json.dumps(
    {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "U8", "shape": [8], "data_offsets": [24, 32]},
    }
).encode()


@FUZZ
@given(inputs(ST_HEADER))
def test_fuzz_safetensors_header(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_header_json(data, data_size=32, path="m")


@FUZZ
@given(inputs(struct.pack("<Q", len(ST_HEADER)) + ST_HEADER + bytes(32)))
def test_fuzz_watermark_safetensors_header(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        read_st_header(io.BytesIO(data), Path("m"))


def _artifact_preamble() -> bytes:
    from weightguard._internal.keys.providers import WrappedKey

    wk = WrappedKey("file", "file:///k", None, "ctx", "QUFB")
    dk = bytearray(32)
    _, pre = fmt.new_header(
        data_key=dk,
        wrapped_key=wk,
        content="safetensors",
        st_header=json.loads(ST_HEADER),
        st_header_size=8 + len(ST_HEADER),
        data_size=32,
        chunk_size=4096,
        header_encrypted=False,
        path="m",
    )
    return pre


@FUZZ
@given(st.data())
def test_fuzz_artifact_header(data: st.DataObject) -> None:
    pre = _artifact_preamble()
    m = len(fmt.MAGIC)
    (n,) = struct.unpack("<I", pre[m : m + 4])
    raw = data.draw(inputs(pre[m + 4 : m + 4 + n]))
    # half the cases keep the length field consistent, so the JSON parser is reached
    whole = data.draw(
        st.sampled_from(
            [pre[:m] + struct.pack("<I", len(raw)) + raw + pre[m + 4 + n :], data.draw(inputs(pre))]
        )
    )
    with contextlib.suppress(FormatError):
        fmt.read_header(io.BytesIO(whole), path="m")


# ----------------------------------------------------------------------------- bundles


def _bundle() -> bytes:
    stmt = {
        "_type": oms.STATEMENT_TYPE,
        "subject": [{"name": "m", "digest": {"sha256": "00" * 32}}],
        "predicateType": oms.PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "ignore_paths": []},
            "resources": [{"name": "a", "algorithm": "sha256", "digest": "11" * 32}],
        },
    }
    return json.dumps(
        {
            "mediaType": oms.BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": "ab" * 16}, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": base64.b64encode(json.dumps(stmt).encode()).decode(),
                "payloadType": oms.PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(b"x" * 70).decode(), "keyid": ""}],
            },
        }
    ).encode()


@FUZZ
@given(inputs(_bundle()))
def test_fuzz_bundle(data: bytes) -> None:
    try:
        b = oms.parse_bundle(data, path="m.sig")
    except FormatError:
        return
    with contextlib.suppress(FormatError):
        oms.parse_statement(b.payload, path="m.sig")


@FUZZ
@given(inputs(base64.b64decode(json.loads(_bundle())["dsseEnvelope"]["payload"])))
def test_fuzz_statement(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        oms.parse_statement(data, path="m.sig")


# Older and other shapes model_signing wrote (tests/vectors/oms): the seeds are real
# signatures, so the mutations start from every branch the parser has for them.
OMS_VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "oms"
OLD_BUNDLES = [
    (OMS_VECTORS / p).read_bytes()
    for p in (
        "ms-0.3.1/key-shards-sha256/model.sig",  # publicKey rawBytes + keyDetails, keyid null
        "ms-1.0.1/cert-shards-sha256/model.sig",  # no tlogEntries, '-sharded-' names
        "ms-1.1.1/key-shards-blake2/model.sig",  # 128-hex digests, float shard_size
        "historical/v0.2.0-certificate/model.sig",  # Digests/v0.1 predicate
    )
]


@FUZZ
@given(st.sampled_from(OLD_BUNDLES).flatmap(inputs))
def test_fuzz_older_bundle_shapes(data: bytes) -> None:
    try:
        b = oms.parse_bundle(data, path="m.sig")
    except FormatError:
        return
    with contextlib.suppress(FormatError):
        oms.parse_statement(b.payload, path="m.sig")


@FUZZ
@given(
    st.sampled_from([json.loads(b)["dsseEnvelope"]["payload"] for b in OLD_BUNDLES])
    .map(base64.b64decode)
    .flatmap(inputs)
)
def test_fuzz_older_statements(data: bytes) -> None:
    """Shard manifests (names, tiling, sizes) and the v0.2 subject list."""
    with contextlib.suppress(FormatError):
        oms.parse_statement(data, path="m.sig")


@FUZZ
@given(
    st.one_of(
        st.text(alphabet="ab:/.0123456789-+_ \x00", max_size=40),
        st.sampled_from(["a:0:1", "a:0:01", "a:+0:1", "a:1:1", "a:b:0:1", ".:0:5", ":0:1"]),
    )
)
def test_fuzz_shard_name(name: str) -> None:
    try:
        path, start, end = oms.parse_shard_name(name, "r")
    except FormatError:
        return
    assert f"{path}:{start}:{end}" == name and 0 <= start < end


# ----------------------------------------------------------------------------- index

INDEX = json.dumps(
    {"metadata": {"total_size": 56}, "weight_map": {"a": "m1.safetensors", "b": "m2.safetensors"}}
).encode()


@FUZZ
@given(inputs(INDEX))
def test_fuzz_index(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        boundedjson.loads_index(data, what="index")


# ----------------------------------------------------------------------------- audit

RECORD = (
    b'{"event":"load.ok","log":"4f0c","object":{"uri":"s3://m"},"outcome":"ok",'
    b'"prev":"sha256:' + b"0" * 64 + b'","seq":0,"time":"2026-01-01T00:00:00.000000Z","v":1}'
)


@FUZZ
@given(inputs(RECORD))
def test_fuzz_audit_record(data: bytes) -> None:
    with contextlib.suppress(AuditError):
        parse_record(data, what="line 1")


@FUZZ
@given(st.lists(inputs(RECORD), min_size=1, max_size=6))
def test_fuzz_audit_verify(lines: list[bytes]) -> None:
    src = [("log", i + 1, ln.replace(b"\n", b" ") + b"\n") for i, ln in enumerate(lines)]
    try:
        res = verify_lines(src)
    except WeightguardError:
        return
    assert res.ok in (True, False)


ANCHOR = b'{"checkpoint": {"log": "4f0c", "size": 10, "head": "sha256:00"}, "sig": "AAAA"}'


@FUZZ
@given(inputs(ANCHOR))
def test_fuzz_anchor(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        _parse_anchor(data, "s3://b/anchor")


_NAMES = st.text(
    alphabet=st.sampled_from(['"', "\\", "d", "a", "t", "_", "o", "f", "s", "e", ":", "{"]),
    max_size=40,
) | st.sampled_from(["data_offsets", '"data_offsets"', 'x"data_offsets"y', "\\"])


@FUZZ
@given(
    names=st.lists(_NAMES, max_size=8, unique=True),
    meta=st.dictionaries(_NAMES, _NAMES, max_size=3),
)
def test_fuzz_tensor_count_is_an_upper_bound(names: list[str], meta: dict[str, str]) -> None:
    """The pre-parse count of '"data_offsets"' is never below the tensors the header
    really names, whatever the names and metadata hold (quotes, backslashes, the key
    itself): the bound can refuse early but never let a larger header through."""
    from weightguard._internal.format import safetensors as stf

    doc: dict[str, Any] = {
        n: {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
        for i, n in enumerate(n for n in names if n != "__metadata__")
    }
    if meta:
        doc["__metadata__"] = meta
    raw = json.dumps(doc, ensure_ascii=False).encode()
    _, tensors, _, _ = parse_header_json(raw, data_size=None, path="fuzz")
    assert raw.count(b'"data_offsets"') >= len(tensors)
    if len(tensors) > 1:
        old = stf.MAX_TENSORS
        try:
            stf.MAX_TENSORS = len(tensors) - 1
            with contextlib.suppress(FormatError):
                parse_header_json(raw, data_size=None, path="fuzz")
                raise AssertionError("a header over the bound was parsed")
        finally:
            stf.MAX_TENSORS = old
