"""Models signed by OpenSSF model_signing alone (whole-file or shard digests, no
weightguard chunk digests) load through every entry point, verified in the one read that
fills the tensors; any changed byte is one IntegrityError naming the file, audited, with
nothing returned and the memory written so far zeroed.

Two sources of signatures: real model_signing bundles (its Python API, ``files``
serialization), and manifests built here for what the bundle parser may not read yet
(``shards``, blake2b): the loader sees the same ``FileDigests`` either way (contract in
``weightguard.manifest.FileDigests``).
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    make_sign_keys,
    memory_audit,
    write_st,
    zeros,
)
from weightguard import loader, signing, verifying
from weightguard._internal.load import copiers, model_files
from weightguard._internal.load.copiers import _np_view
from weightguard.errors import FormatError, IntegrityError
from weightguard.manifest import FileDigests, VerifiedManifest
from weightguard.policy import PublicKey
from weightguard.transfer import fetch_model

SMALL = 1000  # plain records in these tests (8 MiB by default): many per file


@pytest.fixture(autouse=True)
def _small_records(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setattr(model_files, "_PLAIN_UNSIGNED_CHUNK", SMALL)
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_sign_keys(tmp_path_factory.mktemp("omskeys"), "release")


def _model(
    d: Path, key: str | None, *, two: bool = True, index: bool = False
) -> dict[str, torch.Tensor]:
    """A model directory: two weight files and a config (encrypted with ``key``), and
    with ``index`` a ``model.safetensors.index.json``."""
    d.mkdir(parents=True)
    plain = d.parent / f"{d.name}-plain"
    plain.mkdir()
    expected = write_st(plain / "a.safetensors", MODEL_LAYOUT, seed=1)
    if two:
        expected |= write_st(plain / "b.safetensors", [("b.w", "F32", (50, 33))], seed=2)
    for p in sorted(plain.iterdir()):
        if key is None:
            shutil.copy(p, d / p.name)
        else:
            encrypt(p, d / p.name, key, chunk_size=4096)
    (d / "config.json").write_text('{"hidden": 8}')
    if index:
        import json

        where = {k: "b.safetensors" if k == "b.w" else "a.safetensors" for k in expected}
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": where}))
    return expected


def _ms_sign(
    model: Path, sig: Path, keys: Any, alg: str = "sha256", shard_size: int = 4096
) -> None:
    """Sign with model_signing itself: ``alg`` is ``sha256`` / ``blake2`` / ``blake3``
    (files serialization) or ``shards-<alg>`` (shards of ``shard_size`` bytes)."""
    import model_signing

    if alg.startswith("shards-"):
        hc = model_signing.hashing.Config().use_shard_serialization(
            hashing_algorithm=alg.split("-", 1)[1], shard_size=shard_size
        )
    else:
        hc = model_signing.hashing.Config().use_file_serialization(hashing_algorithm=alg)
    cfg = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.private)
    cfg.set_hashing_config(hc).sign(model, sig)


def _hash(alg: str, data: bytes) -> bytes:
    if alg == "blake3":
        from blake3 import blake3

        return blake3(data).digest()
    return hashlib.new(alg, data).digest()


def _digests(root: Path, alg: str, shard: int | None) -> dict[str, FileDigests]:
    """FileDigests as the bundle parser gives them for a model_signing bundle."""
    paths = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    out: dict[str, FileDigests] = {}
    for p in paths:
        if p.name == "model.sig":
            continue
        data = p.read_bytes()
        size = len(data)
        name = "." if root.is_file() else p.name
        if shard is None:
            ds = (_hash(alg, data),)
            out[name] = FileDigests(size, size, size, ds, ds[0], False, "", alg)
        else:
            ds = tuple(_hash(alg, data[o : o + shard]) for o in range(0, max(size, 1), shard))
            out[name] = FileDigests(size, shard, shard, ds, ds[0], False, "", alg)
    return out


def _fake_bundle(monkeypatch: pytest.MonkeyPatch, root: Path, alg: str, shard: int | None) -> None:
    """verify_bundle answers a manifest of ``root`` as signed now (signature not read)."""
    files = _digests(root, alg, shard)

    def verify_bundle(*_a: Any, **_k: Any) -> VerifiedManifest:
        return VerifiedManifest(
            root, dict(files), "test", datetime.now(), None, (), "sha256:00", "m", "key",
            False, False, None,
        )  # fmt: skip

    # wherever the loader looks it up (signing re-exports verifying's)
    monkeypatch.setattr(verifying, "verify_bundle", verify_bundle)
    monkeypatch.setattr(signing, "verify_bundle", verify_bundle)
    sig = root / "model.sig" if root.is_dir() else root.with_name(root.name + ".sig")
    sig.write_text("{}")


def _load(path: Path, policy: Any, **kw: Any) -> tuple[Any, Any, list[Any]]:
    """load_file with an in-memory audit; (tensors or the error, sink, CPU buffers)."""
    audit, sink = memory_audit()
    bufs: list[Any] = []
    real = copiers.CpuCopier.allocate

    def allocate(self: Any, sizes: list[int]) -> None:
        real(self, sizes)
        bufs.extend(self._bufs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(copiers.CpuCopier, "allocate", allocate)
        try:
            kw.setdefault("workers", 4)
            got: Any = loader.load_file(path, policy=policy, audit=audit, **kw)
        except IntegrityError as exc:
            got = exc
    return got, sink, bufs


# ------------------------------------------------------------------ real model_signing


@pytest.mark.parametrize("alg", ["sha256", "shards-blake2"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_model_signing_bundle_loads_through_every_entry_point(
    tmp_path: Path, keys: Any, file_key: str, alg: str, encrypted: bool
) -> None:
    d = tmp_path / "m"
    expected = _model(d, file_key if encrypted else None)
    _ms_sign(d, d / "model.sig", keys, alg)
    audit, sink = memory_audit()
    got = loader.load_file(d, policy=keys.policy(), audit=audit, workers=3)
    assert_same(got, expected)
    assert events(sink)[-1] == "load.ok"
    whole = last(sink, "load.ok")["bytes"]
    # a subset: the whole file is read and hashed, only the subset returned
    with loader.open_model(d, policy=keys.policy(), audit=audit) as h:
        part = h.load(["w.f16", "b.w"])
        assert_same(part, {k: expected[k] for k in ("w.f16", "b.w")})
        assert last(sink, "load.ok")["bytes"] == whole
        # iter_tensors: one batch per file, whatever batch_bytes
        loads = len(events(sink))
        it = dict(h.iter_tensors(batch_bytes=64))
        assert_same(it, expected)
        assert events(sink)[loads:].count("load.ok") == 2
        assert h.metadata() == {"format": "pt"}
        assert h.read_side_file("config.json") == b'{"hidden": 8}'
    # into a module: parameters allocated (in place) and one on meta (assigned)
    m2 = _Holder(expected)
    loader.load_model(m2, d, policy=keys.policy(), audit=audit)
    assert_same(dict(m2.state_dict()), expected)
    m3 = _Holder(expected, meta=False)  # every tensor allocated: decrypted into in place
    loader.load_model(m3, d, policy=keys.policy(), audit=audit)
    assert_same(dict(m3.state_dict()), expected)
    # fetch (and the KServe initializer, which calls it): the plaintext files
    out = tmp_path / "out"
    fetch_model(d, out, policy=keys.policy(), allow_disk=True, audit=audit)
    assert (out / "config.json").read_bytes() == b'{"hidden": 8}'
    assert_same(loader.load_file(out / "a.safetensors", policy=_unsafe()), _only(expected, "a"))


class _Holder(torch.nn.Module):
    """A module with one buffer per tensor of the model (dotted names: submodules),
    half allocated (decrypted into in place), half on meta (assigned)."""

    def __init__(self, expected: dict[str, torch.Tensor], *, meta: bool = True) -> None:
        super().__init__()
        for i, (name, t) in enumerate(expected.items()):
            owner: torch.nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            dev = "meta" if meta and i % 2 else "cpu"
            owner.register_buffer(leaf, torch.zeros(t.shape, dtype=t.dtype, device=dev))


def _only(expected: dict[str, torch.Tensor], which: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in expected.items() if (k == "b.w") == (which == "b")}


def _unsafe() -> Any:
    from weightguard.policy import UnsafeNoVerification

    return UnsafeNoVerification()


@pytest.mark.parametrize("alg", ["blake2", "blake3", "shards-sha256"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_model_signing_hashes_and_serializations(
    tmp_path: Path, keys: Any, file_key: str, alg: str, encrypted: bool
) -> None:
    d = tmp_path / "m"
    expected = _model(d, file_key if encrypted else None)
    _ms_sign(d, d / "model.sig", keys, alg)
    assert_same(loader.load_file(d, policy=keys.policy(), workers=3), expected)
    b = d / "b.safetensors"
    flip(b, b.stat().st_size - 5000)
    got, sink, bufs = _load(d, keys.policy())
    assert isinstance(got, IntegrityError) and got.path == str(b)
    assert last(sink, "tamper.detected")["object"]["file"] == str(b)
    assert "load.ok" not in events(sink)
    assert all(zeros(_np_view(x)) for x in bufs)


def test_model_signing_single_file(tmp_path: Path, keys: Any) -> None:
    f = tmp_path / "model.safetensors"
    expected = write_st(f, MODEL_LAYOUT)
    _ms_sign(f, tmp_path / "model.safetensors.sig", keys)
    assert_same(loader.load_file(f, policy=keys.policy()), expected)
    flip(f, f.stat().st_size // 2)
    got, sink, bufs = _load(f, keys.policy())
    assert isinstance(got, IntegrityError) and got.path == str(f)
    assert "differs from the signed sha256 digest" in got.message
    assert last(sink, "tamper.detected")["object"]["file"] == str(f)
    assert bufs and all(zeros(_np_view(b)) for b in bufs)


def test_model_signing_wrong_key_is_refused(tmp_path: Path, keys: Any) -> None:
    from weightguard.errors import VerificationError

    d = tmp_path / "m"
    _model(d, None, two=False)
    _ms_sign(d, d / "model.sig", keys)
    other = make_sign_keys(tmp_path, "other")
    with pytest.raises(VerificationError):
        loader.load_file(d, policy=PublicKey.from_file(other.public))


# ------------------------------------------------------------------ files and shards


@pytest.mark.parametrize("alg", ["sha256", "blake2b", "blake3"])
@pytest.mark.parametrize("shard", [None, 777, 4096], ids=["files", "shards777", "shards4k"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_files_and_shards_load_equal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: Any,
    file_key: str,
    alg: str,
    shard: int | None,
    encrypted: bool,
) -> None:
    d = tmp_path / "m"
    expected = _model(d, file_key if encrypted else None)
    _fake_bundle(monkeypatch, d, alg, shard)
    got, sink, _ = _load(d, keys.policy())
    assert not isinstance(got, BaseException), got
    assert_same(got, expected)
    assert "tamper.detected" not in events(sink)


def _positions(path: Path, encrypted: bool) -> dict[str, int]:
    size = path.stat().st_size
    n = int.from_bytes(path.read_bytes()[:8], "little")
    return {
        "first": 0,
        "header": 30 if encrypted else 8 + n // 2,
        # plain: a header that still parses ("pt" -> "pu"), found out by the digest
        "metadata": 30 if encrypted else path.read_bytes().index(b'"pt"') + 2,
        "middle": size // 2,
        "last": size - 1,
    }


@pytest.mark.parametrize("where", ["first", "header", "metadata", "middle", "last"])
@pytest.mark.parametrize("shard", [None, 777], ids=["files", "shards"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_one_changed_byte_is_an_integrity_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: Any,
    file_key: str,
    where: str,
    shard: int | None,
    encrypted: bool,
) -> None:
    d = tmp_path / "m"
    _model(d, file_key if encrypted else None)
    _fake_bundle(monkeypatch, d, "sha256", shard)
    target = d / "a.safetensors"
    flip(target, _positions(target, encrypted)[where])
    got, sink, bufs = _load(d, keys.policy())
    assert isinstance(got, IntegrityError), got
    assert got.path == str(target)
    denied = last(sink, "tamper.detected")
    assert denied["object"]["file"] == str(target) and denied["outcome"] == "denied"
    assert "load.ok" not in events(sink)
    assert all(zeros(_np_view(b)) for b in bufs)


def test_shard_mismatch_names_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any
) -> None:
    d = tmp_path / "m"
    _model(d, None)
    _fake_bundle(monkeypatch, d, "blake2b", 1000)
    flip(d / "b.safetensors", 2500)
    got, _, _ = _load(d, keys.policy())
    assert isinstance(got, IntegrityError)
    assert got.path == str(d / "b.safetensors")
    assert "shard 3 of 7 (bytes 2000-3000) differs from the signed blake2b digest" in got.message


def test_partial_load_hashes_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any, file_key: str
) -> None:
    """A tensor far from the changed byte is still refused: the whole file is hashed."""
    d = tmp_path / "m"
    expected = _model(d, file_key)
    _fake_bundle(monkeypatch, d, "sha256", None)
    a = d / "a.safetensors"
    audit, sink = memory_audit()
    with loader.open_model(d, policy=keys.policy(), audit=audit) as h:
        h.load(["odd.bytes"] + [k for k in expected if k != "b.w"])
        whole = last(sink, "load.ok")["bytes"]
        assert_same(h.load(["scalar"]), {"scalar": expected["scalar"]})
        assert last(sink, "load.ok")["bytes"] == whole
    # change the last byte (a tag of the last record); ask for the first tensor only
    flip(a, a.stat().st_size - 1)
    with (
        loader.open_model(d, policy=keys.policy(), audit=audit) as h,
        pytest.raises(IntegrityError, match="differs from the signed sha256 digest") as info,
    ):
        h.load(["odd.bytes"])
    assert info.value.path == str(a)
    assert last(sink, "tamper.detected")["object"]["file"] == str(a)


def test_signed_malformed_file_is_a_format_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any
) -> None:
    """A header that does not parse is a FormatError when the bytes ARE the signed ones
    (the signer signed a broken file), an IntegrityError when they are not."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.safetensors").write_bytes((10**6).to_bytes(8, "little") + b"{}")
    _fake_bundle(monkeypatch, d, "sha256", None)
    with pytest.raises(FormatError, match="not a safetensors file"):
        loader.load_file(d, policy=keys.policy())


