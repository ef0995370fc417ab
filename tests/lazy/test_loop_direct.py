"""A loop of ``get_tensor`` decrypts a record shared by several tensors straight into
their outputs (AES-GCM's streaming decryptor, one piece per tensor): bytes written once,
each record read, checked and decrypted once, nothing returned before the record's
digest and tag were checked, every output not returned zeroed (on a failure, a
misprediction, at close, when dropped), returned tensors never touched again."""
# ruff: noqa: F811  (fixtures imported from tests.support.load)

from __future__ import annotations

import gc
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.lazy import record_offset, release_file
from tests.support.load import (
    assert_same,
    file_key,  # noqa: F401 - fixture
    flip,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import load_file, safe_open
from weightguard._internal.load.ranges import RangeReader
from weightguard.errors import IntegrityError

CHUNK = 4096


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


def layer_tensors() -> dict[str, torch.Tensor]:
    """One dtype, names in file order: ``keys()`` walks the file, 2-4 tensors a record."""
    g = torch.Generator().manual_seed(7)
    ts: dict[str, torch.Tensor] = {}
    for i in range(24):
        ts[f"l{i:02d}.w"] = torch.randn(13, 29, generator=g)  # 1508 bytes
        ts[f"l{i:02d}.x"] = torch.randn(5, 61, generator=g)  # 1220 bytes
        ts[f"l{i:02d}.y"] = torch.randn(3, generator=g)
    return ts


@pytest.fixture
def outs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every output the readers allocate (to look at the buffers afterwards)."""
    made: list[Any] = []
    real = RangeReader._new_out

    def spy(self: RangeReader, *args: Any, **kwargs: Any) -> Any:
        o = real(self, *args, **kwargs)
        made.append(o)
        return o

    monkeypatch.setattr(RangeReader, "_new_out", spy)
    return made


def _idle(reader: RangeReader) -> None:
    """Wait until no record is being decrypted on the reader's pool."""
    deadline = time.monotonic() + 10
    while reader._fills or any(not fut.done() for fut, _, _ in reader._ahead.values()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _zero(o: Any) -> bool:
    return not o.t.any()


@pytest.mark.parametrize("order", ["keys", "offset_keys"])
@pytest.mark.parametrize("workers", [1, 2])
def test_records_decrypted_straight_into_the_outputs_once(
    tmp_path: Path, file_key: str, sign_keys, outs: list[Any], order: str, workers: int
) -> None:
    ts = layer_tensors()
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=CHUNK
    )
    whole = load_file(art, policy=sign_keys.policy())
    with safe_open(art, policy=sign_keys.policy(), workers=workers) as f:
        num_chunks = f._files[0].geometry.num_chunks
        got = {k: f.get_tensor(k) for k in getattr(f, order)()}
        st, direct = f.stats, f._reader.stats.direct
    assert_same(got, whole)  # bit for bit (assert_same compares the bytes)
    assert_same(got, ts)
    assert st["records_read"] == num_chunks > 12  # each record read, checked, decrypted once
    assert st["bytes_decrypted"] == sum(t.numel() * t.element_size() for t in ts.values())
    assert direct >= num_chunks - 3  # all but the loop's first records: no cache, no copy
    assert st["cache_hits"] <= 4  # the first calls (before the loop is recognised)
    returned = {t.data_ptr() for t in got.values()}
    assert len(returned) == len(got)  # fresh memory each
    assert outs and all(o.ptr in returned for o in outs)  # every output was returned


def test_returned_tensors_never_change(
    tmp_path: Path, file_key: str, sign_keys, outs: list[Any]
) -> None:
    ts = layer_tensors()
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=CHUNK
    )
    names = sorted(ts)
    f = safe_open(art, policy=sign_keys.policy())
    got: dict[str, torch.Tensor] = {}
    for k in names[:40]:
        got[k] = f.get_tensor(k)
    snapshot = {k: v.clone() for k, v in got.items()}
    assert any(not o.ahead for o in outs) and any(o.ahead for o in f._reader._outs.values())
    for k in names[40:]:  # later calls (their records shared with returned tensors)
        got[k] = f.get_tensor(k)
    f.get_tensor(names[3])  # and a jump back
    _idle(f._reader)
    assert all(
        torch.equal(got[k].view(torch.uint8), snapshot[k].view(torch.uint8)) for k in snapshot
    )
    f.close()
    assert_same(got, ts)  # close zeroes what the reader holds, never what it returned


