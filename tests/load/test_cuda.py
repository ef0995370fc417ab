"""Secure loading into CUDA memory (skipped without a GPU).

Byte-for-byte equality with the CPU load (misaligned offsets, empty tensors), the pinned
staging ring zero after success and after failures, device memory released on OOM and
on failure, and host memory bounded by the ring whatever the model size.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import gc
import os
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
    memory_audit,
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
    zeros,
)
from weightguard import loader
from weightguard._internal.devices.observe import observing
from weightguard._internal.format import layout as fmt
from weightguard.errors import DeviceError, IntegrityError

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CHUNK = 4096


@pytest.fixture(autouse=True)
def _allow_test_key(file_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller names the test key file (a header's file:// reference alone is refused)."""
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


# Many chunks, odd sizes: every tensor after the first is misaligned for its dtype and
# several straddle chunk boundaries.
LAYOUT = [
    *MODEL_LAYOUT,
    ("tail.odd", "U8", (5,)),
    ("big.f32", "F32", (97, 129)),
    ("big.f16", "F16", (4099,)),
    ("big.i32", "I32", (1501,)),
    ("empty2", "I64", (0,)),
]


def _sync_allocated() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


def _model(tmp_path: Path, key: str, keys: Any, *, layout: Any = LAYOUT, chunk: int = CHUNK):  # type: ignore[no-untyped-def]
    src = tmp_path / "plain.safetensors"
    expected = write_st(src, layout)
    d = tmp_path / "enc"
    d.mkdir(exist_ok=True)
    enc = d / "model.safetensors"
    encrypt(src, enc, key, chunk_size=chunk)
    sign(enc, enc.with_name("model.safetensors.sig"), keys)
    return src, enc, expected


def _load(path: Path, device: str, policy: Any, **kw: Any) -> tuple[Any, list[memoryview], Any]:
    audit, sink = memory_audit()
    seen: list[memoryview] = []
    before = kw.pop("before_record", None)
    with observing(before_record=before, on_copier=lambda c: seen.extend(c.staging_views())):
        out = loader.load_file(path, device, policy=policy, audit=audit, **kw)
    return out, seen, sink


@pytest.mark.parametrize("decrypt_on", ["cpu", "gpu"])
@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("ring_slots", [2, 64])
def test_cuda_equals_cpu_byte_for_byte(  # type: ignore[no-untyped-def]
    tmp_path, file_key, sign_keys, workers, ring_slots, decrypt_on
) -> None:
    _, enc, expected = _model(tmp_path, file_key, sign_keys)
    pol = sign_keys.policy()
    cpu, _, _ = _load(enc, "cpu", pol, workers=workers)
    gpu, seen, sink = _load(
        enc, "cuda:0", pol, workers=workers, ring_bytes=ring_slots * CHUNK, decrypt_on=decrypt_on
    )
    assert set(gpu) == set(cpu) == set(expected)
    for name, t in gpu.items():
        assert t.device.type == "cuda", name
        assert t.dtype == cpu[name].dtype and t.shape == cpu[name].shape, name
        assert t.is_contiguous(), name
    assert_same(gpu, expected)
    assert_same({k: v.cpu() for k, v in gpu.items()}, cpu)
    # usable like any tensor: arithmetic on the device matches the CPU
    assert torch.equal((gpu["big.f32"] * 2).cpu(), cpu["big.f32"] * 2)
    assert seen and all(zeros(v) for v in seen), "pinned staging ring not zero after load"
    ok = last(sink, "load.ok")
    assert ok["object"]["device"] == "cuda:0"
    assert ok["extra"]["decrypt_on"] == decrypt_on
    for name, t in gpu.items():
        assert t.numel() == 0 or t.data_ptr() % 256 == 0, name
    assert events(sink) == ["load.start", "verify.ok", "key.unwrap", "load.ok"]


