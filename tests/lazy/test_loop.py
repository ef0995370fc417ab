"""A loop of ``get_tensor`` over ``keys()``: each record read, checked and decrypted once,
the next ones read ahead, copies returned, the cache wiped at close, tampering caught."""
# ruff: noqa: F811, SIM118  (fixtures imported from tests.support.load; SafeOpen is no dict)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.lazy import record_offset, release_file
from tests.support.load import (
    assert_same,
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import load_file, safe_open
from weightguard.errors import IntegrityError

CHUNK = 4096


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


def small_tensors() -> dict[str, torch.Tensor]:
    """Many tensors smaller than a record (neighbours share records), names whose
    ``keys()`` order is not the file's order (layers 0, 1, 10, 11, ..., 2, ...)."""
    g = torch.Generator().manual_seed(3)
    ts: dict[str, torch.Tensor] = {"embed": torch.randn(96, 40, generator=g)}
    for i in range(20):
        ts[f"layers.{i}.w"] = torch.randn(40, 37, generator=g).to(torch.bfloat16)
        ts[f"layers.{i}.norm"] = torch.randn(37, generator=g)
        ts[f"layers.{i}.b"] = torch.randn(5, generator=g).half()
    return ts


def _release(tmp_path: Path, file_key: str, sign_keys, ts: dict[str, torch.Tensor]) -> Path:
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=CHUNK
    )
    return art


@pytest.mark.parametrize("order", ["keys", "offset_keys"])
def test_a_loop_equals_load_file_and_reads_each_record_once(
    tmp_path: Path, file_key: str, sign_keys, order: str
) -> None:
    ts = small_tensors()
    art = _release(tmp_path, file_key, sign_keys, ts)
    whole = load_file(art, policy=sign_keys.policy())
    with safe_open(art, policy=sign_keys.policy()) as f:
        num_chunks = f._files[0].geometry.num_chunks
        got = {k: f.get_tensor(k) for k in getattr(f, order)()}
        st = f.stats
    assert_same(got, whole)
    assert_same(got, ts)
    for k in ts:  # byte for byte, not only equal values
        assert got[k].view(-1).view(torch.uint8).numpy().tobytes() == (
            whole[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    assert st["read_ahead"] > 0  # the loop was recognised
    assert st["records_read"] == num_chunks > 10  # each record read, checked, decrypted once


def test_tensors_of_a_loop_are_independent_copies(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = small_tensors()
    art = _release(tmp_path, file_key, sign_keys, ts)
    with safe_open(art, policy=sign_keys.policy()) as f:
        first = {k: f.get_tensor(k) for k in f.keys()}
        reader = f._reader
        cached = [np.asarray(b) for b in [*reader._cache.values(), *reader._plain_free]]
        assert cached  # records shared by neighbours were cached (then kept for reuse)...
        storages = {t.untyped_storage().data_ptr() for t in first.values() if t.numel()}
        assert len(storages) == sum(1 for t in first.values() if t.numel())  # ...never shared
        for t in first.values():
            p = t.untyped_storage().data_ptr()
            assert not any(b.ctypes.data <= p < b.ctypes.data + b.nbytes for b in cached)
            t.fill_(7)  # the caller owns its tensors: later reads do not see this
        again = {k: f.get_tensor(k) for k in f.keys()}
        assert_same(again, ts)
        assert all((t == 7).all() for t in first.values())


def test_the_cache_is_wiped_at_close(tmp_path: Path, file_key: str, sign_keys) -> None:
    ts = small_tensors()
    art = _release(tmp_path, file_key, sign_keys, ts)
    f = safe_open(art, policy=sign_keys.policy(), cache_bytes=6 * CHUNK)  # evicts as it goes
    for k in f.keys():
        f.get_tensor(k)
    reader = f._reader
    kept = [*reader._cache.values(), *reader._plain_free]
    assert kept and any(b.any() for b in kept)  # verified plaintext, held by the handle
    f.close()
    assert all(not b.any() for b in kept)  # zeroed
    assert not reader._cache and not reader._plain_free and not reader._ahead


@pytest.mark.parametrize("failing", ["digest", "tag"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_tampered_record_in_a_loop(
    tmp_path: Path, file_key: str, sign_keys, failing: str, workers: int
) -> None:
    ts = small_tensors()
    art, _ = release_file(
        tmp_path / "rel",
        "m.safetensors",
        ts,
        key=file_key,
        keys=None if failing == "tag" else sign_keys,
        chunk_size=CHUNK,
    )
    bad = 8  # a record in the middle, read ahead by the loop before it is asked for
    flip(art, record_offset(art, bad) + 100)
    if failing == "tag":  # changed before signing: the digest matches, the GCM tag fails
        sign(art, art.with_name(art.name + ".sig"), sign_keys)
    match = "chunk digest does not match" if failing == "digest" else "failed authentication"
    audit, sink = memory_audit()
    got: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    with safe_open(art, policy=sign_keys.policy(), audit=audit, workers=workers) as f:
        geo = f._files[0].geometry
        for k in f.offset_keys():
            try:
                got[k] = f.get_tensor(k)
            except IntegrityError as exc:
                assert match in str(exc) and exc.chunk == bad
                refused.append(k)
        st = f.stats
    assert st["read_ahead"] > 0
    # exactly the tensors with bytes in the bad record were refused; the rest are right
    lo, hi = (bad - 1) * geo.chunk, bad * geo.chunk
    infos = {t.name: t for t in f._files[0].tensors}
    touching = {k for k, t in infos.items() if t.begin < hi and t.end > lo and t.end > t.begin}
    assert set(refused) == touching and touching
    assert_same(got, {k: v for k, v in ts.items() if k not in touching})
    tampered = [r for r in sink.records if r.get("event") == "tamper.detected"]
    assert len(tampered) == len(touching)  # one per refused request, none for read-ahead
    assert all(e["object"]["chunk"] == bad for e in tampered)
    assert events(sink)[-1] == "load.ok" and last(sink, "load.ok")["extra"]["tensors"] == len(got)


def test_random_access_and_slices_read_nothing_ahead(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    ts = small_tensors()
    art = _release(tmp_path, file_key, sign_keys, ts)
    names = sorted(ts)
    with safe_open(art, policy=sign_keys.policy()) as f:
        for k in names[::-1][::3]:  # backwards, skipping: no walk
            assert torch.equal(f.get_tensor(k), ts[k])
        for k in names:  # slices never read ahead
            assert torch.equal(f.get_slice(k)[:1], ts[k][:1])
        assert f.stats["read_ahead"] == 0


@pytest.mark.parametrize("cache_records", [6, 12])
@pytest.mark.parametrize("order", ["keys", "offset_keys"])
def test_reading_ahead_never_evicts_a_record_the_loop_still_needs(
    tmp_path: Path, file_key: str, sign_keys, cache_records: int, order: str
) -> None:
    """Records are read ahead only into free room of the cache: a small cache and a long
    look-ahead still read, check and decrypt each record once."""
    ts = small_tensors()
    art = _release(tmp_path, file_key, sign_keys, ts)
    with safe_open(art, policy=sign_keys.policy(), cache_bytes=cache_records * CHUNK) as f:
        num_chunks = f._files[0].geometry.num_chunks
        got = {k: f.get_tensor(k) for k in getattr(f, order)()}
        st = f.stats
    assert_same(got, ts)
    assert st["read_ahead"] > 0
    assert st["records_read"] == num_chunks
