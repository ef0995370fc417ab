"""The REAL copier and pipeline driven through the device seam by a fake asynchronous
GPU (tests/support/fake_device.py: no GPU here; the same checks on CUDA are in
tests/load/test_cuda.py).  The fake runs copies late, in stream order, and keeps a
current device per thread, so these tests catch: a slot reused or zeroed before its
copy finished, work on another device's stream, a context on the wrong device, and a
failure that skips the wipe or the audit event."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.fake_device import FakeBackend, FakeEvent, fake_device
from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    events,
    file_key,  # noqa: F401 - fixture
    flip,
    last,
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
    zeros,
)
from weightguard import loader
from weightguard._internal.devices import get_backend
from weightguard._internal.devices import pinned as pinned_pool
from weightguard._internal.devices.observe import observing
from weightguard._internal.format import layout as fmt
from weightguard._internal.load.copiers import StagingCopier
from weightguard.errors import ConfigError, DeviceError, IntegrityError
from weightguard.policy import UnsafeNoVerification

CHUNK = 4096
LAYOUT = [
    *MODEL_LAYOUT,
    ("tail.odd", "U8", (5,)),
    ("fp8ish", "U8", (33, 17)),  # stands in for an fp8 matrix: 1-byte dtype, odd offset
    ("bias.bf16", "BF16", (129,)),
    ("big.f32", "F32", (31, 67)),
]


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    # The artifacts name a dev key file; the caller allows exactly that one (issue 12.2).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    b = fake_device()
    pinned_pool.release_pinned_memory()  # contexts are counted from a cold pool
    b.reset(devices=2, delay=0.001)
    yield b
    b.reset()  # capacity, injected failures: nothing leaks into other files' tests


@pytest.fixture
def model(tmp_path: Path, file_key: str, sign_keys: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    src = tmp_path / "plain.safetensors"
    expected = write_st(src, LAYOUT)
    enc = tmp_path / "enc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=CHUNK)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    return enc, expected


def _load(path: Path, device: str, policy: Any, **kw: Any) -> tuple[Any, list[Any], Any]:
    audit, sink = memory_audit()
    seen: list[Any] = []
    kw.setdefault("decrypt_on", "cpu")
    with observing(on_copier=seen.append):
        out = loader.load_file(path, device, policy=policy, audit=audit, **kw)
    return out, seen, sink


def _fail(path: Path, device: str, policy: Any, **kw: Any) -> tuple[BaseException, list[Any], Any]:
    audit, sink = memory_audit()
    seen: list[Any] = []
    kw.setdefault("decrypt_on", "cpu")
    with observing(on_copier=seen.append):
        try:
            loader.load_file(path, device, policy=policy, audit=audit, **kw)
        except BaseException as exc:
            return exc, seen, sink
    raise AssertionError("load succeeded")


def _ring_zero(copiers: list[Any]) -> bool:
    return bool(copiers) and all(zeros(v) for c in copiers for v in c.staging_views())


@pytest.mark.parametrize("workers", [1, 4])
def test_late_copies_give_the_right_bytes(fake, model, sign_keys, workers) -> None:  # type: ignore[no-untyped-def]
    enc, expected = model
    got, seen, sink = _load(enc, "fake", sign_keys.policy(), workers=workers, ring_bytes=3 * CHUNK)
    assert_same(got, expected)
    assert fake.violations == []
    assert _ring_zero(seen)
    assert events(sink) == ["load.start", "verify.ok", "key.unwrap", "load.ok"]
    assert last(sink, "load.ok")["extra"]["decrypt_on"] == "cpu"


def test_fake_catches_a_slot_reused_before_its_copy(fake, model, sign_keys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The fake is a real check: a copier that trusts unfinished events loads wrong bytes."""
    enc, expected = model
    fake.delay = 0.01
    monkeypatch.setattr(FakeEvent, "query", lambda self: True)
    monkeypatch.setattr(FakeEvent, "synchronize", lambda self: None)
    got, _, _ = _load(enc, "fake", sign_keys.policy(), workers=2, ring_bytes=2 * CHUNK)
    assert any(not torch.equal(got[k], v) for k, v in expected.items() if v.numel())