def test_cuda_plain_signed_and_subset(tmp_path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "model.safetensors"
    expected = write_st(src, LAYOUT)
    sign(src, src.with_name("model.safetensors.sig"), sign_keys, chunk_size=CHUNK)
    gpu, seen, _ = _load(src, "cuda", sign_keys.policy(), workers=3, ring_bytes=4 * CHUNK)
    assert_same(gpu, expected)
    assert all(zeros(v) for v in seen)
    audit, _ = memory_audit()
    with loader.open_model(src, "cuda:0", policy=sign_keys.policy(), audit=audit) as m:
        part = m.load(["big.f16", "empty2", "odd.bytes"])
    assert_same(part, {k: expected[k] for k in ("big.f16", "empty2", "odd.bytes")})


def test_cuda_tamper_zeroes_staging_and_frees_device(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    _, enc, _ = _model(tmp_path, file_key, sign_keys)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, _ = hdr.record_span(hdr.num_chunks - 1)
    flip(enc, off + 7)
    audit, sink = memory_audit()
    seen: list[memoryview] = []
    start = _sync_allocated()
    with (
        pytest.raises(IntegrityError, match="chunk digest does not match") as e,
        observing(on_copier=lambda c: seen.extend(c.staging_views())),
    ):
        loader.load_file(
            enc,
            "cuda:0",
            policy=sign_keys.policy(),
            audit=audit,
            workers=4,
            ring_bytes=3 * CHUNK,
        )
    assert e.value.chunk == hdr.num_chunks - 1
    del e
    assert seen and all(zeros(v) for v in seen), "staging ring not zero after tamper"
    assert last(sink, "tamper.detected")["outcome"] == "denied"
    assert "load.ok" not in events(sink)
    assert _sync_allocated() == start


def test_cuda_tag_failure_without_signature(tmp_path, file_key) -> None:  # type: ignore[no-untyped-def]
    """AEAD failure (signature not checked): staging zero, nothing returned."""
    from weightguard.policy import UnsafeNoVerification

    src = tmp_path / "plain.safetensors"
    write_st(src, LAYOUT)
    enc = tmp_path / "model.safetensors"
    encrypt(src, enc, file_key, chunk_size=CHUNK)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, n = hdr.record_span(3)
    flip(enc, off + n - 1)  # record 3's tag
    audit, sink = memory_audit()
    seen: list[memoryview] = []
    start = _sync_allocated()
    with (
        pytest.raises(IntegrityError, match="record 3 failed authentication"),
        observing(on_copier=lambda c: seen.extend(c.staging_views())),
    ):
        loader.load_file(enc, "cuda:0", policy=UnsafeNoVerification(), audit=audit, workers=2)
    assert seen and all(zeros(v) for v in seen)
    assert last(sink, "tamper.detected")["object"]["chunk"] == 3
    assert _sync_allocated() == start


def test_cuda_keyboard_interrupt(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    _, enc, _ = _model(tmp_path, file_key, sign_keys)

    def interrupt(name: str, chunk: int) -> None:
        if chunk == 5:
            raise KeyboardInterrupt

    audit, sink = memory_audit()
    seen: list[memoryview] = []
    start = _sync_allocated()
    with (
        pytest.raises(KeyboardInterrupt),
        observing(before_record=interrupt, on_copier=lambda c: seen.extend(c.staging_views())),
    ):
        loader.load_file(enc, "cuda:0", policy=sign_keys.policy(), audit=audit, workers=3)
    assert seen and all(zeros(v) for v in seen)
    assert last(sink, "load.denied")["reason"] == "cancelled (KeyboardInterrupt)"
    assert _sync_allocated() == start


def test_cuda_oom_releases_memory(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    layout = [("a", "F32", (1024, 1024)), ("b", "F32", (1024, 1024))]  # 8 MiB
    _, enc, _ = _model(tmp_path, file_key, sign_keys, layout=layout, chunk=1 << 20)
    start = _sync_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    # cap this process's allocator just above what it holds now: the model cannot fit
    torch.cuda.empty_cache()
    cap = start + (2 << 20)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
    audit, sink = memory_audit()
    try:
        with pytest.raises(DeviceError, match="out of memory on cuda:0") as e:
            loader.load_file(enc, "cuda:0", policy=sign_keys.policy(), audit=audit)
        assert "load fewer tensors" in (e.value.hint or "")
        del e
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert _sync_allocated() == start
    denied = last(sink, "load.denied")
    assert denied["reason"].startswith("DeviceError")


def _rss_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_cuda_host_memory_bounded_by_ring(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """A 256 MiB model loads to CUDA with host memory growth ~ ring + buffers, not 256 MiB."""
    mib = 1 << 20
    layout = [(f"layer{i}", "F32", (1024, 1024)) for i in range(64)]  # 256 MiB
    _, enc, _ = _model(tmp_path, file_key, sign_keys, layout=layout, chunk=mib)
    pol = sign_keys.policy()
    # warm-up: CUDA context, pinned allocator, imports (not counted)
    warm = tmp_path / "warm"
    warm.mkdir()
    _, wenc, _ = _model(warm, file_key, sign_keys, layout=layout[:2], chunk=mib)
    _load(wenc, "cuda:0", pol, workers=4, ring_bytes=16 * mib)
    gc.collect()
    fd = os.open(enc, os.O_RDONLY)  # cold page cache: file pages are not counted in RSS anyway
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if not _rss_peak_reset():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    base = _status("VmRSS")
    out, seen, _ = _load(enc, "cuda:0", pol, workers=4, ring_bytes=16 * mib)
    peak = _status("VmHWM") - base
    assert len(out) == 64 and all(t.device.type == "cuda" for t in out.values())
    assert all(zeros(v) for v in seen)
    # ring (16 MiB) + 4 worker ciphertext buffers (4 MiB) + slack for the interpreter
    assert peak < 96 * mib, f"host memory grew by {peak / mib:.0f} MiB loading 256 MiB"
    del out


# --------------------------------------------------------------------------- review fixes
# (each also runs through the fake device in tests/load/test_devices.py)


def test_cuda_current_device_after_set_device(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """torchrun pattern: set_device(N), then device="cuda" loads to cuda:N correctly."""
    n = torch.cuda.device_count() - 1
    _, enc, expected = _model(tmp_path, file_key, sign_keys)
    prev = torch.cuda.current_device()
    torch.cuda.set_device(n)
    try:
        gpu, seen, _ = _load(enc, "cuda", sign_keys.policy(), workers=4, ring_bytes=2 * CHUNK)
    finally:
        torch.cuda.set_device(prev)
    assert {t.device for t in gpu.values()} == {torch.device("cuda", n)}
    assert_same(gpu, expected)
    assert all(zeros(v) for v in seen)


def test_cuda_n_creates_no_context_on_gpu0(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """A load to cuda:1 in a fresh process leaves no CUDA context on GPU 0."""
    import subprocess
    import sys

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    _, enc, _ = _model(tmp_path, file_key, sign_keys)
    code = (
        "import sys, torch\n"
        "from weightguard import loader\n"
        "from weightguard.policy import UnsafeNoVerification\n"
        "loader.load_file(sys.argv[1], 'cuda:1', policy=UnsafeNoVerification(), workers=3)\n"
        "import ctypes\n"
        "lib = ctypes.CDLL('libcuda.so.1'); ctx = ctypes.c_void_p(); dev = ctypes.c_int()\n"
        "lib.cuDeviceGet(ctypes.byref(dev), 0)\n"
        "flags = ctypes.c_uint(); active = ctypes.c_int()\n"
        "lib.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active))\n"
        "print('active0', active.value)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(enc)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "active0 0" in out.stdout


def test_cuda_invalid_ordinal_is_not_oom(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    _, enc, _ = _model(tmp_path, file_key, sign_keys)
    n = torch.cuda.device_count()
    audit, sink = memory_audit()
    with pytest.raises(DeviceError, match=f"no CUDA device 'cuda:{n}'") as e:
        loader.load_file(enc, f"cuda:{n}", policy=sign_keys.policy(), audit=audit)
    assert "out of memory" not in e.value.message
    assert last(sink, "load.denied")["reason"].startswith("DeviceError: no CUDA device")


def test_cuda_alignment_probe_fp8_gemm(tmp_path, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """A 3-byte U8 tensor, then an fp8 matrix and a bf16 bias: all 256-aligned, GEMM runs."""
    import json
    import struct

    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is None:
        pytest.skip("torch without float8")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, generator=g).to(fp8)
    bias = torch.randn(64, generator=g).to(torch.bfloat16)
    blobs = [
        b"abc",
        a.view(torch.uint8).numpy().tobytes(),
        bias.view(torch.uint8).numpy().tobytes(),
    ]
    hdr: dict[str, Any] = {}
    off = 0
    for name, dt, shape, raw in (
        ("odd", "U8", [3], blobs[0]),
        ("w", "F8_E4M3", [64, 32], blobs[1]),
        ("bias", "BF16", [64], blobs[2]),
    ):
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    hj = json.dumps(hdr).encode()
    p = tmp_path / "probe.safetensors"
    p.write_bytes(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    sign(p, p.with_name("probe.safetensors.sig"), sign_keys, chunk_size=CHUNK)
    got, _, _ = _load(p, "cuda:0", sign_keys.policy())
    for name, t in got.items():
        assert t.data_ptr() % 256 == 0, name
    assert torch.equal(got["w"].view(torch.uint8).cpu(), a.view(torch.uint8))
    x = torch.randn(16, 32, device="cuda").to(fp8)
    one = torch.ones((), device="cuda")
    y = torch._scaled_mm(x, got["w"].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    y = y + got["bias"]
    ref = (x.float() @ got["w"].float().t()).to(torch.bfloat16) + got["bias"]
    assert torch.allclose(y.float(), ref.float(), atol=0.5, rtol=0.05)


def test_cuda_gpu_decrypt_never_decrypts_weights_on_host(
    tmp_path, file_key, sign_keys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    _, enc, expected = _model(tmp_path, file_key, sign_keys)
    real = fmt.ChunkCipher.decrypt_record_into

    def refuse(self: Any, index: int, ct: memoryview, out: memoryview) -> None:
        assert index == 0, f"weights (record {index}) decrypted on the host"
        real(self, index, ct, out)

    monkeypatch.setattr(fmt.ChunkCipher, "decrypt_record_into", refuse)
    gpu, seen, sink = _load(enc, "cuda:0", sign_keys.policy(), workers=4, decrypt_on="gpu")
    assert_same(gpu, expected)
    assert all(zeros(v) for v in seen)
    assert last(sink, "load.ok")["extra"]["decrypt_on"] == "gpu"


def test_cuda_pinned_ring_release(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    from weightguard._internal.devices import pinned

    _, enc, _ = _model(tmp_path, file_key, sign_keys)
    _load(enc, "cuda:0", sign_keys.policy(), ring_bytes=3 * CHUNK)
    assert pinned.pinned_bytes() >= pinned.ring_size(3 * CHUNK)
    assert loader.release_pinned_memory() > 0
    assert pinned.pinned_bytes() == 0


@pytest.mark.parametrize("decrypt_on", ["auto", "gpu"])
def test_cuda_ctr_bit_flip_signed_after_edit_is_refused(  # type: ignore[no-untyped-def]
    tmp_path, file_key, sign_keys, decrypt_on
) -> None:
    """Ciphertext edited between encrypt and sign: the digest matches, the GCM tag not."""
    src = tmp_path / "plain.safetensors"
    write_st(src, LAYOUT)
    enc = tmp_path / "enc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=CHUNK)
    with open(enc, "rb") as f:
        hdr = fmt.read_header(f, path=str(enc))
    off, _ = hdr.record_span(1)
    flip(enc, off + 3)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    audit, sink = memory_audit()
    seen: list[memoryview] = []
    start = _sync_allocated()
    with (
        pytest.raises(IntegrityError, match="data record 1 failed authentication"),
        observing(on_copier=lambda c: seen.extend(c.staging_views())),
    ):
        loader.load_file(
            enc, "cuda:0", policy=sign_keys.policy(), audit=audit, workers=4, decrypt_on=decrypt_on
        )
    assert seen and all(zeros(v) for v in seen)
    assert last(sink, "tamper.detected")["object"]["chunk"] == 1
    assert "load.ok" not in events(sink)
    assert _sync_allocated() == start


# --------------------------------------------------------------------------- issue 24 fixes


def test_cuda_kernel_one_compiled_variant_whatever_the_sizes(tmp_path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    """Warm-up once in the caller's thread; record sizes 1, 16k, odd: one variant."""
    from weightguard._internal.devices import aes_ctr_triton as aes

    layout = [("one", "U8", (1,)), ("mid", "U8", (16384,)), ("odd", "U8", (12347,))]
    _, enc, expected = _model(tmp_path, file_key, sign_keys, layout=layout, chunk=CHUNK)
    got, _, sink = _load(enc, "cuda:0", sign_keys.policy(), workers=8, decrypt_on="auto")
    assert_same(got, expected)
    assert last(sink, "load.ok")["extra"]["decrypt_on"] == "gpu"
    assert aes._warm[("cuda", 0, aes.table_mode())] is None
    k = aes._kernel(False)
    cache = k.device_caches[0][0]
    assert len(cache) == 1, f"{len(cache)} compiled variants"


def test_cuda_kernel_64_bit_offsets() -> None:
    """A 32 GiB + 64 byte record: the last blocks (index >= 2^31) are right, nothing
    below the buffer is written."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from weightguard._internal.devices import aes_ctr_triton as aes

    n = (32 << 30) + 64
    free, _ = torch.cuda.mem_get_info(0)
    if free < n + (2 << 30):
        pytest.skip(f"needs {n + (2 << 30)} bytes of free GPU memory, has {free}")
    key, nonce = os.urandom(32), os.urandom(12)
    buf = torch.zeros(n + 4096, dtype=torch.uint8, device="cuda:0")
    data = buf[4096:]
    j0 = nonce + b"\x00\x00\x00\x01"
    ctr = (
        torch.tensor(
            [int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)], dtype=torch.int64
        )
        .to(torch.uint32)
        .cuda()
    )
    rk = torch.tensor(aes.expand_key(key), dtype=torch.int64).to(torch.uint32).cuda()
    aes.ctr_decrypt(data, ctr, rk, aes.tables("cuda:0"))
    torch.cuda.synchronize()
    assert int(buf[:4096].count_nonzero()) == 0
    last_blocks = range(n // 16 - 4, n // 16)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    want = ecb.update(b"".join(nonce + ((2 + b) % 2**32).to_bytes(4, "big") for b in last_blocks))
    assert bytes(data[-64:].cpu().numpy()) == want
    del buf, data
    torch.cuda.empty_cache()


def test_cuda_ring_rules(tmp_path, file_key, sign_keys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No event waited on under the copier's lock, ciphertext slots never zeroed one by
    one, the ring wiped once per load."""
    import threading

    from weightguard._internal.load import copiers
    from weightguard._internal.load.copiers import StagingCopier

    made: list[Any] = []
    init = StagingCopier.__init__
    monkeypatch.setattr(
        StagingCopier, "__init__", lambda self, *a, **k: (init(self, *a, **k), made.append(self))[0]
    )
    waits: list[bool] = []
    sync = torch.cuda.Event.synchronize

    def spy_sync(self: Any) -> None:
        if threading.current_thread().name.startswith("wg-load"):
            waits.append(any(c._cond._is_owned() for c in made))
        sync(self)

    monkeypatch.setattr(torch.cuda.Event, "synchronize", spy_sync)
    zeroed: list[bool] = []
    zero_slot = StagingCopier._zero_slot
    monkeypatch.setattr(
        StagingCopier,
        "_zero_slot",
        lambda self, slot: (zeroed.append(slot.plain), zero_slot(self, slot))[1],
    )
    wiped: list[int] = []
    wipe = copiers.wipe
    monkeypatch.setattr(copiers, "wipe", lambda b: (wiped.append(len(b)), wipe(b))[1])
    _, enc, expected = _model(tmp_path, file_key, sign_keys)
    got, seen, _ = _load(
        enc, "cuda:0", sign_keys.policy(), workers=8, ring_bytes=2 * CHUNK, decrypt_on="gpu"
    )
    assert_same(got, expected)
    assert not any(waits)
    assert zeroed and not any(zeroed)
    assert wiped.count(made[0].ring_bytes) == 1
    assert seen and all(zeros(v) for v in seen)


def test_cuda_oom_uploading_tables_is_device_error(
    tmp_path, file_key, sign_keys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    _, enc, _ = _model(tmp_path, file_key, sign_keys)
    real = torch.empty

    def empty(*a: Any, **k: Any) -> Any:
        if a and a[0] == 5120 and str(k.get("device", "")).startswith("cuda"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 5120 bytes")
        return real(*a, **k)

    monkeypatch.setattr(torch, "empty", empty)
    audit, sink = memory_audit()
    with pytest.raises(DeviceError, match="out of memory on cuda:0 allocating 5120 bytes"):
        loader.load_file(enc, "cuda:0", policy=sign_keys.policy(), audit=audit, decrypt_on="gpu")
    assert last(sink, "load.denied")["reason"].startswith("DeviceError: out of memory")