@pytest.mark.parametrize("failing", ["digest", "tag"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_record_failing_in_the_middle_of_a_loop(
    tmp_path: Path, file_key: str, sign_keys, outs: list[Any], failing: str, workers: int
) -> None:
    """The bad record is read ahead (its pieces go into prepared outputs) and fails: the
    call that needs it reads it again and raises; nothing is returned, and every output
    not returned, this call's and all those prepared ahead, is zeroed."""
    ts = layer_tensors()
    art, _ = release_file(
        tmp_path / "rel",
        "m.safetensors",
        ts,
        key=file_key,
        keys=None if failing == "tag" else sign_keys,
        chunk_size=CHUNK,
    )
    bad = 12
    flip(art, record_offset(art, bad) + 100)
    if failing == "tag":  # changed before signing: the digest matches, the GCM tag fails
        sign(art, art.with_name(art.name + ".sig"), sign_keys)
    match = "chunk digest does not match" if failing == "digest" else "failed authentication"
    audit, sink = memory_audit()
    got: dict[str, torch.Tensor] = {}
    with safe_open(art, policy=sign_keys.policy(), audit=audit, workers=workers) as f:
        reader = f._reader
        geo = f._files[0].geometry
        names = f.keys()
        for k in names:
            try:
                got[k] = f.get_tensor(k)
            except IntegrityError as exc:
                assert match in str(exc) and exc.chunk == bad
                refused = k
                break
        else:
            pytest.fail("the tampered record was not refused")
        info = f._info(refused)
        assert info.begin // geo.chunk + 1 <= bad <= (info.end - 1) // geo.chunk + 1
        _idle(reader)
        returned = {t.data_ptr() for t in got.values()}
        kept = [o for o in outs if o.ptr not in returned]
        assert kept and any(o.begin == info.begin for o in kept)  # the refused call's
        assert any(o.end > bad * geo.chunk for o in kept)  # and some prepared ahead
        assert all(_zero(o) for o in kept)  # none left with plaintext
        assert not reader._outs and reader._out_bytes == 0
        assert reader.stats.read_ahead > 0
        assert_same(got, {k: ts[k] for k in got})  # what was returned before is intact
        # the loop can go on: the record is read again (and refused again) for its tensors
        rest = names[names.index(refused) + 1 :]
        again = {}
        for k in rest:
            i = f._info(k)
            if i.begin < bad * geo.chunk and i.end > (bad - 1) * geo.chunk:
                with pytest.raises(IntegrityError, match=match):
                    f.get_tensor(k)
            else:
                again[k] = f.get_tensor(k)
        assert_same(again, {k: ts[k] for k in again})
    tampered = [r for r in sink.records if r.get("event") == "tamper.detected"]
    assert tampered and all(e["object"]["chunk"] == bad for e in tampered)


@pytest.mark.parametrize("how", ["close", "misprediction", "dropped"])
def test_outputs_prepared_ahead_are_zeroed(
    tmp_path: Path, file_key: str, sign_keys, outs: list[Any], how: str
) -> None:
    ts = layer_tensors()
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=CHUNK
    )
    names = sorted(ts)
    f = safe_open(art, policy=sign_keys.policy())
    got = [f.get_tensor(k) for k in names[:20]]
    reader = f._reader
    _idle(reader)
    pending = list(reader._outs.values())
    assert pending and all(o.ahead for o in pending)
    assert any(o.t.any() for o in pending)  # checked plaintext, held for the next calls
    if how == "close":
        f.close()
    elif how == "misprediction":
        assert torch.equal(f.get_tensor(names[2]), ts[names[2]])  # not the loop's next
        assert not reader._outs
    else:
        del f, reader
        gc.collect()
    assert all(_zero(o) for o in pending)
    assert_same(dict(zip(names[:20], got, strict=True)), {k: ts[k] for k in names[:20]})


@pytest.mark.parametrize("cuts", [[], [1], [15, 16, 17], [100, 2000, 2001, 4095], [4095]])
def test_streamed_pieces_equal_the_one_shot_record(
    tmp_path: Path, file_key: str, sign_keys, cuts: list[int]
) -> None:
    """decrypt_record_pieces authenticates exactly what decrypt_record_into does (same
    nonce, AAD and tag): equal plaintext for any split, the same refusals, and every
    piece zeroed when the tag fails."""
    ts = layer_tensors()
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=None, chunk_size=CHUNK
    )
    with _open(art) as f:
        mf = f._files[0]
        cipher, geo = mf.cipher, mf.geometry
        last = geo.num_chunks
        for k in (1, 5, last):  # a full record and the short final one
            src_off, src_len, _, n = geo.span(k)
            ct = bytearray(src_len)
            mf.source.read_into(src_off, memoryview(ct))
            one = bytearray(n)
            cipher.decrypt_record_into(k, memoryview(ct), memoryview(one))
            bounds = [0, *(c for c in cuts if c < n), n]
            pieces = [bytearray(b - a) for a, b in itertools.pairwise(bounds)]
            cipher.decrypt_record_pieces(k, memoryview(ct), [memoryview(p) for p in pieces])
            assert b"".join(pieces) == one
            for what, bad in (
                ("tag", _flipped(ct, src_len - 1)),  # the tag
                ("ciphertext", _flipped(ct, 7)),
            ):
                pieces = [bytearray(b"\xff" * len(p)) for p in pieces]
                with pytest.raises(IntegrityError, match=f"data record {k} failed auth"):
                    cipher.decrypt_record_pieces(
                        k, memoryview(bad), [memoryview(p) for p in pieces]
                    )
                assert all(not any(p) for p in pieces), what
            other = 2 if k != 2 else 3  # another record's nonce and AAD: refused
            if geo.span(other)[3] == n:
                with pytest.raises(IntegrityError, match=f"data record {other} failed auth"):
                    cipher.decrypt_record_pieces(other, memoryview(ct), [memoryview(bytearray(n))])
            with pytest.raises(IntegrityError, match="truncated or resized"):
                cipher.decrypt_record_pieces(k, memoryview(ct)[:-1], [memoryview(bytearray(n))])


def _flipped(b: bytearray, i: int) -> bytearray:
    c = bytearray(b)
    c[i] ^= 1
    return c


def _open(art: Path) -> Any:
    from weightguard.policy import UnsafeNoVerification

    return safe_open(art, policy=UnsafeNoVerification())


def test_a_loop_over_a_signed_plain_file_goes_through_the_cache(
    tmp_path: Path, file_key: str, sign_keys, outs: list[Any]
) -> None:
    """Not encrypted: no decryptor to write into several outputs; records shared by
    neighbours are checked once into the cache and copied out, as outside a loop."""
    ts = layer_tensors()
    art, _ = release_file(tmp_path / "rel", "m.safetensors", ts, key=None, keys=None)
    sign(art, art.with_name(art.name + ".sig"), sign_keys, chunk_size=CHUNK)
    with safe_open(art, policy=sign_keys.policy()) as f:
        num_chunks = f._files[0].geometry.num_chunks
        got = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        st, direct = f.stats, f._reader.stats.direct
    assert_same(got, ts)
    assert st["records_read"] == num_chunks and direct == 0 and st["read_ahead"] > 0
    assert {t.data_ptr() for t in got.values()} >= {o.ptr for o in outs}
