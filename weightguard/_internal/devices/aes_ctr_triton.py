"""AES-256-CTR on the GPU (Triton), with GCM's counter layout.

A v1 record is AES-256-GCM, whose ciphertext is AES-256-CTR with the counter block
``nonce(12) || u32be(c)`` starting at ``c = 2`` (``J0 = nonce || 1`` masks the tag), so
the device decrypts existing artifacts bit-exactly; the record's GCM tag (and its
signed digest, when signed) is checked on the CPU before the ciphertext reaches the
device (CTR alone is malleable: the tag is what ties the bytes to the key).

Secrets stay in device memory: the 60-word key schedule is a uint32 device tensor the
kernel loads (Triton specialises integer arguments and caches compiled kernels, so key
bits must never be a scalar argument or a ``constexpr``); the caller zeroes it on the
stream of the last kernel that used it.  The counter block is loaded from device memory
too (it sits in the 16 bytes the record's tag occupied).  T-table AES: the four
256-entry tables and the S-box are public constants (timing of table loads on a GPU
does not depend on the key at the granularity an attacker outside the process sees;
a host attacker with the GPU in hand has the key anyway).

Performance shape (docs/performance.md has the instruction-mix estimate): data moves
in 32-bit words (4 loads + 4 stores per 16-byte block, not 16 + 16 bytes), the tables
are looked up through shared memory (``tl.gather`` of the register-held tables) or,
with ``WEIGHTGUARD_AES_TABLES=global``, from L1; the 13 rounds are unrolled so each
round-key word is one uniform load per program; block indices are 64-bit (a record
>= 32 GiB has indices >= 2^31); ``n`` is not specialised (one compiled variant) and
:func:`warm_up` compiles and launches once, in the caller's thread, before workers.

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (the tests), and on CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from typing import Any

from weightguard.errors import DeviceError

__all__ = [
    "BLOCKS_PER_PROGRAM",
    "MAX_RECORD_BYTES",
    "TABLE_MODES",
    "available",
    "ctr_decrypt",
    "expand_key",
    "interpreting",
    "table_mode",
    "tables",
    "tables_host",
    "warm_up",
]

# 16-byte blocks per program: 512 blocks over 4 warps = 4 independent AES states per
# thread (instruction-level parallelism to hide the table lookups' latency).
BLOCKS_PER_PROGRAM = 512
# GCM's 32-bit counter: blocks 2 .. 2^32 - 1 -> at most 2^32 - 2 blocks per record.
MAX_RECORD_BYTES = (2**32 - 2) * 16


def _sbox() -> list[int]:
    """The AES S-box, computed (multiplicative inverse in GF(2^8) + affine map)."""

    def mul(a: int, b: int) -> int:
        p = 0
        while b:
            if b & 1:
                p ^= a
            a = ((a << 1) ^ 0x11B) if a & 0x80 else a << 1
            b >>= 1
        return p

    inv = [0] * 256
    for a in range(1, 256):
        for b in range(1, 256):
            if mul(a, b) == 1:
                inv[a] = b
                break
    out = []
    for a in range(256):
        x = inv[a]
        y = x
        for s in range(1, 5):
            y ^= ((x << s) | (x >> (8 - s))) & 0xFF
        out.append(y ^ 0x63)
    return out


@functools.lru_cache(maxsize=1)
def _tables_list() -> tuple[list[int], list[list[int]]]:
    sbox = _sbox()

    def xt(a: int) -> int:
        return ((a << 1) ^ 0x11B) & 0xFF if a & 0x80 else a << 1

    te0 = [(xt(s) << 24) | (s << 16) | (s << 8) | (xt(s) ^ s) for s in sbox]
    te = [te0]
    for r in (8, 16, 24):
        te.append([((w >> r) | (w << (32 - r))) & 0xFFFFFFFF for w in te0])
    return sbox, te


def expand_key(key: bytes | bytearray) -> list[int]:
    """The AES-256 key schedule (FIPS-197 5.2): 60 big-endian words."""
    if len(key) != 32:
        raise ValueError("AES-256 needs a 32-byte key")
    sbox, _ = _tables_list()
    w = [int.from_bytes(key[4 * i : 4 * i + 4], "big") for i in range(8)]
    rcon = 1
    for i in range(8, 60):
        t = w[i - 1]
        if i % 8 == 0:
            t = ((t << 8) | (t >> 24)) & 0xFFFFFFFF
            t = int.from_bytes(bytes(sbox[b] for b in t.to_bytes(4, "big")), "big")
            t ^= rcon << 24
            rcon = ((rcon << 1) ^ 0x11B) & 0xFF if rcon & 0x80 else rcon << 1
        elif i % 8 == 4:
            t = int.from_bytes(bytes(sbox[b] for b in t.to_bytes(4, "big")), "big")
        w.append(w[i - 8] ^ t)
    return w


# Which table lookup the kernel uses (``WEIGHTGUARD_AES_TABLES``, read once per process):
# "shared": each program loads Te0..Te3 and the S-box once into registers and looks up
# with ``tl.gather``, which Triton lowers through shared memory; "global": every lookup is
# a gather load from the 5 KiB table in global memory (L1-resident, kept with
# evict_last).  The GPU run measures both (benchmarks/gpu_checks.py).
TABLE_MODES = ("shared", "global")


def table_mode() -> str:
    mode = os.environ.get("WEIGHTGUARD_AES_TABLES", "shared").strip().lower()
    return mode if mode in TABLE_MODES else "shared"


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool) -> Any:
    import triton
    import triton.language as tl

    # ``n`` is never specialised: Triton would compile one variant for n == 1, one for
    # n % 16 == 0 and one for the rest (seconds each on sm_90, from many threads at once).
    @triton.jit(do_not_specialize=["n"])
    def aes_ctr_kernel(  # type: ignore[no-untyped-def]  # Triton reads annotations
        data_ptr,  # uint8 [ceil4(n)], 4-byte aligned: ciphertext in, plaintext out
        ctr_ptr,  # uint32 [4]: the counter block J0 as big-endian words
        rk_ptr,  # uint32 [60]: key schedule (device memory, never an argument value)
        tab_ptr,  # uint32 [1280]: Te0..Te3, S-box
        n,  # bytes to decrypt (whole 4-byte words are written: up to 3 bytes past n)
        BLOCKS: tl.constexpr,  # 16-byte counter blocks per program
        SHARED: tl.constexpr,  # tables looked up through shared memory (tl.gather)
    ):
        # 64-bit from the start: a record >= 32 GiB has block indices >= 2^31.
        pid = tl.program_id(0).to(tl.int64)
        blk = pid * BLOCKS + tl.arange(0, BLOCKS)
        if SHARED:
            i256 = tl.arange(0, 256)
            te0 = tl.load(tab_ptr + i256)
            te1 = tl.load(tab_ptr + 256 + i256)
            te2 = tl.load(tab_ptr + 512 + i256)
            te3 = tl.load(tab_ptr + 768 + i256)
            sbx = tl.load(tab_ptr + 1024 + i256)
        w0 = tl.load(ctr_ptr + 0)
        w1 = tl.load(ctr_ptr + 1)
        w2 = tl.load(ctr_ptr + 2)
        # inc32(J0) is the first block; GCM's counter wraps modulo 2^32
        c = tl.load(ctr_ptr + 3) + 1 + (blk & 0xFFFFFFFF).to(tl.uint32)
        zero = c * 0  # (tl.zeros is a jit'd helper: not interpretable late)
        s0 = (zero + w0) ^ tl.load(rk_ptr + 0)
        s1 = (zero + w1) ^ tl.load(rk_ptr + 1)
        s2 = (zero + w2) ^ tl.load(rk_ptr + 2)
        s3 = c ^ tl.load(rk_ptr + 3)
        for r in tl.static_range(1, 14):  # unrolled: each round key word loaded once
            a0 = (s0 >> 24).to(tl.int32)
            a1 = (s1 >> 24).to(tl.int32)
            a2 = (s2 >> 24).to(tl.int32)
            a3 = (s3 >> 24).to(tl.int32)
            b0 = ((s0 >> 16) & 255).to(tl.int32)
            b1 = ((s1 >> 16) & 255).to(tl.int32)
            b2 = ((s2 >> 16) & 255).to(tl.int32)
            b3 = ((s3 >> 16) & 255).to(tl.int32)
            c0 = ((s0 >> 8) & 255).to(tl.int32)
            c1 = ((s1 >> 8) & 255).to(tl.int32)
            c2 = ((s2 >> 8) & 255).to(tl.int32)
            c3 = ((s3 >> 8) & 255).to(tl.int32)
            d0 = (s0 & 255).to(tl.int32)
            d1 = (s1 & 255).to(tl.int32)
            d2 = (s2 & 255).to(tl.int32)
            d3 = (s3 & 255).to(tl.int32)
            if SHARED:
                t0 = tl.gather(te0, a0, 0) ^ tl.gather(te1, b1, 0)
                t0 = t0 ^ tl.gather(te2, c2, 0) ^ tl.gather(te3, d3, 0)
                t1 = tl.gather(te0, a1, 0) ^ tl.gather(te1, b2, 0)
                t1 = t1 ^ tl.gather(te2, c3, 0) ^ tl.gather(te3, d0, 0)
                t2 = tl.gather(te0, a2, 0) ^ tl.gather(te1, b3, 0)
                t2 = t2 ^ tl.gather(te2, c0, 0) ^ tl.gather(te3, d1, 0)
                t3 = tl.gather(te0, a3, 0) ^ tl.gather(te1, b0, 0)
                t3 = t3 ^ tl.gather(te2, c1, 0) ^ tl.gather(te3, d2, 0)
            else:
                t0 = tl.load(tab_ptr + a0, eviction_policy="evict_last") ^ tl.load(
                    tab_ptr + 256 + b1, eviction_policy="evict_last"
                )
                t0 = (
                    t0
                    ^ tl.load(tab_ptr + 512 + c2, eviction_policy="evict_last")
                    ^ tl.load(tab_ptr + 768 + d3, eviction_policy="evict_last")
                )
                t1 = tl.load(tab_ptr + a1, eviction_policy="evict_last") ^ tl.load(
                    tab_ptr + 256 + b2, eviction_policy="evict_last"
                )
                t1 = (
                    t1
                    ^ tl.load(tab_ptr + 512 + c3, eviction_policy="evict_last")
                    ^ tl.load(tab_ptr + 768 + d0, eviction_policy="evict_last")
                )
                t2 = tl.load(tab_ptr + a2, eviction_policy="evict_last") ^ tl.load(
                    tab_ptr + 256 + b3, eviction_policy="evict_last"
                )
                t2 = (
                    t2
                    ^ tl.load(tab_ptr + 512 + c0, eviction_policy="evict_last")
                    ^ tl.load(tab_ptr + 768 + d1, eviction_policy="evict_last")
                )
                t3 = tl.load(tab_ptr + a3, eviction_policy="evict_last") ^ tl.load(
                    tab_ptr + 256 + b0, eviction_policy="evict_last"
                )
                t3 = (
                    t3
                    ^ tl.load(tab_ptr + 512 + c1, eviction_policy="evict_last")
                    ^ tl.load(tab_ptr + 768 + d2, eviction_policy="evict_last")
                )
            s0 = t0 ^ tl.load(rk_ptr + 4 * r)
            s1 = t1 ^ tl.load(rk_ptr + 4 * r + 1)
            s2 = t2 ^ tl.load(rk_ptr + 4 * r + 2)
            s3 = t3 ^ tl.load(rk_ptr + 4 * r + 3)
        # last round: SubBytes + ShiftRows (no MixColumns), then the last round key
        a0 = (s0 >> 24).to(tl.int32)
        a1 = (s1 >> 24).to(tl.int32)
        a2 = (s2 >> 24).to(tl.int32)
        a3 = (s3 >> 24).to(tl.int32)
        b0 = ((s0 >> 16) & 255).to(tl.int32)
        b1 = ((s1 >> 16) & 255).to(tl.int32)
        b2 = ((s2 >> 16) & 255).to(tl.int32)
        b3 = ((s3 >> 16) & 255).to(tl.int32)
        c0 = ((s0 >> 8) & 255).to(tl.int32)
        c1 = ((s1 >> 8) & 255).to(tl.int32)
        c2 = ((s2 >> 8) & 255).to(tl.int32)
        c3 = ((s3 >> 8) & 255).to(tl.int32)
        d0 = (s0 & 255).to(tl.int32)
        d1 = (s1 & 255).to(tl.int32)
        d2 = (s2 & 255).to(tl.int32)
        d3 = (s3 & 255).to(tl.int32)
        if SHARED:
            k0 = (tl.gather(sbx, a0, 0) << 24) ^ (tl.gather(sbx, b1, 0) << 16)
            k0 = k0 ^ (tl.gather(sbx, c2, 0) << 8) ^ tl.gather(sbx, d3, 0)
            k1 = (tl.gather(sbx, a1, 0) << 24) ^ (tl.gather(sbx, b2, 0) << 16)
            k1 = k1 ^ (tl.gather(sbx, c3, 0) << 8) ^ tl.gather(sbx, d0, 0)
            k2 = (tl.gather(sbx, a2, 0) << 24) ^ (tl.gather(sbx, b3, 0) << 16)
            k2 = k2 ^ (tl.gather(sbx, c0, 0) << 8) ^ tl.gather(sbx, d1, 0)
            k3 = (tl.gather(sbx, a3, 0) << 24) ^ (tl.gather(sbx, b0, 0) << 16)
            k3 = k3 ^ (tl.gather(sbx, c1, 0) << 8) ^ tl.gather(sbx, d2, 0)
        else:
            sb = tab_ptr + 1024
            k0 = (tl.load(sb + a0) << 24) ^ (tl.load(sb + b1) << 16)
            k0 = k0 ^ (tl.load(sb + c2) << 8) ^ tl.load(sb + d3)
            k1 = (tl.load(sb + a1) << 24) ^ (tl.load(sb + b2) << 16)
            k1 = k1 ^ (tl.load(sb + c3) << 8) ^ tl.load(sb + d0)
            k2 = (tl.load(sb + a2) << 24) ^ (tl.load(sb + b3) << 16)
            k2 = k2 ^ (tl.load(sb + c0) << 8) ^ tl.load(sb + d1)
            k3 = (tl.load(sb + a3) << 24) ^ (tl.load(sb + b0) << 16)
            k3 = k3 ^ (tl.load(sb + c1) << 8) ^ tl.load(sb + d2)
        k0 = k0 ^ tl.load(rk_ptr + 56)
        k1 = k1 ^ tl.load(rk_ptr + 57)
        k2 = k2 ^ tl.load(rk_ptr + 58)
        k3 = k3 ^ tl.load(rk_ptr + 59)
        # The keystream is big-endian per word; data words are read little-endian
        # (32-bit loads and stores): byte-swap the keystream words.
        col = tl.arange(0, 4)
        kw = tl.where(
            col[None, :] == 0,
            k0[:, None],
            tl.where(
                col[None, :] == 1,
                k1[:, None],
                tl.where(col[None, :] == 2, k2[:, None], k3[:, None]),
            ),
        )
        kw = (kw >> 24) | ((kw >> 8) & 0xFF00) | ((kw << 8) & 0xFF0000) | (kw << 24)
        wptr = data_ptr.to(tl.pointer_type(tl.uint32))
        woff = blk[:, None] * 4 + col[None, :]
        mask = woff < (n.to(tl.int64) + 3) // 4  # 64-bit: n + 3 must not wrap
        x = tl.load(wptr + woff, mask=mask, other=0)
        tl.store(wptr + woff, x ^ kw, mask=mask)

    return aes_ctr_kernel


def interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``: the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes")


def _toolchain() -> str | None:
    """Why Triton cannot build its launcher here, or None (a C compiler AND Python.h)."""
    cc = os.environ.get("CC")
    if not any(shutil.which(c) for c in ([cc] if cc else ["cc", "gcc", "clang"])):
        return "no C compiler (Triton builds its launcher with one)"
    import sysconfig  # here, not at import: it costs 40-130 ms on the loader's import

    inc = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(inc, "Python.h")):
        return f"no Python.h in {inc or '?'} (install the Python development headers)"
    return None


_warm_lock = threading.Lock()
_warm: dict[tuple[str, int, str], str | None] = {}


def warm_up(index: int | None = None) -> str | None:
    """Compile the kernel and launch it once (on CUDA device ``index``, or on the CPU
    under the interpreter), once per process, device and table mode; None when it ran
    and decrypted a FIPS-197 block correctly, else why not (cached).

    Run in the caller's thread before any worker starts: first launches from many
    threads would otherwise compile the same kernel concurrently (triton-lang/triton#5933).
    """
    key = ("cpu" if index is None else "cuda", -1 if index is None else index, table_mode())
    with _warm_lock:
        if key in _warm:
            return _warm[key]
        try:
            _warm[key] = _fips197_check(index)
        except Exception as exc:  # the reason is audited; "auto" falls back to the CPU
            msg = str(exc).strip().splitlines()
            _warm[key] = (
                "the AES kernel does not compile or run here "
                f"({type(exc).__name__}: {msg[0][:200] if msg else ''})"
            )
        return _warm[key]


FIPS197_KEY = bytes(range(32))
FIPS197_PLAIN = bytes.fromhex("00112233445566778899aabbccddeeff")
FIPS197_CIPHER = bytes.fromhex("8ea2b7ca516745bfeafc49904b496089")  # FIPS-197 C.3


def _fips197_check(index: int | None) -> str | None:
    """One launch: the keystream of the FIPS-197 C.3 block (AES-256) must match."""
    import torch

    dev = torch.device("cpu") if index is None else torch.device("cuda", index)
    words = [int.from_bytes(FIPS197_PLAIN[i : i + 4], "big") for i in range(0, 16, 4)]
    words[3] -= 1  # the kernel's first block is counter word 3 + 1
    ctx = contextlib.nullcontext() if index is None else torch.cuda.device(index)
    with ctx:
        ctr = torch.tensor(words, dtype=torch.int64).to(torch.uint32).to(dev)
        rk = torch.tensor(expand_key(FIPS197_KEY), dtype=torch.int64).to(torch.uint32).to(dev)
        buf = torch.zeros(16, dtype=torch.uint8, device=dev)
        ctr_decrypt(buf, ctr, rk, tables(dev))
        got = bytes(buf.cpu().numpy())
    if got != FIPS197_CIPHER:
        return f"the AES kernel gives wrong output on this device (FIPS-197 C.3: {got.hex()})"
    return None


def available(device: str = "cuda") -> str | None:
    """None when the kernel can run on ``device`` ("cuda", "cuda:1", a test's fake
    device), else why not (for the audit).  On CUDA this compiles and launches the
    kernel once on that device (:func:`warm_up`): a Triton that imports but cannot build
    or run makes ``decrypt_on="auto"`` fall back to the CPU instead of failing loads."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    kind, _, idx = device.partition(":")
    if interpreting():
        return warm_up(None)
    if kind != "cuda":
        return f"no Triton target for {kind!r} devices"
    why = _toolchain()
    if why is not None:
        return why
    import torch

    if not torch.cuda.is_available():
        return None  # the load itself reports that CUDA is not available
    index = int(idx) if idx.isdigit() else int(torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        return None  # the backend reports the invalid ordinal
    return warm_up(index)


def tables_host() -> Any:
    """Te0..Te3 and the S-box as one uint32 CPU tensor [5 * 256] (public constants)."""
    import torch

    sbox, te = _tables_list()
    flat = [v for t in te for v in t] + sbox
    return torch.tensor(flat, dtype=torch.int64).to(torch.uint32)


def tables(device: Any) -> Any:
    """:func:`tables_host` on ``device``."""
    return tables_host().to(device)


def ctr_decrypt(data: Any, ctr: Any, round_keys: Any, tabs: Any, n: int | None = None) -> None:
    """Decrypt the first ``n`` bytes of ``data`` (uint8 device tensor, default all of it)
    in place; enqueued on the current stream.

    The kernel reads and writes whole 32-bit words: ``data`` must start 4-byte aligned
    and hold ``ceil(n / 4) * 4`` bytes; the 1 to 3 bytes after ``n`` up to that size are
    overwritten with keystream-XORed values (the copier's slot keeps the record's tag
    there).  ``ctr``: uint32[4] device tensor holding J0 = nonce || 1; ``round_keys``:
    uint32[60] device tensor (:func:`expand_key`).  Refuses a record whose 32-bit
    counter would wrap (GCM allows at most 2^32 - 2 blocks).
    """
    size = int(data.numel())
    n = size if n is None else int(n)
    if n > MAX_RECORD_BYTES:
        raise DeviceError(
            f"record of {n} bytes is too large for AES-GCM's 32-bit counter",
            hint="the artifact is invalid; re-encrypt it with a smaller chunk size",
        )
    if n <= 0:
        return
    if size < (n + 3) // 4 * 4:
        raise ValueError(f"ctr_decrypt: {size} bytes of room for {n} bytes (whole words needed)")
    if int(data.data_ptr()) % 4:
        raise ValueError("ctr_decrypt: data must start 4-byte aligned (32-bit loads)")
    import triton

    # The interpreter pays per program, not per element: fewer, larger programs.
    blocks = BLOCKS_PER_PROGRAM
    if interpreting():
        blocks = min(4096, triton.next_power_of_2(triton.cdiv(n, 16)))
    grid = (triton.cdiv(n, 16 * blocks),)
    _kernel(interpreting())[grid](
        data, ctr, round_keys, tabs, n, BLOCKS=blocks, SHARED=table_mode() == "shared"
    )
