"""Issue 12 item 8: every parser is bounded, every refusal typed and audited.

Regressions for the cases the issue names (deeply nested audit line, ``"seq":
Infinity``, tensor shape ``[1e200, 1e200]``, nested ``index.json``, ``decrypt`` of an
artifact whose header does not parse) plus the rules of the one bounded JSON reader.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from weightguard import crypt, loader
from weightguard._internal.audit.verify import verify_log
from weightguard._internal.format import layout as fmt
from weightguard._internal.format.safetensors import parse_header_json
from weightguard._internal.foundation import boundedjson
from weightguard.audit import AuditLog, MemorySink
from weightguard.errors import AuditError, FormatError
from weightguard.policy import UnsafeNoVerification

ROOT = Path(__file__).resolve().parents[2]
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_LINE = b"[" * 5_000 + b"]" * 5_000  # deep, yet inside the 16 KiB record limit


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "cli")])
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "weightguard_cli", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=120,
    )


# ----------------------------------------------------------------------------- the reader


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DEEP, "nested 100000 levels deep, over the limit of 16"),
        (b'{"seq": Infinity}', "Infinity is not JSON"),
        (b'{"seq": -Infinity}', "-Infinity is not JSON"),
        (b'{"seq": NaN}', "NaN is not JSON"),
        (b"[1e200, 1e200]", "number 1e200 is not an integer"),
        (b"[" + b"9" * 41 + b"]", "integer with 41 digits is out of range"),
        (b"[9223372036854775808]", "integer 9223372036854775808 is out of range"),
        (b'{"a": 1, "a": 2}', "duplicate JSON key 'a'"),
        (b"\xff{}", "not UTF-8 text"),
        (b'{"a": ', "malformed JSON"),
        (b" " * 101, "JSON is 101 bytes, over the 100-byte limit"),
    ],
)
def test_reader_refuses(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=r"^what: ") as ei:
        boundedjson.loads(data, what="what", max_bytes=100 if len(data) == 101 else 1 << 20)
    assert message in str(ei.value)


def test_reader_error_type_and_floats() -> None:
    with pytest.raises(AuditError, match="x: number 1e400 is out of range"):
        boundedjson.loads(b"[1e400]", what="x", max_bytes=99, floats=True, error=AuditError)
    assert boundedjson.loads(
        b'[1.5, "[[[[", {"b": "\\\\\\"]]"}]', what="x", max_bytes=99, max_depth=2, floats=True
    ) == [1.5, "[[[[", {"b": '\\"]]'}]


def test_depth_ignores_brackets_in_strings() -> None:
    assert boundedjson.depth(b'{"a": "[[[[{{{{", "b": [["\\"[["]]}') == 3
    assert boundedjson.depth(b"{}") == 1
    assert boundedjson.depth(b"3") == 0


# ----------------------------------------------------------------------------- audit log


def _log(tmp_path: Path, n: int = 3) -> Path:
    p = tmp_path / "audit.jsonl"
    with AuditLog(str(p)) as log:
        for i in range(n):
            log.emit("load.start", object={"uri": f"file:///m{i}"})
    return p


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (b'{"log":"x","seq":0,"prev":"p","d":' + DEEP_LINE + b"}", "nested"),
        (b'{"log":"x","seq":Infinity,"prev":"p"}', "Infinity"),
    ],
    ids=["deep", "infinity"],
)
def test_hostile_audit_line_is_a_typed_report_and_writers_stay_typed(
    tmp_path: Path, line: bytes, where: str
) -> None:
    log = _log(tmp_path)
    good = log.read_bytes()
    lines = good.splitlines(keepends=True)
    # in the middle: audit verify reports it, writers (which read only the tail) go on
    log.write_bytes(b"".join([*lines[:2], line + b"\n", *lines[2:]]))
    res = verify_log(log)
    assert not res.ok and res.problem is not None
    assert (res.problem.kind, res.problem.line) == ("malformed", 3)
    r = _cli("audit", "verify", str(log))
    assert r.returncode != 0
    assert "BROKEN (malformed)" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "RecursionError" not in r.stderr
    with AuditLog(str(log)) as w:
        w.emit("load.start", object={"uri": "file:///after"})
    assert log.read_bytes().endswith(b"\n") and b"file:///after" in log.read_bytes()
    # as the last line: a writer refuses to extend the log, typed, and names it
    log.write_bytes(good + line + b"\n")
    with pytest.raises(AuditError, match="the last line is not an audit record"):
        AuditLog(str(log)).emit("load.start", object={"uri": "file:///m"})
    # ... and so does a load that audits to it: refused, typed, not RecursionError
    enc, _ = _artifact(tmp_path)
    with pytest.raises(AuditError, match="the last line is not an audit record"):
        loader.load_file(enc, "cpu", policy=UnsafeNoVerification(), audit=AuditLog(str(log)))


# ----------------------------------------------------------------------------- headers


def _st(header: dict[str, object], data: bytes) -> bytes:
    hj = json.dumps(header).encode()
    return struct.pack("<Q", len(hj)) + hj + data


def test_huge_float_shape_is_a_format_error_first() -> None:
    raw = b'{"t": {"dtype": "F32", "shape": [1e200, 1e200], "data_offsets": [0, 4]}}'
    with pytest.raises(FormatError, match=r"safetensors header: number 1e200 is not an integer"):
        parse_header_json(raw, data_size=4, path="m.safetensors")
    # the same JSON one level too deep, or an integer too large for any file
    with pytest.raises(FormatError, match="nested 5 levels deep"):
        parse_header_json(b'{"t": {"shape": [[[1]]]}}', data_size=4, path="m")
    with pytest.raises(FormatError, match="out of range"):
        parse_header_json(b'{"t": {"shape": [' + b"9" * 30 + b"]}}", data_size=4, path="m")


def _artifact(tmp_path: Path) -> tuple[Path, str]:
    from weightguard._internal.keys.providers import create_key_file

    kek = tmp_path / "kek.hex"
    if not kek.exists():
        create_key_file(kek)
    src = tmp_path / "plain.safetensors"
    src.write_bytes(
        _st({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16))
    )
    enc = tmp_path / "m" / "model.safetensors"
    enc.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_file(src, enc, f"file://{kek}", chunk_size=4096)
    return enc, f"file://{kek}"


def _reserialise_shape(enc: Path, shape: bytes) -> None:
    data = enc.read_bytes()
    m = len(fmt.MAGIC)
    (n,) = struct.unpack("<I", data[m : m + 4])
    raw = data[m + 4 : m + 4 + n].replace(b'"shape":[2,2]', b'"shape":' + shape)
    assert raw != data[m + 4 : m + 4 + n]
    enc.write_bytes(data[:m] + struct.pack("<I", len(raw)) + raw + data[m + 4 + n :])


@pytest.mark.filterwarnings("ignore")
def test_decrypt_audits_a_header_that_does_not_parse(tmp_path: Path) -> None:
    enc, _ = _artifact(tmp_path)
    _reserialise_shape(enc, b"[1e200,1e200]")
    sink = MemorySink()
    with pytest.raises(
        FormatError, match="invalid artifact header: number 1e200 is not an integer"
    ):
        crypt.decrypt_file(enc, tmp_path / "out.safetensors", audit=AuditLog(sink))
    (rec,) = [r for r in sink.records if r.get("event") == "decrypt"]
    assert rec["outcome"] == "error" and "1e200" in rec["reason"]
    assert rec["object"]["uri"] == str(enc)
    assert not (tmp_path / "out.safetensors").exists()
    # the directory form audits it too
    sink = MemorySink()
    with pytest.raises(FormatError, match="1e200"):
        crypt.decrypt_model(enc.parent, tmp_path / "out", audit=AuditLog(sink))
    assert [r["outcome"] for r in sink.records if r.get("event") == "decrypt"] == ["error"]
    assert not (tmp_path / "out").exists()
    # and the CLI, through the log it is configured with
    log = tmp_path / "cli-audit.jsonl"
    r = _cli(
        "decrypt",
        str(enc),
        "-o",
        str(tmp_path / "cli.out"),
        env={"WEIGHTGUARD_AUDIT_LOG": str(log)},
    )
    assert r.returncode != 0 and "1e200" in r.stderr and "Traceback" not in r.stderr
    assert [json.loads(ln)["outcome"] for ln in log.read_text().splitlines()] == ["error"]


@pytest.mark.filterwarnings("ignore")
def test_rewrap_audits_a_header_that_does_not_parse(tmp_path: Path) -> None:
    enc, _ = _artifact(tmp_path)
    _reserialise_shape(enc, b"[2,[[[[[[2]]]]]]]")
    sink = MemorySink()
    with pytest.raises(FormatError, match="invalid artifact header: JSON nested"):
        crypt.rewrap(enc, audit=AuditLog(sink))
    assert [r["outcome"] for r in sink.records if r.get("event") == "rewrap"] == ["error"]


# ----------------------------------------------------------------------------- index.json


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("index", "message"),
    [
        (b'{"weight_map": ' + DEEP + b"}", "nested 100001 levels deep"),
        (b'{"weight_map": {}, "metadata": {"total_size": Infinity}}', "Infinity is not JSON"),
        (b'{"weight_map": {"t": "model.safetensors"}, "weight_map": {}}', "duplicate JSON key"),
    ],
    ids=["nested", "infinity", "duplicate"],
)
def test_hostile_index_is_refused_typed(tmp_path: Path, index: bytes, message: str) -> None:
    enc, _ = _artifact(tmp_path)
    (enc.parent / "model.safetensors.index.json").write_bytes(index)
    sink = MemorySink()
    from weightguard.errors import WeightguardError
    from weightguard.policy import PublicKey

    pub = tmp_path / "release.pub"
    pub.write_bytes(_pub_pem())
    # A signed load verifies the index's bytes before parsing them (nothing unverified
    # steers a load): here there is no signature, so it is refused, typed and audited.
    with pytest.raises(WeightguardError):
        loader.load_file(enc.parent, "cpu", policy=PublicKey.from_file(pub), audit=AuditLog(sink))
    assert [r["outcome"] for r in sink.records if r.get("event") == "load.denied"] == ["denied"]
    # unverified loads parse it the bounded way
    with pytest.raises(FormatError, match=message):
        loader.load_file(enc.parent, "cpu", policy=UnsafeNoVerification(), audit=AuditLog(sink))
    # and so does encrypt of a plain model directory
    plain = tmp_path / "plain-model"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes((tmp_path / "plain.safetensors").read_bytes())
    (plain / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(FormatError, match=message):
        crypt.encrypt_model(plain, tmp_path / "enc2", f"file://{tmp_path / 'kek.hex'}")


def _pub_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_bundle_fields_outside_the_schema_are_refused() -> None:
    """Found by the adversarial suite (seed 7): a renamed field was skipped over."""
    import base64

    from weightguard._internal.signing.oms import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, parse_bundle

    doc: dict[str, object] = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "ab" * 32}, "tlogEntsies": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(b"{}").decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(b"s").decode(), "keyid": ""}],
        },
    }
    with pytest.raises(
        FormatError, match=r"m\.sig: verificationMaterial: unknown field 'tlogEntsies'"
    ):
        parse_bundle(json.dumps(doc).encode(), path="m.sig")
    doc["verificationMaterial"] = {"publicKey": {"hint": "ab" * 32}, "tlogEntries": []}
    doc["extra"] = 1
    with pytest.raises(FormatError, match=r"m\.sig: unknown field 'extra'"):
        parse_bundle(json.dumps(doc).encode(), path="m.sig")
    del doc["extra"]
    assert parse_bundle(json.dumps(doc).encode(), path="m.sig").key_hint == "ab" * 32


# ------------------------------------------------------------------------ huge headers
# Issue 22: a 68 MB safetensors header of 1M tensors (under the 100 MB cap) took 104 s
# and +750 MB to parse, an unsafe load of it 90 s.  A header names at most
# MAX_TENSORS tensors, counted on the raw bytes before any JSON parse (docs/FORMAT.md).


def _huge_header(n: int) -> bytes:
    parts = [f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n)]
    return ("{" + ",".join(parts) + "}").encode()


@pytest.fixture(scope="module")
def huge_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    n = 1_000_000
    head = _huge_header(n)
    assert 60_000_000 < len(head) < 100_000_000  # the issue's ~68 MB, under the cap
    p = tmp_path_factory.mktemp("huge") / "huge.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(b"\0" * n)
    return p


def test_a_million_tensor_header_is_refused_fast(huge_file: Path) -> None:
    import time

    from weightguard._internal.format.safetensors import MAX_TENSORS, read_safetensors_header

    t0 = time.monotonic()
    with open(huge_file, "rb") as f, pytest.raises(FormatError) as exc:
        read_safetensors_header(f, path=str(huge_file))
    took = time.monotonic() - t0
    assert f"names 1000000 tensors, over the limit of {MAX_TENSORS}" in exc.value.message
    assert took < 2.0, f"refusal took {took:.2f} s"


def test_a_million_tensor_header_unsafe_load_and_encrypt_refuse_fast(
    huge_file: Path, tmp_path: Path
) -> None:
    import time

    sink = MemorySink()
    t0 = time.monotonic()
    with pytest.raises(FormatError, match="names 1000000 tensors, over the limit"):
        loader.load_file(huge_file, policy=UnsafeNoVerification(), audit=AuditLog(sink))
    assert time.monotonic() - t0 < 4.0
    assert any(r.get("event") == "load.denied" for r in sink.records)
    key = crypt.create_key_file(tmp_path / "k.hex")
    t0 = time.monotonic()
    with pytest.raises(FormatError, match="names 1000000 tensors, over the limit"):
        crypt.encrypt_file(huge_file, tmp_path / "e", f"file://{key}")
    assert time.monotonic() - t0 < 4.0
    assert not (tmp_path / "e").exists()


def test_the_watermark_reader_has_the_same_bound(huge_file: Path) -> None:
    import time

    from weightguard._internal.watermark.io import read_st_header

    t0 = time.monotonic()
    with open(huge_file, "rb") as f, pytest.raises(FormatError, match="over the limit"):
        read_st_header(f, huge_file)
    assert time.monotonic() - t0 < 2.0


def test_the_bound_itself_parses_in_time() -> None:
    """A header of exactly MAX_TENSORS tensors is accepted, and parsed in linear time."""
    import time

    from weightguard._internal.format.safetensors import MAX_TENSORS

    head = _huge_header(MAX_TENSORS)
    t0 = time.monotonic()
    _, tensors, _, end = parse_header_json(head, data_size=MAX_TENSORS, path="bound")
    took = time.monotonic() - t0
    assert len(tensors) == MAX_TENSORS and end == MAX_TENSORS
    assert took < 10.0, f"{MAX_TENSORS} tensors took {took:.1f} s"  # ~1.5 s here (2 cores)
    one_more = b',"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
    with pytest.raises(FormatError, match=f"names {MAX_TENSORS + 1} tensors"):
        parse_header_json(head[:-1] + one_more, data_size=None, path="over")


def test_artifact_header_tensor_table_is_bounded_before_parsing() -> None:
    """The artifact header's clear tensor table (up to 16 MiB) is counted the same way,
    before its JSON is parsed or its MAC checked."""
    import io

    from weightguard._internal.format.safetensors import MAX_TENSORS

    table = _huge_header(MAX_TENSORS + 1)
    raw = b'{"tensors":' + table + b"}"
    assert len(raw) <= fmt.MAX_HEADER_LEN
    blob = fmt.MAGIC + struct.pack("<I", len(raw)) + raw + b"\0" * fmt.MAC_SIZE
    with pytest.raises(FormatError, match=r"\(artifact header\): safetensors header names"):
        fmt.read_header(io.BytesIO(blob), path="a.safetensors")


@pytest.mark.parametrize("encrypt_header", [True, False])
def test_decrypted_header_is_bounded_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypt_header: bool
) -> None:
    """An artifact of 12 tensors read by a weightguard whose bound is 8: the encrypted
    header is counted after decryption (the clear table already in the artifact
    header), before any JSON parse; the load is refused and audited."""
    from weightguard._internal.format import safetensors as st

    head = _huge_header(12)
    src = tmp_path / "m.safetensors"
    src.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 12)
    key = crypt.create_key_file(tmp_path / "k.hex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_file(
            src, tmp_path / "e.safetensors", f"file://{key}", encrypt_header=encrypt_header
        )
    monkeypatch.setattr(st, "MAX_TENSORS", 8)
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", f"file://{key}")
    sink = MemorySink()
    where = "e.safetensors: " if encrypt_header else r"\(artifact header\): "
    with pytest.raises(FormatError, match=where + "safetensors header names 12 tensors"):
        loader.load_file(
            tmp_path / "e.safetensors", policy=UnsafeNoVerification(), audit=AuditLog(sink)
        )
    assert any(r.get("event") == "load.denied" for r in sink.records)