def test_empty_data_section_and_empty_file_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    expected = write_st(d / "a.safetensors", [("e", "F32", (0,))])
    _fake_bundle(monkeypatch, d, "sha256", 4096)
    assert_same(loader.load_file(d, policy=keys.policy()), expected)


def test_metadata_is_what_safe_open_returns(tmp_path: Path) -> None:
    import json
    import struct

    from safetensors import safe_open

    f = tmp_path / "m.safetensors"
    hj = json.dumps({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode()
    f.write_bytes(struct.pack("<Q", len(hj)) + hj + b"\x07")
    with safe_open(str(f), "pt") as st:
        want = st.metadata()
    with loader.open_model(f, policy=_unsafe()) as h:
        assert h.metadata() == want is None
    g = tmp_path / "g.safetensors"
    write_st(g, [("y", "U8", (2,))])
    with safe_open(str(g), "pt") as st, loader.open_model(g, policy=_unsafe()) as h:
        assert h.metadata() == st.metadata() == {"format": "pt"}


def test_model_signing_model_on_s3(
    tmp_path: Path, keys: Any, file_key: str, s3_env: Any, bucket: str
) -> None:
    """Ranged GETs of S3 objects, hashed in file order as they arrive: an encrypted model
    signed by model_signing in shards, then one object replaced by a changed copy."""
    d = tmp_path / "m"
    expected = _model(d, file_key)
    _ms_sign(d, d / "model.sig", keys, "shards-sha256")
    client = s3_env.client()
    for p in d.iterdir():
        client.upload_file(str(p), bucket, f"rel/{p.name}")
    src = f"s3://{bucket}/rel/"
    assert_same(loader.load_file(src, policy=keys.policy(), workers=4), expected)
    a = d / "a.safetensors"
    flip(a, a.stat().st_size // 3)
    client.upload_file(str(a), bucket, "rel/a.safetensors")
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError) as info:
        loader.load_file(src, policy=keys.policy(), audit=audit)
    assert info.value.path == f"{src}a.safetensors"
    assert last(sink, "tamper.detected")["object"]["file"] == f"{src}a.safetensors"


# ------------------------------------------------------------------ device path (fake GPU)


@pytest.fixture
def fake() -> Any:
    from tests.support.fake_device import fake_device
    from weightguard._internal.devices import pinned as pinned_pool

    b = fake_device()
    pinned_pool.release_pinned_memory()
    b.reset(devices=1, delay=0.001)
    yield b
    b.reset()


@pytest.mark.parametrize(
    "encrypted,decrypt_on",
    [(False, "auto"), (True, "cpu"), (True, "gpu")],
    ids=["plain", "encrypted-host-decrypt", "encrypted-device-decrypt"],
)
def test_device_load_of_model_signing_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: Any,
    file_key: str,
    fake: Any,
    encrypted: bool,
    decrypt_on: str,
) -> None:
    """Through the staging ring (its slots are reused, so the digest is fed from held
    read buffers): equal, then one changed byte refused with the device memory zeroed."""
    from weightguard._internal.devices.observe import observing

    if decrypt_on == "gpu":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    d = tmp_path / "m"
    expected = _model(d, file_key if encrypted else None, two=False)
    _ms_sign(d, d / "model.sig", keys, "shards-sha256")
    got = loader.load_file(d, "fake", policy=keys.policy(), workers=3, decrypt_on=decrypt_on)
    assert_same(got, expected)
    del got
    a = d / "a.safetensors"
    flip(a, a.stat().st_size // 2)
    audit, sink = memory_audit()
    seen: list[Any] = []
    before = len(fake.allocations)
    with observing(on_copier=seen.append), pytest.raises(IntegrityError) as info:
        loader.load_file(
            d, "fake", policy=keys.policy(), workers=3, decrypt_on=decrypt_on, audit=audit
        )
    assert info.value.path == str(a)
    assert last(sink, "tamper.detected")["object"]["file"] == str(a)
    assert seen and all(zeros(v) for c in seen for v in c.staging_views())
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations[before:])


# ------------------------------------------------------------------ frameworks


@pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("transformers", "sentence_transformers", "all_minilm_l6_v2")
    ),
    reason="transformers, sentence-transformers or the MiniLM package is not installed",
)
def test_transformers_and_sentence_transformers_from_model_signing_shards(
    tmp_path: Path, keys: Any
) -> None:
    """all-MiniLM-L6-v2 signed by model_signing in 1 MiB shards (config, tokenizer and
    weights alike): both one-call loaders give the plain model's outputs."""
    import zipfile

    import all_minilm_l6_v2
    import sentence_transformers
    import transformers

    from weightguard.integrations.sentence_transformers import load_sentence_transformer
    from weightguard.integrations.transformers import from_pretrained

    d = tmp_path / "minilm"
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
        zf.extractall(d)
    import model_signing

    hc = model_signing.hashing.Config().use_shard_serialization(shard_size=1 << 20)
    cfg = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.private)
    cfg.set_hashing_config(hc).sign(d, d / "model.sig")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    model = from_pretrained(d, policy=keys.policy())
    ref = transformers.AutoModel.from_pretrained(str(d)).eval()
    with torch.no_grad():
        got, want = model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)
    st = load_sentence_transformer(d, policy=keys.policy())
    plain = sentence_transformers.SentenceTransformer(str(d), device="cpu")
    text = ["The weights were signed by model_signing."]
    assert torch.equal(
        st.encode(text, convert_to_tensor=True), plain.encode(text, convert_to_tensor=True)
    )


