"""The GPU decryption primitives, run on the CPU: the Triton AES-256-CTR kernel under
TRITON_INTERPRET=1 (Triton's own interpreter, no GPU here) and the tag-only GCM check,
both against `cryptography` (FIPS-197 vectors and every record of tests/vectors/)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from weightguard._internal.devices import aes_ctr_triton as aes
from weightguard._internal.devices.gcm_tag import gcm_tag_matches, ghash_key
from weightguard.errors import DeviceError

pytest.importorskip("triton")
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
DOC = json.loads((VECTORS / "vectors.json").read_text())


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(params=aes.TABLE_MODES)
def tables_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both table variants: through shared memory (tl.gather) and global loads."""
    monkeypatch.setenv("WEIGHTGUARD_AES_TABLES", request.param)
    assert aes.table_mode() == request.param
    return str(request.param)


def _u32(words: list[int]) -> torch.Tensor:
    return torch.tensor(words, dtype=torch.int64).to(torch.uint32)


def _ctr_decrypt(key: bytes, nonce: bytes, data: bytes) -> bytes:
    j0 = nonce + b"\x00\x00\x00\x01"
    n = len(data)
    buf = torch.full(((n + 3) // 4 * 4 + 8,), 0x5A, dtype=torch.uint8)  # whole words + guard
    buf[:n] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if n else buf[:0]
    ctr = _u32([int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)])
    aes.ctr_decrypt(buf, ctr, _u32(aes.expand_key(key)), aes.tables("cpu"), n)
    assert bytes(buf[(n + 3) // 4 * 4 :].numpy()) == b"\x5a" * 8  # nothing past the words
    return bytes(buf[:n].numpy())


def test_fips197_aes256_block(tables_mode: str) -> None:
    """FIPS-197 C.3: the kernel's keystream for one counter block is AES-256(block)."""
    key = bytes(range(32))
    block = bytes.fromhex("00112233445566778899aabbccddeeff")
    # keystream block 0 uses counter word3 + 1: start one below the wanted block
    w = [int.from_bytes(block[i : i + 4], "big") for i in range(0, 16, 4)]
    w[3] -= 1
    buf = torch.zeros(16, dtype=torch.uint8)
    aes.ctr_decrypt(buf, _u32(w), _u32(aes.expand_key(key)), aes.tables("cpu"))
    assert bytes(buf.numpy()).hex() == "8ea2b7ca516745bfeafc49904b496089"


def test_fips197_key_expansion() -> None:
    """FIPS-197 A.3: first and last words of the AES-256 key schedule."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    w = aes.expand_key(key)
    assert len(w) == 60
    assert w[8] == 0x9BA35411 and w[59] == 0x706C631E


@pytest.mark.parametrize("n", [1, 15, 16, 17, 4095, 4096, 70001])
def test_kernel_equals_gcm_ciphertext(n: int) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    pt = os.urandom(n)
    ct = AESGCM(key).encrypt(nonce, pt, b"aad")[:-16]
    assert _ctr_decrypt(key, nonce, ct) == pt


def test_every_vector_record(tables_mode: str) -> None:
    """Every record of every committed vector: kernel output == AES-GCM decryption."""
    checked = 0
    for case in DOC["cases"]:
        art = (VECTORS / case["output"]).read_bytes()
        key = bytes.fromhex(case["aead_key"])
        h = ghash_key(key)
        stride, pos = None, None
        # records are laid out back to back after the header: walk them from the end
        sizes = [r["plaintext_size"] + 16 for r in case["records"]]
        pos = len(art) - sum(sizes)
        for rec, size in zip(case["records"], sizes, strict=True):
            nonce, aad = bytes.fromhex(rec["nonce"]), bytes.fromhex(rec["aad"])
            record = art[pos : pos + size]
            pos += size
            want = AESGCM(key).decrypt(nonce, record, aad)
            assert _ctr_decrypt(key, nonce, record[:-16]) == want
            assert gcm_tag_matches(key, h, nonce, aad, memoryview(record))
            bad = bytearray(record)
            bad[len(bad) // 2] ^= 1
            assert not gcm_tag_matches(key, h, nonce, aad, memoryview(bad))
            assert not gcm_tag_matches(key, h, nonce, aad + b"x", memoryview(record))
            checked += 1
        del stride
    assert checked == sum(len(c["records"]) for c in DOC["cases"])


@settings(max_examples=60, deadline=None)
@given(pt=st.binary(max_size=300), aad=st.binary(max_size=80), flip=st.integers(0, 400))
def test_tag_only_check_matches_gcm(pt: bytes, aad: bytes, flip: int) -> None:
    key, nonce = b"k" * 32, b"n" * 12
    record = bytearray(AESGCM(key).encrypt(nonce, pt, aad))
    h = ghash_key(key)
    assert gcm_tag_matches(key, h, nonce, aad, memoryview(record))
    record[flip % len(record)] ^= 0x80
    assert not gcm_tag_matches(key, h, nonce, aad, memoryview(record))


def test_ghash_key_is_aes_of_zero() -> None:
    key = os.urandom(32)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    assert ghash_key(key) == int.from_bytes(enc.update(bytes(16)), "big")


def test_counter_overflow_refused() -> None:
    class Huge:
        def numel(self) -> int:
            return aes.MAX_RECORD_BYTES + 1

    with pytest.raises(DeviceError, match="too large for AES-GCM's 32-bit counter"):
        aes.ctr_decrypt(Huge(), None, None, None)


def test_round_keys_are_a_tensor_argument() -> None:
    """Key bits never reach Triton as scalars/constexprs (it specialises and caches them)."""
    import inspect

    src = inspect.getsource(aes.ctr_decrypt)
    assert "data, ctr, round_keys, tabs, n, BLOCKS=blocks" in src
    seen: list[Any] = []

    class Spy:
        def __getitem__(self, grid: Any) -> Any:
            return lambda *a, **k: seen.append((a, k))

    orig = aes._kernel
    try:
        aes._kernel = lambda interpret: Spy()  # type: ignore[assignment]
        rk = _u32(aes.expand_key(bytes(32)))
        aes.ctr_decrypt(
            torch.zeros(32, dtype=torch.uint8), _u32([0, 0, 0, 1]), rk, aes.tables("cpu")
        )
    finally:
        aes._kernel = orig  # type: ignore[assignment]
    ((args, kw),) = seen
    assert args[2] is rk
    assert all(isinstance(a, torch.Tensor) for a in args[:4]) and args[4] == 32
    assert set(kw) == {"BLOCKS", "SHARED"}


def test_available_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    assert aes.available("fake") is None  # interpreter: any device
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert aes.available("fake") == "no Triton target for 'fake' devices"
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert aes.available("cuda") == "no C compiler (Triton builds its launcher with one)"
    assert aes.available("cuda:1") == "no C compiler (Triton builds its launcher with one)"
    monkeypatch.setenv("CC", sys.executable)  # any executable: the headers are checked next
    import sysconfig

    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": "/nonexistent/include"})
    assert aes.available("cuda") == (
        "no Python.h in /nonexistent/include (install the Python development headers)"
    )


def test_tag_checker_h_once_per_cipher_and_no_key_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """One load's tag checks derive H once per cipher and hand OpenSSL the cipher's own
    key buffer (wipeable), never an immutable ``bytes`` copy per record."""
    from weightguard._internal.devices import gcm_tag

    key = bytearray(os.urandom(32))

    class Cipher_:
        def gcm_record(self, index: int) -> tuple[bytearray, bytes, bytes]:
            return key, index.to_bytes(12, "big"), b"aad%d" % index

    seen: list[Any] = []
    real_cipher = gcm_tag.Cipher

    def spy(algorithm: Any, mode: Any) -> Any:
        seen.append(algorithm.key)
        return real_cipher(algorithm, mode)

    monkeypatch.setattr(gcm_tag, "Cipher", spy)
    derived: list[int] = []
    real_h = gcm_tag.ghash_key
    monkeypatch.setattr(gcm_tag, "ghash_key", lambda k: derived.append(1) or real_h(k))
    c = Cipher_()
    checker = gcm_tag.TagChecker()
    for i in range(1, 6):
        nonce, aad = i.to_bytes(12, "big"), b"aad%d" % i
        record = bytearray(AESGCM(bytes(key)).encrypt(nonce, b"x" * i, aad))
        assert checker.matches(c, i, memoryview(record))
        record[0] ^= 1
        assert not checker.matches(c, i, memoryview(record))
    assert len(derived) == 1
    assert seen and all(k is key for k in seen)
    checker.clear()
    assert checker._h == {}


def test_keystream_is_aes_ctr_with_gcm_counter_layout(tables_mode: str) -> None:
    """Keystream == cryptography's AES-256-CTR from nonce || 2 (GCM's first data block),
    over several programs' worth of blocks; and GCM's inc32 wraps in the low 32 bits."""
    key, nonce = os.urandom(32), os.urandom(12)
    n = 16 * 300 + 7
    enc = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).encryptor()
    want = enc.update(bytes(n)) + enc.finalize()
    assert _ctr_decrypt(key, nonce, bytes(n)) == want
    # J0's low word at 2^32 - 3: blocks use ...fffffffe, ...ffffffff, ...00000000, ...
    j0 = nonce + (2**32 - 3).to_bytes(4, "big")
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = [nonce + ((2**32 - 2 + i) % 2**32).to_bytes(4, "big") for i in range(5)]
    want = ecb.update(b"".join(blocks))
    buf = torch.zeros(80, dtype=torch.uint8)
    ctr = _u32([int.from_bytes(j0[i : i + 4], "big") for i in range(0, 16, 4)])
    aes.ctr_decrypt(buf, ctr, _u32(aes.expand_key(key)), aes.tables("cpu"))
    assert bytes(buf.numpy()) == want


def test_block_offsets_are_64_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program whose first block index is >= 2^31 (a record >= 32 GiB) writes past
    the data start, never below it: with 32-bit offsets pid * BLOCKS wraps negative.
    The interpreter's program id is shifted so that pid * BLOCKS == 2^32 - BLOCKS."""
    from triton.runtime import interpreter

    buf = torch.full((4096,), 0x5A, dtype=torch.uint8)
    data = buf[2048:2112]  # 64 bytes = 4 blocks: the interpreter runs BLOCKS = 4
    shift = 2**32 // 4 - 1
    real = interpreter.InterpreterBuilder.create_get_program_id

    def shifted(self: Any, axis: int) -> Any:
        h = real(self, axis)
        h.data = (h.data + shift).astype("int32")  # still an int32 program id
        return h

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_get_program_id", shifted)
    rk = _u32(aes.expand_key(bytes(32)))
    aes.ctr_decrypt(data, _u32([0, 0, 0, 1]), rk, aes.tables("cpu"))
    assert int((buf != 0x5A).sum()) == 0, "a program far into the record wrote near its start"


def test_n_is_not_specialised_and_offsets_widen_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """One compiled variant whatever the record size (Triton specialises integers on
    == 1 and % 16 by default); the program id is widened before it is multiplied."""
    import inspect

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    k = aes._kernel.__wrapped__(False)  # the compiled (non-interpreted) JITFunction
    assert [p.name for p in k.params if p.do_not_specialize] == ["n"]
    src = inspect.getsource(k.fn)
    assert "pid = tl.program_id(0).to(tl.int64)" in src
    assert "blk = pid * BLOCKS" in src


@pytest.mark.slow
def test_kernel_compiles_for_sm90_without_spills(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled (not interpreted) kernel builds for an H100 (sm_90) on this CPU
    machine -- Triton compiles ahead of time for a named target -- with no local-memory
    spills: what the interpreter cannot show (gather lowering, pointer casts, types)."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    k = aes._kernel.__wrapped__(False)
    sig = {
        "data_ptr": "*u8",
        "ctr_ptr": "*u32",
        "rk_ptr": "*u32",
        "tab_ptr": "*u32",
        "n": "i32",
        "BLOCKS": "constexpr",
        "SHARED": "constexpr",
    }
    src = ASTSource(
        fn=k,
        signature=sig,
        constexprs={"BLOCKS": aes.BLOCKS_PER_PROGRAM, "SHARED": True},
        attrs={(i,): [["tt.divisibility", 16]] for i in range(4)},
    )
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert c.metadata.shared >= 1024  # the tables go through shared memory
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("no cuobjdump in this triton wheel")
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"wg-aes-{os.getpid()}.cubin"
    cubin.write_bytes(c.asm["cubin"])
    try:
        res = subprocess.run(
            [str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        cubin.unlink()
    assert "LOCAL:0" in res, res  # no register spills to local memory
