"""weightguard.safe_open: safetensors' lazy API on signed, encrypted models."""
# ruff: noqa: F811, SIM118  (fixtures imported from tests.support.load; SafeOpen is no dict)

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors
import torch

from tests.support.lazy import release_dir, release_file, tensors
from tests.support.load import (
    assert_same,
    events,
    file_key,  # noqa: F401 - fixture
    last,
    memory_audit,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import loader, safe_open
from weightguard.policy import UnsafeNoVerification

INDICES = [
    slice(10, 20),
    5,
    -1,
    (slice(None), 3),
    slice(0, 300, 7),
    (..., 2),
    slice(290, 2000),
    slice(5, 2),
    slice(-40, -3, 2),
    (None, slice(1, 4)),
    (slice(3, 9), slice(2, 30, 5)),
    (),
    ...,
    [0, 5, 299],
]


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.mark.parametrize("kind", ["encrypted", "encrypted-header", "plain"])
def test_same_answers_as_safetensors(tmp_path: Path, file_key: str, sign_keys, kind: str) -> None:
    ts = tensors()
    art, plain = release_file(
        tmp_path / "rel",
        "model.safetensors",
        ts,
        key=None if kind == "plain" else file_key,
        keys=sign_keys,
        metadata={"format": "pt", "who": "test"},
        header_encrypted=kind == "encrypted-header",
    )
    audit, sink = memory_audit()
    with (
        safe_open(art, "pt", policy=sign_keys.policy(), audit=audit) as f,
        safetensors.safe_open(str(plain), "pt") as ref,
    ):
        assert f.keys() == ref.keys()
        assert f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata() == {"format": "pt", "who": "test"}
        for name in ref.keys():
            got, want = f.get_tensor(name), ref.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want), name
            s, rs = f.get_slice(name), ref.get_slice(name)
            assert s.get_shape() == rs.get_shape() and s.get_dtype() == rs.get_dtype()
        s, rs = f.get_slice("embed.weight"), ref.get_slice("embed.weight")
        for index in INDICES:
            got, want = s[index], rs[index]
            assert got.shape == want.shape and torch.equal(got, want), index
        assert torch.equal(f.get_slice("scalar")[...], ts["scalar"])
    unwrap = [] if kind == "plain" else ["key.unwrap"]
    assert events(sink) == ["load.start", "verify.ok", *unwrap, "load.ok"]
    ok = last(sink, "load.ok")
    assert ok["extra"]["lazy"] is True and ok["extra"]["tensors"] > len(ts)
    assert ok["object"]["signer"]


def test_metadata_is_none_without_metadata(tmp_path: Path, file_key: str, sign_keys) -> None:
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", tensors(), key=file_key, keys=sign_keys
    )
    with safe_open(art, policy=sign_keys.policy()) as f:
        assert f.metadata() is None


@pytest.mark.parametrize("encrypted", [True, False])
def test_directory_with_index(tmp_path: Path, file_key: str, sign_keys, encrypted: bool) -> None:
    d, expected = release_dir(tmp_path / "rel", file_key if encrypted else None, sign_keys)
    with safe_open(d, policy=sign_keys.policy()) as f:
        assert f.keys() == sorted(expected)
        assert f.metadata() == {"format": "pt"}
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert_same(got, expected)
    # one weight file of the directory, as safetensors opens one file
    with safe_open(d, policy=sign_keys.policy(), file="model-00002-of-00002.safetensors") as f:
        assert f.keys() == sorted(k for k in expected if k.startswith("s2."))
        assert torch.equal(f.get_slice("s2.embed.weight")[7:9], expected["s2.embed.weight"][7:9])


def test_unsigned_artifact_under_the_unsafe_policy(tmp_path: Path, file_key: str) -> None:
    ts = tensors()
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=None)
    with safe_open(art, policy=UnsafeNoVerification()) as f:
        assert_same({k: f.get_tensor(k) for k in f.keys()}, ts)