def test_cli_load_of_model_signing_model(
    tmp_path: Path, keys: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``weightguard load`` (and the fetch/KServe paths share its loader): ok, then one
    changed byte is one line naming the file, exit 1, tamper.detected in the log."""
    import json

    from weightguard_cli.main import main

    d = tmp_path / "m"
    _model(d, None)
    _ms_sign(d, d / "model.sig", keys, "shards-blake2")
    log = tmp_path / "audit.jsonl"
    argv = ["load", str(d), "--trust-key", str(keys.public), "--audit-log", str(log)]

    def run() -> tuple[int, str, str]:
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = run()
    assert code == 0, err
    assert out.startswith("ok: 9 tensors, ")
    flip(d / "b.safetensors", 100)
    code, out, err = run()
    assert code == 1 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"{d / 'b.safetensors'}" in err and "blake2b digest" in err
    last_event = json.loads(log.read_text().splitlines()[-1])
    assert last_event["event"] == "tamper.detected"


@pytest.mark.parametrize("shard", [None, 64], ids=["files", "shards"])
def test_header_only_file_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any, shard: int | None
) -> None:
    """No data records at all: the header (hashed at the start of every load) is still
    checked, by load_file and by fetch."""
    d = tmp_path / "m"
    d.mkdir()
    f = d / "a.safetensors"
    write_st(f, [("e", "F32", (0, 3))])
    _fake_bundle(monkeypatch, d, "sha256", shard)
    assert loader.load_file(d, policy=keys.policy())["e"].shape == (0, 3)
    flip(f, f.read_bytes().index(b'"pt"') + 2)
    with pytest.raises(IntegrityError, match="differs from the signed sha256 digest"):
        loader.load_file(d, policy=keys.policy())
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="differs from the signed sha256 digest"):
        fetch_model(d, out, policy=keys.policy(), allow_disk=True)
    assert not out.exists()


def test_kserve_initializer_fetches_model_signing_release(
    tmp_path: Path, keys: Any, file_key: str
) -> None:
    """KServe's storage initializer (fetch): an encrypted release signed by model_signing
    in shards comes out as the original files; a changed byte leaves nothing behind."""
    from weightguard.integrations.kserve import storage_initialize

    d = tmp_path / "m"
    _model(d, file_key)
    _ms_sign(d, d / "model.sig", keys, "shards-sha256")
    env = {
        "WEIGHTGUARD_TRUST_KEY": str(keys.public),
        "WEIGHTGUARD_ALLOW_KEY": file_key,
        "WEIGHTGUARD_ALLOW_DISK": "1",
        "WEIGHTGUARD_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    out = tmp_path / "out"
    storage_initialize(str(d), str(out), env)
    plain = tmp_path / "m-plain"
    for name in ("a.safetensors", "b.safetensors"):
        assert (out / name).read_bytes() == (plain / name).read_bytes()
    assert (out / "config.json").read_bytes() == b'{"hidden": 8}'
    flip(d / "b.safetensors", 40)  # in the artifact header
    out2 = tmp_path / "out2"
    with pytest.raises(IntegrityError):
        storage_initialize(str(d), str(out2), env)
    assert not out2.exists()


@pytest.mark.parametrize(
    "field,delta",
    [("commitment", 14), ("wrapped-key", 40), ("key-uri", 2)],
)
def test_changed_artifact_header_field_is_an_integrity_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: Any,
    file_key: str,
    field: str,
    delta: int,
) -> None:
    """An artifact header is used (its key reference, wrapped key, commitment) before a
    whole-file digest can be checked: the refusal it causes (key not allowed, key does
    not unwrap, commitment) is told apart from a signed header by hashing the file."""
    d = tmp_path / "m"
    _model(d, file_key, two=False)
    _fake_bundle(monkeypatch, d, "sha256", None)
    a = d / "a.safetensors"
    raw = a.read_bytes()
    marker = {
        "commitment": b'"commitment":"',
        "wrapped-key": b'"ciphertext":"',
        "key-uri": b"file://",
    }[field]
    flip(a, raw.index(marker) + delta)
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match="differs from the signed sha256 digest") as info:
        loader.load_file(d, policy=keys.policy(), audit=audit)
    assert info.value.path == str(a)
    assert last(sink, "tamper.detected")["object"]["file"] == str(a)


def test_wrong_key_for_an_unchanged_file_stays_a_key_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any, file_key: str
) -> None:
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.errors import WrongKeyError

    d = tmp_path / "m"
    _model(d, file_key, two=False)
    _fake_bundle(monkeypatch, d, "sha256", None)
    other = tmp_path / "other.hex"
    create_key_file(other)
    with pytest.raises(WrongKeyError):
        loader.load_file(d, policy=keys.policy(), data_key=f"file://{other}")


# ------------------------------------------------------------------ interop vectors

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "oms"
LOADABLE = sorted(
    p
    for p in VECTORS.glob("ms-*/key-*")
    if p.is_dir() and not p.name.startswith("key-ignore")  # listing cases, not loads
)


@pytest.mark.parametrize("case", LOADABLE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_interop_vector_loads_and_its_changed_copy_does_not(case: Path, tmp_path: Path) -> None:
    """Every key-signed vector a released model_signing wrote (tests/vectors/oms): the
    loader gives safetensors' tensors; one changed weight byte is an IntegrityError."""
    from safetensors.torch import load_file as st_load

    model = tmp_path / "model"
    if (case / "model").is_dir():
        shutil.copytree(case / "model", model)
    else:
        shutil.copy(case / "model", model)
    if case.name == "key-git-paths":  # git cannot track a .git/ directory: as generate.py
        (model / ".git").mkdir(exist_ok=True)
        (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    weights = model / "model.safetensors" if model.is_dir() else model
    policy = PublicKey.from_file(VECTORS / "keys" / "key-pub.pem")
    sig = case / "model.sig"
    assert_same(loader.load_file(model, policy=policy, signature=sig), st_load(str(weights)))
    flip(weights, weights.stat().st_size - 1)
    with pytest.raises(IntegrityError, match="differs from the signed") as info:
        loader.load_file(model, policy=policy, signature=sig)
    assert info.value.path == str(weights)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_random_single_byte_changes_are_all_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any, file_key: str, encrypted: bool
) -> None:
    """Seeded sweep: random shard sizes (or one digest per file), random workers, a
    random byte of a random weight file changed: always one IntegrityError naming it."""
    import random

    rng = random.Random(2112)
    d = tmp_path / "m"
    _model(d, file_key if encrypted else None)
    pristine = {p.name: p.read_bytes() for p in d.glob("*.safetensors")}
    for _ in range(12):
        shard = rng.choice([None, 97, 999, 4096, 65536])
        _fake_bundle(monkeypatch, d, rng.choice(["sha256", "blake2b", "blake3"]), shard)
        name = rng.choice(sorted(pristine))
        offset = rng.randrange(len(pristine[name]))
        flip(d / name, offset)
        got, sink, bufs = _load(d, keys.policy(), workers=rng.choice([1, 2, 5]))
        where = f"{name}@{offset} shard={shard}"
        assert isinstance(got, IntegrityError), where
        assert got.path == str(d / name), where
        assert last(sink, "tamper.detected")["object"]["file"] == str(d / name), where
        assert all(zeros(_np_view(b)) for b in bufs), where
        (d / name).write_bytes(pristine[name])


def test_held_buffers_never_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Any, file_key: str
) -> None:
    """Two held read buffers for 8 workers, records finishing in a shuffled order
    (random delays), two files in shards: the load completes and is equal."""
    import random
    import threading
    import time

    from weightguard._internal.devices.observe import observing
    from weightguard._internal.load import pipeline

    monkeypatch.setattr(pipeline, "_HELD_BYTES", 1)  # the pool's floor: two buffers
    d = tmp_path / "m"
    expected = _model(d, file_key)
    _fake_bundle(monkeypatch, d, "sha256", 5000)
    rng = random.Random(7)
    lock = threading.Lock()

    def jitter(_name: str, _index: int) -> None:
        with lock:
            delay = rng.random() * 0.004
        time.sleep(delay)

    done: list[Any] = []

    def run() -> None:
        with observing(before_record=jitter):
            done.append(loader.load_file(d, policy=keys.policy(), workers=8))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the load did not finish (deadlock)"
    assert_same(done[0], expected)


