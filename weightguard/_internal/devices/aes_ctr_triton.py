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

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (the tests), and on CUDA.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any

from weightguard.errors import DeviceError

__all__ = [
    "BLOCKS_PER_PROGRAM",
    "MAX_RECORD_BYTES",
    "available",
    "ctr_decrypt",
    "expand_key",
    "interpreting",
    "tables",
]

BLOCKS_PER_PROGRAM = 256
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


def tables(device: Any) -> Any:
    """Te0..Te3 and the S-box as one uint32 tensor [5 * 256] on ``device`` (public)."""
    import torch

    sbox, te = _tables_list()
    flat = [v for t in te for v in t] + sbox
    return torch.tensor(flat, dtype=torch.int64).to(torch.uint32).to(device)


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool) -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def aes_ctr_kernel(  # type: ignore[no-untyped-def]  # Triton reads annotations
        data_ptr,  # uint8 [n]: ciphertext in, plaintext out (in place)
        ctr_ptr,  # uint32 [4]: the counter block J0 as big-endian words
        rk_ptr,  # uint32 [60]: key schedule (device memory, never an argument value)
        tab_ptr,  # uint32 [1280]: Te0..Te3, S-box
        n,
        BLOCKS: tl.constexpr,
    ):
        pid = tl.program_id(0)
        blk = pid * BLOCKS + tl.arange(0, BLOCKS)
        w0 = tl.load(ctr_ptr + 0)
        w1 = tl.load(ctr_ptr + 1)
        w2 = tl.load(ctr_ptr + 2)
        c = tl.load(ctr_ptr + 3) + 1 + blk.to(tl.uint32)  # inc32(J0) = first block
        zero = blk.to(tl.uint32) * 0  # (tl.zeros is a jit'd helper: not interpretable late)
        s0 = (zero + w0) ^ tl.load(rk_ptr + 0)
        s1 = (zero + w1) ^ tl.load(rk_ptr + 1)
        s2 = (zero + w2) ^ tl.load(rk_ptr + 2)
        s3 = c ^ tl.load(rk_ptr + 3)
        for r in range(1, 14):
            t0 = (
                tl.load(tab_ptr + (s0 >> 24).to(tl.int32))
                ^ tl.load(tab_ptr + 256 + ((s1 >> 16) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 512 + ((s2 >> 8) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 768 + (s3 & 255).to(tl.int32))
                ^ tl.load(rk_ptr + 4 * r)
            )
            t1 = (
                tl.load(tab_ptr + (s1 >> 24).to(tl.int32))
                ^ tl.load(tab_ptr + 256 + ((s2 >> 16) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 512 + ((s3 >> 8) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 768 + (s0 & 255).to(tl.int32))
                ^ tl.load(rk_ptr + 4 * r + 1)
            )
            t2 = (
                tl.load(tab_ptr + (s2 >> 24).to(tl.int32))
                ^ tl.load(tab_ptr + 256 + ((s3 >> 16) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 512 + ((s0 >> 8) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 768 + (s1 & 255).to(tl.int32))
                ^ tl.load(rk_ptr + 4 * r + 2)
            )
            t3 = (
                tl.load(tab_ptr + (s3 >> 24).to(tl.int32))
                ^ tl.load(tab_ptr + 256 + ((s0 >> 16) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 512 + ((s1 >> 8) & 255).to(tl.int32))
                ^ tl.load(tab_ptr + 768 + (s2 & 255).to(tl.int32))
                ^ tl.load(rk_ptr + 4 * r + 3)
            )
            s0, s1, s2, s3 = t0, t1, t2, t3
        sb = tab_ptr + 1024
        k0 = (
            (tl.load(sb + (s0 >> 24).to(tl.int32)) << 24)
            ^ (tl.load(sb + ((s1 >> 16) & 255).to(tl.int32)) << 16)
            ^ (tl.load(sb + ((s2 >> 8) & 255).to(tl.int32)) << 8)
            ^ tl.load(sb + (s3 & 255).to(tl.int32))
            ^ tl.load(rk_ptr + 56)
        )
        k1 = (
            (tl.load(sb + (s1 >> 24).to(tl.int32)) << 24)
            ^ (tl.load(sb + ((s2 >> 16) & 255).to(tl.int32)) << 16)
            ^ (tl.load(sb + ((s3 >> 8) & 255).to(tl.int32)) << 8)
            ^ tl.load(sb + (s0 & 255).to(tl.int32))
            ^ tl.load(rk_ptr + 57)
        )
        k2 = (
            (tl.load(sb + (s2 >> 24).to(tl.int32)) << 24)
            ^ (tl.load(sb + ((s3 >> 16) & 255).to(tl.int32)) << 16)
            ^ (tl.load(sb + ((s0 >> 8) & 255).to(tl.int32)) << 8)
            ^ tl.load(sb + (s1 & 255).to(tl.int32))
            ^ tl.load(rk_ptr + 58)
        )
        k3 = (
            (tl.load(sb + (s3 >> 24).to(tl.int32)) << 24)
            ^ (tl.load(sb + ((s0 >> 16) & 255).to(tl.int32)) << 16)
            ^ (tl.load(sb + ((s1 >> 8) & 255).to(tl.int32)) << 8)
            ^ tl.load(sb + (s2 & 255).to(tl.int32))
            ^ tl.load(rk_ptr + 59)
        )
        col = tl.arange(0, 16)
        word = col // 4
        shift = (24 - 8 * (col % 4)).to(tl.uint32)
        kw = tl.where(
            word[None, :] == 0,
            k0[:, None],
            tl.where(
                word[None, :] == 1,
                k1[:, None],
                tl.where(word[None, :] == 2, k2[:, None], k3[:, None]),
            ),
        )
        ks = ((kw >> shift[None, :]) & 255).to(tl.uint8)
        offs = blk.to(tl.int64)[:, None] * 16 + col[None, :]
        mask = offs < n
        x = tl.load(data_ptr + offs, mask=mask, other=0)
        tl.store(data_ptr + offs, x ^ ks, mask=mask)

    return aes_ctr_kernel


def interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``: the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes")


def available(kind: str = "cuda") -> str | None:
    """None when the kernel can run on devices of ``kind``, else why not (for the audit)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if interpreting():
        return None
    if kind != "cuda":
        return f"no Triton target for {kind!r} devices"
    cc = os.environ.get("CC")
    if not any(shutil.which(c) for c in ([cc] if cc else ["cc", "gcc", "clang"])):
        return "no C compiler (Triton builds its launcher with one)"
    return None


def ctr_decrypt(data: Any, ctr: Any, round_keys: Any, tabs: Any) -> None:
    """Decrypt ``data`` (uint8 device tensor) in place; enqueued on the current stream.

    ``ctr``: uint32[4] device tensor holding J0 = nonce || 1; ``round_keys``:
    uint32[60] device tensor (:func:`expand_key`).  Refuses a record whose 32-bit
    counter would wrap (GCM allows at most 2^32 - 2 blocks).
    """
    n = int(data.numel())
    if n > MAX_RECORD_BYTES:
        raise DeviceError(
            f"record of {n} bytes is too large for AES-GCM's 32-bit counter",
            hint="the artifact is invalid; re-encrypt it with a smaller chunk size",
        )
    if n == 0:
        return
    import triton

    # The interpreter pays per program, not per element: fewer, larger programs.
    blocks = BLOCKS_PER_PROGRAM
    if interpreting():
        blocks = min(4096, triton.next_power_of_2(triton.cdiv(n, 16)))
    grid = (triton.cdiv(n, 16 * blocks),)
    _kernel(interpreting())[grid](data, ctr, round_keys, tabs, n, BLOCKS=blocks)