def test_returned_tensors_never_change(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = tensors()
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    with safe_open(art, policy=sign_keys.policy()) as f:
        a = f.get_tensor("embed.weight")
        a_copy = a.clone()
        b = f.get_tensor("embed.weight")
        assert a.data_ptr() != b.data_ptr()
        a.fill_(0)  # the caller owns its tensor; the next read is unaffected
        assert torch.equal(f.get_tensor("embed.weight"), a_copy)
        # neighbours share edge records (served from the private cache): still copies
        rows = f.get_slice("embed.weight")[-2:]
        rows.fill_(7)
        for name in f.offset_keys():
            f.get_tensor(name)
        assert torch.equal(f.get_slice("embed.weight")[-2:], a_copy[-2:])
        assert torch.equal(b, a_copy)


def test_a_model_read_tensor_by_tensor_reads_each_record_once(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    ts = tensors()
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys)
    with loader.open_model(art, policy=sign_keys.policy()) as m:
        num_chunks = m._files[0].geometry.num_chunks
    with safe_open(art, policy=sign_keys.policy()) as f:
        for name in f.keys():
            f.get_tensor(name)
        assert f.stats["records_read"] == num_chunks > 5


def _one_big(tmp_path: Path, file_key: str, sign_keys, chunk: int) -> tuple[Path, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    big = torch.randn(4096, 4096, generator=g)  # 64 MiB
    ts = {"a.small": torch.randn(3, generator=g), "b.big": big, "c.after": torch.ones(5)}
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=chunk
    )
    return art, big


@pytest.mark.parametrize("chunk", [4 << 20, 1 << 20])
def test_dim0_slice_reads_only_the_records_of_its_rows(
    tmp_path: Path, file_key: str, sign_keys, chunk: int
) -> None:
    art, big = _one_big(tmp_path, file_key, sign_keys, chunk)
    records = (64 << 20) // chunk
    audit, sink = memory_audit()
    with safe_open(art, policy=sign_keys.policy(), audit=audit, cache_bytes=0) as f:
        part = f.get_slice("b.big")[1024:2048]
        assert torch.equal(part, big[1024:2048])
        st = f.stats
        assert st["records_read"] <= records // 4 + 1
        assert st["bytes_decrypted"] <= (records // 4 + 1) * chunk
        # a slice on another dimension reads the tensor's own records, no others
        before = st["records_read"]
        cols = f.get_slice("b.big")[:, 100:110]
        assert torch.equal(cols, big[:, 100:110])
        assert f.stats["records_read"] - before <= records + 1
    ok = last(sink, "load.ok")
    assert ok["extra"]["bytes_decrypted"] == f.stats["bytes_decrypted"]


def test_directory_from_s3(tmp_path: Path, file_key: str, sign_keys, s3_env, bucket) -> None:
    from weightguard.transfer import push_model

    d, expected = release_dir(tmp_path / "rel", file_key, sign_keys)
    push_model(d, f"s3://{bucket}/models/lazy")
    with safe_open(f"s3://{bucket}/models/lazy/", policy=sign_keys.policy()) as f:
        assert f.keys() == sorted(expected)
        name = "s1.embed.weight"
        assert torch.equal(f.get_slice(name)[100:110], expected[name][100:110])
        assert torch.equal(f.get_tensor("s2.ids"), expected["s2.ids"])
        assert 0 < f.stats["records_read"] < 10


def test_get_tensors_reads_many_at_once(tmp_path: Path, file_key: str, sign_keys) -> None:
    d, expected = release_dir(tmp_path / "rel", file_key, sign_keys)
    audit, sink = memory_audit()
    with safe_open(d, policy=sign_keys.policy(), audit=audit) as f:
        every = f.get_tensors()
        some = f.get_tensors(["s1.ids", "s2.embed.weight"])
        every["s1.ids"].fill_(0)  # another call's tensors are untouched
        assert torch.equal(some["s1.ids"], expected["s1.ids"])
    assert_same(
        {k: v for k, v in every.items() if k != "s1.ids"},
        {k: v for k, v in expected.items() if k != "s1.ids"},
    )
    assert sorted(some) == ["s1.ids", "s2.embed.weight"]
    assert events(sink).count("load.ok") == 3  # two loads, then the close


def test_concurrent_reads_from_threads(tmp_path: Path, file_key: str, sign_keys) -> None:
    # transformers 5 materialises get_slice objects from a thread pool
    from concurrent.futures import ThreadPoolExecutor

    d, expected = release_dir(tmp_path / "rel", file_key, sign_keys)
    with safe_open(d, policy=sign_keys.policy(), workers=2) as f:
        names = f.keys() * 3
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda n: (n, f.get_slice(n)[...]), names))
    for name, t in got:
        assert torch.equal(t, expected[name]), name