# ------------------------------------------------------------------ the in-order hasher


def _hand_over(data: bytes, units: list[Any], head: bytes, seed: int) -> list[BaseException]:
    """Feed ``data`` after ``head`` to a StreamCheck in random pieces, in a random order,
    from 4 threads; the errors raised.  Every piece must be released once hashed."""
    import random
    import threading

    from weightguard._internal.load.stream_digests import StreamCheck

    rng = random.Random(seed)
    check = StreamCheck("f", len(data), units, "sha256", head)
    cuts = sorted({len(head), len(data), *(rng.randrange(len(head), len(data)) for _ in range(40))})
    pieces = [(a, memoryview(data)[a:b]) for a, b in itertools.pairwise(cuts)]
    rng.shuffle(pieces)
    released: list[int] = []
    errors: list[BaseException] = []

    def hand(batch: list[tuple[int, memoryview]]) -> None:
        for off, view in batch:
            try:
                check.feed(off, view, functools.partial(released.append, off))
            except IntegrityError as exc:
                errors.append(exc)

    try:
        check.begin()
    except IntegrityError as exc:
        errors.append(exc)
    threads = [threading.Thread(target=hand, args=(pieces[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not errors:
        check.finish()
        assert sorted(released) == sorted(a for a, _ in pieces)
    return errors


@pytest.mark.parametrize("shard", [None, 1, 333, 4096])
def test_stream_check_hashes_pieces_in_order_whatever_order_they_come(shard: int | None) -> None:
    """Pieces of random sizes handed over in a random order from several threads: the
    digests match (every piece released once hashed); a changed byte is refused."""
    import random

    data = bytes(random.Random(5).randrange(256) for _ in range(10_000))
    step = shard or len(data)
    units = [
        (o, min(step, len(data) - o), hashlib.sha256(data[o : o + step]).digest())
        for o in range(0, len(data), step)
    ]
    assert _hand_over(data, units, data[:17], seed=step) == []
    changed = bytearray(data[:17])
    changed[3] ^= 1
    errors = _hand_over(data, units, bytes(changed), seed=step)
    assert errors and all(isinstance(e, IntegrityError) and e.path == "f" for e in errors)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sharded_index_and_side_files(
    tmp_path: Path, keys: Any, file_key: str, encrypted: bool
) -> None:
    """Shards of 64 bytes: the index and config are checked shard by shard before they
    are parsed; a changed index byte is an IntegrityError naming the index, audited."""
    d = tmp_path / "m"
    expected = _model(d, file_key if encrypted else None, index=True)
    _ms_sign(d, d / "model.sig", keys, "shards-sha256", shard_size=64)
    audit, sink = memory_audit()
    with loader.open_model(d, policy=keys.policy(), audit=audit) as h:
        assert_same(h.load(), expected)
        assert h.read_side_file("config.json") == b'{"hidden": 8}'
    out = tmp_path / "out"
    fetch_model(d, out, policy=keys.policy(), allow_disk=True, audit=audit)
    assert (out / "model.safetensors.index.json").read_bytes() == (
        d / "model.safetensors.index.json"
    ).read_bytes()
    index = d / "model.safetensors.index.json"
    flip(index, index.stat().st_size - 3)
    with pytest.raises(IntegrityError, match="differs from the signed sha256 digest") as info:
        loader.load_file(d, policy=keys.policy(), audit=audit)
    assert info.value.path == str(index)
    assert last(sink, "tamper.detected")["object"]["file"] == str(index)
