"""CLI: ``weightguard load`` and ``weightguard fetch`` (streaming, tmpfs, 0600)."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from weightguard_cli.main import main

from tests.support.load import (
    MODEL_LAYOUT,
    encrypt,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
    zeros,
)
from weightguard._internal.devices.observe import observing
from weightguard._internal.format import layout as fmt
from weightguard.errors import IntegrityError, UnsafeOptionRequired
from weightguard.transfer import fetch_model, is_memory_fs

CHUNK = 4096


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real CLI entry point (its error handling included) in-process."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    # the development key-file warning is expected here (file:// keys in tests)
    err = "".join(
        line for line in out.err.splitlines(keepends=True) if "development key file" not in line
    )
    return code, out.out, err


@pytest.fixture
def model(tmp_path: Path, file_key: str, sign_keys, monkeypatch) -> tuple[Path, dict[str, Path]]:  # type: ignore[no-untyped-def]
    """A signed, encrypted two-shard model directory and the original plaintext shards.

    The caller allows the test key file through WEIGHTGUARD_ALLOW_KEY (a header's
    file:// reference alone is refused)."""
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)
    d = tmp_path / "release"
    d.mkdir()
    plain: dict[str, Path] = {}
    weight_map: dict[str, str] = {}
    for i, layout in enumerate((MODEL_LAYOUT, [("x.w", "F32", (40, 41)), ("x.b", "F16", (7,))])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        src = tmp_path / f"p{i + 1}.safetensors"
        expected = write_st(src, layout, seed=i)
        encrypt(src, d / name, file_key, chunk_size=CHUNK)
        plain[name] = src
        weight_map |= {k: name for k in expected}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text('{"arch": "test"}')
    sign(d, d / "model.sig", sign_keys)
    return d, plain


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not is_memory_fs(shm):
        pytest.skip("no tmpfs at /dev/shm")
    out = shm / ("wg-test-" + secrets.token_hex(6))
    try:
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


# --------------------------------------------------------------------------- load


def test_load_check_ok_and_tampered(model, sign_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    log = tmp_path / "audit.jsonl"
    base = ["load", str(d), "--trust-key", str(sign_keys.public), "--audit-log", str(log)]
    code, out, err = _run(base, capsys)
    assert code == 0, err
    assert out.startswith("ok: 10 tensors, ") and out.strip().endswith(f" s from {d}")
    assert [e["event"] for e in _events(log)][-1] == "load.ok"

    code, out, _ = _run([*base, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["tensors"] == 10 and doc["bytes"] > 0

    # one flipped ciphertext byte in data record 2 of the second shard
    shard = d / "model-00002-of-00002.safetensors"
    with open(shard, "rb") as f:
        hdr = fmt.read_header(f, path=str(shard))
    off, _ = hdr.record_span(2)
    flip(shard, off + 5)
    code, out, err = _run(base, capsys)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("error: ")
    assert "model-00002-of-00002.safetensors" in lines[0] and "chunk 2" in lines[0]
    denied = _events(log)[-1]
    assert denied["event"] == "tamper.detected" and denied["outcome"] == "denied"


def test_load_check_wrong_signer_and_missing_trust(model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.support.load import make_sign_keys

    d, _ = model
    other = make_sign_keys(tmp_path, "other")
    log = tmp_path / "audit.jsonl"
    code, out, err = _run(
        ["load", str(d), "--trust-key", str(other.public), "--audit-log", str(log)], capsys
    )
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert _events(log)[-1]["outcome"] == "denied"
    code, _, err = _run(["load", str(d), "--audit-log", str(log)], capsys)
    assert code == 2 and "give a trust anchor" in err


# --------------------------------------------------------------------------- fetch


def test_fetch_refuses_disk_without_allow_disk(model, sign_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    dest = tmp_path / "out"
    if is_memory_fs(tmp_path):
        pytest.skip("tmp_path is itself on tmpfs")
    code, out, err = _run(
        ["fetch", str(d), "--output", str(dest), "--trust-key", str(sign_keys.public),
         "--audit-log", str(tmp_path / "a.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "not on tmpfs" in err and "--allow-disk" in err
    assert not dest.exists()  # nothing created, nothing decrypted
    refused = _events(tmp_path / "a.jsonl")[-1]
    assert refused["event"] == "fetch" and refused["outcome"] == "denied"
    assert str(refused["reason"]).startswith("UnsafeOptionRequired: ")


def test_fetch_to_tmpfs_streams_0600_byte_equal(
    model, sign_keys, shm_dir, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    d, plain = model
    log = tmp_path / "a.jsonl"
    code, out, err = _run(
        ["fetch", str(d), "--output", str(shm_dir), "--trust-key", str(sign_keys.public),
         "--audit-log", str(log), "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["to"] == str(shm_dir)
    assert sorted(doc["files"]) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert doc["bytes"] == sum(p.stat().st_size for p in plain.values())
    for name, src in plain.items():
        f = shm_dir / name
        assert (f.stat().st_mode & 0o777) == 0o600
        assert f.read_bytes() == src.read_bytes()
    assert ((shm_dir / "config.json").stat().st_mode & 0o777) == 0o600
    assert (shm_dir / "config.json").read_text() == '{"arch": "test"}'
    assert not [p for p in shm_dir.iterdir() if p.name.endswith(".wgtmp")]
    assert "load.ok" in [e["event"] for e in _events(log)]


def test_fetch_allow_disk(model, sign_keys, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    d, plain = model
    dest = tmp_path / "out"
    code, out, err = _run(
        ["fetch", str(d), "-o", str(dest), "--allow-disk", "--trust-key", str(sign_keys.public),
         "--audit-log", str(tmp_path / "a.jsonl")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("ok: 4 files")
    for name, src in plain.items():
        assert (dest / name).read_bytes() == src.read_bytes()
        assert ((dest / name).stat().st_mode & 0o777) == 0o600


def test_fetch_tampered_second_shard_leaves_nothing(
    model, sign_keys, shm_dir, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    shard = d / "model-00002-of-00002.safetensors"
    flip(shard, shard.stat().st_size - 3)  # the last record's tag
    log = tmp_path / "a.jsonl"
    code, out, err = _run(
        ["fetch", str(d), "--output", str(shm_dir), "--trust-key", str(sign_keys.public),
         "--audit-log", str(log)],
        capsys,
    )  # fmt: skip
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "model-00002-of-00002.safetensors" in err
    assert not shm_dir.exists()  # shard 1 was written, then removed with the directory
    ev = _events(log)
    assert ev[-1]["event"] == "tamper.detected"


def test_fetch_keeps_existing_dir_and_removes_only_its_files(model, sign_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    audit, sink = memory_audit()

    def interrupt(name: str, chunk: int) -> None:
        if name.endswith("model-00002-of-00002.safetensors") and chunk == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), observing(before_record=interrupt):
        fetch_model(
            d,
            dest,
            policy=sign_keys.policy(),
            allow_disk=True,
            replace=True,  # a non-empty destination is refused otherwise
            audit=audit,
            workers=2,
        )
    # replace removes the old contents only once the new model is complete
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    assert last(sink, "load.denied")["reason"] == "cancelled (KeyboardInterrupt)"


def test_fetch_memory_is_bounded_by_chunks(model, sign_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Streaming: the only plaintext buffers are one chunk per worker, zero afterwards."""
    d, plain = model
    seen: list[memoryview] = []
    audit, _ = memory_audit()
    with observing(on_copier=lambda c: seen.extend(c.staging_views())):
        res = fetch_model(
            d, tmp_path / "out", policy=sign_keys.policy(), allow_disk=True, audit=audit, workers=2
        )
    assert res.bytes == sum(p.stat().st_size for p in plain.values())
    assert seen and all(len(v) <= CHUNK for v in seen)  # not the shard size
    assert all(zeros(v) for v in seen)


def test_fetch_unsafe_policy_refused_without_flag(model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    audit, _ = memory_audit()
    with pytest.raises(UnsafeOptionRequired):
        fetch_model(d, tmp_path / "o", policy=None, allow_disk=True, audit=audit)
    assert not (tmp_path / "o").exists()


def test_fetch_library_error_is_integrity(model, sign_keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d, _ = model
    shard = d / "model-00001-of-00002.safetensors"
    with open(shard, "rb") as f:
        hdr = fmt.read_header(f, path=str(shard))
    off, _ = hdr.record_span(1)
    flip(shard, off)
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError) as e:
        fetch_model(d, tmp_path / "o", policy=sign_keys.policy(), allow_disk=True, audit=audit)
    assert e.value.chunk == 1
    assert not (tmp_path / "o").exists()
    assert last(sink, "tamper.detected")["object"]["chunk"] == 1