def test_current_device_resolved_once_torchrun_pattern(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """set_device(1) then device="fake": every stream, copy and allocation is on 1."""
    enc, expected = model
    fake.set_device(1)
    try:
        got, seen, _ = _load(enc, "fake", sign_keys.policy(), workers=4, ring_bytes=3 * CHUNK)
    finally:
        fake.set_device(0)
    assert_same(got, expected)
    assert fake.violations == []
    assert {d for d, _ in fake.allocations} == {1}
    assert fake.contexts == {1}
    assert seen[0].device == "fake:1"


def test_fake_catches_workers_on_the_wrong_device(fake, model, sign_keys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Workers that do not enter the load's device queue work from device 0."""
    enc, _ = model
    monkeypatch.setattr(StagingCopier, "worker_context", lambda self: contextlib.nullcontext())
    _load(enc, "fake:1", sign_keys.policy(), workers=2)
    assert any("from a thread on fake:0" in v for v in fake.violations)
    assert 0 in fake.contexts


def test_load_to_device_1_creates_nothing_on_device_0(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, expected = model
    got, _, _ = _load(enc, "fake:1", sign_keys.policy(), workers=3)
    assert_same(got, expected)
    assert fake.contexts == {1}, "pinned ring or a stream touched device 0"
    assert fake.violations == []


def test_every_tensor_256_aligned_and_gaps_zero(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, expected = model
    got, _, _ = _load(enc, "fake", sign_keys.policy(), workers=2)
    assert_same(got, expected)
    bufs = [t for _, t in fake.allocations if t.numel() > 240]  # segment buffers
    covered: dict[int, list[tuple[int, int]]] = {}
    for name, t in got.items():
        if t.numel() == 0:
            continue
        assert t.data_ptr() % 256 == 0, name
        for b in bufs:
            off = t.data_ptr() - b.data_ptr()
            if 0 <= off < b.numel():
                covered.setdefault(id(b), []).append((off, off + t.numel() * t.element_size()))
    for b in bufs:
        mask = torch.ones(b.numel(), dtype=torch.bool)
        for s, e in covered.get(id(b), []):
            mask[s:e] = False
        assert int(b[mask].count_nonzero()) == 0, "alignment gaps hold old device memory"


def test_oom_is_device_error_and_audited(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    fake.capacity = 1000
    exc, seen, sink = _fail(enc, "fake", sign_keys.policy())
    assert isinstance(exc, DeviceError)
    assert exc.message.startswith("out of memory on fake:0 allocating")
    assert "load fewer tensors" in (exc.hint or "")
    assert last(sink, "load.denied")["reason"].startswith("DeviceError: out of memory")
    assert _ring_zero(seen)


def test_invalid_ordinal_is_not_out_of_memory(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    exc, _, sink = _fail(enc, "fake:7", sign_keys.policy())
    assert isinstance(exc, DeviceError)
    assert exc.message == "no fake device 'fake:7': 2 visible"
    assert "out of memory" not in last(sink, "load.denied")["reason"]


def test_unknown_device_type_lists_backends(model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    exc, _, sink = _fail(enc, "tpu:0", sign_keys.policy())
    assert isinstance(exc, DeviceError)
    assert exc.message == "cannot load to device type 'tpu'"
    assert "'cpu'[:N]" in (exc.hint or "") and "'cuda'[:N]" in (exc.hint or "")
    assert last(sink, "load.denied")["outcome"] == "denied"


def test_failing_copy_wipes_device_and_ring_and_audits(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    fake.fail_copy_at = 4
    exc, seen, sink = _fail(enc, "fake", sign_keys.policy(), workers=2, ring_bytes=3 * CHUNK)
    assert isinstance(exc, DeviceError) and exc.message == "fake device: copy failed (injected)"
    assert _ring_zero(seen)
    for _, t in fake.allocations:
        assert int(t.count_nonzero()) == 0, "device memory not zeroed after the failure"
    assert last(sink, "load.denied")["reason"] == (
        "DeviceError: fake device: copy failed (injected)"
    )


def test_failing_discard_still_audits_and_keeps_no_dirty_ring(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    fake.fail_copy_at = 4

    def break_memsets(name: str, chunk: int) -> None:
        fake.fail_zero = True  # from the first record on: discard()'s memsets fail too

    audit, sink = memory_audit()
    seen: list[Any] = []
    with (
        pytest.raises(DeviceError) as e,
        observing(before_record=break_memsets, on_copier=seen.append),
    ):
        loader.load_file(
            enc, "fake", policy=sign_keys.policy(), audit=audit, workers=2, ring_bytes=3 * CHUNK
        )
    exc = e.value
    assert isinstance(exc, DeviceError) and "copy failed" in exc.message  # the first error
    reason = last(sink, "load.denied")["reason"]
    assert reason.startswith("DeviceError: fake device: copy failed (injected) (cleanup failed:")
    assert "memset failed" in reason
    assert _ring_zero(seen)  # host memory is wiped by the CPU whatever the device does
    for blocks in pinned_pool._free.values():
        assert all(int(b.count_nonzero()) == 0 for b in blocks)


def test_keyboard_interrupt_wipes_and_audits(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model

    def stop(name: str, chunk: int) -> None:
        if chunk == 3:
            raise KeyboardInterrupt

    audit, sink = memory_audit()
    seen: list[Any] = []
    with pytest.raises(KeyboardInterrupt), observing(before_record=stop, on_copier=seen.append):
        loader.load_file(enc, "fake", policy=sign_keys.policy(), audit=audit, workers=2)
    assert _ring_zero(seen)
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations if t.numel() > 240)
    assert last(sink, "load.denied")["reason"] == "cancelled (KeyboardInterrupt)"


def test_pinned_ring_power_of_two_kept_and_released(fake, model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    _, seen, _ = _load(enc, "fake", sign_keys.policy(), workers=1, ring_bytes=3 * CHUNK)
    ring = seen[0].ring_bytes
    assert ring & (ring - 1) == 0 and ring >= 3 * CHUNK
    assert pinned_pool.pinned_bytes() >= ring  # kept for the next load
    _, again, _ = _load(enc, "fake", sign_keys.policy(), workers=1, ring_bytes=3 * CHUNK)
    assert again[0]._ring is seen[0]._ring  # reused, not reallocated
    assert loader.release_pinned_memory() >= ring
    assert pinned_pool.pinned_bytes() == 0


# --------------------------------------------------------------------------- GPU decryption


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's CPU interpreter: no GPU here


GPU_CHUNK = 16384  # the interpreter pays per kernel launch: 3 records per load


@pytest.fixture
def gmodel(tmp_path: Path, file_key: str, sign_keys: Any) -> tuple[Path, dict[str, torch.Tensor]]:
    src = tmp_path / "plain.safetensors"
    expected = write_st(src, LAYOUT)
    enc = tmp_path / "genc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=GPU_CHUNK)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    return enc, expected


def _no_host_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fmt.ChunkCipher.decrypt_record_into

    def refuse(self: Any, index: int, ct: memoryview, out: memoryview) -> None:
        if index != 0:  # record 0 is the safetensors header, opened with the key
            raise AssertionError(f"weights (record {index}) decrypted on the host")
        real(self, index, ct, out)

    monkeypatch.setattr(fmt.ChunkCipher, "decrypt_record_into", refuse)


@pytest.mark.parametrize("device", ["fake", "fake:1"])
def test_gpu_decrypt_signed(fake, gmodel, sign_keys, interpret, monkeypatch, device) -> None:  # type: ignore[no-untyped-def]
    enc, expected = gmodel
    _no_host_decrypt(monkeypatch)
    got, seen, sink = _load(enc, device, sign_keys.policy(), workers=2, decrypt_on="gpu")
    assert_same(got, expected)
    assert fake.violations == []
    assert _ring_zero(seen)
    assert last(sink, "load.ok")["extra"]["decrypt_on"] == "gpu"
    # key schedules and scratch slots wiped on the device after the last kernel
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations if t.numel() <= 240)


def test_gpu_decrypt_unsigned_checks_tag_first(
    fake, tmp_path, file_key, interpret, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "p.safetensors"
    expected = write_st(src, LAYOUT)
    enc = tmp_path / "m.safetensors"
    encrypt(src, enc, file_key, chunk_size=GPU_CHUNK)
    _no_host_decrypt(monkeypatch)
    got, _, _ = _load(enc, "fake", UnsafeNoVerification(), workers=2, decrypt_on="gpu")
    assert_same(got, expected)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, n = hdr.record_span(2)
    flip(enc, off + n - 1)  # record 2's tag
    fake.allocations.clear()
    exc, seen, sink = _fail(enc, "fake", UnsafeNoVerification(), workers=2, decrypt_on="gpu")
    assert isinstance(exc, IntegrityError) and exc.chunk == 2
    assert "data record 2 failed authentication" in exc.message
    assert last(sink, "tamper.detected")["object"]["chunk"] == 2
    assert _ring_zero(seen)
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations)


def test_gpu_decrypt_tamper_signed_zeroes_device(fake, gmodel, sign_keys, interpret) -> None:  # type: ignore[no-untyped-def]
    enc, _ = gmodel
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, _ = hdr.record_span(hdr.num_chunks)
    flip(enc, off + 3)
    exc, seen, sink = _fail(enc, "fake", sign_keys.policy(), workers=2, decrypt_on="gpu")
    assert isinstance(exc, IntegrityError) and exc.chunk == hdr.num_chunks
    assert _ring_zero(seen)
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations)
    assert "load.ok" not in events(sink)


def test_auto_falls_back_and_says_why(fake, model, sign_keys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    enc, expected = model
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    got, _, sink = _load(enc, "fake", sign_keys.policy(), decrypt_on="auto")
    assert_same(got, expected)
    ok = last(sink, "load.ok")["extra"]
    assert ok["decrypt_on"] == "cpu"
    assert ok["decrypt_fallback"] == "no Triton target for 'fake' devices"
    exc, _, sink = _fail(enc, "fake", sign_keys.policy(), decrypt_on="gpu")
    assert isinstance(exc, DeviceError)
    assert exc.message == "cannot decrypt on the device: no Triton target for 'fake' devices"
    assert last(sink, "load.denied")["reason"].startswith("DeviceError: cannot decrypt")


def test_decrypt_on_values(model, sign_keys) -> None:  # type: ignore[no-untyped-def]
    enc, _ = model
    exc, _, _ = _fail(enc, "cpu", sign_keys.policy(), decrypt_on="gpu")
    assert isinstance(exc, ConfigError)
    assert exc.message == "decrypt_on='gpu' needs a GPU device, not 'cpu'"
    audit, _ = memory_audit()
    with pytest.raises(ConfigError, match="decrypt_on='tpu' is not one of auto, gpu, cpu"):
        loader.load_file(enc, policy=sign_keys.policy(), audit=audit, decrypt_on="tpu")


def test_registry_decorator_and_cpu_backend() -> None:
    from weightguard._internal.devices import available_backends

    assert {"cpu", "cuda", "fake"} <= set(available_backends())
    cpu = get_backend("cpu")
    assert cpu.align == 64 and not cpu.asynchronous
    with pytest.raises(DeviceError, match="the CPU is device 'cpu'"):
        cpu.resolve("cpu:1")


# --------------------------------------------------------------------------- cuda backend
# How torch.cuda's errors are classified.  Mocked: no GPU here (the real allocations
# are in tests/load/test_cuda.py: test_cuda_oom_releases_memory and
# test_cuda_invalid_ordinal_is_not_oom).


def _cuda_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> Any:
    from weightguard._internal.devices.base import DeviceRef

    cuda = get_backend("cuda")

    def empty(*a: Any, **k: Any) -> None:
        raise exc

    monkeypatch.setattr(torch, "empty", empty)
    return lambda: cuda.alloc(DeviceRef("cuda", 1), 1 << 20)


def test_cuda_backend_only_real_oom_is_out_of_memory(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    alloc = _cuda_with(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(DeviceError, match=r"^out of memory on cuda:1 allocating 1048576 bytes"):
        alloc()
    alloc = _cuda_with(monkeypatch, RuntimeError("CUDA error: invalid device ordinal\nmore"))
    with pytest.raises(DeviceError) as e:
        alloc()
    assert e.value.message == (
        "cannot allocate 1048576 bytes on cuda:1: CUDA error (CUDA error: invalid device ordinal)"
    )
    assert "nvidia-smi" in (e.value.hint or "")


def test_cuda_backend_resolves_current_device_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cuda = get_backend("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert str(cuda.resolve("cuda")) == "cuda:3"
    assert str(cuda.resolve("cuda:2")) == "cuda:2"
    with pytest.raises(DeviceError) as e:
        cuda.resolve("cuda:4")
    assert e.value.message == (
        "no CUDA device 'cuda:4': this process sees 4 GPU(s) (cuda:0 to cuda:3)"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="requested but CUDA is not available"):
        cuda.resolve("cuda")


def test_gpu_decrypt_mixed_encrypted_and_plain_shards(
    fake, tmp_path, file_key, sign_keys, interpret
) -> None:  # type: ignore[no-untyped-def]
    """One load, one ring: ciphertext records go to the kernel, plain records are copied."""
    d = tmp_path / "release"
    d.mkdir()
    expected: dict[str, torch.Tensor] = {}
    a = write_st(tmp_path / "a.safetensors", [("a.w", "F32", (40, 41)), ("a.odd", "U8", (3,))])
    encrypt(tmp_path / "a.safetensors", d / "a.safetensors", file_key, chunk_size=GPU_CHUNK)
    b = write_st(d / "b.safetensors", [("b.odd", "U8", (5,)), ("b.h", "F16", (999,))], seed=1)
    expected |= a | b
    sign(d, d / "model.sig", sign_keys, chunk_size=GPU_CHUNK)
    got, seen, sink = _load(d, "fake", sign_keys.policy(), workers=2, decrypt_on="gpu")
    assert_same(got, expected)
    assert fake.violations == []
    assert _ring_zero(seen)
    assert last(sink, "load.ok")["extra"]["decrypt_on"] == "gpu"


@pytest.mark.parametrize("decrypt_on", ["auto", "gpu"])
def test_gpu_decrypt_ctr_bit_flip_signed_after_edit_is_refused(
    fake, tmp_path, file_key, sign_keys, interpret, decrypt_on
) -> None:  # type: ignore[no-untyped-def]
    """CTR is malleable: someone who edits the ciphertext between encrypt and sign (no key
    needed) flips chosen plaintext bits and the signature covers the edit.  The GCM tag
    must still gate every record on the device path, as it does on the CPU path."""
    src = tmp_path / "p.safetensors"
    write_st(src, LAYOUT)
    enc = tmp_path / "m" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=GPU_CHUNK)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, _ = hdr.record_span(1)
    flip(enc, off + 3)  # a chosen plaintext bit of record 1 (the first tensor's bytes)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)  # signs the edited bytes
    exc, seen, sink = _fail(enc, "fake", sign_keys.policy(), workers=2, decrypt_on=decrypt_on)
    assert isinstance(exc, IntegrityError) and exc.chunk == 1
    assert "data record 1 failed authentication" in exc.message
    assert last(sink, "tamper.detected")["object"]["chunk"] == 1
    assert "load.ok" not in events(sink)
    assert _ring_zero(seen)
    assert all(int(t.count_nonzero()) == 0 for _, t in fake.allocations)
    # the CPU path refuses the same file the same way
    exc, _, _ = _fail(enc, "fake", sign_keys.policy(), workers=2, decrypt_on="cpu")
    assert isinstance(exc, IntegrityError) and exc.chunk == 1


# --------------------------------------------------------------------------- review fixes
# (issue 24: each through the fake device; the CUDA versions are in test_cuda.py)


@pytest.fixture
def live_copiers(monkeypatch: pytest.MonkeyPatch) -> list[StagingCopier]:
    made: list[StagingCopier] = []
    real = StagingCopier.__init__

    def init(self: StagingCopier, *a: Any, **k: Any) -> None:
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(StagingCopier, "__init__", init)
    return made


def test_ring_slots_zeroed_outside_the_lock_and_ciphertext_not_at_all(
    fake, model, gmodel, sign_keys, interpret, live_copiers, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[bool, bool]] = []  # (held plaintext, copier lock held)
    real = StagingCopier._zero_slot

    def spy(self: StagingCopier, slot: Any) -> None:
        calls.append((slot.plain, self._cond._is_owned()))  # type: ignore[attr-defined]
        real(self, slot)

    monkeypatch.setattr(StagingCopier, "_zero_slot", spy)
    enc, expected = model
    got, _, _ = _load(enc, "fake", sign_keys.policy(), workers=3, ring_bytes=3 * CHUNK)
    assert_same(got, expected)
    assert any(plain for plain, _ in calls), "host-decrypted slots are zeroed when reclaimed"
    assert not any(locked for _, locked in calls), "slot zeroed under the copier's lock"
    calls.clear()
    genc, gexpected = gmodel
    got, seen, _ = _load(genc, "fake", sign_keys.policy(), workers=3, decrypt_on="gpu")
    assert_same(got, gexpected)
    assert calls and not any(plain for plain, _ in calls), "a ciphertext-only slot was zeroed"
    assert _ring_zero(seen)  # the end-of-load wipe still leaves the ring zero


@pytest.mark.parametrize("decrypt_on", ["cpu", "gpu"])
def test_ring_wiped_once_per_load(
    fake, gmodel, sign_keys, interpret, monkeypatch, decrypt_on
) -> None:  # type: ignore[no-untyped-def]
    from weightguard._internal.load import copiers

    wiped: list[int] = []
    real = copiers.wipe

    def spy(buf: Any) -> None:
        wiped.append(len(buf))
        real(buf)

    monkeypatch.setattr(copiers, "wipe", spy)
    enc, expected = gmodel
    got, seen, _ = _load(enc, "fake", sign_keys.policy(), workers=2, decrypt_on=decrypt_on)
    assert_same(got, expected)
    assert wiped.count(seen[0].ring_bytes) == 1  # finish() wipes; close() has nothing left
    assert _ring_zero(seen)


def test_acquire_waits_on_device_events_without_the_lock(
    fake, model, sign_keys, live_copiers, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import threading

    waits: list[tuple[str, bool]] = []
    real = FakeEvent.synchronize

    def spy(self: FakeEvent) -> None:
        held = any(c._cond._is_owned() for c in live_copiers)  # type: ignore[attr-defined]
        waits.append((threading.current_thread().name, held))
        real(self)

    monkeypatch.setattr(FakeEvent, "synchronize", spy)
    fake.delay = 0.005  # copies lag: 2 slots for 4 workers, acquire must wait on events
    enc, expected = model
    got, _, _ = _load(enc, "fake", sign_keys.policy(), workers=4, ring_bytes=2 * CHUNK)
    assert_same(got, expected)
    in_workers = [held for name, held in waits if name.startswith("wg-load")]
    assert in_workers, "the test never made a worker wait for a slot's copy"
    assert not any(in_workers), "a worker waited on a device event holding the copier's lock"


def test_kernel_compiled_once_before_the_workers(
    fake, gmodel, sign_keys, interpret, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import threading

    from weightguard._internal.devices import aes_ctr_triton as aes

    monkeypatch.setattr(aes, "_warm", {})
    launches: list[tuple[str, int]] = []
    real = aes.ctr_decrypt

    def spy(data: Any, *a: Any) -> None:
        n = a[3] if len(a) > 3 else int(data.numel())
        launches.append((threading.current_thread().name, n))
        real(data, *a)

    monkeypatch.setattr(aes, "ctr_decrypt", spy)
    enc, expected = gmodel
    for _ in range(2):
        got, _, sink = _load(enc, "fake", sign_keys.policy(), workers=3, decrypt_on="auto")
        assert_same(got, expected)
        assert last(sink, "load.ok")["extra"]["decrypt_on"] == "gpu"
    # one warm-up launch (the FIPS-197 block), in the caller's thread, before any worker;
    # the second load compiles nothing again
    assert launches[0] == (threading.current_thread().name, 16)
    assert [n for _, n in launches].count(16) == 1
    assert all(not name.startswith("wg-load") for name, _ in launches)  # kernels: streams


def test_broken_kernel_falls_back_on_auto_and_refuses_gpu(
    fake, model, sign_keys, interpret, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from weightguard._internal.devices import aes_ctr_triton as aes

    monkeypatch.setattr(aes, "_warm", {})

    def broken(index: Any) -> None:
        raise RuntimeError("failed to build the launcher\nsecond line")

    monkeypatch.setattr(aes, "_fips197_check", broken)
    enc, expected = model
    got, _, sink = _load(enc, "fake", sign_keys.policy(), decrypt_on="auto")
    assert_same(got, expected)
    why = "the AES kernel does not compile or run here (RuntimeError: failed to build the launcher)"
    extra = last(sink, "load.ok")["extra"]
    assert (extra["decrypt_on"], extra["decrypt_fallback"]) == ("cpu", why)
    exc, _, _ = _fail(enc, "fake", sign_keys.policy(), decrypt_on="gpu")
    assert isinstance(exc, DeviceError) and exc.message == f"cannot decrypt on the device: {why}"


def test_oom_uploading_aes_tables_is_device_error(fake, gmodel, sign_keys, interpret) -> None:  # type: ignore[no-untyped-def]
    enc, _ = gmodel
    fake.capacity = 4096  # less than the 5 KiB of tables
    exc, seen, sink = _fail(enc, "fake", sign_keys.policy(), decrypt_on="gpu")
    assert isinstance(exc, DeviceError)
    assert exc.message.startswith("out of memory on fake:0 allocating 5120 bytes")
    assert last(sink, "load.denied")["reason"].startswith("DeviceError: out of memory")
    assert _ring_zero(seen)
